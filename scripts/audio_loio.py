#!/usr/bin/env python
"""Leave-one-identity-out: does the audio encoder's pre-training carry to a speaker it never heard?

For each identity in turn, the encoder is pre-trained (scripts/pretrain_audio.py's training, same
options) on every other dataset, then scored on the held-out identity's datasets as
scripts/evaluate_audio.py scores them: per person, the correlation of the mouth opening predicted
from the audio with the tracked one, the audio-visual offset, and the same for the energy envelope.

Identities come from the dataset folder names: a name with "_clip" keeps what comes before it
(speak_andrew_clip_1_256 and speak_andrew_clip_2_256 are one identity); any other name is its own.
Datasets with several people on screen are in every training set and never held out.

Example:
    python scripts/audio_loio.py --config configs/audio.txt --data data/dev/*/ --iters 300 --out runs/loio
Writes <out>/fold_<identity>.pt, <out>/loio.json (every row) and prints the table.
"""

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configargparse  # noqa: E402

from common.atomic_io import save_json  # noqa: E402
from common.console import quiet  # noqa: E402
from common.errors import (
    PrepareError,  # noqa: E402
    TrainError,  # noqa: E402
)
from nerf.audio_eval import identity_folds, leave_one_identity_out, table  # noqa: E402
from nerf.audio_pretrain import AudioPretrainConfig  # noqa: E402
from scripts.pretrain_audio import add_pretrain_options  # noqa: E402


def build_parser() -> configargparse.ArgumentParser:
    p = configargparse.ArgumentParser(description=__doc__, formatter_class=configargparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbose", action="store_true", help="also show third-party warnings and logs "
                   "(TensorFlow Lite, absl, protobuf)")
    p.add_argument("--config", is_config_file=True, help="pre-training options as 'key = value' lines (configs/audio.txt)")
    p.add_argument("--data", nargs="+", action="extend", required=True, help="prepared dataset directories")
    p.add_argument("--out", required=True, help="a folder for the fold encoders and loio.json")
    p.add_argument("--only", action="append", default=[], help="hold out only this identity (repeatable)")
    p.add_argument("--own_iters", type=int, default=0,
                   help="also train on each held-out clip's train split for this many steps, from the fold's encoder "
                        "and from scratch, and score all three on its val split (what train.py would do)")
    add_pretrain_options(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet(args.verbose)
    data = sorted({Path(d) for d in args.data if (Path(d) / "meta.json").is_file()})
    skipped = sorted({str(Path(d)) for d in args.data} - set(map(str, data)))
    if skipped:
        print(f"skipping {len(skipped)} folder(s) without meta.json: {', '.join(skipped)}", file=sys.stderr)
    cfg = AudioPretrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AudioPretrainConfig)
                                 if f.name != "data"})
    out = Path(args.out)
    try:
        folds = identity_folds(data)
        unknown = [i for i in args.only if i not in folds]
        if unknown:
            print(f"error: no datasets of identity {', '.join(unknown)} (known: {', '.join(folds)})", file=sys.stderr)
            return 1
        folds = {i: folds[i] for i in args.only} if args.only else folds
        if not folds or len(data) < 2:
            print("error: leave-one-out needs at least two datasets and one single-person identity", file=sys.stderr)
            return 1
        out.mkdir(parents=True, exist_ok=True)
        rows = leave_one_identity_out(data, folds, cfg, out, args.own_iters, log=lambda line: print(line, flush=True))
    except (PrepareError, TrainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; finished folds are in {out}", file=sys.stderr)
        return 130
    save_json(out / "loio.json", {"config": dataclasses.asdict(cfg), "datasets": [str(d) for d in data], "rows": rows})
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
