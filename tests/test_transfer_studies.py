"""Transfer studies: plans (pools, leakage, stages), the trainer's transfer hooks (zero-shot
normalizer, distillation), concurrent drivers, and the `transfer` verbs end to end on a tiny store."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import require_slurm

from crysbench import config as C
from crysbench.sweep.runner import Busy, _lock, run_index, status
from crysbench.testing import synthetic_store
from crysbench.train.checkpoint import load
from crysbench.train.config import DataConfig, RunConfig
from crysbench.train.data import run_parts, sample_subset, train_indices
from crysbench.transfer.studies import StudyConfig, check_stages, write_study_plan

ROOT = Path(__file__).resolve().parents[1]
PROPS = ("volume_per_atom", "mean_z")
TINY = """
properties: [volume_per_atom, mean_z]
ft_sizes: [16]
seeds: [0, 1]
pt_epochs: 2
pt_size: null
base:
  data: {batch_size: 8, ft_pool_size: 24}
  model: {name: cgcnn, size: xxs}
  train: {epochs: 2, ckpt_every: 4, threads: 1}
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("tstore") / "s", n=90)


def _study(store, **kw) -> StudyConfig:
    base = C.from_dict(RunConfig, {"data": {"store": str(store), "batch_size": 8, "ft_pool_size": 24},
                                   "model": {"name": "cgcnn", "size": "xxs"},
                                   "train": {"epochs": 2, "ckpt_every": 4, "threads": 1}})
    return StudyConfig(**{"base": base, "properties": PROPS, "ft_sizes": (16,), "seeds": (0, 1), "pt_epochs": 2,
                          **kw})


def _train_ids(run: dict) -> set[int]:
    data = C.from_dict(RunConfig, run["config"]).data
    return set(train_indices(data, run_parts(data)).tolist())


# ------------------------------------------------------------------------------------------------
# plans
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("study", ["pairwise", "strategies", "mpt"])
def test_no_finetuning_crystal_is_pretrained_on(study, store, tmp_path):
    """Leakage: every fine-tuning (and scratch) run's crystals are disjoint from every pre-training run's,
    and no run trains on the shared val/test parts."""
    _, plan = write_study_plan(study, _study(store, ood_systems=(0,)), tmp_path)
    runs = [r for r in plan["runs"] if r["labels"].get("split") != "ood" and r["labels"]["pt"] != "mpt-ood"]
    pt = [r for r in runs if r["stage"] == 0]
    ft = [r for r in runs if r["stage"] == 1]
    assert pt and ft
    parts = run_parts(DataConfig(store=str(store)))
    held = set(parts["val"].tolist()) | set(parts["test"].tolist())
    pt_ids = set().union(*(_train_ids(r) for r in pt))
    for r in ft:
        ids = _train_ids(r)
        assert len(ids) == 16 and not ids & pt_ids and not ids & held
    assert not pt_ids & held
    assert all(r["stage"] == 0 for r in plan["runs"][: len(pt)])  # stage order: PT before FT


def test_mpt_drops_the_finetuning_property(store, tmp_path):
    _, plan = write_study_plan("mpt", _study(store, properties=("volume_per_atom", "mean_z"), ood_systems=(0,)),
                               tmp_path)
    for r in plan["runs"]:
        if r["role"] == "mpt_pretrain":
            assert r["labels"]["held_out"] not in r["config"]["data"]["targets"]
        if r["labels"].get("pt") == "mpt":
            init = Path(r["config"]["transfer"]["init_from"]).parent.parent.name
            pre = next(p for p in plan["runs"] if p["run_id"] == init)
            assert r["labels"]["ft"] not in pre["config"]["data"]["targets"]
            assert r["config"]["transfer"]["head_extra_layers"] == 2


def test_mpt_pairs_restrict_the_pairwise_rows(store, tmp_path):
    """With ``pairs`` set, MPT plans only those A→B pair-wise rows (and only their PT runs)."""
    _, full = write_study_plan("mpt", _study(store, ood_systems=(0,)), tmp_path / "a")
    _, cut = write_study_plan("mpt", _study(store, ood_systems=(0,), pairs=("mean_z->volume_per_atom",)),
                              tmp_path / "b")
    rows = {(r["labels"]["pt"], r["labels"]["ft"]) for r in cut["runs"] if r["stage"] == 1
            and r["labels"]["pt"] not in ("scratch", "mpt")}
    assert rows == {("mean_z", "volume_per_atom")}
    assert {r["labels"]["pt"] for r in cut["runs"] if r["role"] == "pretrain"} == {"mean_z"}
    # volume_per_atom→mean_z's 2 FT seeds go; its PT run stays as mean_z's MPT pre-training (same config
    # with two properties, so the same run id)
    assert len(full["runs"]) - len(cut["runs"]) == 2
    with pytest.raises(ValueError, match="outside properties"):
        write_study_plan("mpt", _study(store, pairs=("mean_z->band_gap",)), tmp_path / "c")


