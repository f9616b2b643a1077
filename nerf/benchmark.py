"""Speed benchmarks behind ``scripts/bench.py``: the hash grid's throughput, training steps, rendered frames.

Every row is a dict (``row``: what was timed, then its figures); ``table`` prints them. Timings are medians of
repeats, CUDA-event timed on a GPU; ``bench_model``'s rows come from an untrained model unless a checkpoint is
given (its occupancy grid and marching rows then mean something).
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from pathlib import Path

import torch

from nerf.encoding import HashGridConfig, hash_grid_encode


def _timer(fn, repeats: int, cuda: bool) -> float:
    """Median seconds of fn() over repeats (after two warm-up calls)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _grid_calls(inputs: list[torch.Tensor], grad: torch.Tensor, tables: torch.Tensor, cfg: HashGridConfig,
                backend: str, half: bool):
    """The timed calls of one hash-grid row: forward alone, and forward + backward; each takes the next input set."""
    turn = itertools.count()

    def fwd():
        with torch.no_grad():
            hash_grid_encode(inputs[next(turn) % len(inputs)], tables, cfg, backend, half)

    def fwd_bwd():
        tables.grad = None
        hash_grid_encode(inputs[next(turn) % len(inputs)], tables, cfg, backend, half).backward(grad)

    return fwd, fwd_bwd


