"""What drives each avatar frame by frame: head pose, expression, audio code, speaking.

A ``Drive`` holds one person's signals over the T output frames. ``driven_person`` turns a
trained person (``nerf.data.PersonFrames``) into one whose per-frame arrays are the drive's,
so ``nerf.render.render_frame`` renders the new frames unchanged (the person keeps its latent
codes, background plate, focal and bounds).

Sources of pose and expression:
- posegen (``from_posegen``): generated from the audio and who speaks;
- tracked replay (``from_track``): the person's own tracked frames (reconstruction);
- retargeted replay (``retarget``): another person's or video's tracked motion mapped onto the
  target: each pose channel keeps its deviation from the source's mean, in units of the
  source's spread, rescaled to the target's spread around the target's mean.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from common.geometry import rotation_from_euler_pyr
from nerf.data import PersonFrames
from posegen.data import POSE_STD_FLOOR


@dataclasses.dataclass
class Drive:
    """One person's driving signals over T frames.

    Attributes:
        euler: [T, 3] (pitch, yaw, roll) radians.
        t: [T, 3] head translation (camera space, head units).
        expr: [T, K] expression coefficients (fewer than the model's K are zero-padded).
        speaking: [T] bool.
    """

    euler: np.ndarray
    t: np.ndarray
    expr: np.ndarray
    speaking: np.ndarray

    @property
    def n_frames(self) -> int:
        return len(self.euler)

    @property
    def pose(self) -> np.ndarray:
        return np.concatenate([self.euler, self.t], 1)


def pose_stats(pose: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and spread (floored standard deviation) [6] of a pose sequence [T, 6] over its valid frames."""
    sel = np.isfinite(pose).all(1) if valid is None else valid & np.isfinite(pose).all(1)
    if not sel.any():
        raise ValueError("no tracked frame to take the pose statistics from")
    return pose[sel].mean(0), np.maximum(pose[sel].std(0), POSE_STD_FLOOR)


def retarget(src_pose: np.ndarray, src_stats: tuple[np.ndarray, np.ndarray],
             dst_stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Map a pose sequence [T, 6] onto another person: (x - mean_src) / std_src * std_dst + mean_dst.

    Untracked source frames (NaN) take the target's mean pose.
    """
    (ms, ss), (md, sd) = src_stats, dst_stats
    out = (src_pose - ms) / ss * sd + md
    return np.where(np.isfinite(out), out, md).astype(np.float32)


def from_track(p: PersonFrames, frames: np.ndarray) -> Drive:
    """The person's own tracked signals at the given frames (reconstruction)."""
    f = torch.as_tensor(frames, dtype=torch.long)
    return Drive(euler=p.euler[f].numpy(), t=p.t[f].numpy(), expr=p.expr[f].numpy(), speaking=p.speaking[f].numpy())


def driven_person(p: PersonFrames, drive: Drive, audio_codes: torch.Tensor) -> PersonFrames:
    """A copy of a trained person whose frames are the drive's T frames (no images: nothing to compare with).

    Args:
        audio_codes: [T, 512] the new audio's per-frame codes (``nerf.audio.frame_codes``).
    """
    T = drive.n_frames
    if len(audio_codes) != T:
        raise ValueError(f"{len(audio_codes)} audio codes for {T} frames")
    K = p.expr.shape[1]
    expr = np.zeros((T, K), np.float32)
    k = min(K, drive.expr.shape[1])
    expr[:, :k] = np.nan_to_num(drive.expr[:, :k])
    euler = np.nan_to_num(drive.euler).astype(np.float32)
    R = rotation_from_euler_pyr(euler.astype(np.float64)).astype(np.float32)
    idx = torch.arange(T)
    return dataclasses.replace(
        p, images=p.images[:0], labels=p.labels[:0], R=torch.from_numpy(R), t=torch.from_numpy(drive.t.astype(np.float32)),
        euler=torch.from_numpy(euler), expr=torch.from_numpy(expr), audio=audio_codes.float(),
        speaking=torch.from_numpy(drive.speaking.astype(bool)), train=idx[:0], val=idx,
        torso_motion=None)  # (a driven torso's motion is predicted from its head pose)
