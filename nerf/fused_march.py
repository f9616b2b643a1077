"""Fused marching: one Triton kernel marches a block of rays, queries the head and torso fields and composites.

``nerf.march`` marches in plain PyTorch: a liveness pass, a packed (ray, step) list, then rounds of field
queries, each query a hash grid and two or three MLPs of about ten kernels, every activation a round trip
through GPU memory. The H100's render profile (docs/PERFORMANCE.md, "Second H100 lease") put most of a
frame's time there: MLP matrix products, ReLUs, gathers and copies, 8,193 kernel launches per two-person frame.

This kernel (``nerf/_fused_march_kernel.py``) does the same marching in one launch per chunk of rays. A program
owns ``BLOCK`` neighbouring rays (the renderer passes them in 8 x 8 pixel squares, ``nerf.render.tile_order``)
and steps them together:

1. sample k of every ray at t0 + (k + 0.5) dt, in head space and the head grid's [0, 1]^3 (the same arithmetic,
   in the same order, as ``AvatarModel._march``); the torso once per ``stride`` steps, at that interval's midpoint
   in camera space and the torso box's [0, 1]^3, its density and colour held over the interval's samples
   (``nerf.march.coarse_t``);
2. live in a field: before the ray's last step, inside the field's cube and the ray's interval through it,
   in an occupied cell of the person's occupancy grid, on a ray whose optical depth is under ``stop_depth``;
3. for each field with a live sample in the block: its hash grid (all levels, each thread gathering for its own
   rays, into an encoding tile [2 L, rays] that never leaves registers), then its first layer and MLPs as block
   matrix products (tensor cores; float16 under ``half``); for the torso first its warp (``TorsoField``: its
   frequency encoding as a tile, the same way); a field no ray of the block needs at step k is skipped;
4. NeRF's quadrature on the fixed step, the fields' densities added and each taking its share of the weight
   (``nerf.march``); the program ends when every ray of the block has passed its last step or become opaque.

What it equals: ``nerf.march.march`` over the same fields (``tests/test_fused_march.py`` holds the two
together under Triton's CPU interpreter, and on a GPU when there is one). One difference, by design: ``march``
stops a ray after the round (``RenderConfig.march_round`` live samples) in which its optical depth passed
``stop_depth``, the kernel at the sample, so it skips samples whose light is below e^-stop_depth (2e-9 at the
default 20). Under ``half`` the network's layers run in float16 with float32 sums, like ``--amp``'s autocast;
the positions, the hash grids' interpolation and the compositing stay float32.

Used by ``AvatarModel._march`` (rendering with ``--march_steps``) when Triton can run: on a CUDA device with the
``triton`` package (CUDA builds of torch bring it), or anywhere with ``TRITON_INTERPRET=1`` set before triton is
first imported (Triton's interpreter: slow, for tests). Otherwise, or if the kernel fails to build, the PyTorch
marcher renders the same picture (with one warning, except on a CPU without the interpreter, where that is the
plain path). So do shapes the kernel does not take (``supports``). Each compiled
kernel's first render in a process is checked against the PyTorch marcher on some of its rays (``verify``): a
kernel that disagrees is not used again, after one warning.
"""

from __future__ import annotations

import math
import os
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK = 64
"""Rays per program: the M of the block matrix products (at least 16, a power of two)."""
NUM_WARPS = 4
"""Warps per program. Chosen by what the compiler made of it, not by a timing (no GPU yet; ``bench.py
--march_shapes`` times other shapes on one). Built for sm_90 at gpu_full's sizes (``scripts/kernel_report.py``), 64 x 4
lays each ray's hash-grid gathers on threads of its own, no ray's gathered twice. 64 x 8 spills less (three builds
of four), but the compiler then repeats each ray's gathers on 4 (head) or 8 (torso) threads."""


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """'64x4,32x8' -> [(64, 4), (32, 8)]: kernel shapes, rays per program x warps per program (``BLOCK`` x
    ``NUM_WARPS``); ValueError naming the bad item otherwise."""
    out = []
    for item in (x for x in text.split(",") if x):
        try:
            block, warps = (int(x) for x in item.lower().split("x"))
        except ValueError:
            block = warps = 0
        if block < 16 or block & (block - 1) or warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"{item!r} is not BLOCKxWARPS (BLOCK a power of two >= 16, WARPS 1, 2, 4, 8 or 16; "
                             "e.g. 64x4)")
        out.append((block, warps))
    return out


