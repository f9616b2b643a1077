"""Video in and out: fps resampling keeps frames and audio on one clock; writes are atomic."""

import sys
import warnings

import numpy as np
import pytest

from common.errors import PrepareError
from common.video_io import FrameWriter, fit_audio, iter_frames, probe, read_audio, write_video


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


def test_without_imageio_ffmpeg_opencv_decodes_the_same_pixels(tmp_path, monkeypatch):
    """The GPU machine has no imageio-ffmpeg: datasets' crops and label videos decode through OpenCV."""
    rng = np.random.default_rng(0)
    frames = [np.clip(rng.normal(128, 40, (48, 64, 3)), 0, 255).astype(np.uint8) for _ in range(6)]
    write_video(tmp_path / "c.mp4", frames, 25)
    labels = [rng.integers(0, 3, (32, 40)).astype(np.uint8) * 100 for _ in range(4)]
    with FrameWriter(tmp_path / "l.mkv", 25, gray=True) as w:
        for lab in labels:
            w.write(lab)
    with_ffmpeg = list(iter_frames(tmp_path / "c.mp4"))
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import now fails
    with_cv2 = list(iter_frames(tmp_path / "c.mp4"))
    assert len(with_cv2) == 6 and all((a == b).all() for a, b in zip(with_ffmpeg, with_cv2))
    assert all((a == b).all() for a, b in zip(labels, iter_frames(tmp_path / "l.mkv", gray=True)))
    with pytest.raises(ImportError):  # resampling needs ffmpeg's filters
        next(iter_frames(tmp_path / "c.mp4", fps=10))


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


@pytest.mark.parametrize("sr, channels", [(44100, 2), (48000, 2), (8000, 6)])
def test_any_rate_and_channel_count_becomes_16k_mono_without_getting_louder(tmp_path, sr, channels):
    import soundfile as sf

    t = np.arange(int(1.5 * sr)) / sr
    tone = 0.9 * np.sin(2 * np.pi * 440 * t)  # near full scale: a +3 dB mix would clip
    path = tmp_path / "multi.wav"
    sf.write(path, np.stack([tone] * channels, 1), sr)
    audio = read_audio(path)
    assert audio.ndim == 1 and audio.size == 24000  # 1.5 s at 16 kHz
    assert np.abs(audio).max() == pytest.approx(0.9, abs=0.01)
    sf.write(path, np.stack([tone, np.zeros_like(tone)], 1), sr)  # one channel silent: the mean
    assert np.abs(read_audio(path)).max() == pytest.approx(0.45, abs=0.01)


def test_without_imageio_ffmpeg_a_wav_decodes_through_libsndfile_the_same(tmp_path, monkeypatch):
    import soundfile as sf

    t = np.arange(int(1.5 * 44100)) / 44100
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 220 * t)], 1), 44100)
    with_ffmpeg = read_audio(path)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import now fails (the lent GPU machine)
    without = read_audio(path)
    assert without.shape == with_ffmpeg.shape == (24000,)
    # two resamplers (ffmpeg's swr and a polyphase filter) agree to about 2e-4 away from the ends on a tone
    # mix (measured), their filters' edges differ in the first and last milliseconds
    assert np.abs(without[200:-200] - with_ffmpeg[200:-200]).max() < 1e-3


def test_audio_of_another_length_than_the_video_is_fitted_with_a_warning():
    second = np.ones(16000, np.float32)
    with pytest.warns(UserWarning, match="padded with silence"):
        padded = fit_audio(second, 50, 25)  # 2 s of video
    assert padded.size == 32000 and (padded[16000:] == 0).all()
    with pytest.warns(UserWarning, match="trimmed"):
        assert fit_audio(second, 10, 25).size == 6400
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fit_audio(second[:15800], 25, 25).size == 16000  # 12 ms short: container slack, no warning
        assert fit_audio(np.zeros(0, np.float32), 25, 25).size == 16000  # no track at all: the caller knows


def test_a_frame_reused_by_the_caller_is_written_as_it_was_when_handed_over(tmp_path):
    # The encoder is fed by a thread a few frames behind the caller, who may fill the same buffer again meanwhile.
    buffer = np.zeros((32, 40), np.uint8)
    wanted = []
    with FrameWriter(tmp_path / "l.mkv", 25, gray=True) as w:
        for k in range(6):
            buffer[:] = 40 * k
            wanted.append(buffer.copy())
            w.write(buffer)
    back = list(iter_frames(tmp_path / "l.mkv", gray=True))
    assert len(back) == 6 and all((a == b).all() for a, b in zip(wanted, back))


def _children() -> set[int]:
    """Live (not zombie) child processes of this one, from /proc."""
    import os
    from pathlib import Path

    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            out.add(int(stat.parent.name))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_reader_stopped_early_leaves_no_thread_and_no_decoder(tmp_path):
    import threading

    write_video(tmp_path / "v.mp4", _numbered_frames(40), 25)
    before = _children()
    frames = iter_frames(tmp_path / "v.mp4")
    first = [next(frames) for _ in range(3)]  # the decoder and its read-ahead thread now run
    assert [round(float(f.mean()) / 4) for f in first] == [0, 1, 2]
    assert _children() - before
    frames.close()
    assert not [t for t in threading.enumerate() if t.name == "read-ahead"]
    assert not _children() - before


def test_read_ahead_hands_on_the_failure_and_closes_the_source():
    from common.video_io import _read_ahead

    closed = []

    def source():
        try:
            yield 1
            yield 2
            raise OSError("the decoder died")
        finally:
            closed.append(True)

    got = []
    with pytest.raises(OSError, match="decoder died"):
        for item in _read_ahead(source()):
            got.append(item)
    assert got == [1, 2] and closed == [True]
