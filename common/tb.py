"""TensorBoard writers for every training loop (optional: None when tensorboard is not installed)."""

from __future__ import annotations

from pathlib import Path


def tensorboard_writer(logdir: str | Path | None):
    """A SummaryWriter into ``logdir``, or None (no logdir, or no tensorboard package)."""
    if logdir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(logdir))
