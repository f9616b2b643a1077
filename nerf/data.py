"""Training data of one or more prepared datasets: per person frames, poses, driving features, rays.

Every person of every dataset becomes one row of the model's latent-code tables,
in dataset order then person order. Frames are resized to ``image_size`` at load
time (the focal scales with them), so the tiny CPU preset trains on 64 px crops
of the same datasets the GPU preset trains on at 512 px. Each frame's mel window is
coded once by the run's frozen audio encoder (``nerf.audio``); a ray carries the codes
of its frame's neighbours too, for the head field's temporal attention.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import torch

from common import dataset
from common.errors import PrepareError
from common.landmarks import MOUTH_BOX
from data_prep.audio_features import mel_windows
from nerf.audio import Wav2LipAudioEncoder, code_windows, frame_codes
from nerf.rays import PersonBounds


@dataclasses.dataclass
class PersonFrames:
    """All frames of one person, resized, as tensors."""

    row: int  # the person's row in the latent-code tables
    name: str  # "<dataset dir name>:<person id>"
    images: torch.Tensor  # [T, S, S, 3] uint8
    labels: torch.Tensor  # [T, S, S] uint8: 0 background, 1 head, 2 torso
    background: torch.Tensor  # [S, S, 3] float in [0, 1]
    R: torch.Tensor  # [T, 3, 3]
    t: torch.Tensor  # [T, 3]
    euler: torch.Tensor  # [T, 3]
    expr: torch.Tensor  # [T, K] (zero-padded to the widest basis of the loaded datasets)
    audio: torch.Tensor  # [T, 512] the audio code of each frame's mel window (frozen encoder)
    speaking: torch.Tensor  # [T] bool
    mouth_box: torch.Tensor  # [T, 4] x0, y0, x1, y1 pixels
    head_box: torch.Tensor  # [T, 4] x0, y0, x1, y1 pixels of the head label (whole crop where none)
    train: torch.Tensor  # [N_train] frame indices (valid frames of the train split)
    val: torch.Tensor  # [N_val] frame indices (valid frames of the val split)
    focal: float
    size: int
    bounds: PersonBounds
    torso_motion: torch.Tensor | None = None
    """[T, 6]: each frame's tracked torso motion (prepare's torso.npz) onto the reference frame's
    (``data_prep.torso_track``: a 2 x 3 affine on crop fractions, row-major), NaN where the tracking failed (the
    model then predicts it from the head pose); None: not tracked (a driven person: always predicted)."""

    # What rays and frames gather from: these live on the training device; the boxes and the
    # split indices stay on the CPU, where the ray sampler draws its random choices.
    DEVICE_FIELDS = ("images", "labels", "background", "R", "t", "euler", "expr", "audio", "speaking", "torso_motion")

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> PersonFrames:
        """This person with its frames, poses and features on ``device`` (a new object; self unchanged)."""
        return dataclasses.replace(self, **{k: getattr(self, k).to(device) for k in self.DEVICE_FIELDS
                                            if getattr(self, k) is not None})


def _resize(img: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    if img.shape[0] == size:
        return img
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR)
    return cv2.resize(img, (size, size), interpolation=interp)


def _label_boxes(mask: np.ndarray) -> np.ndarray:
    """[T, S, S] bool -> [T, 4] bounding boxes x0, y0, x1, y1 (inclusive); the whole image where empty."""
    T, S = mask.shape[:2]
    rows, cols = mask.any(2), mask.any(1)
    has = rows.any(1)
    first = lambda a: np.where(has, a.argmax(1), 0)  # noqa: E731
    last = lambda a: np.where(has, S - 1 - a[:, ::-1].argmax(1), S - 1)  # noqa: E731
    return np.stack([first(cols), first(rows), last(cols), last(rows)], -1)


def load_person(root: Path, meta: dict, person: int, row: int, size: int, k_expr: int,
                audio_codes: torch.Tensor) -> PersonFrames:
    """Load one person of a prepared dataset at ``size`` px; ``audio_codes`` [T, 512] are the dataset's."""
    import imageio.v3 as iio

    tr = dataset.load_track(root, person)
    info = next(p for p in meta["persons"] if p["id"] == person)
    scale = size / info["crop_size"]
    T = meta["n_frames"]
    images = np.stack([_resize(c, size) for c in dataset.iter_crops(root, person)])
    labels = np.stack([_resize(lab, size, nearest=True) for lab in dataset.iter_parsing(root, person)])
    if len(images) != T or len(labels) != T:
        raise PrepareError(f"{root} person {person}: {len(images)} crops and {len(labels)} label maps for "
                           f"{T} frames; prepare the video again")
    bg = _resize(iio.imread(dataset.person_dir(root, person) / "background.png")[..., :3], size)
    af = dataset.load_npz(root / "audio_features.npz")
    valid = tr["valid"]
    lm = np.nan_to_num(tr["landmarks"][:, MOUTH_BOX, :2]) * scale
    mouth = np.stack([lm[:, 0, 0], lm[:, 2, 1], lm[:, 1, 0], lm[:, 3, 1]], -1)
    pad = (mouth[:, 2:] - mouth[:, :2]).max(-1, keepdims=True) * 0.25
    mouth = np.clip(np.concatenate([mouth[:, :2] - pad, mouth[:, 2:] + pad], -1), 0, size - 1)
    expr = np.zeros((T, k_expr), np.float32)
    expr[:, : tr["expr"].shape[1]] = np.nan_to_num(tr["expr"])
    a, b = meta["splits"]["train"]
    c, d = meta["splits"]["val"]
    idx = np.arange(T)
    R = np.where(valid[:, None, None], tr["R"], np.eye(3, dtype=np.float32))
    t = np.where(valid[:, None], tr["t"], np.nanmedian(tr["t"], 0))
    motion = torch.from_numpy(dataset.load_npz(dataset.person_dir(root, person) / "torso.npz")["motion"])
    return PersonFrames(
        row=row, name=f"{root.name}:{person}", images=torch.from_numpy(images), labels=torch.from_numpy(labels),
        background=torch.from_numpy(bg).float() / 255.0,
        R=torch.from_numpy(R).float(), t=torch.from_numpy(t).float(),
        euler=torch.from_numpy(np.nan_to_num(tr["euler"])).float(), expr=torch.from_numpy(expr),
        audio=audio_codes,
        speaking=torch.from_numpy(af["speaking"][:, person].astype(bool)),
        mouth_box=torch.from_numpy(mouth).float(), head_box=torch.from_numpy(_label_boxes(labels == 1)).float(),
        train=torch.from_numpy(idx[a:b][valid[a:b]]), val=torch.from_numpy(idx[c:d][valid[c:d]]),
        focal=float(info["focal"]) * scale, size=size,
        bounds=PersonBounds.from_track(tr["canonical"], tr["t"], float(info["focal"]) * scale, size),
        torso_motion=motion)


