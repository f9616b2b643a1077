"""The studio's jobs: the project's own commands run one after another by one worker, their state on disk.

A job is a list of steps (command lines of scripts/*.py) with a kind (prepare, train, render, replay) and the
folder it makes. Its state lives in ``<workspace>/jobs/<id>/job.json`` (written atomically) and everything the
commands print in ``log.txt`` beside it, so a page reload, or a restart of the studio, finds every job as it was.
One worker thread runs the queue in order, one job at a time: the machine's cores (or its GPU) go to one job.

Cancel: a queued job is dropped; a running one gets SIGINT, which the commands handle as Ctrl-C (train.py writes
a checkpoint and stops), then SIGTERM and SIGKILL if it has not ended. Every command resumes where it stopped
(prepare's stages, train.py --resume, render.py's chunks), so ``resume`` queues a stopped job again from the step
that did not finish. A job that was running when the studio stopped is marked ``interrupted`` at the next start.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from common.atomic_io import atomic_path

ROOT = Path(__file__).resolve().parents[1]
QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED = "queued", "running", "done", "failed", "cancelled", "interrupted"
ENDED = (DONE, FAILED, CANCELLED, INTERRUPTED)
# tqdm's bar as the commands print it: "train:  42%|####      | 336/800 [...]"
STOPPED = "the studio stopped while this job ran; resume continues it"
_BAR = re.compile(r"(?P<desc>[A-Za-z][\w /.+-]{0,40}):\s+(?P<pct>\d{1,3})%\|")


@dataclasses.dataclass
class Job:
    """One job's state (``job.json``). ``steps``: command lines (without the interpreter) run from the repository
    root; ``step``: the index of the step under way or next; ``error``: the command's one-line error."""

    id: str
    kind: str
    title: str
    steps: list[list[str]]
    target: str  # the folder or file it makes, relative to the workspace
    status: str = QUEUED
    step: int = 0
    created: float = 0.0
    started: float | None = None
    ended: float | None = None
    error: str = ""
    cancel: bool = False

    @property
    def finished(self) -> bool:
        return self.status in ENDED


STOP_TERM_S, STOP_KILL_S = 60, 90  # a cancelled command gets SIGINT, then SIGTERM, then SIGKILL after these


