"""Head / torso / background labels of a person crop, and clean background plates.

Labels: 0 background, 1 head, 2 torso. The person is mediapipe's selfie
segmentation (model inside the wheel), kept to the columns nearer this
person's face than any other's. Head = the convex hull of the face-mesh
landmarks plus the person's pixels above the chin line that lie in a band of the face's width
around its centre line (hair hanging beside the face) or inside the outline of
a head-sized ellipsoid placed on the face and turned with it
(``head_ellipse``); the chin line passes through the chin perpendicular to the
face's own up direction, so it tilts with the head. A face seen in profile
thus keeps the back of its head and its hair, which the band alone gave to
the torso. Torso = the rest of the person (neck, shoulders, clothes).
"""

from __future__ import annotations

import cv2
import numpy as np

from common.landmarks import CHEEK_L, CHEEK_R, CHIN, FOREHEAD, LEFT_EYE_OUTER, NOSE_TIP, RIGHT_EYE_OUTER

BACKGROUND, HEAD, TORSO = 0, 1, 2
HEAD_HALF_WIDTH = 0.9
"""Long hair hangs beside the face: the person above the chin line within this many face widths (cheek to cheek) of
the face's centre line is head."""
HEAD_SEMI_AXES = (1.45, 1.65, 1.45)
"""The head ellipsoid's half width, half height and half depth in outer-eye-corner spans (an adult's span is about
9 cm, the head about 15 x 23 x 20 cm; hair adds to it: at 1.25 spans wide a debate speaker's bob still went to the torso
in every frame checked)."""
HEAD_CENTRE = (0.25, 0.85)
"""The ellipsoid's centre above the eye corners' midpoint and behind it, in the same spans."""
PLATE_ROWS = 8  # image rows that ``median_plate`` sorts at a time
SEG_SIZE = 256  # the selfie model's own input size; running it larger buys nothing


class PersonSegmenter:
    """mediapipe selfie segmentation: [S, S, 3] uint8 RGB -> [S, S] bool, where the person's probability is above one
    half (interpolated up from the model's 256 px, in 8 bits)."""

    def __init__(self):
        import mediapipe as mp

        self._seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        s = crop.shape[0]
        small = cv2.resize(crop, (SEG_SIZE, SEG_SIZE), interpolation=cv2.INTER_AREA)
        prob = cv2.convertScaleAbs(self._seg.process(small).segmentation_mask, alpha=255.0)
        return cv2.resize(prob, (s, s), interpolation=cv2.INTER_LINEAR) > 127

    def close(self) -> None:
        self._seg.close()


def parse_labels(person_prob: np.ndarray, landmarks: np.ndarray | None, own_columns: np.ndarray) -> np.ndarray:
    """Label one crop.

    Args:
        person_prob: [S, S] float person probability, or the bool mask of ``PersonSegmenter``.
        landmarks: [478, 2+] crop-pixel face-mesh landmarks, or None (then the
            person is all torso: such frames are invalid and never trained on).
        own_columns: [S] bool, the crop columns that belong to this person.

    Returns:
        [S, S] uint8 labels.
    """
    s = person_prob.shape[0]
    person = (person_prob if person_prob.dtype == bool else person_prob > 0.5) & own_columns[None, :]
    labels = np.multiply(person, TORSO, dtype=np.uint8)  # BACKGROUND is 0
    if landmarks is None:
        return labels
    pts = landmarks[:, :2].astype(np.float32)
    head = np.zeros((s, s), np.uint8)
    # Hair falls beside the face (a band of the face's width on either side of its centre line, up to any height) ...
    up = _face_up(pts)
    across = np.array([-up[1], up[0]])
    half = HEAD_HALF_WIDTH * np.linalg.norm(pts[CHEEK_L] - pts[CHEEK_R])
    mid = (pts[CHEEK_R] + pts[CHEEK_L]) / 2
    chin = mid + ((pts[CHIN] - mid) @ up) * up  # where the centre line crosses the chin line
    far = 4.0 * s  # beyond the crop on every side
    _fill(head, [chin - half * across, chin + half * across, chin + half * across + far * up,
                 chin - half * across + far * up], 1)
    # ... and the head reaches back, which a turned face shows: its ellipsoid's outline, above the chin line.
    centre, A = head_ellipse(landmarks)
    evals, evecs = np.linalg.eigh(A)
    semi = 1.0 / np.sqrt(np.maximum(evals, 1e-12))
    angle = float(np.degrees(np.arctan2(evecs[1, 0], evecs[0, 0])))
    cv2.ellipse(head, (_fixed(centre[0]), _fixed(centre[1])), (_fixed(semi[0]), _fixed(semi[1])), angle, 0, 360, 1,
                -1, cv2.LINE_8, _SHIFT)
    _fill_side(head, pts[CHIN], -up, 0)  # nothing below the chin line
    head &= person
    cv2.fillConvexPoly(head, cv2.convexHull(pts).astype(np.int32), 1)
    np.putmask(labels, head.view(bool), HEAD)  # head holds 0 and 1 only
    return labels


