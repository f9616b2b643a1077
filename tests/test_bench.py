"""scripts/bench.py runs on a CPU machine (reference rows only) and writes its table and JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a short training run, then a benchmark's end-to-end run (60 s)
def test_bench_on_cpu_times_training_and_rendering_and_a_trained_models_step_through_its_occupancy_grid(synthetic,
                                                                                                       tmp_path):
    """Every row a CPU gives, in one run: the reference hash grid, training from scratch at the preset, rendering
    (every sample, the grid, float16, marching, fewer samples), and on the trained model the training step with
    every sample and through its grid: the grid leaves out the queries of empty cells, so the same batches give
    about the same loss (the culled samples held next to no density)."""
    from nerf.trainer import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(data=[str(synthetic["dataset"])], out=str(run), iters=150, image_size=32, batch_rays=128,
                      n_coarse=8, n_importance=4, hidden=16, n_levels=4, log2_hashmap_size=10, base_resolution=4,
                      finest_resolution=64, lr=5e-3, lr_hash=3e-2, audio_pretrain_iters=2, val_every=10**9,
                      ckpt_every=10**9), progress=False)
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--device", "cpu", "--repeats", "2",
                           "--data", str(synthetic["dataset"]), "--preset", str(ROOT / "configs" / "cpu_tiny.txt"),
                           "--ckpt", str(run / "checkpoint.pt"), "--train_iters", "2", "--render_frames", "1",
                           "--march_steps", "16", "--ray_samples", "4+2", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "CUDA absent" in proc.stdout and "| row |" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    names = [r["row"] for r in rows]
    assert sum(n.startswith("hash grid reference") for n in names) == 2
    assert any(n.startswith("training") and "trained model" not in n and r["iterations_per_s"] > 0
               for n, r in zip(names, rows))
    render = [r for r in rows if r["row"].startswith("render")]
    assert len(render) == 7 and all(r["frames_per_s"] > 0 for r in render)
    assert render[2]["psnr_vs_float32_db"] > 30  # float16 autocast against float32, same frame
    assert all("marching 16 steps" in r["row"] and r["queries_per_ray"] > 0 and r["psnr_vs_sampled_db"] > 15
               for r in render[3:5])
    assert all("4+2 samples per field" in r["row"] and "queries_per_ray" not in r and r["psnr_vs_sampled_db"] > 15
               for r in render[5:])
    by_name = dict(zip(names, rows))
    (every,) = [r for n, r in by_name.items() if n.startswith("training step of the trained model (128 rays, every")]
    (grid,) = [r for n, r in by_name.items() if n.startswith("training step of the trained model (128 rays, through")]
    assert every["iterations_per_s"] > 0 and grid["iterations_per_s"] > 0
    assert abs(every["photo_psnr_db"] - grid["photo_psnr_db"]) < 0.5 and every["photo_psnr_db"] > 15


@pytest.mark.slow  # the benchmark's command, started a dozen times (12 s)
def test_bench_refuses_a_folder_that_is_no_dataset_and_bad_row_lists(tmp_path):
    def bench(*args):
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--device", "cpu", *args],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)

    proc = bench("--data", str(tmp_path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "no meta.json" in proc.stderr
    for flag, value, said in (("--ray_samples", "24-16", "COARSE+IMPORTANCE"), ("--march_steps", "0", "positive"),
                              ("--march_shapes", "60x4", "BLOCKxWARPS"), ("--march_shapes", "64x", "BLOCKxWARPS")):
        proc = bench(flag, value)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr and said in proc.stderr, proc.stderr
        assert "hash grid" not in proc.stdout  # refused before any benchmark ran


def test_the_gpu_script_passes_only_options_its_commands_have():
    """scripts/gpu_acceptance.sh runs only on a lent GPU: a flag a command no longer has would fail there, unseen."""
    import importlib
    import re

    sys.path.insert(0, str(ROOT))
    text = (ROOT / "scripts" / "gpu_acceptance.sh").read_text()
    # each command with its continuation lines, the comments' example commands included
    commands = re.findall(r"scripts/(\w+)\.py((?:[^\n]*\\\n)*[^\n]*)", text)
    assert {name for name, _ in commands} >= {"train", "evaluate", "bench", "render", "prepare"}
    for name, args in commands:
        parser = importlib.import_module(f"scripts.{name}")
        known = set()
        if hasattr(parser, "build_parser"):
            known = {s for a in parser.build_parser()._actions for s in a.option_strings}
        if not known:  # (scripts whose parser lives inside main: their --help lists the options)
            out = subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), "--help"], capture_output=True,
                                 text=True, timeout=120).stdout
            known = set(re.findall(r"(--[a-z_]+)", out))
        used = set(re.findall(r"(?<![\w-])(--[a-z][a-z_]*)", args))
        assert used <= known, f"{name}.py has no {sorted(used - known)}"
