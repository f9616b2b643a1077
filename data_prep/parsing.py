"""Head / torso / background labels of a person crop, and clean background plates.

Labels: 0 background, 1 head, 2 torso. The person is mediapipe's selfie
segmentation (model inside the wheel), kept to the columns nearer this
person's face than any other's. Head = the convex hull of the face-mesh
landmarks plus the person's pixels above the chin line (hair, ears), within
a band around the face; the chin line passes through the chin perpendicular
to the face's own up direction, so it tilts with the head. Torso = the rest
of the person (neck, shoulders, clothes).
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from common.landmarks import CHEEK_L, CHEEK_R, CHIN, FOREHEAD

BACKGROUND, HEAD, TORSO = 0, 1, 2
# Hair reaches past the cheeks; beyond this many face widths from the centre it is not head.
HEAD_HALF_WIDTH = 0.9
SEG_SIZE = 256  # the selfie model's own input size; running it larger buys nothing


class PersonSegmenter:
    """mediapipe selfie segmentation: [S, S, 3] uint8 RGB -> [S, S] float32 person probability."""

    def __init__(self):
        import mediapipe as mp

        self._seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        s = crop.shape[0]
        small = cv2.resize(crop, (SEG_SIZE, SEG_SIZE), interpolation=cv2.INTER_AREA)
        prob = self._seg.process(small).segmentation_mask
        return cv2.resize(prob, (s, s), interpolation=cv2.INTER_LINEAR)

    def close(self) -> None:
        self._seg.close()


def parse_labels(person_prob: np.ndarray, landmarks: np.ndarray | None, own_columns: np.ndarray) -> np.ndarray:
    """Label one crop.

    Args:
        person_prob: [S, S] float person probability.
        landmarks: [478, 2+] crop-pixel face-mesh landmarks, or None (then the
            person is all torso: such frames are invalid and never trained on).
        own_columns: [S] bool, the crop columns that belong to this person.

    Returns:
        [S, S] uint8 labels.
    """
    s = person_prob.shape[0]
    person = (person_prob > 0.5) & own_columns[None, :]
    labels = np.where(person, TORSO, BACKGROUND).astype(np.uint8)
    if landmarks is None:
        return labels
    pts = landmarks[:, :2].astype(np.float32)
    hull = np.zeros((s, s), np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(pts).astype(np.int32), 1)
    up = pts[FOREHEAD] - pts[CHIN]
    up /= max(np.linalg.norm(up), 1e-6)
    side = np.array([-up[1], up[0]])
    centre = (pts[CHEEK_R] + pts[CHEEK_L]) / 2
    width = np.linalg.norm(pts[CHEEK_L] - pts[CHEEK_R])
    ys, xs = _pixel_grid(s)
    above = (xs - pts[CHIN, 0]) * up[0] + (ys - pts[CHIN, 1]) * up[1] > 0
    near = np.abs((xs - centre[0]) * side[0] + (ys - centre[1]) * side[1]) < HEAD_HALF_WIDTH * width
    head = (hull > 0) | (person & above & near)
    labels[head] = HEAD
    return labels


@functools.lru_cache(maxsize=4)
def _pixel_grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    """[s, s] float32 row and column coordinates (cached: one crop size per run)."""
    ys, xs = np.mgrid[0:s, 0:s].astype(np.float32)
    return ys, xs


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
    bg = np.stack([cv2.erode(b.astype(np.uint8), kernel) > 0 for b in background])
    # Masked median by sorting: covered samples become 256, sort to the end, and are never picked.
    stack = np.where(bg[..., None], frames, np.uint16(256)).astype(np.uint16)
    stack.sort(axis=0)
    count = bg.sum(0)
    hole = count == 0
    k = np.maximum(count - 1, 0) // 2
    plate = np.take_along_axis(stack, np.broadcast_to(k[None, ..., None], (1, *stack.shape[1:])), 0)[0]
    plate = np.where(hole[..., None], 0, plate).astype(np.uint8)
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