def load_datasets(roots: list[str | Path], size: int, audio_encoder: Wav2LipAudioEncoder) -> list[PersonFrames]:
    """Every person of every dataset, rows numbered in order (dataset, then person).

    Args:
        roots: prepared dataset directories.
        size: crop side to load at.
        audio_encoder: codes every frame's mel window once (persons of a dataset share its audio).
    """
    names: dict[str, Path] = {}
    for r in map(Path, roots):  # persons are named "<folder>:<id>": two datasets of one folder name would collide
        if r.name in names:
            same = r.resolve() == names[r.name].resolve()
            raise PrepareError(f"{r} is given twice" if same else f"two datasets are named {r.name} ({names[r.name]} "
                               f"and {r}): persons are named by their dataset's folder; rename one")
        names[r.name] = r
    metas = [(Path(r), dataset.read_meta(r)) for r in roots]
    k_expr = max(dataset.load_npz(r / "expression_basis.npz")["exp_basis"].shape[1] for r, _ in metas)
    persons, row = [], 0
    for root, meta in metas:
        mel = dataset.load_npz(root / "audio_features.npz")["mel"]
        codes = frame_codes(audio_encoder, torch.from_numpy(mel_windows(mel, meta["n_frames"], meta["fps"])))
        for p in meta["persons"]:
            persons.append(load_person(root, meta, p["id"], row, size, k_expr, codes))
            row += 1
    return persons


