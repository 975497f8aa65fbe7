"""CrysGNN SSL pre-training as a run, on tiny stores: outputs, the best encoder loads into a fresh
crysgnn, the loss falls, finished runs are skipped, a crash resumes to the same numbers, and the
leakage filter drops copies of another store's val/test crystals."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from crysbench import config as C
from crysbench import distributed
from crysbench.store import GraphSpec, write_store
from crysbench.store.splits import load_split, make_split
from crysbench.testing import synthetic_crystals
from crysbench.train import checkpoint
from crysbench.train.config import RunConfig
from crysbench.train.loop import build_model, run_dir
from crysbench.transfer import load_pretrained, pretrain
from crysbench.transfer.pretrain import PARTS, pretrain_pool, reference_indices, run_ssl

SPEC = GraphSpec(5.0, 8, False)  # cutoff Å, max neighbours, no line graph


def _untagged(crystals):
    return [dataclasses.replace(c, targets={}) for c in crystals]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """48 synthetic crystals without targets (like the built-in 'untagged' set)."""
    path = tmp_path_factory.mktemp("ssl") / "untagged"
    write_store(_untagged(synthetic_crystals(48, seed=0)), path, SPEC, shard_size=25)
    return path


def _cfg(store, out, **over) -> RunConfig:
    base = {"data": {"store": str(store), "batch_size": 8}, "model": {"name": "crysgnn", "size": "xxs"},
            "optim": {"max_lr": 1e-2},
            "train": {"epochs": 2, "ckpt_every": 3, "threads": 1, "objective": "ssl"}, "out_dir": str(out)}
    return C.from_dict(RunConfig, C._merge(base, over))


def _quiet(msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def done(store, tmp_path_factory):
    """One uninterrupted run: 38 train crystals, 4 steps an epoch, 2 epochs."""
    cfg = _cfg(store, tmp_path_factory.mktemp("runs"))
    return cfg, run_ssl(cfg, log=_quiet)


def test_run_writes_outputs(done):
    cfg, result = done
    folder = run_dir(cfg)
    want = {"config.yaml", "metrics.jsonl", "final.json", "ckpt", "pool.json"}
    assert {p.name for p in folder.iterdir()} >= want
    assert {p.name for p in (folder / "ckpt").iterdir()} >= {"last.pt", "best.pt"}
    assert C.load(RunConfig, folder / "config.yaml") == cfg
    assert result == json.loads((folder / "final.json").read_text())
    assert result["objective"] == "ssl" and result["test"] == {} and result["run_id"] == folder.name
    assert (result["steps"], result["epochs"], result["n_train"]) == (8, 2, 38)
    assert result["n_excluded"] == {"train": 0, "val": 0, "by_store": {}}
    assert result["telemetry"]["graphs_per_s"] > 0 and result["telemetry"]["flops_per_crystal"] > 0
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        for part in ("train", "val"):
            assert set(r[part]) == set(PARTS), part
            assert all(math.isfinite(v) for v in r[part].values()), (part, r[part])
    assert result["val"] == records[result["best"]["epoch"] - 1]["val"]


def test_best_encoder_loads_into_a_fresh_crysgnn(done):
    cfg, _ = done
    best = checkpoint.load(run_dir(cfg) / "ckpt" / "best.pt")["model"]
    fresh = build_model(cfg, n_targets=1)
    fresh.load_state_dict(best, strict=True)  # a distillation teacher is built and loaded this way
    report = load_pretrained(build_model(cfg, n_targets=3), best)  # fine-tuning: body in, fresh head
    assert report.loaded and all(k.split(".")[0] in ("hidden", "out") for k in report.fresh)


def test_pretraining_lowers_the_val_loss_of_the_untrained_model(done):
    cfg, result = done
    torch.manual_seed(cfg.train.seed)  # the run's initialisation
    untrained = pretrain.build_ssl_model(cfg)
    parts, _ = pretrain_pool(cfg)
    data = pretrain.make_ssl_data(cfg, distributed.detect(), parts)
    before = pretrain.evaluate(untrained, data.val_batches(), cfg.train.seed, torch.device("cpu"))
    assert before == pytest.approx(result["val_init"], rel=1e-6)
    assert result["val"]["total"] < 0.8 * before["total"], (result["val"], before)


def test_finished_run_is_skipped(done):
    cfg, result = done
    final = run_dir(cfg) / "final.json"
    mtime = final.stat().st_mtime
    assert run_ssl(cfg, log=_quiet) == result
    assert final.stat().st_mtime == mtime


def test_crash_mid_epoch_resumes_to_the_same_losses(store, done, tmp_path, monkeypatch):
    """Killed at step 7 (last checkpoint: step 6, mid epoch 2), then rerun: same numbers as 'done'."""
    cfg = _cfg(store, tmp_path)
    step, calls = pretrain._train_step, []

    def crash_at_seven(*args, **kw):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt("simulated kill")
        return step(*args, **kw)

    monkeypatch.setattr(pretrain, "_train_step", crash_at_seven)
    with pytest.raises(KeyboardInterrupt):
        run_ssl(cfg, log=_quiet)
    assert not (run_dir(cfg) / "final.json").exists()
    assert checkpoint.load(run_dir(cfg) / "ckpt" / "last.pt")["state"]["step"] == 6
    calls.clear()
    logs = []
    result = run_ssl(cfg, log=logs.append)
    assert len(calls) == 2 and "resumed" in logs[0]  # only steps 7 and 8 were trained again
    _, ref = done
    for key in ("val", "val_last", "train_last", "val_init", "best"):
        assert result[key] == ref[key], key
    def history(c):
        records = [json.loads(line) for line in (run_dir(c) / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in records]

    assert history(cfg) == history(done[0])
    ref_best = checkpoint.load(run_dir(done[0]) / "ckpt" / "best.pt")["model"]
    got_best = checkpoint.load(run_dir(cfg) / "ckpt" / "best.pt")["model"]
    assert all(torch.equal(ref_best[k], got_best[k]) for k in ref_best)


def test_exclude_stores_drops_copies_of_val_and_test_crystals(tmp_path):
    """The pool holds renamed exact copies of a benchmark store's val/test crystals (dropped by
    StructureMatcher) and of two of its train crystals (kept)."""
    bench = tmp_path / "bench"
    bench_crystals = synthetic_crystals(20, seed=5)  # with targets: a labelled benchmark
    write_store(bench_crystals, bench, SPEC, shard_size=10)
    assert reference_indices(str(bench), None) is None  # no split yet: the whole store is held out
    split = make_split(bench, "b1", seed=0)
    held_out = np.concatenate([split["val"], split["test"]])
    assert set(reference_indices(str(bench), None)) == set(held_out.tolist())
    copies = [dataclasses.replace(bench_crystals[i], id=f"copy-{i}") for i in held_out]
    copies += [dataclasses.replace(bench_crystals[i], id=f"copy-{i}") for i in split["train"][:2]]
    pool = tmp_path / "pool"
    write_store(_untagged(synthetic_crystals(30, seed=6) + copies), pool, SPEC, shard_size=25)
    leaked = set(range(30, 30 + len(held_out)))
    for spec in (f"{bench}::b1", str(bench)):
        cfg = _cfg(pool, tmp_path / "runs", ssl={"exclude_stores": [spec]})
        parts, n_excluded = pretrain_pool(cfg)
        own = load_split(pool, "s0-v100-t100")
        assert n_excluded["by_store"] == {spec: len(leaked)}
        for part in ("train", "val"):
            assert not leaked & set(parts[part].tolist()), part
            assert set(parts[part].tolist()) == set(own[part].tolist()) - leaked, part
            assert n_excluded[part] == len(leaked & set(own[part].tolist())), part
    cfg = _cfg(pool, tmp_path / "runs", ssl={"exclude_stores": [f"{bench}::b1"]}, train={"max_steps": 1})
    result = run_ssl(cfg, log=_quiet)
    assert result["n_excluded"]["train"] + result["n_excluded"]["val"] > 0
    assert result["n_train"] == len(parts["train"]) and result["steps"] == 1


def test_train_size_takes_a_nested_subset(store, tmp_path):
    small, _ = pretrain_pool(_cfg(store, tmp_path, data={"train_size": 10}))
    large, _ = pretrain_pool(_cfg(store, tmp_path, data={"train_size": 20}))
    assert len(small["train"]) == 10 and set(small["train"]) <= set(large["train"])


def test_model_other_than_crysgnn_is_a_clear_error(store, tmp_path):
    cfg = _cfg(store, tmp_path, model={"name": "cgcnn"})
    with pytest.raises(ValueError, match="crysgnn"):
        run_ssl(cfg, log=_quiet)
    assert not run_dir(cfg).exists()
