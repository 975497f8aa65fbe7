"""MFU telemetry: achieved / peak FLOP/s from the datasheet table (GPU) or CRYSBENCH_PEAK_FLOPS."""

import pytest
import torch

from crysbench import config as C
from crysbench.testing import synthetic_store
from crysbench.train import mfu as M
from crysbench.train.config import RunConfig
from crysbench.train.loop import run


def test_peak_from_the_table_by_name_and_precision(monkeypatch):
    monkeypatch.delenv("CRYSBENCH_PEAK_FLOPS", raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H100 PCIe")
    gpu = torch.device("cuda:0")
    assert M.peak_flops(gpu) == pytest.approx(51.2e12)  # not the SXM figure: the longest key wins
    assert M.peak_flops(gpu, "bf16") == pytest.approx(756e12)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H200")
    assert M.peak_flops(gpu, "fp16") == pytest.approx(989.4e12)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Some Future GPU")
    assert M.peak_flops(gpu) is None
    assert M.peak_flops(torch.device("cpu")) is None


def test_env_peak_and_bad_values(monkeypatch):
    monkeypatch.setenv("CRYSBENCH_PEAK_FLOPS", "2e11")
    assert M.peak_flops(torch.device("cpu")) == 2e11
    assert M.mfu(1e12, 10.0, 2, 2e11) == pytest.approx(1e12 / 10 / 4e11)
    assert M.mfu(1e12, 0.0, 1, 2e11) is None and M.mfu(1e12, 1.0, 1, None) is None
    for bad in ("fast", "-1"):
        monkeypatch.setenv("CRYSBENCH_PEAK_FLOPS", bad)
        with pytest.raises(ValueError, match="CRYSBENCH_PEAK_FLOPS"):
            M.peak_flops(torch.device("cpu"))


def test_run_records_mfu(tmp_path, monkeypatch):
    store = synthetic_store(tmp_path / "s", n=40)
    data = {"store": str(store), "targets": ["volume_per_atom"], "batch_size": 16}
    cfg = C.from_dict(RunConfig, {"data": data, "model": {"name": "cgcnn", "size": "xxs"},
                                  "train": {"epochs": 1, "threads": 1}, "out_dir": str(tmp_path / "runs")})
    monkeypatch.delenv("CRYSBENCH_PEAK_FLOPS", raising=False)
    tel = run(cfg, log=lambda m: None)["telemetry"]
    assert tel["mfu"] is None and tel["peak_flops_per_device"] is None  # CPU, no peak given
    monkeypatch.setenv("CRYSBENCH_PEAK_FLOPS", "1e9")
    tel = run(C.from_dict(RunConfig, {**C.to_dict(cfg), "out_dir": str(tmp_path / "runs2")}),
              log=lambda m: None)["telemetry"]
    assert tel["peak_flops_per_device"] == 1e9
    assert tel["mfu"] == pytest.approx(tel["train_flops"] / tel["wall_time_s"] / 1e9) and tel["mfu"] > 0
