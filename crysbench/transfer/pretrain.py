"""CrysGNN self-supervised pre-training as a run: set-up, loop, evaluate, checkpoint.

``run_ssl(cfg)`` pre-trains the crysgnn encoder of a RunConfig (``train.objective = "ssl"``) with the
objectives of :mod:`crysbench.transfer.ssl` into ``<out_dir>/<run_id>/``, with the conventions of
:func:`crysbench.train.loop.run`: config.yaml, metrics.jsonl (per-part SSL losses, train and val, one
record per epoch), ckpt/last.pt (atomic, resumable mid-epoch), ckpt/best.pt = ``{"model": encoder
state dict}`` (lowest val total SSL loss; loads into ``build_model(cfg, 1)`` as is) and final.json.

The store needs no targets. Crystals duplicating the val/test parts of ``cfg.ssl.exclude_stores``
are dropped from the pre-training parts once per run (the kept parts are cached in pool.json).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from crysbench import config as C
from crysbench import distributed
from crysbench.graph import GraphBatch
from crysbench.train import checkpoint
from crysbench.train import loop as L
from crysbench.train.config import RunConfig
from crysbench.train.data import RunData, ensure_split, pool_indices
from crysbench.train.schedule import make_scheduler
from crysbench.transfer.ssl import SSLModel
from crysbench.transfer.strategies import head_names, train_mode

PARTS = ("total", "node", "bond", "multiplicity", "spacegroup", "contrastive")
VAL_STREAM = 1  # seeds the validation masks / negatives: the same every evaluation, so epochs compare


# ---------------------------------------------------------------------------------------------
# data: the pre-training pool and its batches
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SSLData(RunData):
    """RunData's batching (same global batches and rank shards) over a store without targets; batches
    come with the space group [B] and crystal system [B] of their crystals."""

    spacegroup: torch.Tensor = None       # [n_crystals of the store] int64, 0 = unknown
    crystal_system: torch.Tensor = None   # [n_crystals of the store] int64, -1 = unknown

    def _dataset(self, ids):
        from crysbench.store.loader import StoreDataset

        return StoreDataset(self.cfg.store, indices=ids, targets=[])

    def _loader(self, ids: np.ndarray, batches: list[list[int]]) -> Iterator[tuple]:
        from torch.utils.data import DataLoader

        from crysbench.store.loader import collate_records

        collate = partial(collate_records, dtype=torch.float32, with_index=True)
        loader = DataLoader(self._dataset(ids), batch_sampler=batches, num_workers=self.cfg.num_workers,
                            collate_fn=collate)
        for b in loader:
            index = b.pop("index")
            yield GraphBatch(**b), self.spacegroup[index], self.crystal_system[index]


def parse_exclude(spec: str) -> tuple[str, str | None]:
    """``"STORE"`` or ``"STORE::SPLIT"`` → (store path, split name or None)."""
    path, sep, name = spec.partition("::")
    return path, (name or None) if sep else None


def reference_indices(store: str, split: str | None) -> np.ndarray | None:
    """Val + test crystals of ``split`` of ``store``; of every split its manifest lists when ``split``
    is None; None (the whole store) when it lists none."""
    from crysbench.store import open_store
    from crysbench.store.splits import load_split

    names = [split] if split else sorted(open_store(store, verify=False).manifest.get("splits", {}))
    if not names:
        return None
    parts = [load_split(store, n) for n in names]
    return np.unique(np.concatenate([p[k] for p in parts for k in ("val", "test")]).astype(np.int64))


def exclude_leaks(store: str, parts: dict[str, np.ndarray], exclude: tuple[str, ...]
                  ) -> tuple[dict[str, np.ndarray], dict]:
    """``parts`` without the crystals that duplicate (same id, or StructureMatcher within a reduced
    composition) the val/test crystals of each ``exclude`` entry; and the counts removed."""
    from crysbench.store import open_store
    from crysbench.store.splits import filter_pool

    keep = np.ones(len(open_store(store, verify=False)), dtype=bool)
    by_store = {}
    for spec in exclude:
        path, split = parse_exclude(spec)
        ok = np.zeros_like(keep)
        ok[filter_pool(store, path, reference_indices(path, split))] = True
        by_store[spec] = int((~ok).sum())  # duplicates anywhere in the pool store
        keep &= ok
    kept = {k: v[keep[v]] for k, v in parts.items()}
    counts = {k: int(len(parts[k]) - len(kept[k])) for k in parts}
    return kept, {**counts, "by_store": by_store}


def pretrain_pool(cfg: RunConfig) -> tuple[dict[str, np.ndarray], dict]:
    """Train / val crystals of the pre-training store (split, pool cut, leakage filter, then the
    nested ``train_size`` subset) and the counts the leakage filter removed."""
    from crysbench.store.splits import nested_subsets

    d = cfg.data
    if d.sampling != "random":
        raise ValueError(f"SSL pre-training draws train_size at random (no targets to stratify on); "
                         f"got data.sampling={d.sampling!r}")
    split = ensure_split(d)
    parts = {"train": pool_indices(d, split["train"]), "val": split["val"]}
    parts, n_excluded = exclude_leaks(d.store, parts, tuple(cfg.ssl.exclude_stores))
    if d.train_size is not None:
        if d.train_size > len(parts["train"]):
            raise ValueError(f"train_size {d.train_size} exceeds the {len(parts['train'])} pre-training "
                             f"crystals of {d.store} (after the leakage filter)")
        seed = d.split_seed if d.subset_seed is None else d.subset_seed
        parts["train"] = nested_subsets(parts["train"], [d.train_size], seed=seed)[d.train_size]
    return parts, n_excluded


def _cached_pool(cfg: RunConfig, out: Path, de, log) -> tuple[dict[str, np.ndarray], dict]:
    """:func:`pretrain_pool`, computed once per run (a resumed run reads pool.json)."""
    path = out / "pool.json"
    if path.exists():
        body = json.loads(path.read_text())
        return {k: np.asarray(body[k], dtype=np.int64) for k in ("train", "val")}, body["n_excluded"]
    parts, n_excluded = pretrain_pool(cfg)
    if de.is_main and cfg.ssl.exclude_stores:
        log(f"leakage filter: dropped {n_excluded['train']} train and {n_excluded['val']} val crystals "
            f"duplicating {', '.join(cfg.ssl.exclude_stores)}")
    if de.is_main:
        L._write_json(path, {**{k: v.tolist() for k, v in parts.items()}, "n_excluded": n_excluded})
    return parts, n_excluded


def make_ssl_data(cfg: RunConfig, de, parts: dict[str, np.ndarray]) -> SSLData:
    from crysbench.transfer.ssl import symmetry_labels

    if len(parts["train"]) == 0:
        raise ValueError(f"no pre-training crystals left in {cfg.data.store} (after the leakage filter)")
    from crysbench.store import open_store

    sg, cs = symmetry_labels(cfg.data.store, np.arange(len(open_store(cfg.data.store, verify=False))))
    return SSLData(cfg.data, de.rank, de.world_size, cfg.train.seed, parts["train"], parts["val"],
                   np.zeros(0, dtype=np.int64), [], None, spacegroup=sg, crystal_system=cs)


# ---------------------------------------------------------------------------------------------
# model, steps, evaluation
# ---------------------------------------------------------------------------------------------
def check_model(cfg: RunConfig) -> None:
    if cfg.model.name != "crysgnn":
        raise ValueError(f"SSL pre-training needs model.name 'crysgnn' (the CrysGNN encoder), "
                         f"got {cfg.model.name!r}")


def build_ssl_model(cfg: RunConfig) -> SSLModel:
    """The crysgnn encoder of ``cfg`` (property head frozen: SSL does not use it) with the SSL heads."""
    check_model(cfg)
    encoder = L.build_model(cfg, n_targets=1)
    for name in head_names(encoder):
        getattr(encoder, name).requires_grad_(False)
    return SSLModel(encoder, cfg.ssl)


def _generator(*seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(seed)).generate_state(1)[0]))


def _train_step(model, params, batch, sg, cs, gen, opt, sched, scaler, cfg: RunConfig, device
                ) -> dict[str, float]:
    """One optimizer step on one batch; the loss parts as floats."""
    with L._autocast(device, cfg.train.mixed_precision):
        loss, parts = model(batch, sg, cs, gen)
    L.optimizer_step(loss, opt, sched, scaler, params, cfg.optim.grad_clip)
    return {"total": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}


@torch.no_grad()
def evaluate(model: SSLModel, batches, seed: int, device, precision: str = "none") -> dict[str, float]:
    """Per-part SSL losses (and their weighted total) averaged over crystals, in eval mode, with masks
    and negatives drawn from a generator seeded by ``seed`` (so repeated evaluations compare)."""
    model.eval()
    gen, sums = _generator(seed, VAL_STREAM), _Sums()
    for batch, sg, cs in batches:
        with L._autocast(device, precision):
            loss, parts = model(batch.to(device), sg, cs, gen)
        sums.add({"total": float(loss), **{k: float(v) for k, v in parts.items()}}, batch.num_crystals)
    train_mode(model)
    return sums.mean()


class _Sums:
    """Crystal-weighted running sums of loss parts (``state`` goes into mid-epoch checkpoints)."""

    def __init__(self, state: dict | None = None) -> None:
        state = state or {"sums": dict.fromkeys(PARTS, 0.0), "n": 0}
        self.sums, self.n = dict(state["sums"]), int(state["n"])

    def state(self) -> dict:
        return {"sums": dict(self.sums), "n": self.n}

    def add(self, parts: dict[str, float], n: int) -> None:
        for k in PARTS:
            self.sums[k] += parts[k] * n
        self.n += n

    def mean(self) -> dict[str, float]:
        return {k: (v / self.n if self.n else math.nan) for k, v in self.sums.items()}


def _flops_per_crystal(core: SSLModel, batch, sg, cs, gen: torch.Generator) -> float:
    """Training FLOPs (forward + backward) per crystal on one batch, on copies of model and generator."""
    from torch.utils.flop_counter import FlopCounterMode

    probe, g = copy.deepcopy(core), torch.Generator().set_state(gen.get_state())
    counter = FlopCounterMode(display=False)
    with torch.random.fork_rng(), counter:
        probe(batch, sg, cs, g)[0].backward()
    return counter.get_total_flops() / max(1, batch.num_crystals)


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _State:
    """Where the run is: saved in ckpt/last.pt with model, optimizer, scheduler and RNG states."""

    step: int = 0
    epoch: int = 0
    skip: int = 0                          # batches of the current epoch already trained on
    epoch_sums: dict = dataclasses.field(default_factory=dict)  # their losses (_Sums.state)
    best: dict = dataclasses.field(default_factory=lambda: {"val_loss": float("inf"), "epoch": -1})
    history: list = dataclasses.field(default_factory=list)
    val_init: dict = dataclasses.field(default_factory=dict)
    crystals: int = 0
    atoms: int = 0
    seconds: float = 0.0


def _save(path: Path, core, opt, sched, scaler, gen, st: _State) -> None:
    checkpoint.atomic_save({
        "model": core.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {}, "rng": checkpoint.rng_state(),
        "generator": gen.get_state(), "state": dataclasses.asdict(st)}, path)


def _load(path: Path, core, opt, sched, scaler, gen) -> _State:
    ck = checkpoint.load(path)
    core.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    if scaler is not None and ck["scaler"]:
        scaler.load_state_dict(ck["scaler"])
    checkpoint.set_rng_state(ck["rng"])
    gen.set_state(ck["generator"])
    return _State(**ck["state"])


def run_ssl(cfg: RunConfig, resume: bool = True, log=print) -> dict:
    """Pre-train the crysgnn encoder with the CrysGNN SSL objectives; the final record (final.json)."""
    # ---- set-up -----------------------------------------------------------------------------
    check_model(cfg)  # a wrong model name fails before any folder is made
    de = distributed.detect()
    device = L._device(cfg.train.device, de)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    out = L.run_dir(cfg)
    if (out / "final.json").exists():
        return json.loads((out / "final.json").read_text())
    distributed.init(de, device)
    if de.is_main:
        (out / "ckpt").mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(C.dump_yaml(cfg))
    torch.manual_seed(cfg.train.seed)
    parts, n_excluded = _cached_pool(cfg, out, de, log)
    data = make_ssl_data(cfg, de, parts)
    core = build_ssl_model(cfg).to(device)
    model = core
    if de.world_size > 1:
        if device.type == "cuda":  # batch statistics over the global batch (CPU has no SyncBatchNorm)
            core = torch.nn.SyncBatchNorm.convert_sync_batchnorm(core)
        model = torch.nn.parallel.DistributedDataParallel(core)  # forward returns the loss
    params = [p for p in core.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.max_lr, weight_decay=cfg.optim.weight_decay)
    total_steps = cfg.train.epochs * data.steps_per_epoch
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    sched = make_scheduler(opt, cfg.optim, total_steps)
    scaler = torch.amp.GradScaler(device.type) if cfg.train.mixed_precision == "fp16" else None
    gen = _generator(cfg.train.seed, de.rank)  # masks and negative pairs: reproducible, saved in last.pt
    ckpt_path, st = out / "ckpt" / "last.pt", _State()
    if resume and ckpt_path.exists():
        st = _load(ckpt_path, core, opt, sched, scaler, gen)
        log(f"resumed {out.name} at step {st.step} (epoch {st.epoch}, batch {st.skip})")
    elif de.is_main:
        st.val_init = evaluate(core, data.val_batches(), cfg.train.seed, device, cfg.train.mixed_precision)

    def save_ckpt(state: _State) -> None:
        if de.is_main:
            _save(ckpt_path, core, opt, sched, scaler, gen, state)

    # ---- loop -------------------------------------------------------------------------------
    flops_per_crystal, stop = None, st.step >= total_steps
    while st.epoch < cfg.train.epochs and not stop:
        train_mode(core)
        t0, sums = time.perf_counter(), _Sums(st.epoch_sums if st.skip else None)
        for k, (batch, sg, cs) in enumerate(data.train_batches(st.epoch)):
            if k < st.skip:
                continue  # trained on before the interruption: same order, same seed
            batch = batch.to(device)
            if flops_per_crystal is None:
                flops_per_crystal = _flops_per_crystal(core, batch, sg, cs, gen)
            losses = _train_step(model, params, batch, sg, cs, gen, opt, sched, scaler, cfg, device)
            st.step += 1
            n_graphs = data.global_graphs(batch)
            st.crystals += n_graphs
            st.atoms += batch.num_atoms * de.world_size
            sums.add(losses, n_graphs)
            over_flops = cfg.train.max_flops and flops_per_crystal * st.crystals >= cfg.train.max_flops
            if st.step >= total_steps or over_flops:
                stop = True
                break
            if st.step % cfg.train.ckpt_every == 0:
                save_ckpt(dataclasses.replace(st, skip=k + 1, epoch_sums=sums.state(),
                                              seconds=st.seconds + time.perf_counter() - t0))
        st.seconds += time.perf_counter() - t0
        st.skip, st.epoch_sums, st.epoch = 0, {}, st.epoch + 1
        # ---- evaluate -----------------------------------------------------------------------
        stop = _end_epoch(cfg, st, core, data, sums, sched, device, de, out, t0, log) or stop
        stop = L._agree(stop, de)
        save_ckpt(st)

    # ---- final record -----------------------------------------------------------------------
    result = {}
    if de.is_main:
        result = _final(cfg, st, core, data, n_excluded, flops_per_crystal, de, device, out)
        L._write_json(out / "final.json", result)
    if de.world_size > 1:
        dist.barrier()
    distributed.shutdown()
    return result


def _end_epoch(cfg: RunConfig, st: _State, core, data, sums: _Sums, sched, device, de, out: Path, t0: float,
               log) -> bool:
    """Validate, record the epoch, keep the best encoder; True when early stopping says stop."""
    val = {}
    if de.is_main:
        val = evaluate(core, data.val_batches(), cfg.train.seed, device, cfg.train.mixed_precision)
    train = sums.mean()
    val_loss = val.get("total", math.inf)
    score = val_loss if len(data.val_ids) else train["total"]  # no val crystals: keep the last encoder
    st.history.append({"epoch": st.epoch, "step": st.step, "train_loss": train["total"], "val_loss": val_loss,
                       "train": train, "val": val, "lr": sched.get_last_lr()[0], "crystals_seen": st.crystals,
                       "epoch_time_s": time.perf_counter() - t0})
    if de.is_main:
        if score < st.best["val_loss"] or not len(data.val_ids):
            st.best = {"val_loss": score, "epoch": st.epoch}
            checkpoint.atomic_save({"model": core.encoder.state_dict()}, out / "ckpt" / "best.pt")
        L._write_jsonl(out / "metrics.jsonl", st.history)
        log(f"[{out.name}] ssl epoch {st.epoch} step {st.step} train {train['total']:.4f} val {val_loss:.4f}")
    patience = cfg.train.early_stop_patience
    return bool(patience and st.epoch - st.best["epoch"] >= patience)


def _final(cfg: RunConfig, st: _State, core, data, n_excluded, flops_per_crystal, de, device, out) -> dict:
    by_epoch = {r["epoch"]: r for r in st.history}
    last = st.history[-1] if st.history else {"val": {}, "train": {}}
    return {
        "run_id": out.name, "objective": "ssl", "config": C.to_dict(cfg), "test": {}, "best": st.best,
        "val": by_epoch.get(st.best["epoch"], last)["val"],  # the losses of the kept (best) encoder
        "val_last": last["val"], "train_last": last["train"], "val_init": st.val_init,
        "n_params": sum(p.numel() for p in core.encoder.parameters()),
        "n_params_ssl": sum(p.numel() for p in core.parameters()),
        "n_train": data.n_train, "n_val": len(data.val_ids), "n_excluded": n_excluded,
        "steps": st.step, "epochs": st.epoch,
        "telemetry": L._telemetry(flops_per_crystal, st.crystals, st.atoms, st.seconds, de, device, st.step),
    }
