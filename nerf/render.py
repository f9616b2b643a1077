"""Whole frames from the avatar model: every pixel of one or several persons' crops, in chunks.

Rendering (no autograd) keeps the work to the rays that can show a person: a ray that meets neither its
person's head sphere nor torso box shows the background plate and costs no field query. The persons of one
output frame render together (their rays in one batch, one set of kernel launches per chunk), optionally with
the field queries under float16 autocast (``amp``); the ray geometry, the sampling, the compositing and the hash grids'
interpolation stay float32.

Measured on the CPU box (a 64 px model of the dev clips, 2 persons, occupancy grid): float16
field queries differ from float32 by 78.8 / 79.3 dB PSNR and leave the PSNR against the real frames
as it was (to 0.01 dB), but are about 2x slower there (CPUs lack fast float16 matmuls); with the ray
geometry in float16 too it was 42.9 / 45.7 dB, and bfloat16 lost 2.8 dB. ``amp`` is for GPUs, whose
float16 tensor cores it is meant for.
"""

from __future__ import annotations

import dataclasses

import torch

from nerf.audio import code_windows
from nerf.data import PersonFrames, RayBatch
from nerf.model import AvatarModel


def frame_batch(p: PersonFrames, frame: int, audio_window: int,
                device: torch.device | None = None) -> RayBatch:
    """All S*S rays of one frame of one person, in the layout of ``nerf.data.sample_rays``.

    Per-frame values are broadcast views (no copy per ray); the frame's audio code window is its
    one pair (``pair`` is 0 for every ray); the real colour and label only where the person has a
    recorded image of that frame. Only the frame's own slices move to ``device`` (default: where
    the person's frames are), so a person kept on the CPU renders on a GPU model without copying
    its whole clip.
    """
    s, dev = p.size, device if device is not None else p.device
    v, u = torch.meshgrid(torch.arange(s, device=dev), torch.arange(s, device=dev), indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    n = s * s
    here = lambda x: x.to(dev, non_blocking=True)  # noqa: E731
    rep = lambda x: here(x)[None].expand(n, *x.shape)  # noqa: E731
    audio = code_windows(p.audio, torch.tensor([frame], device=p.audio.device), audio_window)  # [1, 2 h + 1, 512]
    recorded = frame < len(p.images)  # (a driven person has no recorded frame: render/drive.py)
    return RayBatch(
        row=torch.full((n,), p.row, device=dev), frame=torch.full((n,), frame, device=dev), u=u.float(), v=v.float(),
        background=here(p.background).reshape(n, 3), R=rep(p.R[frame]), t=rep(p.t[frame]), euler=rep(p.euler[frame]),
        expr=rep(p.expr[frame]), audio=here(audio), pair=torch.zeros(n, dtype=torch.long, device=dev),
        speaking=here(p.speaking[frame]).expand(n), focal=torch.full((n,), p.focal, device=dev),
        torso_motion=None if p.torso_motion is None else rep(p.torso_motion[frame]),
        rgb=here(p.images[frame]).reshape(n, 3).float() / 255.0 if recorded else None,
        label=here(p.labels[frame]).reshape(n).long() if recorded else None)


def tile_order(u: torch.Tensor, v: torch.Tensor, size: int, tile: int = 8) -> torch.Tensor:
    """The permutation that orders pixels (u, v) by tile x tile squares, raster order within each and of the squares.

    Neighbouring rays then travel together: the fused marcher's blocks of 64 rays are 8 x 8 squares, whose rays enter,
    cross and leave the fields at nearly the same steps (on 128 px models of the synthetic conversation, 6-11% fewer
    computed lanes for the head than 64-pixel runs of a row; docs/PERFORMANCE.md)."""
    u, v = u.long(), v.long()
    key = ((v // tile) * (size // tile + 1) + u // tile) * tile * tile + (v % tile) * tile + u % tile
    return key.argsort()


@torch.no_grad()
def render_persons(model: AvatarModel, items: list[tuple[PersonFrames, int]], chunk: int | None = None,
                   amp: bool = False) -> list[dict[str, torch.Tensor]]:
    """Render several (person, frame) crops together on the model's device.

    Args:
        items: (person, frame) pairs, e.g. every person of one output frame.
        chunk: rays per model call (default: 4096 on the CPU, 65536 on a GPU, and all of them when marching
            with the fused kernel on a GPU: its per-call work, about 700 small operations for the rays' geometry,
            codes and the torso's motion, is then paid once per frame).
        amp: the field queries under float16 autocast (see the module docstring).

    Returns:
        Per item: rgb [S, S, 3] in [0, 1], head_acc and torso_acc [S, S]; when marching
        (``RenderConfig.march_steps``), also samples [S, S], the field queries per pixel (0 where no ray was cast).
    """
    dev = model.head_center.device
    probe = 4096 // 4 if dev.type == "cpu" else 65536 // 4
    rc = model.render_cfg
    if chunk is None and dev.type == "cuda" and rc.march_steps > 0 and model.occupancy is not None \
            and model.fused_marching(dev)[0]:
        chunk = 1 << 22  # fused marching keeps no [rays, samples] tensors: the whole frame in one launch
    chunk = chunk or (4096 if dev.type == "cpu" else 65536)
    tracked = all(p.torso_motion is not None for p, _ in items)
    parts, casts, backgrounds = [], [], []
    for k, (p, frame) in enumerate(items):
        b = frame_batch(p, frame, model.cfg.audio_window, device=dev)
        # (in slices: the occupancy probes of a whole 512 px crop at once would take gigabytes)
        hit = torch.cat([model.ray_hits(b.select(slice(a, a + probe))) for a in range(0, len(b), probe)])
        ray = hit.nonzero()[:, 0]
        ray = ray[tile_order(b.u[ray], b.v[ray], p.size)]
        casts.append(ray)  # the rays cast, in the order they are rendered
        backgrounds.append(b.background)
        part = dataclasses.replace(dataclasses.replace(b, frame=None, rgb=None, label=None).select(ray),
                                   pair=torch.full((len(ray),), k, dtype=torch.long, device=dev))
        parts.append(part if tracked else dataclasses.replace(part, torso_motion=None))
    batch = RayBatch.cat(parts)
    n = len(batch)
    outs: dict[str, list[torch.Tensor]] = {"rgb": [], "head_acc": [], "torso_acc": []}
    if model.render_cfg.march_steps > 0 and model.occupancy is not None:  # (what the model then marches)
        outs["samples"] = []
    for a in range(0, n, chunk):
        out = model(batch.select(slice(a, a + chunk)), jitter=False, amp=amp)
        for key in outs:
            outs[key].append(out[key])
    flat = {key: torch.cat(v) if v else torch.zeros((0, 3) if key == "rgb" else (0,), device=dev)
            for key, v in outs.items()}
    results, at = [], 0
    for (p, _), ray, bg in zip(items, casts, backgrounds):
        m = len(ray)
        s = p.size
        rgb, head, torso = bg.clone(), torch.zeros(s * s, device=dev), torch.zeros(s * s, device=dev)
        rgb[ray], head[ray], torso[ray] = flat["rgb"][at:at + m], flat["head_acc"][at:at + m], flat["torso_acc"][at:at + m]
        result = {"rgb": rgb.reshape(s, s, 3), "head_acc": head.reshape(s, s), "torso_acc": torso.reshape(s, s)}
        if "samples" in flat:
            samples = torch.zeros(s * s, device=dev)
            samples[ray] = flat["samples"][at:at + m]
            result["samples"] = samples.reshape(s, s)
        at += m
        results.append(result)
    return results


def render_frame(model: AvatarModel, p: PersonFrames, frame: int, chunk: int | None = None,
                 amp: bool = False) -> dict[str, torch.Tensor]:
    """Render one frame of one person (``render_persons`` with one item)."""
    return render_persons(model, [(p, frame)], chunk, amp)[0]
