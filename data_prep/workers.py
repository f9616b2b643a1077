"""What prepare's worker processes run: the person passes, the torso tracking and the early voice activity.

Kept apart from ``pipeline`` so a worker imports only what these need (OpenCV, numpy, mediapipe), not the audio,
QA and pose-fitting stages' libraries. The workers are forked from a server process that has imported them once
(``pool``), so each costs no import of its own.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import multiprocessing.synchronize
import warnings
from pathlib import Path

import cv2
import numpy as np

from common import dataset, video_io
from common.memory import tune_process
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


def interrupt(stopping: multiprocessing.synchronize.Event) -> None:
    """Ctrl-C for the pool's workers: a person pass stops at its next frame and any other job before it starts, as
    at a KeyboardInterrupt (raised where the job checks, so its atomic files clean up: nothing half-written stays).
    Cooperative, not a signal: a SIGINT can land where Python only prints it (a fork's callbacks) or inside that
    cleanup."""
    stopping.set()


def _start(queue, stopping) -> None:
    global _progress, _stopping
    _progress, _stopping = queue, stopping
    tune_process()


def _go() -> None:
    """At the start of every job (and each frame of a person pass): stop once the main process was interrupted."""
    if _stopping is not None and _stopping.is_set():
        raise KeyboardInterrupt


def warm_up() -> None:
    """A worker's first task: be started (and import, where spawned) while the main process finds the people."""
    import mediapipe  # noqa: F401


def voice_activity(video: str, n_frames: int, fps: float) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """The video's audio as read (None: no track) and ``speech.speaking.voice_activity`` of it fitted to ``n_frames``
    (as prepare's audio stage fits it), on one thread: it runs beside the people search. Returns audio, voiced,
    vad_prob."""
    _go()
    import torch

    from speech.speaking import voice_activity

    torch.set_num_threads(1)
    raw = video_io.read_audio(video)
    with warnings.catch_warnings():  # a length mismatch is told once, by the audio stage
        warnings.simplefilter("ignore")
        audio = video_io.fit_audio(np.zeros(0, np.float32) if raw is None else raw, n_frames, fps)
    return (raw, *voice_activity(audio, n_frames, fps))


def run_person(job: person_track.PersonJob, pid: int) -> dict:
    """One person's pass (``person_track.run_person``), reporting progress in batches of frames."""
    _go()
    pending = [0]

    def report(k: int) -> None:
        _go()  # each frame
        pending[0] += k
        if pending[0] >= 10:
            _progress.put(pending[0])
            pending[0] = 0

    res = person_track.run_person(job, pid, report)
    _progress.put(pending[0])
    return res


def track_torso(out: str, stages: str, pid: int, n: int, crop_size: int, reference: int, side: str = "both") -> dict:
    """One person's torso motion onto its ``reference`` frame, on one side of it (``torso_track.track_torso``), for the
    pipeline's ``_save_torso``.

    Reads the working frames the person pass left, or decodes the crops (a dataset prepared before that existed)."""
    _go()
    out = Path(out)
    size = min(crop_size, torso_track.WORK_SIZE)
    frames = person_track.read_torso_frames(stages, pid, n, size)
    if frames is None:
        frames = (np.stack([cv2.cvtColor(_fit(c, size, cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
                            for c in dataset.iter_crops(out, pid)]),
                  np.stack([_fit(lab, size, cv2.INTER_NEAREST) for lab in dataset.iter_parsing(out, pid)]))
    grey, labels = frames
    motion, ok, corr = torso_track.track_torso(grey, labels, reference, side=side)
    return {"reference": reference, "side": side, "motion": motion, "valid": ok, "correlation": corr}


def _fit(img: np.ndarray, size: int, interpolation: int) -> np.ndarray:
    return img if img.shape[0] == size else cv2.resize(img, (size, size), interpolation=interpolation)
