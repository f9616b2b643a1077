#!/usr/bin/env python
"""Benchmark one network for K persons against K networks, one per person (the paper's central claim).

For K growing as datasets are added in the order given (K = the persons of the first dataset, of the first two, ...),
trains scripts/train.py twice on the same data, --model shared (one network, a latent code per person) and --model
per_person (a network per person, the AD-NeRF-style baseline), each in its own process, and prints per K and model:
parameters, peak memory of the process (RSS; table.json also keeps the peak CUDA memory on a GPU), training time
(validation left out), the mean held-out PSNR at the end, and the training time each took to first reach a common
PSNR: the lower of the two final means at that K (read off the validation curve in summary.json, interpolated).
--seed repeats it over several seeds (the table shows means); runs already finished in --out are reused. This is a
benchmark, not a test: run it on a quiet machine.

Example (the table of docs/PERFORMANCE.md, on the dev clips prepared with scripts/prepare.py):
    python scripts/bench_persons.py --data data/interview --data data/debate8 --data data/panel3 \\
        --train_config configs/cpu_tiny.txt --iters 800 --val_every 100 --seed 0 --seed 1 --out runs/persons
"""

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configargparse  # noqa: E402
import numpy as np  # noqa: E402

from common import dataset  # noqa: E402
from common.errors import PrepareError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("shared", "per_person")


def run(data: list[str], model: str, seed: int, out: Path, args) -> dict:
    """One training process; its summary.json with the process's peak RSS (MiB) added (kept in peak.json: a run
    already finished in ``out`` is read, not repeated, so an interrupted benchmark goes on where it stopped)."""
    if (out / "summary.json").is_file() and (out / "peak.json").is_file():
        return {**json.loads((out / "summary.json").read_text()), **json.loads((out / "peak.json").read_text())}
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--model", model, "--out", str(out),
           "--iters", str(args.iters), "--val_every", str(args.val_every), "--ckpt_every", str(args.iters),
           "--seed", str(seed)]
    if args.train_config:
        cmd += ["--config", args.train_config]
    for d in data:
        cmd += ["--data", d]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # (this child's own resource use: its peak RSS)
    if os.waitstatus_to_exitcode(status) != 0:
        tail = (out / "train.log").read_text().strip().splitlines() or ["?"]
        raise SystemExit(f"error: {' '.join(cmd)} failed: {tail[-1]}")
    peak = {"peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}  # (KiB on Linux)
    (out / "peak.json").write_text(json.dumps(peak) + "\n")
    return {**json.loads((out / "summary.json").read_text()), **peak}


def final_psnr(facts: dict) -> float:
    """The mean held-out PSNR over the persons at the last validation (as the curve has it)."""
    return float(np.mean(list(facts["val_history"][-1]["psnr"].values())))


def time_to(history: list[dict], target: float) -> float:
    """Training seconds until the mean held-out PSNR first reaches ``target`` (linear between validations)."""
    prev_t, prev_p = 0.0, -np.inf
    for h in history:
        p = float(np.mean(list(h["psnr"].values())))
        if p >= target:
            if not np.isfinite(prev_p):
                return h["train_seconds"]
            return prev_t + (target - prev_p) / (p - prev_p) * (h["train_seconds"] - prev_t)
        prev_t, prev_p = h["train_seconds"], p
    return float("nan")


def main(argv=None) -> int:
    p = configargparse.ArgumentParser(description=__doc__, formatter_class=configargparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", is_config_file=True, help="a config file of 'key = value' lines")
    p.add_argument("--data", action="append", required=True, help="a prepared dataset (repeatable; K grows with each)")
    p.add_argument("--train_config", default="configs/cpu_tiny.txt", help="train.py's config file for every run")
    p.add_argument("--iters", type=int, default=800, help="training iterations of every run")
    p.add_argument("--val_every", type=int, default=100, help="iterations between validations (the PSNR curve)")
    p.add_argument("--seed", type=int, action="append", default=None, help="seed (repeatable; default 0)")
    p.add_argument("--out", default="runs/bench_persons", help="folder of the runs and of table.json")
    args = p.parse_args(argv)
    seeds = args.seed or [0]
    try:
        counts = [len(dataset.read_meta(d)["persons"]) for d in args.data]
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = Path(args.out)
    rows = []
    for n in range(1, len(args.data) + 1):
        data, K = args.data[:n], sum(counts[:n])
        runs = {m: [] for m in MODELS}
        for seed in seeds:
            for m in MODELS:
                print(f"K={K} {m} seed {seed} ...", flush=True)
                runs[m].append(run(data, m, seed, out / f"K{K}_{m}_s{seed}", args))
        finals = {m: [final_psnr(r) for r in rs] for m, rs in runs.items()}
        for m, rs in runs.items():
            reach = [time_to(r["val_history"], min(finals[o][i] for o in MODELS)) for i, r in enumerate(rs)]
            rows.append({"K": K, "model": m, "parameters": rs[0]["parameters"],
                         "peak_rss_mib": round(float(np.mean([r["peak_rss_mib"] for r in rs])), 0),
                         "peak_gpu_gib": rs[0].get("peak_gpu_memory_gib"),
                         "train_s": round(float(np.mean([r["val_history"][-1]["train_seconds"] for r in rs])), 1),
                         "psnr": round(float(np.mean(finals[m])), 2),
                         "psnr_seeds": [round(x, 2) for x in finals[m]],
                         "time_to_common_psnr_s": round(float(np.mean(reach)), 1)})
    (out / "table.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("| K | model | parameters | peak RSS (MiB) | training s | held-out PSNR (dB) | s to the common PSNR |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['K']} | {r['model']} | {r['parameters'] / 1e6:.2f} M | {r['peak_rss_mib']:.0f} | {r['train_s']:.0f} | "
              f"{r['psnr']:.2f} ({', '.join(f'{x:.2f}' for x in r['psnr_seeds'])}) | {r['time_to_common_psnr_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