def test_distill_lambda_scan_plans_one_row_per_lambda(store, tmp_path):
    untagged = synthetic_store(tmp_path / "untagged", n=20, seed=5)
    _, plan = write_study_plan("distill", _study(store, students=("cgcnn",), ssl_store=str(untagged),
                                                 distill_lambdas=(0.1, 0.01)), tmp_path)
    kd = {(r["labels"]["approach"], r["config"]["transfer"]["distill_lambda"]) for r in plan["runs"]
          if r["labels"].get("approach", "").startswith("distilled")}
    assert kd == {("distilled λ=0.1", 0.1), ("distilled λ=0.01", 0.01)}
    rows = plan["meta"]["tables"][0]["row_order"]
    assert rows == ["vanilla", "distilled λ=0.1", "distilled λ=0.01", "fine-tuned"]
    with pytest.raises(ValueError, match="distill_lambdas"):
        write_study_plan("distill", _study(store, ssl_store=str(untagged), distill_lambdas=(-1.0,)), tmp_path)


def test_a_run_must_come_after_the_runs_it_starts_from(tmp_path):
    """Runs of one stage run side by side (one Slurm array): a same-stage dependency is a plan error."""
    teacher = {"run_id": "aaa", "stage": 0, "config": {"transfer": {}}}
    student = {"run_id": "bbb", "stage": 0, "config": {"transfer": {"teacher": str(tmp_path / "runs/aaa")}}}
    ckpt = str(tmp_path / "runs/bbb/ckpt/best.pt")
    ft = {"run_id": "ccc", "stage": 1, "config": {"transfer": {"init_from": ckpt}}}
    with pytest.raises(ValueError, match="run bbb .* needs run aaa"):
        check_stages([teacher, student, ft])
    student["stage"] = 1
    with pytest.raises(ValueError, match="run ccc .* needs run bbb"):
        check_stages([teacher, student, ft])
    ft["stage"] = 2
    check_stages([teacher, student, ft])


def test_studies_share_runs(store, tmp_path):
    """Pair-wise and strategies plans in one root name the same scratch / unfreeze-all runs (trained once)."""
    _, a = write_study_plan("pairwise", _study(store), tmp_path)
    _, b = write_study_plan("strategies", _study(store, pairs=("volume_per_atom->mean_z",)), tmp_path)
    shared = {r["run_id"] for r in a["runs"]} & {r["run_id"] for r in b["runs"]}
    roles = {r["labels"].get("strategy") for r in b["runs"] if r["run_id"] in shared}
    assert {"scratch", "unfreeze_all", None} >= roles and "scratch" in roles and "unfreeze_all" in roles


def test_sampling_keeps_or_flattens_the_histogram():
    rng = np.random.default_rng(0)
    values = rng.lognormal(size=4000)
    ids = np.arange(4000) + 100
    edges = np.linspace(values.min(), values.max(), 11)
    full = np.histogram(values, edges)[0]
    w = sample_subset(ids, values, 400, "weighted", seed=1)
    u = sample_subset(ids, values, 400, "uniform", seed=1)
    assert len(set(w)) == len(set(u)) == 400 and set(w) <= set(ids)
    hw = np.histogram(values[w - 100], edges)[0]
    assert np.all(np.abs(hw - 400 * full / full.sum()) <= 1)  # stratified: the distribution is kept
    hu = np.histogram(values[u - 100], edges)[0]
    assert np.all((hu == full) | (hu >= hu[full > 0].min()))  # sparse bins give all; the rest share equally
    assert hu[-1] == full[-1] and hu.max() - hu[hu < full].min() <= 1
    assert not np.array_equal(w, sample_subset(ids, values, 400, "weighted", seed=2))


def test_pool_size_and_sampling_errors(store):
    parts = run_parts(DataConfig(store=str(store)))
    with pytest.raises(ValueError, match="ft_pool_size"):
        train_indices(DataConfig(store=str(store), pool="finetune", ft_pool_size=10_000, targets=PROPS[:1]), parts)
    with pytest.raises(ValueError, match="exceeds"):
        train_indices(DataConfig(store=str(store), pool="finetune", ft_pool_size=10, train_size=11,
                                 targets=PROPS[:1]), parts)


def test_pairs_syntax(store, tmp_path):
    with pytest.raises(ValueError, match="A->B"):
        write_study_plan("strategies", _study(store, pairs=("volume_per_atom>mean_z",)), tmp_path)


# ------------------------------------------------------------------------------------------------
# trainer hooks
# ------------------------------------------------------------------------------------------------
def _cfg(store, out, target, **sections) -> RunConfig:
    d = {"data": {"store": str(store), "targets": [target], "batch_size": 8},
         "model": {"name": "cgcnn", "size": "xxs"}, "out_dir": str(out), "train": {"epochs": 2, "threads": 1}}
    for k, v in sections.items():
        d[k] = {**d.get(k, {}), **v}
    return C.from_dict(RunConfig, d)


