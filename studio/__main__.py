"""python -m studio: the local studio in the browser, from a conversation video to new conversations.

Serves the pages on http://127.0.0.1:7860 (this machine only; --host 0.0.0.0 opens it to the network):
  Prepare  upload a conversation video; prepare runs with its progress; QA pictures; name the persons
  Train    preset and time budget; live PSNR curve and validation picture; stop, resume; the avatar file
  Direct   upload or record speech; who speaks when, on the waveform and editable; layout, listener
           reactions; render, play, download
  Replay   drive an avatar with another dataset's recorded motion

Jobs run one at a time, in a queue; their state lives in the workspace folder (--workspace), so a page reload or
a restart finds them; the studio reads and writes nothing outside that folder.

Examples:
    make studio
    .venv/bin/python -m studio --workspace ~/avatars --port 8080
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configargparse  # noqa: E402

from common.console import quiet  # noqa: E402


def parse(argv=None):
    p = configargparse.ArgumentParser(prog="python -m studio", description=__doc__,
                                      formatter_class=configargparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", is_config_file=True, help="a config file of 'key = value' lines")
    p.add_argument("--workspace", default="studio_workspace",
                   help="the folder of uploads, datasets, avatars, renders and jobs (made when missing)")
    p.add_argument("--port", type=int, default=7860, help="the port to serve on")
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to listen on: 127.0.0.1 is this machine only; 0.0.0.0 lets other machines of "
                        "the network in (there is no login: only on a network you trust). No public link is "
                        "offered: Gradio's share tunnel downloads a program at run time, and this tool is offline")
    p.add_argument("--max_upload_mb", type=float, default=2048, help="the largest upload accepted, in MB")
    p.add_argument("--verbose", action="store_true", help="also show third-party warnings and logs, and the server's")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    quiet(args.verbose)
    from studio.workspace import Workspace

    if not 0 < args.port < 65536:
        print(f"error: --port {args.port} is not a port number", file=sys.stderr)
        return 2
    try:
        ws = Workspace(args.workspace, args.max_upload_mb)
    except OSError as e:
        print(f"error: cannot use {args.workspace} as the workspace ({e.strerror or e})", file=sys.stderr)
        return 2
    lock = open(ws.root / "jobs" / ".studio.lock", "w")  # (held while this studio runs; released at exit)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"error: another studio is using the workspace {ws.root}: stop it, or give another --workspace",
              file=sys.stderr)
        return 2
    # Ctrl-C and SIGTERM stop it, even where the shell started it with SIGINT ignored (a background job); set before
    # any job starts, so that the jobs' commands get the default SIGINT back (exec keeps an ignored signal ignored):
    # cancel relies on it
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # Gradio's upload cache inside the workspace, and nothing sent anywhere (before gradio is imported); the copies
    # an earlier run left there go (the workspace keeps every original)
    shutil.rmtree(ws.root / ".gradio", ignore_errors=True)
    os.environ["GRADIO_TEMP_DIR"] = str(ws.root / ".gradio")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("TQDM_MININTERVAL", "1")
    from studio.app import CSS, build
    from studio.jobs import JobQueue

    queue = JobQueue(ws.root / "jobs")
    app = build(ws, queue)
    import gradio as gr

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # (no web fonts: offline)
    try:
        app.queue(default_concurrency_limit=4).launch(
            server_name=args.host, server_port=args.port, quiet=not args.verbose, prevent_thread_lock=True,
            allowed_paths=[str(ws.root)], max_file_size=f"{args.max_upload_mb:g}mb", ssr_mode=False,
            footer_links=[], theme=theme, css=CSS, show_error=False)
    except OSError as e:
        queue.close()
        print(f"error: cannot serve on {args.host}:{args.port} ({str(e).splitlines()[0]}); try another --port",
              file=sys.stderr)
        return 1
    print(f"studio: http://{args.host}:{args.port} (workspace {ws.root}); Ctrl-C stops it", flush=True)
    try:
        while not stop.wait(0.5):
            pass
        print("studio: stopping (a running job is marked interrupted: Resume continues it)", flush=True)
    finally:
        queue.close()
        with contextlib.redirect_stdout(sys.stdout if args.verbose else io.StringIO()):
            app.close()  # (Gradio says "Closing server running on port ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
