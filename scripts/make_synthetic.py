"""Write a synthetic two-person conversation with known ground truth (tests and `make demo` use it)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configargparse

from common.console import quiet  # noqa: E402
from common.errors import PrepareError

DESCRIPTION = """\
Make a synthetic conversation video whose motion, mouth, blinks and turns are known.

Two copies of scikit-image's astronaut photo (the right one mirrored and tinted)
sit side by side over a static brick wall. Each head rolls, scales and moves
by a known smooth 2D similarity and nods while the other one talks; the jaw
opens with that person's synthetic voice and the eyes close at planted blinks.
The audio is a source-filter voice (about 110 Hz for person 0, 200 Hz for
person 1) taking turns: person 0, a pause, person 1, a pause, person 0, ...

Writes into --out:
  conversation.mp4  the video with the 16 kHz mono voice muxed in
  truth.npz         per frame and person: roll, scale, tx, ty, face centre,
                    mouth, blink, speaking, affine; turns; rest face boxes
  truth.json        the scalars, turns, blinks and nods, readable

Runs offline on a CPU in seconds. Example:
  python scripts/make_synthetic.py --out data/synthetic --seconds 8 --seed 0
"""


def parse_args(argv: list[str] | None = None) -> configargparse.Namespace:
    parser = configargparse.ArgumentParser(
        description=DESCRIPTION, formatter_class=configargparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", action="store_true", help="also show third-party warnings and logs "
                   "(TensorFlow Lite, absl, protobuf)")
    parser.add_argument("--config", is_config_file=True, help="a config file of `key = value` lines for these flags")
    parser.add_argument("--out", required=True, help="directory to write into (created when missing)")
    parser.add_argument("--seconds", type=float, default=8.0, help="clip length in seconds, at least 6 (default 8)")
    parser.add_argument("--fps", type=int, default=25, help="frames per second (default 25)")
    parser.add_argument("--width", type=int, default=640, help="frame width, even, >= 1.7 x height (default 640)")
    parser.add_argument("--height", type=int, default=360, help="frame height, even, >= 160 (default 360)")
    parser.add_argument("--seed", type=int, default=0, help="every random choice follows from it (default 0)")
    parser.add_argument("--no-blink", action="store_true", help="keep the eyes open all the time")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet(args.verbose)
    from data_prep.synthetic import make_conversation

    try:
        result = make_conversation(args.out, seconds=args.seconds, fps=args.fps, width=args.width,
                                   height=args.height, seed=args.seed, blink=not args.no_blink)
    except PrepareError as e:
        print(f"make_synthetic: {e}", file=sys.stderr)
        return 1
    for key in ("video", "truth_npz", "truth_json"):
        print(result[key])
    return 0


if __name__ == "__main__":
    sys.exit(main())