_SHIFT = 8  # fractional bits of the vertices cv2 draws with


def _fixed(v: float) -> int:
    return int(round(float(v) * (1 << _SHIFT)))


def _fill(mask: np.ndarray, corners, value: int) -> None:
    """Fill a convex polygon given by float pixel coordinates (pixel centres at integers), in place."""
    pts = np.round(np.asarray(corners, np.float64) * (1 << _SHIFT)).astype(np.int32)
    cv2.fillConvexPoly(mask, pts, value, cv2.LINE_8, _SHIFT)


def _fill_side(mask: np.ndarray, through: np.ndarray, towards: np.ndarray, value: int) -> None:
    """Fill the side of the line through ``through`` (perpendicular to the unit vector ``towards``) that ``towards``
    points to, in place."""
    far = 4.0 * mask.shape[0]  # beyond the crop on every side
    across = np.array([-towards[1], towards[0]])
    _fill(mask, [through - far * across, through + far * across, through + far * (across + towards),
                 through + far * (towards - across)], value)


def above_chin(landmarks: np.ndarray, s: int) -> np.ndarray:
    """[s, s] bool: the crop's pixels above the chin line (through the chin, perpendicular to the face's up)."""
    pts = landmarks[:, :2].astype(np.float32)
    mask = np.zeros((s, s), np.uint8)
    _fill_side(mask, pts[CHIN], _face_up(pts), 1)
    return mask > 0


def _face_up(pts: np.ndarray) -> np.ndarray:
    """[2] unit vector from the chin to the forehead in the image."""
    up = pts[FOREHEAD] - pts[CHIN]
    return up / max(np.linalg.norm(up), 1e-6)


def head_cover(labels: np.ndarray, landmarks: np.ndarray) -> float:
    """Share of the person's pixels above the chin line that are labelled head (NaN: none there).

    Above the chin there is the head, with its hair, and little else (a raised hand, a shoulder of a tilted head): a
    low share means hair or the back of the head went to the torso. prepare's QA reports it per person."""
    above = above_chin(landmarks, labels.shape[0])
    person = above & (labels != BACKGROUND)
    return float((labels[person] == HEAD).mean()) if person.any() else float("nan")


