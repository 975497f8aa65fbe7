"""GPU energy from NVML, for the run telemetry; every failure means "not measured" (None), never an error."""

from __future__ import annotations

import torch


def gpu_energy_mj(device: torch.device) -> float | None:
    """Energy (mJ) the GPU behind ``device`` has used since its driver loaded; None on CPU, without
    pynvml (nvidia-ml-py), or on a GPU without an energy counter (pre-Volta)."""
    if device.type != "cuda":
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        try:  # CUDA_VISIBLE_DEVICES renumbers devices; the UUID names the same GPU in both APIs
            handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{torch.cuda.get_device_properties(index).uuid}")
        except Exception:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        return float(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))
    except Exception:
        return None


def energy_since(device: torch.device, start_mj: float | None) -> float | None:
    """Joules used since the reading ``start_mj`` (None when either reading is missing)."""
    now = gpu_energy_mj(device)
    return None if now is None or start_mj is None else (now - start_mj) / 1e3
