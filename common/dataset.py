"""The dataset directory: the contract between prepare and every later stage.

Layout (../shared/DESIGN.md, as built; docs/DATASET.md describes every field):

    meta.json             schema version, source sha256, fps, n_frames, frame size,
                          persons [{id, bbox, crop_size, focal, ...}], splits, versions
    audio.wav             16 kHz mono, exactly n_frames / fps long
    audio_features.npz    mel [80, M] (80 frames/s), zcr [T], rms [T], speaking [T, P],
                          voiced [T], vad_prob [T], speaker_scores [T, P]
    expression_basis.npz  mean [N*3], geo_basis [N*3, G], exp_basis [N*3, K], exp_std [K],
                          explained_variance_ratio [K_all]
    background.png        full-frame background plate
    persons/<id>/frames.mp4      the crops, H.264 4:4:4
    persons/<id>/parsing.mkv     labels 0/1/2 stored as grey 0/100/200, FFV1 (lossless)
    persons/<id>/track.npz       landmarks [T,478,3], valid [T], found [T], R [T,3,3], t [T,3],
                                 euler [T,3], expr [T,K], id_coeff [G], canonical [478,3],
                                 rigid [M], focal [], reproj_px [T]
    persons/<id>/torso.npz       motion [T,6] (the torso's 2 x 3 affine onto the reference frame's, crop
                                 fractions, NaN where not tracked), reference [], correlation [T]
    persons/<id>/background.png  the crop's background plate
    qa/                   pictures to check at a glance
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from common import video_io
from common.errors import PrepareError

SCHEMA_VERSION = 2
"""2: persons/<id>/torso.npz (the torso's motion per frame) added."""
LABEL_SCALE = 100


def read_meta(root: str | Path) -> dict:
    """meta.json of a dataset, after checking it is complete and of this schema version.

    Raises:
        PrepareError: not a dataset, unfinished, or another schema version.
    """
    path = Path(root) / "meta.json"
    if not path.is_file():
        raise PrepareError(f"{root} is not a finished dataset (no meta.json); run scripts/prepare.py on the video")
    meta = json.loads(path.read_text())
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        video = meta.get("source", {}).get("path", "VIDEO")
        how = (f"scripts/prepare.py --video {video} --out {root} upgrades it (only the torso stage runs)"
               if version == 1 else f"prepare the video again: scripts/prepare.py --video {video} --out {root} --force")
        raise PrepareError(f"{root} has dataset schema version {version}, this code reads version {SCHEMA_VERSION}; "
                           + how)
    return meta


def person_dir(root: str | Path, person: int) -> Path:
    return Path(root) / "persons" / str(person)


def load_track(root: str | Path, person: int) -> dict[str, np.ndarray]:
    """A person's track.npz as a dict of arrays (see the module doc)."""
    path = person_dir(root, person) / "track.npz"
    if not path.is_file():
        raise PrepareError(f"{root} has no person {person}")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def iter_crops(root: str | Path, person: int) -> Iterator[np.ndarray]:
    """A person's crops in frame order, [S, S, 3] uint8 each."""
    return video_io.iter_frames(person_dir(root, person) / "frames.mp4")


def iter_parsing(root: str | Path, person: int) -> Iterator[np.ndarray]:
    """A person's label maps in frame order, [S, S] uint8 in {0, 1, 2}."""
    for grey in video_io.iter_frames(person_dir(root, person) / "parsing.mkv", gray=True):
        yield ((grey.astype(np.int16) + LABEL_SCALE // 2) // LABEL_SCALE).astype(np.uint8)


def splits(n_frames: int, val_fraction: float = 0.1) -> dict[str, list[int]]:
    """Train = the first 90% of frames, val = the last 10% (half-open [start, end) ranges)."""
    n_val = max(1, int(round(n_frames * val_fraction)))
    return {"train": [0, n_frames - n_val], "val": [n_frames - n_val, n_frames]}