def head_ellipse(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image outline of the head: an ellipsoid fixed to the face mesh, projected along the camera axis.

    The face's axes come from the mesh's own 3D points (x along the eye corners, y up the face, z into the head,
    away from the nose), the ellipsoid (``HEAD_SEMI_AXES``, ``HEAD_CENTRE``) is set in them, and its silhouette
    under orthographic projection is the ellipse d^T A d <= 1 (A: the Schur complement of the depth axis).
    Landmarks without depth ([478, 2]) are taken as a frontal face.

    Returns:
        centre [2] and A [2, 2] in crop pixels.
    """
    p = np.asarray(landmarks, np.float64)
    if p.shape[1] == 2:
        p = np.column_stack([p, np.zeros(len(p))])
    right, left = p[RIGHT_EYE_OUTER], p[LEFT_EYE_OUTER]
    span = max(np.linalg.norm(left - right), 1e-6)
    x = (left - right) / span
    y = p[FOREHEAD] - p[CHIN]
    y -= (y @ x) * x
    y /= max(np.linalg.norm(y), 1e-6)
    z = np.cross(x, y)
    mid = (left + right) / 2
    if (p[NOSE_TIP] - mid) @ z > 0:  # z points into the head, away from the nose
        z = -z
    centre = mid + span * (HEAD_CENTRE[0] * y + HEAD_CENTRE[1] * z)
    axes = np.stack([x, y, z], 1)
    A3 = axes @ np.diag(1.0 / (span * np.asarray(HEAD_SEMI_AXES)) ** 2) @ axes.T
    A = A3[:2, :2] - np.outer(A3[:2, 2], A3[2, :2]) / A3[2, 2]
    return centre[:2], A


def median_plate(frames: np.ndarray, background: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Temporal median of the pixels never covered by a person; holes inpainted.

    Args:
        frames: [N, H, W, 3] uint8 sample frames.
        background: [N, H, W] bool, True where the frame shows background.
        margin: pixels by which persons are grown first (their soft edges are not background).

    Returns:
        plate [H, W, 3] uint8 and hole [H, W] bool (pixels a person always covered).
    """
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
    bg = np.stack([cv2.erode(b.astype(np.uint8), kernel) for b in background])  # [N, H, W] 1: background
    count = bg.sum(0, dtype=np.int32)
    k = np.maximum(count - 1, 0) // 2  # the lower median's rank among the pixel's background samples
    h, w = count.shape
    plate = np.empty((h, w, 3), np.uint8)
    # Masked median by sorting, a band of rows at a time (the band stays in cache): the samples go to the last axis,
    # where numpy sorts short rows fast (16-bit ones with SIMD), covered ones get 256 added, sort to the end and are
    # never picked.
    for r in range(0, h, PLATE_ROWS):
        band = frames[:, r:r + PLATE_ROWS].transpose(1, 2, 3, 0).astype(np.uint16)  # [rows, W, 3, N]
        band |= (1 - bg[:, r:r + PLATE_ROWS]).transpose(1, 2, 0)[:, :, None, :].astype(np.uint16) << 8
        band.sort(axis=-1)
        rank = np.broadcast_to(k[r:r + PLATE_ROWS, :, None, None], (*band.shape[:3], 1))
        plate[r:r + PLATE_ROWS] = np.take_along_axis(band, rank, -1)[..., 0]  # < 256 wherever count > 0
    hole = count == 0
    plate[hole] = 0
    if hole.any():
        plate = _inpaint(plate, hole)
    return plate, hole


def _inpaint(image: np.ndarray, hole: np.ndarray, work_side: int = 256) -> np.ndarray:
    """Fill the hole pixels (Telea) at a reduced resolution, then upsample into the hole only.

    A person who never moves leaves a hole of half the frame; Telea's cost grows with the
    hole's area, and the fill is smooth anyway, so full resolution buys nothing.
    """
    h, w = hole.shape
    scale = min(1.0, work_side / max(h, w))
    small_size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(image, small_size, interpolation=cv2.INTER_AREA)
    small_hole = cv2.resize(hole.astype(np.uint8), small_size, interpolation=cv2.INTER_NEAREST)
    small_hole = cv2.dilate(small_hole, np.ones((3, 3), np.uint8))  # no hole-coloured border pixel survives
    filled = cv2.inpaint(small, small_hole, 3, cv2.INPAINT_TELEA)
    up = cv2.resize(filled, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.where(hole[..., None], up, image)
