#!/usr/bin/env python
"""Pre-train the Wav2Lip audio encoder on your own conversations (offline; nothing is downloaded).

The avatar's mouth follows speech through a 512-d code per video frame: Wav2Lip's audio
encoder over the frame's mel window (80 mel bins x 16 mel frames = 200 ms). If you own the
public wav2lip.pth or wav2lip_gan.pth, pass it to train.py as --wav2lip_ckpt and skip this.
Otherwise this command teaches the encoder from the prepared datasets themselves:

  what it sees    each person's train-split frames while that person speaks (audio_features.npz:
                  speaking), so the audio is that person's voice;
  what it learns  (1) to predict the person's lip shape (the lip landmarks of the expression
                  coefficients, track.npz: expr) and mouth opening (audio_features.npz:
                  mouth_open) from the audio alone; (2) to tell the true (audio, lips) pair from
                  the same person's lips 3-15 frames earlier or later (InfoNCE), so the code
                  carries timing and the shape of the sound, not only its loudness;
  how to read it  TensorBoard (--logdir): the losses, the sync accuracy (the true pair beats
                  every shifted one; chance is 1 in 27) and, on the held-out last 10% of frames,
                  the correlation of predicted and real mouth opening (1 is perfect).

The output is a checkpoint in Wav2Lip's own layout: give it to train.py as --wav2lip_ckpt.
The project ships one, nerf/weights/audio_prior.pt, made by this command on 17 real clips
(configs/audio_prior.txt says how to rebuild it); train.py fine-tunes it on the run's own data by
itself (this command with --init nerf/weights/audio_prior.pt). Use this command to pre-train on
your own collection of conversations, or with more steps. A one-minute clip takes a few
minutes with configs/audio.txt on a 2-core CPU (seconds on a GPU).

Examples:
    python scripts/pretrain_audio.py --config configs/audio.txt --data data/talk --out runs/audio.pt
    python scripts/pretrain_audio.py --config configs/audio.txt --data data/talk --data data/other --out runs/audio.pt
    python scripts/pretrain_audio.py --config configs/audio.txt --data data/talk --init nerf/weights/audio_prior.pt \
        --iters 200 --out runs/audio_ft.pt
    python scripts/train.py --config configs/gpu_full.txt --data data/talk --wav2lip_ckpt runs/audio.pt
"""

import dataclasses
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configargparse  # noqa: E402
import torch  # noqa: E402

from common.console import quiet  # noqa: E402
from common.errors import (
    PrepareError,  # noqa: E402
    TrainError,  # noqa: E402
)
from nerf.audio_pretrain import AudioPretrainConfig, pretrain_audio  # noqa: E402

HELP = {
    "iters": "optimizer steps",
    "batch": "mel windows per step (batch norm needs a few dozen)",
    "lr": "Adam learning rate",
    "lambda_sync": "weight of the sync (InfoNCE) loss against the lip regression",
    "min_shift": "shortest time shift (frames) of a false (audio, lips) pair",
    "max_shift": "longest time shift (frames) of a false pair",
    "temperature": "InfoNCE temperature",
    "gain_jitter_db": "each mel window is made up to this many dB louder or quieter",
    "eval_every": "held-out metrics every this many steps (and at the end)",
    "init": "an encoder file of this command to fine-tune (e.g. nerf/weights/audio_prior.pt); kept only where it "
            "raises the held-out correlation. Empty: from scratch",
    "seed": "random seed",
    "device": "cpu, cuda, or auto (cuda when available)",
}


def build_parser() -> configargparse.ArgumentParser:
    p = configargparse.ArgumentParser(description=__doc__, formatter_class=configargparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbose", action="store_true", help="also show third-party warnings and logs "
                   "(TensorFlow Lite, absl, protobuf)")
    p.add_argument("--config", is_config_file=True, help="a config file of 'key = value' lines (configs/audio.txt)")
    p.add_argument("--data", action="append", required=True, help="a prepared dataset directory (repeatable)")
    p.add_argument("--out", required=True, help="the encoder checkpoint to write, e.g. runs/audio.pt")
    p.add_argument("--logdir", default=None, help="TensorBoard directory (default: <out without suffix>_tb)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    add_pretrain_options(p)
    return p


def add_pretrain_options(p: configargparse.ArgumentParser) -> None:
    """--iters, --batch, ...: every AudioPretrainConfig field but the data (also scripts/audio_loio.py's)."""
    for f in dataclasses.fields(AudioPretrainConfig):
        if f.name != "data":
            p.add_argument(f"--{f.name}", type=type(f.default), default=f.default,
                           help=f"{HELP[f.name]} (default {f.default})")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet(args.verbose)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if out.is_dir():
        print(f"error: --out {out} is a directory; give the checkpoint's file name, e.g. {out / 'audio.pt'}",
              file=sys.stderr)
        return 1
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: cannot create {out.parent}: {e.strerror}", file=sys.stderr)
        return 1
    if not os.access(out.parent, os.W_OK):
        print(f"error: cannot write into {out.parent}; choose another --out", file=sys.stderr)
        return 1
    cfg = AudioPretrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AudioPretrainConfig)})
    logdir = args.logdir or str(out.with_suffix("")) + "_tb"
    try:
        facts = pretrain_audio(cfg, out, logdir=logdir)
    except (PrepareError, TrainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    print(f"encoder: {out} (train.py --wav2lip_ckpt {out}); {facts['seconds']} s\nTensorBoard: tensorboard --logdir {logdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
