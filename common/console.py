"""A quiet console: third-party warnings and logs kept off the terminal unless ``--verbose``.

mediapipe's TensorFlow Lite and absl write straight to the process's stderr from C++ ("INFO: Created TensorFlow Lite
XNNPACK delegate", "W0000 ... inference_feedback_manager.cc"), in the worker processes too, and protobuf warns
through Python about an API mediapipe uses. ``quiet(verbose)`` silences the Python warnings of third-party modules
(also in child processes, through ``PYTHONWARNINGS``) and routes file descriptor 2 through a filter thread that drops
the C++ log lines and passes everything else (our messages, progress bars, errors) through unchanged.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading
import warnings

THIRD_PARTY_LINE = re.compile(rb"^(INFO: Created TensorFlow Lite|WARNING: All log messages before absl::InitializeLog"
                              rb"|[IWEF]\d{4} [\d:.]+\s+\d+ [\w./-]+:\d+\])")
"""A C++ log line of TensorFlow Lite, absl or glog."""
QUIET_WARNINGS = ("ignore::UserWarning:google.protobuf.symbol_database", "ignore::DeprecationWarning",
                  "ignore::FutureWarning")
"""``PYTHONWARNINGS`` entries (inherited by worker processes): protobuf's deprecation notice that mediapipe triggers,
and the deprecation and future warnings of libraries (ours are errors or messages, never warnings of these kinds)."""

_END = b"\x00quiet: end of the filter\n"
"""Written by the process at exit behind its last stderr output: the filter thread stops there. (It cannot wait for the
pipe's end: child processes that outlive the command, as a worker pool's fork server does, hold its write side.)"""
_installed = False


def quiet(verbose: bool = False) -> None:
    """Silence third-party warnings and C++ logs for the rest of the process (and its children); nothing with
    ``verbose``. Call it first thing in a command's main."""
    global _installed
    if verbose or _installed:
        return
    _installed = True
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS", ""), *QUIET_WARNINGS]))
    warnings.filterwarnings("ignore", category=UserWarning, module=r"google\.protobuf")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        sys.stderr.flush()
        real = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
    except OSError:  # no stderr to route (a closed descriptor): nothing to filter
        return
    pump = threading.Thread(target=_pump, args=(read, real), daemon=True)
    pump.start()

    def restore() -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(real, 2)
        try:
            os.write(write, _END)  # the pump passes on what came before, and ends
        except OSError:  # (the pump had already stopped)
            pass
        finally:
            os.close(write)
        pump.join(timeout=2.0)

    atexit.register(restore)


def _pump(read: int, real: int) -> None:
    """Copy the pipe to the real stderr, line by line (a progress bar's carriage return ends a line too), dropping
    third-party log lines; a partial line that cannot start one is passed on at once (progress bars stay live)."""
    buf = b""
    while True:
        try:
            chunk = os.read(read, 65536)
        except OSError:
            break
        if not chunk:
            break
        buf += chunk
        while True:
            ends = [i for i in (buf.find(b"\n"), buf.find(b"\r")) if i >= 0]
            if not ends:
                break
            cut = min(ends) + 1
            line, buf = buf[:cut], buf[cut:]
            if line.endswith(_END):  # (behind a partial line held back)
                line = line[: -len(_END)]
                if line and not THIRD_PARTY_LINE.match(line):
                    os.write(real, line)
                os.close(read)
                return
            if not THIRD_PARTY_LINE.match(line):
                os.write(real, line)
        if buf and not buf[:1].isupper():
            os.write(real, buf)
            buf = b""
    if buf and not THIRD_PARTY_LINE.match(buf):
        os.write(real, buf)
    os.close(read)
