"""Rays of a person's crop camera, moved into head space, and the sampling bounds of each field.

Convention (../shared/DESIGN.md): pinhole camera fixed to the crop, focal ``f``,
principal point at the crop centre, OpenCV axes. A ray is ``o + t d`` with
``o = 0`` and ``d = ((u + 0.5 - c) / f, (v + 0.5 - c) / f, 1)``, so ``t`` is the
camera depth. The head field lives in head-canonical space: a ray moves there
by the inverse pose, ``o_h = R^T (o - t_pose)``, ``d_h = R^T d``; a rigid map
keeps ``t``, so head and torso samples of one pixel share one ``t`` axis.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class PersonBounds:
    """Where each field of one person lives (from its dataset; head units are about metres)."""

    head_center: tuple[float, float, float]  # in head-canonical space
    head_radius: float
    torso_min: tuple[float, float, float]  # camera-space box of the torso field
    torso_max: tuple[float, float, float]

    @staticmethod
    def from_track(canonical, t_pose, focal: float, size: int) -> PersonBounds:
        """Bounds from a person's canonical face [478, 3] and translations [T, 3] (numpy, NaN rows allowed).

        The head sphere is centred a little above and behind the face's landmark centroid
        (hair and the back of the skull) with a radius of the face's largest extent; the
        torso box spans the crop's frustum at depths of the head's median depth +- 0.35 (a box tightened to
        the torso's labelled pixels gave the torso grid a finer resolution and lost 2.3 dB on one person of the
        tests' synthetic pair).
        """
        import numpy as np

        span = float(np.ptp(canonical, axis=0).max())
        tz = float(np.nanmedian(t_pose[:, 2]))
        far = tz + 0.35
        half = (size / 2) / focal * far
        center = (0.0, -0.1 * span, 0.35 * span)
        return PersonBounds(center, span, (-half, -half, tz - 0.35), (half, half, far))


def pixel_rays(u: torch.Tensor, v: torch.Tensor, focal: torch.Tensor, size: int) -> torch.Tensor:
    """Camera-space directions [R, 3] (z = 1) of pixel columns u [R] and rows v [R] (integers or floats)."""
    c = size / 2.0
    return torch.stack([(u + 0.5 - c) / focal, (v + 0.5 - c) / focal, torch.ones_like(u, dtype=focal.dtype)], -1)


def to_head_space(dirs: torch.Tensor, R: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move camera rays (origin 0, directions [R, 3]) into head space by the inverse of x_cam = R x + t.

    Args:
        dirs: [R, 3]; R: [R, 3, 3]; t: [R, 3] (each ray's frame pose).

    Returns:
        origins [R, 3] and directions [R, 3] in head space (same t parameter).
    """
    Rt = R.transpose(1, 2)
    origins = -(Rt @ t[..., None])[..., 0]
    return origins, (Rt @ dirs[..., None])[..., 0]


def to_camera_space(points_head: torch.Tensor, R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_cam = R x_head + t for points [..., 3] with poses R [..., 3, 3], t [..., 3]."""
    return (R @ points_head[..., None])[..., 0] + t


def sphere_interval(origins: torch.Tensor, dirs: torch.Tensor, center: torch.Tensor, radius: float):
    """Entry and exit t [R] of rays through a sphere, and whether they hit it [R] bool."""
    oc = origins - center
    a = (dirs * dirs).sum(-1)
    b = 2 * (oc * dirs).sum(-1)
    cc = (oc * oc).sum(-1) - radius**2
    disc = b * b - 4 * a * cc
    hit = disc > 0
    root = torch.sqrt(disc.clamp_min(0))
    near = (-b - root) / (2 * a)
    far = (-b + root) / (2 * a)
    return near.clamp_min(1e-3), far.clamp_min(1e-3), hit & (far > 1e-3)


def box_interval(origins: torch.Tensor, dirs: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """Entry and exit t [R] of rays through an axis-aligned box, and whether they hit it [R] bool."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0, t1 = (lo - origins) * inv, (hi - origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp_min(1e-3)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far, far > near


def normalize_to_unit(points: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Map points [..., 3] of the box [lo, hi] into the hash grid's input domain [0, 1]^3."""
    return (points - lo) / (hi - lo)
