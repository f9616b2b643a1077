#!/usr/bin/env python
"""Evaluate a trained avatar checkpoint on the held-out frames (the last 10%) of its datasets, or on its training frames.

Renders every validation frame with its tracked pose and driving features and prints a table per
person and role (speaking / listening): PSNR, SSIM, CPBD of rendered (and real) frames, mouth LMD
(mediapipe lip landmarks, rendered vs real, pixels) and mouth_open_corr (the correlation of rendered
and real mouth opening). Speaking rows add lip sync without SyncNet: av_offset, the shift in frames
that best lines the audio envelope up with the rendered mouth (0: in sync; searched within +-10 frames
and a quarter of the scored frames), av_corr at that shift, and av_offset_real, the real frames' own.
The face-mesh measures need frames of 256 px or more. Writes <out>/metrics.json and <out>/grid.png
(rendered above real).

Examples:
    python scripts/evaluate.py --ckpt runs/talk/checkpoint.pt --data data/talk --out runs/talk/eval
    # render on a GPU machine without mediapipe, score the landmarks on another:
    python scripts/evaluate.py --ckpt runs/talk/checkpoint.pt --data data/talk --out ev --save_rendered
    python scripts/evaluate.py --rendered ev --data data/talk --out ev/scored
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configargparse  # noqa: E402

from common.console import quiet  # noqa: E402
from common.errors import PrepareError  # noqa: E402
from nerf.evaluate import evaluate, parse_ray_samples  # noqa: E402
from nerf.trainer import TrainError  # noqa: E402


def main(argv=None) -> int:
    p = configargparse.ArgumentParser(description=__doc__, formatter_class=configargparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbose", action="store_true", help="also show third-party warnings and logs "
                   "(TensorFlow Lite, absl, protobuf)")
    p.add_argument("--config", is_config_file=True, help="a config file of 'key = value' lines")
    p.add_argument("--ckpt", help="checkpoint.pt written by scripts/train.py")
    p.add_argument("--data", action="append", required=True, help="the dataset(s) the checkpoint was trained on")
    p.add_argument("--out", default=None, help="where metrics.json and grid.png go (default: beside the checkpoint)")
    p.add_argument("--max_frames", type=int, default=0,
                   help="at most this many frames per person, evenly spread (0: all)")
    p.add_argument("--split", choices=("val", "train"), default="val",
                   help="score the held-out frames (val, default) or the frames trained on (train): a region that "
                        "scores as low on train as on val underfits, one that scores low only on val does not generalize")
    p.add_argument("--torso_motion", choices=("tracked", "predicted"), default="tracked",
                   help="each frame's torso motion tracked on it, as its head pose is "
                        "(default), or predicted from the head pose alone, as a driven conversation gets it")
    p.add_argument("--device", default="auto", help="where frames are rendered: auto (a GPU if torch sees one), cpu, "
                   "cuda (default auto); the landmark metrics always run on the CPU")
    p.add_argument("--no_occupancy", action="store_true",
                   help="render without the occupancy grid that render.py uses (every sample queried)")
    p.add_argument("--amp", action="store_true", help="render under float16 autocast (for GPUs; see nerf/render.py)")
    p.add_argument("--march_steps", type=int, default=0,
                   help="render by marching through the occupancy grid, N steps per head diameter or torso depth (render.py "
                        "--march_steps; default 0: stratified + importance samples, as in training)")
    p.add_argument("--ray_samples", default="", help="COARSE+IMPORTANCE samples per field and ray for rendering, e.g. "
                   "24+16 (render.py --ray_samples; default: the training run's)")
    p.add_argument("--save_rendered", action="store_true",
                   help="also write the rendered frames (rendered_<row>.npz) for scoring elsewhere")
    p.add_argument("--rendered", default=None,
                   help="score the frames a --save_rendered run wrote into this folder (no --ckpt needed)")
    args = p.parse_args(argv)
    quiet(args.verbose)
    if args.rendered is None and (args.ckpt is None or not Path(args.ckpt).is_file()):
        print(f"error: checkpoint not found: {args.ckpt}" if args.ckpt else "error: give --ckpt (or --rendered)",
              file=sys.stderr)
        return 1
    out = args.out or (str(Path(args.ckpt).parent / "eval") if args.ckpt else str(Path(args.rendered) / "eval"))
    try:
        result = evaluate(None if args.rendered else args.ckpt, args.data, out, args.max_frames, args.device,
                          args.save_rendered, args.rendered, occupancy=not args.no_occupancy, amp=args.amp,
                          march_steps=args.march_steps, ray_samples=parse_ray_samples(args.ray_samples),
                          split=args.split, torso_motion=args.torso_motion)
    except (PrepareError, TrainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(result["table"])
    print(f"metrics: {out}/metrics.json\ngrid:    {out}/grid.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
