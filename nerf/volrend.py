"""Volume rendering along rays, apart from any field: the functional core (nerfacc-style).

Samples are dense and packed, R rays x S samples sorted by t along each ray; sample i stands for the
interval [t_start_i, t_end_i) with density sigma_i and colour c_i. The quadrature is NeRF's (Max 1995):

    delta_i = t_end_i - t_start_i
    alpha_i = 1 - exp(-sigma_i delta_i)
    T_i     = prod_{j<i} (1 - alpha_j) = exp(-sum_{j<i} sigma_j delta_j)      (T_0 = 1)
    w_i     = T_i alpha_i
    C       = sum_i w_i c_i + (1 - sum_i w_i) background

Padding samples (a ray with fewer samples than S) get sigma = 0 or delta = 0, hence weight 0.

Joint rendering of two fields (head and torso): each field is sampled on its own intervals of the same
ray, on one shared t axis (DESIGN.md, Coordinates). `merge_by_depth` interleaves the two sample sets by
their sort key and every sample keeps its own interval length, delta_i = t_end_i - t_start_i, even where
intervals of the two sets overlap. The ray's optical depth sum_i sigma_i delta_i is then each field's own
quadrature of its density, added, so the opacity 1 - exp(-sum_i sigma_i delta_i) is that of the two media
superimposed and does not depend on the merge order. The approximation is in the order of compositing:
two overlapping intervals are treated as if one lay wholly in front of the other, so colours are ordered
only to within one sample spacing (AD-NeRF-style joint head-torso rendering does the same).
"""

import torch
from torch import Tensor


def deltas_from_t(t_starts: Tensor, t_ends: Tensor) -> Tensor:
    """Interval lengths of the samples.

    Args:
        t_starts: [R, S] where each sample's interval begins.
        t_ends: [R, S] where it ends.

    Returns:
        [R, S] delta = t_end - t_start; after `merge_by_depth`, still each sample's own length.
    """
    return t_ends - t_starts


def alphas_from_density(sigma: Tensor, deltas: Tensor) -> Tensor:
    """Opacity of each interval.

    Args:
        sigma: [R, S] densities, >= 0.
        deltas: [R, S] interval lengths.

    Returns:
        [R, S] alpha = 1 - exp(-sigma * delta).
    """
    return -torch.expm1(-sigma * deltas)  # expm1 keeps small alphas accurate


def transmittance(alphas: Tensor) -> Tensor:
    """Light that reaches each sample: the exclusive cumulative product of (1 - alpha).

    Args:
        alphas: [R, S] interval opacities in [0, 1].

    Returns:
        [R, S] T_i = prod_{j<i} (1 - alpha_j), T_0 = 1.
    """
    # a product, not exp(cumsum(log(1 - alpha))): an opaque sample (alpha = 1) stays exact, with no log(0)
    survive = torch.cat([torch.ones_like(alphas[:, :1]), 1.0 - alphas[:, :-1]], dim=1)
    return torch.cumprod(survive, dim=1)


def render_weights(sigma: Tensor, deltas: Tensor) -> Tensor:
    """Contribution of each sample to its ray, w_i = T_i alpha_i.

    Computed from the optical depth, T_i = exp(-exclusive cumsum of sigma * delta), which keeps the
    gradient finite for any density, zero and very large included.

    Args:
        sigma: [R, S] densities, >= 0.
        deltas: [R, S] interval lengths.

    Returns:
        [R, S] weights; per ray they sum to the opacity, <= 1.
    """
    tau = sigma * deltas  # [R, S] optical depth of each interval
    # exclusive sum by shifting: cumsum - tau would round away the small depths in front of a huge tau
    before = torch.cat([torch.zeros_like(tau[:, :1]), torch.cumsum(tau[:, :-1], dim=1)], dim=1)
    return torch.exp(-before) * -torch.expm1(-tau)