def bench_hashgrid(dev: torch.device, sizes: list[int], repeats: int) -> list[dict]:
    cfg = HashGridConfig()  # the gpu_full grid
    cuda = dev.type == "cuda"
    backends = [("reference", "torch", False)]
    if cuda:
        from nerf import hashgrid_cuda

        ok, why = hashgrid_cuda.available()
        if ok:
            backends += [("fused fp32", "cuda", False), ("fused fp16", "cuda", True)]
        else:
            print(f"fused kernel unavailable: {why}")
    rows = []
    gen = torch.Generator(device=dev).manual_seed(0)
    tables = (torch.rand(cfg.n_levels, cfg.table_size, cfg.n_features_per_level, device=dev, generator=gen) - 0.5)
    tables.requires_grad_(True)
    for n in sizes:
        inputs = [torch.rand(n, 3, device=dev, generator=gen) for _ in range(4)]  # rotate: not one cached set
        grad = torch.randn(n, cfg.output_dim, device=dev, generator=gen)
        for name, backend, half in backends:
            fwd, fwd_bwd = _grid_calls(inputs, grad, tables, cfg, backend, half)
            reps = repeats if (cuda and backend != "torch") else max(3, repeats // 10)
            tf, tb = _timer(fwd, reps, cuda), _timer(fwd_bwd, reps, cuda)
            rows.append({"row": f"hash grid {name}", "points": n, "forward_samples_per_s": n / tf,
                         "forward_backward_samples_per_s": n / tb, "forward_ms": tf * 1e3, "fwd_bwd_ms": tb * 1e3})
            print(f"  {name:>11} 2^{n.bit_length() - 1}: forward {n / tf:.3g}/s, forward+backward {n / tb:.3g}/s")
        del inputs, grad
    return rows


def bench_model(dev: torch.device, preset_cfg, preset: str, train_iters: int, render_frames: int,
                model_kind: str = "shared", hash_backend: str = "auto", render: bool = True,
                ckpt: str = "", batch_rays: list[int] | None = None, profile_dir: str = "",
                march_steps: list[int] | None = None, march_shapes: list[tuple[int, int]] | None = None,
                ray_samples: list[tuple[int, int]] | None = None) -> list[dict]:
    """Training iterations/s at the preset (``preset_cfg``: the TrainConfig train.py makes of the preset file named
    ``preset`` and the datasets; and at each of ``batch_rays``) and two-person render FPS on the prepared datasets;
    with ``profile_dir``, a torch.profiler table of a few training iterations and of one rendered frame
    (``_profile``)."""
    import dataclasses

    from nerf import fused_march
    from nerf.audio import Wav2LipAudioEncoder
    from nerf.data import load_datasets
    from nerf.metrics import psnr
    from nerf.occupancy import build as build_occupancy
    from nerf.render import render_persons
    from nerf.trainer import build

    cfg = dataclasses.replace(preset_cfg, model=model_kind, hash_backend=hash_backend)
    torch.manual_seed(0)
    # Speed does not depend on the audio encoder's weights: a freshly initialized one codes the frames.
    persons = [p.to(dev) for p in load_datasets(cfg.data, cfg.image_size, Wav2LipAudioEncoder().eval())]
    model, opt = build(cfg, persons, dev)
    gen = torch.Generator().manual_seed(0)
    jit = torch.Generator(device=dev).manual_seed(1)
    cuda = dev.type == "cuda"

    def step():
        _train_step(model, opt, persons, cfg, gen, jit)

    rows = []
    for n_rays in batch_rays or [cfg.batch_rays]:
        cfg.batch_rays = n_rays
        for _ in range(3):  # warm-up
            step()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        for _ in range(train_iters):
            step()
        if cuda:
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / train_iters
        mem = torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else float("nan")
        what = f"{model_kind}, hash {hash_backend}, {Path(preset).name}, {n_rays} rays, {cfg.image_size} px"
        rows.append({"row": f"training ({what})", "iterations_per_s": 1 / dt, "rays_per_s": n_rays / dt,
                     "peak_gpu_gib": mem, "parameters": sum(p.numel() for p in model.parameters())})
        print(f"  training ({what}): {1 / dt:.2f} it/s, {n_rays / dt:.3g} rays/s, peak {mem:.2f} GiB")
    if profile_dir:
        _profile(Path(profile_dir) / f"profile_train_{model_kind}_{hash_backend}.txt", step, 5, cuda)
    if not render:
        return rows
    if ckpt:  # render a trained model (an untrained one is dense everywhere: no occupancy grid can help it)
        from nerf.evaluate import load_model

        del model, opt
        model, persons, cfg = load_model(ckpt, list(preset_cfg.data), str(dev))
        if train_iters:
            rows += _grid_training_rows(model, persons, cfg, dev, train_iters, cuda)
    model.eval()
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)

    turn = itertools.count()
    frames_of = lambda i: [(p, int(p.val[i % len(p.val)])) for p in persons]  # noqa: E731

    def psnr_between(a: list[dict], b: list[dict]) -> float:  # over all crops of the frame together
        return psnr(torch.cat([x["rgb"] for x in a]).cpu(), torch.cat([y["rgb"] for y in b]).cpu())

    share = built = None
    for with_grid, amp in ((False, False), (True, False), (True, True)):
        if with_grid and model.occupancy is None:
            t0 = time.perf_counter()
            model.occupancy = build_occupancy(model, persons)
            if cuda:
                torch.cuda.synchronize()
            built = time.perf_counter() - t0
            share = ", ".join(f"{k} {v:.0%}" for k, v in model.occupancy.fraction().items())
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        spf = _timer(lambda amp=amp: render_persons(model, frames_of(next(turn)), amp=amp), render_frames, cuda)
        mem = torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else float("nan")
        what = f"{model_kind}, {len(persons)} persons x {cfg.image_size}^2, batched" + (
            f", occupancy grid ({share} occupied, built in {built:.1f} s)" if with_grid else ", every sample") + (
            ", float16 autocast" if amp else "")
        row = {"row": f"render ({what})", "frames_per_s": 1 / spf, "peak_gpu_gib": mem}
        if amp:  # what autocast costs in quality: PSNR between the float16 and float32 renders of one frame
            row["psnr_vs_float32_db"] = psnr_between(render_persons(model, frames_of(0), amp=True),
                                                     render_persons(model, frames_of(0)))
        rows.append(row)
        print(f"  render ({what}): {1 / spf:.2f} FPS, peak {mem:.2f} GiB"
              + (f", {row['psnr_vs_float32_db']:.1f} dB PSNR against the float32 render" if amp else ""))
    rc = model.render_cfg
    trained = (rc.n_coarse, rc.n_importance)
    # marching goes through the fused kernel where it runs: then rows with the PyTorch marcher beside those
    fused = model.fused_marching(dev)[0]
    default_shape = (fused_march.BLOCK, fused_march.NUM_WARPS)
    variants = [(f"marching {n} steps" + (", fused kernel" if fused else ""), {"march_steps": n})
                for n in march_steps or []] \
        + [(f"marching {n} steps, fused kernel {b}x{w}", {"march_steps": n, "shape": (b, w)})
           for n in (march_steps or []) if fused for b, w in march_shapes or [] if (b, w) != default_shape] \
        + [(f"marching {n} steps, PyTorch marcher", {"march_steps": n, "fused": False})
           for n in (march_steps or []) if fused] \
        + [(f"{c}+{i} samples per field", {"n_coarse": c, "n_importance": i}) for c, i in ray_samples or []]
    sampled = render_persons(model, frames_of(0)) if variants else None
    for label, settings in variants:  # other ways through the same grid, against the sampled render
        fused_march.BLOCK, fused_march.NUM_WARPS = settings.get("shape", default_shape)
        for k, v in settings.items():
            if k != "shape":
                setattr(rc, k, v)
        for amp in (False, True):
            if cuda:
                torch.cuda.reset_peak_memory_stats(dev)
            spf = _timer(lambda amp=amp: render_persons(model, frames_of(next(turn)), amp=amp), render_frames, cuda)
            mem = torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else float("nan")
            other = render_persons(model, frames_of(0), amp=amp)
            what = f"{model_kind}, {len(persons)} persons x {cfg.image_size}^2, " \
                f"occupancy grid, {label}" \
                + (", float16 autocast" if amp else "")
            row = {"row": f"render ({what})", "frames_per_s": 1 / spf, "peak_gpu_gib": mem,
                   "psnr_vs_sampled_db": psnr_between(other, sampled)}
            if rc.march_steps:  # field queries per ray that met a field
                cast = torch.cat([x["samples"][x["samples"] > 0] for x in other])
                row["queries_per_ray"] = cast.mean().item() if len(cast) else 0.0
            rows.append(row)
            print(f"  render ({what}): {1 / spf:.2f} FPS, peak {mem:.2f} GiB, "
                  + (f"{row['queries_per_ray']:.1f} field queries per ray, " if "queries_per_ray" in row else "")
                  + f"{row['psnr_vs_sampled_db']:.1f} dB PSNR against the {trained[0]}+{trained[1]} sampled render")
        if profile_dir:
            name = "_".join(f"{k}{v}" for k, v in settings.items())
            _profile(Path(profile_dir) / f"profile_render_{model_kind}_{name}.txt",
                     lambda: render_persons(model, frames_of(next(turn))), 1, cuda)
        rc.march_steps, (rc.n_coarse, rc.n_importance), rc.fused = 0, trained, True
        fused_march.BLOCK, fused_march.NUM_WARPS = default_shape
    for key, db in fused_march.checks.items():  # each kernel's first-render check (fused_march.verify)
        what = f"{'float16' if key[1] else 'float32'}, {'head and torso' if key[2] else 'head'}, {key[3]}x{key[4]}"
        rows.append({"row": f"fused kernel check ({what})", "psnr_vs_pytorch_marcher_db": db})
        print(f"  fused kernel check ({what}): {db:.1f} dB PSNR against the PyTorch marcher on its first render")
    fused_march.checks.clear()  # (the next model's kernels are checked afresh)
    if profile_dir:
        _profile(Path(profile_dir) / f"profile_render_{model_kind}.txt",
                 lambda: render_persons(model, frames_of(next(turn))), 1, cuda)
    model.occupancy = None
    return rows


