"""What an avatar checkpoint holds beside the weights: everything rendering needs, so that a trained avatar renders
new speech with its datasets moved away or on another machine.

``pack(persons, roots)`` makes a dict of tensors, numbers and strings (``torch.load(weights_only=True)`` reads it):
- per dataset: its name, fps, frame count, the source video's sha256, the full-frame background plate (PNG bytes),
  each person's crop box in the frame and name given in the studio (meta.json's optional ``name``; "" if none), and
  the per-frame audio codes (float16) of its audio;
- per person: name, row, crop size, focal, the crop's background plate (PNG bytes), the head sphere and torso box,
  and the per-frame tracks (head rotation, translation, Euler angles, expressions, who speaks, the torso's motion,
  the training and held-out frames): what the occupancy grid, a tracked replay and pose retargeting read;
- the voices of the persons (``speech.voices.VoiceBank``) where they could be enrolled, for who-speaks-when in new
  audio.

``persons_of(avatar)`` gives the persons back (as ``nerf.data.PersonFrames`` without images), ``datasets_of(avatar)``
the datasets' facts.
The per-person model buffers (pose statistics, torso motion model, bounds) are in the model's state dict.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import torch

from common import dataset
from nerf.data import PersonFrames
from nerf.rays import PersonBounds

TRACKS = ("R", "t", "euler", "expr", "speaking", "torso_motion", "train", "val")
"""The per-frame (or per-split) arrays of a person kept in the checkpoint."""


@dataclasses.dataclass
class DatasetInfo:
    """The facts of one trained dataset that rendering needs."""

    name: str
    fps: float
    n_frames: int
    sha256: str
    background: np.ndarray  # [H, W, 3] uint8 full-frame background plate
    boxes: dict[str, tuple[int, int, int]]  # person name -> crop box (x0, y0, side) in frame pixels


def _png(img: np.ndarray) -> torch.Tensor:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("cannot encode a background plate")
    return torch.from_numpy(buf.reshape(-1).copy())


def _unpng(data: torch.Tensor) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(data.numpy(), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def pack(persons: list[PersonFrames], roots: list[str | Path], voices: dict | None) -> dict:
    """The avatar section of a checkpoint for ``persons`` (as ``nerf.data.load_datasets`` loaded them from ``roots``)
    and the voice bank's ``to_dict()`` (None: no voices enrolled)."""
    import imageio.v3 as iio

    datasets = []
    for root in map(Path, roots):
        meta = dataset.read_meta(root)
        names = [f"{root.name}:{p['id']}" for p in meta["persons"]]
        codes = next(p.audio for p in persons if p.name in names)
        datasets.append({"name": root.name, "fps": float(meta["fps"]), "n_frames": int(meta["n_frames"]),
                         "sha256": str(meta["source"].get("sha256", "")),
                         "background": _png(iio.imread(root / "background.png")[..., :3]),
                         "persons": names, "boxes": [[int(v) for v in p["bbox"]] for p in meta["persons"]],
                         "labels": [str(p.get("name", "")) for p in meta["persons"]],
                         "audio": codes.detach().cpu().half()})
    packed = []
    for p in persons:
        d = {"name": p.name, "row": p.row, "size": p.size, "focal": float(p.focal),
             "background": _png((p.background.cpu().numpy() * 255).round().astype(np.uint8)),
             "bounds": [list(p.bounds.head_center), float(p.bounds.head_radius), list(p.bounds.torso_min),
                        list(p.bounds.torso_max)]}
        for k in TRACKS:
            v = getattr(p, k)
            if v is not None:
                d[k] = v.detach().cpu()
        packed.append(d)
    return {"datasets": datasets, "persons": packed, "voices": voices}


def datasets_of(avatar: dict) -> list[DatasetInfo]:
    """The facts of the datasets a checkpoint was trained on (their plates decoded)."""
    return [DatasetInfo(d["name"], float(d["fps"]), int(d["n_frames"]), d["sha256"], _unpng(d["background"]),
                        {n: tuple(b) for n, b in zip(d["persons"], d["boxes"])}) for d in avatar["datasets"]]


def persons_of(avatar: dict) -> list[PersonFrames]:
    """The persons a checkpoint was trained on, without images (nothing to compare with)."""
    codes = {n: d["audio"].float() for d in avatar["datasets"] for n in d["persons"]}
    persons = []
    for d in avatar["persons"]:
        S = int(d["size"])
        center, radius, lo, hi = d["bounds"]
        persons.append(PersonFrames(
            row=int(d["row"]), name=d["name"], images=torch.zeros(0, S, S, 3, dtype=torch.uint8),
            labels=torch.zeros(0, S, S, dtype=torch.uint8),
            background=torch.from_numpy(_unpng(d["background"])).float() / 255.0,
            R=d["R"], t=d["t"], euler=d["euler"], expr=d["expr"], audio=codes[d["name"]], speaking=d["speaking"],
            mouth_box=torch.zeros(0, 4), head_box=torch.zeros(0, 4), train=d["train"], val=d["val"],
            focal=float(d["focal"]), size=S, bounds=PersonBounds(tuple(center), float(radius), tuple(lo), tuple(hi)),
            torso_motion=d.get("torso_motion")))
    return persons
