#!/usr/bin/env python
"""Compose single-person talking clips side by side into one conversation video.

Run ``python scripts/compose_conversation.py --help`` for what it makes and an example.
"""

import sys
from pathlib import Path

# Runnable from any directory: the repo root holds the data_prep package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import warnings

import configargparse
from tqdm import tqdm

from common.console import quiet  # noqa: E402
from common.errors import PrepareError
from data_prep.compose import ComposeConfig, compose_conversation, turns_json_path

DESCRIPTION = """\
Place N >= 2 single-person talking clips side by side (clip k in column k,
left to right) and give the conversation turn-taking audio: the timeline is
cut into turns of about --turn_seconds, speakers cycle 0, 1, ..., N-1 with
--gap_seconds of silence between turns, and during person k's turn you hear
clip k's own audio at that instant (so it matches clip k's mouth) while the
others are muted. Every clip must have an audio track.

Writes OUT.mp4 and OUT.turns.json beside it: fps, n_frames, each person's
clip and x range in the frame, the turns, and a per-frame speaking label (run
length). The label follows the turn plan; a muted person's mouth still moves,
which is what an audio-visual speaker detector has to see through.
"""

EXAMPLE = """\
example (two real clips from the dev set, 10 s at 512 px):
  python scripts/compose_conversation.py \\
      --clips /work/shared/data/dev/talk_glasses_512.mp4 /work/shared/data/dev/talk_expressive_480.mp4 \\
      --out data/conv_dev.mp4 --seconds 10 --turn_seconds 3 --seed 1

the same from a config file conv.txt (any flag may go in it; flags on the
command line win), holding for instance:
  clips = [/work/shared/data/dev/talk_glasses_512.mp4, /work/shared/data/dev/talk_expressive_480.mp4]
  out = data/conv_dev.mp4
  seconds = 10
then:
  python scripts/compose_conversation.py --config conv.txt
"""


def build_parser() -> configargparse.ArgumentParser:
    defaults = ComposeConfig()
    p = configargparse.ArgumentParser(description=DESCRIPTION, epilog=EXAMPLE,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbose", action="store_true", help="also show third-party warnings and logs "
                   "(TensorFlow Lite, absl, protobuf)")
    p.add_argument("--config", is_config_file=True, help="config file with 'key = value' lines")
    p.add_argument("--clips", nargs="+", required=True, help="two or more single-person clips with audio")
    p.add_argument("--out", required=True, help="output .mp4; OUT.turns.json is written beside it")
    p.add_argument("--height", type=int, default=defaults.height,
                   help="output height; each clip is resized to it, aspect kept (default %(default)s)")
    p.add_argument("--fps", type=float, default=defaults.fps, help="output frame rate (default %(default)s)")
    p.add_argument("--seconds", type=float, default=defaults.seconds,
                   help="output length (default: the shortest clip's duration)")
    p.add_argument("--turn_seconds", type=float, default=defaults.turn_seconds,
                   help="mean length of a speaking turn (default %(default)s)")
    p.add_argument("--gap_seconds", type=float, default=defaults.gap_seconds,
                   help="silence between turns (default %(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the turn lengths (default %(default)s)")
    p.add_argument("--crf", type=int, default=defaults.crf, help="x264 quality, lower is better (default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet(args.verbose)
    cfg = ComposeConfig(height=args.height, fps=args.fps, seconds=args.seconds, turn_seconds=args.turn_seconds,
                        gap_seconds=args.gap_seconds, seed=args.seed, crf=args.crf)
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"
    try:
        plan = compose_conversation(
            args.clips, args.out, cfg,
            wrap_frames=lambda frames, n: tqdm(frames, total=n, unit="frame", desc="compose"))
    except PrepareError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: could not write {args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(f"wrote {args.out} ({plan['width']}x{plan['height']}, {plan['n_frames']} frames at {plan['fps']} fps, "
          f"{len(plan['turns'])} turns) and {turns_json_path(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
