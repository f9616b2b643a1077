"""Which device a run uses: ``--device auto`` takes the GPU when torch sees one."""

from __future__ import annotations

import torch

from common.errors import TrainError


def resolve_device(name: str) -> torch.device:
    """auto | cpu | cuda | cuda:N -> a torch.device; a GPU that is asked for but absent is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise TrainError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"--device {name}: torch sees no CUDA GPU here (torch {torch.__version__}); use --device cpu")
    return dev


def prepare_device(dev: torch.device) -> None:
    """Per-process settings of a GPU run: TF32 matrix products for the MLPs (float32 elsewhere)."""
    if dev.type == "cuda":
        torch.set_float32_matmul_precision("high")
