#!/usr/bin/env python
"""One benchmark run, one table: hash grid, training and rendering speed, peak GPU memory.

Rows:
- hash grid (16 levels x 2 features, 2^19 rows: the gpu_full grid) forward and forward+backward,
  in samples (points) per second, at 2^18 and 2^20 points, for each backend present: the PyTorch
  reference and the fused CUDA kernel (float32 and float16 gathers).
  Random points in [0, 1]^3, several input sets in rotation, CUDA-event timing, median of repeats.
- training iterations per second at the --preset (default configs/gpu_full.txt) on --data, from an untrained
  model, every sample queried (its preset's occupancy_every aside: an untrained model's density is everywhere;
  --ckpt's rows time the grid).
- render: frames per second of one frame of every person of --data rendered together (two persons:
  2 x 512^2 rays), querying every sample, then skipping the cells an occupancy grid finds empty
  (render.py's default), then the same under float16 autocast (render.py --amp), with the PSNR
  between the float16 and float32 renders; with --march_steps N[,M]: marching through that grid
  (render.py --march_steps), float32 and float16, with field queries per cast ray and the PSNR against
  the sampled render (marching runs the fused Triton kernel, nerf/fused_march.py, where it can: then
  also rows with the PyTorch marcher); with --ray_samples 24+16[,...]: the sampled render with fewer
  samples per field (render.py --ray_samples), likewise.
- with --ckpt: the render rows of that trained model, and two training-step rows of it at its run's batch size,
  every sample queried and through its occupancy grid (train.py --occupancy_every), with the batch PSNR of each;
  with marching through the fused kernel, each kernel's first-render check against the PyTorch marcher
  (nerf/fused_march.py, verify).
- peak GPU memory of the training and rendering rows.
- --batch_rays 4096,16384: a training row per batch size (rays/s shows whether a bigger batch is nearly free);
  --profile DIR: torch.profiler tables of 5 training iterations and one render (operators by device or host
  time, operator calls, kernel launches, host syncs), to see what bounds them.

On a machine without CUDA it runs the reference rows only (and says so), at smaller sizes.

Examples:
    python scripts/bench.py                                   # hash grid rows only
    python scripts/bench.py --data data/talk --out bench.json # + training and render rows
    python scripts/bench.py --data data/talk --ckpt runs/talk/checkpoint.pt  # render rows of a trained model
    python scripts/bench.py --data data/talk --batch_rays 4096,16384 --profile prof  # batch sizes, profiles
    python scripts/bench.py --data data/talk --ckpt runs/talk/checkpoint.pt --march_steps 64,128  # marching
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from nerf.benchmark import bench_hashgrid, bench_model, table  # noqa: E402


def _positive_ints(text: str, flag: str) -> list[int]:
    """'4096,16384' -> [4096, 16384] ('' -> []); ValueError saying what the flag takes otherwise."""
    try:
        values = [int(x) for x in text.split(",")] if text else []
        if values and min(values) < 1:
            raise ValueError
    except ValueError:
        raise ValueError(f"{flag} takes positive whole numbers separated by commas, not {text!r}") from None
    return values


def _preset_config(preset: str, data: list[str]):
    """The TrainConfig train.py makes of a preset file and datasets (the preset read exactly as train.py reads it)."""
    from nerf.trainer import sized
    from scripts.train import OPTIONS, build_parser

    args = build_parser().parse_args(["--config", str(preset), *[x for d in data for x in ("--data", str(d))]])
    return sized(args.size, data=args.data, **{k: getattr(args, k) for k in OPTIONS})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbose", action="store_true", help="also show third-party warnings and logs "
                   "(TensorFlow Lite, absl, protobuf)")
    p.add_argument("--data", action="append", default=[], help="prepared dataset(s) for the training and render rows")
    p.add_argument("--preset", default="configs/gpu_full.txt", help="config whose sizes the training row uses")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--repeats", type=int, default=30, help="timed repeats per hash-grid row (median reported)")
    p.add_argument("--train_iters", type=int, default=50, help="timed training iterations")
    p.add_argument("--render_frames", type=int, default=10, help="timed two-person frames")
    p.add_argument("--ckpt", default="", help="a checkpoint trained on --data for the render rows (default: the "
                   "untrained model, which says nothing about the occupancy grid)")
    p.add_argument("--models", default="shared", help="comma-separated training rows: shared, per_person")
    p.add_argument("--hash_backends", default="auto",
                   help="comma-separated hash backends of the training rows (auto, torch, cuda)")
    p.add_argument("--batch_rays", default="",
                   help="comma-separated rays per training batch, one training row each (default: the preset's)")
    p.add_argument("--profile", default="", help="also write torch.profiler tables of training and rendering "
                   "(operators by time, operator calls, kernel launches, host syncs) into this folder")
    p.add_argument("--march_steps", default="", help="comma-separated step counts: render rows marching through the "
                   "occupancy grid (render.py --march_steps)")
    p.add_argument("--march_shapes", default="", help="comma-separated BLOCKxWARPS shapes of the fused marching "
                   "kernel (e.g. 64x4,64x8,32x4): with --march_steps, a marching row for each besides the renderer's "
                   "own (scripts/kernel_report.py reports their registers and spills without a GPU)")
    p.add_argument("--ray_samples", default="", help="comma-separated COARSE+IMPORTANCE counts, e.g. 24+16,16+8: "
                   "render rows with these samples per field (render.py --ray_samples)")
    p.add_argument("--out", default="", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    from common.console import quiet

    quiet(args.verbose)
    from common.errors import TrainError
    from nerf.device import prepare_device, resolve_device

    try:
        dev = resolve_device(args.device)
    except TrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        rays = _positive_ints(args.batch_rays, "--batch_rays") or None
        march = _positive_ints(args.march_steps, "--march_steps")
        from nerf.fused_march import parse_shapes

        try:
            shapes = parse_shapes(args.march_shapes)
        except ValueError as err:
            raise ValueError(f"--march_shapes: {err}") from None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        from nerf.evaluate import parse_ray_samples

        samples = [parse_ray_samples(x) for x in args.ray_samples.split(",")] if args.ray_samples else []
    except TrainError as e:
        print(f"error: --ray_samples: {e}", file=sys.stderr)
        return 1
    prepare_device(dev)  # the settings train.py, evaluate.py and render.py run with (TF32 matmuls on a GPU)
    for d in args.data:
        if not (Path(d) / "meta.json").is_file():
            print(f"error: {d} is not a prepared dataset (no meta.json)", file=sys.stderr)
            return 1
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (CUDA absent: reference path only)"
    print(f"bench on {name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    sizes = [2**18, 2**20] if dev.type == "cuda" else [2**14, 2**16]
    rows = bench_hashgrid(dev, sizes, args.repeats)
    if args.data:
        preset_cfg = _preset_config(args.preset, args.data)
        rendered = False
        for kind, backend in itertools.product(args.models.split(","), args.hash_backends.split(",")):
            its = args.train_iters if backend != "torch" else max(5, args.train_iters // 5)
            render = not rendered  # the render rows once
            rendered = True
            rows += bench_model(dev, preset_cfg, args.preset, its, args.render_frames, kind, backend, render=render,
                                ckpt=args.ckpt, batch_rays=rays, profile_dir=args.profile, march_steps=march,
                                march_shapes=shapes, ray_samples=samples)
    text = table(rows, name)
    print(text)
    if args.out:
        from common.atomic_io import save_json

        save_json(Path(args.out), {"device": name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                                   "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
