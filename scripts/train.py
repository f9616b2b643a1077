#!/usr/bin/env python
"""Train ONE avatar NeRF for every person of one or more prepared datasets.

Each person gets latent codes (z_shape with the position features, z_app with the
direction features) in a shared head field (driven by audio while the person speaks,
by expression while it listens) and a shared torso field with a pose-conditioned
deformation; head and torso are composited in one volume-rendering pass.

The audio drive is Wav2Lip's audio encoder (512-d per frame, frozen), smoothed over
frames f-4..f+4 by a temporal attention. By default it is the universal prior shipped in
nerf/weights/audio_prior.pt (pre-trained on 17 real clips of 11 speakers), which the first
stage fine-tunes on --data (--audio_pretrain_iters steps) and keeps fine-tuned only if that
predicts the held-out frames' mouth better (saved as <out>/audio_encoder.pt); with
--audio_pretrain_iters 0 the prior is used as it is. --wav2lip_ckpt takes another encoder
(the public wav2lip.pth / wav2lip_gan.pth, or scripts/pretrain_audio.py's output) frozen.
Nothing is downloaded.

Examples:
    python scripts/train.py --config configs/cpu_tiny.txt --data data/talk
    python scripts/train.py --config configs/gpu_full.txt --data data/talk --data data/other
    python scripts/train.py --config configs/cpu_tiny.txt --data data/talk --resume     # continue a run
    python scripts/train.py --config configs/cpu_tiny.txt --data data/talk --model per_person  # baseline
    python scripts/train.py --config configs/gpu_full.txt --data data/talk --wav2lip_ckpt wav2lip_gan.pth
    python scripts/train.py --size tiny --image_size 128 --iters 1500 --batch_rays 512 --data data/talk
    torchrun --nproc_per_node 4 scripts/train.py --config configs/gpu_full.txt --data data/talk   # 4 GPUs

Under torchrun (docs/DISTRIBUTED.md) each process trains the same network on its own rays (--batch_rays each,
so a step sees N x --batch_rays), gradients are averaged (DistributedDataParallel; NCCL on GPUs, gloo on CPUs),
and rank 0 writes everything; --resume continues such a run on the same number of processes step for step.

Logs go to <out>/tb (TensorBoard: losses, PSNR, learning rates, rendered validation frames beside
the real ones); <out>/checkpoint.pt is rewritten atomically every --ckpt_every iterations.
"""

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configargparse  # noqa: E402
import torch  # noqa: E402

from common.console import quiet  # noqa: E402
from common.distributed import launched_rank  # noqa: E402
from common.errors import PrepareError  # noqa: E402
from nerf.trainer import SIZES, TrainConfig, TrainError, sized, train  # noqa: E402

OPTIONS = ("out", "image_size", "model", "iters", "batch_rays", "time_budget_s", "val_every", "ckpt_every", "seed",
           "device", "hash_backend", "hash_half", "occupancy_every", "wav2lip_ckpt", "audio_pretrain_iters", "log_every",
           "dist_timeout_s")
"""The TrainConfig fields a user sets; --size sets the model's widths, grids, samples and learning rates
(``nerf.trainer.SIZES``)."""


def build_parser() -> configargparse.ArgumentParser:
    p = configargparse.ArgumentParser(description=__doc__, formatter_class=configargparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbose", action="store_true", help="also show third-party warnings and logs "
                   "(TensorFlow Lite, absl, protobuf)")
    p.add_argument("--config", is_config_file=True, help="a config file of 'key = value' lines (presets in configs/)")
    p.add_argument("--data", action="append", required=True, help="a prepared dataset directory (repeatable)")
    p.add_argument("--size", choices=tuple(SIZES), default="full",
                   help="model size: tiny (CPU, 64-128 px crops, hundreds of iterations) or full (a GPU, 512 px, tens "
                        "of thousands) (default full)")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name in OPTIONS:
        default = fields[name].default
        p.add_argument(f"--{name}", type=_flag if isinstance(default, bool) else type(default), default=default,
                       help=_doc(name) + f" (default {default})")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    return p


def _flag(text: str) -> bool:
    """true/false (also 1/0, yes/no) for the boolean options, on the command line and in config files."""
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise configargparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _doc(name: str) -> str:
    return {"model": "shared (one network, per-person codes) or per_person (one network each, the baseline)",
            "image_size": "crop side trained on", "iters": "training iterations", "batch_rays": "rays per iteration",
            "out": "run directory", "seed": "random seed of the weights, rays and samples",
            "val_every": "iterations between held-out PSNR checks and validation pictures",
            "ckpt_every": "iterations between checkpoints",
            "wav2lip_ckpt": "checkpoint with Wav2Lip's audio encoder (wav2lip.pth, wav2lip_gan.pth or "
                            "scripts/pretrain_audio.py's), used frozen; empty: the shipped prior (nerf/weights/audio_prior.pt)",
            "audio_pretrain_iters": "steps of fine-tuning the shipped prior on --data, kept only where it raises the held-out "
                                    "mouth correlation (0: the prior frozen)",
            "device": "auto (a CUDA GPU when torch sees one), cpu, cuda or cuda:N",
            "hash_backend": "auto (the fused CUDA hash grid on a GPU, else PyTorch), torch or cuda",
            "hash_half": "true: the fused hash grid gathers from float16 table copies (faster on an H100)",
            "time_budget_s": "stop after this many seconds of training, resumes included (0: none); the lr decay "
                             "follows iterations or time, whichever runs out first",
            "dist_timeout_s": "under torchrun: seconds a rank waits for the others before the job stops with an error",
            "log_every": "iterations between TensorBoard scalars (each a host sync on a GPU)",
            "occupancy_every": "iterations between builds of an occupancy grid that training samples through (its empty "
                               "cells' samples not queried, as when rendering; 0: every sample queried)"}[name]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet(args.verbose)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = sized(args.size, data=args.data, resume=args.resume, **{k: getattr(args, k) for k in OPTIONS})
        facts = train(cfg)
    except (PrepareError, TrainError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if launched_rank() == 0:  # (under torchrun every rank stops; one says so)
            print("interrupted; --resume continues from the checkpoint", file=sys.stderr)
        return 130
    if facts is None:  # a rank other than 0 under torchrun: rank 0 reports
        return 0
    print("held-out PSNR: " + ", ".join(f"{k} {v:.2f} dB" for k, v in facts["val_psnr"].items()))
    print(f"run: {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
