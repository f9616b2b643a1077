import socket

import numpy as np
import pytest

from common.errors import PrepareError
from common.video_io import fit_audio, read_audio
from speech import speaking
from speech.speaking import (
    LEFT_EYE_OUTER,
    LOWER_INNER_LIP,
    RIGHT_EYE_OUTER,
    UPPER_INNER_LIP,
    active_speaker,
    mouth_opening,
    speaking_timeline,
    voice_activity,
)

SR = 16000
FPS = 25.0


@pytest.fixture
def dev_speech(dev_dir):
    """Five seconds of a man speaking with pauses, fitted to its 125 frames."""
    return fit_audio(read_audio(dev_dir / "talk_map_844.mp4"), 125, FPS)


def test_model_loads_from_the_wheel_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("silero-vad tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(speaking, "_vad_model", None)
    assert speaking._silero() is not None


def test_real_speech_is_voiced_with_its_pauses(dev_speech):
    voiced, prob = voice_activity(dev_speech, 125, FPS)
    assert voiced.shape == (125,) and voiced.dtype == bool and prob.dtype == np.float32
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    assert not voiced[:4].any()  # the clip opens with 0.2 s of silence
    assert 0.6 < voiced.mean() < 0.97
    # "Speech with pauses": at least one unvoiced run between voiced ones.
    inner = voiced[np.argmax(voiced):len(voiced) - np.argmax(voiced[::-1])]
    assert not inner.all()


def test_segments_match_silero_get_speech_timestamps(dev_speech):
    import torch

    speaking._silero()  # (imports silero_vad keeping torch's thread count)
    from silero_vad import get_speech_timestamps

    reference = get_speech_timestamps(torch.from_numpy(dev_speech), speaking._silero(), min_silence_duration_ms=200)
    sample = np.arange(125) / FPS * SR
    expected = np.zeros(125, bool)
    for segment in reference:
        expected |= (segment["start"] <= sample) & (sample < segment["end"])
    voiced, _ = voice_activity(dev_speech, 125, FPS)
    assert len(reference) >= 2
    np.testing.assert_array_equal(voiced, expected)


@pytest.mark.parametrize("level", [0.0, 0.003, 0.01])
def test_silence_and_quiet_noise_are_not_voiced(level):
    audio = (np.random.default_rng(1).standard_normal(3 * SR) * level).astype(np.float32)
    voiced, prob = voice_activity(audio, 75, FPS)
    assert not voiced.any()
    assert prob.max() < 0.5


def test_segment_rules_bridge_short_pauses_and_drop_blips():
    chunk = 512
    chunks_per_s = SR / chunk
    probs = np.zeros(int(4 * chunks_per_s))
    probs[10:30] = 0.9  # 0.64 s of speech
    probs[33:50] = 0.9  # after a 96 ms pause: bridged
    probs[60:80] = 0.9  # after a 320 ms pause: a new segment
    probs[100:104] = 0.9  # a 128 ms blip: dropped
    starts, ends = speaking._speech_segments(probs, chunk, SR, probs.size * chunk)
    pad = 0.03 * SR
    np.testing.assert_allclose(starts, [10 * chunk - pad, 60 * chunk - pad])
    np.testing.assert_allclose(ends, [50 * chunk + pad, 80 * chunk + pad])


def fake_landmarks(opening, scale=100.0):
    """[T, 478, 3] landmarks whose inner-lip gap over eye distance is ``opening``."""
    landmarks = np.zeros((len(opening), 478, 3))
    landmarks[:, LEFT_EYE_OUTER, 0] = scale
    landmarks[:, UPPER_INNER_LIP] = [scale / 2, scale / 2, 0.0]
    landmarks[:, LOWER_INNER_LIP] = [scale / 2, scale / 2, 0.0]
    landmarks[:, LOWER_INNER_LIP, 1] += np.asarray(opening) * scale
    return landmarks


def test_mouth_opening_is_lip_gap_over_eye_distance():
    landmarks = fake_landmarks([0.0, 0.2, 0.4], scale=37.0)
    landmarks[2, RIGHT_EYE_OUTER, 2] = -37.0  # a turned head: the eye distance grows in 3D
    landmarks = np.concatenate([landmarks, np.full((1, 478, 3), np.nan)])
    opening = mouth_opening(landmarks)
    assert opening.dtype == np.float32
    np.testing.assert_allclose(opening[:3], [0.0, 0.2, 0.4 / np.sqrt(2)], rtol=1e-6)
    assert np.isnan(opening[3])
    with pytest.raises(PrepareError, match="478"):
        mouth_opening(np.zeros((3, 478, 2)))


def turn_taking(seed=0):
    """Person 0 speaks during [0, 3 s), person 1 during [3.5, 6 s); nobody between.

    Returns voiced [T], mouth [T, 2], envelope [T], truth [T, 2].
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(6 * FPS)) / FPS
    turns = np.stack([t < 3.0, t >= 3.5], axis=1)
    voiced = turns.any(axis=1)
    # Syllables: a random positive signal smoothed over ~3 frames.
    syllables = np.convolve(rng.random(t.size), np.ones(3) / 3, mode="same")
    envelope = np.where(voiced, 0.02 + 0.2 * syllables, 0.001 * rng.random(t.size))
    follows = 0.05 + 0.4 * syllables[:, None] + 0.02 * rng.standard_normal((t.size, 2))
    fidgets = 0.03 + 0.03 * rng.random((t.size, 2))  # small motion unrelated to the audio
    mouth = np.where(turns, follows, fidgets)
    return voiced, mouth, envelope, turns


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_active_speaker_follows_the_lips_that_match_the_audio(seed):
    voiced, mouth, envelope, truth = turn_taking(seed)
    valid = np.ones_like(mouth, bool)
    speaking_, scores = active_speaker(voiced, mouth, valid, envelope, FPS)
    assert speaking_.shape == truth.shape and scores.shape == truth.shape and scores.dtype == np.float32
    assert (speaking_.sum(axis=1) <= 1).all()
    assert not speaking_[~voiced].any()
    assert (speaking_ == truth).all(axis=1).mean() >= 0.9


def test_a_person_without_landmarks_is_never_chosen():
    voiced, mouth, envelope, truth = turn_taking()
    valid = np.ones_like(mouth, bool)
    valid[:, 1] = False
    speaking_, scores = active_speaker(voiced, mouth, valid, envelope, FPS)
    assert not speaking_[:, 1].any()
    assert np.isnan(scores[:, 1]).all()
    np.testing.assert_array_equal(speaking_[:, 0], voiced)


def test_a_person_whose_landmarks_vanish_loses_the_turn():
    voiced, mouth, envelope, truth = turn_taking()
    valid = np.ones_like(mouth, bool)
    valid[:75, 0] = False  # person 0's face is lost for the first 3 s
    speaking_, _ = active_speaker(voiced, mouth, valid, envelope, FPS)
    assert not speaking_[:50, 0].any()  # farther than half a window from a valid frame
    assert speaking_[:50, 1].all()  # the voice is still somebody's


def test_nobody_is_chosen_where_their_score_is_undefined():
    voiced, mouth, envelope, truth = turn_taking()
    valid = np.ones_like(mouth, bool)
    valid[40:, 0] = False  # the speaker's face is lost mid-turn
    voiced[56:75] = False  # a pause 3 frames after its eligibility ends, so its earlier votes are the majority
    speaking_, scores = active_speaker(voiced, mouth, valid, envelope, FPS)
    assert speaking_[:40, 0].all()
    assert not speaking_[np.isnan(scores)].any()


def test_one_person_speaks_whenever_voiced():
    voiced, mouth, envelope, _ = turn_taking()
    speaking_, _ = active_speaker(voiced, mouth[:, :1], np.ones((len(voiced), 1), bool), envelope, FPS)
    np.testing.assert_array_equal(speaking_[:, 0], voiced)


def test_mismatched_shapes_are_a_prepare_error():
    voiced, mouth, envelope, _ = turn_taking()
    with pytest.raises(PrepareError, match="valid"):
        active_speaker(voiced, mouth, np.ones((len(voiced), 3), bool), envelope, FPS)


def test_timeline_on_real_speech_picks_the_moving_mouth(dev_speech):
    from data_prep.audio_features import frame_zcr_rms

    _, rms = frame_zcr_rms(dev_speech, 125, FPS)
    rng = np.random.default_rng(0)
    talker = fake_landmarks(0.05 + 2.0 * rms + 0.01 * rng.random(125))
    listener = fake_landmarks(0.03 + 0.03 * rng.random(125))
    out = speaking_timeline(dev_speech, [talker, listener], np.ones((125, 2), bool), 125, FPS)
    assert set(out) == {"speaking", "voiced", "vad_prob", "scores", "mouth_open"}
    assert out["mouth_open"].shape == (125, 2)
    assert (out["speaking"][:, 0] == out["voiced"]).mean() >= 0.95
    assert not out["speaking"][:, 1].any()


def test_voice_activity_leaves_the_process_on_as_many_threads_as_it_found():
    """Importing silero_vad sets torch to one thread for the whole process: after prepare's audio stage, a training in
    the same process ran on one core and differed in its last bits from the same run in a fresh process."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import numpy as np, torch; torch.set_num_threads(2)\n"
            "from speech.speaking import voice_activity\n"
            "voice_activity(np.zeros(16000, np.float32), 25, 25.0)\n"
            "print(torch.get_num_threads())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "2"
