#!/usr/bin/env python
"""Benchmark prepare: speed in multiples of real time, per stage, and dataset size.

Runs prepare from scratch (--force) on the synthetic two-person conversation
and, when ../shared/data/dev is present, on the real two-person recordings
there (a split-screen interview, 17.5 s, and a debate, 8 s). Prints one
table; --json writes the figures too. This is a benchmark, not a test:
numbers depend on the machine, and a shared machine's speed drifts (compare
two versions run in turn, not single figures).
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configargparse  # noqa: E402

from common.console import quiet  # noqa: E402
from data_prep.pipeline import PrepareConfig, prepare  # noqa: E402
from data_prep.synthetic import make_conversation  # noqa: E402

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev"
REAL_CLIPS = [("interview 1280x720 (real)", "conv_split_interview_17s.mp4"),
              ("debate 1280x720 (real)", "conv_split_debate_8s.avi")]


def dir_size(path: Path, pattern: str = "*") -> int:
    return sum(f.stat().st_size for f in path.rglob(pattern) if f.is_file() and ".stages" not in f.parts)


def bench(name: str, video: Path, out: Path, crop: int) -> dict:
    t0 = time.perf_counter()
    ds = prepare(video, out, PrepareConfig(crop_size=crop, force=True), log=lambda *_: None)
    wall = time.perf_counter() - t0
    meta = json.loads((ds / "meta.json").read_text())
    seconds = meta["n_frames"] / meta["fps"]
    size = dir_size(ds)
    return {"clip": name, "persons": len(meta["persons"]), "seconds": round(seconds, 2), "crop": crop,
            "wall_s": round(wall, 1), "x_realtime": round(seconds / wall, 3),
            "stages_s": meta["timings_s"], "dataset_mb": round(size / 1e6, 2),
            "mb_per_30s": round(size / 1e6 * 30 / seconds, 1)}


def main(argv=None) -> int:
    p = configargparse.ArgumentParser(description=__doc__, formatter_class=configargparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbose", action="store_true", help="also show third-party warnings and logs "
                   "(TensorFlow Lite, absl, protobuf)")
    p.add_argument("--config", is_config_file=True, help="a config file of 'key = value' lines")
    p.add_argument("--crop_size", type=int, default=512, help="crop side to benchmark at")
    p.add_argument("--seconds", type=float, default=15.0, help="length of the synthetic clip (real ones are whole)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    quiet(args.verbose)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        made = make_conversation(td / "syn", seconds=args.seconds)
        rows.append(bench("synthetic 640x360", Path(made["video"]), td / "syn_ds", args.crop_size))
        if DEV.is_dir():
            for name, clip in REAL_CLIPS:
                rows.append(bench(name, DEV / clip, td / clip, args.crop_size))
        else:
            print("../shared/data/dev absent: the real clips' rows are skipped")
    print(f"\nprepare benchmark ({os.cpu_count()} CPU cores)")
    hdr = f"{'clip':30} {'persons':>7} {'sec':>6} {'crop':>5} {'wall s':>7} {'x realtime':>10} {'MB':>6} {'MB/30s':>7}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['clip']:30} {r['persons']:>7} {r['seconds']:>6} {r['crop']:>5} {r['wall_s']:>7} "
              f"{r['x_realtime']:>10} {r['dataset_mb']:>6} {r['mb_per_30s']:>7}")
    for r in rows:
        print(f"stages of {r['clip']}: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["stages_s"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
