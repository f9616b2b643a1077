#!/usr/bin/env python
"""Score an audio encoder on datasets it never saw: does the mouth it predicts from speech follow the real one?

For each dataset and person, over the frames where that person speaks with a tracked face:
  corr           correlation of the mouth opening predicted from the audio alone with the tracked
                 opening (1 is perfect; 0 is no relation), at shift 0
  offset         the shift, within +-10 frames, that lines the two up best (0 is in sync; positive:
                 the real mouth moves that many frames after the prediction; "-": too few frames to tell)
  energy corr    the same two figures for the log-RMS energy envelope of the audio: loudness alone,
  energy offset  the baseline an encoder must beat
Without --encoder it scores the encoder shipped with the project (nerf/weights/audio_prior.pt). Only
encoders written by scripts/pretrain_audio.py carry the mouth-opening head this needs.

Examples:
    python scripts/evaluate_audio.py --data data/talk
    python scripts/evaluate_audio.py --data data/a --data data/b --encoder runs/audio.pt --json
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configargparse  # noqa: E402

from data_prep.errors import PrepareError  # noqa: E402
from nerf.audio import SHIPPED_ENCODER  # noqa: E402
from nerf.audio_eval import load_predictor, score_dataset, table  # noqa: E402
from nerf.errors import TrainError  # noqa: E402


def build_parser() -> configargparse.ArgumentParser:
    p = configargparse.ArgumentParser(description=__doc__, formatter_class=configargparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", is_config_file=True, help="a config file of 'key = value' lines")
    p.add_argument("--data", action="append", required=True, help="a prepared dataset directory (repeatable)")
    p.add_argument("--encoder", default=str(SHIPPED_ENCODER),
                   help="an encoder file from scripts/pretrain_audio.py (default: the shipped one)")
    p.add_argument("--split", choices=["all", "val"], default="all",
                   help="score every frame, or only the held-out last 10%% (for an encoder pre-trained on the dataset)")
    p.add_argument("--json", action="store_true", help="one JSON object per (dataset, person) line instead of a table")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        predictor = load_predictor(args.encoder)
        rows = [row for root in args.data for row in score_dataset(predictor, root, args.split)]
    except (PrepareError, TrainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if args.json:
        for r in rows:
            print(json.dumps({k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}))
    else:
        print(f"encoder: {args.encoder}\n{table(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
