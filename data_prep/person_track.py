"""One person's pass over the clip: crops, 478 landmarks, parsing labels, background plate, then its head track.

Runs in its own process per person (``pipeline`` fans persons out over the
cores): it decodes the video itself, so nothing large crosses processes.
Writes ``frames.mp4`` (the crops), ``parsing.mkv`` (labels, lossless) and
``background.png`` into the person's folder and returns the landmarks. For
the later stages, so they decode nothing again, it leaves in the stages
folder each frame's grey crop and labels at the torso tracker's working size
(``torso_frames``, raw bytes) and the crops and labels of the QA contact
sheet's frames (``qa_tiles``). The head's poses, focal and canonical face are fitted here too, in the worker
(``head_pose``), so that the persons' fits run side by side rather than one after another in the main process.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from pathlib import Path

import cv2
import numpy as np

from common import video_io
from common.atomic_io import atomic_path, save_image, save_npz
from common.dataset import LABEL_SCALE
from common.geometry import euler_pyr
from data_prep import head_pose, parsing, torso_track

MAX_GAP = 5  # frames; a face lost for longer stays invalid and is left out of training
PLATE_SAMPLES = 48  # frames sampled for the background median
MIN_VALID_FRACTION = 0.5  # a person whose face is lost for more than this is refused (by prepare's tracks stage)
HEAD_COVER_EVERY = 5  # frames between two measures of the head label's cover (``parsing.head_cover``)


@dataclasses.dataclass
class PersonJob:
    """Everything a worker needs, small enough to pickle."""

    video: str
    fps: float
    n_frames: int  # expected (from the duration): spreads the plate samples; the stream decides the count
    box: tuple[int, int, int]  # x0, y0, side in frame pixels
    own_columns: tuple[float, float]  # frame columns [left, right) that are this person's
    crop_size: int
    out_dir: str
    stages_dir: str  # where the torso stage's working frames and the QA tiles go
    qa_frames: tuple[int, ...] = ()  # the frames the contact sheet shows (past the clip's end: its last frame)
    crf: int = 17
    smooth_pose: float = 1.0  # the head poses' Gaussian smoothing in frames (0: off)


class FaceMesher:
    """mediapipe face mesh with iris refinement (478 points) in tracking mode."""

    def __init__(self):
        import mediapipe as mp

        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=False, max_num_faces=1, refine_landmarks=True,
            min_detection_confidence=0.5, min_tracking_confidence=0.5)

    def __call__(self, crop: np.ndarray) -> np.ndarray | None:
        """[S, S, 3] uint8 -> [478, 3] float32 crop pixels (z scaled like x), or None."""
        res = self._mesh.process(crop)
        if not res.multi_face_landmarks:
            return None
        s = crop.shape[0]
        lm = res.multi_face_landmarks[0].landmark
        return np.array([(p.x * s, p.y * s, p.z * s) for p in lm], np.float32)

    def close(self) -> None:
        self._mesh.close()


def fill_short_gaps(landmarks: np.ndarray, found: np.ndarray, max_gap: int = MAX_GAP) -> tuple[np.ndarray, np.ndarray]:
    """Linearly interpolate runs of at most ``max_gap`` lost frames between two found ones.

    Args:
        landmarks: [T, 478, 3] (NaN where not found); found: [T] bool.

    Returns:
        landmarks with short gaps filled, valid [T] bool (found or filled).
    """
    lm, valid = landmarks.copy(), found.copy()
    edges = np.flatnonzero(np.diff(np.r_[1, found.astype(np.int8), 1]))
    for a, b in zip(edges[::2], edges[1::2]):
        if a == 0 or b == len(found) or b - a > max_gap:
            continue
        w = (np.arange(a, b) - (a - 1)) / (b - (a - 1))
        lm[a:b] = (1 - w)[:, None, None] * lm[a - 1] + w[:, None, None] * lm[b]
        valid[a:b] = True
    return lm, valid


def torso_frames_paths(stages_dir: str | Path, pid: int) -> tuple[Path, Path]:
    """The raw [T, n, n] uint8 grey crops and label maps at the torso tracker's working size."""
    return Path(stages_dir) / f"torso_grey_{pid}.u8", Path(stages_dir) / f"torso_labels_{pid}.u8"


