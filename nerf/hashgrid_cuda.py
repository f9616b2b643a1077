"""The fused CUDA hash-grid encoding and the optional tiny-cuda-nn backend, behind ``hash_grid_encode``.

The fused kernels (nerf/cuda/hashgrid_kernels.cu) compute nerf/encoding.py's reference function
with one launch over all levels for the forward and one for the backward. They are compiled just
in time by torch.utils.cpp_extension the first time a CUDA tensor is encoded (31 s on a fresh H100 machine; torch
caches the build per Python / torch / CUDA environment under ~/.cache/torch_extensions or
$TORCH_EXTENSIONS_DIR and rebuilds when the sources change). Importing this module never compiles.
If the build fails, ``available()`` says why and the encoding falls back to the PyTorch reference
with one loud warning.

Tables stay float32 (the optimizer's master copy); ``half=True`` gathers from a float16 copy made
each forward (half the bytes per gather, float32 accumulation, float32 gradients).
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

SOURCES = Path(__file__).resolve().parent / "cuda"
_lock = threading.Lock()
_ext = None
_error: str | None = None
_warned = False


def load_extension():
    """The compiled extension (built on first call, then cached); raises RuntimeError if it cannot be built."""
    global _ext, _error
    with _lock:
        if _ext is not None:
            return _ext
        if _error is not None:
            raise RuntimeError(_error)
        if not torch.cuda.is_available():
            _error = "torch sees no CUDA GPU"
            raise RuntimeError(_error)
        try:
            from torch.utils.cpp_extension import load

            major, minor = torch.cuda.get_device_capability()
            _ext = load(name="dialoguenerf_hashgrid",
                        sources=[str(SOURCES / "hashgrid_bind.cpp"), str(SOURCES / "hashgrid_kernels.cu")],
                        extra_cflags=["-O3"],
                        extra_cuda_cflags=["-O3", "-std=c++17", f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}"],
                        extra_include_paths=[str(SOURCES)], verbose=False)
        except Exception as e:  # a compiler error, no nvcc, no ninja
            _error = f"the fused hash-grid kernel could not be built: {str(e).strip().splitlines()[-1][:300]}"
            raise RuntimeError(_error) from None
        return _ext


def available() -> tuple[bool, str]:
    """(True, "") when the fused kernel is usable here, else (False, the reason). Builds it if needed."""
    try:
        load_extension()
        return True, ""
    except RuntimeError as e:
        return False, str(e)


def warn_fallback(reason: str) -> None:
    """One loud warning per process that the slow reference path runs instead of the fused kernel."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"HASH GRID ON THE SLOW PATH: {reason}; using the PyTorch reference encoding "
                      "(correct; 28-50x slower on an H100, docs/PERFORMANCE.md)", RuntimeWarning, stacklevel=3)


def _level_args(cfg) -> tuple[list[float], list[int], list[int], list[int]]:
    return (cfg.level_scales().tolist(), cfg.level_resolutions(), cfg.level_sizes(),
            [int(h) for h in cfg.level_hashed()])


class FusedHashGrid(torch.autograd.Function):
    """x [N, 3] float32, tables [L, T, F] float32 -> [N, L F] (a transposed view of a [L F, N] buffer)."""

    @staticmethod
    def forward(ctx, x: Tensor, tables: Tensor, cfg, half: bool) -> Tensor:
        ext = load_extension()
        levels = _level_args(cfg)
        x = x.detach().contiguous()
        gather = tables.detach().to(torch.float16 if half else torch.float32).contiguous()
        out = ext.forward(x, gather, *levels)
        ctx.save_for_backward(x, gather)
        ctx.levels = levels
        return out.t()

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, gather = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        grad_tables, grad_x = load_extension().backward(x, gather, grad.float(), *ctx.levels, need_x)
        return (grad_x if need_x else None), (grad_tables if ctx.needs_input_grad[1] else None), None, None


def fused_encode(x: Tensor, tables: Tensor, cfg, half: bool = False) -> Tensor:
    """The fused kernel's encoding of x [N, 3] (CUDA, float32) with tables [L, T, F] (float32)."""
    if x.dtype != torch.float32 or tables.dtype != torch.float32:
        raise ValueError(f"the fused hash grid takes float32 points and tables, got {x.dtype} and {tables.dtype}")
    return FusedHashGrid.apply(x, tables, cfg, half)