_warned: set[str] = set()
_broken: list[str] = []  # why the kernel failed to build, run or check in this process (then it is not tried again;
# the reason is warned about once, in these words)

CHECK_RAYS = 256
"""Rays of a kernel's first render that the PyTorch marcher renders again (``verify``)."""
CHECK_MIN_DB = 40.0
"""The least agreement (PSNR of colour and of each opacity) that ``verify`` accepts. On trained 128 px models the
interpreter's float32 agreed to 142-147 dB and float16 to 88.7-90.6 dB (docs/PERFORMANCE.md); the GPU parity tests
allow TF32 products a largest difference of 5e-3, at least 46 dB. So this is a detector of a wrong kernel (a
miscompiled hash, weight or sample point), with room for any legitimate rounding, not a bound on quality."""
checks: dict[tuple, float] = {}
"""Kernels checked in this process (``check_key``) and the PSNR each agreed to."""


def warn_once(why: str) -> None:
    if why not in _warned:
        _warned.add(why)
        warnings.warn(f"fused marching unavailable ({why}); marching with PyTorch instead (same picture, slower)",
                      stacklevel=3)


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
    if _broken:
        return False, _broken[0]
    return True, ""


def supports(head, torso=None) -> tuple[bool, str]:
    """Whether the kernel takes these fields' shapes (a ``HeadField`` and a ``TorsoField`` or None)."""
    hidden = head.density[0].out_features
    for name, field in (("head", head), ("torso", torso)):
        if field is None:
            continue
        cfg = field.encoding.cfg
        if cfg.n_features_per_level != 2:
            return False, f"{name} hash grid with {cfg.n_features_per_level} features per level (the kernel takes 2)"
        if field.density[0].out_features != hidden or hidden not in (16, 32, 64, 128):
            return False, f"hidden width {field.density[0].out_features} (the kernel takes 16, 32, 64 or 128, " \
                "the same in both fields)"
        if field.density[-1].out_features != 16:
            return False, f"geo_features {field.density[-1].out_features - 1} (the kernel takes 15)"
    return True, ""


def _kernel():
    """The Triton kernel (its module, and triton, imported on first use)."""
    from nerf import _fused_march_kernel

    return _fused_march_kernel.march_kernel


def _pad16(layer, dtype) -> tuple[Tensor, Tensor]:
    """A last layer's weight [in, 16] and bias [16], zero-padded from its outputs."""
    w = torch.zeros(layer.in_features, 16, device=layer.weight.device)
    w[:, :layer.out_features] = layer.weight.t()
    b = torch.zeros(16, device=layer.weight.device)
    b[:layer.out_features] = layer.bias
    return w.to(dtype).contiguous(), b


def _k_tile(k: int) -> int:
    """The K of a first layer's block product over k encoding columns: a power of two, at least 16."""
    return max(16, 1 << (k - 1).bit_length())


def _pad_rows(w: Tensor, rows: int) -> Tensor:
    """w [k, n] with zero rows appended up to ``rows``."""
    return torch.cat([w, w.new_zeros(rows - len(w), w.shape[1])]) if rows > len(w) else w


_static: weakref.WeakKeyDictionary[torch.nn.Module, dict] = weakref.WeakKeyDictionary()


def _cached(module, key, make) -> list:
    """``make()``, kept per module and key while the module's parameters stay as they are (an optimizer step or
    ``load_state_dict`` bumps their version counters; moving the module changes their storage): the per-model part of
    the kernel's arguments is the same at every call of a render, so its copies, transposes and host-to-device
    copies (a host sync each on a GPU) are made once."""
    stamp = tuple((p.data_ptr(), p._version) for p in module.parameters())
    entry = _static.setdefault(module, {})
    hit = entry.get(key)
    if hit is None or hit[0] != stamp:
        hit = entry[key] = (stamp, make())
    return hit[1]


