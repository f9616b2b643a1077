"""Where along each ray the fields are queried: stratified samples, then importance samples.

This is the CPU sampler and the seam where the occupancy-grid sampler of the
speed issue plugs in: both give sorted sample positions ``t`` per ray, and each
sample's interval is the gap to the next sample (``deltas_of``), as in NeRF.
"""

from __future__ import annotations

import torch


def stratified(near: torch.Tensor, far: torch.Tensor, n: int, jitter: bool,
               gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample in each of n equal bins between near [R] and far [R] (bin centre unless jittering).

    Returns:
        t [R, n] sorted sample positions, and the bin edges [R, n + 1] (for importance sampling).
    """
    steps = torch.linspace(0.0, 1.0, n + 1, dtype=near.dtype, device=near.device)
    edges = near[:, None] + (far - near)[:, None] * steps
    u = torch.rand(near.shape[0], n, generator=gen, dtype=near.dtype, device=near.device) if jitter \
        else torch.full((1, n), 0.5, dtype=near.dtype, device=near.device)
    return edges[:, :-1] + u * (edges[:, 1:] - edges[:, :-1]), edges


def importance(edges: torch.Tensor, weights: torch.Tensor, n: int, jitter: bool,
               gen: torch.Generator | None = None) -> torch.Tensor:
    """n more samples per ray from the piecewise-constant pdf of the bins' weights (inverse CDF).

    Args:
        edges: [R, S + 1] bin edges; weights: [R, S] the bins' rendering weights (used without gradient).

    Returns:
        t [R, n] sorted.
    """
    w = weights.detach() + 1e-5  # an empty ray samples uniformly
    cdf = torch.cumsum(w / w.sum(-1, keepdim=True), -1)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], -1).contiguous()
    R = weights.shape[0]
    if jitter:
        u = torch.sort(torch.rand(R, n, generator=gen, dtype=weights.dtype, device=weights.device), -1)[0]
    else:
        u = ((torch.arange(n, dtype=weights.dtype, device=weights.device) + 0.5) / n).expand(R, n).contiguous()
    idx = torch.searchsorted(cdf, u, right=True).clamp(1, weights.shape[1]) - 1
    lo_c, hi_c = torch.gather(cdf, 1, idx), torch.gather(cdf, 1, idx + 1)
    frac = ((u - lo_c) / (hi_c - lo_c).clamp_min(1e-9)).clamp(0.0, 1.0)
    lo_t, hi_t = torch.gather(edges, 1, idx), torch.gather(edges, 1, idx + 1)
    return lo_t + frac * (hi_t - lo_t)


def deltas_of(t: torch.Tensor, far: torch.Tensor) -> torch.Tensor:
    """Interval lengths [R, S] of sorted samples t [R, S]: the gap to the next sample, the last up to far [R]."""
    return torch.cat([t[:, 1:] - t[:, :-1], (far[:, None] - t[:, -1:]).clamp_min(0.0)], -1)
