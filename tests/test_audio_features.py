import librosa
import numpy as np
import pytest

from common.errors import PrepareError
from data_prep.audio_features import (
    MEL_FPS,
    audio_features,
    frame_zcr_rms,
    mel_filters,
    mel_index_of_frame,
    mel_windows,
    stft_magnitude,
    wav2lip_mel,
)

SR = 16000


def sine(freq, seconds, amplitude=1.0, phase=0.3):
    t = np.arange(int(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def test_mel_shape_range_and_80_columns_per_second():
    one, two = wav2lip_mel(sine(440, 1.0, 0.5)), wav2lip_mel(sine(440, 2.0, 0.5))
    assert one.dtype == np.float32 and one.shape == (80, 1 + SR // 200)
    assert two.shape[1] - one.shape[1] == MEL_FPS
    assert one.min() >= -4.0 and one.max() <= 4.0
    assert one.max() > 0.0  # a half-scale tone is far above the floor


def test_mel_silence_is_the_floor():
    np.testing.assert_array_equal(wav2lip_mel(np.zeros(SR, np.float32)), -4.0)


def test_mel_matches_wav2lip_formula_on_a_bin_centred_tone():
    # A tone on FFT bin k of a periodic 800-point Hann window gives |X| = A*N/4 at k and A*N/8 at k +- 1.
    amplitude, k = 0.05, 50
    freq = k * SR / 800
    gain = abs(1 - 0.97 * np.exp(-2j * np.pi * freq / SR))  # the pre-emphasis filter at freq
    spectrum = np.zeros(401)
    spectrum[[k - 1, k, k + 1]] = amplitude * gain * np.array([100.0, 200.0, 100.0])
    basis = librosa.filters.mel(sr=SR, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    db = 20 * np.log10(np.maximum(1e-5, basis @ spectrum)) - 20
    expected = np.clip(8 * (db + 100) / 100 - 4, -4, 4)
    mel = wav2lip_mel(sine(freq, 1.0, amplitude, phase=0.0))
    # Middle columns only: the clip's edges see reflect padding and the filter's start-up.
    np.testing.assert_allclose(mel[:, 20:-20], np.repeat(expected[:, None], mel.shape[1] - 40, axis=1), atol=2e-3)


@pytest.mark.parametrize("n_fft,n_mels,fmin,fmax", [(800, 80, 55.0, 7600.0), (400, 40, 0.0, None)])
def test_mel_filters_and_stft_are_librosas(n_fft, n_mels, fmin, fmax):
    # The product computes both itself (importing librosa costs about 1.5 s of CPU); librosa is the reference.
    np.testing.assert_allclose(mel_filters(SR, n_fft, n_mels, fmin, fmax),
                               librosa.filters.mel(sr=SR, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax),
                               rtol=0, atol=1e-7)
    y = np.random.default_rng(0).standard_normal(SR + 123)
    for pad_mode in ("reflect", "constant"):
        np.testing.assert_allclose(
            stft_magnitude(y, n_fft, n_fft // 4, pad_mode),
            np.abs(librosa.stft(y=y, n_fft=n_fft, hop_length=n_fft // 4, pad_mode=pad_mode)), rtol=0, atol=1e-9)


def test_mel_level_moves_8_per_100_db():
    loud, quiet = wav2lip_mel(sine(1000, 1.0, 0.1)), wav2lip_mel(sine(1000, 1.0, 0.05))
    band = np.argmax(loud[:, 40])
    assert loud[band, 40] - quiet[band, 40] == pytest.approx(20 * np.log10(2) * 8 / 100, abs=1e-3)
    centres = librosa.mel_frequencies(82, fmin=55, fmax=7600)[1:-1]
    assert band == np.argmin(np.abs(centres - 1000))


@pytest.mark.parametrize("frame,fps", [(25, 25.0), (26, 25.0), (31, 30.0), (50, 29.97)])
def test_mel_window_is_centred_on_the_frame(frame, fps):
    audio = np.zeros(2 * SR + 1000, np.float32)
    audio[int(round(frame / fps * SR))] = 1.0
    mel = wav2lip_mel(audio)
    click_col = int(np.argmax(mel.mean(axis=0)))
    assert click_col == round(mel_index_of_frame(frame, fps))
    window = mel_windows(mel, frame + 5, fps)[frame]
    assert window.shape == (80, 16)
    assert int(np.argmax(window.mean(axis=0))) in (7, 8)


def test_mel_windows_repeat_edge_columns():
    mel = np.arange(80 * 40, dtype=np.float32).reshape(80, 40)
    windows = mel_windows(mel, 10, 20.0)  # frame 9 is at mel column 36, near the end
    assert windows.shape == (10, 80, 16)
    np.testing.assert_array_equal(windows[0][:, :8], np.repeat(mel[:, :1], 8, axis=1))
    np.testing.assert_array_equal(windows[0][:, 8:], mel[:, 1:9])
    np.testing.assert_array_equal(windows[9][:, -5:], np.repeat(mel[:, -1:], 5, axis=1))


def test_zcr_of_a_sine_is_twice_its_frequency_over_sr():
    # At 5 fps a window holds 6400 samples, about 352 crossings: one more or less is 0.3%.
    zcr, _ = frame_zcr_rms(sine(440, 3.0), 15, 5.0)
    np.testing.assert_allclose(zcr[1:-1], 2 * 440 / SR, rtol=4e-3)
    assert zcr[0] < zcr[5]  # the first window is half edge padding, which never crosses


def test_rms_of_a_sine_is_amplitude_over_root_two():
    _, rms = frame_zcr_rms(sine(440, 3.0, amplitude=0.3), 90, 30.0)
    np.testing.assert_allclose(rms[1:-1], 0.3 / np.sqrt(2), rtol=1e-2)


def test_rms_follows_a_step_at_the_frame_time():
    audio = np.concatenate([np.zeros(SR), sine(440, 1.0, 0.5)])
    _, rms = frame_zcr_rms(audio, 50, 25.0)
    # Frame 25 sits on the step: half its window is silence.
    assert rms[24] < rms[25] < rms[26]
    assert rms[25] == pytest.approx(0.5 / np.sqrt(2) / np.sqrt(2), rel=2e-2)


def test_silence_gives_finite_floor_features():
    feats = audio_features(np.zeros(3 * SR, np.float32), 75, 25.0)
    assert feats["mel"].shape == (80, 241) and feats["zcr"].shape == (75,) and feats["rms"].shape == (75,)
    assert all(np.isfinite(v).all() for v in feats.values())
    assert (feats["zcr"] == 0).all() and (feats["rms"] == 0).all() and (feats["mel"] == -4).all()


def test_non_finite_samples_become_silence_with_a_warning():
    audio = sine(440, 1.0, 0.5)
    audio[100:200] = np.nan
    audio[5000] = np.inf
    with pytest.warns(UserWarning, match="101 of 16000"):
        feats = audio_features(audio, 25, 25.0)
    assert all(np.isfinite(v).all() for v in feats.values())


def test_clipped_audio_stays_in_range():
    square = np.sign(sine(200, 1.0)) * 3.0  # far beyond full scale
    feats = audio_features(square, 25, 25.0)
    assert all(np.isfinite(v).all() for v in feats.values())
    assert feats["mel"].max() <= 4.0
    np.testing.assert_allclose(feats["rms"][1:-1], 3.0, rtol=1e-6)


@pytest.mark.parametrize("n_samples", [0, 10, 700])
def test_very_short_audio(n_samples):
    feats = audio_features(sine(440, n_samples / SR), 3, 25.0)
    assert feats["mel"].shape == (80, 5)
    assert mel_windows(feats["mel"], 3, 25.0).shape == (3, 80, 16)
    assert feats["zcr"].shape == (3,) and all(np.isfinite(v).all() for v in feats.values())


def test_bad_input_is_a_prepare_error():
    with pytest.raises(PrepareError, match="mono"):
        audio_features(np.zeros((2, SR), np.float32), 25, 25.0)
    with pytest.raises(PrepareError, match="fps"):
        frame_zcr_rms(np.zeros(SR, np.float32), 25, 0.0)
