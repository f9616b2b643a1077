"""Compose single-person talking clips side by side into one conversation video.

Clip k fills column k of the output, left to right, every clip resized to one
height and resampled to one fps. The audio takes turns: the timeline is cut
into turns whose speakers cycle 0, 1, ..., N-1 with a short silence between
them, and during person k's turn the output plays clip k's OWN audio at the
same instant, so the voice matches clip k's mouth; everybody else is muted.

Beside ``conv.mp4`` goes ``conv.turns.json`` with the turn plan and a per-frame
``speaking`` label derived from it. The label is the plan, not what the
pictures show: every source clip was recorded talking the whole time, so a
muted person's mouth still moves. That is the point of this material: an
audio-visual speaker choice must match the voice to the right mouth and see
through the silent movers.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from common.atomic_io import atomic_path, save_json
from common.errors import PrepareError
from common.video_io import (
    AUDIO_SR,
    VideoInfo,
    fit_audio,
    iter_frames,
    probe,
    read_audio,
    write_video,
)

TURNS_VERSION = 1
FADE_SECONDS = 0.015  # long enough to remove the click of a hard cut, short enough to keep word onsets
HOLD_SECONDS = 0.5  # a clip's video may end this much before the output does; its last frame is held
TURN_SPREAD = 0.5  # turn lengths are drawn uniformly in turn_seconds * [1 - spread, 1 + spread]


@dataclasses.dataclass
class ComposeConfig:
    """How the conversation is laid out and timed."""

    height: int = 512
    """Output height in pixels (even); each clip is resized to it, aspect kept, width rounded to even."""
    fps: float = 25.0
    """Output frame rate; every clip is resampled to it."""
    seconds: float | None = None
    """Output length; None takes the shortest clip's duration."""
    turn_seconds: float = 4.0
    """Mean length of one speaking turn."""
    gap_seconds: float = 0.4
    """Silence between two turns."""
    seed: int = 0
    """Seeds the turn lengths, so one seed gives one plan."""
    crf: int = 18
    """x264 quality of the output, lower is better."""


@dataclasses.dataclass
class Turn:
    """One person speaking over the half-open frame range [start_frame, end_frame)."""

    person: int
    start_frame: int
    end_frame: int


