"""Held-out evaluation: render the validation frames with their tracked poses and features.

Per person and role (speaking / listening): PSNR, SSIM, CPBD (sharpness, of the
rendered frames; the real frames' CPBD is reported beside it) and mouth LMD
(mediapipe lip landmarks of rendered vs real frames, in pixels at the trained size).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from data_prep.atomic_io import save_image, save_json
from nerf import metrics
from nerf.data import load_datasets
from nerf.render import render_frame
from nerf.trainer import TrainConfig, TrainError, build, check_compatible, load_checkpoint


def load_model(ckpt_path: str | Path, data: list[str]):
    """Model and persons of a checkpoint, evaluated on the given datasets."""
    ckpt = load_checkpoint(Path(ckpt_path))
    saved = json.loads(ckpt["config"])
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in saved.items() if k in known})
    cfg.data = list(data)
    persons = load_datasets(cfg.data, cfg.image_size)
    model, _ = build(cfg, persons)
    check_compatible(ckpt, cfg, persons)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, persons, cfg


def evaluate(ckpt_path: str | Path, data: list[str], out_dir: str | Path, max_frames: int = 0) -> dict:
    """Evaluate every person's validation frames; writes metrics.json and grid.png into out_dir.

    Args:
        max_frames: at most this many validation frames per person, evenly spread (0: all).

    Returns:
        {"rows": per (person, role) metric dicts, "table": the printed table}.
    """
    model, persons, _ = load_model(ckpt_path, data)
    if not any(len(p.val) for p in persons):
        raise TrainError("the datasets have no valid validation frames")
    rows, grid_rows = [], []
    for p in persons:
        frames = p.val
        if max_frames and len(frames) > max_frames:
            frames = frames[torch.linspace(0, len(frames) - 1, max_frames).round().long()]
        rendered, real = [], []
        for f in frames.tolist():
            r = render_frame(model, p, f)["rgb"].clamp(0, 1).numpy()
            rendered.append(r)
            real.append(p.images[f].numpy().astype(np.float32) / 255)
        rendered, real = np.stack(rendered), np.stack(real)
        speaking = p.speaking[frames].numpy()
        as_u8 = lambda a: (a * 255).round().astype(np.uint8)  # noqa: E731
        for role, sel in (("speaking", speaking), ("listening", ~speaking)):
            if not sel.any():
                continue
            rows.append({"person": p.name, "role": role, "frames": int(sel.sum()),
                         "psnr": float(np.mean([metrics.psnr(a, b) for a, b in zip(rendered[sel], real[sel])])),
                         "ssim": float(np.mean([metrics.ssim(a, b) for a, b in zip(rendered[sel], real[sel])])),
                         "cpbd": float(np.mean([metrics.cpbd(a) for a in rendered[sel]])),
                         "cpbd_real": float(np.mean([metrics.cpbd(b) for b in real[sel]])),
                         "mouth_lmd_px": float(metrics.mouth_lmd(as_u8(rendered[sel]), as_u8(real[sel])).px)})
        pick = np.linspace(0, len(frames) - 1, min(4, len(frames))).round().astype(int)
        grid_rows.append(np.concatenate([np.concatenate([rendered[i], real[i]], 0) for i in pick], 1))
    out = Path(out_dir)
    width = max(g.shape[1] for g in grid_rows)
    grid = np.concatenate([np.pad(g, ((0, 0), (0, width - g.shape[1]), (0, 0))) for g in grid_rows], 0)
    save_image(out / "grid.png", (grid * 255).round().astype(np.uint8))
    table = metrics.summarize([{k: v for k, v in r.items() if k != "frames"} for r in rows])
    save_json(out / "metrics.json", {"rows": rows})
    return {"rows": rows, "table": table}
