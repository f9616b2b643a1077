"""The studio's workspace folder: every file the studio reads or writes lies inside it.

    <workspace>/uploads/      videos and speech as uploaded (checked: type, size, decodable, not silent), the
                              example clips (example/, example_speech/), speech_cache/ (speech as 16 kHz wav)
    <workspace>/datasets/<n>/ prepared datasets (scripts/prepare.py)
    <workspace>/runs/<n>/     avatars: checkpoint.pt (scripts/train.py) and posegen/checkpoint.pt
    <workspace>/renders/      rendered conversations (scripts/render.py), and each render's roles.json
    <workspace>/jobs/<id>/    the jobs' state and logs (studio.jobs)
    <workspace>/.gradio/      the web server's upload cache (GRADIO_TEMP_DIR)

Names typed into the page become folder names only after ``check_name``; paths coming from the page are used only
after ``inside`` found them in the workspace.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

from common import dataset
from common.atomic_io import atomic_path, save_json
from common.errors import PrepareError

VIDEO_TYPES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
AUDIO_TYPES = (".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus", ".webm", ".mp4")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}")
SILENT_RMS = 1e-3  # speech quieter than this (RMS of samples in [-1, 1]) is refused as silent


class StudioError(Exception):
    """Bad input or a state the page cannot act on: shown to the user as one line."""


def check_name(text: str, what: str) -> str:
    text = (text or "").strip()
    if not _NAME.fullmatch(text):
        raise StudioError(f"{what} {text!r}: use 1-48 letters, digits, '-' or '_' (a folder of that name is made)")
    return text


class Workspace:
    """The folders above, under ``root`` (made when missing); uploads over ``max_upload_mb`` are refused."""

    def __init__(self, root: str | Path, max_upload_mb: float = 2048):
        self.root = Path(root).resolve()
        self.max_upload_mb = max_upload_mb
        for sub in ("uploads", "datasets", "runs", "renders", "jobs", ".gradio"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def inside(self, path: str | Path) -> Path:
        """``path`` resolved, if it lies inside the workspace (StudioError otherwise)."""
        p = Path(path).resolve()
        if p != self.root and self.root not in p.parents:
            raise StudioError(f"{path} is outside the studio's workspace ({self.root})")
        return p

    def rel(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.root))

    # --- uploads ---
    def _upload(self, upload: str | None, types: tuple[str, ...], what: str) -> Path:
        if not upload:
            raise StudioError(f"no {what} given: upload one first")
        src = self.inside(upload)
        if not src.is_file():
            raise StudioError(f"the uploaded {what} is gone from the server's cache: upload it again")
        if src.suffix.lower() not in types:
            raise StudioError(f"{src.name} is not a {what} file this studio takes ({', '.join(types)})")
        mb = src.stat().st_size / 2**20
        if mb > self.max_upload_mb:
            raise StudioError(f"{src.name} is {mb:.1f} MB; the studio takes files of at most {self.max_upload_mb:g} MB")
        return src

    def add_video(self, upload: str | None) -> Path:
        """Check an uploaded conversation video (a decodable video stream with audio) and keep it in uploads/."""
        src = self.check_video(upload)
        return self.keep(src, self.video_destination(src))

    @staticmethod
    def keep(src: Path, dst: Path) -> Path:
        """Copy a checked upload to its place in uploads/ (``video_destination``), atomically."""
        _copy(src, dst)
        return dst

    def video_destination(self, src: Path) -> Path:
        """Where ``add_video`` would keep this upload: its name in uploads/, numbered when the name is taken."""
        return self._free(self.root / "uploads", safe_stem(src), src.suffix.lower())

    def check_video(self, upload: str | None) -> Path:
        """The uploaded conversation video, checked (``StudioError`` if it is not a decodable video with audio)."""
        from common.video_io import probe

        src = self._upload(upload, VIDEO_TYPES, "video")
        try:
            info = probe(src)
        except PrepareError as e:
            raise StudioError(f"{src.name} is not a video ffmpeg can decode") from e
        if not info.has_audio:
            raise StudioError(f"{src.name} has no audio track: the avatars learn to speak from it")
        return src

    def add_speech(self, upload: str | None) -> Path:
        """Check uploaded (or recorded) speech: readable, not silent; kept in uploads/ as 16 kHz mono wav."""
        from common.video_io import read_audio, write_wav

        src = self._upload(upload, AUDIO_TYPES, "speech")
        try:
            audio = read_audio(src)
        except Exception:  # (ffmpeg's many ways to fail on a damaged file)
            audio = None
        if audio is None or len(audio) == 0:
            raise StudioError(f"{src.name} holds no audio that can be read")
        if float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) < SILENT_RMS:
            raise StudioError(f"{src.name} is silent: there is no speech to render")
        dst = self._free(self.root / "uploads" / "speech_cache", safe_stem(src), ".wav")
        with atomic_path(dst) as tmp:
            write_wav(tmp, audio)
        return dst

    def add_avatar(self, upload: str | None, posegen: str | None, name: str) -> Path:
        """An avatar file (and optionally its posegen file) from another machine, checked, into runs/<name>/."""
        from nerf.trainer import load_checkpoint

        name = check_name(name, "avatar name")
        run = self.root / "runs" / name
        if (run / "checkpoint.pt").exists():
            raise StudioError(f"an avatar named {name} exists already: choose another name")
        src = self._upload(upload, (".pt",), "avatar")
        try:
            ckpt = load_checkpoint(src)
        except Exception as e:
            raise StudioError(f"{src.name}: {e}") from None
        if "avatar" not in ckpt:
            raise StudioError(f"{src.name} is a training checkpoint without the avatar section: train it to the end")
        pg = None
        if posegen:
            pg = self._upload(posegen, (".pt",), "posegen")
            try:
                import torch

                state = torch.load(pg, map_location="cpu", weights_only=True)
                assert isinstance(state, dict) and "model" in state
            except Exception:
                raise StudioError(f"{pg.name} is not a posegen checkpoint of scripts/train_posegen.py") from None
        run.mkdir(parents=True, exist_ok=True)
        _copy(src, run / "checkpoint.pt")
        if pg is not None:
            _copy(pg, run / "posegen" / "checkpoint.pt")
        return run

    @staticmethod
    def _free(folder: Path, stem: str, suffix: str) -> Path:
        dst, n = folder / f"{stem}{suffix}", 1
        while dst.exists():
            n += 1
            dst = folder / f"{stem}-{n}{suffix}"
        return dst

    # --- what there is ---
    def videos(self) -> list[str]:
        """The videos in uploads/ (the example clips' folders included), relative to it."""
        up = self.root / "uploads"
        return sorted(str(p.relative_to(up)) for p in up.rglob("*") if p.suffix.lower() in VIDEO_TYPES and p.is_file())

    def speech(self) -> list[str]:
        """Speech in uploads/ (earlier uploads, and any video's sound track), relative to it."""
        up = self.root / "uploads"
        return sorted(str(p.relative_to(up)) for p in up.rglob("*") if p.suffix.lower() in AUDIO_TYPES + VIDEO_TYPES
                      and p.is_file() and p.parent.name != "speech_cache")

    def upload(self, relative: str) -> Path:
        """A file of uploads/ named as ``videos``/``speech`` list it."""
        path = self.inside(self.root / "uploads" / relative)
        if not path.is_file():
            raise StudioError(f"{relative} is no longer in the workspace's uploads")
        return path

    def datasets(self) -> list[str]:
        return sorted(p.name for p in (self.root / "datasets").iterdir() if (p / "meta.json").is_file())

    def avatars(self) -> list[str]:
        return sorted(p.name for p in (self.root / "runs").iterdir() if (p / "checkpoint.pt").is_file())

    def runs(self) -> list[str]:
        """Every run folder, finished or training."""
        return sorted(p.name for p in (self.root / "runs").iterdir() if p.is_dir())

    def dataset(self, name: str) -> Path:
        root = self.root / "datasets" / check_name(name, "dataset")
        if not (root / "meta.json").is_file():
            raise StudioError(f"there is no prepared dataset {name} in the workspace")
        return root

    def avatar(self, name: str) -> Path:
        run = self.root / "runs" / check_name(name, "avatar")
        if not (run / "checkpoint.pt").is_file():
            raise StudioError(f"there is no finished avatar {name} in the workspace")
        return run

    # --- datasets: persons and their names ---
    def persons(self, name: str) -> list[list]:
        """One row per person: id, name (empty until named), face tracked, head cover, crop box."""
        meta = dataset.read_meta(self.dataset(name))
        return [[p["id"], p.get("name", ""), f"{p['valid_fraction']:.0%}",
                 f"{p['head_cover']:.2f}" if "head_cover" in p else "", " ".join(map(str, p["bbox"]))]
                for p in meta["persons"]]

    def set_names(self, name: str, rows: list[list]) -> list[str]:
        """Store the persons' names (rows as ``persons`` gives them, names edited) in the dataset's meta.json; an
        avatar trained on it afterwards carries them. Names must be distinct; empty ones are left unnamed."""
        root = self.dataset(name)
        meta = dataset.read_meta(root)
        by_id = {int(r[0]): str(r[1] or "").strip() for r in rows if str(r[0]).strip() != ""}
        given = [n for n in by_id.values() if n]
        if len(set(given)) != len(given):
            raise StudioError("two persons have the same name: names must tell them apart")
        if any(len(n) > 40 or not n.isprintable() for n in given):
            raise StudioError("a name must be printable and at most 40 characters")
        for p in meta["persons"]:
            if by_id.get(p["id"]):
                p["name"] = by_id[p["id"]]
            else:
                p.pop("name", None)
        save_json(root / "meta.json", meta)
        return [p.get("name") or f"person {p['id']}" for p in meta["persons"]]

    def qa_pictures(self, name: str) -> list[tuple[str, str]]:
        qa = self.dataset(name) / "qa"
        order = ["contact_sheet", "pose_curves", "speaking_timeline", "mouth_and_speaking", "torso_motion",
                 "expression_spectrum"]
        found = {p.stem: p for p in qa.glob("*.png")}
        return [(str(found[k]), k.replace("_", " ")) for k in order if k in found] + \
            [(str(p), p.stem.replace("_", " ")) for k, p in sorted(found.items()) if k not in order]

    # --- runs: training curves, validation pictures ---
    def curves(self, run: str) -> list[tuple[int, float, str]]:
        """(iteration, dB, curve) of the training PSNR and each person's held-out PSNR, from the run's TensorBoard."""
        tb = self.root / "runs" / check_name(run, "avatar") / "tb"
        if not tb.is_dir():
            return []
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
        acc.Reload()
        rows = []
        for tag in acc.Tags().get("scalars", []):
            if tag == "train/psnr" or tag.startswith("val_psnr/"):
                label = "training batch" if tag == "train/psnr" else f"held out, {tag.split('/', 1)[1]}"
                rows += [(int(e.step), float(e.value), label) for e in acc.Scalars(tag)]
        return rows

    def latest_validation(self, run: str) -> Path | None:
        found = sorted((self.root / "runs" / check_name(run, "avatar") / "val").glob("*.png"))
        return found[-1] if found else None

    def downloads(self, run: str) -> list[Path]:
        """The avatar file and its posegen file under names that say what they are (hard links to the checkpoints,
        made again when a checkpoint changed)."""
        folder = self.root / "runs" / check_name(run, "avatar")
        found = []
        for src, label in ((folder / "checkpoint.pt", "avatar"), (folder / "posegen" / "checkpoint.pt", "posegen")):
            if not src.is_file():
                continue
            dst = folder / "download" / f"{run}-{label}.pt"
            if not (dst.exists() and dst.samefile(src)):
                dst.parent.mkdir(exist_ok=True)
                dst.unlink(missing_ok=True)
                try:
                    os.link(src, dst)
                except OSError:  # (a file system without hard links)
                    _copy(src, dst)
            found.append(dst)
        return found

    def renders(self) -> list[str]:
        return sorted(p.name for p in (self.root / "renders").glob("*.mp4"))


def avatar_persons(run: Path) -> tuple[list[str], dict[str, str], dict | None, float]:
    """An avatar's persons: their names ("<dataset>:<id>"), the names given in the studio (name -> label), its voices
    and its first dataset's fps."""
    import torch

    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    avatar = ckpt["avatar"]
    names = [p["name"] for p in avatar["persons"]]
    labels = {}
    for d in avatar["datasets"]:
        for n, label in zip(d["persons"], d.get("labels", [])):
            if label:
                labels[n] = label
    return names, labels, avatar.get("voices"), float(avatar["datasets"][0]["fps"])


def display(name: str, labels: dict[str, str]) -> str:
    return f"{labels[name]} ({name})" if name in labels else name


def write_roles(rows: list[list], names: list[str], labels: dict[str, str], seconds: float, path: Path) -> Path:
    """roles.json from the page's table of turns (start s, end s, person as shown), checked."""
    shown = {display(n, labels): n for n in names} | {n: n for n in names} | {v: k for k, v in labels.items()}
    turns = []
    for i, r in enumerate(rows, 1):
        if not r or all(str(v).strip() == "" for v in r):
            continue
        try:
            start, end = float(r[0]), float(r[1])
        except (TypeError, ValueError):
            raise StudioError(f"turn {i}: start and end must be seconds (numbers)") from None
        person = shown.get(str(r[2]).strip())
        if person is None:
            raise StudioError(f"turn {i}: no person {r[2]!r} in this avatar ({', '.join(shown)})")
        if not 0 <= start < end <= seconds + 0.05:
            raise StudioError(f"turn {i}: {start:g}-{end:g} s is not a span within the speech (0-{seconds:.2f} s)")
        turns.append({"person": person, "start": start, "end": min(end, seconds)})
    save_json(path, turns)
    return path


def safe_stem(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem).strip("_")[:40]
    return stem or "upload"


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
