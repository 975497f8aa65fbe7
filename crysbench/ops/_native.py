"""Loads the compiled extension on first use and checks it matches the running torch."""

from __future__ import annotations

import functools

import torch


class NativeBuildError(ImportError):
    """The compiled extension is missing or was built against another torch."""


@functools.lru_cache(maxsize=1)
def load():
    """Import ``crysbench._C`` (which registers ``torch.ops.crysbench.*``) and return its build info."""
    try:
        from crysbench import _C
    except ImportError as exc:
        raise NativeBuildError(
            "crysbench's native extension (crysbench/_C) is not built or failed to load "
            f"({exc}). Build it with `make setup` or `pip install --no-build-isolation -e .`; "
            "set CRYSBENCH_OPS=ref to use the pure-torch reference ops instead."
        ) from exc
    info = dict(_C.build_info())
    if info["torch"] != torch.__version__:
        raise NativeBuildError(
            f"crysbench/_C was built against torch {info['torch']} but torch {torch.__version__} is "
            "running; rebuild with `make setup` (a mismatched build fails with undefined symbols)."
        )
    return info


def require_device(op: str, *tensors: torch.Tensor) -> None:
    """Refuse CUDA tensors clearly when the build has no CUDA kernels (never a silent fallback)."""
    if any(t.is_cuda for t in tensors) and not load()["with_cuda"]:
        raise RuntimeError(
            f"crysbench.{op}: got a CUDA tensor but this build of crysbench has no CUDA kernels "
            f"(built against torch {load()['torch']}, CUDA {load()['torch_cuda']}); rebuild with "
            "CRYSBENCH_CUDA=ON against a CUDA torch, or move the inputs to the CPU."
        )
