"""Fine-tuning strategies: which parameters of a (pre-trained) crystal model train, and which stay frozen.

Every model is a body (embedding + message-passing blocks, ``node_embeddings``) and a head on the
mean-pooled embedding. The head is the set of submodules named by :data:`HEADS` (``out`` for all
models, plus ``hidden`` for CGCNN and CrysGNN). Message-passing blocks live in ModuleLists named by
:data:`BLOCKS`, addressed as ``"group:index"`` (``index`` an int, negative from the end, or ``*``):

=========== ======================================== ==========================================
model       groups (alias → ModuleList)              one block is
=========== ======================================== ==========================================
alignn      ``alignn`` → alignn_layers (3-body),     line-graph conv + atom-graph conv /
            ``gcn`` → gcn_layers (2-body)            one edge-gated atom-graph conv
cgcnn       ``conv`` → convs                         one gated convolution
crysgnn     ``layer`` → layers                       bond update + gated atom update
transformer ``block`` → blocks                       attention + feed-forward (pre-norm)
equiformer  ``block`` → blocks                       equivariant attention + gated feed-forward
=========== ======================================== ==========================================

A model with one group also accepts a bare index (``"0"``, ``"-1"``, ``"*"``). Frozen parameters
get ``requires_grad=False`` (so AdamW, which skips parameters without gradients, never decays
them), and :func:`train_mode` keeps frozen submodules in eval mode so their batch-norm running
statistics stay fixed too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from crysbench.models._common import mlp

STRATEGIES = ("unfreeze_all", "new_head", "last_layer", "interaction_layers")
HEADS: dict[str, tuple[str, ...]] = {"cgcnn": ("hidden", "out"), "crysgnn": ("hidden", "out")}
DEFAULT_HEAD = ("out",)
BLOCKS: dict[str, dict[str, str]] = {
    "alignn": {"alignn": "alignn_layers", "gcn": "gcn_layers"},
    "cgcnn": {"conv": "convs"},
    "crysgnn": {"layer": "layers"},
    "transformer": {"block": "blocks"},
    "equiformer": {"block": "blocks"},
}


def head_names(model: nn.Module) -> tuple[str, ...]:
    """Names of the head's top-level submodules (a model may declare ``head_modules`` itself)."""
    declared = getattr(model, "head_modules", None)
    return tuple(declared) if declared else HEADS.get(getattr(model, "name", ""), DEFAULT_HEAD)


def block_groups(model: nn.Module) -> dict[str, nn.ModuleList]:
    """Alias → message-passing ModuleList; unknown models: every ModuleList child outside the head."""
    table = BLOCKS.get(getattr(model, "name", ""))
    if table is None:
        heads = set(head_names(model))
        table = {n: n for n, m in model.named_children() if isinstance(m, nn.ModuleList) and n not in heads}
    return {alias: getattr(model, attr) for alias, attr in table.items()}


def select_blocks(model: nn.Module, layers: Sequence[str | int]) -> list[nn.Module]:
    """The blocks named by ``layers`` (e.g. ``["alignn:0", "gcn:*"]``); errors name what exists."""
    groups = block_groups(model)
    chosen: list[nn.Module] = []
    for spec in layers:
        group, _, index = str(spec).rpartition(":")
        if not group:
            if len(groups) != 1:
                raise ValueError(f"layer {spec!r} is ambiguous for {type(model).__name__}: "
                                 f"write group:index with group one of {sorted(groups)}")
            group = next(iter(groups))
        chosen += _pick(groups, group, index, spec)
    return chosen


def _pick(groups: dict[str, nn.ModuleList], group: str, index: str, spec) -> list[nn.Module]:
    if group not in groups:
        raise ValueError(f"layer {spec!r}: unknown block group {group!r}; this model has {sorted(groups)}")
    blocks = groups[group]
    if index == "*":
        return list(blocks)
    try:
        return [blocks[int(index)]]
    except (ValueError, IndexError):
        raise ValueError(f"layer {spec!r}: index must be an int in [-{len(blocks)}, {len(blocks) - 1}] "
                         f"or '*' (group {group!r} has {len(blocks)} blocks)") from None


def head_modules(model: nn.Module) -> list[nn.Module]:
    return [getattr(model, n) for n in head_names(model)]


def last_linear(model: nn.Module) -> nn.Linear:
    """The head's final Linear layer (the one that outputs the targets)."""
    linears = [m for h in head_modules(model) for m in h.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__}: head {head_names(model)} has no Linear layer")
    return linears[-1]


