"""Video in and out: fps resampling keeps frames and audio on one clock; writes are atomic."""

import numpy as np
import pytest

from data_prep.errors import PrepareError
from data_prep.video_io import FrameWriter, fit_audio, iter_frames, probe, read_audio, write_video


def _numbered_frames(n, h=48, w=64):
    """Frame k is uniformly grey level 4k, so a decoded frame tells which source frame it was."""
    return [np.full((h, w, 3), 4 * k, np.uint8) for k in range(n)]


def test_resampling_30_to_25_fps_picks_the_frame_at_each_time(tmp_path):
    src = tmp_path / "src.mp4"
    tone = 0.2 * np.sin(np.linspace(0, 2 * np.pi * 300 * 2, 32000)).astype(np.float32)
    write_video(src, _numbered_frames(60), 30, audio=tone, crf=0)
    info = probe(src)
    assert info.has_audio and info.fps == 30
    out = list(iter_frames(src, 25))
    assert len(out) == 50
    for i in (0, 10, 25, 49):
        k = round(float(out[i].mean()) / 4)
        assert abs(k - i * 30 / 25) <= 1  # frame i at time i / 25 s shows source frame i * 30 / 25
    audio = fit_audio(read_audio(src), len(out), 25)
    assert audio.shape == (32000,)  # exactly 50 frames / 25 fps at 16 kHz


def test_gray_frames_round_trip_losslessly(tmp_path):
    labels = [np.random.default_rng(k).integers(0, 3, (32, 40)).astype(np.uint8) * 100 for k in range(5)]
    with FrameWriter(tmp_path / "l.mkv", 25, gray=True) as w:
        for lab in labels:
            w.write(lab)
    back = list(iter_frames(tmp_path / "l.mkv", gray=True))
    assert len(back) == 5 and all((a == b).all() for a, b in zip(labels, back))


def test_a_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "v.mp4"
    with pytest.raises(RuntimeError), FrameWriter(target, 25) as w:
        w.write(np.zeros((16, 16, 3), np.uint8))
        raise RuntimeError("interrupted")
    with pytest.raises(PrepareError), FrameWriter(target, 25) as w:
        w.write(np.zeros((16, 16, 3), np.uint8))
        w.write(np.zeros((8, 8, 3), np.uint8))  # another size
    with pytest.raises(PrepareError):
        write_video(target, [], 25)
    assert list(tmp_path.iterdir()) == []