def _field_static(field, k_in: int, half: bool) -> list:
    """A field's grid and layers in the kernel's argument order: tables, scales, resolutions, sizes, w1, w2, b2, w3,
    b3, wc1, wc2, bc2, wc3, bc3."""
    dtype = torch.float16 if half else torch.float32
    d0, d1, d2 = field.density[0], field.density[2], field.density[4]
    c0, c1, c2 = field.color[0], field.color[2], field.color[4]
    geo = d2.out_features - 1
    dev = d0.weight.device
    wc1 = torch.zeros(16, d0.out_features, device=dev)
    wc1[1:] = c0.weight[:, :geo].t()  # row 0 (the density column) stays zero
    cfg = field.encoding.cfg
    tables = field.encoding.tables.detach()
    tables = (tables.half() if field.encoding.half else tables.float()).contiguous()
    w3, b3 = _pad16(d2, dtype)
    wc3, bc3 = _pad16(c2, dtype)
    return [tables, cfg.level_scales().to(dev), torch.tensor(cfg.level_resolutions(), dtype=torch.int32, device=dev),
            torch.tensor(cfg.level_sizes(), dtype=torch.int64, device=dev),
            _pad_rows(d0.weight[:, :k_in].t(), _k_tile(k_in)).to(dtype).contiguous(),  # the encoding's part
            d1.weight.t().to(dtype).contiguous(), d1.bias.float().contiguous(), w3, b3,
            wc1.to(dtype).contiguous(), c1.weight.t().to(dtype).contiguous(), c1.bias.float().contiguous(), wc3, bc3]


def _field_tensors(field, k_in: int, cond: Tensor, view: Tensor, half: bool) -> list:
    """A field's per-ray first-layer parts, then ``_field_static``'s (kept between calls), in the kernel's argument
    order: pre_d, pre_c, tables, scales, resolutions, sizes, w1, w2, b2, w3, b3, wc1, wc2, bc2, wc3, bc3."""
    d0, c0 = field.density[0], field.color[0]
    geo = field.density[4].out_features - 1
    pre_d = F.linear(cond.float(), d0.weight[:, k_in:], d0.bias)
    pre_c = F.linear(view.float(), c0.weight[:, geo:], c0.bias)
    if half:  # as autocast would: the first layers' per-ray parts in float16
        pre_d, pre_c = pre_d.half().float(), pre_c.half().float()
    return [pre_d.contiguous(), pre_c.contiguous(),
            *_cached(field, ("field", k_in, half), lambda: _field_static(field, k_in, half))]


@torch.no_grad()
def march_fused(head, torso, g: dict[str, Tensor], c: dict[str, Tensor], t0: Tensor, dt: Tensor, n_steps: Tensor,
                row: Tensor, occ_head: Tensor, occ_torso: Tensor | None, stop_depth: float = 20.0,
                torso_depth: float = 0.7, half: bool = False, stride: Tensor | None = None) -> dict[str, Tensor]:
    """March rays through a ``HeadField`` and, unless ``torso`` is None, a ``TorsoField`` with the fused kernel.

    Args:
        g: per ray (``AvatarModel._geometry``): o_h, d_h [R, 3] the ray in head space, center [R, 3] and radius [R]
            its head sphere, near_h, far_h [R] its interval through it, hit_h [R] bool; with a torso also dirs
            [R, 3] the camera-space direction, lo, hi [R, 3] the torso box, near_t, far_t, hit_t.
        c: per ray (``AvatarModel._conditions``): unit_h [R, 3] the unit view direction in head space, z_shape,
            z_app, drive; with a torso also unit [R, 3] (camera space), et [R, 6] the torso's pose input, and optionally
            torso_dirs [R, 3] (its points' directions, with a tracked torso) and warp [R] (its learned warp's share).
        t0, dt: [R] where the samples begin and the step; n_steps: [R] samples per ray (0: none).
        row: [R] each ray's person; occ_head, occ_torso: [P, G, G, G] bool occupancy grids.
        stop_depth: a ray stops once its optical depth passes this (0: never).
        torso_depth: the torso box's depth, the unit of its density (``2 * TORSO_HALF_DEPTH``).
        half: the networks' layers in float16 with float32 sums (``--amp``).
        stride: [R] whole numbers >= 1 (default 1): the torso is queried once per ``stride`` steps, at the interval's
            midpoint, and held over its fine samples (``nerf.march.coarse_t``).

    Returns:
        rgb [R, 3] (not over the background), head_acc and torso_acc [R] each field's share of the opacity,
        samples [R] field queries composited (a sample live in both fields counts twice).
    """
    R = len(t0)
    stride = torch.ones_like(t0) if stride is None else stride
    cast = n_steps > 0
    if bool(cast.all()):
        return _launch(head, torso, g, c, t0, dt, n_steps, stride, row, occ_head, occ_torso, stop_depth, torso_depth,
                       half)
    # only the rays with samples go to the kernel: a block's lanes are its rays
    keep = cast.nonzero()[:, 0]
    sub = lambda d: {k: v[keep] for k, v in d.items() if torch.is_tensor(v)}  # noqa: E731
    part = _launch(head, torso, sub(g), sub(c), t0[keep], dt[keep], n_steps[keep], stride[keep], row[keep], occ_head,
                   occ_torso, stop_depth, torso_depth, half)
    return {k: v.new_zeros(R, *v.shape[1:]).index_put((keep,), v) for k, v in part.items()}