def _in_box(box: torch.Tensor, gen: torch.Generator, last: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform pixel coordinates (u, v), floats of whole pixels, in boxes [n, 4] x0, y0, x1, y1; ``last`` 1: the
    boxes hold their x1, y1 pixels (label boxes), 0: they end there (the landmarks' float mouth box)."""
    r = torch.rand(len(box), 2, generator=gen)
    u = (box[:, 0] + r[:, 0] * (box[:, 2] + last - box[:, 0])).floor()
    v = (box[:, 1] + r[:, 1] * (box[:, 3] + last - box[:, 1])).floor()
    return u, v


HEAD_SHARE = 0.4
"""Share of each ray batch drawn inside the box of the frame's head-labelled pixels."""
MOUTH_SHARE = 0.15
"""Share drawn inside the frame's mouth box (the lips' landmarks, padded); the rest fall anywhere in the crop."""


def sample_rays(persons: list[PersonFrames], n_rays: int, gen: torch.Generator, audio_window: int,
                split: str = "train", head_share: float = HEAD_SHARE,
                mouth_share: float = MOUTH_SHARE) -> RayBatch:
    """A random ray batch over persons, frames and pixels, biased toward the head and the mouth.

    Each ray falls in its frame's mouth box or head-label box with these shares, and anywhere in the crop
    otherwise (the boxes overlap, so a box's pixels get more than its share).

    Args:
        audio_window: each ray carries the audio codes of frames f - audio_window .. f + audio_window.
        head_share, mouth_share: the batch's shares drawn from the boxes (each >= 0, summing to at most 1).

    Returns:
        the rays, with their frames, recorded colours and labels (``RayBatch``).
    """
    if min(head_share, mouth_share) < 0 or head_share + mouth_share > 1 + 1e-6:
        raise ValueError(f"ray shares must be >= 0 and sum to at most 1, not {head_share} and {mouth_share}")
    P = len(persons)
    who = torch.randint(0, P, (n_rays,), generator=gen)
    out: list[RayBatch] = []
    n_pairs = 0
    for i, p in enumerate(persons):
        sel = (who == i).nonzero()[:, 0]
        n = len(sel)
        if n == 0:
            continue
        pool = p.train if split == "train" else p.val
        frame = pool[torch.randint(0, len(pool), (n,), generator=gen)]
        kind = torch.rand(n, generator=gen)
        s = p.size
        u = torch.randint(0, s, (n,), generator=gen).float()
        v = torch.randint(0, s, (n,), generator=gen).float()
        for lo, hi, box, last in ((0.0, mouth_share, p.mouth_box, 0.0),
                                  (mouth_share, mouth_share + head_share, p.head_box, 1.0)):
            inside = (kind >= lo) & (kind < hi)
            bu, bv = _in_box(box[frame], gen, last)
            u = torch.where(inside, bu, u).clamp(0, s - 1)
            v = torch.where(inside, bv, v).clamp(0, s - 1)
        # The random choices above are drawn on the CPU (one generator, reproducible on any device);
        # the gathers below run where the frames live.
        # The (person, frame) pairs, found on the CPU (no device sync): their audio windows are gathered once.
        frames_of_pairs, pair = torch.unique(frame, return_inverse=True)
        dev = p.device
        frame, u, v = frame.to(dev), u.to(dev), v.to(dev)
        ui, vi = u.long(), v.long()
        out.append(RayBatch(
            row=torch.full((n,), p.row, device=dev), frame=frame, u=u, v=v,
            rgb=p.images[frame, vi, ui].float() / 255.0, label=p.labels[frame, vi, ui].long(),
            background=p.background[vi, ui], R=p.R[frame], t=p.t[frame], euler=p.euler[frame],
            expr=p.expr[frame], speaking=p.speaking[frame], focal=torch.full((n,), p.focal, device=dev),
            pair=(pair + n_pairs).to(dev), audio=code_windows(p.audio, frames_of_pairs.to(dev), audio_window),
            torso_motion=None if p.torso_motion is None else p.torso_motion[frame]))
        n_pairs += len(frames_of_pairs)
    return RayBatch.cat(out)


@dataclasses.dataclass
class RayBatch:
    """Rays of persons' frames: per-ray tensors [R, ...], and per (person, frame) pair the audio code window.

    ``sample_rays`` draws them for training; ``nerf.render.frame_batch`` makes every ray of one frame.
    """

    row: torch.Tensor  # [R] long: the person's row in the latent-code tables
    u: torch.Tensor  # [R] float pixel column
    v: torch.Tensor  # [R] float pixel row
    focal: torch.Tensor  # [R]
    R: torch.Tensor  # [R, 3, 3] head rotation
    t: torch.Tensor  # [R, 3] head translation
    euler: torch.Tensor  # [R, 3]
    expr: torch.Tensor  # [R, K]
    speaking: torch.Tensor  # [R] bool
    background: torch.Tensor  # [R, 3] the plate's colour at the pixel
    pair: torch.Tensor  # [R] long: the ray's (person, frame) pair, an index into ``audio``
    audio: torch.Tensor  # [Q, 2 audio_window + 1, 512] per pair: the audio codes of its frame's neighbours
    frame: torch.Tensor | None = None  # [R] long
    rgb: torch.Tensor | None = None  # [R, 3] the recorded colour (training, evaluation)
    label: torch.Tensor | None = None  # [R] long: 0 background, 1 head, 2 torso
    torso_motion: torch.Tensor | None = None  # [R, 6] the frame's tracked torso motion (NaN: predict it)

    PAIR_FIELDS = ("audio",)
    """Fields with one row per (person, frame) pair, not per ray."""

    def __len__(self) -> int:
        return len(self.row)

    def select(self, index) -> RayBatch:
        """The rays ``index`` (a slice, a bool mask or indices); the per-pair fields stay whole."""
        return dataclasses.replace(self, **{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)
                                            if f.name not in self.PAIR_FIELDS and getattr(self, f.name) is not None})

    @classmethod
    def cat(cls, batches: list[RayBatch]) -> RayBatch:
        """The batches one after the other (their ``pair`` indices already count the pairs before them)."""
        out = {}
        for f in dataclasses.fields(cls):
            values = [getattr(b, f.name) for b in batches]
            if all(v is None for v in values):
                out[f.name] = None
            elif any(v is None for v in values):
                raise ValueError(f"some batches have {f.name} and others not")
            else:
                out[f.name] = torch.cat(values)
        return cls(**out)
