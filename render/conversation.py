"""Render a conversation: drives for every person -> NeRF tiles -> a layout -> mp4 with the audio.

A ``Plan`` says what is rendered (T frames, the audio, each person's ``Drive``, K samples);
``render_tiles`` yields every person's rendered crop per frame; ``render_video`` renders them
in chunks into ``<out>.parts/`` (one lossless .npz of tiles per chunk, so an interrupted run
resumes where it stopped and memory stays bounded however long the audio), then composes
them into one or more layouts and writes each mp4 with the audio muxed in, atomically (a
temporary file, then a rename), and removes the parts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common import dataset
from common.atomic_io import atomic_path, save_json
from common.distributed import Ranks
from common.video_io import AUDIO_SR, FrameWriter, fit_audio, read_audio
from data_prep.audio_features import frame_zcr_rms, mel_windows, wav2lip_mel
from nerf.audio import frame_codes
from nerf.data import PersonFrames
from nerf.model import AvatarModel
from nerf.render import render_persons
from render.drive import Drive, driven_person, pose_stats, retarget
from render.layout import ConferenceLayout, OriginalLayout, side_by_side


class RenderError(Exception):
    """A user-facing render failure; printed as one line without a traceback."""


@dataclasses.dataclass
class Plan:
    """What one render produces.

    Attributes:
        fps: output frame rate (the datasets').
        audio: [N] mono 16 kHz, exactly T / fps seconds (muxed into the video).
        persons: the rendered persons, in tile order.
        drives: drives[k][i]: person i's drive in sample k (K samples side by side).
        codes: [T, 512] per-frame audio codes.
    """

    fps: float
    audio: np.ndarray
    persons: list[PersonFrames]
    drives: list[list[Drive]]
    codes: torch.Tensor

    @property
    def n_frames(self) -> int:
        return len(self.codes)


def load_audio(path: str | Path, fps: float) -> tuple[np.ndarray, int]:
    """Any audio file (any rate, stereo mixed down) -> 16 kHz mono and the number of frames it covers."""
    try:
        audio = read_audio(path)
    except Exception as e:  # ffmpeg's own message is long; one line is enough
        raise RenderError(f"cannot read audio from {path} ({type(e).__name__})") from e
    if audio is None or audio.size == 0:
        raise RenderError(f"{path} has no audio")
    T = int(audio.size / AUDIO_SR * fps)
    if T < 1:
        raise RenderError(f"{path} is shorter than one frame")
    return fit_audio(audio, T, fps), T


def audio_codes(model_encoder, audio: np.ndarray, T: int, fps: float) -> torch.Tensor:
    """[T, 512] the NeRF's audio codes of new audio."""
    return frame_codes(model_encoder, torch.from_numpy(mel_windows(wav2lip_mel(audio), T, fps)))


def posegen_audio_features(audio: np.ndarray, T: int, fps: float, mel_bands: int) -> tuple[np.ndarray, np.ndarray]:
    """posegen's per-frame audio features of new audio and the voice activity: ([T, A], voiced [T])."""
    from posegen.data import frame_audio_features
    from speech.speaking import voice_activity

    zcr, rms = frame_zcr_rms(audio, T, fps)
    voiced, prob = voice_activity(audio, T, fps)
    return frame_audio_features(zcr, rms, prob, wav2lip_mel(audio), fps, mel_bands), voiced


def tracked_pose_stats(p: PersonFrames) -> tuple[np.ndarray, np.ndarray]:
    pose = torch.cat([p.euler, p.t], 1).numpy()
    valid = np.zeros(len(pose), bool)
    valid[torch.cat([p.train, p.val]).numpy()] = True
    return pose_stats(pose, valid)


def source_motion(root: str | Path, person: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A prepared person's tracked motion: pose [T, 6] (NaN where untracked), expr [T, K], valid [T]."""
    tr = dataset.load_track(root, person)
    valid = tr["valid"].astype(bool)
    pose = np.where(valid[:, None], np.concatenate([tr["euler"], tr["t"]], 1), np.nan).astype(np.float32)
    return pose, np.nan_to_num(tr["expr"]).astype(np.float32), valid


def replay_drive(src_pose: np.ndarray, src_expr: np.ndarray, src_valid: np.ndarray, dst: PersonFrames, T: int,
                 speaking: np.ndarray) -> Drive:
    """dst driven by a tracked motion (looped when shorter than T), retargeted to dst's own mean and range."""
    frames = np.arange(T) % len(src_pose)
    pose = retarget(src_pose[frames], pose_stats(src_pose, src_valid), tracked_pose_stats(dst))
    return Drive(euler=pose[:, :3], t=pose[:, 3:], expr=src_expr[frames], speaking=speaking)


def render_tiles(model: AvatarModel, plan: Plan, start: int = 0, stop: int | None = None,
                 amp: bool = False) -> Iterator[np.ndarray]:
    """Every person's rendered crop for frames start..stop - 1: [K, P, S, S, 3] uint8 per frame.

    The K x P crops of a frame render together (``nerf.render.render_persons``; ``amp``: float16 autocast).
    """
    stop = plan.n_frames if stop is None else stop
    driven = [[driven_person(p, d, plan.codes) for p, d in zip(plan.persons, drives)] for drives in plan.drives]
    K, P = len(driven), len(driven[0])
    for f in range(start, stop):
        crops = render_persons(model, [(q, f) for sample in driven for q in sample], amp=amp)
        rgb = torch.stack([c["rgb"] for c in crops]).clamp(0, 1).cpu().numpy()
        yield (rgb * 255).round().astype(np.uint8).reshape(K, P, *rgb.shape[1:])


def compose(layout, tiles: np.ndarray, active: np.ndarray) -> np.ndarray:
    """One output frame from one frame's tiles [K, P, S, S, 3] and who speaks [K, P]: the K layouts side by side."""
    return side_by_side([layout.compose(list(t), list(a)) for t, a in zip(tiles, active)])


def speaking_of(plan: Plan) -> np.ndarray:
    """[T, K, P] bool: who speaks in each sample."""
    return np.stack([np.stack([d.speaking for d in drives], 1) for drives in plan.drives], 1).astype(bool)


def render_frames(model: AvatarModel, plan: Plan, layout, start: int = 0, stop: int | None = None,
                  amp: bool = False) -> Iterator[np.ndarray]:
    """The composed frames start..stop - 1, [H, W * K, 3] uint8 each."""
    active = speaking_of(plan)
    for f, tiles in enumerate(render_tiles(model, plan, start, stop, amp), start):
        yield compose(layout, tiles, active[f])


def plan_key(plan: Plan, extra: dict) -> str:
    """A hash of everything that decides the pixels, so a resume never mixes two different renders."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(plan.audio).tobytes())
    for drives in plan.drives:
        for d in drives:
            for a in (d.euler, d.t, d.expr, d.speaking):
                h.update(np.ascontiguousarray(a).tobytes())
    h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()[:16]


def render_chunks(model: AvatarModel, plan: Plan, parts: Path, chunk: int, key: str,
                  progress: bool = True, amp: bool = False, ranks: Ranks | None = None) -> tuple[list[Path], int, int]:
    """Render the tiles of every frame in chunks of ``chunk`` frames into ``parts`` (chunk_<start>.npz,
    lossless; layout-free, so one render serves every layout), keeping the chunks an interrupted run
    of the same plan (``key``) left there.

    Under torchrun (``ranks``) the chunks still missing are dealt out in turn (rank r renders the missing chunks
    r, r + N, ...) in the N ranks' shared ``parts`` (one folder every rank sees); all return once every chunk is
    there. The progress bar counts this rank's frames.

    Returns:
        (chunk paths in frame order, chunks rendered now, frames rendered now), the counts over all ranks.
    """
    ranks = ranks or Ranks()
    keys = ranks.gather(key)
    if len(set(keys)) > 1:  # (each rank plans the conversation itself: they must have planned the same)
        raise RenderError("the ranks planned different conversations (keys " + ", ".join(keys) + "); give every "
                          "rank the same options and files")
    T = plan.n_frames
    starts = list(range(0, T, chunk))
    paths = [parts / f"chunk_{a:07d}.npz" for a in starts]
    missing = None
    if ranks.main:
        manifest = parts / "manifest.json"
        if parts.exists() and (not manifest.is_file() or
                               json.loads(manifest.read_text()) != {"key": key, "frames": T, "chunk": chunk}):
            shutil.rmtree(parts)  # another render's leftovers, or chunks of another length
        parts.mkdir(parents=True, exist_ok=True)
        save_json(manifest, {"key": key, "frames": T, "chunk": chunk})
        missing = [a for a, path in zip(starts, paths) if not path.is_file()]
    mine = ranks.share(missing)[ranks.rank::ranks.world]
    rendered, new_frames = 0, 0
    bar = tqdm(total=sum(min(T, a + chunk) - a for a in mine), desc="render", unit="frame", disable=not progress,
               dynamic_ncols=True)
    for a in mine:
        b = min(T, a + chunk)
        tiles = []
        for t in render_tiles(model, plan, a, b, amp):
            tiles.append(t)
            bar.update(1)
        with atomic_path(parts / f"chunk_{a:07d}.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, tiles=np.stack(tiles))
        rendered += 1
        new_frames += b - a
    bar.close()
    if ranks.active:
        counts = ranks.gather((rendered, new_frames))  # (and every rank waits here for the others' chunks)
        rendered, new_frames = (sum(c[i] for c in counts) for i in (0, 1))
    return paths, rendered, new_frames


def render_video(model: AvatarModel, plan: Plan, outputs: list[tuple[object, str | Path]], chunk: int = 50,
                 key_extra: dict | None = None, progress: bool = True, tiles_only: bool = False,
                 amp: bool = False, ranks: Ranks | None = None) -> dict:
    """Render every frame's tiles once, in chunks (``render_chunks``, resumable), then write one mp4 per
    (layout, path) in ``outputs`` with the audio muxed, each atomically; the parts are removed at the end.
    With ``tiles_only`` it stops after the chunks (kept in <first output>.parts/): the same render run
    later, here or on a machine the parts were copied to, composes and muxes them without re-rendering.
    Under torchrun (``ranks``) the ranks share the chunks out and rank 0 alone writes the videos.

    Returns:
        {"frames", "chunks_rendered", "chunks_reused", "seconds_per_frame", "parts", "ranks"} (seconds per newly
        rendered frame, wall time over all ranks).
    """
    ranks = ranks or Ranks()
    import time

    first = Path(outputs[0][1])
    parts = first.with_name(first.name + ".parts")
    t0 = time.time()
    # amp changes pixels: it is part of the chunks' key
    key = plan_key(plan, {**(key_extra or {}), **({"amp": True} if amp else {})})
    paths, rendered, new_frames = render_chunks(model, plan, parts, chunk, key, progress and ranks.main, amp, ranks)
    render_s = time.time() - t0
    facts = {"frames": plan.n_frames, "chunks_rendered": rendered, "chunks_reused": len(paths) - rendered,
             "seconds_per_frame": render_s / new_frames if new_frames else 0.0, "parts": str(parts),
             "ranks": ranks.world}
    if tiles_only or not ranks.main:
        return facts
    active = speaking_of(plan)
    for layout, out in outputs:
        with FrameWriter(Path(out), plan.fps, audio=plan.audio, crf=18) as w:
            f = 0
            for path in paths:
                with np.load(path) as z:
                    for tiles in z["tiles"]:
                        w.write(compose(layout, tiles, active[f]))
                        f += 1
    shutil.rmtree(parts)
    return facts


def original_layout(infos: list, persons: list[PersonFrames], scale: float = 1.0) -> OriginalLayout:
    """The layout of the dataset the persons come from (all of them must come from it); ``infos``: the checkpoint's
    ``nerf.avatar.DatasetInfo`` of every dataset."""
    for info in infos:
        if all(p.name in info.boxes for p in persons):
            return OriginalLayout(info.background, [tuple(info.boxes[p.name]) for p in persons], scale)
    raise RenderError(f"{', '.join(p.name for p in persons)} are not all in one video: the original layout shows one "
                      "video's people; use --layout conference to mix datasets")


def conference_layout(persons: list[PersonFrames], tile: int, highlight: bool) -> ConferenceLayout:
    return ConferenceLayout(len(persons), tile, highlight=highlight)


def check_posegen_matches(posegen_ckpt: dict, persons: list[PersonFrames], infos: list) -> None:
    """Refuse a posegen checkpoint trained on other datasets than the NeRF's (by name and source hash; ``infos``: the
    avatar's ``nerf.avatar.DatasetInfo``)."""
    trained = {d["name"]: d for d in posegen_ckpt["datasets"]}
    for info in infos:
        known = trained.get(info.name)
        if known is None or (known["sha256"] and info.sha256 and known["sha256"] != info.sha256):
            raise RenderError(f"the posegen checkpoint was trained on {', '.join(trained) or 'nothing'}, not on "
                              f"{info.name}: the pose and NeRF checkpoints must come from the same datasets")
    names = set(posegen_ckpt["persons"])
    missing = [p.name for p in persons if p.name not in names]
    if missing:
        raise RenderError(f"the posegen checkpoint has no {', '.join(missing)}")
