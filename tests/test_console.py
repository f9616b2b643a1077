"""common.console: third-party C++ logs and library warnings off the console unless --verbose."""

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import os, sys, warnings
sys.path.insert(0, {root!r})
from common.console import quiet
quiet({verbose})
os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
os.write(2, b"W0000 00:00:1796220867.122867   15342 inference_feedback_manager.cc:114] Feedback manager\n")
os.write(2, b"train:  50%|#####     | 1/2\r")
warnings.warn("old API", DeprecationWarning)
import subprocess
import time
subprocess.run([sys.executable, "-c", "import os; os.write(2, b'I1202 10:00:00.000001  77 gl_context.cc:357] GL\\n'); "
                "import sys; print('error: from a child', file=sys.stderr)"])
print("error: ours", file=sys.stderr)
"""


def _stderr(verbose: bool) -> str:
    code = SCRIPT.format(root=str(ROOT), verbose=verbose)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stderr


def test_third_party_logs_are_dropped_and_ours_kept_also_from_child_processes():
    err = _stderr(False)
    assert "TensorFlow Lite" not in err and "inference_feedback_manager" not in err and "gl_context" not in err
    assert "old API" not in err
    assert "train:  50%" in err and "error: ours" in err and "error: from a child" in err


def test_verbose_shows_everything():
    err = _stderr(True)
    assert "TensorFlow Lite" in err and "inference_feedback_manager" in err and "gl_context" in err
    assert "error: ours" in err


def test_a_child_that_outlives_the_command_does_not_hold_its_exit():
    # (a worker pool's fork server holds stderr's pipe until it notices its parent is gone: prepare's exit used to wait
    # 2 s for the filter thread, which waited for the pipe's end)
    code = (f"import sys, subprocess; sys.path.insert(0, {str(ROOT)!r})\n"
            "from common.console import quiet\nquiet(False)\n"
            "subprocess.Popen(['sleep', '4'])\n"
            "sys.stderr.write('error: the last line, unfinished')\n")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    proc.wait(timeout=60)
    took = time.perf_counter() - t0
    assert took < 1.5, took
    assert proc.stderr.read() == "error: the last line, unfinished"  # (the sleep holds the filter's pipe, not this one)
