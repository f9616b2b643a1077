"""Tracking the torso's image motion: a 2D affine per frame that maps the frame's torso onto a reference frame's.

A volume or layer torso field keyed by the head pose cannot align the torso across frames to a pixel: the
head pose says little about a real torso's shifts, and tracking noise on the head's angles moves points a
head's length below it by pixels. On the synthetic conversation, whose torso moves rigidly, a torso blurred by
a misalignment of a few pixels is what held it at 21-23 dB, while one 2D field fitted to every training frame
under the exact motion reaches 30.6 / 33.7 dB (training / held-out frames; docs/PERFORMANCE.md, "Tracking the
torso"). So the torso gets its own tracking, as the head does: enhanced-correlation (ECC) image alignment
(Evangelidis & Psarakis 2008, OpenCV's ``findTransformECC``) of each frame's torso to the reference frame's torso
pixels, an affine motion, started from the neighbouring frame's result. The torso field then reads its points
through that motion (``nerf.model``).

Coordinates: a motion is [6] = the row-major 2 x 3 affine from the frame's pixel coordinates to the
reference's, both in crop fractions u01 = (u + 0.5) / S, v01 = (v + 0.5) / S (u, v pixel indices).
"""
from __future__ import annotations

import cv2
import numpy as np

IDENTITY = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], np.float32)
MIN_CORRELATION = 0.8
"""ECC's correlation coefficient below which a frame's motion is not trusted (the model predicts it instead)."""
MIN_TORSO_SHARE = 0.05
"""A torso whose trackable interior covers less of the crop than this is not tracked at all: on a thin band of plain
shirt under the chin (a dev clip's person, 4% of the crop) ECC's affine is ill-determined, and extrapolated from the
band over the crop it moved that person's hair, which the torso field draws, by pixels (docs/PERFORMANCE.md)."""
MAX_STRETCH = 1.3
"""A motion that scales the torso by more than this (or less than its inverse) along any axis is not trusted."""
MAX_SHIFT = 0.2
"""Nor one that moves the torso's centroid by more than this share of the crop."""
WORK_SIZE = 256
"""Frames are aligned at most at this size (larger crops are downscaled: a pixel here is then 2 of 512)."""
TEMPLATE_MARGIN = 16
"""ECC's template is the reference frame's torso box with this many working pixels around it (each iteration costs
in proportion to the template's area). On a real interview's two persons, 0.53x the CPU of the whole frame; the same
frames tracked, the same motions but for 13 of the 644 tracked, by at most 0.2 px (8 px of margin: up to 3 px)."""
RETRY_EVERY = 4
ECC_ITERATIONS = 15
"""ECC's iterations at most. Started from the neighbouring frame's motion it has mostly converged by then: on a real
interview's two persons, 15 against 30 changed the median motion by 0.00 px and the 95th percentile by 0.24 px (at 256
px) for 0.68x the time; frames that do not align (hands in front of the torso) spend every iteration."""


def _to_fractions(W: np.ndarray, size: int) -> np.ndarray:
    """[2, 3] affine on pixel indices -> [6] affine on crop fractions."""
    D = np.array([[size, 0.0, -0.5], [0.0, size, -0.5], [0.0, 0.0, 1.0]])  # fractions -> indices
    M = np.linalg.inv(D) @ np.vstack([W, [0.0, 0.0, 1.0]]) @ D
    return M[:2].reshape(6).astype(np.float32)