def _train_step(model, opt, persons, cfg, gen: torch.Generator, jit: torch.Generator) -> dict:
    """One training step as train.py takes it (a ray batch, the losses, backward, Adam); returns the losses."""
    from nerf.data import sample_rays
    from nerf.trainer import losses

    batch = sample_rays(persons, cfg.batch_rays, gen, cfg.audio_window)
    loss = losses(model(batch, jitter=True, gen=jit), batch, model, cfg)
    opt.zero_grad(set_to_none=True)
    loss["total"].backward()
    opt.step()
    return loss


def _grid_training_rows(model, persons, cfg, dev: torch.device, iters: int, cuda: bool) -> list[dict]:
    """Training steps of a trained model at its run's batch size, every sample queried and then through an occupancy
    grid (``train.py --occupancy_every``): what the grid saves once the fields have found their shape (an untrained
    model's density is everywhere, so the bench's other training rows cannot show it). The same batches both ways;
    Adam runs at rate 0, so the timed steps leave the weights as they were."""
    from nerf.occupancy import build as build_occupancy

    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.0, fused=cuda or None)
    grid = build_occupancy(model, persons)
    share = ", ".join(f"{k} {v:.0%}" for k, v in grid.fraction().items())
    rows = []
    for with_grid in (False, True):
        model.occupancy = grid if with_grid else None
        gen, jit = torch.Generator().manual_seed(0), torch.Generator(device=dev).manual_seed(1)
        photo = []

        def step(gen=gen, jit=jit, photo=photo):
            photo.append(_train_step(model, opt, persons, cfg, gen, jit)["photo"].detach())

        dt = _timer(step, iters, cuda)
        what = f"{cfg.batch_rays} rays, " + (f"through its occupancy grid ({share} of cells)" if with_grid
                                             else "every sample")
        mse = torch.stack(photo).mean().item()
        rows.append({"row": f"training step of the trained model ({what})", "iterations_per_s": 1 / dt,
                     "photo_psnr_db": -10 * math.log10(max(mse, 1e-12))})
        print(f"  training step of the trained model ({what}): {1 / dt:.2f} it/s, batch PSNR "
              f"{rows[-1]['photo_psnr_db']:.2f} dB")
    model.occupancy = None
    return rows