def test_zero_shot_uses_the_pretrained_head_and_normalizer(store, tmp_path):
    """epochs=0 + skip_head=False + init_normalizer: test metrics equal the pre-trained run's own."""
    from crysbench.train import loop

    pre = loop.run(_cfg(store, tmp_path, "volume_per_atom"), log=lambda m: None)
    ckpt = str(tmp_path / pre["run_id"] / "ckpt" / "best.pt")
    zs = loop.run(_cfg(store, tmp_path, "volume_per_atom", train={"epochs": 0},
                       transfer={"init_from": ckpt, "skip_head": False, "init_normalizer": True}), log=lambda m: None)
    assert zs["steps"] == 0
    assert zs["test"]["volume_per_atom"]["mae"] == pytest.approx(pre["test"]["volume_per_atom"]["mae"], rel=1e-6)
    with pytest.raises(ValueError, match="init_from"):
        loop.run(_cfg(store, tmp_path, "mean_z", transfer={"init_normalizer": True}), log=lambda m: None)


def test_trainer_distills_from_a_teacher_run(store, tmp_path):
    """transfer.teacher: the teacher's weights never move, the student trains, λ changes the result."""
    from crysbench.train import loop

    teacher = loop.run(_cfg(store, tmp_path, "volume_per_atom", model={"size": "xs"}), log=lambda m: None)
    tdir = tmp_path / teacher["run_id"]
    before = load(tdir / "ckpt" / "best.pt")["model"]
    kd = loop.run(_cfg(store, tmp_path, "mean_z", transfer={"teacher": str(tdir), "distill_lambda": 1.0}),
                  log=lambda m: None)
    plain = loop.run(_cfg(store, tmp_path, "mean_z"), log=lambda m: None)
    state = load(tmp_path / kd["run_id"] / "ckpt" / "best.pt")["model"]
    assert all(torch.equal(state[f"teacher.{k}"], v) for k, v in before.items())
    assert "projection.weight" in state  # xxs student (width 12) → xs teacher (24): a learned projection
    assert kd["test"]["mean_z"]["mae"] != plain["test"]["mean_z"]["mae"]
    with pytest.raises(FileNotFoundError, match="teacher"):
        loop.run(_cfg(store, tmp_path, "mean_z", transfer={"teacher": str(tmp_path / "nope")}), log=lambda m: None)


def test_a_point_held_by_another_process_is_busy(store, tmp_path):
    _, plan = write_study_plan("pairwise", _study(store), tmp_path)
    folder = Path(plan["runs"][0]["config"]["out_dir"]) / plan["runs"][0]["run_id"]
    folder.mkdir(parents=True)
    held = _lock(folder)
    try:
        with pytest.raises(Busy):
            run_index(tmp_path / "pairwise", 0)
    finally:
        held.close()


