#!/usr/bin/env python
"""Leave-one-identity-out: does the audio encoder's pre-training carry to a speaker it never heard?

For each identity in turn, the encoder is pre-trained (scripts/pretrain_audio.py's training, same
options) on every other dataset, then scored on the held-out identity's datasets as
scripts/evaluate_audio.py scores them: per person, the correlation of the mouth opening predicted
from the audio with the tracked one, the audio-visual offset, and the same for the energy envelope.

Identities come from the dataset folder names: a name with "_clip" keeps what comes before it
(speak_andrew_clip_1_256 and speak_andrew_clip_2_256 are one identity); any other name is its own.
Datasets whose names start with --always_train (default "conv_": several people on screen) are in
every training set and never held out.

Example:
    python scripts/audio_loio.py --config configs/audio.txt --data data/dev/* --iters 300 --out runs/loio
Writes <out>/fold_<identity>.pt, <out>/loio.json (every row) and prints the table.
"""

import dataclasses
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configargparse  # noqa: E402

from data_prep.atomic_io import save_json  # noqa: E402
from data_prep.errors import PrepareError  # noqa: E402
from nerf.audio_eval import load_predictor, score_dataset, table  # noqa: E402
from nerf.audio_pretrain import AudioPretrainConfig, pretrain_audio  # noqa: E402
from nerf.errors import TrainError  # noqa: E402


def identity_of(name: str) -> str:
    return re.split(r"_clip", name, maxsplit=1)[0]


def folds(data: list[Path], always_train: str) -> dict[str, list[Path]]:
    """identity -> its datasets, for the identities that are held out in turn."""
    out: dict[str, list[Path]] = {}
    for d in data:
        if not (always_train and d.name.startswith(always_train)):
            out.setdefault(identity_of(d.name), []).append(d)
    return out


def build_parser() -> configargparse.ArgumentParser:
    p = configargparse.ArgumentParser(description=__doc__, formatter_class=configargparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", is_config_file=True, help="pre-training options as 'key = value' lines (configs/audio.txt)")
    p.add_argument("--data", nargs="+", action="extend", required=True, help="prepared dataset directories")
    p.add_argument("--out", required=True, help="a folder for the fold encoders and loio.json")
    p.add_argument("--always_train", default="conv_", help="datasets named so are never held out ('' : none)")
    p.add_argument("--only", action="append", default=[], help="hold out only this identity (repeatable)")
    for f in dataclasses.fields(AudioPretrainConfig):
        if f.name != "data":
            p.add_argument(f"--{f.name}", type=type(f.default), default=f.default, help=f"pre-training's {f.name}")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    data = sorted({Path(d) for d in args.data if (Path(d) / "meta.json").is_file()})
    skipped = sorted({str(Path(d)) for d in args.data} - set(map(str, data)))
    if skipped:
        print(f"skipping {len(skipped)} folder(s) without meta.json: {', '.join(skipped)}", file=sys.stderr)
    groups = folds(data, args.always_train)
    if args.only:
        unknown = [i for i in args.only if i not in groups]
        if unknown:
            print(f"error: no datasets of identity {', '.join(unknown)} (known: {', '.join(groups)})", file=sys.stderr)
            return 1
        groups = {i: groups[i] for i in args.only}
    if len(groups) < 1 or len(data) < 2:
        print("error: leave-one-out needs at least two datasets and one identity to hold out", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = {f.name: getattr(args, f.name) for f in dataclasses.fields(AudioPretrainConfig) if f.name != "data"}
    rows = []
    try:
        for k, (ident, held) in enumerate(groups.items(), 1):
            train = [str(d) for d in data if d not in held]
            t0 = time.perf_counter()
            ckpt = out / f"fold_{ident}.pt"
            pretrain_audio(AudioPretrainConfig(data=train, **base), ckpt, log=lambda *_: None, progress=False)
            predictor = load_predictor(ckpt)
            fold = [{**r, "identity": ident} for d in held for r in score_dataset(predictor, d)]
            rows += fold
            best = ", ".join(f"{r['dataset']}:{r['person']} {r['corr']:.3f} (energy {r['energy_corr']:.3f})" for r in fold)
            print(f"[{k}/{len(groups)}] {ident}: {best}; {time.perf_counter() - t0:.0f} s", flush=True)
    except (PrepareError, TrainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; finished folds are in " + str(out), file=sys.stderr)
        return 130
    save_json(out / "loio.json", {"config": base, "datasets": [str(d) for d in data], "rows": rows})
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
