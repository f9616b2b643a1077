"""Held-out evaluation: render the validation frames with their tracked poses and features.

Per person and role (speaking / listening): PSNR, SSIM, CPBD (sharpness, of the
rendered frames; the real frames' CPBD is reported beside it), mouth LMD (mediapipe
lip landmarks of rendered vs real frames, in pixels at the trained size) and the
correlation of the rendered and the real mouth opening (prepare's measure, on those
landmarks). Speaking rows add the audio-visual offset: the shift in frames that best
lines the audio envelope up with the rendered mouth (0: in sync; the real frames' own
offset beside it), and the correlation at that shift.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from common import dataset
from common.atomic_io import save_image, save_json, save_npz
from common.landmarks import LIPS
from nerf import metrics
from nerf.data import load_datasets
from nerf.device import prepare_device, resolve_device
from nerf.occupancy import build as build_occupancy
from nerf.render import render_frame
from nerf.trainer import TrainError, build, check_compatible, checkpoint_audio_encoder, config_of, load_checkpoint
from speech.speaking import mouth_opening


def load_model(ckpt_path: str | Path, data: list[str] | None = None, device: str = "cpu", occupancy: bool = False,
               ckpt: dict | None = None, march_steps: int = 0, ray_samples: tuple[int, int] | None = None):
    """Model (on ``device``: auto, cpu, cuda) and persons (on the CPU) of a checkpoint.

    ``data``: the datasets it was trained on, loaded with their frames (to compare with); None: the persons the
    checkpoint itself holds (``nerf.avatar``: no frames; what rendering new audio needs, with the datasets gone).
    With ``occupancy`` the model renders with an occupancy grid (``nerf.occupancy``): the checkpoint's when it holds
    one and ``data`` is None, else built from the persons; with ``march_steps`` > 0 as well, it renders by marching
    through it (``RenderConfig.march_steps``). ``ray_samples``: (coarse, importance) samples per field for
    rendering, instead of the training run's. ``ckpt``: the checkpoint's contents when the caller has already
    read them (not read again).
    """
    from nerf.avatar import persons_of
    from nerf.occupancy import OccupancyGrid

    if march_steps < 0:
        raise TrainError(f"march_steps must be 0 (sample as in training) or positive, not {march_steps}")
    if march_steps and not occupancy:
        raise TrainError("marching (march_steps) needs the occupancy grid: drop --no_occupancy")
    if ray_samples is not None:
        _check_ray_samples(*ray_samples)
    ckpt = ckpt if ckpt is not None else load_checkpoint(Path(ckpt_path))
    if data:
        cfg = config_of(ckpt, data=list(data))
        persons = load_datasets(cfg.data, cfg.image_size, checkpoint_audio_encoder(ckpt, Path(ckpt_path)))
    else:
        if "avatar" not in ckpt:
            raise TrainError(f"{ckpt_path} holds no avatar section (a run stopped before its first checkpoint?): "
                             "give the datasets it was trained on")
        cfg = config_of(ckpt)
        persons = persons_of(ckpt["avatar"])
    dev = resolve_device(device)
    prepare_device(dev)
    model, _ = build(cfg, persons, dev)
    check_compatible(ckpt, cfg, persons)
    model.load_state_dict(ckpt["model"])
    model.eval()
    if occupancy:
        stored = ckpt.get("render_occupancy")
        model.occupancy = OccupancyGrid(**{k: v.to(dev) for k, v in stored.items()}) if stored and not data else \
            build_occupancy(model, persons)
    model.render_cfg.march_steps = march_steps
    if ray_samples is not None:
        model.render_cfg.n_coarse, model.render_cfg.n_importance = ray_samples
    return model, persons, cfg


def parse_ray_samples(text: str) -> tuple[int, int] | None:
    """'C+I' (e.g. '24+16'): coarse and importance samples per field; '' -> None (the training run's)."""
    if not text:
        return None
    try:
        c, i = (int(x) for x in text.split("+"))
    except ValueError:
        raise TrainError(f"ray samples are given as COARSE+IMPORTANCE, e.g. 24+16, not {text!r}") from None
    _check_ray_samples(c, i)
    return c, i


def _check_ray_samples(coarse: int, importance: int) -> None:
    if coarse < 1 or importance < 0:
        raise TrainError(f"ray samples must be at least 1 coarse and 0 importance, not {coarse}+{importance}")


def evaluate(ckpt_path: str | Path | None, data: list[str], out_dir: str | Path, max_frames: int = 0,
             device: str = "cpu", save_rendered: bool = False, rendered_dir: str | Path | None = None,
             occupancy: bool = False, amp: bool = False, march_steps: int = 0,
             ray_samples: tuple[int, int] | None = None, split: str = "val", torso_motion: str = "tracked") -> dict:
    """Evaluate every person's validation (or training) frames; writes metrics.json and grid.png into out_dir.

    Args:
        ckpt_path: the checkpoint to render with (None with ``rendered_dir``).
        max_frames: at most this many validation frames per person, evenly spread (0: all).
        device: where the frames are rendered; the metrics run on the CPU.
        save_rendered: also write the rendered frames, rendered_<row>.npz (frames [N, S, S, 3] uint8 and
            their indices), so that another machine can score them (``rendered_dir``).
        rendered_dir: score the frames saved there instead of rendering (e.g. rendered on a GPU machine
            that lacks mediapipe); the datasets give the real frames.
        occupancy: render as render.py does, skipping cells an occupancy grid finds empty.
        amp: render under float16 autocast (``nerf.render``).
        march_steps: render by marching through the occupancy grid (``RenderConfig.march_steps``; 0: sample).
        ray_samples: (coarse, importance) samples per field for rendering (None: the training run's).
        split: val (the held-out frames) or train (the frames trained on: what the model fits, against what it
            generalizes to).
        torso_motion: tracked (each frame's torso motion tracked on it, as its head
            pose is) or predicted (from the head pose alone, as in a driven conversation).

    Returns:
        {"rows": per (person, role) metric dicts, "table": the printed table}.
    """
    if split not in ("val", "train"):
        raise TrainError(f"split must be val or train, not {split!r}")
    if torso_motion not in ("tracked", "predicted"):
        raise TrainError(f"torso_motion must be tracked or predicted, not {torso_motion!r}")
    if rendered_dir is not None:
        from nerf.audio import Wav2LipAudioEncoder

        # The real frames and the speaking flags are all scoring needs; the audio codes are not used.
        persons = load_datasets(list(data), _saved_size(Path(rendered_dir)), Wav2LipAudioEncoder().eval())
        model = None
    else:
        model, persons, _ = load_model(ckpt_path, data, device, occupancy, march_steps=march_steps,
                                       ray_samples=ray_samples)
        if torso_motion == "predicted":  # (the model's motion_W was fitted to the tracked motions when it was built)
            persons = [dataclasses.replace(p, torso_motion=None) for p in persons]
    if not any(len(getattr(p, split)) for p in persons):
        raise TrainError(f"the datasets have no valid {'validation' if split == 'val' else 'training'} frames")
    # The audio envelope of each person's dataset, in load_datasets' order (dataset, then person).
    envelopes = [dataset.load_npz(Path(r) / "audio_features.npz")["rms"]
                 for r in data for _ in dataset.read_meta(r)["persons"]]
    out = Path(out_dir)
    rows, grid_rows, notes = [], [], []
    try:
        import mediapipe  # noqa: F401
        landmarks = metrics.face_mesh_landmarks
    except ImportError:
        notes.append("mediapipe is absent here: mouth LMD, mouth opening and A/V offset are NaN "
                     "(score the saved frames on a machine with it: --rendered)")
        landmarks = lambda frames: np.full((len(frames), 478, 3), np.nan)  # noqa: E731
    for p, envelope in zip(persons, envelopes):
        frames = getattr(p, split)
        if max_frames and len(frames) > max_frames:
            frames = frames[torch.linspace(0, len(frames) - 1, max_frames).round().long()]
        if model is None:
            saved = _load_rendered(Path(rendered_dir), p.row)
            frames = torch.from_numpy(saved["frames"]).long()
            rendered = saved["rgb"].astype(np.float32) / 255
        else:
            rendered = np.stack([render_frame(model, p, f, amp=amp)["rgb"].clamp(0, 1).cpu().numpy()
                                 for f in frames.tolist()])
            rendered = (rendered * 255).round() / 255  # as written to a video: 8 bits
            if save_rendered:
                save_npz(out / f"rendered_{p.row}.npz", frames=frames.numpy(), person=np.array(p.name),
                         rgb=(rendered * 255).round().astype(np.uint8))
        real = np.stack([p.images[f].numpy().astype(np.float32) / 255 for f in frames.tolist()])
        speaking = p.speaking[frames].numpy()
        labels, plate = p.labels[frames].numpy(), p.background.numpy()
        as_u8 = lambda a: (a * 255).round().astype(np.uint8)  # noqa: E731
        lm_rendered, lm_real = landmarks(as_u8(rendered)), landmarks(as_u8(real))
        lips = list(LIPS)
        open_rendered, open_real = mouth_opening(lm_rendered), mouth_opening(lm_real)
        for role, sel in (("speaking", speaking), ("listening", ~speaking)):
            if not sel.any():
                continue
            row = {"person": p.name, "role": role, "frames": int(sel.sum()),
                   "psnr": float(np.mean([metrics.psnr(a, b) for a, b in zip(rendered[sel], real[sel])])),
                   "ssim": float(np.mean([metrics.ssim(a, b) for a, b in zip(rendered[sel], real[sel])])),
                   **metrics.region_psnr(rendered[sel], real[sel], labels[sel], plate),
                   "cpbd": float(np.mean([metrics.cpbd(a) for a in rendered[sel]])),
                   "cpbd_real": float(np.mean([metrics.cpbd(b) for b in real[sel]])),
                   "mouth_lmd_px": metrics.lmd(lm_rendered[sel][:, lips, :2], lm_real[sel][:, lips, :2]),
                   "mouth_open_corr": metrics.pearson(open_rendered[sel], open_real[sel])}
            if role == "speaking":
                row.update(_av_offsets(envelope, frames.numpy(), sel, open_rendered, open_real))
            rows.append(row)
        pick = np.linspace(0, len(frames) - 1, min(4, len(frames))).round().astype(int)
        grid_rows.append(np.concatenate([np.concatenate([rendered[i], real[i]], 0) for i in pick], 1))
    width = max(g.shape[1] for g in grid_rows)
    grid = np.concatenate([np.pad(g, ((0, 0), (0, width - g.shape[1]), (0, 0))) for g in grid_rows], 0)
    save_image(out / "grid.png", (grid * 255).round().astype(np.uint8))
    table = metrics.summarize([{k: v for k, v in r.items() if k != "frames"} for r in rows])
    if notes:
        table += "\n" + "\n".join(f"note: {n}" for n in notes)
    save_json(out / "metrics.json", {"split": split, "torso_motion": torso_motion if model is not None else None,
                                     "rows": rows, "notes": notes})
    return {"rows": rows, "table": table}


def _load_rendered(rendered_dir: Path, row: int) -> dict[str, np.ndarray]:
    """rendered_<row>.npz, or its parts rendered_<row>.part<k>.npz joined in order (a machine that returns files
    of limited size splits the frames: scripts/gpu_acceptance.sh)."""
    whole = rendered_dir / f"rendered_{row}.npz"
    if whole.is_file():
        return dict(np.load(whole))
    parts = sorted(rendered_dir.glob(f"rendered_{row}.part*.npz"), key=lambda q: int(q.stem.rsplit("part", 1)[1]))
    if not parts:
        raise TrainError(f"{rendered_dir} holds no rendered_{row}.npz (written by evaluate.py --save_rendered)")
    loaded = [np.load(q) for q in parts]
    return {k: (np.concatenate([z[k] for z in loaded]) if k in ("frames", "rgb") else loaded[0][k])
            for k in loaded[0].files}


def _saved_size(rendered_dir: Path) -> int:
    """The crop side of frames saved by ``evaluate(save_rendered=True)``."""
    files = sorted(rendered_dir.glob("rendered_*.npz"))
    if not files:
        raise TrainError(f"{rendered_dir} holds no rendered_<row>.npz (written by evaluate.py --save_rendered)")
    return int(np.load(files[0])["rgb"].shape[1])


def _av_offsets(envelope: np.ndarray, frames: np.ndarray, sel: np.ndarray, open_rendered: np.ndarray,
                open_real: np.ndarray) -> dict[str, float]:
    """The audio-visual offset of the rendered and of the real mouth over the selected frames.

    Args:
        envelope: [T] the dataset's audio RMS per frame (the whole clip).
        frames: [N] the rendered frame indices; sel [N] bool, the ones to score.
        open_rendered, open_real: [N] mouth openings of those frames.

    Returns:
        av_offset (frames), av_corr (the correlation at that shift) and av_offset_real (the real
        frames' offset); NaN where no shift could be scored.
    """
    found = {}
    for key, opening in (("rendered", open_rendered), ("real", open_real)):
        series = np.full(len(envelope), np.nan)  # on the clip's clock: frames not scored stay NaN
        series[frames[sel]] = opening[sel]
        found[key] = metrics.av_offset(envelope, series)
    shift = lambda o: float(o.frames) if np.isfinite(o.corr) else float("nan")  # noqa: E731
    return {"av_offset": shift(found["rendered"]), "av_corr": found["rendered"].corr,
            "av_offset_real": shift(found["real"])}
