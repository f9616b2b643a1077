"""Hash grid: tcnn's level geometry, exact interpolation, hand-computed rows and values, gradients."""

import math

import numpy as np
import pytest
import torch

from nerf.encoding import HASH_PRIMES, HashEncoding, HashGridConfig, hash_grid_corners, hash_grid_encode

# One dense level: scale 3, 4 vertices per axis, 64 of the 256 rows used.
ONE_DENSE = HashGridConfig(n_levels=1, n_features_per_level=1, log2_hashmap_size=8, base_resolution=4)
# One hashed level: scale 15, 16**3 = 4096 vertices > 256 rows.
ONE_HASHED = HashGridConfig(n_levels=1, n_features_per_level=1, log2_hashmap_size=8, base_resolution=16)
# Two levels for gradcheck: scale 3 (dense, 64 rows) and scale 7 (8**3 = 512 > 64: hashed).
TINY = HashGridConfig(n_levels=2, n_features_per_level=2, log2_hashmap_size=6, base_resolution=4, per_level_scale=2.0)


def _index_table(cfg):
    """Tables whose every row holds its own row number: the encoding then returns interpolated row numbers."""
    rows = torch.arange(cfg.table_size, dtype=torch.float64)
    return rows[None, :, None].expand(cfg.n_levels, -1, cfg.n_features_per_level).contiguous()


def test_default_config_matches_instant_ngp_and_tcnn_keys():
    cfg = HashGridConfig()
    assert cfg.per_level_scale == pytest.approx(128 ** (1 / 15))  # 16 -> 2048 vertices in 15 steps
    assert cfg.per_level_scale == pytest.approx(1.3819128799677762, abs=1e-15)
    res = cfg.level_resolutions()
    assert res[:6] == [16, 23, 31, 43, 59, 81] and res[-1] == 2048
    assert cfg.level_hashed() == [r**3 > 2**19 for r in res] == [False] * 5 + [True] * 11  # 59**3 < 2**19 < 81**3
    assert cfg.level_sizes()[:5] == [4096, 12168, 29792, 79512, 205384] and cfg.level_sizes()[5:] == [2**19] * 11
    assert cfg.to_tcnn() == {"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19,
                             "base_resolution": 16, "per_level_scale": cfg.per_level_scale, "interpolation": "Linear"}
    assert HashGridConfig(per_level_scale=1.5).per_level_scale == 1.5  # an explicit value wins over finest_resolution
    assert HashGridConfig(n_levels=8, finest_resolution=2048).per_level_scale == pytest.approx(2.0)  # 16 * 2**7
    with pytest.raises(ValueError, match="per_level_scale"):
        HashGridConfig(finest_resolution=8)


def test_hand_computed_dense_value_including_the_top_wraparound():
    tables = _index_table(ONE_DENSE)
    # pos = x * 3 + 0.5 = (1.4, 2.3, 1.7): row = 1.4 * 1 + 2.3 * 4 + 1.7 * 16 = 1.4 + 9.2 + 27.2
    x = torch.tensor([[0.3, 0.6, 0.4]], dtype=torch.float64)
    torch.testing.assert_close(hash_grid_encode(x, tables, ONE_DENSE), torch.tensor([[37.8]], dtype=torch.float64))
    # z = 0.9: pos_z = 3.2, the upper z corner is vertex 4 = res, one past the grid: rows 57 + {0,1,4,5} + 16
    # wrap mod 64, so the 0.2 of weight on those corners reads 64 rows lower: 61.8 - 0.2 * 64 = 49.0
    x = torch.tensor([[0.3, 0.6, 0.9]], dtype=torch.float64)
    torch.testing.assert_close(hash_grid_encode(x, tables, ONE_DENSE), torch.tensor([[49.0]], dtype=torch.float64))


def test_hand_computed_hashed_row():
    # x puts pos = x * 15 + 0.5 on vertex (3, 5, 7) itself, so the output is that vertex's row number
    x = (torch.tensor([[3.0, 5.0, 7.0]], dtype=torch.float64) - 0.5) / 15.0
    # 5 * 2654435761 mod 2**32 = 387276917, 7 * 805459861 mod 2**32 = 1343251731
    assert 3 ^ 387276917 ^ 1343251731 == 1191511397 and 1191511397 % 256 == 101
    out = hash_grid_encode(x, _index_table(ONE_HASHED), ONE_HASHED)
    torch.testing.assert_close(out, torch.tensor([[101.0]], dtype=torch.float64), atol=1e-9, rtol=0)


