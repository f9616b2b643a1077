"""The fused marching kernel builds for the H100 (sm_90) on a machine without a GPU (scripts/kernel_report.py).

Triton's CPU interpreter (tests/test_fused_march.py) runs the kernel's arithmetic but compiles nothing, so a kernel
that only fails in Triton's or NVIDIA's compilers (block-product shapes, layouts, types) would pass every other test
and first fail on a lent GPU. This builds it ahead of time with the arguments a render passes, for the renderer's
shape and configs/gpu_full.txt's sizes, in a process of its own (the tests' interpreter setting stays out of it).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


def _report(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "kernel_report.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # Triton's ahead-of-time build for sm_90 (25 s)
def test_the_fused_kernel_builds_for_sm90_without_a_gpu(tmp_path):
    from nerf import fused_march

    shape = f"{fused_march.BLOCK}x{fused_march.NUM_WARPS}"
    out = _report("--config", "configs/gpu_full.txt", "--variants", shape, "--json", str(tmp_path / "k.json"))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "k.json").read_text())["rows"]
    assert [r["precision"] for r in rows] == ["float32", "float16"]
    for r in rows:
        assert 0 < r["registers"] <= 255  # ptxas's report was read
        assert r["spill_stores"] is not None and r["build_s"] > 0
        # the whole kernel once took 15 minutes to build (every level unrolled, 64-bit remainders): a bound well
        # above today's tens of seconds on this 2-core box, well below that
        assert r["build_s"] < 300, r
    assert f"| float16 | {fused_march.BLOCK} x {fused_march.NUM_WARPS} |" in out.stdout
    # the head alone (a model with the torso layer marches its head through the kernel)
    out = _report("--config", "configs/gpu_full.txt", "--variants", shape, "--torso", "none", "--precision", "float16")
    assert out.returncode == 0, out.stderr[-3000:]


def test_bad_variants_are_a_one_line_error():
    out = _report("--variants", "60x4")
    assert out.returncode != 0
    assert "error: --variants: '60x4' is not BLOCKxWARPS" in out.stderr and "Traceback" not in out.stderr
