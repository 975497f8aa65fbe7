"""Transfer-learning blocks: freezing strategies × models, pre-trained loading, MPT leakage guard and
masked loss, CrysGNN-style SSL losses, and distillation. Tiny float32 models on seeded crystals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from crysbench import synthetic
from crysbench.graph import GraphBatch, build_graph
from crysbench.models import MODELS, build
from crysbench.store.shard import crystal_system
from crysbench.train.metrics import masked_loss
from crysbench.transfer import (
    DistillModel,
    SSLConfig,
    SSLModel,
    apply_strategy,
    finetune_head,
    load_pretrained,
    mpt_pretrain_indices,
    select_blocks,
    ssl_loss,
    supcon_loss,
    train_mode,
)
from crysbench.transfer.ssl import bonded_pairs, mask_atoms
from crysbench.transfer.strategies import snapshot

CUTOFF = 4.0  # Å
SMALL = {  # two message-passing blocks each (ALIGNN: one 3-body + one 2-body), 2 targets
    "alignn": dict(width=8, depth=1, gcn_depth=1, n_rbf=16, n_angle_rbf=8),
    "cgcnn": dict(width=8, depth=2, head_width=8),
    "crysgnn": dict(width=8, depth=2, edge_width=4, head_width=8),
    "equiformer": dict(width=8, depth=2, heads=2, n_rbf=8),
    "transformer": dict(width=8, depth=2, heads=2, n_rbf=8),
}
LAYERS = {"alignn": [["alignn:0"], ["gcn:-1"], ["alignn:*", "gcn:0"]]}





@pytest.fixture(scope="module")
def batch() -> GraphBatch:
    """4 seeded crystals (3–6 atoms) with 2 targets; the second target is masked for crystal 1."""
    pos, cells, _, ptr = synthetic.random_batch(4, atoms=(3, 6), seed=0)
    rng = np.random.default_rng(1)
    zs = [torch.tensor(rng.integers(1, 60, size=int(ptr[b + 1] - ptr[b]))) for b in range(4)]
    g = build_graph(zs, [pos[ptr[b]:ptr[b + 1]] for b in range(4)], list(cells), [[True] * 3] * 4,
                    cutoff=CUTOFF, max_neighbors=12, line_graph=True, dtype=torch.float32)
    mask = torch.ones(4, 2, dtype=torch.bool)
    mask[1, 1] = False
    targets = torch.tensor(rng.normal(size=(4, 2)), dtype=torch.float32) * mask
    return dataclasses.replace(g, targets=targets, mask=mask)


def small_model(name: str, seed: int = 0, **over) -> nn.Module:
    torch.manual_seed(seed)
    return build(name, **{**SMALL[name], "n_targets": 2, **over})


def adamw_steps(model: nn.Module, loss_fn, steps: int = 3, lr: float = 1e-2) -> None:
    """AdamW with weight decay over *all* parameters (frozen ones have no grad, so AdamW skips them)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    for _ in range(steps):
        train_mode(model)
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()


# ------------------------------------------------------------------------------------------------
# strategies
# ------------------------------------------------------------------------------------------------
CASES = [(n, s, None) for n in sorted(MODELS) for s in ("unfreeze_all", "new_head", "last_layer")]
CASES += [(n, "interaction_layers", layers) for n in sorted(MODELS)
          for layers in LAYERS.get(n, [["0"], ["*"]])]


