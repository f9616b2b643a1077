"""What prepare's worker processes run: the person passes, the torso tracking and the early voice activity.

Kept apart from ``pipeline`` so a worker imports only what these need (OpenCV, numpy, mediapipe), not the audio,
QA and pose-fitting stages' libraries. The workers are forked from a server process that has imported them once
(``pool``), so each costs no import of its own.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import multiprocessing.synchronize
import os
import signal
import warnings
from pathlib import Path

import cv2
import numpy as np

from common import dataset, video_io
from common.atomic_io import save_npz
from common.memory import tune_memory
from data_prep import person_track, torso_track

PRELOAD = ["data_prep.workers", "mediapipe"]  # what the fork server imports once for every worker
_progress = None  # this worker's queue for progress counts (``pool``)
_stopping = None  # set once the main process was interrupted: no job starts any more (``interrupt``)


def pool(workers: int) -> tuple[concurrent.futures.ProcessPoolExecutor, multiprocessing.queues.Queue,
                                multiprocessing.synchronize.Event]:
    """``workers`` processes, the queue on which they report frames done, and the event ``interrupt`` sets.

    Forked from a fork server that imported ``PRELOAD`` and started no thread (TFLite's threads do not survive a
    fork); where there is no fork server, spawned."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
    else:
        ctx = multiprocessing.get_context("spawn")
    queue, stopping = ctx.Queue(), ctx.Event()
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start,
                                                  initargs=(queue, stopping)), queue, stopping


def interrupt(pool: concurrent.futures.ProcessPoolExecutor, stopping: multiprocessing.synchronize.Event) -> None:
    """Ctrl-C for the pool's workers: each running job stops as at a KeyboardInterrupt (its files are atomic: nothing
    half-written stays), and a job already handed to a worker stops before it starts, so the pool shuts down at
    once."""
    stopping.set()
    for pid in list(getattr(pool, "_processes", None) or {}):  # (the executor's own table of its processes)
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            pass


def _start(queue, stopping) -> None:
    global _progress, _stopping
    _progress, _stopping = queue, stopping
    tune_memory()


def _go() -> None:
    """At the start of every job: refuse it once the main process was interrupted."""
    if _stopping is not None and _stopping.is_set():
        raise KeyboardInterrupt


def warm_up() -> None:
    """A worker's first task: be started (and import, where spawned) while the main process finds the people."""
    import mediapipe  # noqa: F401


def voice_activity(video: str, n_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """``speech.speaking.voice_activity`` of the video's audio fitted to ``n_frames`` (prepare's audio stage reads it
    the same way), on one thread: it runs beside the people search."""
    _go()
    import torch

    from speech.speaking import voice_activity

    torch.set_num_threads(1)
    audio = video_io.read_audio(video)
    with warnings.catch_warnings():  # a length mismatch is told once, by the audio stage
        warnings.simplefilter("ignore")
        audio = video_io.fit_audio(np.zeros(0, np.float32) if audio is None else audio, n_frames, fps)
    return voice_activity(audio, n_frames, fps)


def run_person(job: person_track.PersonJob, pid: int) -> dict:
    """One person's pass (``person_track.run_person``), reporting progress in batches of frames."""
    _go()
    pending = [0]

    def report(k: int) -> None:
        pending[0] += k
        if pending[0] >= 10:
            _progress.put(pending[0])
            pending[0] = 0

    res = person_track.run_person(job, pid, report)
    _progress.put(pending[0])
    return res


def track_torso(out: str, stages: str, pid: int, n: int, crop_size: int, side: str = "both") -> dict:
    """One person's torso motion on one side of its reference frame (``torso_track.track_torso``), for ``save_torso``.

    Reads the working frames the person pass left, or decodes the crops (a dataset prepared before that existed)."""
    _go()
    out = Path(out)
    a, b = dataset.splits(n)["train"]
    size = min(crop_size, torso_track.WORK_SIZE)
    frames = person_track.read_torso_frames(stages, pid, n, size)
    if frames is None:
        frames = (np.stack([cv2.cvtColor(_fit(c, size, cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
                            for c in dataset.iter_crops(out, pid)]),
                  np.stack([_fit(lab, size, cv2.INTER_NEAREST) for lab in dataset.iter_parsing(out, pid)]))
    grey, labels = frames
    tr = dataset.load_track(out, pid)
    idx = np.arange(len(grey))
    train = idx[a:b][tr["valid"][a:b]]
    ref = torso_track.reference_frame(tr["euler"], tr["t"], train if len(train) else idx[a:b])
    motion, ok, corr = torso_track.track_torso(grey, labels, ref, side=side)
    return {"reference": ref, "side": side, "motion": motion, "valid": ok, "correlation": corr}


def save_torso(out: str | Path, pid: int, parts: list[dict]) -> np.ndarray:
    """Join the sides ``track_torso`` tracked into the person's torso.npz; returns the motion [n, 6] (NaN where not
    tracked)."""
    ref = parts[0]["reference"]
    after = np.arange(len(parts[0]["valid"])) >= ref
    pick = {p["side"]: p for p in parts}
    if "both" in pick:
        motion, ok, corr = pick["both"]["motion"], pick["both"]["valid"], pick["both"]["correlation"]
    else:
        motion, ok, corr = (np.where(after[:, None] if key == "motion" else after, pick["after"][key],
                                     pick["before"][key]) for key in ("motion", "valid", "correlation"))
    motion = np.where(ok[:, None], motion, np.nan).astype(np.float32)
    save_npz(dataset.person_dir(out, pid) / "torso.npz", motion=motion, reference=np.int64(ref),
             correlation=corr.astype(np.float32))
    return motion


def _fit(img: np.ndarray, size: int, interpolation: int) -> np.ndarray:
    return img if img.shape[0] == size else cv2.resize(img, (size, size), interpolation=interpolation)
