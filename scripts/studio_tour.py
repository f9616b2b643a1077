#!/usr/bin/env python
"""The studio clicked through in a real browser, as a new user would, timed; and the README's screenshots.

In a fresh workspace it starts the studio (python -m studio) and, in Debian's headless chromium driven by
Playwright, clicks: Prepare - "Make the example clips", then prepare the example conversation (128 px crops, as the
CPU preset trains at 64); Train - the CPU quick look with its own iterations; Direct - the example speech, "Who
speaks when?", render all of it; Replay - 2 s of the avatar driven by its dataset's recorded motion.
It prints the time of each step (what a person waits for, not counting their own clicks) and saves a screenshot
of each page (prepare.png, train.png, direct.png, replay.png) into --shots.

Example (the README's pictures and docs/PERFORMANCE.md's studio row):
    .venv/bin/python scripts/studio_tour.py --shots docs/studio
"""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configargparse  # noqa: E402

from common.console import quiet  # noqa: E402

REPLAY_S = 2.0  # (the Replay page is shown rendering a short clip: its time is not part of the path measured)


def tour(url: str, shots: Path, say) -> list[tuple[str, float]]:
    from playwright.sync_api import sync_playwright

    from studio.browser import CHROMIUM, CHROMIUM_ARGS, choose, start_job, video_plays, wait_job

    t0, steps = time.perf_counter(), []

    def step(what: str) -> None:
        steps.append((what, time.perf_counter() - t0 - sum(s for _, s in steps)))
        say(f"{time.perf_counter() - t0:6.0f} s  {what} ({steps[-1][1]:.0f} s)")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        step("page loaded")
        start_job(page, "text=Make the example clips", "prepare")
        wait_job(page, "prepare", 600)
        step("example clips made (8 s conversation, 8 s of other speech)")
        choose(page, "prepare-existing", "example/conversation.mp4")
        page.locator("#prepare-crop").get_by_label("128").check()
        start_job(page, "#prepare-run", "prepare")
        wait_job(page, "prepare", 1800)
        step("prepared")
        choose(page, "prepare-dataset", "example")
        page.locator("#prepare-qa img").first.wait_for(timeout=30_000)
        page.screenshot(path=str(shots / "prepare.png"), full_page=True)

        page.get_by_role("tab", name="Train").click()
        choose(page, "train-dataset", "example")
        start_job(page, "#train-run", "train")
        wait_job(page, "train", 3600)
        step("trained: the avatar (CPU quick look) and its head motion")
        page.locator('#train-files a[download="example-avatar.pt"]').wait_for(timeout=30_000)
        page.screenshot(path=str(shots / "train.png"), full_page=True)

        page.get_by_role("tab", name="Direct").click()
        choose(page, "direct-avatar", "example")
        choose(page, "direct-speech-pick", "example_speech/conversation.mp4")
        page.locator("#direct-guess").click()
        page.wait_for_selector('#direct-turns [data-testid="cell-0-2"]', timeout=120_000)
        step("who speaks when, guessed from the avatar's voices")
        start_job(page, "#direct-run", "render")
        wait_job(page, "render", 3600)
        played = video_plays(page, "direct-video")
        if not played[0] > 0 or played[2]:
            raise AssertionError(f"the rendered video does not play: {played}")
        step("rendered all the speech, the video playing")
        page.screenshot(path=str(shots / "direct.png"), full_page=True)

        page.get_by_role("tab", name="Replay").click()
        choose(page, "replay-avatar", "example")
        choose(page, "replay-data", "example")
        page.locator("#replay-seconds input").fill(f"{REPLAY_S:g}")
        start_job(page, "#replay-run", "replay")
        wait_job(page, "replay", 3600)
        video_plays(page, "replay-video")
        step(f"replayed {REPLAY_S:g} s of recorded motion")
        page.screenshot(path=str(shots / "replay.png"), full_page=True)
        browser.close()
    return steps


def main(argv=None) -> int:
    p = configargparse.ArgumentParser(description=__doc__, formatter_class=configargparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", is_config_file=True, help="a config file of 'key = value' lines")
    p.add_argument("--shots", default="studio_tour", help="folder for the four screenshots")
    p.add_argument("--workspace", default=None, help="the studio's workspace (made fresh; default: a temporary one)")
    p.add_argument("--verbose", action="store_true", help="also show third-party warnings and logs")
    args = p.parse_args(argv)
    quiet(args.verbose)
    from playwright.sync_api import Error as PlaywrightError

    from studio.browser import CHROMIUM, served

    if CHROMIUM is None:
        print("error: no chromium on this machine (make browser installs Debian's)", file=sys.stderr)
        return 2
    shots = Path(args.shots)
    shots.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as td:
        ws = Path(args.workspace) if args.workspace else Path(td) / "ws"
        if ws.exists() and any(ws.iterdir()):
            print(f"error: --workspace {ws} is not empty: the tour starts from a fresh one", file=sys.stderr)
            return 2
        try:
            with served(ws, Path(td) / "studio.log") as url:
                print(f"studio at {url}, workspace {ws}")
                steps = tour(url, shots, print)
        except (AssertionError, RuntimeError, PlaywrightError) as e:
            print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
            return 1
    total = sum(s for w, s in steps if not w.startswith("replayed"))
    print(f"the whole path, video to a rendered conversation with new speech: {total:.0f} s "
          f"({total / 60:.1f} min); screenshots in {shots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
