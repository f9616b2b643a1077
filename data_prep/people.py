"""Find the people of a clip: face detections linked into tracks, one fixed crop box each.

Detections come from mediapipe's full-range face detector, which sees the
frame shrunk to 192 x 192: in a 1280 x 720 panel a face 60 px high becomes 9
px there and is missed most of the time. So about once a second the frame is
also searched in overlapping tiles (``tiles``), each seen at the detector's
full resolution; a face up to a quarter of a tile's side lies wholly inside
one tile, and detections cut by an inner tile edge are dropped. Duplicates
(the same face found whole and in a tile) are suppressed, the best kept.

A track keeps its last position while it is unseen, so a face that turns away
for a moment re-joins its own track instead of starting a new person. A track
seen in too few of the frames searched (at the tiled frames, a small face's
only chance) is spurious (a face on a poster for one frame, a detector blink)
and is dropped, with its reason (``Dropped``). Persons are numbered left to
right by their median face centre.
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
TILE_SHARE = 0.6
"""Tile side as a share of the frame's shorter side (1280 x 720: 8 tiles of 432 px; a 35 px face is found)."""
TILE_OVERLAP = 0.25
"""Neighbouring tiles overlap by this share of a side, so a face up to that size lies wholly in one of them."""
TILE_FROM = 640
"""Frames whose longer side is at most this are searched whole only."""


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
class Dropped:
    """A face track that did not become a person, and why."""

    track: PersonTrack
    reason: str

    def describe(self) -> str:
        cx, cy, w, _ = self.track.median()
        return f"a face track at x {cx:.0f}, y {cy:.0f} ({w:.0f} px): {self.reason}"


@dataclasses.dataclass
class PersonTrack:
    """A person's face detections over the clip."""

    detections: list[Detection]

    def median(self) -> np.ndarray:
        """[4] median cx, cy, w, h."""
        return np.median(np.array([[d.cx, d.cy, d.w, d.h] for d in self.detections]), axis=0)

    def frames(self) -> set[int]:
        return {d.frame for d in self.detections}


def tiles(width: int, height: int) -> list[tuple[int, int, int]]:
    """Overlapping square tiles (x0, y0, side) covering a frame; none for a frame of at most ``TILE_FROM`` px (the
    detector sees it shrunk at most 3.3 times, a 60 px face as 18 px: found whole)."""
    if max(width, height) <= TILE_FROM:
        return []
    side = int(round(TILE_SHARE * min(width, height)))

    def starts(n: int) -> list[int]:
        k = int(np.ceil((n - side) / ((1 - TILE_OVERLAP) * side))) + 1 if n > side else 1
        return np.linspace(0, n - side, k).round().astype(int).tolist() if k > 1 else [0]

    return [(x, y, side) for y in starts(height) for x in starts(width)]


def suppress_duplicates(dets: list[Detection]) -> list[Detection]:
    """Keep the best-scoring of detections of one face: one whose centre lies in a better one's box, or whose box
    holds a better one's centre, goes."""
    def inside(a: Detection, b: Detection) -> bool:
        return abs(a.cx - b.cx) <= b.w / 2 and abs(a.cy - b.cy) <= b.h / 2

    keep: list[Detection] = []
    for d in sorted(dets, key=lambda d: -d.score):
        if not any(inside(d, k) or inside(k, d) for k in keep):
            keep.append(d)
    return keep