def accumulate(weights: Tensor, values: Tensor) -> Tensor:
    """Weighted sum of per-sample values along each ray.

    Args:
        weights: [R, S] sample weights.
        values: [R, S, C] per-sample values (colour, features, normals).

    Returns:
        [R, C] sum_i w_i v_i.
    """
    return torch.einsum("rs,rsc->rc", weights, values)


def opacity(weights: Tensor) -> Tensor:
    """Accumulated opacity of each ray.

    Args:
        weights: [R, S] sample weights.

    Returns:
        [R] sum_i w_i = 1 - T_after_last.
    """
    return weights.sum(dim=1)


def depth(weights: Tensor, t_mid: Tensor) -> Tensor:
    """Weighted depth of each ray, not normalised: divide by `opacity` for the expected depth of what is hit.

    Args:
        weights: [R, S] sample weights.
        t_mid: [R, S] a depth per sample, usually the interval midpoint.

    Returns:
        [R] sum_i w_i t_i (0 for an empty ray).
    """
    return (weights * t_mid).sum(dim=1)


def composite_over(rgb: Tensor, acc: Tensor, background: Tensor) -> Tensor:
    """Puts the rendered colour over a background; rgb is premultiplied by its opacity.

    Args:
        rgb: [R, 3] accumulated colour.
        acc: [R] accumulated opacity.
        background: [R, 3] background colour seen through the ray (the plate's pixel).

    Returns:
        [R, 3] rgb + (1 - acc) background.
    """
    return rgb + (1.0 - acc)[:, None] * background


def merge_by_depth(
    t_a: Tensor, vals_a: dict[str, Tensor], t_b: Tensor, vals_b: dict[str, Tensor]
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """Interleaves two sorted sample sets of the same rays (head and torso) into one sorted set.

    Pass the intervals along as values ("t_starts", "t_ends") to compute the deltas after merging; the
    module docstring says what rendering the merged set approximates. Ties keep a's sample first.

    Args:
        t_a: [R, Sa] sort key of set a (e.g. interval midpoints), sorted along each ray.
        vals_a: name -> [R, Sa, ...] per-sample values of set a (sigma, rgb, any extra).
        t_b: [R, Sb] sort key of set b.
        vals_b: name -> [R, Sb, ...], the same names as vals_a, the same trailing shapes.

    Returns:
        t: [R, Sa + Sb] the merged keys, sorted along each ray.
        vals: name -> [R, Sa + Sb, ...] each value still next to its own t.
        source: [R, Sa + Sb] int64, 0 where the sample came from a and 1 where from b.
    """
    if vals_a.keys() != vals_b.keys():
        raise ValueError(f"merge_by_depth needs the same values from both sets, got {sorted(vals_a)} and {sorted(vals_b)}")
    rays, n_a, n_b = t_a.shape[0], t_a.shape[1], t_b.shape[1]
    if t_b.shape[0] != rays:
        raise ValueError(f"merge_by_depth merges samples of the same rays, got {rays} and {t_b.shape[0]} rays")
    t_all = torch.cat([t_a, t_b], dim=1)
    order = torch.argsort(t_all, dim=1, stable=True)  # [R, Sa + Sb]
    source = torch.cat([t_a.new_zeros(rays, n_a, dtype=torch.long), t_a.new_ones(rays, n_b, dtype=torch.long)], dim=1)

    vals = {}
    for name, va in vals_a.items():
        vb = vals_b[name]
        if va.shape[:2] != t_a.shape or vb.shape[:2] != t_b.shape or va.shape[2:] != vb.shape[2:]:
            raise ValueError(f"merge_by_depth: '{name}' has shapes {tuple(va.shape)} and {tuple(vb.shape)} for "
                             f"samples {tuple(t_a.shape)} and {tuple(t_b.shape)}")
        both = torch.cat([va, vb], dim=1)
        index = order.reshape(rays, n_a + n_b, *[1] * (both.dim() - 2)).expand_as(both)
        vals[name] = both.gather(1, index)
    return t_all.gather(1, order), vals, source.gather(1, order)