class JobQueue:
    """The jobs of one workspace folder, run by one worker thread.

    Args:
        folder: ``<workspace>/jobs``.
        start: start the worker (tests may inspect the queue without running it).
    """

    def __init__(self, folder: Path, start: bool = True):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._stop = False
        for job in self.jobs():  # (the studio stopped while it ran: its command died with it)
            if job.status == RUNNING:
                self._save(dataclasses.replace(job, status=INTERRUPTED, ended=time.time(),
                                               error=STOPPED))
        self._thread = threading.Thread(target=self._work, name="studio-jobs", daemon=True)
        if start:
            self._thread.start()

    # --- state on disk ---
    def _path(self, job_id: str) -> Path:
        return self.folder / job_id / "job.json"

    def log_path(self, job_id: str) -> Path:
        return self.folder / job_id / "log.txt"

    def _save(self, job: Job) -> None:
        with self._lock, atomic_path(self._path(job.id)) as tmp:
            tmp.write_text(json.dumps(dataclasses.asdict(job), indent=1))

    def get(self, job_id: str) -> Job | None:
        path = self._path(job_id)
        try:
            return Job(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def jobs(self, kind: str | None = None) -> list[Job]:
        """Every job, oldest first (ids sort by creation)."""
        found = (self.get(p.name) for p in sorted(self.folder.iterdir()) if p.is_dir())
        return [j for j in found if j is not None and (kind is None or j.kind == kind)]

    def busy(self, target: str) -> Job | None:
        """The unfinished job (queued or running) that writes ``target``, if any."""
        return next((j for j in self.jobs() if j.target == target and not j.finished), None)

    def latest(self, kind: str, target: str | None = None) -> Job | None:
        jobs = [j for j in self.jobs(kind) if target is None or j.target == target]
        return jobs[-1] if jobs else None

    # --- what the pages do ---
    def submit(self, kind: str, title: str, steps: list[list[str]], target: str) -> Job:
        """Queue a job; a job still queued or running for the same target is refused (ValueError)."""
        with self._lock:
            busy = self.busy(target)
            if busy:
                raise ValueError(f"{target} already has a job {busy.status} ({busy.id}): wait for it or cancel it")
            stamp = time.strftime("%Y%m%d-%H%M%S")
            n = sum(1 for p in self.folder.iterdir() if p.name.startswith(stamp))
            job = Job(id=f"{stamp}-{n:02d}-{kind}", kind=kind, title=title, steps=steps, target=target,
                      created=time.time())
            self._save(job)
        self._wake.set()
        return job

    def cancel(self, job_id: str) -> Job | None:
        """Drop a queued job, or stop a running one (its command checkpoints where it can)."""
        with self._lock:
            job = self.get(job_id)
            if job is None or job.finished:
                return job
            if job.status == QUEUED:
                job = dataclasses.replace(job, status=CANCELLED, ended=time.time())
                self._save(job)
                return job
            job = dataclasses.replace(job, cancel=True)
            self._save(job)
        return job  # (the worker sends the command one SIGINT within 0.5 s: a second one would mean "at once")

    def resume(self, job_id: str) -> Job | None:
        """Queue a stopped job again, from the step that did not finish."""
        with self._lock:
            job = self.get(job_id)
            if job is None or job.status not in (FAILED, CANCELLED, INTERRUPTED):
                return job
            busy = self.busy(job.target)
            if busy:
                raise ValueError(f"{job.target} already has a job {busy.status} ({busy.id})")
            job = dataclasses.replace(job, status=QUEUED, error="", cancel=False, ended=None)
            self._save(job)
        self._wake.set()
        return job

    def progress(self, job: Job) -> tuple[float, str]:
        """(fraction done in [0, 1], a line saying what runs), read from the tail of the job's log."""
        if job.status == DONE:
            return 1.0, "done"
        try:
            with open(self.log_path(job.id), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 8192))
                tail = f.read().decode("utf-8", "replace")
        except OSError:
            tail = ""
        frac, what = 0.0, ""
        bars = list(_BAR.finditer(tail))
        lines = [s.strip() for s in re.split(r"[\r\n]", tail) if s.strip()]
        if bars:
            frac = min(int(bars[-1]["pct"]), 100) / 100
            what = f"{bars[-1]['desc'].strip()} {bars[-1]['pct']}%"
        elif lines:
            what = lines[-1][:160]
        n = max(len(job.steps), 1)
        return (min(job.step, n) + frac) / n, f"step {min(job.step + 1, n)} of {n}: {what}" if what else ""

    def log_tail(self, job_id: str, lines: int = 40) -> str:
        try:
            text = self.log_path(job_id).read_text(errors="replace")
        except OSError:
            return ""
        # (a progress bar redrawn in place is one line, as a terminal shows it)
        shown = [s.rsplit("\r", 1)[-1] for s in text.replace("\r\n", "\n").split("\n")]
        return "\n".join(s for s in shown[-lines:])

    def close(self, timeout: float = STOP_KILL_S + 10) -> None:
        """Stop the worker; a running command is stopped as by cancel (SIGINT, then SIGTERM, SIGKILL), its job
        marked interrupted, and no further step starts."""
        self._stop = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- the worker ---
    def _next(self) -> Job | None:
        queued = [j for j in self.jobs() if j.status == QUEUED]
        return queued[0] if queued else None

    def _work(self) -> None:
        while not self._stop:
            job = self._next()
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                self._run(job)
            except Exception as e:  # (the worker outlives any one job)
                with self._lock:
                    failed = self.get(job.id) or job
                    self._save(dataclasses.replace(failed, status=FAILED, ended=time.time(),
                                                   error=f"the studio could not run this job: {e}"))

    def _run(self, job: Job) -> None:
        with self._lock:
            job = self.get(job.id)
            if job is None or job.status != QUEUED:
                return
            job = dataclasses.replace(job, status=RUNNING, started=time.time())
            self._save(job)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path(job.id), "ab") as log:
            rc = 0
            while job.step < len(job.steps):
                with self._lock:
                    job = self.get(job.id) or job
                    if job.cancel or self._stop:  # (before the next step starts)
                        break
                cmd = [sys.executable, *job.steps[job.step]]
                log.write(f"\n$ {' '.join(cmd[1:])}\n".encode())
                log.flush()
                # its own session: a Ctrl-C in the studio's terminal reaches the studio alone, which passes one
                # SIGINT on (a second one tells train.py to stop at once, without its checkpoint)
                proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
                with self._lock:
                    self._proc = proc
                rc = self._wait(proc, job.id)
                with self._lock:
                    self._proc = None
                    job = self.get(job.id) or job
                    if rc == 0 and not job.cancel:
                        job = dataclasses.replace(job, step=job.step + 1)
                        self._save(job)
                        continue
                    break
            with self._lock:
                job = self.get(job.id) or job
                if job.step < len(job.steps):
                    if job.cancel or self._stop:
                        status = CANCELLED if job.cancel else INTERRUPTED
                        job = dataclasses.replace(job, status=status, ended=time.time(), cancel=False,
                                                  error="" if job.cancel else STOPPED)
                    else:
                        job = dataclasses.replace(job, status=FAILED, ended=time.time(),
                                                  error=_error_line(self.log_path(job.id), rc))
                    self._save(job)
                    return
        with self._lock:
            job = self.get(job.id) or job
            self._save(dataclasses.replace(job, status=DONE, ended=time.time()))

    def _wait(self, proc: subprocess.Popen, job_id: str) -> int:
        """Wait for the command; on a cancel or a stop, send it one SIGINT (train.py checkpoints), then SIGTERM after
        STOP_TERM_S, SIGKILL after STOP_KILL_S."""
        asked = None
        while True:
            try:
                return proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            job = self.get(job_id)
            if (job is not None and job.cancel) or self._stop:
                if asked is None:
                    asked = time.time()
                    proc.send_signal(signal.SIGINT)
                elif time.time() - asked > STOP_KILL_S:
                    proc.kill()
                elif time.time() - asked > STOP_TERM_S:
                    proc.terminate()


def _error_line(log: Path, rc: int) -> str:
    """The command's own one-line error (its last line starting with 'error:'), or its exit status."""
    try:
        lines = log.read_text(errors="replace").replace("\r", "\n").splitlines()
    except OSError:
        lines = []
    for line in reversed(lines[-200:]):
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    return f"the command ended with exit status {rc} (the log below says why)"
