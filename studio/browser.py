"""Driving the studio's pages from a real browser (Playwright's Python API on Debian's chromium, nothing
downloaded): what the browser test and ``scripts/studio_tour.py`` share."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# headless in a container (no sandbox, no GPU), and nothing fetched in the background
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(workspace: Path, log_path: Path, env: dict | None = None, timeout_s: float = 120):
    """A studio (``python -m studio``) on a free port of 127.0.0.1 in ``workspace``; yields its URL."""
    port = free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "studio", "--workspace", str(workspace), "--port", str(port)],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        deadline = time.time() + timeout_s
        while "studio: http" not in log_path.read_text():
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("the studio did not start: " + log_path.read_text()[-2000:])
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            stopped = proc.wait(15) is not None
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            stopped = False
    if not stopped:
        raise RuntimeError("the studio did not stop within 15 s of Ctrl-C (SIGINT)")


def _job_shown(page, kind: str) -> str | None:
    panel = page.locator(f"#{kind}-status [data-job]")
    return panel.first.get_attribute("data-job") if panel.count() else None


def wait_job(page, kind: str, timeout_s: float) -> None:
    """Wait until the newest job of ``kind`` ends on its panel; a failed one raises with its panel's text."""
    page.wait_for_selector(f'#{kind}-status [data-status="done"], #{kind}-status [data-status="failed"]',
                           timeout=timeout_s * 1000)
    failed = page.locator(f'#{kind}-status [data-status="failed"]')
    if failed.count():
        raise AssertionError(failed.inner_text())


def start_job(page, button: str, kind: str) -> None:
    """Click a page's button that queues a job of ``kind``, and wait until the panel shows that new job (its id, not
    the previous job's)."""
    before = _job_shown(page, kind)
    page.locator(button).click()
    deadline = time.time() + 60
    while _job_shown(page, kind) in (before, None):
        if time.time() > deadline:
            raise AssertionError(f"no {kind} job started: " + " | ".join(page.locator(".studio-error").all_inner_texts()))
        time.sleep(0.2)


def choose(page, elem_id: str, option: str) -> None:
    """Pick ``option`` in the dropdown ``elem_id``."""
    page.locator(f"#{elem_id} input").click()
    page.locator(f"#{elem_id}").get_by_role("option", name=option, exact=True).click()


def video_plays(page, elem_id: str) -> list:
    """[currentTime after 0.3 s of playing, videoWidth, error] of the page's video element in ``elem_id``."""
    video = page.locator(f"#{elem_id} video")
    video.wait_for(timeout=30_000)
    return video.evaluate("v => { v.muted = true; return v.play().then(() => new Promise(r => setTimeout(r, 300)))"
                          ".then(() => [v.currentTime, v.videoWidth, v.error ? v.error.message : null]); }")
