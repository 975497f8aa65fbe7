"""NVML energy telemetry: None off GPU or without NVML; a counter difference in joules with one."""

import sys
import types

import torch

from crysbench.train import nvml


def test_cpu_has_no_energy():
    assert nvml.gpu_energy_mj(torch.device("cpu")) is None
    assert nvml.energy_since(torch.device("cpu"), 123.0) is None


def test_energy_from_a_fake_nvml(monkeypatch):
    readings = iter([1000.0, 4500.0])
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlDeviceGetHandleByUUID=lambda u: u, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetTotalEnergyConsumption=lambda h: next(readings))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(uuid="abc"))
    dev = torch.device("cuda:0")
    start = nvml.gpu_energy_mj(dev)
    assert start == 1000.0
    assert nvml.energy_since(dev, start) == 3.5  # (4500 - 1000) mJ


def test_broken_nvml_is_not_an_error(monkeypatch):
    def fail():
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=fail))
    assert nvml.gpu_energy_mj(torch.device("cuda:0")) is None