def read_torso_frames(stages_dir: str | Path, pid: int, n_frames: int, side: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The person's [n_frames, side, side] working frames (memory-mapped), or None when the person pass left none or
    another count or size."""
    paths = torso_frames_paths(stages_dir, pid)
    if not all(p.is_file() and p.stat().st_size == n_frames * side * side for p in paths):
        return None
    return tuple(np.memmap(p, np.uint8, "r", shape=(n_frames, side, side)) for p in paths)


def qa_tiles_path(stages_dir: str | Path, pid: int) -> Path:
    return Path(stages_dir) / f"qa_tiles_{pid}.npz"


def run_person(job: PersonJob, pid: int, progress=None) -> dict[str, np.ndarray]:
    """Crop, mesh, segment and label every frame of one person; write its files.

    Args:
        job: the person's job; pid: the person's id (names its files in the stages folder).
        progress: optional callable(n) told after each frame.

    Returns:
        landmarks [T, 478, 3] float32 (NaN where lost) and found [T] bool, straight from the mesh (T is the number
        of frames the decoder delivered); head_cover [K]: ``parsing.head_cover`` on every ``HEAD_COVER_EVERY``-th
        frame with a face; and ``fit_head``'s head track.
    """
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x0, _, side = job.box
    cols = x0 + (np.arange(job.crop_size) + 0.5) * side / job.crop_size
    own = (cols >= job.own_columns[0]) & (cols < job.own_columns[1])
    mesher, segmenter = FaceMesher(), parsing.PersonSegmenter()
    expected = max(1, job.n_frames)
    plate_at = set(np.linspace(0, expected - 1, min(PLATE_SAMPLES, expected)).round().astype(int).tolist())
    plate_frames, plate_bg, landmarks = [], [], []
    qa_at, qa = set(job.qa_frames), {}
    work = min(job.crop_size, torso_track.WORK_SIZE)
    last_lm = last = None
    cover = []
    grey_path, label_path = torso_frames_paths(job.stages_dir, pid)
    try:
        with video_io.FrameWriter(out / "frames.mp4", job.fps, crf=job.crf, pix_fmt="yuv444p",
                                  preset="superfast") as crop_out, \
                video_io.FrameWriter(out / "parsing.mkv", job.fps, gray=True) as label_out, \
                atomic_path(grey_path) as grey_tmp, atomic_path(label_path) as label_tmp, \
                open(grey_tmp, "wb") as grey_file, open(label_tmp, "wb") as label_file, \
                concurrent.futures.ThreadPoolExecutor(1) as seg_thread:
            for i, crop in enumerate(video_io.iter_frames(job.video, job.fps, crop=job.box, size=job.crop_size)):
                person = seg_thread.submit(segmenter, crop)
                lm = mesher(crop)
                landmarks.append(np.full((478, 3), np.nan, np.float32) if lm is None else lm)
                last_lm = lm if lm is not None else last_lm
                labels = parsing.parse_labels(person.result(), last_lm, own)
                if lm is not None and i % HEAD_COVER_EVERY == 0:
                    cover.append(parsing.head_cover(labels, lm))
                crop_out.write(crop)
                label_out.write(labels * LABEL_SCALE)
                small = crop if work == job.crop_size else cv2.resize(crop, (work, work), interpolation=cv2.INTER_AREA)
                grey_file.write(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).tobytes())
                label_file.write((labels if work == job.crop_size else
                                  cv2.resize(labels, (work, work), interpolation=cv2.INTER_NEAREST)).tobytes())
                if i in plate_at:
                    plate_frames.append(crop)
                    plate_bg.append(labels == parsing.BACKGROUND)
                if i in qa_at:
                    qa[i] = (crop, labels)
                last = (i, crop, labels)
                if progress:
                    progress(1)
    finally:
        mesher.close()
        segmenter.close()
    plate, _ = parsing.median_plate(np.stack(plate_frames), np.stack(plate_bg), margin=max(2, job.crop_size // 100))
    save_image(out / "background.png", plate)
    landmarks = np.stack(landmarks)
    if job.qa_frames:  # frames planned past the end of the stream show its last one
        shown = sorted({f if f in qa else last[0] for f in job.qa_frames})
        qa[last[0]] = last[1:]
        save_npz(qa_tiles_path(job.stages_dir, pid), frames=np.array(shown),
                 crops=np.stack([qa[f][0] for f in shown]), labels=np.stack([qa[f][1] for f in shown]))
    found = np.isfinite(landmarks).all(axis=(1, 2))
    return {"landmarks": landmarks, "found": found, "head_cover": np.array(cover, np.float32),
            **fit_head(landmarks, found, job.crop_size, job.smooth_pose)}


HEAD_FIT = [f.name for f in dataclasses.fields(head_pose.HeadPoseFit)]


def fit_head(landmarks: np.ndarray, found: np.ndarray, crop_size: int, smooth_pose: float) -> dict[str, np.ndarray]:
    """A person's head track from its landmarks, short gaps filled (``fill_short_gaps``): ``head_pose.fit_head_pose``'s
    fields with the poses smoothed over ``smooth_pose`` frames; nothing where the face was tracked in less than
    ``MIN_VALID_FRACTION`` of the frames."""
    filled, valid = fill_short_gaps(landmarks, found)
    if valid.mean() < MIN_VALID_FRACTION:
        return {}
    fit = head_pose.fit_head_pose(filled, valid, crop_size)
    fit.R, fit.t = head_pose.smooth_poses(fit.R, fit.t, valid, smooth_pose)
    fit.euler = euler_pyr(fit.R)
    return {name: np.asarray(getattr(fit, name)) for name in HEAD_FIT}


def stored_head_fit(person_pass: dict) -> head_pose.HeadPoseFit:
    """The ``head_pose.HeadPoseFit`` that ``fit_head`` stored in a person pass's results."""
    fit = head_pose.HeadPoseFit(**{name: person_pass[name] for name in HEAD_FIT})
    fit.focal = float(fit.focal)
    return fit
