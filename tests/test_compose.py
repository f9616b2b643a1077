"""Composing single-person clips into a turn-taking conversation (data_prep.compose and its CLI).

Tiny synthetic clips tell the people apart by colour (video) and by a sine
tone (audio), so each column and each turn can be traced back to its clip.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.errors import PrepareError
from common.video_io import AUDIO_SR, iter_frames, probe, read_audio, write_video
from data_prep.compose import (
    ComposeConfig,
    compose_conversation,
    load_speaking,
    plan_turns,
    speaking_from_turns,
    turn_audio,
    turns_json_path,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "compose_conversation.py"
DEV = Path("/work/shared/data/dev")

# (width, height, fps, seconds, RGB colour, tone Hz): different aspects and fps exercise resize and resampling.
CLIPS = [
    (96, 96, 25, 2.4, (200, 40, 40), 440.0),
    (128, 96, 30, 2.8, (40, 40, 200), 1000.0),
    (96, 128, 25, 3.0, (40, 190, 40), 1800.0),
]
HEIGHT, FPS, TURN_S, GAP_S = 64, 25, 0.5, 0.2
WIDTHS = [64, 86, 48]  # 96*64/96, 128*64/96 = 85.3 -> even 86, 96*64/128
EDGE_S = 0.04  # trimmed off each end of a turn or gap before measuring: fades and AAC ringing live there


def _tone_clip(path: Path, w: int, h: int, fps: int, seconds: float, colour, hz: float | None) -> None:
    n = round(seconds * fps)
    frame = np.empty((h, w, 3), np.uint8)
    frame[:] = colour
    audio = None
    if hz is not None:
        t = np.arange(round(seconds * AUDIO_SR)) / AUDIO_SR
        audio = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    write_video(path, (frame for _ in range(n)), fps, audio=audio)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    # cwd elsewhere: the script must find its package on its own.
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=False, capture_output=True, text=True, cwd="/")


def _dominant_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / AUDIO_SR)[np.argmax(spectrum)])


def _samples(start_s: float, end_s: float) -> slice:
    return slice(int((start_s + EDGE_S) * AUDIO_SR), int((end_s - EDGE_S) * AUDIO_SR))


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("clips")
    paths = []
    for k, (w, h, fps, seconds, colour, hz) in enumerate(CLIPS):
        paths.append(root / f"person{k}.mp4")
        _tone_clip(paths[-1], w, h, fps, seconds, colour, hz)
    return paths


@pytest.fixture(scope="module")
def composed(clips, tmp_path_factory) -> tuple[Path, dict]:
    """Compose through the CLI with a --config file, the way a user would."""
    root = tmp_path_factory.mktemp("conv")
    out = root / "conv.mp4"
    config = root / "conv.txt"
    config.write_text(f"clips = [{', '.join(map(str, clips))}]\nout = {out}\nheight = {HEIGHT}\n"
                      f"turn_seconds = {TURN_S}\ngap_seconds = {GAP_S}\nseed = 3\n")
    proc = _run_cli("--config", str(config), "--fps", str(FPS))
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(turns_json_path(out).read_text())


def test_output_size_fps_duration(composed):
    out, plan = composed
    info = probe(out)
    assert (info.width, info.height) == (sum(WIDTHS), HEIGHT)
    assert info.fps == pytest.approx(FPS)
    shortest = min(c[3] for c in CLIPS)
    assert plan["n_frames"] == int(shortest * FPS)
    assert info.duration == pytest.approx(shortest, abs=0.1)
    assert sum(1 for _ in iter_frames(out, FPS)) == plan["n_frames"]
    assert read_audio(out).size / AUDIO_SR == pytest.approx(shortest, abs=0.05)


def test_each_column_shows_its_own_clip(composed):
    out, plan = composed
    assert [p["x_range"] for p in plan["persons"]] == [[0, 64], [64, 150], [150, 198]]
    for i, frame in enumerate(iter_frames(out, FPS)):
        if i % 20:
            continue
        for person, (*_, colour, _) in zip(plan["persons"], CLIPS):
            x0, x1 = person["x_range"]
            # Inner part only: chroma subsampling blurs colour across a column edge.
            mean = frame[8:-8, x0 + 4:x1 - 4].reshape(-1, 3).mean(0)
            np.testing.assert_allclose(mean, colour, atol=15, err_msg=f"frame {i}, {person['clip']}")


def test_each_turn_plays_the_speakers_own_audio(composed):
    out, plan = composed
    audio = read_audio(out)
    assert {t["person"] for t in plan["turns"]} == {0, 1, 2}
    for turn in plan["turns"]:
        segment = audio[_samples(turn["start_s"], turn["end_s"])]
        assert _dominant_hz(segment) == pytest.approx(CLIPS[turn["person"]][5], abs=10), turn
        assert np.sqrt(np.mean(segment ** 2)) > 0.1, turn  # the tone's RMS is 0.21


def test_gaps_between_turns_are_silent(composed):
    out, plan = composed
    audio = read_audio(out)
    gaps = [(a["end_s"], b["start_s"]) for a, b in zip(plan["turns"], plan["turns"][1:])]
    assert gaps and all(end - start == pytest.approx(GAP_S) for start, end in gaps)
    for start, end in gaps:
        segment = audio[_samples(start, end)]
        assert np.abs(segment).max() < 0.01, (start, end)


def test_turns_json_matches_speaking(composed):
    _, plan = composed
    speaking = load_speaking(plan)
    assert speaking.shape == (plan["n_frames"], len(CLIPS))
    assert speaking.sum(1).max() == 1  # never two voices at once
    turns = plan["turns"]
    assert turns[0]["start_frame"] == 0 and turns[-1]["end_frame"] == plan["n_frames"]
    for k, turn in enumerate(turns):
        assert turn["person"] == k % len(CLIPS)
        assert turn["start_s"] == pytest.approx(turn["start_frame"] / plan["fps"])
        assert turn["end_s"] == pytest.approx(turn["end_frame"] / plan["fps"])
        frames = slice(turn["start_frame"], turn["end_frame"])
        assert speaking[frames, turn["person"]].all() and speaking[frames].sum() == turn["end_frame"] - turn["start_frame"]
    assert speaking.sum() == sum(t["end_frame"] - t["start_frame"] for t in turns)


def test_plan_turns_is_seeded_and_spread_around_the_mean():
    a = plan_turns(2500, 2, 25, 4.0, 0.4, seed=0)
    assert a == plan_turns(2500, 2, 25, 4.0, 0.4, seed=0)
    assert a != plan_turns(2500, 2, 25, 4.0, 0.4, seed=1)
    lengths = np.array([t.end_frame - t.start_frame for t in a[:-1]]) / 25
    assert lengths.min() >= 2.0 and lengths.max() <= 6.0 and lengths.std() > 0.3
    assert np.mean(lengths) == pytest.approx(4.0, abs=0.5)
    assert all(b.start_frame - a_.end_frame == 10 for a_, b in itertools.pairwise(a))


def test_turn_audio_fades_instead_of_clicking():
    n_frames, fps = 50, 25
    audios = [np.ones(n_frames * AUDIO_SR // fps, np.float32), -np.ones(n_frames * AUDIO_SR // fps, np.float32)]
    turns = plan_turns(n_frames, 2, fps, 0.8, 0.2, seed=0)
    mix = turn_audio(audios, turns, fps)
    assert np.abs(np.diff(mix)).max() < 0.02  # a hard cut would step by 1
    for turn in turns:
        s0, s1 = turn.start_frame * AUDIO_SR // fps, turn.end_frame * AUDIO_SR // fps
        middle = mix[s0 + 400:s1 - 400]  # past the 15 ms (240 sample) fades
        np.testing.assert_array_equal(middle, audios[turn.person][s0 + 400:s1 - 400])
    speaking = speaking_from_turns(turns, n_frames, 2)
    silent_frames = np.flatnonzero(~speaking.any(1))
    assert silent_frames.size
    for f in silent_frames:
        assert not mix[f * AUDIO_SR // fps:(f + 1) * AUDIO_SR // fps].any()


@pytest.fixture()
def bad_inputs(tmp_path, clips) -> dict[str, list[str]]:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    mute = tmp_path / "mute.mp4"
    _tone_clip(mute, 64, 64, 25, 1.0, (90, 90, 90), None)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be\n")
    out = str(tmp_path / "out" / "conv.mp4")
    a, b = map(str, clips[:2])
    return {
        "missing clip": ["--clips", a, str(tmp_path / "nope.mp4"), "--out", out],
        "non-video file": ["--clips", a, str(text), "--out", out],
        "clip without audio": ["--clips", a, str(mute), "--out", out],
        "one clip": ["--clips", a, "--out", out],
        "unwritable out": ["--clips", a, b, "--out", str(blocker / "conv.mp4")],
        "seconds past the shortest clip": ["--clips", a, b, "--out", out, "--seconds", "60"],
    }


@pytest.mark.parametrize("case", ["missing clip", "non-video file", "clip without audio", "one clip",
                                  "unwritable out", "seconds past the shortest clip"])
def test_cli_errors_are_one_line_and_leave_nothing(case, bad_inputs, tmp_path):
    args = bad_inputs[case]
    proc = _run_cli(*args)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    out = Path(args[args.index("--out") + 1])
    assert not out.exists() and not turns_json_path(out).exists()
    assert not list(tmp_path.rglob("*.tmp*"))


def test_failed_write_leaves_neither_file(clips, tmp_path, monkeypatch):
    from data_prep import compose

    def broken_json(path, obj):
        raise OSError("disk full")

    monkeypatch.setattr(compose, "save_json", broken_json)
    out = tmp_path / "conv.mp4"
    with pytest.raises(OSError):
        compose_conversation(clips[:2], out, ComposeConfig(height=HEIGHT, seconds=0.4))
    assert list(tmp_path.iterdir()) == []


def test_video_ending_before_its_audio(clips, tmp_path):
    frame = np.full((64, 64, 3), 128, np.uint8)
    for name, video_s in [("short", 2.0), ("shorter", 1.0)]:
        noise = np.random.default_rng(0).normal(0, 0.1, int(2.2 * AUDIO_SR)).astype(np.float32)
        write_video(tmp_path / f"{name}.mp4", (frame for _ in range(int(video_s * 25))), 25, audio=noise)
    cfg = ComposeConfig(height=HEIGHT)
    # 0.2 s short: the container says 2.2 s, so the last video frame is held, and the user is told.
    with pytest.warns(UserWarning, match="last frame is held"):
        plan = compose_conversation([clips[0], tmp_path / "short.mp4"], tmp_path / "ok.mp4", cfg)
    assert plan["n_frames"] == 55 and sum(1 for _ in iter_frames(tmp_path / "ok.mp4", 25)) == 55
    # 1.2 s short: a frozen picture under live audio is refused, and nothing is written.
    with pytest.raises(PrepareError, match="--seconds 1.00"):
        compose_conversation([clips[0], tmp_path / "shorter.mp4"], tmp_path / "bad.mp4", cfg)
    assert not (tmp_path / "bad.mp4").exists() and not turns_json_path(tmp_path / "bad.mp4").exists()


@pytest.mark.skipif(not DEV.is_dir(), reason="real dev clips live in ../shared, absent from a plain clone")
def test_two_real_dev_clips(tmp_path):
    clips = [DEV / "talk_glasses_512.mp4", DEV / "talk_map_844.mp4"]
    out = tmp_path / "conv_dev.mp4"
    plan = compose_conversation(clips, out, ComposeConfig(height=256, seconds=4.0, turn_seconds=1.5, seed=0))
    info = probe(out)
    assert (info.width, info.height, plan["n_frames"]) == (512, 256, 100)
    audio = read_audio(out)
    sources = [read_audio(c) for c in clips]
    assert len(plan["turns"]) >= 2
    for turn in plan["turns"]:
        window = _samples(turn["start_s"], turn["end_s"])
        corr = [np.corrcoef(audio[window], s[window])[0, 1] for s in sources]
        # Real speech of two people is uncorrelated; the speaker's own track matches almost exactly.
        assert corr[turn["person"]] > 0.9 and abs(corr[1 - turn["person"]]) < 0.2, (turn, corr)