def _profile(path: Path, fn, repeats: int, cuda: bool) -> None:
    """torch.profiler over ``repeats`` calls of fn (after one untimed call): the operators by self time on the
    device (CUDA) or the host, the count of operator calls and kernel launches, and the host syncs."""
    from torch.profiler import ProfilerActivity, profile

    from common.atomic_io import atomic_path

    fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(repeats):
            fn()
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    calls = sum(e.count for e in events if e.key.startswith("aten::")) / repeats
    kernels = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel")) / repeats
    syncs = {k: sum(e.count for e in events if e.key == k) / repeats
             for k in ("aten::_local_scalar_dense", "aten::nonzero", "aten::_unique2", "cudaStreamSynchronize",
                       "cudaDeviceSynchronize", "cudaMemcpyAsync")}
    head = (f"per call: {calls:.0f} aten operator calls (nested ones included), {kernels:.0f} kernel launches; "
            f"syncs and copies per call: {syncs}\n\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(head + events.table(sort_by=sort, row_limit=40, max_name_column_width=60) + "\n"
                             + events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
    print(f"  profile: {path} ({calls:.0f} operator calls, {kernels:.0f} kernel launches per call)")


def table(rows: list[dict], device: str) -> str:
    lines = [f"device: {device}",
             "| row | size | forward /s | fwd+bwd /s | it/s | FPS | dB vs float32 | queries/ray | dB vs sampled | peak GiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    def g(r: dict, k: str, fmt: str) -> str:
        return fmt.format(r[k]) if k in r and r[k] == r[k] else ""

    for r in rows:
        size = f"2^{r['points'].bit_length() - 1} points" if "points" in r else ""
        lines.append(f"| {r['row']} | {size} | {g(r, 'forward_samples_per_s', '{:.3g}')} | "
                     f"{g(r, 'forward_backward_samples_per_s', '{:.3g}')} | {g(r, 'iterations_per_s', '{:.2f}')} | "
                     f"{g(r, 'frames_per_s', '{:.2f}')} | {g(r, 'psnr_vs_float32_db', '{:.1f}')} | "
                     f"{g(r, 'queries_per_ray', '{:.1f}')} | {g(r, 'psnr_vs_sampled_db', '{:.1f}')} | "
                     f"{g(r, 'peak_gpu_gib', '{:.2f}')} |")
    return "\n".join(lines)
