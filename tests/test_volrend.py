"""Volume rendering: closed forms for constant density, empty space, opaque samples, merging two fields."""

import math

import pytest
import torch
from nerfacc.volrend import render_weight_from_density

from nerf.volrend import (
    accumulate,
    alphas_from_density,
    composite_over,
    deltas_from_t,
    depth,
    merge_by_depth,
    opacity,
    render_weights,
    transmittance,
)


def _intervals(edges):
    """[R, S+1] sorted edges -> ([R, S] t_starts, [R, S] t_ends, [R, S] t_mid)."""
    return edges[:, :-1], edges[:, 1:], 0.5 * (edges[:, :-1] + edges[:, 1:])


def _render(sigma, rgb, deltas, background):
    weights = render_weights(sigma, deltas)
    return composite_over(accumulate(weights, rgb), opacity(weights), background)


@pytest.mark.parametrize("spacing", ["uniform", "nonuniform"])
def test_constant_density_matches_beer_lambert(spacing):
    sigma0, length = 1.7, 2.0
    if spacing == "uniform":
        edges = torch.linspace(0.0, length, 65, dtype=torch.float64).expand(3, -1)
    else:
        inner = torch.rand(3, 63, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).sort(dim=1).values
        edges = torch.cat([torch.zeros(3, 1), inner * length, torch.full((3, 1), length)], dim=1).double()
    t_starts, t_ends, _ = _intervals(edges)
    deltas = deltas_from_t(t_starts, t_ends)
    sigma = torch.full_like(deltas, sigma0)
    alphas = alphas_from_density(sigma, deltas)
    trans = transmittance(alphas)
    # T at every sample is exp(-sigma * distance travelled), exactly, whatever the spacing
    torch.testing.assert_close(trans, torch.exp(-sigma0 * t_starts), atol=1e-14, rtol=0)
    assert trans[:, -1] * (1 - alphas[:, -1]) == pytest.approx(math.exp(-3.4), abs=1e-14)  # leaving the segment
    weights = render_weights(sigma, deltas)
    torch.testing.assert_close(weights, trans * alphas, atol=1e-14, rtol=0)  # the two routes to w agree
    torch.testing.assert_close(opacity(weights), torch.full((3,), 1 - math.exp(-3.4), dtype=torch.float64))
    assert 1 - math.exp(-3.4) == pytest.approx(0.966627, abs=1e-6)


def test_empty_space_shows_the_background_exactly():
    gen = torch.Generator().manual_seed(1)
    rgb, background = torch.rand(4, 16, 3, generator=gen), torch.rand(4, 3, generator=gen)
    deltas = torch.rand(4, 16, generator=gen)
    weights = render_weights(torch.zeros(4, 16), deltas)
    assert torch.equal(weights, torch.zeros(4, 16))
    assert torch.equal(_render(torch.zeros(4, 16), rgb, deltas, background), background)
    assert torch.equal(depth(weights, torch.rand(4, 16, generator=gen)), torch.zeros(4))


def test_weights_sum_to_opacity():
    gen = torch.Generator().manual_seed(2)
    sigma = torch.rand(5, 32, dtype=torch.float64, generator=gen) * 20
    sigma[0] = 0.0
    sigma[1, 10] = 1e6  # an opaque wall mid-ray
    deltas = torch.rand(5, 32, dtype=torch.float64, generator=gen) * 0.05
    weights = render_weights(sigma, deltas)
    expected = -torch.expm1(-(sigma * deltas).sum(dim=1))
    torch.testing.assert_close(opacity(weights), expected, atol=1e-14, rtol=0)
    assert opacity(weights)[1] == 1.0 and opacity(weights)[0] == 0.0
    alphas = alphas_from_density(sigma, deltas)
    torch.testing.assert_close(opacity(weights), 1 - transmittance(alphas)[:, -1] * (1 - alphas[:, -1]), atol=1e-14, rtol=0)


def test_opaque_sample_gives_its_colour_and_depth():
    rgb = torch.tensor([[[0.9, 0.1, 0.1], [0.2, 0.3, 0.4], [0.0, 0.8, 0.5], [1.0, 1.0, 1.0]]])
    background = torch.tensor([[0.5, 0.5, 0.5]])
    deltas = torch.full((1, 4), 0.1)
    t_mid = torch.tensor([[1.05, 1.15, 1.25, 1.35]])
    sigma = torch.tensor([[0.0, 0.0, 1e4, 3.0]])  # sample 2 is a wall: alpha = 1 - exp(-1000) = 1 in float
    weights = render_weights(sigma, deltas)
    assert torch.equal(weights, torch.tensor([[0.0, 0.0, 1.0, 0.0]]))
    assert torch.equal(_render(sigma, rgb, deltas, background), rgb[:, 2])
    assert depth(weights, t_mid).item() == pytest.approx(1.25)
    # a half-transparent sample in front: C = a c_0 + (1 - a) c_2 with a = 1 - exp(-0.5)
    sigma[0, 0] = 5.0
    a = 1 - math.exp(-0.5)
    torch.testing.assert_close(_render(sigma, rgb, deltas, background), a * rgb[:, 0] + (1 - a) * rgb[:, 2])
    weights = render_weights(sigma, deltas)
    torch.testing.assert_close(depth(weights, t_mid), torch.tensor([a * 1.05 + (1 - a) * 1.25]))
    assert opacity(weights).item() == 1.0