def _shift(W: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """The [2, 3] affine on template pixels -> frame pixels for a template cut out at ``offset`` (x, y) of the full
    one (a negative offset goes back)."""
    W = W.copy()
    W[:, 2] += W[:, :2] @ offset
    return W


def trackable_mask(label_map: np.ndarray, torso: int = 2, head: int = 1) -> np.ndarray:
    """The torso pixels ECC aligns, at the working size (``WORK_SIZE`` at most): the torso's interior, away from the
    head (the neck and collar move with the jaw and the head's turns). ``track_torso`` tracks nothing when this covers
    less than ``MIN_TORSO_SHARE`` of the crop (or 64 pixels)."""
    S = label_map.shape[0]
    n = min(S, WORK_SIZE)
    lab = cv2.resize(label_map, (n, n), interpolation=cv2.INTER_NEAREST) if n != S else label_map
    k = max(3, n // 32) | 1
    near_head = cv2.dilate((lab == head).astype(np.uint8), np.ones((2 * k + 1, 2 * k + 1), np.uint8)) > 0
    return (cv2.erode((lab == torso).astype(np.uint8), np.ones((k, k), np.uint8)) > 0) & ~near_head


def track_torso(images: np.ndarray, labels: np.ndarray, reference: int, torso: int = 2, head: int = 1,
                min_correlation: float = MIN_CORRELATION,
                side: str = "both") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each frame's torso motion onto the reference frame's torso.

    Args:
        images: [T, S, S, 3] uint8 RGB crops, or [T, S, S] uint8 grey ones; labels: [T, S, S] uint8 label maps
            (``torso`` and ``head`` values). Crops above ``WORK_SIZE`` are aligned at that size; the motions are in
            crop fractions, so they hold at any size (track at 256 px or more: at 128 px a real torso's texture is
            too fine and the tracks jitter, 4x the frame-to-frame motion of the same clip tracked at 256 px).
        reference: the frame whose torso is the canonical one (a training frame near the mean pose).
        min_correlation: frames whose aligned torso correlates less than this with the reference's are not valid,
            nor those whose motion stretches the torso beyond ``MAX_STRETCH`` or moves it beyond ``MAX_SHIFT``.
        side: "both", or only the frames from the reference on ("after"), or the reference and the frames before it
            ("before"). The sides are tracked independently (each outward from the reference), so two processes can
            track one each: the "after" result from the reference on and the "before" one below it are the "both"
            result, bit for bit.

    Returns:
        motion [T, 6] float32 (frame -> reference, crop fractions; identity where not valid), valid [T] bool,
        correlation [T] float32 (ECC's coefficient; 0 where the alignment failed).
    """
    T, S = images.shape[:2]
    n = min(S, WORK_SIZE)
    scale = n / S

    def gray(i: int) -> np.ndarray:
        g = (images[i] if images.ndim == 3 else cv2.cvtColor(images[i], cv2.COLOR_RGB2GRAY)).astype(np.float32) / 255.0
        return cv2.resize(g, (n, n), interpolation=cv2.INTER_AREA) if n != S else g

    mask = trackable_mask(labels[reference], torso, head)
    motion = np.tile(IDENTITY, (T, 1))
    valid = np.zeros(T, bool)
    corr = np.zeros(T, np.float32)
    if mask.sum() < max(64, MIN_TORSO_SHARE * n * n):  # too little torso to align (a head-only crop, a thin band)
        return motion, valid, corr
    centroid = np.array([*np.argwhere(mask).mean(0)[::-1], 1.0])  # (x, y, 1) in working pixels

    def plausible(W: np.ndarray) -> bool:
        """ECC can also converge to a collapsed warp that maps the torso onto a flat patch (correlation stays high)."""
        sv = np.linalg.svd(W[:, :2].astype(np.float64), compute_uv=False)
        shift = np.linalg.norm(W @ centroid - centroid[:2])
        return bool(sv.min() >= 1 / MAX_STRETCH and sv.max() <= MAX_STRETCH and shift <= MAX_SHIFT * n)

    # ECC's iterations work over the template: only the reference's torso, with a margin for the motion
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    y0, y1 = max(0, rows[0] - TEMPLATE_MARGIN), min(n, rows[-1] + 1 + TEMPLATE_MARGIN)
    x0, x1 = max(0, cols[0] - TEMPLATE_MARGIN), min(n, cols[-1] + 1 + TEMPLATE_MARGIN)
    offset = np.array([x0, y0], np.float32)
    template, ecc_mask = np.ascontiguousarray(gray(reference)[y0:y1, x0:x1]), mask.astype(np.uint8) * 255
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, ECC_ITERATIONS, 1e-4)
    to_work = np.diag([scale, scale, 1.0])
    # outward from the reference, each frame started from its neighbour's alignment (motion is smooth)
    if side not in ("both", "after", "before"):
        raise ValueError(f"side must be both, after or before, not {side!r}")
    # The reference frame itself comes first on either side: the frame before it starts from its alignment.
    order = [*(range(reference, T) if side != "before" else (reference,)),
             *(range(reference - 1, -1, -1) if side != "after" else ())]
    rest = np.eye(2, 3, dtype=np.float32)
    last = {reference: rest}
    lost = 0  # frames in a row (this direction) that did not align
    for i in order:
        if i == reference - 1:
            lost = 0
        start = last.get(i - 1 if i > reference else i + 1, rest)
        W, frame = None, gray(i)
        # From the neighbour's alignment, then from rest; while the torso stays lost (hands in front of it, a turn),
        # from rest only every RETRY_EVERY-th frame: each failed alignment costs ECC's every iteration.
        inits = [start] if np.allclose(start, rest) else [start, rest]
        if lost and lost % RETRY_EVERY and len(inits) == 2:
            inits = inits[:1]
        for init in inits:
            try:
                cc, found = cv2.findTransformECC(template, frame, _shift(init, offset), cv2.MOTION_AFFINE, criteria,
                                                 ecc_mask, 5)
            except cv2.error:  # ECC did not converge
                continue
            found = _shift(found, -offset)
            if cc >= min_correlation and plausible(found):
                W, corr[i] = found, cc
                break
            corr[i] = max(corr[i], cc)
        last[i] = W if W is not None else start
        lost = 0 if W is not None else lost + 1
        if W is None:
            continue
        # W maps the reference's (working) pixels to the frame's; the field needs the frame's to the reference's
        A = np.linalg.inv(to_work) @ np.vstack([W, [0.0, 0.0, 1.0]]) @ to_work
        motion[i] = _to_fractions(np.linalg.inv(A)[:2], S)
        valid[i] = True
    return motion, valid, corr


def reference_frame(euler: np.ndarray, t: np.ndarray, frames: np.ndarray) -> int:
    """The frame of ``frames`` whose head pose (Euler angles [T, 3], translations [T, 3]) is nearest the mean one,
    each axis scaled by its spread."""
    pose = np.concatenate([euler, t], 1)[frames].astype(np.float64)
    ok = np.isfinite(pose).all(1)
    if not ok.any():
        return int(frames[0])
    z = (pose - pose[ok].mean(0)) / np.maximum(pose[ok].std(0), 1e-6)
    d = np.where(ok, (z ** 2).sum(1), np.inf)
    return int(frames[int(np.argmin(d))])
