#!/usr/bin/env python
"""Train posegen: the head motion of listeners and speakers, learned from prepared conversations.

Two causal TCNs (dilated 1-D convolutions): the listener network maps the active speaker's head
pose and the speech's loudness (log RMS), zero-crossing rate, voice probability and mel band
energies to the listener's head pose and expression coefficients (nods, blinks, smiles); the
speaker network maps the speech to the speaker's own head pose. Both predict a Gaussian
around each person's own mean pose, so new conversations can be sampled: several different
plausible reactions to the same speech (scripts/evaluate_posegen.py --samples K).

Examples:
    python scripts/train_posegen.py --data data/talk
    python scripts/train_posegen.py --config configs/posegen.txt --data data/talk --data data/other --out runs/pg
    python scripts/train_posegen.py --data data/talk --val_fraction 0.3     # hold out more for evaluation

Needs conversations with turns (every person both speaks and listens somewhere). Trains on the CPU
in seconds to minutes (the networks are small). Writes <out>/checkpoint.pt (atomically),
<out>/tb (TensorBoard: losses, learning rate, real vs generated pitch curves) and prints the
held-out L1 of each network.
"""

import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configargparse  # noqa: E402
import torch  # noqa: E402

from common.console import quiet  # noqa: E402
from common.errors import PrepareError  # noqa: E402
from posegen.train import PoseGenError, PoseTrainConfig, train  # noqa: E402

HELP = {"out": "run directory (checkpoint.pt, tb/)", "epochs": "passes over the training windows",
        "batch": "windows per step and network", "window_s": "training window in seconds",
        "warmup_s": "seconds at the start of a window the loss leaves out",
        "lr": "Adam learning rate (the paper's 5e-5 suits its far longer schedule)",
        "lr_decay": "the learning rate falls exponentially to this fraction at the end",
        "lambda_vel": "weight of the motion-continuity loss on frame-to-frame differences",
        "val_fraction": "hold out this last fraction of every dataset (0: the dataset's own 10%%)",
        "seed": "random seed", "channels": "TCN width", "levels": "TCN residual blocks (dilations 1, 2, 4, ...)",
        "kernel_size": "TCN kernel size", "dropout": "dropout inside the TCN blocks",
        "n_expr": "expression coefficients the listener network predicts",
        "mel_bands": "mel band energies among the audio inputs (a divisor of 80; 0: none)"}


def build_parser() -> configargparse.ArgumentParser:
    p = configargparse.ArgumentParser(description=__doc__, formatter_class=configargparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbose", action="store_true", help="also show third-party warnings and logs "
                   "(TensorFlow Lite, absl, protobuf)")
    p.add_argument("--config", is_config_file=True, help="a config file of 'key = value' lines (configs/posegen.txt)")
    p.add_argument("--data", action="append", required=True, help="a prepared dataset directory (repeatable)")
    for f in dataclasses.fields(PoseTrainConfig):
        if f.name == "data":
            continue
        p.add_argument(f"--{f.name}", type=type(f.default), default=f.default,
                       help=f"{HELP.get(f.name, f.name)} (default {f.default})")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet(args.verbose)
    torch.set_num_threads(1)  # small networks: one thread is fastest, and leaves the other cores free
    cfg = PoseTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PoseTrainConfig)})
    try:
        facts = train(cfg)
    except (PrepareError, PoseGenError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing was written (the checkpoint is written at the end)", file=sys.stderr)
        return 130
    print(f"trained {facts['steps']} steps in {facts['seconds']} s; receptive field {facts['receptive_field_s']:.1f} s")
    print("held-out L1 (normalized units): " + json.dumps({k: round(v, 4) for k, v in facts["val"].items()}))
    print(f"checkpoint: {facts['ckpt']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
