"""Several videos prepared by one command: a process pool of ``jobs`` videos at a time, each dataset as ``prepare``
makes it (``<out>/<video name>``), each video's failure its own (the others go on).

Each job gets an equal share of the cores for its own per-person processes (``PrepareConfig.workers``) unless
``workers`` is set; its log lines carry the video's name, and its progress bars give way to one bar of videos.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
from pathlib import Path

from tqdm import tqdm

from common.errors import PrepareError
from data_prep.pipeline import PrepareConfig, prepare


@dataclasses.dataclass
class Outcome:
    """One video's result: its dataset, or the one-line reason it has none."""

    video: Path
    out: Path
    error: str | None = None


def read_list(path: str | Path) -> list[Path]:
    """The videos of a list file: one path per line, relative to the file's folder unless absolute; blank lines and
    lines starting with # are skipped."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PrepareError(f"cannot read the list of videos {path} ({getattr(e, 'strerror', None) or e})") from None
    videos = [Path(s.strip()) for s in lines if s.strip() and not s.strip().startswith("#")]
    if not videos:
        raise PrepareError(f"{path} lists no videos")
    return [v if v.is_absolute() else path.parent / v for v in videos]


def plan(videos: list[Path], out_root: Path) -> list[Outcome]:
    """Each video's dataset folder, <out_root>/<video's name without suffix>; refused when two would share one."""
    seen: dict[str, Path] = {}
    for v in videos:
        if v.stem in seen:
            raise PrepareError(f"{seen[v.stem]} and {v} would both be prepared into {out_root / v.stem}: rename one"
                               if Path(seen[v.stem]).resolve() != v.resolve() else f"{v} is listed twice")
        seen[v.stem] = v
    return [Outcome(v, out_root / v.stem) for v in videos]


def _reason(e: BaseException) -> str:
    """One line for a video that failed: prepare's own message, or what an unexpected error was."""
    if isinstance(e, PrepareError):
        return str(e)
    first = (str(e).strip().splitlines() or [""])[0][:200]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _job(video: Path, out: Path, cfg: PrepareConfig, verbose: bool) -> str | None:
    """One video in a pool process: None when its dataset is written, else the reason."""
    from common.console import quiet

    quiet(verbose)
    try:
        prepare(video, out, cfg, log=lambda msg: print(f"[{video.stem}] {msg}", flush=True))
    except Exception as e:  # (any failure is this video's alone: the others go on)
        return _reason(e)
    return None


def prepare_many(videos: list[Path], out_root: str | Path, cfg: PrepareConfig, jobs: int = 1, verbose: bool = False,
                 log=print) -> list[Outcome]:
    """Prepare every video into <out_root>/<name>, ``jobs`` at a time (1: one after another, in this process).

    Returns:
        one ``Outcome`` per video, in the given order; failures carry their message (the others are prepared).
    """
    if jobs < 1:
        raise PrepareError(f"--jobs must be at least 1, not {jobs}")
    if cfg.roles:
        raise PrepareError("--roles says who speaks in one video: prepare that video on its own")
    outcomes = plan(videos, Path(out_root))
    jobs = min(jobs, len(outcomes))
    if jobs > 1 and not cfg.workers:  # the cores shared out among the jobs' own per-person processes
        cfg = dataclasses.replace(cfg, workers=max(1, (os.cpu_count() or 1) // jobs))
    bar = tqdm(total=len(outcomes), desc="videos", unit="video", disable=len(outcomes) < 2)
    if jobs == 1:
        for o in outcomes:
            log(f"{o.video} -> {o.out}")
            try:
                prepare(o.video, o.out, cfg, log=log)
            except Exception as e:  # (any failure is this video's alone: the others go on)
                o.error = _reason(e)
                log(f"{o.video}: not prepared: {o.error}")
            bar.update(1)
    else:
        pool = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
        # The jobs' own progress bars stay off (the bar of videos stands for them): tqdm reads TQDM_DISABLE when a
        # process imports it, so the jobs' processes are started with it set (all of them start at these submits).
        before = os.environ.get("TQDM_DISABLE")
        os.environ["TQDM_DISABLE"] = "1"
        try:
            running = {pool.submit(_job, o.video, o.out, cfg, verbose): o for o in outcomes}
        finally:
            if before is None:
                del os.environ["TQDM_DISABLE"]
            else:
                os.environ["TQDM_DISABLE"] = before
        try:
            for done in concurrent.futures.as_completed(running):
                o = running[done]
                try:
                    o.error = done.result()
                except Exception as e:  # (its process died: killed for memory, say)
                    o.error = _reason(e)
                log(f"{o.video}: " + (f"not prepared: {o.error}" if o.error else f"prepared into {o.out}"))
                bar.update(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    bar.close()
    return outcomes
