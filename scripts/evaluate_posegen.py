#!/usr/bin/env python
"""Evaluate a posegen checkpoint on held-out frames, against baselines computed in the same run.

For every dataset, person and role (listener / speaker), on the held-out frames (those the
checkpoint did not train on) where the person is tracked and in that role, it compares
posegen's K samples with: Mime (copy the partner's motion), MeanFr (the person's mean pose),
Random (a random training window) and NN-audio (the training window nearest in audio).

Metrics: FD (Frechet distance of pose frames), P-FD (of partner and person frames together),
L1 (reported, not a goal), rPCC (does the motion keep the real coupling to the partner),
FRDiv (how much the K samples differ), FRVar against the real variance, nods per minute
against the real count. Lower is better for FD, P-FD, L1 and rPCC.

Examples:
    python scripts/evaluate_posegen.py --ckpt runs/posegen/checkpoint.pt --data data/talk
    python scripts/evaluate_posegen.py --ckpt runs/pg/checkpoint.pt --data data/talk --samples 5 --out runs/pg/eval

Writes <out>/table.txt, <out>/metrics.json (every row) and <out>/pose_curves_<dataset>.png
(real pitch, the K samples and the baselines over the held-out part) and prints the table.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configargparse  # noqa: E402
import torch  # noqa: E402

from common.console import quiet  # noqa: E402
from common.errors import PrepareError  # noqa: E402
from posegen.evaluate import evaluate  # noqa: E402
from posegen.train import PoseGenError  # noqa: E402


def build_parser() -> configargparse.ArgumentParser:
    p = configargparse.ArgumentParser(description=__doc__, formatter_class=configargparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbose", action="store_true", help="also show third-party warnings and logs "
                   "(TensorFlow Lite, absl, protobuf)")
    p.add_argument("--config", is_config_file=True, help="a config file of 'key = value' lines")
    p.add_argument("--ckpt", required=True, help="a checkpoint written by scripts/train_posegen.py")
    p.add_argument("--data", action="append", required=True, help="a dataset the checkpoint was trained on (repeatable)")
    p.add_argument("--out", default=None, help="output directory (default: <ckpt dir>/eval)")
    p.add_argument("--samples", type=int, default=5, help="K samples per sequence (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples and of the Random baseline (default 0)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet(args.verbose)
    torch.set_num_threads(1)
    if args.samples < 1:
        print("error: --samples must be at least 1", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else Path(args.ckpt).parent / "eval"
    try:
        res = evaluate(args.ckpt, args.data, out, samples=args.samples, seed=args.seed)
    except (PrepareError, PoseGenError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(res["table"])
    print(f"written: {out}/table.txt, metrics.json, pose_curves_*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