# ------------------------------------------------------------------------------------------------
# verbs end to end
# ------------------------------------------------------------------------------------------------
def _transfer(verb, store, root, results, *extra, timeout=900):
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    flags = [e for e in extra if e not in overrides]
    cmd = [sys.executable, "-m", "crysbench", "transfer", verb, *overrides, "--data", str(store), "--config",
           str(root / "tiny.yaml"), "--root", str(root), "--results", str(results), *flags]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_pairwise_and_strategies_verbs_end_to_end(store, tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    out = _transfer("pairwise", store, tmp_path, tmp_path / "res-pw")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    plan = tmp_path / "pairwise-cgcnn-quick"
    assert all(r["state"] == "done" for r in status(plan))
    assert (tmp_path / "res-pw" / "summary.md").exists() and (tmp_path / "res-pw" / "pair-matrix.csv").exists()
    out = _transfer("strategies", store, tmp_path, tmp_path / "res-st", "pairs=[volume_per_atom->mean_z]")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = json.loads((tmp_path / "strategies-cgcnn-quick" / "plan.json").read_text())["runs"]
    assert {r["labels"].get("strategy") for r in runs} >= {"scratch", "unfreeze_all", "new_head", "last_layer",
                                                          "interaction_layers[conv:-1]", "distillation"}
    # frozen parameters did not change: last_layer keeps the whole body, interaction_layers the embedding
    # (xxs has one convolution, the one it unfreezes)
    pre = next(r for r in runs if r["stage"] == 0)
    pre_w = load(Path(pre["config"]["out_dir"]) / pre["run_id"] / "ckpt" / "best.pt")["model"]
    for strat, frozen in (("last_layer", ("embed.", "convs.")), ("interaction_layers[conv:-1]", ("embed.",))):
        r = next(r for r in runs if r["labels"].get("strategy") == strat)
        w = load(Path(r["config"]["out_dir"]) / r["run_id"] / "ckpt" / "best.pt")["model"]
        keys = [k for k in pre_w if k.startswith(frozen)]
        assert keys and all(torch.equal(w[k], pre_w[k]) for k in keys), strat
    st = subprocess.run([sys.executable, "-m", "crysbench", "transfer", "status", str(tmp_path / "pairwise-cgcnn-quick")],
                        cwd=ROOT, capture_output=True, text=True)
    assert st.returncode == 0 and "done: " in st.stdout


def test_study_through_slurm_chains_stages(store, tmp_path):
    """On the real local Slurm: stage arrays chained with afterok, then the report job; the same runs
    and report as a local study (skipped without a cluster unless CI requires one)."""
    require_slurm()
    (tmp_path / "tiny.yaml").write_text(TINY)
    out = _transfer("pairwise", store, tmp_path, tmp_path / "res", "--launcher", "slurm", "--wait",
                    "--time-min", "10", "seeds=[0]")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 chained job arrays" in out.stdout
    plan = tmp_path / "pairwise-cgcnn-quick"
    assert all(r["state"] == "done" for r in status(plan))
    assert (tmp_path / "res" / "pair-matrix.md").exists()
    # the fine-tuning array waited for pre-training: every FT run started after its PT run finished
    runs = json.loads((plan / "plan.json").read_text())["runs"]
    ended = {r["run_id"]: (Path(r["config"]["out_dir"]) / r["run_id"] / "final.json").stat().st_mtime
             for r in runs if r["stage"] == 0}
    for r in runs:
        init = r["config"]["transfer"]["init_from"]
        if init:
            started = (Path(r["config"]["out_dir"]) / r["run_id"] / "config.yaml").stat().st_mtime
            assert started >= ended[Path(init).parent.parent.name]


def test_distill_and_exp_verbs_end_to_end(store, tmp_path):
    """CrysGNN SSL pre-training (pool filtered against the benchmark's val/test), distillation into CGCNN,
    fine-tuned CrysGNN; then computed → experimental at 0% (zero-shot), 20% and 80% fine-tuning."""
    untagged = synthetic_store(tmp_path / "untagged", n=40, seed=5)
    exp = synthetic_store(tmp_path / "exp", n=50, seed=6)
    (tmp_path / "tiny.yaml").write_text(TINY + "students: [cgcnn]\nteacher_size: xxs\nssl_epochs: 2\n"
                                        "exp_target: mean_z\nexp_pt_target: volume_per_atom\nseeds: [0, 1]\n")
    out = _transfer("distill", store, tmp_path, tmp_path / "res-d", "properties=[mean_z]", "--ssl-data",
                    str(untagged))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = json.loads((tmp_path / "distill-cgcnn-quick" / "plan.json").read_text())["runs"]
    ssl = next(r for r in runs if r["role"] == "ssl")
    assert any(s.startswith(str(store)) for s in ssl["config"]["ssl"]["exclude_stores"])
    final = json.loads((Path(ssl["config"]["out_dir"]) / ssl["run_id"] / "final.json").read_text())
    assert final["objective"] == "ssl"
    approaches = {r["labels"].get("approach") for r in runs if r["stage"] == 1}
    assert approaches == {"vanilla", "distilled", "fine-tuned"}
    assert "vanilla" in (tmp_path / "res-d" / "distill.md").read_text()

    out = _transfer("exp", store, tmp_path, tmp_path / "res-e", "--ssl-data", str(untagged), "--exp-data", str(exp))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = json.loads((tmp_path / "exp-cgcnn-quick" / "plan.json").read_text())["runs"]
    by = {(r["labels"].get("approach"), r["labels"].get("ft_frac"), r["seed"]): r for r in runs if r["stage"] >= 1}
    # the distilled PT needs the SSL teacher, the fine-tunes need the distilled PT: strictly later stages
    ssl_stage = next(r["stage"] for r in runs if r["role"] == "ssl")
    kd = next(r for r in runs if str(r["labels"].get("pt", "")).endswith("+kd"))
    assert ssl_stage < kd["stage"] < by[("distilled", 0.2, 0)]["stage"]
    zero = by[("vanilla", 0.0, 0)]
    assert zero["config"]["train"]["epochs"] == 0 and zero["config"]["transfer"]["init_normalizer"]
    assert by[("distilled", 0.0, 0)]["config"]["transfer"]["init_prefix"] == "student."
    n20 = by[("exp-only", 0.2, 0)]["config"]["data"]["train_size"]
    assert n20 == round(0.2 * 50) and by[("exp-only", 0.8, 0)]["config"]["data"]["train_size"] is None
    md = (tmp_path / "res-e" / "exp.md").read_text()
    assert "distilled" in md and "exp-only" in md
