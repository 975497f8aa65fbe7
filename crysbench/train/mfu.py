"""Model FLOP utilisation: achieved training FLOP/s over the devices' peak.

MFU = train_flops / wall_time / (peak × world_size), train_flops from torch's FLOP counter (forward +
backward of the model and loss, as in the run telemetry). The peak is the dense (no sparsity) datasheet
figure for the precision the run computes in: FP32 without autocast (crysbench does not enable TF32),
BF16/FP16 tensor-core peak with ``train.mixed_precision``. Set ``CRYSBENCH_PEAK_FLOPS`` (FLOP/s of one
device) for a device not in the table, e.g. a CPU whose peak you measured; otherwise MFU is None.
"""

from __future__ import annotations

import os

import torch

# dense peak TFLOP/s per device (NVIDIA datasheets): (fp32, bf16/fp16 tensor core)
PEAK_TFLOPS = {
    "H200": (67.0, 989.4),
    "H100 SXM": (67.0, 989.4), "H100 80GB HBM3": (67.0, 989.4),
    "H100 PCIe": (51.2, 756.0), "H100 NVL": (60.0, 835.0),
    "A100": (19.5, 312.0),
    "L40S": (91.6, 362.05),
    "V100": (15.7, 125.0),
}


def peak_flops(device: torch.device, mixed_precision: str = "none") -> float | None:
    """Peak FLOP/s of one ``device`` at the run's precision; None where unknown (CPU without the env)."""
    env = os.environ.get("CRYSBENCH_PEAK_FLOPS")
    if env:
        try:
            value = float(env)
        except ValueError:
            raise ValueError(f"CRYSBENCH_PEAK_FLOPS must be a number of FLOP/s, got {env!r}") from None
        if value <= 0:
            raise ValueError(f"CRYSBENCH_PEAK_FLOPS must be > 0, got {env!r}")
        return value
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):  # the most specific name first
        if key in name:
            fp32, half = PEAK_TFLOPS[key]
            return 1e12 * (half if mixed_precision in ("bf16", "fp16") else fp32)
    return None


def mfu(train_flops: float, seconds: float, world_size: int, peak: float | None) -> float | None:
    """Achieved / peak FLOP/s over all ranks; None without a peak, FLOPs or time."""
    if not peak or not seconds or not train_flops:
        return None
    return train_flops / seconds / (peak * max(1, world_size))
