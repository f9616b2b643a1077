#!/usr/bin/env python
"""make demo: the main job on the built-in example.

Builds the synthetic two-person conversation (scikit-image's astronaut photo
moved by known motion, with a synthetic speech track taking turns), prepares
it into a dataset and checks it against the planted truth, trains ONE avatar
NeRF for both persons (configs/cpu_tiny.txt on CPU, configs/gpu_full.txt for five
minutes when CUDA is present; its first stage pre-trains the Wav2Lip audio encoder on the
clip itself) and evaluates it on the held-out frames (table with lip-sync
measures and a rendered-vs-real grid), trains posegen and prints its metric
table against the baselines, and renders a new conversation from a new synthetic
speech track into demo/conversation.mp4 (the original layout) and
demo/conference.mp4 (a conference grid).
"""

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configargparse  # noqa: E402
import numpy as np  # noqa: E402

from common import dataset  # noqa: E402
from common.console import quiet  # noqa: E402
from common.errors import PrepareError  # noqa: E402
from data_prep.pipeline import PrepareConfig, prepare  # noqa: E402
from data_prep.synthetic import make_conversation  # noqa: E402


def main(argv=None) -> int:
    p = configargparse.ArgumentParser(description=__doc__, formatter_class=configargparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbose", action="store_true", help="also show third-party warnings and logs "
                   "(TensorFlow Lite, absl, protobuf)")
    p.add_argument("--config", is_config_file=True, help="a config file of 'key = value' lines")
    p.add_argument("--out", default="demo", help="folder for the example video and its dataset")
    p.add_argument("--seconds", type=float, default=8.0, help="length of the synthetic conversation")
    p.add_argument("--crop_size", type=int, default=256, help="person crop side for the demo dataset")
    p.add_argument("--skip_nerf", action="store_true", help="stop after prepare")
    p.add_argument("--skip_render", action="store_true", help="stop after the NeRF's evaluation")
    p.add_argument("--render_seconds", type=float, default=3.0,
                   help="seconds of the new speech rendered (on 2 CPU cores about 1.5 s per frame at 64 px)")
    args = p.parse_args(argv)
    quiet(args.verbose)
    out = Path(args.out)
    try:
        t0 = time.perf_counter()
        made = make_conversation(out / "synthetic", seconds=args.seconds)
        print(f"synthetic conversation: {made['video']} (truth beside it)")
        ds = prepare(made["video"], out / "dataset", PrepareConfig(crop_size=args.crop_size))
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    meta = dataset.read_meta(ds)
    truth = np.load(out / "synthetic" / "truth.npz")
    af = dataset.load_npz(ds / "audio_features.npz")
    print(f"\nprepared in {time.perf_counter() - t0:.0f} s: {len(meta['persons'])} persons, {meta['n_frames']} frames")
    for person in meta["persons"]:
        tr = dataset.load_track(ds, person["id"])
        roll = np.degrees(tr["euler"][:, 2])
        true = np.degrees(truth["roll"][:, person["id"]])
        err = np.abs((roll - np.median(roll)) - (true - np.median(true))).max()
        print(f"  person {person['id']}: crop {person['bbox']}, face tracked {person['valid_fraction']:.0%}, "
              f"roll error vs truth <= {err:.2f} deg")
    agree = (af["speaking"] == truth["speaking"]).all(1).mean()
    print(f"  who speaks: agrees with the planted turns on {agree:.0%} of frames")
    print(f"\ndataset:     {ds}\nQA pictures: {ds / 'qa'} (contact_sheet.png, pose_curves.png, speaking_timeline.png, ...)")
    if args.skip_nerf:
        return 0
    import torch

    scripts = Path(__file__).resolve().parent
    preset = scripts.parent / "configs" / ("gpu_full.txt" if torch.cuda.is_available() else "cpu_tiny.txt")
    run = out / "run"
    print(f"\npre-training the audio encoder on the clip, then one avatar NeRF for both persons ({preset.name}) ...")
    # On a GPU the full preset, held to five minutes (its 30,000 iterations would take about 17).
    budget = ["--time_budget_s", "300"] if torch.cuda.is_available() else []
    steps = [[sys.executable, str(scripts / "train.py"), "--config", str(preset), "--data", str(ds), "--out", str(run),
              *budget],
             [sys.executable, str(scripts / "evaluate.py"), "--ckpt", str(run / "checkpoint.pt"), "--data", str(ds),
              "--out", str(run / "eval")]]
    verbose = ["--verbose"] if args.verbose else []
    for cmd in steps:
        if subprocess.run(cmd + verbose).returncode != 0:
            return 1
    if args.skip_render:
        print(f"\nTensorBoard: tensorboard --logdir {run / 'tb'}")
        return 0
    # Head motion, then a new conversation from new speech (another synthetic voice track, other turns).
    pg = out / "posegen"
    print("\ntraining posegen (listener and speaker head motion) ...")
    new = make_conversation(out / "new_speech", seconds=max(6.0, args.render_seconds), seed=7)
    steps = [[sys.executable, str(scripts / "train_posegen.py"), "--config", str(scripts.parent / "configs" / "posegen.txt"),
              "--data", str(ds), "--out", str(pg), "--window_s", "2.0", "--epochs", "60", "--val_fraction", "0.25"],
             [sys.executable, str(scripts / "evaluate_posegen.py"), "--ckpt", str(pg / "checkpoint.pt"), "--data", str(ds),
              "--samples", "5"]]
    steps.append([sys.executable, str(scripts / "render.py"), "--ckpt", str(run / "checkpoint.pt"), "--posegen",
                  str(pg / "checkpoint.pt"), "--audio", str(new["video"]), "--out",
                  str(out / "conversation.mp4"), "--conference_out", str(out / "conference.mp4"),
                  "--max_seconds", str(args.render_seconds)])
    for cmd in steps:
        if subprocess.run(cmd + verbose).returncode != 0:
            return 1
    print(f"\nvideos: {out / 'conversation.mp4'} (the original layout), {out / 'conference.mp4'} (conference grid), "
          f"from the new speech in {new['video']}")
    print(f"TensorBoard: tensorboard --logdir {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