def turns_json_path(out: str | os.PathLike) -> Path:
    """``dir/conv.mp4`` -> ``dir/conv.turns.json``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.turns.json")


def column_width(info: VideoInfo, height: int) -> int:
    """Width of a clip resized to ``height`` with its aspect kept, rounded to even (yuv420p needs it)."""
    return max(2, 2 * round(info.width * height / info.height / 2))


def plan_turns(n_frames: int, n_persons: int, fps: float, turn_seconds: float, gap_seconds: float,
               seed: int) -> list[Turn]:
    """Cut ``n_frames`` into turns of speakers 0, 1, ..., N-1, 0, ... with silent gaps between.

    Turns snap to frame boundaries so the speaking label is exact per frame.
    A remainder too short for a fair turn (under half a mean turn) joins the
    last turn instead, so the video neither ends on a stub nor on silence.

    Returns:
        Turns in time order; the first starts at frame 0, the last ends at ``n_frames``.
    """
    rng = np.random.default_rng(seed)
    mean = turn_seconds * fps
    gap = round(gap_seconds * fps)
    turns: list[Turn] = []
    start = 0
    while start < n_frames:
        length = max(1, round(mean * rng.uniform(1 - TURN_SPREAD, 1 + TURN_SPREAD)))
        end = min(start + length, n_frames)
        if n_frames - (end + gap) < mean / 2:
            end = n_frames
        turns.append(Turn(len(turns) % n_persons, start, end))
        start = end + gap
    return turns


def speaking_from_turns(turns: Sequence[Turn], n_frames: int, n_persons: int) -> np.ndarray:
    """Per-frame speaking label [T, P] bool from the turn plan."""
    speaking = np.zeros((n_frames, n_persons), bool)
    for turn in turns:
        speaking[turn.start_frame:turn.end_frame, turn.person] = True
    return speaking


def speaking_runs(speaking: np.ndarray) -> list[list[list[int]]]:
    """Run-length form of a [T, P] bool label: per person a list of half-open [start, end) frame ranges."""
    runs = []
    for column in speaking.T:
        edges = np.diff(np.concatenate([[0], column.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        runs.append([[int(s), int(e)] for s, e in zip(starts, ends)])
    return runs


def load_speaking(turns_json: dict) -> np.ndarray:
    """Decode the ``speaking`` entry of a turns.json (as loaded by ``json.load``) into [T, P] bool."""
    if turns_json.get("version") != TURNS_VERSION:
        raise PrepareError(f"turns.json version {turns_json.get('version')} is not {TURNS_VERSION}; "
                           "compose the conversation again with this version")
    runs = turns_json["speaking"]["runs"]
    speaking = np.zeros((turns_json["n_frames"], len(runs)), bool)
    for person, person_runs in enumerate(runs):
        for start, end in person_runs:
            speaking[start:end, person] = True
    return speaking


def turn_audio(audios: Sequence[np.ndarray], turns: Sequence[Turn], fps: float, sr: int = AUDIO_SR,
               fade_seconds: float = FADE_SECONDS) -> np.ndarray:
    """Mix the turn-taking track: in each turn only that person's own audio, at the same time.

    Args:
        audios: per person [S] float32, all of one length S (the output's length).
        turns: the plan from ``plan_turns``.

    Returns:
        [S] float32, silent outside turns, with raised-cosine fades at every turn edge.
    """
    out = np.zeros_like(audios[0])
    fade = round(fade_seconds * sr)
    for turn in turns:
        s0 = round(turn.start_frame * sr / fps)
        s1 = min(round(turn.end_frame * sr / fps), out.size)
        n = s1 - s0
        if n <= 0:
            continue
        envelope = np.ones(n, np.float32)
        k = min(fade, n // 2)
        if k > 0:
            ramp = (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, k, dtype=np.float32)))
            envelope[:k] = ramp
            envelope[n - k:] = ramp[::-1]
        out[s0:s1] = audios[turn.person][s0:s1] * envelope
    return out


def _iter_column(path: str, fps: float, width: int, height: int, n_frames: int) -> Iterator[np.ndarray]:
    """Yield exactly ``n_frames`` frames [height, width, 3] uint8 of one clip, decoded one at a time.

    A clip whose video stream ends a little before its container says (frame
    rounding, a slightly longer audio track) holds its last frame, with a
    warning; one that ends over HOLD_SECONDS early is an error, as a frozen
    picture under live audio would be bad material.
    """
    frames = iter_frames(path, fps)
    last = None
    try:
        for i in range(n_frames):
            frame = next(frames, None)
            if frame is None:
                if last is None:
                    raise PrepareError(f"{path} decoded to no frames; check the file plays")
                if n_frames - i > HOLD_SECONDS * fps:
                    raise PrepareError(f"the video of {path} ends at {i / fps:.2f} s, before the "
                                       f"{n_frames / fps:.2f} s asked for (its audio runs longer); "
                                       f"pass --seconds {i / fps:.2f} or less")
                warnings.warn(f"{path} ran out of frames at frame {i}; its last frame is held for the "
                              f"remaining {n_frames - i} frames")
                for _ in range(n_frames - i):
                    yield last
                return
            if frame.shape[:2] != (height, width):
                shrink = width < frame.shape[1]
                frame = cv2.resize(frame, (width, height),
                                   interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            last = frame
            yield frame
    finally:
        frames.close()


def iter_composed_frames(clips: Sequence[str], widths: Sequence[int], height: int, fps: float,
                         n_frames: int) -> Iterator[np.ndarray]:
    """Stream the side-by-side frames [height, sum(widths), 3] uint8, one frame of each clip in memory."""
    columns = [_iter_column(c, fps, w, height, n_frames) for c, w in zip(clips, widths)]
    try:
        for row in zip(*columns):
            yield np.concatenate(row, axis=1)
    finally:
        for column in columns:
            column.close()


def _check_out(out: Path, clips: Sequence[str]) -> None:
    """Fail before any decoding when ``out`` cannot be written or would overwrite an input."""
    if out.suffix.lower() != ".mp4":
        raise PrepareError(f"--out must end in .mp4, got {out}")
    if out.is_dir():
        raise PrepareError(f"--out {out} is a directory; give a file name such as {out / 'conversation.mp4'}")
    if any(out.resolve() == Path(c).resolve() for c in clips):
        raise PrepareError(f"--out {out} is one of the input clips; choose another file name")
    ancestor = out.parent.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK):
        raise PrepareError(f"cannot write {out}: {ancestor} is not a writable directory")


def _check_config(cfg: ComposeConfig) -> None:
    if cfg.height < 16 or cfg.height % 2:
        raise PrepareError(f"--height must be an even number of at least 16 pixels, got {cfg.height}")
    if cfg.fps <= 0:
        raise PrepareError(f"--fps must be positive, got {cfg.fps}")
    if cfg.turn_seconds <= 0 or cfg.gap_seconds < 0:
        raise PrepareError(f"--turn_seconds must be positive and --gap_seconds not negative, "
                           f"got {cfg.turn_seconds} and {cfg.gap_seconds}")
    if cfg.seconds is not None and cfg.seconds <= 0:
        raise PrepareError(f"--seconds must be positive, got {cfg.seconds}")


def probe_clips(clips: Sequence[str | os.PathLike]) -> list[VideoInfo]:
    """Probe every clip and require at least two, each with video and its own audio track."""
    if len(clips) < 2:
        raise PrepareError(f"a conversation needs at least 2 clips, got {len(clips)}; pass --clips a.mp4 b.mp4")
    infos = [probe(c) for c in clips]
    for info in infos:
        if not info.has_audio:
            raise PrepareError(f"{info.path} has no audio track; every person needs their own voice "
                               "(use a clip recorded with sound)")
    return infos


def compose_conversation(clips: Sequence[str | os.PathLike], out: str | os.PathLike, cfg: ComposeConfig,
                         wrap_frames: Callable[[Iterator[np.ndarray], int], Iterable[np.ndarray]] | None = None,
                         ) -> dict:
    """Write the conversation mp4 and its ``<stem>.turns.json``, both or neither.

    Args:
        clips: N >= 2 single-person videos with audio; clip k becomes person k, column k.
        out: the .mp4 to write; the turns.json goes beside it.
        cfg: layout and timing.
        wrap_frames: optional ``(frames, n_frames) -> frames`` around the frame stream,
            e.g. a progress bar.

    Returns:
        The turns.json content: fps, n_frames, width, height, persons
        [{id, clip, x_range}], turns [{person, start_s, end_s, start_frame,
        end_frame}], speaking {form: "runs", runs: per person [[start, end), ...]}.

    Raises:
        PrepareError: a clip is missing, not a video, has no audio; fewer than
            two clips; ``out`` is not writable; the config is out of range.
    """
    out = Path(out)
    clips = [str(c) for c in clips]
    _check_config(cfg)
    _check_out(out, clips)
    infos = probe_clips(clips)

    shortest = min(info.duration for info in infos)
    seconds = shortest if cfg.seconds is None else cfg.seconds
    if seconds > shortest + 1e-6:
        raise PrepareError(f"--seconds {seconds} is longer than the shortest clip ({shortest:.2f} s); "
                           "ask for less or leave --seconds out")
    n_frames = int(seconds * cfg.fps + 1e-6)
    if n_frames < 1:
        raise PrepareError(f"{seconds} s at {cfg.fps} fps is not even one frame")

    widths = [column_width(info, cfg.height) for info in infos]
    x_edges = np.concatenate([[0], np.cumsum(widths)]).tolist()
    turns = plan_turns(n_frames, len(clips), cfg.fps, cfg.turn_seconds, cfg.gap_seconds, cfg.seed)
    speaking = speaking_from_turns(turns, n_frames, len(clips))

    audios = []
    for clip in clips:
        audio = read_audio(clip)
        if audio is None:
            raise PrepareError(f"{clip} has an audio track with no samples; use a clip recorded with sound")
        audios.append(fit_audio(audio, n_frames, cfg.fps))
    audio = turn_audio(audios, turns, cfg.fps)

    plan = {
        "version": TURNS_VERSION,
        "fps": cfg.fps,
        "n_frames": n_frames,
        "width": int(x_edges[-1]),
        "height": cfg.height,
        "audio_sr": AUDIO_SR,
        "config": dataclasses.asdict(cfg),
        "persons": [{"id": k, "clip": str(Path(c).resolve()), "x_range": [x_edges[k], x_edges[k + 1]]}
                    for k, c in enumerate(clips)],
        "turns": [{"person": t.person, "start_s": t.start_frame / cfg.fps, "end_s": t.end_frame / cfg.fps,
                   "start_frame": t.start_frame, "end_frame": t.end_frame} for t in turns],
        "speaking": {
            "form": "runs",
            "note": "per person half-open [start, end) frame ranges from the turn plan; a muted "
                    "person's mouth still moves, only the audio says who speaks",
            "runs": speaking_runs(speaking),
        },
    }

    frames = iter_composed_frames(clips, widths, cfg.height, cfg.fps, n_frames)
    if wrap_frames is not None:
        frames = wrap_frames(frames, n_frames)
    # Both land under temporary names and are renamed only after both are complete.
    with atomic_path(out) as tmp_video, atomic_path(turns_json_path(out)) as tmp_json:
        write_video(tmp_video, frames, cfg.fps, audio=audio, crf=cfg.crf)
        save_json(tmp_json, plan)
    return plan
