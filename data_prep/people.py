"""Find the people of a clip: face detections linked into tracks, one fixed crop box each.

Detections come from mediapipe's full-range face detector on every
``stride``-th frame. A track keeps its last position while it is unseen, so
a face that turns away for a moment re-joins its own track instead of
starting a new person. Tracks seen in too few frames are spurious (a face
on a poster for one frame, a detector blink) and are dropped. Persons are
numbered left to right by their median face centre.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.optimize import linear_sum_assignment

from common.errors import PrepareError

# The face detector's box spans brows to chin; the whole head with hair is about this much taller.
HEAD_OVER_FACE_BOX = 1.45
# Target share of the crop height taken by the head (the issue asks for 40-50%).
HEAD_SHARE_OF_CROP = 0.45
# Face centre sits this far down the crop, leaving room for hair above and shoulders below.
FACE_CENTRE_FROM_TOP = 0.36


@dataclasses.dataclass
class Detection:
    """One face box in frame pixels."""

    frame: int
    cx: float
    cy: float
    w: float
    h: float
    score: float


@dataclasses.dataclass
class PersonTrack:
    """A person's face detections over the clip."""

    detections: list[Detection]

    def median(self) -> np.ndarray:
        """[4] median cx, cy, w, h."""
        return np.median(np.array([[d.cx, d.cy, d.w, d.h] for d in self.detections]), axis=0)


class FaceDetector:
    """mediapipe's full-range face detector (model inside the wheel) on RGB frames."""

    def __init__(self, min_confidence: float = 0.5):
        import mediapipe as mp

        self._det = mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_confidence)

    def __call__(self, frame: np.ndarray, index: int) -> list[Detection]:
        """Detect faces in an [H, W, 3] uint8 RGB frame; boxes in frame pixels."""
        h, w = frame.shape[:2]
        res = self._det.process(frame)
        out = []
        for d in res.detections or []:
            b = d.location_data.relative_bounding_box
            bw, bh = b.width * w, b.height * h
            if bw < 12 or bh < 12:
                continue
            out.append(Detection(index, (b.xmin + b.width / 2) * w, (b.ymin + b.height / 2) * h,
                                 bw, bh, float(d.score[0])))
        return out

    def close(self) -> None:
        self._det.close()


def link_tracks(dets_per_frame: list[list[Detection]], gate: float = 0.6) -> list[PersonTrack]:
    """Link per-frame detections into tracks by Hungarian matching of box centres.

    Args:
        dets_per_frame: the detections of each processed frame, in time order.
        gate: a detection joins a track only if its centre lies within
            ``gate`` x the track's face size of the track's last position.

    Returns:
        All tracks, spurious ones included (see ``select_persons``).
    """
    tracks: list[PersonTrack] = []
    last: list[np.ndarray] = []  # per track [cx, cy, size]
    for dets in dets_per_frame:
        if not dets:
            continue
        if tracks:
            cost = np.full((len(tracks), len(dets)), 1e6)
            for i, (cx, cy, s) in enumerate(last):
                for j, d in enumerate(dets):
                    dist = np.hypot(d.cx - cx, d.cy - cy) / max(s, 1.0)
                    if dist < gate:
                        cost[i, j] = dist
            rows, cols = linear_sum_assignment(cost)
            matched = set()
            for i, j in zip(rows, cols):
                if cost[i, j] < 1e6:
                    tracks[i].detections.append(dets[j])
                    last[i] = np.array([dets[j].cx, dets[j].cy, max(dets[j].w, dets[j].h)])
                    matched.add(j)
        else:
            matched = set()
        for j, d in enumerate(dets):
            if j not in matched:
                tracks.append(PersonTrack([d]))
                last.append(np.array([d.cx, d.cy, max(d.w, d.h)]))
    return tracks


def select_persons(tracks: list[PersonTrack], n_processed: int, min_presence: float = 0.3,
                   expected: int | None = None) -> list[PersonTrack]:
    """Keep the tracks seen in at least ``min_presence`` of the processed frames, left to right.

    Raises:
        PrepareError: no face at all, or not ``expected`` persons.
    """
    if not tracks:
        raise PrepareError("no face found anywhere in the video; prepare needs people facing the camera")
    persons = [t for t in tracks if len({d.frame for d in t.detections}) >= min_presence * n_processed]
    persons.sort(key=lambda t: t.median()[0])
    if not persons:
        best = max(len(t.detections) for t in tracks) / max(n_processed, 1)
        raise PrepareError(f"faces were found in only {best:.0%} of the frames at best; every person must "
                           f"be visible for at least {min_presence:.0%} of the clip")
    if expected is not None and len(persons) != expected:
        raise PrepareError(f"found {len(persons)} person(s) but --persons asks for {expected}; check the "
                           "video or drop --persons to take what was found")
    return persons


def crop_boxes(persons: list[PersonTrack], frame_w: int, frame_h: int) -> list[tuple[int, int, int]]:
    """One fixed square box per person covering head and shoulders over the whole clip.

    The side makes the head about ``HEAD_SHARE_OF_CROP`` of the crop height, grown
    when the face moves more than that leaves room for, and capped by the frame.
    A box is shifted, never padded, to stay inside the frame.

    Returns:
        Per person (x0, y0, side) in frame pixels, side even.
    """
    boxes = []
    for p in persons:
        arr = np.array([[d.cx, d.cy, d.w, d.h] for d in p.detections])
        cx, cy, _, fh = np.median(arr, axis=0)
        side = HEAD_OVER_FACE_BOX * fh / HEAD_SHARE_OF_CROP
        # The face must stay inside the box over the whole clip: its excursions plus a margin.
        lo, hi = np.percentile(arr[:, :2], 2, axis=0), np.percentile(arr[:, :2], 98, axis=0)
        side = max(side, 2.0 * (max(hi[0] - lo[0], hi[1] - lo[1]) + 1.2 * fh))
        side = int(min(side, frame_w, frame_h)) // 2 * 2
        x0 = int(round(cx - side / 2))
        y0 = int(round(cy - FACE_CENTRE_FROM_TOP * side))
        x0 = min(max(x0, 0), frame_w - side)
        y0 = min(max(y0, 0), frame_h - side)
        boxes.append((x0, y0, side))
    return boxes


def split_columns(persons: list[PersonTrack], frame_w: int) -> list[tuple[float, float]]:
    """Per person the frame columns [left, right) nearer its face than any other face.

    A crop may reach into a neighbour; pixels outside this band are never
    this person's (the segmentation sees both people as "person").
    """
    xs = [float(p.median()[0]) for p in persons]
    bands = []
    for i, x in enumerate(xs):
        left = 0.0 if i == 0 else (xs[i - 1] + x) / 2
        right = float(frame_w) if i == len(xs) - 1 else (x + xs[i + 1]) / 2
        bands.append((left, right))
    return bands