def _launch(head, torso, g: dict[str, Tensor], c: dict[str, Tensor], t0: Tensor, dt: Tensor, n_steps: Tensor,
            stride: Tensor, row: Tensor, occ_head: Tensor, occ_torso: Tensor | None, stop_depth: float, torso_depth: float,
            half: bool) -> dict[str, Tensor]:
    """``march_fused`` on rays in the order given (the kernel's launch)."""
    out, args, consts = launch_args(head, torso, g, c, t0, dt, n_steps, stride, row, occ_head, occ_torso, stop_depth,
                                    torso_depth, half)
    if len(t0):
        _kernel()[(-(-len(t0) // BLOCK),)](*args, **consts, num_warps=NUM_WARPS)
    return out


def launch_args(head, torso, g: dict[str, Tensor], c: dict[str, Tensor], t0: Tensor, dt: Tensor, n_steps: Tensor,
                stride: Tensor, row: Tensor, occ_head: Tensor, occ_torso: Tensor | None, stop_depth: float,
                torso_depth: float, half: bool) -> tuple[dict[str, Tensor], list, dict]:
    """The kernel's outputs (zeros), its arguments in order and its compile-time constants, for ``_launch`` and for
    building the kernel without a GPU (``scripts/kernel_report.py``: the same arguments, so the same kernel)."""
    from nerf.fields import freq_encode

    dev, R = t0.device, len(t0)
    out = {"rgb": torch.zeros(R, 3, device=dev), "head_acc": torch.zeros(R, device=dev),
           "torso_acc": torch.zeros(R, device=dev), "samples": torch.zeros(R, device=dev)}
    f32 = lambda x: x.float().contiguous()  # noqa: E731
    u8 = lambda x: x.to(torch.uint8).contiguous()  # noqa: E731
    zero = torch.zeros(head.density[0].out_features, device=dev)
    hview = torch.cat([freq_encode(c["unit_h"].float(), head.dir_freqs), c["z_app"].float()], -1)
    hargs = _field_tensors(head, head.encoding.output_dim, torch.cat([c["z_shape"], c["drive"]], -1), hview, half)
    hcfg = head.encoding.cfg
    if torso is not None:
        tcond = torch.cat([freq_encode(c["et"].float(), torso.et_freqs), c["z_shape"].float()], -1)
        tview = torch.cat([freq_encode(c["unit"].float(), torso.dir_freqs), c["z_app"].float()], -1)
        targs = _field_tensors(torso, torso.encoding.output_dim, tcond, tview,
                               half)
        w0, w1, w2 = torso.deform[0], torso.deform[2], torso.deform[4]
        k_warp = 3 * (1 + 2 * torso.pose_freqs)
        pre_w = F.linear(tcond, w0.weight[:, k_warp:], w0.bias)
        if half:
            pre_w = pre_w.half().float()
        dtype = torch.float16 if half else torch.float32
        warp = f32(c["warp"]) if c.get("warp") is not None else torch.ones(R, device=dev)
        wargs = [pre_w.contiguous(),
                 *_cached(torso.deform, ("warp", k_warp, half), lambda: [
                     _pad_rows(w0.weight[:, :k_warp].t(), _k_tile(k_warp)).to(dtype).contiguous(),
                     w1.weight.t().to(dtype).contiguous(), w1.bias.float().contiguous(), *_pad16(w2, dtype)]),
                 warp]
        tcfg, nf = torso.encoding.cfg, torso.pose_freqs
        cam, lo, hi = f32(g["dirs"]), f32(g["lo"]), f32(g["hi"])
        camw = f32(c["torso_dirs"]) if c.get("torso_dirs") is not None else cam
        near_t, far_t, hit_t, occ_t = f32(g["near_t"]), f32(g["far_t"]), u8(g["hit_t"]), u8(occ_torso)
    else:  # (the torso's arguments are never read: any tensor stands in)
        targs, wargs, tcfg, nf = [zero] * 16, [zero] * 7, hcfg, 1
        cam = camw = lo = hi = near_t = far_t = zero
        hit_t = occ_t = zero.to(torch.uint8)
    interpret = interpreting()
    args = [
        f32(g["o_h"]), f32(g["d_h"]), f32(g["center"]), f32(g["radius"]), cam, camw, lo, hi, f32(t0), f32(dt),
        n_steps.to(torch.int32).contiguous(), stride.round().to(torch.int32).contiguous(),
        f32(g["near_h"]), f32(g["far_h"]), near_t, far_t, u8(g["hit_h"]), hit_t,
        row.to(torch.int32).contiguous(), u8(occ_head), occ_t, zero,
        *hargs, *wargs, *targs,
        out["rgb"], out["head_acc"], out["torso_acc"], out["samples"],
        R, occ_head.shape[1], float(stop_depth) if stop_depth > 0 else float("inf"), float(torso_depth)]
    consts = dict(
        L=hcfg.n_levels, N_DENSE=hcfg.level_hashed().count(False), T=hcfg.table_size,
        TORSO=torso is not None, TL=tcfg.n_levels, TN_DENSE=tcfg.level_hashed().count(False), TT=tcfg.table_size,
        NF=nf, H=head.density[0].out_features, K2=_k_tile(hcfg.n_levels * 2), TK2=_k_tile(tcfg.n_levels * 2),
        KW=_k_tile(3 * (1 + 2 * nf)), BLOCK_R=BLOCK, HALF=half, PRECISION="ieee" if interpret else "tf32")
    return out, args, consts


def check_key(head, torso, device: torch.device, half: bool) -> tuple:
    """What makes a different compiled kernel: the device, the precision, the shape of the launch and the fields'
    sizes (each a compile-time constant of the kernel)."""
    sizes = [(f.density[0].out_features, f.encoding.cfg.n_levels, f.encoding.cfg.log2_hashmap_size,
              f.encoding.cfg.level_hashed().count(False)) for f in (head, torso) if f is not None]
    return str(device), bool(half), torso is not None, BLOCK, NUM_WARPS, *sizes


def verify(key: tuple, out: dict[str, Tensor], reference, n_steps: Tensor) -> bool:
    """On a kernel's first render in this process: some of its rays rendered again by ``reference`` and compared.

    The kernel is compiled for each device and shape, and only Triton's CPU interpreter runs in CI: a compiler or
    driver that builds it wrong on a user's GPU would otherwise show as a wrong picture, not an error. So up to
    ``CHECK_RAYS`` of the rays with samples, spread over the call, are rendered with the PyTorch marcher (once per
    ``check_key``; its cost is not timed on a GPU yet) and their colour and opacities compared with the kernel's
    render.

    Args:
        out: the render with the kernel, every ray (rgb, head_acc, torso_acc: ``AvatarModel._march``'s output).
        reference: indices [n] of rays -> the same render of those rays with the PyTorch marcher ([n] rows).
        n_steps: [R] samples per ray (the rays with none are not compared).

    Returns:
        True when each of colour and opacities agrees to ``CHECK_MIN_DB`` (the key is recorded in ``checks``;
        later calls with it return at once); False after one warning when they do not: the kernel is then not
        used again in this process.
    """
    if key in checks:  # (the renders after the first pay nothing here)
        return True
    cast = (n_steps > 0).nonzero()[:, 0]
    if len(cast) == 0:  # nothing to compare yet: check on a later call
        return True
    pick = cast[torch.linspace(0, len(cast) - 1, min(CHECK_RAYS, len(cast)), device=cast.device).round().long()]
    ref = reference(pick)
    mse = max(float(((out[k][pick].float() - ref[k].float()) ** 2).mean())
              for k in ("rgb", "head_acc", "torso_acc") if ref.get(k) is not None)
    db = float("inf") if mse == 0 else -10.0 * math.log10(mse)  # the worst of colour and opacities
    if db >= CHECK_MIN_DB:
        checks[key] = db
        return True
    _broken.append(f"the kernel failed its check: on {len(pick)} rays it disagrees with the PyTorch marcher "
                   f"({db:.1f} dB PSNR, at least {CHECK_MIN_DB:.0f} wanted): miscompiled on this machine? Please "
                   "report it")
    warn_once(_broken[0])
    return False


def run_or_none(*args, **kwargs) -> dict[str, Tensor] | None:
    """``march_fused``, or None (with one warning) when the kernel fails to build or launch on this machine."""
    if _broken:
        return None
    try:
        return march_fused(*args, **kwargs)
    except Exception as err:  # a compiler or driver failure: the PyTorch marcher renders the same picture
        _broken.append(f"the kernel failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        warn_once(_broken[0])
        return None