def test_merge_keeps_each_value_with_its_own_t():
    gen = torch.Generator().manual_seed(3)
    t_a = torch.rand(6, 5, generator=gen).sort(dim=1).values
    t_b = torch.rand(6, 7, generator=gen).sort(dim=1).values
    t_b[:, 0] = t_a[:, 2]  # a tie: a's sample goes first

    def values(t, tag):
        return {"sigma": t**2, "rgb": torch.stack([t, torch.full_like(t, tag), -t], dim=-1)}

    t, vals, source = merge_by_depth(t_a, values(t_a, 0.0), t_b, values(t_b, 1.0))
    assert t.shape == source.shape == (6, 12) and vals["rgb"].shape == (6, 12, 3)
    assert (t.diff(dim=1) >= 0).all()
    assert torch.equal(vals["sigma"], t**2) and torch.equal(vals["rgb"][..., 0], t) and torch.equal(vals["rgb"][..., 2], -t)
    assert torch.equal(vals["rgb"][..., 1], source.float())
    assert (source == 0).sum(dim=1).tolist() == [5] * 6
    tie = (t == t_a[:, 2:3]).nonzero()
    assert source[tie[0::2, 0], tie[0::2, 1]].eq(0).all() and source[tie[1::2, 0], tie[1::2, 1]].eq(1).all()
    with pytest.raises(ValueError, match="same values"):
        merge_by_depth(t_a, {"sigma": t_a}, t_b, {"rgb": t_b})


def test_merged_overlapping_fields_have_the_superimposed_opacity():
    # head: sigma 0.8 on [0, 2] in 8 intervals; torso: sigma 0.3 on [1, 3] in 5; they overlap on [1, 2]
    head_s, head_e, head_m = _intervals(torch.linspace(0.0, 2.0, 9, dtype=torch.float64)[None])
    torso_s, torso_e, torso_m = _intervals(torch.linspace(1.0, 3.0, 6, dtype=torch.float64)[None])
    sigma_head = torch.full_like(head_m, 0.8).requires_grad_()
    head = {"sigma": sigma_head, "t_starts": head_s, "t_ends": head_e}
    torso = {"sigma": torch.full_like(torso_m, 0.3), "t_starts": torso_s, "t_ends": torso_e}
    _, vals, _ = merge_by_depth(head_m, head, torso_m, torso)
    weights = render_weights(vals["sigma"], deltas_from_t(vals["t_starts"], vals["t_ends"]))
    # order-independent: 1 - exp(-(0.8 * 2 + 0.3 * 2)) = 1 - exp(-2.2)
    assert opacity(weights).item() == pytest.approx(1 - math.exp(-2.2), abs=1e-14)
    opacity(weights).sum().backward()
    # d opacity / d sigma_i = delta_i exp(-2.2) for every head sample (each delta 0.25)
    torch.testing.assert_close(sigma_head.grad, torch.full((1, 8), 0.25 * math.exp(-2.2), dtype=torch.float64))


def test_colour_gradient_is_finite_at_zero_and_huge_density():
    gen = torch.Generator().manual_seed(4)
    rgb = torch.rand(1, 6, 3, dtype=torch.float64, generator=gen)
    background = torch.rand(1, 3, dtype=torch.float64, generator=gen)
    deltas = torch.rand(1, 6, dtype=torch.float64, generator=gen) * 0.1
    probe = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)

    sigma = torch.zeros(1, 6, dtype=torch.float64, requires_grad=True)
    (_render(sigma, rgb, deltas, background) @ probe).sum().backward()
    # at zero density, d C / d sigma_i = delta_i (c_i - background)
    torch.testing.assert_close(sigma.grad, deltas * ((rgb - background[:, None]) @ probe), atol=1e-15, rtol=0)

    for big in (1e4, 1e30):
        sigma = torch.full((1, 6), big, dtype=torch.float64, requires_grad=True)
        (_render(sigma, rgb, deltas, background) @ probe).sum().backward()
        assert torch.isfinite(sigma.grad).all() and sigma.grad.abs().max() < 1e-10  # saturated: nothing to change

    alphas = torch.tensor([[0.3, 1.0, 0.5, 0.2]], dtype=torch.float64, requires_grad=True)
    (transmittance(alphas) * torch.arange(1.0, 5.0, dtype=torch.float64)).sum().backward()
    # sum_i (i + 1) T_i with T = [1, 1 - a0, (1 - a0)(1 - a1), ...] and a1 = 1: finite, and exactly
    # d/da0 = -2 - 3 (1 - a1) - ... = -2, d/da1 = -(1 - a0)(3 + 4 (1 - a2)), d/da2 = -4 (1 - a0)(1 - a1) = 0
    torch.testing.assert_close(alphas.grad, torch.tensor([[-2.0, -0.7 * (3 + 4 * 0.5), 0.0, 0.0]], dtype=torch.float64))


def test_agrees_with_nerfacc_dense_rendering():
    gen = torch.Generator().manual_seed(5)
    edges = (torch.rand(4, 33, dtype=torch.float64, generator=gen) * 3).sort(dim=1).values
    sigma = torch.rand(4, 32, dtype=torch.float64, generator=gen) * 5
    t_starts, t_ends, _ = _intervals(edges)
    weights, trans, alphas = render_weight_from_density(t_starts, t_ends, sigma)
    deltas = deltas_from_t(t_starts, t_ends)
    torch.testing.assert_close(render_weights(sigma, deltas), weights, atol=1e-12, rtol=0)
    torch.testing.assert_close(alphas_from_density(sigma, deltas), alphas, atol=1e-12, rtol=0)
    torch.testing.assert_close(transmittance(alphas), trans, atol=1e-12, rtol=0)