def test_rows_are_dense_below_the_table_size_and_hashed_above():
    cfg = HashGridConfig(n_levels=6, log2_hashmap_size=12, base_resolution=8, per_level_scale=2.0)
    assert cfg.level_resolutions() == [8, 16, 32, 64, 128, 256]
    assert cfg.level_hashed() == [False, False, True, True, True, True]  # 16**3 = 4096 rows fit exactly
    x = torch.rand(500, 3, generator=torch.Generator().manual_seed(0)) * 0.9  # away from the top wraparound
    rows, _ = hash_grid_corners(x, cfg)
    v = (x[None, :, :, None] * cfg.level_scales() + 0.5).floor().long()  # [1, N, 3, L]
    bits = torch.tensor([[(c >> d) & 1 for d in range(3)] for c in range(8)])[:, None, :, None]
    v = v + bits  # [8, N, 3, L] the vertex of each corner
    res = torch.tensor(cfg.level_resolutions())
    dense = v[:, :, 0] + v[:, :, 1] * res + v[:, :, 2] * res**2
    spatial = v[:, :, 0] * HASH_PRIMES[0]
    for d in (1, 2):
        spatial = spatial ^ ((v[:, :, d] * HASH_PRIMES[d]) % 2**32)
    assert torch.equal(rows[..., :2], dense[..., :2])
    assert torch.equal(rows[..., 2:], spatial[..., 2:] % 2**12)


