"""Writes that never leave a half-written file: write to a temporary name, then rename."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary name keeps the suffix so that writers choosing a format by
    extension (imageio, ffmpeg, numpy) still work, and names the process and
    thread, so that two writers of one file (the studio's page handlers run
    in threads) never share it: the last rename wins, whole. On an exception
    the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temp_name(path))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def temp_name(path: Path) -> str:
    """The hidden name a write of ``path`` goes to first, unique to this process and thread."""
    return f".{path.stem}.tmp{os.getpid()}-{threading.get_ident()}{''.join(path.suffixes)}"


def save_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_npz(path: str | os.PathLike, compressed: bool = True, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            (np.savez_compressed if compressed else np.savez)(f, **arrays)


def save_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Save an HxW or HxWx3 uint8 image (format from the suffix, e.g. .png)."""
    import imageio.v3 as iio

    with atomic_path(path) as tmp:
        iio.imwrite(tmp, image)


def sha256_of(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's content, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
