"""Fused marching of the head field: one Triton kernel marches, queries and composites a block of rays.

``nerf.march`` marches in plain PyTorch: a liveness pass, a packed (ray, step) list, then rounds of field
queries, each query a hash grid and two MLPs of about ten kernels, every activation a round trip through
GPU memory. The H100's render profile (docs/PERFORMANCE.md, "Second H100 lease") put most of a frame's
time there: MLP matrix products, ReLUs, gathers and copies, 8,193 kernel launches per two-person frame.

This kernel does the same marching for the head field in one launch. A program owns ``BLOCK`` neighbouring
rays (the renderer passes them in raster order) and steps them together:

1. sample k of every ray at t0 + (k + 0.5) dt, in head space and then in the head grid's [0, 1]^3
   (the same arithmetic, in the same order, as ``AvatarModel._march``);
2. live: before the ray's last step, inside the grid's cube and the head sphere's interval, in an occupied
   cell of the person's occupancy grid, on a ray whose optical depth is still under ``stop_depth``;
3. if any ray of the block is live: the hash grid (all levels, the first layer applied level by level as
   rank-one updates, so the encoding never leaves registers), the density MLP's other layers and the colour
   MLP as block matrix products (tensor cores under ``half``), NeRF's quadrature into the ray's colour,
   opacity and optical depth; a block whose rays are all dead or empty at step k skips the network;
4. the program ends when every ray of the block has passed its last step or become opaque.

What it equals: ``nerf.march.march`` over the head field alone, the head's samples composited front to
back with NeRF's quadrature (``tests/test_fused_march.py`` holds the two together under Triton's CPU
interpreter, and on a GPU when there is one). One difference, by design: ``march`` stops a ray after the
round (``RenderConfig.march_round`` live samples) in which its optical depth passed ``stop_depth``, the
kernel at the sample, so it skips samples whose light is below e^-stop_depth (2e-9 at the default 20).
Under ``half`` the network's layers run in float16 with float32 sums, like ``--amp``'s autocast; the
positions, the hash grid's interpolation and the compositing stay float32.

Used by ``AvatarModel._march`` for a model whose torso is a layer (``--torso_field layer``: the head is
then the only field marched) when Triton can run: on a CUDA device with the ``triton`` package (it comes
with CUDA builds of torch), or anywhere with ``TRITON_INTERPRET=1`` (Triton's interpreter, set before triton is
first imported; slow, for tests). Otherwise, or if the kernel fails to build, the PyTorch marcher renders the same picture, with
one warning. Shapes the kernel does not take (hash grids with other than 2 features per level, hidden
widths not a power of two from 16 to 128, geo_features other than 15) use the PyTorch marcher too.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK = 64
"""Rays per program: the M of the block matrix products (at least 16, a power of two)."""

_warned: set[str] = set()
_broken: list[str] = []  # why the kernel failed to build or run in this process (then it is not tried again)


def warn_once(why: str) -> None:
    if why not in _warned:
        _warned.add(why)
        warnings.warn(f"fused head marching unavailable ({why}); marching with PyTorch instead (same picture, "
                      f"slower)", stacklevel=3)


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available(device: torch.device) -> tuple[bool, str]:
    """Whether the fused kernel can run on ``device``, and why not."""
    if device.type != "cuda" and not interpreting():
        return False, "no CUDA device (TRITON_INTERPRET=1 runs it on the CPU, slowly)"
    try:
        import triton  # noqa: F401
    except ImportError:
        return False, "the triton package is not installed"
    return True, ""


def supports(field) -> tuple[bool, str]:
    """Whether the kernel takes this ``HeadField``'s shapes."""
    cfg = field.encoding.cfg
    hidden = field.density[0].out_features
    if cfg.n_features_per_level != 2:
        return False, f"hash grid with {cfg.n_features_per_level} features per level (the kernel takes 2)"
    if hidden not in (16, 32, 64, 128):
        return False, f"hidden width {hidden} (the kernel takes 16, 32, 64 or 128)"
    if field.density[-1].out_features != 16:
        return False, f"geo_features {field.density[-1].out_features - 1} (the kernel takes 15)"
    return True, ""


def _kernel():
    """The Triton kernel (its module, and triton, imported on first use)."""
    from nerf import _fused_march_kernel

    return _fused_march_kernel.march_head_kernel


