"""The torso's motion model: how each person's torso field is read, frame by frame.

The torso field lives in camera space. Its points are read through the frame's torso motion: prepare tracks the
torso's image motion onto a reference frame (``data_prep.torso_track``: a 2 x 3 affine on crop fractions per
frame, ``PersonFrames.torso_motion``), and each point's image position goes through that affine at its own depth
(``track_points``), so a ray of the frame maps to the ray of the reference frame's pixel. Where a frame has no
tracked motion (a failed track, or a driven conversation), the motion is predicted from the head pose: a
least-squares linear map from the standardized pose to the motion, fitted to the person's tracked training frames.

The torso field reads the head pose standardized by the person's training-frame mean and spread. A person whose
torso is tracked on at least ``MIN_TRACKED`` training frames has one canonical torso that the motion alone moves:
its field reads the mean pose and applies none of its learned warp (``pose_gate`` 0). A person with no track (too
little torso in the crop) keeps the pose and the warp (``pose_gate`` 1), its torso's only cue to its motion.

The statistics, the map and the gate are derived from the tracks when a model is built for training and kept in
its state dict: a checkpoint renders without the tracks.
"""

from __future__ import annotations

import torch
from torch import nn

from data_prep.torso_track import IDENTITY
from nerf.data import PersonFrames

MIN_TRACKED = 8
"""Tracked training frames a person needs for the pose -> motion map (7 numbers per output) and for its torso to
count as tracked."""


class TorsoMotion(nn.Module):
    """Per person: pose mean and spread [P, 6], the pose -> motion map [P, 7, 6], the pose gate [P]."""

    def __init__(self, persons: list[PersonFrames], image_size: int):
        super().__init__()
        self.image_size = image_size
        # (on the CPU, whichever device the persons' frames live on: the same statistics for every device)
        et = [torch.cat([p.euler.cpu()[p.train.cpu()], p.t.cpu()[p.train.cpu()]], -1).double() for p in persons]
        self.register_buffer("pose_mean", torch.stack([x.mean(0) if len(x) else torch.zeros(6, dtype=x.dtype)
                                                       for x in et]).float())
        self.register_buffer("pose_std", torch.stack([x.std(0, unbiased=False).clamp_min(1e-3) if len(x) > 1
                                                      else torch.ones(6, dtype=x.dtype) for x in et]).float())
        self.register_buffer("motion_W", torch.stack([self._regression(p, i) for i, p in enumerate(persons)]))
        self.register_buffer("pose_gate", torch.tensor([0.0 if tracked(p) else 1.0 for p in persons]))
        self.gated = bool((self.pose_gate < 1).any())
        """Whether some person's torso reads no pose (a Python flag: no device sync per batch)."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.gated = bool((self.pose_gate < 1).any())

    def _regression(self, p: PersonFrames, row: int) -> torch.Tensor:
        """[7, 6]: the linear map from [standardized head pose (6), 1] to person p's torso motion (identity if untracked)."""
        W = torch.zeros(7, 6, dtype=torch.float64)
        W[6] = torch.from_numpy(IDENTITY).double()
        if p.torso_motion is None:
            return W.float()
        train = p.train.cpu()
        y = p.torso_motion.cpu()[train].double()
        ok = torch.isfinite(y).all(1)
        if int(ok.sum()) < MIN_TRACKED:  # too few tracked frames for the map: the mean motion, or identity
            if ok.any():
                W[6] = y[ok].mean(0)
            return W.float()
        pose = torch.cat([p.euler.cpu()[train], p.t.cpu()[train]], -1).double()[ok]
        x = torch.cat([(pose - self.pose_mean[row].double()) / self.pose_std[row].double(),
                       torch.ones(len(pose), 1, dtype=torch.float64)], -1)
        ridge = 1e-3 * torch.eye(7, dtype=torch.float64)
        ridge[6, 6] = 0.0  # (the intercept is not shrunk)
        return torch.linalg.solve(x.T @ x + ridge * len(x), x.T @ y[ok]).float()

    def forward(self, row: torch.Tensor, euler: torch.Tensor, t: torch.Tensor,
                tracked_motion: torch.Tensor | None = None) -> torch.Tensor:
        """[R, 2, 3] each ray's torso motion (crop fractions of its frame -> of the reference frame) from its person
        row [R] and head pose (euler, t [R, 3]): the tracked one where ``tracked_motion`` [R, 6] has it (finite),
        else the one predicted from the head pose."""
        z = (torch.cat([euler, t], -1) - self.pose_mean[row]) / self.pose_std[row]
        pred = torch.einsum("ri,rio->ro", torch.cat([z, torch.ones_like(z[:, :1])], -1), self.motion_W[row])
        if tracked_motion is not None:
            pred = torch.where(torch.isfinite(tracked_motion).all(-1, keepdim=True), tracked_motion, pred)
        return pred.reshape(-1, 2, 3)

    def pose_input(self, et: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        """The torso field's pose input from head poses et [R, 6] (Euler angles, translation) of persons row [R]:
        held at the person's mean pose where ``pose_gate`` is 0, then standardized per person."""
        mean = self.pose_mean[row]
        et = mean + self.pose_gate[row, None] * (et - mean)
        return (et - mean) / self.pose_std[row]

    @staticmethod
    def apply(uv01: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """Crop fractions uv01 [R, 2] through the torso motions [R, 2, 3]: where each pixel lies in the reference frame."""
        return (motion[:, :, :2] @ uv01[:, :, None])[..., 0] + motion[:, :, 2]

    def directions(self, dirs: torch.Tensor, motion: torch.Tensor, focal: torch.Tensor) -> torch.Tensor:
        """[R, 3] camera directions (z = 1) of the pixels the torso motions [R, 2, 3] name for rays dirs [R, 3] (any
        z > 0) of focal [R]: ``track_points`` moves every point of a ray onto the ray of that pixel, at its own depth."""
        S = self.image_size
        uv = self.apply((dirs[:, :2] / dirs[:, 2:] * focal[:, None] + S / 2) / S, motion)
        return torch.cat([(uv * S - S / 2) / focal[:, None], torch.ones_like(dirs[:, 2:])], -1)

    def track_points(self, x01: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, motion: torch.Tensor,
                     focal: torch.Tensor, ray: torch.Tensor | None = None) -> torch.Tensor:
        """Torso-box coordinates x01 [N, 3] (boxes lo, hi [R, 3]) moved by the torso motion [R, 2, 3] of their rays:
        each point's image position (crop fractions) goes through the motion at its own depth, so a ray maps to
        the ray of the reference frame's pixel. focal [R]; ray [N] each point's ray (None: rows align)."""
        if ray is not None:
            lo, hi, motion, focal = lo[ray], hi[ray], motion[ray], focal[ray]
        p = lo + x01 * (hi - lo)
        return (p[:, 2:] * self.directions(p, motion, focal) - lo) / (hi - lo)


def tracked(p: PersonFrames) -> bool:
    """Whether person p's torso counts as tracked: at least MIN_TRACKED tracked training frames."""
    if p.torso_motion is None:
        return False
    return int(torch.isfinite(p.torso_motion.cpu()[p.train.cpu()]).all(1).sum()) >= MIN_TRACKED
