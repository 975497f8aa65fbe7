"""Transfer-learning studies as plans: each verb of ``python -m crysbench transfer`` expands into
staged runs (stage 0 pre-trains, later stages start from earlier stages' checkpoints), written to disk
before anything runs and launched like a scaling sweep (locally in stage order, or one Slurm array
per stage chained with ``afterok``).

All studies of one root share a run folder (``<root>/runs``): a run's id is its config hash, so a
pre-training run used by two studies (pair-wise and strategies, say) trains once.

Leakage: every study cuts the store's train part into a fine-tuning pool (``ft_pool_size`` crystals)
and a disjoint pre-training pool (:func:`crysbench.train.data.pool_indices`); validation and test
parts are shared, never trained on. Self-supervised pre-training filters its pool against the
val/test parts of the stores it will be evaluated on.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from crysbench import config as C
from crysbench.sweep.plan import _atomic_text
from crysbench.train.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig

STUDIES = ("pairwise", "strategies", "mpt", "distill", "exp")
DEFAULT_PROPERTIES = ("cgcnn_log10_k_vrh", "cgcnn_log10_g_vrh", "chgnet_formation_energy_per_atom",
                      "cgcnn_band_gap", "chgnet_mean_abs_magmom")
EXP_TARGET = "exp_formation_enthalpy_per_atom"
INTERACTION_LAYERS = {"cgcnn": ("conv:-1",), "alignn": ("alignn:*", "gcn:*"), "crysgnn": ("layer:-1",),
                      "transformer": ("block:-1",), "equiformer": ("block:-1",)}


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    name: str = ""                                   # default: the study verb
    base: RunConfig = RunConfig()                    # fine-tuning / scratch runs start from this
    properties: tuple[str, ...] = DEFAULT_PROPERTIES
    pairs: tuple[str, ...] = ()                      # "A->B": strategies (default 3 pairs); mpt rows
    ft_sizes: tuple[int, ...] = (800,)
    sampling: str = "random"                         # random | weighted | uniform (FT points, Devi et al.)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    pt_size: int | None = None                       # pre-training size knob (None: the whole PT pool)
    pt_epochs: int | None = None                     # default: base.train.epochs
    pt_seed: int = 0
    strategies: tuple[str, ...] = ("unfreeze_all", "new_head", "last_layer", "interaction_layers",
                                   "distillation")
    layer_sets: tuple[str, ...] = ()                 # interaction_layers variants, e.g. "alignn:*", "gcn:*"
    distill_lambda: float = 1.0
    distill_lambdas: tuple[float, ...] = ()          # distill: a λ scan, one "distilled λ=x" row per value
    ood_systems: tuple[int, ...] = (6,)              # mpt: crystal systems held out of PT for the OOD test
    students: tuple[str, ...] = ("cgcnn", "transformer")
    teacher_size: str = "xs"
    ssl_store: str = ""                              # distill/exp: untagged store for CrysGNN pre-training
    ssl_epochs: int = 20
    exp_store: str = ""                              # exp: the experimental formation-enthalpy store
    exp_fracs: tuple[float, ...] = (0.0, 0.2, 0.8)
    exp_pt_target: str = "cgcnn_formation_energy_per_atom"
    exp_target: str = EXP_TARGET
    exp_test_frac: float = 0.2


def _replace(cfg: RunConfig, **sections) -> RunConfig:
    changes = {k: dataclasses.replace(getattr(cfg, k), **v) for k, v in sections.items()}
    return dataclasses.replace(cfg, **changes)


def _run(cfg: RunConfig, stage: int, role: str, **labels) -> dict:
    seed = labels.get("seed", cfg.train.seed)
    value = " ".join(f"{k}={v}" for k, v in labels.items() if k != "seed")
    return {"run_id": C.config_hash(cfg), "stage": stage, "role": role, "labels": labels,
            "axis_value": value, "seed": int(seed), "config": C.to_dict(cfg)}


def _folder(runs_dir: Path, run: dict) -> Path:
    return runs_dir / run["run_id"]


class _Builder:
    def __init__(self, study: StudyConfig, runs_dir: Path):
        self.s, self.runs_dir = study, runs_dir
        b = study.base
        self.ft_base = _replace(b, data={"pool": "finetune", "ft_pool_size": b.data.ft_pool_size,
                                         "sampling": study.sampling})
        self.runs: list[dict] = []

    def add(self, cfg: RunConfig, stage: int, role: str, **labels) -> dict:
        r = _run(dataclasses.replace(cfg, out_dir=str(self.runs_dir)), stage, role, **labels)
        if r["run_id"] not in {x["run_id"] for x in self.runs}:
            self.runs.append(r)
        return r

    def pt_config(self, targets: tuple[str, ...], model: str | None = None, **data) -> RunConfig:
        s = self.s
        return _replace(s.base, data={"targets": tuple(targets), "pool": "pretrain", "train_size": s.pt_size,
                                      **data},
                        model={"name": model or s.base.model.name},
                        train={"seed": s.pt_seed, "epochs": s.pt_epochs or s.base.train.epochs})

    def pretrain(self, targets: tuple[str, ...], model: str | None = None, role: str = "pretrain",
                 labels: dict | None = None, **data) -> dict:
        labels = labels or {"pt": "+".join(targets)}
        return self.add(self.pt_config(targets, model, **data), 0, role, **labels, seed=self.s.pt_seed)

    def ckpt(self, run: dict) -> str:
        return str(_folder(self.runs_dir, run) / "ckpt" / "best.pt")

    def finetune(self, target: str, size: int, seed: int, model: str | None = None, **sections) -> RunConfig:
        cfg = _replace(self.ft_base, data={"targets": (target,), "train_size": size, "subset_seed": seed},
                       train={"seed": seed}, model={"name": model or self.s.base.model.name})
        return _replace(cfg, **sections) if sections else cfg


def plan_pairwise(study: StudyConfig, runs_dir: Path) -> list[dict]:
    """Pre-train on each property A (PT pool), fine-tune (unfreeze all, new head) on each B ≠ A at each
    FT size; scratch models on B at the same sizes and seeds."""
    b = _Builder(study, runs_dir)
    pts = {a: b.pretrain((a,)) for a in study.properties}
    for ft in study.properties:
        for n in study.ft_sizes:
            for seed in study.seeds:
                b.add(b.finetune(ft, n, seed), 1, "scratch", pt="scratch", ft=ft, ft_size=n, seed=seed)
                for pt, run in pts.items():
                    if pt != ft:
                        cfg = b.finetune(ft, n, seed, transfer={"init_from": b.ckpt(run)})
                        b.add(cfg, 1, "finetune", pt=pt, ft=ft, ft_size=n, seed=seed)
    return b.runs


def _pairs(study: StudyConfig) -> list[tuple[str, str]]:
    if study.pairs:
        out = []
        for p in study.pairs:
            a, sep, c = p.partition("->")
            if not sep or not a or not c:
                raise ValueError(f"pairs: expected 'A->B', got {p!r}")
            out.append((a.strip(), c.strip()))
        return out
    props = study.properties
    if len(props) < 2:
        raise ValueError("strategies: need at least two properties (or explicit pairs)")
    return [(props[i], props[(i + 1) % len(props)]) for i in range(min(3, len(props)))]


def plan_strategies(study: StudyConfig, runs_dir: Path) -> list[dict]:
    """Each pair A→B: the fine-tuning strategies from A's pre-trained model (distillation: a fresh
    student with the PT model as frozen teacher), plus scratch, at each FT size and seed."""
    b = _Builder(study, runs_dir)
    model = study.base.model.name
    layer_sets = study.layer_sets or INTERACTION_LAYERS.get(model, ("*",))
    for pt, ft in _pairs(study):
        run = b.pretrain((pt,))
        for n in study.ft_sizes:
            for seed in study.seeds:
                lab = {"pair": f"{pt}->{ft}", "pt": pt, "ft": ft, "ft_size": n, "seed": seed}
                b.add(b.finetune(ft, n, seed), 1, "scratch", strategy="scratch", **lab)
                for strat in study.strategies:
                    if strat == "distillation":
                        cfg = b.finetune(ft, n, seed, transfer={
                            "teacher": str(_folder(runs_dir, run)), "distill_lambda": study.distill_lambda})
                        b.add(cfg, 1, "finetune", strategy=strat, **lab)
                    elif strat == "interaction_layers":
                        for layers in layer_sets:
                            cfg = b.finetune(ft, n, seed, transfer={"init_from": b.ckpt(run), "strategy": strat,
                                                                    "layers": (layers,)})
                            b.add(cfg, 1, "finetune", strategy=f"{strat}[{layers}]", **lab)
                    else:
                        cfg = b.finetune(ft, n, seed, transfer={"init_from": b.ckpt(run), "strategy": strat})
                        b.add(cfg, 1, "finetune", strategy=strat, **lab)
    return b.runs


def plan_mpt(study: StudyConfig, runs_dir: Path) -> list[dict]:
    """Per property B: a multi-property model pre-trained with the masked loss on every other property
    (PT pool only: B's values and every FT crystal are out), fine-tuned with a fresh two-layer head;
    scratch and every pair-wise A→B model alongside (the report picks the best pair-wise row); with
    ``pairs`` set, only those A→B rows (e.g. the best PT per column of a finished pair matrix). OOD:
    PT without the ``ood_systems`` crystal systems, FT and test only on them."""
    b = _Builder(study, runs_dir)
    props = study.properties
    wanted = _pairs(study) if study.pairs else [(a, c) for a in props for c in props if a != c]
    for a, c in wanted:
        if a not in props or c not in props:
            raise ValueError(f"mpt: pair {a}->{c} names a property outside properties={list(props)}")
    pair_pts = {a: b.pretrain((a,)) for a in dict.fromkeys(a for a, _ in wanted)}
    for ft in props:
        others = tuple(p for p in props if p != ft)
        mpt = b.pretrain(others, role="mpt_pretrain", labels={"pt": "mpt", "held_out": ft})
        ood = b.pretrain(others, role="mpt_pretrain", labels={"pt": "mpt-ood", "held_out": ft},
                         drop_systems=tuple(study.ood_systems))
        for n in study.ft_sizes:
            for seed in study.seeds:
                lab = {"ft": ft, "ft_size": n, "seed": seed}
                mpt_tr = {"init_from": b.ckpt(mpt), "head_extra_layers": 2}
                b.add(b.finetune(ft, n, seed), 1, "scratch", pt="scratch", split="in-distribution", **lab)
                b.add(b.finetune(ft, n, seed, transfer=mpt_tr), 1, "finetune", pt="mpt", split="in-distribution",
                      **lab)
                for pt, run in pair_pts.items():
                    if (pt, ft) in wanted:
                        b.add(b.finetune(ft, n, seed, transfer={"init_from": b.ckpt(run)}), 1, "finetune",
                              pt=pt, split="in-distribution", **lab)
                # OOD: fine-tune and test on the held-out crystal systems only; PT never saw them, so
                # their whole train part is the FT pool
                only = {"only_systems": tuple(study.ood_systems), "pool": "all"}
                ood_tr = {"init_from": b.ckpt(ood), "head_extra_layers": 2}
                b.add(b.finetune(ft, n, seed, data=only), 1, "scratch", pt="scratch", split="ood", **lab)
                b.add(b.finetune(ft, n, seed, data=only, transfer=ood_tr), 1, "finetune", pt="mpt",
                      split="ood", **lab)
    return b.runs


def _ssl_run(b: _Builder, exclude: tuple[str, ...]) -> dict:
    s = b.s
    if not s.ssl_store:
        raise ValueError("this study needs ssl_store (the untagged store; the CLI fills in the built-in one)")
    cfg = _replace(s.base, data={"store": s.ssl_store, "targets": (), "pool": "all", "train_size": None},
                   model={"name": "crysgnn", "size": s.teacher_size},
                   train={"objective": "ssl", "epochs": s.ssl_epochs, "seed": s.pt_seed})
    cfg = dataclasses.replace(cfg, ssl=dataclasses.replace(cfg.ssl, exclude_stores=tuple(exclude)))
    return b.add(cfg, 0, "ssl", pt="crysgnn-ssl", seed=s.pt_seed)


def _lambdas(study: StudyConfig) -> list[tuple[float, str]]:
    """(λ, row label) of the distilled runs: one "distilled" row, or "distilled λ=x" per scanned value."""
    if not study.distill_lambdas:
        return [(study.distill_lambda, "distilled")]
    if any(lam < 0 for lam in study.distill_lambdas):
        raise ValueError(f"distill_lambdas must be >= 0, got {list(study.distill_lambdas)}")
    return [(float(lam), f"distilled λ={lam:g}") for lam in study.distill_lambdas]


def plan_distill(study: StudyConfig, runs_dir: Path) -> list[dict]:
    """CrysGNN SSL pre-training on the untagged pool (filtered against this store's val/test), then per
    property: each student vanilla vs distilled (property loss + λ·embedding distance), and the
    pre-trained CrysGNN fine-tuned."""
    b = _Builder(study, runs_dir)
    ssl = _ssl_run(b, (_split_ref(study.base.data),))
    for ft in study.properties:
        for n in study.ft_sizes:
            for seed in study.seeds:
                lab = {"ft": ft, "ft_size": n, "seed": seed}
                for m in study.students:
                    b.add(b.finetune(ft, n, seed, model=m), 1, "scratch", model=m, approach="vanilla", **lab)
                    for lam, approach in _lambdas(study):
                        cfg = b.finetune(ft, n, seed, model=m, transfer={
                            "teacher": str(_folder(runs_dir, ssl)), "distill_lambda": lam})
                        b.add(cfg, 1, "finetune", model=m, approach=approach, **lab)
                cfg = b.finetune(ft, n, seed, model="crysgnn", transfer={"init_from": b.ckpt(ssl)})
                cfg = _replace(cfg, model={"size": study.teacher_size})
                b.add(cfg, 1, "finetune", model="crysgnn", approach="fine-tuned", **lab)
    return b.runs


def plan_exp(study: StudyConfig, runs_dir: Path) -> list[dict]:
    """Computed → experimental (CrysGNN's DFT-bias study): models pre-trained (or distilled) on the
    teacher formation energy of the labelled store, then tested on the experimental set with 0%, 20%
    and 80% of it used for fine-tuning; vanilla (scratch on the experimental data) alongside."""
    if not study.exp_store:
        raise ValueError("exp: set exp_store (the CLI fills in the built-in experimental set)")
    b = _Builder(study, runs_dir)
    exp_data = {"store": study.exp_store, "targets": (study.exp_target,), "val_frac": 0.0,
                "test_frac": study.exp_test_frac, "pool": "all", "sampling": "random"}
    ssl = _ssl_run(b, (_split_ref(study.base.data),
                       _split_ref(dataclasses.replace(study.base.data, **exp_data))))
    n_exp = _count_exp(study, exp_data)
    for m in study.students:
        vanilla = b.pretrain((study.exp_pt_target,), model=m)
        kd = _replace(b.pt_config((study.exp_pt_target,), m),
                      transfer={"teacher": str(_folder(runs_dir, ssl)), "distill_lambda": study.distill_lambda})
        # stage 1: it needs the SSL teacher of stage 0 (same-stage runs run side by side on Slurm)
        distilled = b.add(kd, 1, "pretrain", pt=f"{study.exp_pt_target}+kd", seed=study.pt_seed)
        sources = (("vanilla", vanilla, ""), ("distilled", distilled, "student."))
        for frac in study.exp_fracs:
            n = min(n_exp, int(round(frac / (1 - study.exp_test_frac) * n_exp)))
            for seed in study.seeds if frac else study.seeds[:1]:  # zero-shot is deterministic
                lab = {"model": m, "ft_frac": frac, "seed": seed}
                ft = b.finetune(study.exp_target, max(n, 1), seed, model=m, data=exp_data)
                ft = _replace(ft, data={"train_size": n if 0 < n < n_exp else None})
                if frac:
                    b.add(ft, 1, "scratch", approach="exp-only", **lab)
                for name, run, prefix in sources:
                    tr = {"init_from": b.ckpt(run), "init_prefix": prefix}
                    if not frac:  # zero-shot: the PT model's head and normalizer, no training
                        tr.update(skip_head=False, init_normalizer=True)
                    cfg = _replace(ft, transfer=tr, train={"epochs": ft.train.epochs if frac else 0})
                    b.add(cfg, 2, "finetune", approach=name, **lab)
    return b.runs


def _split_ref(data: DataConfig) -> str:
    from crysbench.train.data import ensure_split, split_name

    ensure_split(data)  # the SSL filter reads it: make it before anything runs
    return f"{data.store}::{split_name(data)}"


def _count_exp(study: StudyConfig, exp_data: dict) -> int:
    from crysbench.train.data import count_train

    return count_train(dataclasses.replace(study.base.data, **exp_data))


PLANNERS = {"pairwise": plan_pairwise, "strategies": plan_strategies, "mpt": plan_mpt,
            "distill": plan_distill, "exp": plan_exp}


def tables(study: str, cfg: StudyConfig) -> list[dict]:
    """The report's table specs for a study (see crysbench.transfer.report)."""
    sel = {"role": ["finetune", "scratch"]}
    if study == "pairwise":
        return [{"name": "pair-matrix", "title": "Pair-wise PT→FT: test MAE by pre-training (rows) and "
                 "fine-tuning (columns) property", "rows": "pt", "cols": "ft", "facet": "ft_size", "select": sel,
                 "baseline": {"pt": "scratch"}, "heatmap": True,
                 "row_order": ["scratch", *cfg.properties], "col_order": list(cfg.properties)}]
    if study == "strategies":
        return [{"name": "strategies", "title": "Fine-tuning strategies per PT→FT pair (test MAE)",
                 "rows": "strategy", "cols": "pair", "facet": "ft_size", "select": sel,
                 "baseline": {"strategy": "scratch"}}]
    if study == "mpt":
        best = {"key": "pt", "exclude": ["scratch", "mpt"], "label": "best pair-wise"}
        return [{"name": "mpt", "title": "Multi-property pre-training vs scratch vs the best pair-wise model",
                 "rows": "pt", "cols": "ft", "facet": "ft_size", "select": {**sel, "split": ["in-distribution"]},
                 "baseline": {"pt": "scratch"}, "best_of": best, "row_order": ["scratch", "mpt"]},
                {"name": "mpt-ood", "title": f"Out of distribution: fine-tune and test on crystal systems "
                 f"{list(cfg.ood_systems)}, pre-trained without them", "rows": "pt", "cols": "ft",
                 "facet": "ft_size", "select": {**sel, "split": ["ood"]}, "baseline": {"pt": "scratch"}}]
    if study == "distill":
        return [{"name": "distill", "title": "Vanilla vs distilled (CrysGNN teacher) vs fine-tuned CrysGNN",
                 "rows": "approach", "cols": "ft", "facet": "model", "select": sel,
                 "baseline": {"approach": "vanilla"},
                 "row_order": ["vanilla", *(a for _, a in _lambdas(cfg)), "fine-tuned"]}]
    if study == "exp":
        return [{"name": "exp", "title": "Experimental formation enthalpy: share of the experimental set "
                 "used for fine-tuning (columns)", "rows": "approach", "cols": "ft_frac", "facet": "model",
                 "select": sel, "baseline": {"approach": "vanilla"},
                 "row_order": ["exp-only", "vanilla", "distilled"]}]
    raise ValueError(f"unknown study {study!r}; choose one of {STUDIES}")


def check_stages(runs: list[dict]) -> None:
    """Every run that starts from another run of the plan (``transfer.init_from`` checkpoint or
    ``transfer.teacher`` folder) must sit in a later stage: runs of one stage run side by side."""
    stage = {r["run_id"]: r["stage"] for r in runs}
    for r in runs:
        tr = r["config"].get("transfer") or {}
        for key in ("init_from", "teacher"):
            ref = tr.get(key)
            if not ref:
                continue
            path = Path(ref)
            dep = path.parent.parent.name if key == "init_from" else path.name
            if dep in stage and stage[dep] >= r["stage"]:
                raise ValueError(f"plan: run {r['run_id']} (stage {r['stage']}) needs run {dep} ({key}) "
                                 f"of stage {stage[dep]}; it must be in an earlier stage")


def write_study_plan(study: str, cfg: StudyConfig, root: Path, command: str = "") -> tuple[Path, dict]:
    """Plan ``study`` under ``root/<name>`` with runs in ``root/runs``; returns (plan folder, plan)."""
    if study not in PLANNERS:
        raise ValueError(f"unknown study {study!r}; choose one of {STUDIES}")
    root = Path(root).resolve()
    folder = root / (cfg.name or study)
    runs = sorted(PLANNERS[study](cfg, root / "runs"), key=lambda r: r["stage"])
    check_stages(runs)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "configs").mkdir(exist_ok=True)
    for r in runs:
        _atomic_text(folder / "configs" / f"{r['run_id']}.yaml", C.dump_yaml(C.from_dict(RunConfig, r["config"])))
    plan = {"study": study, "command": command, "meta": {"config": C.to_dict(cfg), "tables": tables(study, cfg)},
            "axis": "transfer", "runs": runs}
    _atomic_text(folder / "plan.json", json.dumps(plan, indent=1))
    return folder, plan


def preset(name: str, study: str, model: str) -> StudyConfig:
    """``quick``: minutes on a laptop (3 properties, FT 100, 2 seeds); ``full``: the committed studies."""
    base = RunConfig(data=DataConfig(batch_size=32, ft_pool_size=1000),
                     model=ModelConfig(name=model, size="xxs"),
                     optim=OptimConfig(max_lr=3e-3, schedule="cosine"),
                     train=TrainConfig(epochs=12, ckpt_every=50, threads=1))
    if name == "quick":
        return StudyConfig(base=dataclasses.replace(base, train=dataclasses.replace(base.train, epochs=6)),
                           properties=DEFAULT_PROPERTIES[:2] + DEFAULT_PROPERTIES[4:], ft_sizes=(100,),
                           seeds=(0, 1), pt_size=1000, pt_epochs=6, ssl_epochs=4, teacher_size="xxs",
                           students=("cgcnn",))
    if name == "full":  # pre-training on 4,000 crystals of the PT pool; fine-tuning on 800 of the FT pool
        return StudyConfig(base=base, pt_size=4000)
    raise ValueError(f"unknown preset {name!r}; choose quick or full")
