#!/usr/bin/env python
"""Score an audio encoder on datasets it never saw: does the mouth it predicts from speech follow the real one?

For each dataset and person, over the frames where that person speaks with a tracked face:
  corr           correlation of the mouth opening predicted from the audio alone with the tracked
                 opening (1 is perfect; 0 is no relation), at shift 0
  offset         the shift, within +-10 frames, that lines the two up best (0 is in sync; positive:
                 the real mouth moves that many frames after the prediction; "-": too few frames to tell)
  energy corr    the same two figures for the log-RMS energy envelope of the audio: loudness alone,
  energy offset  the baseline an encoder must beat
With --speech (audio files or folders of them, no video needed: any voice, language, microphone),
whether it opens the mouth for speech and closes it in the pauses (silero says which is which):
  opening        the median predicted opening in speech and in silence (in standard deviations of
                 the training speakers' openings)
  AUC            the chance that a speech frame's predicted mouth is more open than a silent one's
                 (0.5: it ignores the speech; 1: always more open while speaking); per file and
                 over all files together
Without --encoder it scores the encoder shipped with the project (nerf/weights/audio_prior.pt). Only
encoders written by scripts/pretrain_audio.py carry the mouth-opening head this needs.

Examples:
    python scripts/evaluate_audio.py --data data/talk
    python scripts/evaluate_audio.py --data data/a --data data/b --encoder runs/audio.pt --json
    python scripts/evaluate_audio.py --speech ../shared/data/speech --encoder runs/talk/audio_encoder.pt
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configargparse  # noqa: E402

from common.console import quiet  # noqa: E402
from common.errors import PrepareError  # noqa: E402
from nerf.audio import SHIPPED_ENCODER  # noqa: E402
from nerf.audio_eval import load_predictor, score_dataset, score_speech, speech_table, table  # noqa: E402

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".ogg")
from common.errors import TrainError  # noqa: E402


def build_parser() -> configargparse.ArgumentParser:
    p = configargparse.ArgumentParser(description=__doc__, formatter_class=configargparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbose", action="store_true", help="also show third-party warnings and logs "
                   "(TensorFlow Lite, absl, protobuf)")
    p.add_argument("--config", is_config_file=True, help="a config file of 'key = value' lines")
    p.add_argument("--data", action="append", default=[], help="a prepared dataset directory (repeatable)")
    p.add_argument("--speech", action="append", default=[],
                   help="an audio file, or a folder of them (wav, flac, mp3, m4a, ogg), to score speech against silence "
                        "(repeatable)")
    p.add_argument("--encoder", default=str(SHIPPED_ENCODER),
                   help="an encoder file from scripts/pretrain_audio.py (default: the shipped one)")
    p.add_argument("--split", choices=["all", "val"], default="all",
                   help="score every frame, or only the held-out last 10%% (for an encoder pre-trained on the dataset)")
    p.add_argument("--json", action="store_true", help="one JSON object per (dataset, person) line instead of a table")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet(args.verbose)
    if not args.data and not args.speech:
        parser.error("give --data (prepared datasets) or --speech (audio files) to score the encoder on")
    audio = [f for s in map(Path, args.speech) for f in (sorted(x for x in s.iterdir() if x.suffix.lower() in AUDIO_SUFFIXES)
                                                         if s.is_dir() else [s])]
    missing = [str(f) for f in audio if not f.is_file()]
    if missing or (args.speech and not audio):
        print(f"error: no such audio file: {missing[0]}" if missing else
              f"error: no audio files ({', '.join(AUDIO_SUFFIXES)}) in {', '.join(args.speech)}", file=sys.stderr)
        return 1
    try:
        predictor = load_predictor(args.encoder)
        rows = [row for root in args.data for row in score_dataset(predictor, root, args.split)]
        speech = score_speech(predictor, audio) if audio else []
    except (PrepareError, TrainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if args.json:
        for r in rows + speech:
            print(json.dumps({k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}))
    else:
        print(f"encoder: {args.encoder}")
        if rows:
            print(table(rows))
        if speech:
            print(speech_table(speech))
    return 0


if __name__ == "__main__":
    sys.exit(main())
