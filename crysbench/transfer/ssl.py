"""CrysGNN-style self-supervised pre-training of the crysgnn encoder (Das et al., AAAI 2023).

Four objectives on :meth:`CrysGNN.encode`'s node embeddings h [N, D]:

* node: mask a fraction of atoms (their input row becomes the all-zero padding row Z = 0) and
  predict every one-hot feature group of :mod:`crysbench.features` for them (mean CE over groups);
* bond / multiplicity: for atom pairs (i, j) of one crystal, predict from symmetric pair features
  whether they are bonded (BCE; negatives are sampled unbonded pairs) and, for bonded pairs, how
  many periodic images connect them (CE over 1..max_images, the last class meaning "or more");
* spacegroup: 230-way CE on the mean-pooled graph embedding (label 0, "unknown", is ignored);
* contrastive: supervised contrastive loss (Khosla et al. 2020) on normalised graph projections,
  positives = other crystals of the batch with the same crystal system (−1, unknown, is ignored).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crysbench.features import BINNINGS
from crysbench.graph import GraphBatch
from crysbench.models._common import mean_pool, mlp
from crysbench.train.config import SSLConfig

N_SPACEGROUPS = 230


class SSLModel(nn.Module):
    """A crysgnn ``encoder`` plus the pre-training heads (the encoder's own property head is unused)."""

    def __init__(self, encoder: nn.Module, cfg: SSLConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or SSLConfig()
        d = encoder.config.width
        self.encoder, self.cfg = encoder, cfg
        self.group_sizes = [b.width for b in BINNINGS]
        self.node_head = mlp([d, d, sum(self.group_sizes)])
        self.pair_head = mlp([2 * d, d, 1 + cfg.max_images])  # bond logit, multiplicity logits
        self.spacegroup_head = mlp([d, d, N_SPACEGROUPS])
        self.projection = mlp([d, d, cfg.proj_width])

    def forward(self, batch: GraphBatch, spacegroup: Tensor, crystal_system: Tensor,
                generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """:func:`ssl_loss` of this model (a forward call, so DDP synchronises its gradients)."""
        return ssl_loss(self, batch, spacegroup, crystal_system, self.cfg, generator)


def mask_atoms(batch: GraphBatch, frac: float, generator: torch.Generator | None = None
               ) -> tuple[GraphBatch, Tensor]:
    """Batch with a random ``frac`` of atoms (at least one) set to Z = 0, and the bool mask [N]
    of the atoms to reconstruct (all atoms when ``frac`` is 0)."""
    n = batch.num_atoms
    if frac == 0:
        return batch, torch.ones(n, dtype=torch.bool, device=batch.numbers.device)
    order = torch.randperm(n, generator=generator).to(batch.numbers.device)
    hidden = torch.zeros(n, dtype=torch.bool, device=batch.numbers.device)
    hidden[order[:max(1, round(frac * n))]] = True
    return dataclasses.replace(batch, numbers=batch.numbers.masked_fill(hidden, 0)), hidden


def node_loss(logits: Tensor, numbers: Tensor, group_sizes: list[int], table: Tensor) -> Tensor:
    """Mean over feature groups of the CE between ``logits`` [M, F] and the one-hot rows table[Z]."""
    target = table[numbers]
    losses = [F.cross_entropy(lg, t.argmax(1)) for lg, t in
              zip(logits.split(group_sizes, 1), target.split(group_sizes, 1), strict=True)]
    return torch.stack(losses).mean()


def bonded_pairs(batch: GraphBatch) -> tuple[Tensor, Tensor, Tensor]:
    """Distinct bonded atom pairs (i [K], j [K]) and how many edges (periodic images) join them [K]."""
    n = batch.num_atoms
    keys, counts = torch.unique(batch.edge_i * n + batch.edge_j, return_counts=True)
    return keys // n, keys % n, counts


def sample_unbonded(batch: GraphBatch, bonded_keys: Tensor, n_samples: int,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Up to ``n_samples`` random same-crystal pairs (i ≠ j) with no edge between them."""
    dev = batch.numbers.device
    i = torch.randint(batch.num_atoms, (n_samples,), generator=generator).to(dev)
    crystal = batch.batch[i]
    sizes = (batch.ptr[1:] - batch.ptr[:-1])[crystal]
    j = batch.ptr[crystal] + (torch.rand(n_samples, generator=generator).to(dev) * sizes).long()
    keep = ~torch.isin(i * batch.num_atoms + j, bonded_keys) & (i != j)
    return i[keep], j[keep]


def pair_losses(head: nn.Module, h: Tensor, batch: GraphBatch, cfg: SSLConfig,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(bond BCE over bonded + sampled unbonded pairs, multiplicity CE over bonded pairs)."""
    bi, bj, count = bonded_pairs(batch)
    n_neg = max(1, round(cfg.negatives_per_edge * bi.shape[0]))
    ni, nj = sample_unbonded(batch, bi * batch.num_atoms + bj, n_neg, generator)
    i, j = torch.cat([bi, ni]), torch.cat([bj, nj])
    pair = torch.cat([h[i] + h[j], h[i] * h[j]], dim=1)  # symmetric in i ↔ j
    logits = head(pair)
    bonded = torch.cat([torch.ones_like(bi), torch.zeros_like(ni)]).to(h.dtype)
    bond = F.binary_cross_entropy_with_logits(logits[:, 0], bonded)
    images = count.clamp(max=cfg.max_images) - 1
    return bond, F.cross_entropy(logits[: bi.shape[0], 1:], images)


def supcon_loss(z: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """Supervised contrastive loss of embeddings z [B, d] (normalised here) with class labels [B];
    anchors without a positive (or labelled < 0) are skipped; 0 (with a graph) when none has one."""
    z = F.normalize(z, dim=1)
    valid = labels >= 0
    same = (labels[:, None] == labels[None, :]) & valid[:, None] & valid[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=z.device)
    pos = same & ~eye
    logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = (logits - torch.logsumexp(logits, dim=1, keepdim=True)).masked_fill(~pos, 0.0)
    anchors = pos.any(1)
    if not anchors.any():
        return z.sum() * 0.0
    return -(log_prob.sum(1)[anchors] / pos.sum(1)[anchors]).mean()


def ssl_loss(model: SSLModel, batch: GraphBatch, spacegroup: Tensor, crystal_system: Tensor,
             cfg: SSLConfig | None = None, generator: torch.Generator | None = None
             ) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the five parts and the parts themselves (detached), for one batch.

    ``spacegroup`` [B] int 1..230 (0 unknown) and ``crystal_system`` [B] int 0..6 (−1 unknown).
    """
    cfg = cfg or model.cfg
    masked, hidden = mask_atoms(batch, cfg.mask_frac, generator)
    h, _ = model.encoder.encode(masked)
    table = model.encoder.embed.table
    parts = {"node": node_loss(model.node_head(h[hidden]), batch.numbers[hidden], model.group_sizes, table)}
    parts["bond"], parts["multiplicity"] = pair_losses(model.pair_head, h, batch, cfg, generator)
    g = mean_pool(h, batch)
    parts["spacegroup"] = _spacegroup_loss(model.spacegroup_head(g), spacegroup.to(g.device))
    parts["contrastive"] = supcon_loss(model.projection(g), crystal_system.to(g.device), cfg.temperature)
    total = sum(getattr(cfg, f"w_{k}") * v for k, v in parts.items())
    return total, {k: v.detach() for k, v in parts.items()}


def _spacegroup_loss(logits: Tensor, spacegroup: Tensor) -> Tensor:
    """230-way CE; space group 0 (unknown) is ignored; 0 (with a graph) when all are unknown."""
    labels = spacegroup.long() - 1
    if not (labels >= 0).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=-1)


def symmetry_labels(store, indices) -> tuple[Tensor, Tensor]:
    """Space group [M] and crystal system [M] of store crystals ``indices`` (int64 tensors)."""
    from crysbench.store import open_store

    st = open_store(store, verify=False)
    sg, cs = st.column("spacegroup"), st.column("crystal_system")
    idx = torch.as_tensor(indices, dtype=torch.long)
    return torch.as_tensor(sg, dtype=torch.long)[idx], torch.as_tensor(cs, dtype=torch.long)[idx]