def replace_head(model: nn.Module, n_targets: int | None = None, extra_layers: int = 1) -> nn.Module:
    """Fresh head: re-initialise every head module and swap ``out`` for an MLP with ``extra_layers``
    hidden SiLU layers as wide as its input (``n_targets`` defaults to the old output size)."""
    old = last_linear(model)
    for h in head_modules(model):
        for m in h.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()
    width = next(m for m in model.out.modules() if isinstance(m, nn.Linear)).in_features
    n_out = old.out_features if n_targets is None else n_targets
    model.out = mlp([width] * (extra_layers + 1) + [n_out]).to(old.weight.device, old.weight.dtype)
    return model


def apply_strategy(model: nn.Module, strategy: str, layers: Sequence[str | int] | None = None) -> list[str]:
    """Freeze ``model`` for ``strategy`` (see :data:`STRATEGIES`) in place; return trainable names.

    ``new_head`` calls :func:`replace_head` first (one hidden layer); ``interaction_layers`` trains
    the blocks in ``layers`` plus the whole head.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown fine-tuning strategy {strategy!r}; choose one of {STRATEGIES}")
    if strategy == "interaction_layers" and not layers:
        raise ValueError("strategy 'interaction_layers' needs layers, e.g. ['alignn:0'] or ['*']")
    if strategy == "new_head":
        replace_head(model)
    trainable = _trainable_modules(model, strategy, layers or [])
    model.requires_grad_(False)
    for m in trainable:
        m.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _trainable_modules(model: nn.Module, strategy: str, layers: Sequence[str | int]) -> list[nn.Module]:
    if strategy == "unfreeze_all":
        return [model]
    if strategy == "last_layer":
        return [last_linear(model)]
    blocks = select_blocks(model, layers) if strategy == "interaction_layers" else []
    return blocks + head_modules(model)


def train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, then eval mode for every submodule whose parameters are all frozen, so a
    frozen body's batch-norm statistics (and any dropout) stay as pre-trained. Returns ``model``."""
    model.train()
    for m in model.modules():
        params = list(m.parameters())
        if params and not any(p.requires_grad for p in params):
            m.eval()
    return model


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What to hand the optimizer: only parameters that train."""
    return [p for p in model.parameters() if p.requires_grad]


@dataclass(frozen=True)
class LoadReport:
    """Keys copied into the model, pre-trained keys skipped (head / shape mismatch), model keys left fresh."""

    loaded: tuple[str, ...]
    skipped: tuple[str, ...]
    fresh: tuple[str, ...]


def load_pretrained(model: nn.Module, state_dict: dict[str, Tensor], skip_head: bool = True,
                    prefix: str = "") -> LoadReport:
    """Copy pre-trained body weights (and, unless ``skip_head``, head tensors whose shapes match, so a
    head with another number of targets is tolerated). Keys are taken from ``state_dict`` after
    stripping ``prefix`` (e.g. ``"encoder."``); body keys must match exactly in name and shape."""
    if prefix:
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    own = model.state_dict()
    heads = head_names(model)

    def is_head(key: str) -> bool:
        return key.split(".", 1)[0] in heads

    take = {k: v for k, v in state_dict.items()
            if not is_head(k) or (not skip_head and k in own and own[k].shape == v.shape)}
    _check_body(model, own, take, state_dict, is_head)
    model.load_state_dict(take, strict=False)
    return LoadReport(tuple(take), tuple(k for k in state_dict if k not in take),
                      tuple(k for k in own if k not in take))


def _check_body(model, own: dict, take: dict, given: dict, is_head) -> None:
    name = type(model).__name__
    unexpected = [k for k in take if k not in own]
    missing = [k for k in own if not is_head(k) and k not in given]
    wrong = [f"{k} {tuple(given[k].shape)} vs {tuple(own[k].shape)}" for k in take
             if k in own and given[k].shape != own[k].shape]
    if unexpected or missing or wrong:
        raise ValueError(f"load_pretrained into {name}: body does not match the pre-trained weights; "
                         f"unexpected {unexpected[:5]}, missing {missing[:5]}, shape mismatch {wrong[:5]} "
                         "(same model name and size rung needed)")


def freeze_report(model: nn.Module) -> dict[str, int]:
    """Counts of trainable and frozen scalars (for logs and the transfer tables)."""
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": n_train, "frozen": sum(p.numel() for p in model.parameters()) - n_train}


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of every parameter and buffer (for tests and sanity checks)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


__all__ = ["BLOCKS", "HEADS", "STRATEGIES", "LoadReport", "apply_strategy", "block_groups", "freeze_report",
           "head_names", "last_linear", "load_pretrained", "replace_head", "select_blocks", "snapshot",
           "train_mode", "trainable_parameters"]
