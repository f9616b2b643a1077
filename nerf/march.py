"""Occupancy-grid ray marching for rendering: packed samples at a fixed step, empty cells skipped, rays stopped
once opaque (the instant-ngp / nerfacc scheme, in plain PyTorch so the CPU path is the GPU path).

The stratified + importance sampler (``nerf.sampler``, ``AvatarModel._field_samples``) gives every ray that
meets a field the same number of samples in a dense [rays, samples] layout, sorts and merges them, and pays
for the layout on every ray. Marching instead:

1. lays samples every ``dt`` along each ray between where it enters its first field and leaves its last
   (sample k stands for the interval [t0 + k dt, t0 + (k + 1) dt), taken at its midpoint);
2. keeps, per field, the samples inside the field's domain on a ray that meets it and in an occupied cell
   (``live``: a cheap test, no network): a packed list of (ray, step), nothing stored for empty space;
3. queries the fields in rounds: round j takes each still-visible ray's live samples j * n ... (j + 1) * n - 1
   in depth order, queries every field at its own live ones, adds the fields' densities at each sample (the
   two media superimposed) and composites; a ray whose optical depth passes ``stop_depth`` takes no more
   rounds (early ray termination: nothing behind an opaque face is queried).

Densities are per unit of the ray parameter t (a field that works in units of its own extent divides by it
first). The quadrature is NeRF's (``nerf.volrend``) on the fixed step; where two fields overlap, each field's
share of a sample's weight is its share of the summed density, which is the exact split for media mixed
within the interval.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor


@dataclasses.dataclass
class MarchField:
    """One field as the marcher sees it.

    live: t [R, B] (B sample positions on every ray) -> bool [R, B], whether the sample can hold density.
    query: (ray [N] long, t [N]) -> (sigma [N] per unit t, rgb [N, 3]) at live samples only.
    """

    live: Callable[[Tensor], Tensor]
    query: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def coarse_t(t: Tensor, t0: Tensor, dt: Tensor, stride: Tensor) -> Tensor:
    """Where a field marched at ``stride`` times the step samples for the fine sample at t: the midpoint of the
    interval of ``stride`` steps that holds it (stride 1: t itself). Such a field's density and colour are held over
    its interval's fine samples: the quadrature of the field at its own, coarser step, in the same compositing pass.

    Args (broadcast together): t, the fine samples t0 + (k + 0.5) dt; t0, dt; stride, whole numbers >= 1 (float).
    """
    k = torch.round((t - t0) / dt - 0.5)
    return t0 + (torch.div(k, stride, rounding_mode="floor") * stride + stride * 0.5) * dt


def march(fields: list[MarchField], t0: Tensor, dt: Tensor, n_steps: Tensor, stop_depth: float = 20.0,
          round_size: int = 16, block: int = 64) -> dict[str, Tensor]:
    """Composite rays through several fields by marching (no gradient).

    Args:
        t0: [R] where each ray's samples begin; dt: [R] > 0, the step; n_steps: [R] long, samples per ray
            (sample k at t0 + (k + 0.5) dt, k < n_steps).
        stop_depth: a ray takes no further round once its optical depth exceeds this (0: never stops early).
        round_size: live samples per ray and round.
        block: steps tested for liveness at a time (bounds the [R, block, 3] position tensors).

    Returns:
        rgb [R, 3] (not composited over a background), acc [R] opacity, field_acc [F, R] each field's share
        of the opacity, samples [R] field queries made (a sample live in two fields counts twice).
    """
    R, dev = len(t0), t0.device
    K = int(n_steps.max()) if R else 0
    lives = []  # per field: bool [R, K]
    for f in fields:
        live = torch.zeros(R, K, dtype=torch.bool, device=dev)
        for a in range(0, K, block):
            k = torch.arange(a, min(a + block, K), device=dev)
            t = t0[:, None] + (k.to(t0.dtype) + 0.5) * dt[:, None]
            live[:, a:a + len(k)] = f.live(t) & (k[None] < n_steps[:, None])
        lives.append(live)
    any_live = torch.stack(lives).any(0) if lives else torch.zeros(R, K, dtype=torch.bool, device=dev)
    ray_p, step_p = any_live.nonzero(as_tuple=True)  # row-major: per ray in depth order
    rank_p = (torch.cumsum(any_live, 1, dtype=torch.int32) - 1)[ray_p, step_p]
    count = any_live.sum(1)
    field_p = [lv[ray_p, step_p] for lv in lives]

    rgb = torch.zeros(R, 3, device=dev)
    field_acc = torch.zeros(len(fields), R, device=dev)
    samples = torch.zeros(R, device=dev)
    depth = torch.zeros(R, device=dev)  # optical depth composited so far
    alive = count > 0
    n_rounds = (int(count.max()) + round_size - 1) // round_size if R else 0
    for j in range(n_rounds):
        lo = j * round_size
        sel = ((rank_p >= lo) & (rank_p < lo + round_size) & alive[ray_p]).nonzero()[:, 0]
        if len(sel) == 0:
            break
        r, slot = ray_p[sel], (rank_p[sel] - lo).long()
        t = t0[r] + (step_p[sel].to(t0.dtype) + 0.5) * dt[r]
        sigma_sum = torch.zeros(len(sel), device=dev)
        parts = []
        for i, f in enumerate(fields):
            sub = field_p[i][sel].nonzero()[:, 0]
            sigma, colour = f.query(r[sub], t[sub])
            sigma = sigma.float()
            parts.append((sub, sigma, colour.float()))
            sigma_sum.index_add_(0, sub, sigma)
            samples.index_add_(0, r[sub], torch.ones_like(sigma))
        tau = sigma_sum * dt[r]
        dense = torch.zeros(R, round_size, device=dev)
        dense[r, slot] = tau
        # exclusive sum by shifting (not cumsum - tau: that rounds away small depths in front of a huge tau)
        before = torch.cat([torch.zeros_like(dense[:, :1]), torch.cumsum(dense[:, :-1], 1)], 1)
        w = torch.exp(-(depth[r] + before[r, slot])) * -torch.expm1(-tau)
        share = w / sigma_sum.clamp_min(1e-30)  # a sample with no density has weight 0
        for i, (sub, sigma, colour) in enumerate(parts):
            wf = share[sub] * sigma
            rgb.index_add_(0, r[sub], wf[:, None] * colour)
            field_acc[i].index_add_(0, r[sub], wf)
        depth += dense.sum(1)
        alive &= count > lo + round_size
        if stop_depth > 0:
            alive &= depth <= stop_depth
    return {"rgb": rgb, "acc": field_acc.sum(0), "field_acc": field_acc, "samples": samples}