def _bn_buffers(model: nn.Module, frozen: bool) -> list[str]:
    """State-dict names of batch-norm buffers of (frozen or trainable) batch-norm modules."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if frozen != any(p.requires_grad for p in m.parameters()):
                out += [f"{name}.{b}" for b, _ in m.named_buffers()]
    return out


@pytest.mark.parametrize("name,strategy,layers", CASES, ids=lambda x: str(x))
def test_strategy_freezes_exactly(name, strategy, layers, batch):
    model = small_model(name)
    trainable = set(apply_strategy(model, strategy, layers))
    assert trainable == {n for n, p in model.named_parameters() if p.requires_grad}
    before = snapshot(model)
    adamw_steps(model, lambda: masked_loss(model(batch), batch.targets, batch.mask))
    after = model.state_dict()
    params = dict(model.named_parameters())
    frozen = [n for n in params if n not in trainable]
    if strategy != "unfreeze_all":
        assert frozen, f"{name}/{strategy}: nothing frozen"
    for n in frozen + _bn_buffers(model, frozen=True):
        assert torch.equal(before[n], after[n]), f"{name}/{strategy}: frozen {n} changed"
    for n in trainable:
        assert not torch.equal(before[n], after[n]), f"{name}/{strategy}: trainable {n} did not change"


def test_without_train_mode_frozen_bn_would_drift(batch):
    """The check above can fail: plain model.train() moves a frozen body's batch-norm statistics."""
    model = small_model("cgcnn")
    apply_strategy(model, "last_layer")
    before = snapshot(model)
    model.train()
    model(batch)
    assert not torch.equal(before["convs.0.bn_node.running_mean"], model.convs[0].bn_node.running_mean)


def test_strategy_head_shapes(batch):
    model = small_model("alignn")
    apply_strategy(model, "new_head")
    assert isinstance(model.out, nn.Sequential) and model(batch).shape == (4, 2)
    trainable = apply_strategy(small_model("cgcnn"), "last_layer")
    assert trainable == ["out.weight", "out.bias"]


def test_select_blocks_errors():
    alignn, cgcnn = small_model("alignn"), small_model("cgcnn")
    assert select_blocks(alignn, ["gcn:0"])[0] is alignn.gcn_layers[0]
    assert select_blocks(cgcnn, ["-1"])[0] is cgcnn.convs[1]
    for model, spec, words in [(alignn, "0", "ambiguous"), (alignn, "conv:0", "unknown block group"),
                               (cgcnn, "conv:5", "has 2 blocks"), (cgcnn, "conv:x", "'*'")]:
        with pytest.raises(ValueError, match=words):
            select_blocks(model, [spec])
    with pytest.raises(ValueError, match="choose one of"):
        apply_strategy(cgcnn, "freeze_everything")
    with pytest.raises(ValueError, match="needs layers"):
        apply_strategy(cgcnn, "interaction_layers")


# ------------------------------------------------------------------------------------------------
# pre-trained weights
# ------------------------------------------------------------------------------------------------
def test_load_pretrained_tolerates_other_head(batch):
    pre = small_model("cgcnn", seed=1, n_targets=5)
    model = small_model("cgcnn", seed=2, n_targets=1)
    report = load_pretrained(model, pre.state_dict())
    assert "out.weight" in report.skipped and "hidden.0.weight" in report.skipped
    assert torch.equal(model.convs[0].fc.weight, pre.convs[0].fc.weight)
    assert not torch.equal(model.hidden[0].weight, pre.hidden[0].weight)
    report = load_pretrained(model, pre.state_dict(), skip_head=False)  # hidden fits, out does not
    assert torch.equal(model.hidden[0].weight, pre.hidden[0].weight)
    assert report.skipped == ("out.weight", "out.bias") and model(batch).shape == (4, 1)
    wrapped = {f"encoder.{k}": v for k, v in pre.state_dict().items()}
    assert load_pretrained(small_model("cgcnn", seed=3), wrapped, prefix="encoder.").loaded


def test_load_pretrained_rejects_other_body():
    with pytest.raises(ValueError, match="shape mismatch"):
        load_pretrained(small_model("cgcnn", width=12), small_model("cgcnn").state_dict())
    with pytest.raises(ValueError, match="missing"):
        load_pretrained(small_model("cgcnn", depth=3), small_model("cgcnn").state_dict())


