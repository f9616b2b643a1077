"""The project's one Euler-angle convention (../shared/DESIGN.md): R = Rx(pitch) @ Ry(yaw) @ Rz(roll)."""

from __future__ import annotations

import numpy as np


def rotation_from_euler_pyr(euler: np.ndarray) -> np.ndarray:
    """R = Rx(pitch) @ Ry(yaw) @ Rz(roll), the one Euler convention of the project.

    Args:
        euler: [..., 3] (pitch, yaw, roll) in radians; nodding is pitch.

    Returns:
        [..., 3, 3] rotation matrices.
    """
    p, y, r = np.moveaxis(np.asarray(euler, dtype=np.float64), -1, 0)
    cp, sp, cy, sy, cr, sr = np.cos(p), np.sin(p), np.cos(y), np.sin(y), np.cos(r), np.sin(r)
    row0 = np.stack([cy * cr, -cy * sr, sy], -1)
    row1 = np.stack([cp * sr + sp * sy * cr, cp * cr - sp * sy * sr, -sp * cy], -1)
    row2 = np.stack([sp * sr - cp * sy * cr, sp * cr + cp * sy * sr, cp * cy], -1)
    return np.stack([row0, row1, row2], -2)


def euler_pyr(R: np.ndarray) -> np.ndarray:
    """Inverse of ``rotation_from_euler_pyr``: [..., 3, 3] -> [..., 3] (pitch, yaw, roll) radians."""
    R = np.asarray(R, dtype=np.float64)
    yaw = np.arcsin(np.clip(R[..., 0, 2], -1.0, 1.0))
    pitch = np.arctan2(-R[..., 1, 2], R[..., 2, 2])
    roll = np.arctan2(-R[..., 0, 1], R[..., 0, 0])
    return np.stack([pitch, yaw, roll], -1)
