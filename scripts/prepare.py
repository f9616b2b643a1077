#!/usr/bin/env python
"""Turn a conversation video into a DialogueNeRF training dataset.

Finds every person on screen, crops each one (head and shoulders), tracks 478
face landmarks, fits head pose and focal, fits the expression basis of
Eq. (1), parses head / torso / background, builds background plates, computes
audio features and who speaks when, and draws QA pictures. Offline. On 2
CPU cores a two-person 1280x720 clip at 512 px crops takes about its length
(1.02-1.07x real time on a real 17.5 s interview, 0.85x on a real 8 s debate: about
4 s are fixed costs), plus 1.4 s to start (docs/PERFORMANCE.md).
Small faces are searched for in tiles; each person found and each face track
dropped is logged with its reason.

Example:
    python scripts/prepare.py --video talk.mp4 --out data/talk
    python scripts/prepare.py --config configs/prepare.txt --video talk.mp4 --out data/talk
    python scripts/prepare.py --video conv.mp4 --out data/conv --roles conv.turns.json   # who speaks is known
    python scripts/prepare.py --video a.mp4 --video b.mkv --out data --jobs 2   # data/a and data/b
    python scripts/prepare.py --videos studio.txt --out data                   # the videos listed, one per line

Several videos (repeated --video, or --videos LIST) are prepared each into <out>/<video name>, --jobs at a time
(a process pool; each job's per-person processes get its share of the cores); one that fails is reported and the
others go on.

Re-running skips finished stages (--force redoes them). The dataset layout is
described in docs/DATASET.md; look at <out>/qa/ first.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configargparse  # noqa: E402

from common.console import quiet  # noqa: E402
from common.errors import PrepareError  # noqa: E402
from data_prep.many import prepare_many, read_list  # noqa: E402
from data_prep.pipeline import PrepareConfig, prepare  # noqa: E402


def build_parser() -> configargparse.ArgumentParser:
    d = PrepareConfig()
    p = configargparse.ArgumentParser(description=__doc__, formatter_class=configargparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbose", action="store_true", help="also show third-party warnings and logs "
                   "(TensorFlow Lite, absl, protobuf)")
    p.add_argument("--config", is_config_file=True, help="a config file of 'key = value' lines (any flag below)")
    p.add_argument("--video", action="append", default=[], help="the conversation video (any container ffmpeg reads); "
                   "repeat it to prepare several")
    p.add_argument("--videos", default=None, help="a text file listing videos to prepare, one per line (relative to "
                   "the file's folder; # comments)")
    p.add_argument("--out", required=True, help="the dataset directory to write (with several videos: the folder "
                   "that gets one dataset per video, named after it)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="with several videos: how many are prepared at once, each job's per-person passes on its "
                        "share of the cores (default: one per CPU core, %(default)s here; on 2 cores two videos at "
                        "once took 0.74x the time of one after the other, docs/PERFORMANCE.md)")
    p.add_argument("--fps", type=float, default=d.fps, help="target frame rate; frames and audio resampled together")
    p.add_argument("--crop_size", type=int, default=d.crop_size, help="side of each person's crop in pixels")
    p.add_argument("--persons", type=int, default=None, help="insist on exactly N people (default: as found)")
    p.add_argument("--expression_k", type=int, default=d.expression_k,
                   help="expression PCA components (raised until they keep 95%% of the variance)")
    p.add_argument("--smooth_pose", type=float, default=d.smooth_pose, help="pose smoothing sigma in frames (0: off)")
    p.add_argument("--detect_per_second", type=float, default=d.detect_per_second,
                   help="face-detection frames per second when finding people (about one a second is also searched "
                   "tile by tile, for faces too small for the whole frame)")
    p.add_argument("--workers", type=int, default=d.workers,
                   help="processes for the per-person passes and torso tracking (0: one per CPU core; 1: none besides "
                   "this one)")
    p.add_argument("--crf", type=int, default=d.crf, help="x264 quality of the stored crops (lower = larger, closer)")
    p.add_argument("--roles", default=None,
                   help="who speaks when, instead of the audio-visual guess: a JSON list of {person, start, end} "
                        "(seconds; person = prepare's id, left to right from 0) or compose_conversation's turns.json; "
                        "speaking is then the voiced frames of each person's intervals")
    p.add_argument("--allow_silent", action="store_true", help="accept a video without an audio track")
    p.add_argument("--force", action="store_true", help="redo every stage; replace another video's dataset")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet(args.verbose)
    cfg = PrepareConfig(fps=args.fps, crop_size=args.crop_size, persons=args.persons, expression_k=args.expression_k,
                        smooth_pose=args.smooth_pose, detect_per_second=args.detect_per_second,
                        allow_silent=args.allow_silent, workers=args.workers, force=args.force, crf=args.crf,
                        roles=args.roles)
    if cfg.crop_size < 64 or cfg.crop_size % 2:
        print("error: --crop_size must be an even number of at least 64", file=sys.stderr)
        return 2
    try:
        videos = [Path(v) for v in args.video] + (read_list(args.videos) if args.videos else [])
        if not videos:
            raise PrepareError("give the video to prepare: --video talk.mp4 (or several, or --videos LIST)")
        if len(videos) > 1 or args.videos:
            return _report(prepare_many(videos, args.out, cfg, args.jobs, args.verbose))
        out = prepare(videos[0], args.out, cfg)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; finished stages are kept and a re-run resumes", file=sys.stderr)
        return 130
    print(f"dataset: {out}\nQA pictures: {out / 'qa'}")
    return 0



def _report(outcomes) -> int:
    """The several videos' closing lines: each dataset, then each failure (exit 1 if any)."""
    for o in outcomes:
        if not o.error:
            print(f"dataset: {o.out}  (QA pictures: {o.out / 'qa'})")
    failed = [o for o in outcomes if o.error]
    for o in failed:
        print(f"error: {o.video}: {o.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