def _weights(field, half: bool) -> dict[str, Tensor]:
    """The head field's layers as the kernel reads them: [in, out] row-major, the last layers padded to 16
    outputs, the colour MLP's first layer given a zero row for the density column (it reads h[:, 1:])."""
    dtype = torch.float16 if half else torch.float32
    d0, d1, d2 = field.density[0], field.density[2], field.density[4]
    c0, c1, c2 = field.color[0], field.color[2], field.color[4]
    k = field.encoding.output_dim
    hidden = d0.out_features
    geo = d2.out_features - 1
    wc1 = torch.zeros(16, hidden, device=d0.weight.device)
    wc1[1:] = c0.weight[:, :geo].t()
    wc3 = torch.zeros(hidden, 16, device=d0.weight.device)
    wc3[:, :3] = c2.weight.t()
    bc3 = torch.zeros(16, device=d0.weight.device)
    bc3[:3] = c2.bias
    return {"w1": d0.weight[:, :k].t().float().contiguous(),  # the rank-one updates stay float32
            "w2": d1.weight.t().to(dtype).contiguous(), "b2": d1.bias.float().contiguous(),
            "w3": d2.weight.t().to(dtype).contiguous(), "b3": d2.bias.float().contiguous(),
            "wc1": wc1.to(dtype).contiguous(), "wc2": c1.weight.t().to(dtype).contiguous(),
            "bc2": c1.bias.float().contiguous(), "wc3": wc3.to(dtype).contiguous(), "bc3": bc3}


@torch.no_grad()
def march_head(field, o_h: Tensor, d_h: Tensor, center: Tensor, radius: Tensor, t0: Tensor, dt: Tensor,
               n_steps: Tensor, near: Tensor, far: Tensor, row: Tensor, grid: Tensor, unit_h: Tensor,
               z_shape: Tensor, z_app: Tensor, drive: Tensor, stop_depth: float = 20.0,
               half: bool = False) -> dict[str, Tensor]:
    """March rays through one ``HeadField`` with the fused kernel.

    Args:
        field: the head field (``nerf.fields.HeadField``).
        o_h, d_h: [R, 3] the rays in head space; center [R, 3], radius [R]: each ray's head sphere.
        t0, dt: [R] where the samples begin and the step; n_steps: [R] samples of each ray (0: none; a ray
            that misses the sphere must have 0); near, far: [R] the ray's interval through the sphere.
        row: [R] each ray's person; grid: [P, G, G, G] bool, the head occupancy grid.
        unit_h: [R, 3] unit view directions in head space; z_shape, z_app, drive: [R, D] per-ray codes.
        stop_depth: a ray stops once its optical depth passes this (0: never).
        half: the network's layers in float16 with float32 sums (``--amp``).

    Returns:
        rgb [R, 3] (not over the background), acc [R] opacity, samples [R] live samples composited.
    """
    from nerf.fields import freq_encode

    dev, R = o_h.device, len(o_h)
    out = {"rgb": torch.zeros(R, 3, device=dev), "acc": torch.zeros(R, device=dev),
           "samples": torch.zeros(R, device=dev)}
    if R == 0:
        return out
    cfg = field.encoding.cfg
    d0, c0 = field.density[0], field.color[0]
    k, geo = field.encoding.output_dim, field.density[-1].out_features - 1
    f32 = lambda x: x.float().contiguous()  # noqa: E731
    pre_d = F.linear(torch.cat([z_shape, drive], -1).float(), d0.weight[:, k:], d0.bias)
    view = torch.cat([freq_encode(unit_h.float(), field.dir_freqs), z_app.float()], -1)
    pre_c = F.linear(view, c0.weight[:, geo:], c0.bias)
    if half:  # as autocast would: the first layers' per-ray parts in float16
        pre_d, pre_c = pre_d.half().float(), pre_c.half().float()
    w = _weights(field, half)
    tables = field.encoding.tables.detach()
    tables = (tables.half() if field.encoding.half else tables.float()).contiguous()
    scales = cfg.level_scales().to(dev)
    res = torch.tensor(cfg.level_resolutions(), dtype=torch.int32, device=dev)
    sizes = torch.tensor(cfg.level_sizes(), dtype=torch.int64, device=dev)
    interpret = interpreting()
    kernel = _kernel()
    kernel[(triton_cdiv(R, BLOCK),)](
        f32(o_h), f32(d_h), f32(center), f32(radius), f32(t0), f32(dt), n_steps.to(torch.int32).contiguous(),
        f32(near), f32(far), row.to(torch.int32).contiguous(), f32(pre_d), f32(pre_c),
        grid.to(torch.uint8).contiguous(), tables, scales, res, sizes,
        w["w1"], w["w2"], w["b2"], w["w3"], w["b3"], w["wc1"], w["wc2"], w["bc2"], w["wc3"], w["bc3"],
        out["rgb"], out["acc"], out["samples"],
        R, grid.shape[1], float(stop_depth) if stop_depth > 0 else float("inf"),
        L=cfg.n_levels, N_DENSE=cfg.level_hashed().count(False), T=cfg.table_size, H=d0.out_features,
        BLOCK_R=BLOCK, HALF=half, PRECISION="ieee" if interpret else "tf32")
    return out


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def run_or_none(field, *args, **kwargs) -> dict[str, Tensor] | None:
    """``march_head``, or None (with one warning) when the kernel fails to build or launch on this machine."""
    if _broken:
        return None
    try:
        return march_head(field, *args, **kwargs)
    except Exception as err:  # a compiler or driver failure: the PyTorch marcher renders the same picture
        _broken.append(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        warn_once(f"the kernel failed: {_broken[0]}")
        return None