def test_linear_table_is_reproduced_exactly_at_a_dense_level():
    cfg = HashGridConfig(n_levels=1, n_features_per_level=2, log2_hashmap_size=12, base_resolution=10)
    res, scale = cfg.level_resolutions()[0], cfg.level_scales().item()
    assert (res, scale) == (10, 9.0)
    ijk = torch.stack(torch.meshgrid(*[torch.arange(res, dtype=torch.float64)] * 3, indexing="ij"), -1)
    ijk = ijk.permute(2, 1, 0, 3).reshape(-1, 3)  # row i + j * res + k * res**2
    a = torch.tensor([[0.5, -2.0, 3.0], [1.0, 1.0, -1.5]], dtype=torch.float64)
    c = torch.tensor([0.25, -4.0], dtype=torch.float64)
    tables = torch.zeros(1, cfg.table_size, 2, dtype=torch.float64)
    tables[0, : res**3] = ijk @ a.T + c
    # stay below the wraparound: pos + 1 < res, i.e. x < (res - 1.5) / scale
    x = torch.rand(1000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * (res - 1.5) / scale
    expected = (x * scale + 0.5) @ a.T + c  # a linear function of the grid coordinate pos
    torch.testing.assert_close(hash_grid_encode(x, tables, cfg), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("cfg", [ONE_DENSE, ONE_HASHED], ids=["dense", "hashed"])
def test_continuous_across_cell_boundaries(cfg):
    tables = torch.rand(1, cfg.table_size, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    scale = cfg.level_scales().item()
    boundary = (torch.tensor([2.0, 1.0, 2.0], dtype=torch.float64) - 0.5) / scale  # pos integer on every axis
    eps = 1e-9
    below = hash_grid_encode((boundary - eps)[None], tables, cfg)
    above = hash_grid_encode((boundary + eps)[None], tables, cfg)
    assert (above - below).abs().item() < 10 * scale * eps  # Lipschitz with slope <= sum of |table differences| * scale
    _, w_below = hash_grid_corners((boundary - eps)[None], cfg)
    _, w_above = hash_grid_corners((boundary + eps)[None], cfg)
    assert w_below.max() > 1 - 1e-6 and w_above.max() > 1 - 1e-6  # both sides sit on one vertex, read from two cells


def test_output_shape_and_points_outside_are_clamped():
    enc = HashEncoding(TINY)
    assert enc.output_dim == 4 and enc.tables.shape == (2, 64, 2)
    assert enc.tables.abs().max() <= 1e-4  # instant-ngp's init
    x = torch.rand(2, 5, 3)
    assert enc(x).shape == (2, 5, 4)
    outside = torch.tensor([[-0.5, 0.3, 1.7]])
    torch.testing.assert_close(enc(outside), enc(torch.tensor([[0.0, 0.3, 1.0]])), rtol=0, atol=0)
    assert HashEncoding().output_dim == 32
    with pytest.raises(ValueError, match="shape"):
        enc(torch.rand(4, 2))


def test_gradients_reach_the_used_rows_and_the_points():
    cfg = HashGridConfig(n_levels=3, log2_hashmap_size=10, base_resolution=4, per_level_scale=3.0)
    assert cfg.level_hashed() == [False, True, True] and cfg.level_sizes() == [64, 1024, 1024]
    enc = HashEncoding(cfg)
    torch.nn.init.uniform_(enc.tables, -1.0, 1.0)  # features far from zero, so every used row gets a gradient
    x = torch.rand(4000, 3, generator=torch.Generator().manual_seed(3)).requires_grad_()
    enc(x).square().sum().backward()
    used = enc.tables.grad.abs().sum(-1) > 0  # [L, T]
    assert not used[0, 64:].any() and used[0, :64].sum() > 50  # the dense level touches only its 4**3 rows
    assert used[1].sum() > 900 and used[2].sum() > 900  # hashed levels spread over the whole table
    assert torch.isfinite(x.grad).all() and (x.grad.abs().sum(-1) > 0).all()
    outside = torch.tensor([[1.5, 0.5, 0.5]], requires_grad=True)
    enc(outside).sum().backward()
    assert outside.grad[0, 0] == 0 and outside.grad[0, 1:].abs().sum() > 0  # clamp stops d/dx on the clamped axis


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(4)
    tables = torch.randn(2, 64, 2, dtype=torch.float64, generator=gen).requires_grad_()
    x = (0.05 + 0.9 * torch.rand(6, 3, dtype=torch.float64, generator=gen)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, t: hash_grid_encode(x, t, TINY), (x, tables), eps=1e-6, atol=1e-7)


def test_weights_partition_unity_at_all_default_levels():
    x = torch.rand(256, 3, generator=torch.Generator().manual_seed(5))
    rows, weights = hash_grid_corners(x, HashGridConfig())
    assert rows.shape == weights.shape == (8, 256, 16)
    torch.testing.assert_close(weights.sum(0), torch.ones(256, 16))
    assert weights.min() >= 0 and rows.min() >= 0 and (rows < torch.tensor(HashGridConfig().level_sizes())).all()


def _tcnn_kernel_grid_one_point(x, tables, cfg):
    """tcnn's kernel_grid (grid.h) transcribed one point and one corner at a time, with uint32 hashing.

    The scale is rounded to float32 from float64, where tcnn's exp2f may be an ulp or two away.
    """
    out = []
    size = 2**cfg.log2_hashmap_size
    for level in range(cfg.n_levels):
        scale = np.float32(cfg.base_resolution * cfg.per_level_scale**level - 1.0)
        res = int(math.ceil(scale)) + 1
        hashmap_size = min(-(-res**3 // 8) * 8, size)
        pos = [float(xd) * float(scale) + 0.5 for xd in x]
        grid = [math.floor(p) for p in pos]
        frac = [p - g for p, g in zip(pos, grid)]
        acc = np.zeros(cfg.n_features_per_level)
        for corner in range(8):
            v = [grid[d] + ((corner >> d) & 1) for d in range(3)]
            w = math.prod(frac[d] if (corner >> d) & 1 else 1 - frac[d] for d in range(3))
            index, stride = 0, 1
            for d in range(3):
                if stride > hashmap_size:
                    break
                index += v[d] * stride
                stride *= res
            if hashmap_size < stride:
                index = 0
                for d in range(3):
                    index ^= (v[d] * HASH_PRIMES[d]) & 0xFFFFFFFF
            acc += w * tables[level, index % hashmap_size].numpy()
        out.extend(acc)
    return np.array(out)


def test_matches_tcnn_kernel_transcribed_point_by_point():
    cfg = HashGridConfig()
    gen = torch.Generator().manual_seed(6)
    tables = torch.rand(cfg.n_levels, cfg.table_size, 2, dtype=torch.float64, generator=gen) * 2 - 1
    x = torch.rand(12, 3, dtype=torch.float64, generator=gen)
    x[0] = torch.tensor([0.999, 0.0, 1.0], dtype=torch.float64)  # the corners of the cube, wraparound included
    expected = np.stack([_tcnn_kernel_grid_one_point(p.tolist(), tables, cfg) for p in x])
    np.testing.assert_allclose(hash_grid_encode(x, tables, cfg).numpy(), expected, rtol=0, atol=1e-12)
