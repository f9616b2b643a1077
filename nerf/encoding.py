"""Multiresolution hash-grid encoding (instant-ngp), in pure PyTorch: the specification and the CPU path.

Input domain: points in [0, 1]^3. A field maps its bounding box into that cube; points outside it are
clamped onto the cube's surface before encoding, so their encoding is that of the nearest surface point
and their gradient along a clamped axis is zero. A fused kernel behind `hash_grid_encode` keeps this same
contract, clamp included.

The math follows tiny-cuda-nn's grid.h (linear interpolation) so that tcnn, a fused kernel and this
reference compute the same function of the same parameters, up to float rounding (tcnn evaluates scale_l
with exp2f and stores fp16 parameters by default). For level l = 0 .. L-1, with T = 2**log2_hashmap_size:

    scale_l = base_resolution * per_level_scale**l - 1     (float64, then rounded once to float32)
    res_l   = ceil(scale_l) + 1                             (grid vertices per axis)
    pos     = x * scale_l + 0.5                             (per axis)
    g, f    = floor(pos), pos - floor(pos)                  (lower corner, fraction)
    corner c in {0, 1}^3: vertex v = g + c, weight w_c = prod_d (f_d if c_d else 1 - f_d)
    index   = v_0 + v_1 res_l + v_2 res_l**2                                 if res_l**3 <= T (dense)
              (v_0 * 1) ^ (v_1 * 2654435761) ^ (v_2 * 805459861) mod 2**32   otherwise (spatial hash)
    P_l     = min(next_multiple(res_l**3, 8), T)            (table rows level l uses)
    out_l   = sum_c w_c * tables[l, index_c mod P_l, :]

The output is level-major, out[:, l * F + f], as in tcnn.

How this differs from the paper (Mueller et al. 2022, Sec. 3), whose level l has floor(N_min b**l) cells
with vertex i at x = i / N_l: tcnn's base_resolution counts vertices, not cells (the -1), and the +0.5
staggers the levels so their vertices do not align, putting vertex i at x = (i - 0.5) / scale_l. Near the
top face (x > (res_l - 1.5) / scale_l on an axis) the upper corner is v = res_l, one past the last vertex:
tcnn lets the dense index wrap around there (mod P_l), reporting no loss of quality, and so does this
reference.

Parameter layout: tables [L, T, F]; level l reads rows [0, P_l) only, so tcnn's flat parameter vector is
the concatenation of tables[l, :P_l].flatten() over l (its offset table is the cumulative sum of P_l).
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

# tcnn's hash primes for x, y, z; 1 on x keeps neighbouring x vertices in neighbouring rows (cache coherence).
HASH_PRIMES = (1, 2654435761, 805459861)
_UINT32 = 0xFFFFFFFF


@dataclass
class HashGridConfig:
    """Hash-grid hyper-parameters under tiny-cuda-nn's key names (its config_hash.json)."""

    n_levels: int = 16
    """Number of resolution levels L."""
    n_features_per_level: int = 2
    """Features F stored at every grid vertex."""
    log2_hashmap_size: int = 19
    """log2 of the table size T of every level."""
    base_resolution: int = 16
    """Grid vertices per axis at the coarsest level."""
    finest_resolution: int = 2048
    """Grid vertices per axis at the finest level; only used to derive per_level_scale when that is None."""
    per_level_scale: float | None = None
    """Growth b of the resolution from one level to the next; None derives it from finest_resolution."""

    def __post_init__(self):
        if self.n_levels < 1 or self.n_features_per_level < 1:
            raise ValueError(f"n_levels and n_features_per_level must be >= 1, got {self.n_levels} and "
                             f"{self.n_features_per_level}")
        if self.base_resolution < 2 or not 3 <= self.log2_hashmap_size <= 30:
            raise ValueError(f"base_resolution must be >= 2 and log2_hashmap_size in [3, 30], got "
                             f"{self.base_resolution} and {self.log2_hashmap_size}")
        if self.per_level_scale is None:
            # The only place per_level_scale is derived: level L-1 then has finest_resolution vertices per axis.
            steps = max(self.n_levels - 1, 1)
            self.per_level_scale = math.exp((math.log(self.finest_resolution) - math.log(self.base_resolution)) / steps)
        if self.per_level_scale < 1.0:
            raise ValueError(f"per_level_scale must be >= 1 (finest_resolution >= base_resolution), got {self.per_level_scale}")

    @property
    def table_size(self) -> int:
        """Rows T of each level's table."""
        return 2**self.log2_hashmap_size

    @property
    def output_dim(self) -> int:
        """Width L * F of the encoding."""
        return self.n_levels * self.n_features_per_level

    def level_scales(self) -> Tensor:
        """Per-level scale_l = base * b**l - 1, evaluated in float64 and rounded once to float32.

        tcnn evaluates exp2f(l * log2 b) on the device, which can be an ulp or two away; a fused kernel
        takes these values as input instead of recomputing them, so that it agrees with this reference.

        Returns:
            [L] float32.
        """
        return torch.tensor([self.base_resolution * self.per_level_scale**level - 1.0 for level in range(self.n_levels)],
                            dtype=torch.float32)

    def level_resolutions(self) -> list[int]:
        """Grid vertices per axis of each level, res_l = ceil(scale_l) + 1."""
        return [math.ceil(s) + 1 for s in self.level_scales().tolist()]

    def level_hashed(self) -> list[bool]:
        """Whether each level hashes (res_l**3 > T) rather than indexing densely."""
        return [r**3 > self.table_size for r in self.level_resolutions()]

    def level_sizes(self) -> list[int]:
        """Table rows P_l each level uses, min(next_multiple(res_l**3, 8), T)."""
        return [min(-(-r**3 // 8) * 8, self.table_size) for r in self.level_resolutions()]

    def to_tcnn(self) -> dict:
        """The same encoding as a tiny-cuda-nn encoding config (config_hash.json form)."""
        return {
            "otype": "HashGrid",
            "n_levels": self.n_levels,
            "n_features_per_level": self.n_features_per_level,
            "log2_hashmap_size": self.log2_hashmap_size,
            "base_resolution": self.base_resolution,
            "per_level_scale": self.per_level_scale,
            "interpolation": "Linear",
        }


def _combine_corners(per_axis: Tensor, op) -> Tensor:
    """Combines per-axis choices into the 8 corners, corner c's bit d choosing along axis d (tcnn's order).

    Args:
        per_axis: [3, 2, N, L'] a value per axis for the lower (0) and upper (1) vertex.
        op: binary elementwise op that combines the three axes (mul, xor).

    Returns:
        [8, N, L'], entry 4 c_2 + 2 c_1 + c_0 = op(op(per_axis[2, c_2], per_axis[1, c_1]), per_axis[0, c_0]).
    """
    corners = op(op(per_axis[2][:, None, None], per_axis[1][None, :, None]), per_axis[0][None, None, :])
    return corners.reshape(8, *per_axis.shape[2:])


def hash_grid_corners(x: Tensor, cfg: HashGridConfig) -> tuple[Tensor, Tensor]:
    """Table rows and trilinear weights of the 8 grid vertices around each point, at every level at once.

    Corner-major, so that the per-corner products and sums run over contiguous [N, L] planes.

    Args:
        x: [N, 3] points, clamped to [0, 1]^3.
        cfg: the grid.

    Returns:
        rows: [8, N, L] int64, the row of tables[l] that corner c reads (index mod P_l).
        weights: [8, N, L] in x's dtype, differentiable with respect to x; they sum to 1 over the corners.
    """
    dev = x.device
    res = torch.tensor(cfg.level_resolutions(), device=dev)
    sizes = torch.tensor(cfg.level_sizes(), device=dev)
    n_dense = cfg.level_hashed().count(False)  # resolutions grow with the level, so dense levels come first

    pos = x.clamp(0.0, 1.0).T[:, :, None] * cfg.level_scales().to(dev, x.dtype) + 0.5  # [3, N, L]
    lower = pos.detach().floor()
    frac = pos - lower  # the gradient to x flows through pos; floor is locally constant
    weights = _combine_corners(torch.stack([1.0 - frac, frac], dim=1), torch.mul)
    vertex = lower.long()  # [3, N, L]

    strides = torch.stack([torch.ones_like(res), res, res * res])[:, :n_dense]  # [3, L_dense]
    bits = torch.tensor([[(c >> d) & 1 for d in range(3)] for c in range(8)], device=dev)  # [8, 3]
    offsets = (bits[:, :, None] * strides[None]).sum(1)  # [8, L_dense] (no integer matmul on CUDA)
    dense = (vertex[..., :n_dense] * strides[:, None]).sum(0) + offsets[:, None]  # [8, N, L_dense]

    lower_h = vertex[..., n_dense:]
    primes = torch.tensor(HASH_PRIMES, device=dev)[:, None, None, None]
    spatial = _combine_corners((torch.stack([lower_h, lower_h + 1], dim=1) * primes) & _UINT32, torch.bitwise_xor)
    return torch.cat([dense, spatial], dim=-1) % sizes, weights


BACKENDS = ("auto", "torch", "cuda")


def hash_grid_encode(x: Tensor, tables: Tensor, cfg: HashGridConfig, backend: str = "torch",
                     half: bool = False) -> Tensor:
    """Encodes points with the multiresolution hash grid (the module docstring gives the math).

    Args:
        x: [..., 3] points in [0, 1]^3 (others are clamped onto the cube).
        tables: [L, T, F] per-level feature tables.
        cfg: the grid; must match tables' shape.
        backend: torch (this reference; any device and dtype), cuda (the fused kernel of
            nerf/hashgrid_cuda.py; CUDA float32), or auto (the
            fused kernel for CUDA tensors when it builds, else the reference, warning once).
        half: the fused kernel gathers from a float16 copy of the tables (float32 sums and gradients).

    Returns:
        [..., L * F] features, level-major; differentiable with respect to tables and x.
    """
    levels, size, feats = cfg.n_levels, cfg.table_size, cfg.n_features_per_level
    if x.shape[-1] != 3 or not x.is_floating_point():
        raise ValueError(f"hash_grid_encode wants float points of shape [..., 3], got {tuple(x.shape)} {x.dtype}")
    if tuple(tables.shape) != (levels, size, feats):
        raise ValueError(f"tables have shape {tuple(tables.shape)} but the config asks for {(levels, size, feats)}")
    if backend not in BACKENDS:
        raise ValueError(f"hash grid backend must be one of {BACKENDS}, not {backend!r}")
    lead = x.shape[:-1]
    if backend == "auto":
        backend = "torch"
        if x.is_cuda and x.dtype == torch.float32 and tables.dtype == torch.float32:
            from nerf import hashgrid_cuda

            ok, why = hashgrid_cuda.available()
            if ok:
                backend = "cuda"
            else:
                hashgrid_cuda.warn_fallback(why)
    if backend == "cuda":
        from nerf import hashgrid_cuda

        if not x.is_cuda:
            raise ValueError("the cuda hash-grid backend needs CUDA tensors; use backend torch or auto")
        return hashgrid_cuda.fused_encode(x.reshape(-1, 3), tables, cfg, half).reshape(*lead, levels * feats)
    rows, weights = hash_grid_corners(x.reshape(-1, 3), cfg)
    flat_rows = rows + torch.arange(levels, device=x.device) * size  # level l starts at row l * T
    # index_select: its backward (index_add) is the fastest scatter on CPU
    corner_feats = tables.reshape(levels * size, feats).index_select(0, flat_rows.reshape(-1))
    corner_feats = corner_feats.reshape(*rows.shape, feats)  # [8, N, L, F]
    dtype = torch.promote_types(weights.dtype, tables.dtype)
    out = torch.einsum("cnl,cnlf->nlf", weights.to(dtype), corner_feats.to(dtype))
    return out.reshape(*lead, levels * feats)


class HashEncoding(nn.Module):
    """Owns the hash tables; forward is `hash_grid_encode`.

    Args:
        cfg: the grid; the defaults are instant-ngp's (16 levels x 2 features, 2**19 rows, 16 to 2048).
        backend, half: as in ``hash_grid_encode`` (the parameters are the same whichever computes).
    """

    def __init__(self, cfg: HashGridConfig | None = None, backend: str = "auto", half: bool = False):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"hash grid backend must be one of {BACKENDS}, not {backend!r}")
        self.backend, self.half = backend, half
        self.cfg = cfg or HashGridConfig()
        shape = (self.cfg.n_levels, self.cfg.table_size, self.cfg.n_features_per_level)
        # instant-ngp's init: small enough that the first MLP sees near-zero features everywhere.
        self.tables = nn.Parameter(torch.empty(shape).uniform_(-1e-4, 1e-4))

    @property
    def output_dim(self) -> int:
        """Width L * F of the encoding."""
        return self.cfg.output_dim

    def forward(self, x: Tensor) -> Tensor:
        """Encodes points.

        Args:
            x: [..., 3] points in [0, 1]^3.

        Returns:
            [..., L * F] features (float32 also under autocast: the trilinear weights need the bits).
        """
        with torch.autocast(x.device.type, enabled=False):
            return hash_grid_encode(x.float(), self.tables, self.cfg, self.backend, self.half)
