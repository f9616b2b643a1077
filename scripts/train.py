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

Logs go to <out>/tb (TensorBoard: losses, PSNR, learning rates, rendered validation frames beside
the real ones); <out>/checkpoint.pt is rewritten atomically every --ckpt_every iterations.
"""

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configargparse  # noqa: E402
import torch  # noqa: E402

from data_prep.errors import PrepareError  # noqa: E402
from nerf.trainer import TrainConfig, TrainError, train  # noqa: E402


def build_parser() -> configargparse.ArgumentParser:
    p = configargparse.ArgumentParser(description=__doc__, formatter_class=configargparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", is_config_file=True, help="a config file of 'key = value' lines (presets in configs/)")
    p.add_argument("--data", action="append", required=True, help="a prepared dataset directory (repeatable)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("data", "resume"):
            continue
        p.add_argument(f"--{f.name}", type=_flag if isinstance(f.default, bool) else type(f.default), default=f.default,
                       help=(f.metadata.get("help") or _doc(f.name)) + f" (default {f.default})")
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
            "lr": "Adam learning rate of MLPs and codes", "lr_hash": "Adam learning rate of the hash tables",
            "out": "run directory",
            "wav2lip_ckpt": "checkpoint with Wav2Lip's audio encoder (wav2lip.pth, wav2lip_gan.pth or "
                            "scripts/pretrain_audio.py's), used frozen; empty: the shipped prior (nerf/weights/audio_prior.pt)",
            "audio_pretrain_iters": "steps of fine-tuning the shipped prior on --data, kept only where it raises the held-out "
                                    "mouth correlation (0: the prior frozen)",
            "audio_window": "frames each side the head field's temporal attention smooths audio codes over",
            "device": "auto (a CUDA GPU when torch sees one), cpu, cuda or cuda:N",
            "hash_backend": "auto (the fused CUDA hash grid on a GPU, else PyTorch), torch, cuda or tcnn",
            "hash_half": "true: the fused hash grid gathers from float16 table copies",
            "compile": "true: torch.compile the fields (tens of seconds of compiling first; see bench.py --compile)",
            "log_every": "iterations between TensorBoard scalars",
            "time_budget_s": "stop after this many seconds of training, resumes included (0: none); the lr decay "
                             "follows iterations or time, whichever runs out first",
            "torso_cull": "true: only rays of the torso's labelled pixels (+5%% of the crop) query the torso field; "
                          "faster, quality change unsettled (docs/PERFORMANCE.md)",
            "pose_norm": "true: the torso field reads the head pose standardized per person, without sin/cos "
                         "frequencies; false: the raw pose through them (docs/PERFORMANCE.md)",
            "torso_follow": "true: the volume torso (--torso_field volume) moves with the head by learned shares of "
                            "its translation and rotation (experimental; docs/PERFORMANCE.md)",
            "torso_field": "volume (the torso sampled along each ray, as the head) or layer (a pose-warped field over the "
                           "crop's pixels behind the head: one query per ray, faster; docs/PERFORMANCE.md)",
            "torso_track": "true: track the torso's image motion per frame (an affine onto a reference frame, when the "
                           "data load) and read the torso through it; driven frames get it predicted from the head "
                           "pose (docs/PERFORMANCE.md)",
            "torso_pose": "untracked: only persons whose torso is not tracked (--torso_track) feed the head pose to "
                          "their torso field and warp it; a tracked torso is one canonical torso moved by its tracked "
                          "motion alone; all: every person's (docs/PERFORMANCE.md)",
            "torso_density_pose": "true: the torso's density reads the head pose beside the warped point; false: the pose "
                                  "acts through the torso's warp alone (docs/PERFORMANCE.md)",
            "mouth_share": "share of each ray batch drawn in the frame's mouth box",
            "head_share": "share drawn in the box of the frame's head-labelled pixels",
            "torso_share": "share drawn in the box of its torso-labelled pixels (the rest fall anywhere in the crop)",
            "error_share": "share drawn where the rendering error lies (an error map over the crop, updated every step)",
            "error_grid": "cells per side of that error map",
            "error_refresh": "iterations between the sampler's copies of the error map (a host sync each on a GPU)",
            "occupancy_every": "iterations between rebuilds of an occupancy grid training samples through (its empty "
                               "cells' samples not queried, as when rendering; 0: every sample queried)",
            "occupancy_from": "the iteration of that grid's first build",
            "occupancy_resolution": "cells per axis of that grid (0: 64 on a GPU, 32 on the CPU)",
            "lambda_dist": "weight of mip-NeRF 360's distortion loss (0: off; experimental; docs/PERFORMANCE.md)"}.get(
        name, name.replace("_", " "))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    try:
        facts = train(cfg)
    except (PrepareError, TrainError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; --resume continues from the checkpoint", file=sys.stderr)
        return 130
    print("held-out PSNR: " + ", ".join(f"{k} {v:.2f} dB" for k, v in facts["val_psnr"].items()))
    print(f"run: {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
