"""Occupancy grids: which cells of each person's head and torso domains can hold density (for rendering, and for
training with ``--occupancy_every``).

A trained avatar's head sphere and torso box are mostly empty space; a field query there costs a hash
grid and two MLPs and returns (nearly) nothing. ``build`` evaluates each person's fields at the centres
of a G^3 grid over the field's [0, 1]^3 domain under a spread of driving conditions and marks a cell
occupied where any of them gives density above a threshold:

- head: the person's expression codes AND audio drives of frames spread over the clip and over its
  speech, plus the frames with the most extreme expressions, so a wide-open mouth, raised brows or a
  tongue are not culled;
- torso: the head poses (the deformation moves the torso with the head) of the same frames plus the
  most extreme poses (a torso layer, ``nerf.fields.TorsoLayer``, has no volume: its grid is all occupied).

The grid is then dilated by ``dilate`` cells, a margin for drives and poses between and a little beyond
the spread. The model's sampler keeps its sample positions and only skips the field queries of samples
in empty cells (``AvatarModel._render``); the result differs from the full render only where the culled
density was below the threshold (``tests/test_nerf_model.py`` bounds the difference).

Built for rendering, from the persons a model was trained on (5.6 s on the 2-core CPU box at G = 32 for the tiny
preset; 0.7 s on an H100 at G = 64 for gpu_full). Training with ``--occupancy_every N`` rebuilds one every N
iterations and samples through it (``nerf.trainer``); that grid is stored in the training checkpoint for resumes,
and rendering builds its own.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from nerf.audio import code_windows


@dataclasses.dataclass
class OccupancyGrid:
    """Per person, [P, G, G, G] bool grids of the head and torso domains (axis order x, y, z)."""

    head: torch.Tensor
    torso: torch.Tensor

    def fraction(self) -> dict[str, float]:
        """Share of occupied cells of each field (over all persons)."""
        return {"head": self.head.float().mean().item(), "torso": self.torso.float().mean().item()}


def lookup(grid: torch.Tensor, row: torch.Tensor, x01: torch.Tensor) -> torch.Tensor:
    """Whether the cells of points x01 [R, S, 3] (in [0, 1]^3) of the persons ``row`` [R] are occupied: [R, S]."""
    G = grid.shape[1]
    cell = (x01.clamp(0.0, 1.0) * G).long().clamp_max(G - 1)
    return grid[row[:, None], cell[..., 0], cell[..., 1], cell[..., 2]]


def _spread_frames(p, n: int) -> torch.Tensor:
    """Up to ~2.5n frames: n evenly over the clip, n/2 evenly over its speech, the n/2 most extreme
    expressions and the n/2 most extreme poses."""
    T = len(p.expr)
    even = torch.linspace(0, T - 1, min(n, T)).round().long()
    talk = p.speaking.cpu().nonzero()[:, 0]
    if len(talk):
        even = torch.cat([even, talk[torch.linspace(0, len(talk) - 1, min(n // 2, len(talk))).round().long()]])
    expr = p.expr.float().cpu()
    extreme_expr = (expr - expr.mean(0)).norm(dim=1).topk(min(n // 2, T)).indices
    pose = torch.cat([p.euler, p.t], 1).float().cpu()
    extreme_pose = ((pose - pose.mean(0)) / pose.std(0).clamp_min(1e-6)).norm(dim=1).topk(min(n // 2, T)).indices
    return torch.unique(torch.cat([even, extreme_expr, extreme_pose]))


@torch.no_grad()
def build(model, persons: list, resolution: int | None = None, n_frames: int = 8, threshold: float = 1e-3,
          dilate: int = 1, chunk: int = 1 << 16) -> OccupancyGrid:
    """The occupancy grids of ``persons`` (in row order) for ``model``.

    Args:
        resolution: G, cells per axis (default 64 on a GPU, 32 on the CPU).
        n_frames: frames evenly spread over each clip whose driving codes and poses are used, to which
            about as many extreme ones are added.
        threshold: a cell is occupied where the opacity of crossing it, 1 - exp(-sigma / G), exceeds this
            for some drive (sigma is in the units of the field's own domain, as the renderer uses it).
        dilate: occupied cells grow by this many cells in every direction.
    """
    dev = model.head_center.device
    G = resolution or (64 if dev.type == "cuda" else 32)
    was_training = model.training
    model.eval()
    centres = (torch.stack(torch.meshgrid(*[torch.arange(G, device=dev)] * 3, indexing="ij"), -1).reshape(-1, 3)
               .float() + 0.5) / G
    n = len(centres)
    any_dir = torch.tensor([[0.0, 0.0, 1.0]], device=dev)  # one 'ray': every cell shares it
    P = len(model.z_shape.weight)
    head = torch.zeros(P, G, G, G, dtype=torch.bool, device=dev)
    torso = torch.zeros_like(head)
    for p in persons:
        net = 0 if model.mode == "shared" else p.row
        frames = _spread_frames(p, n_frames)
        rowt = torch.tensor([p.row], device=dev)
        z_shape, z_app = model.z_shape(rowt), model.z_app(rowt)
        audio = model.audio[net](code_windows(p.audio, frames.to(p.audio.device), model.cfg.audio_window).to(dev))
        expr = model.expr[net](p.expr[frames.to(p.expr.device)].to(dev))
        drives = torch.cat([audio, expr])
        at = frames.to(p.euler.device)
        tm = model.torso_motion
        pose = tm.pose_input(torch.cat([p.euler, p.t], 1)[at].to(dev), rowt.expand(len(at)))
        tracked = None if p.torso_motion is None else p.torso_motion[at].to(dev)
        motion = tm(rowt.expand(len(at)), p.euler[at].to(dev), p.t[at].to(dev), tracked)  # (each frame's motion)
        warp = tm.pose_gate[rowt] if tm.gated else None  # (the warp's share, as the renderer applies it)
        focal = torch.full((1,), float(p.focal), device=dev)
        h_max = torch.zeros(n, device=dev)
        t_max = torch.zeros(n, device=dev)
        for a in range(0, n, chunk):
            x = centres[a:a + chunk]
            m = len(x)
            for d in drives:
                sigma, _ = model.head[net](x, any_dir, z_shape, z_app, d[None])
                h_max[a:a + m] = torch.maximum(h_max[a:a + m], sigma)
            one = torch.zeros(m, dtype=torch.long, device=dev)
            for et, m_f in zip(pose, motion):
                xf = tm.track_points(x, model.torso_min[rowt], model.torso_max[rowt], m_f[None], focal, one)
                sigma, _, _ = model.torso[net](xf, any_dir, et[None], z_shape, z_app, None, warp)
                t_max[a:a + m] = torch.maximum(t_max[a:a + m], sigma)
        for grid, dens in ((head, h_max), (torso, t_max)):
            occupied = (-torch.expm1(-dens / G) > threshold).reshape(1, 1, G, G, G).float()
            if dilate > 0:
                occupied = F.max_pool3d(occupied, 2 * dilate + 1, stride=1, padding=dilate)
            grid[p.row] = occupied[0, 0] > 0
    model.train(was_training)
    return OccupancyGrid(head=head, torso=torso)