# ------------------------------------------------------------------------------------------------
# multi-property pre-training
# ------------------------------------------------------------------------------------------------
def test_masked_loss_gives_masked_entries_no_gradient(batch):
    pred = torch.randn(4, 2, requires_grad=True)
    masked_loss(pred, batch.targets, batch.mask).backward()
    assert torch.all(pred.grad[~batch.mask] == 0) and torch.all(pred.grad[batch.mask] != 0)
    model = small_model("alignn")
    mask = batch.mask.clone()
    mask[:, 1] = False  # property 1 absent everywhere: its output row must get no gradient
    masked_loss(model(batch), batch.targets, mask).backward()
    assert torch.all(model.out.weight.grad[1] == 0) and torch.any(model.out.weight.grad[0] != 0)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from crysbench.testing import synthetic_store

    return synthetic_store(tmp_path_factory.mktemp("mpt") / "store", n=24, shard_size=10)


def test_mpt_leakage_guard(store):
    from crysbench.store import open_store
    from crysbench.store.loader import StoreDataset

    ids = open_store(store).column("ids")
    ft = np.array([0, 5, 11, 23])
    sel = mpt_pretrain_indices(store, "mean_z", ft, exclude_ids=[ids[7]])
    assert sel.targets == ("volume_per_atom",) and sel.n_removed_ft == 5
    assert not set(sel.indices.tolist()) & {0, 5, 7, 11, 23} and len(sel.indices) == 19
    records = StoreDataset(store, indices=sel.indices, targets=list(sel.targets))
    for rec in records.__getitems__(list(range(len(records)))):
        assert rec["index"] not in {0, 5, 7, 11, 23} and rec["targets"].shape == (1,)
    with pytest.raises(ValueError, match="not in"):
        mpt_pretrain_indices(store, "band_gap", ft)
    with pytest.raises(IndexError):
        mpt_pretrain_indices(store, "mean_z", [24])


def test_symmetry_labels_from_store(store):
    from crysbench.transfer.ssl import symmetry_labels

    sg, cs = symmetry_labels(store, [3, 0, 17])
    assert sg.shape == cs.shape == (3,)
    assert cs.tolist() == [crystal_system(int(s)) for s in sg]


def test_finetune_head_two_extra_layers(batch):
    model = small_model("transformer")
    finetune_head(model, n_targets=1)
    assert sum(isinstance(m, nn.Linear) for m in model.out) == 3 and model(batch).shape == (4, 1)


# ------------------------------------------------------------------------------------------------
# self-supervised pre-training
# ------------------------------------------------------------------------------------------------
def ssl_labels() -> tuple[torch.Tensor, torch.Tensor]:
    sg = torch.tensor([225, 1, 221, 2])
    return sg, torch.tensor([crystal_system(int(s)) for s in sg])


def test_ssl_parts_finite_and_decrease(batch):
    torch.manual_seed(0)
    model = SSLModel(build("crysgnn", width=16, depth=2, edge_width=8), SSLConfig(mask_frac=0.3))
    sg, cs = ssl_labels()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        gen = torch.Generator().manual_seed(0)  # the same masked atoms and negatives every step
        total, parts = model(batch, sg, cs, gen) if len(history) % 2 else ssl_loss(model, batch, sg, cs,
                                                                                   generator=gen)
        history.append(parts)
        opt.zero_grad()
        total.backward()
        opt.step()
    assert set(history[0]) == {"node", "bond", "multiplicity", "spacegroup", "contrastive"}
    for k in history[0]:
        assert all(bool(torch.isfinite(h[k])) for h in history), k
        first, last = float(history[0][k]), float(history[-1][k])
        assert last < first, f"{k}: {first:.4f} → {last:.4f}"


def test_supcon_lower_when_clustered():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    gen = torch.Generator().manual_seed(0)
    clustered = torch.eye(3)[labels] + 0.05 * torch.randn(6, 3, generator=gen)
    scattered = torch.randn(6, 3, generator=gen)
    assert supcon_loss(clustered, labels, 0.1) < supcon_loss(scattered, labels, 0.1)
    assert float(supcon_loss(scattered, torch.tensor([0, 1, 2, 3, 4, -1]), 0.1)) == 0.0


