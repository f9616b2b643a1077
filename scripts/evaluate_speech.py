#!/usr/bin/env python
"""Does the rendered mouth follow the speech? Measures a video's mouth against its audio.

For a video of one face (a render of scripts/render.py, say, from speech the avatar never heard; or any real video
to compare with), each frame's mouth opening is measured as prepare measures it (mediapipe's face mesh: the inner
lips' gap over the eye-corner distance, about 0 closed and 0.3-0.5 wide open) and silero says where the audio is
speech. Printed:

  open in speech / silence  median mouth opening in each (a mouth closed in silence: a few hundredths)
  moves in speech / silence how much it moves (standard deviation)
  AUC                       the chance that a speech frame's mouth is more open than a silent frame's (0.5: the
                            mouth ignores the speech; 1: always more open while speaking)
  energy corr, offset       over the speech frames, the correlation of the opening with the loudness and the shift
                            in frames (+-10) that lines them up best (0 is in sync; positive: the mouth is late)

Writes <out>.png (the loudness with speech shaded, and the mouth opening) and, with --json, the figures.

Examples:
    python scripts/evaluate_speech.py --video out/new_speech.mp4 --out out/new_speech_mouth
    python scripts/evaluate_speech.py --video out/silent_render.mp4 --audio speech.flac --out out/mouth --json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configargparse  # noqa: E402

from common.atomic_io import save_json  # noqa: E402
from common.console import quiet  # noqa: E402
from common.errors import PrepareError  # noqa: E402


def build_parser() -> configargparse.ArgumentParser:
    p = configargparse.ArgumentParser(description=__doc__, formatter_class=configargparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbose", action="store_true", help="also show third-party warnings and logs "
                   "(TensorFlow Lite, absl, protobuf)")
    p.add_argument("--config", is_config_file=True, help="options as 'key = value' lines")
    p.add_argument("--video", required=True, help="a video with one face (its own audio track is used by default)")
    p.add_argument("--audio", default=None, help="the speech to compare with instead of the video's audio track")
    p.add_argument("--out", required=True, help="output stem: <out>.png, and <out>.json with --json")
    p.add_argument("--max_seconds", type=float, default=0.0, help="measure only the first seconds (0: all)")
    p.add_argument("--json", action="store_true", help="also write the figures as <out>.json")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet(args.verbose)
    for path in filter(None, (args.video, args.audio)):
        if not Path(path).is_file():
            print(f"error: no such file: {path}", file=sys.stderr)
            return 1
    from nerf.audio_eval import mouth_on_speech, signed, speech_figure

    out = Path(args.out)
    try:
        result = mouth_on_speech(args.video, args.audio, args.max_seconds)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    summary = {k: v for k, v in result.items() if k not in ("opening", "voiced", "energy")}
    speech_figure(result, out.with_suffix(".png"))
    if args.json:
        save_json(out.with_suffix(".json"), {"video": str(args.video), "audio": str(args.audio or args.video), **summary})
    r = summary
    print(f"{r['frames']} frames, a face in {r['faces']:.0%}, speech in {r['voiced_share']:.0%}\n"
          f"mouth opening, median: {r['open_speech']:.3f} in speech, {r['open_silence']:.3f} in silence\n"
          f"moves (std): {r['moves_speech']:.3f} in speech, {r['moves_silence']:.3f} in silence\n"
          f"AUC speech > silence: {r['auc']:.2f}; energy corr {r['energy_corr']:.3f} at offset {signed(r['offset'])} frames\n"
          f"-> {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