class FaceDetector:
    """mediapipe's full-range face detector (model inside the wheel) on RGB frames."""

    def __init__(self, min_confidence: float = 0.5):
        import mediapipe as mp

        self._det = mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_confidence)

    def __call__(self, frame: np.ndarray, index: int, tiled: bool = False) -> list[Detection]:
        """Detect faces in an [H, W, 3] uint8 RGB frame (also tile by tile with ``tiled``); boxes in frame pixels."""
        h, w = frame.shape[:2]
        out = self._detect(frame, index)
        if not tiled:
            return suppress_duplicates(out)
        for x0, y0, side in tiles(w, h):
            for d in self._detect(np.ascontiguousarray(frame[y0:y0 + side, x0:x0 + side]), index):
                # a face cut by an inner tile edge is partly outside this tile (and whole in another)
                margin = 0.02 * side
                cut = ((x0 > 0 and d.cx - d.w / 2 < margin) or (x0 + side < w and d.cx + d.w / 2 > side - margin)
                       or (y0 > 0 and d.cy - d.h / 2 < margin) or (y0 + side < h and d.cy + d.h / 2 > side - margin))
                if not cut:
                    out.append(dataclasses.replace(d, cx=d.cx + x0, cy=d.cy + y0))
        return suppress_duplicates(out)

    def _detect(self, image: np.ndarray, index: int) -> list[Detection]:
        h, w = image.shape[:2]
        res = self._det.process(image)
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
            ``gate`` x the larger of its own and the track's face size of the track's last position.

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
                    dist = np.hypot(d.cx - cx, d.cy - cy) / max(s, d.w, d.h, 1.0)
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
    return merge_fragments(tracks, gate)


def merge_fragments(tracks: list[PersonTrack], gate: float = 0.6) -> list[PersonTrack]:
    """Join tracks that are one face split in two: never seen in the same frame, median centres within ``gate`` x
    the larger median face size (a turning face whose detection jumped past the gate for a frame, then went on in
    a second track). The longest tracks absorb the shorter ones first."""
    tracks = sorted(tracks, key=lambda t: -len(t.detections))
    merged: list[PersonTrack] = []
    for t in tracks:
        m = t.median()
        for host in merged:
            h = host.median()
            near = np.hypot(*(m[:2] - h[:2])) < gate * max(m[2], m[3], h[2], h[3])
            if near and not (host.frames() & t.frames()):
                host.detections = sorted(host.detections + t.detections, key=lambda d: d.frame)
                break
        else:
            merged.append(t)
    return merged


def presence(track: PersonTrack, n_processed: int, tiled: set[int]) -> float:
    """Share of the searched frames a track was seen in: of all of them, or of the tiled ones if that is higher
    (a small face is only found there)."""
    frames = track.frames()
    share = len(frames) / max(n_processed, 1)
    return max(share, len(frames & tiled) / len(tiled)) if tiled else share


def select_persons(tracks: list[PersonTrack], n_processed: int, tiled: set[int] = frozenset(),
                   min_presence: float = 0.3, expected: int | None = None,
                   ) -> tuple[list[PersonTrack], list[Dropped]]:
    """Keep the tracks seen in at least ``min_presence`` of the searched frames (``presence``), left to right.

    Args:
        tracks: from ``link_tracks``.
        n_processed: frames searched; tiled: those of them also searched tile by tile.

    Returns:
        The persons, left to right, and the tracks dropped with their reasons (most seen first).

    Raises:
        PrepareError: no face at all, or not ``expected`` persons.
    """
    if not tracks:
        raise PrepareError("no face found anywhere in the video; prepare needs people facing the camera")
    share = {id(t): presence(t, n_processed, tiled) for t in tracks}
    persons = sorted((t for t in tracks if share[id(t)] >= min_presence), key=lambda t: t.median()[0])
    dropped = [Dropped(t, f"seen in only {share[id(t)]:.0%} of the frames searched (at least {min_presence:.0%})")
               for t in sorted(tracks, key=lambda t: -share[id(t)]) if share[id(t)] < min_presence]
    if not persons:
        raise PrepareError(f"faces were found in only {max(share.values()):.0%} of the frames at best; every person "
                           f"must be visible for at least {min_presence:.0%} of the clip")
    if expected is not None and len(persons) != expected:
        near = [d for d in dropped if len(d.track.detections) > 1][:3]
        hint = ("; tracks seen too rarely to keep: " + "; ".join(d.describe() for d in near)) if near else ""
        raise PrepareError(f"found {len(persons)} person(s) but --persons asks for {expected}{hint}; check the "
                           "video or drop --persons to take what was found")
    return persons, dropped


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