def test_pair_multiplicity_and_masking():
    g = build_graph([[6]], [[[0.0, 0.0, 0.0]]], [torch.eye(3) * 2.0], [[True] * 3], cutoff=2.5,
                    max_neighbors=None)
    i, j, count = bonded_pairs(g)  # one atom, six images at 2 Å: one pair of multiplicity 6
    assert i.tolist() == [0] and j.tolist() == [0] and count.tolist() == [6]
    big = build_graph([[6] * 10], [torch.rand(10, 3) * 5], [torch.eye(3) * 5.0], [[True] * 3], cutoff=2.0)
    masked, hidden = mask_atoms(big, 0.3, torch.Generator().manual_seed(0))
    assert int(hidden.sum()) == 3 and torch.all(masked.numbers[hidden] == 0)
    assert torch.all(masked.numbers[~hidden] == 6)


# ------------------------------------------------------------------------------------------------
# distillation
# ------------------------------------------------------------------------------------------------
def test_distill_teacher_frozen_and_projection_learns(batch):
    teacher, student = small_model("cgcnn", seed=1, width=12), small_model("crysgnn", seed=2)
    kd = DistillModel(student, teacher, lam=0.5)
    assert isinstance(kd.projection, nn.Linear) and kd.projection.weight.shape == (12, 8)
    before = snapshot(teacher)
    opt = torch.optim.AdamW(kd.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(3):
        kd.train()
        opt.zero_grad(set_to_none=True)
        total, parts = kd.loss(batch)
        total.backward()
        if step == 0:
            assert kd.projection.weight.grad is not None and kd.projection.weight.grad.abs().sum() > 0
            assert all(p.grad is None for p in teacher.parameters())
        opt.step()
    assert not teacher.training and parts["distill"] > 0
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher {k} changed"


def test_distill_lambda_zero_is_plain_loss(batch):
    student = small_model("alignn", seed=2)
    kd = DistillModel(student, small_model("alignn", seed=1), lam=0.0).eval()
    assert isinstance(kd.projection, nn.Identity)
    total, _ = kd.loss(batch)
    assert torch.equal(total, masked_loss(student(batch), batch.targets, batch.mask))
    assert torch.equal(kd(batch), student(batch))


# ------------------------------------------------------------------------------------------------
# with the real trainer (until it has transfer hooks, its model builder is patched)
# ------------------------------------------------------------------------------------------------
def test_trainer_finetunes_pretrained_body(store, tmp_path):
    """Pre-train on volume_per_atom with train.run, then fine-tune mean_z through the trainer's transfer
    config (init_from + 'last_layer'; checkpoints, best-model reload and evaluation included): the
    fine-tuned body equals the pre-trained one and the head moved."""
    from crysbench import config as C
    from crysbench.train import loop
    from crysbench.train.checkpoint import load
    from crysbench.train.config import RunConfig

    def cfg(target: str, tag: str, **transfer) -> RunConfig:
        return C.from_dict(RunConfig, {"data": {"store": str(store), "targets": [target], "batch_size": 8},
                                       "model": {"name": "cgcnn", "size": "xxs"}, "out_dir": str(tmp_path),
                                       "train": {"epochs": 1, "threads": 1}, "tag": tag,
                                       "transfer": transfer})

    pre = loop.run(cfg("volume_per_atom", "pre"), log=lambda m: None)
    best = tmp_path / pre["run_id"] / "ckpt" / "best.pt"
    weights = load(best)["model"]
    ft = loop.run(cfg("mean_z", "ft", init_from=str(best), strategy="last_layer"), log=lambda m: None)
    tuned = load(tmp_path / ft["run_id"] / "ckpt" / "best.pt")["model"]
    body = [k for k in weights if k.startswith(("embed.linear", "convs.")) and k.endswith(("weight", "bias"))]
    assert body and all(torch.equal(tuned[k], weights[k]) for k in body)
    assert not torch.equal(tuned["out.weight"], weights["out.weight"])
