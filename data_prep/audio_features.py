"""Per-frame audio features: Wav2Lip mel windows, zero-crossing rate and RMS.

All features share the video clock of ``common.video_io``: video frame i is
the picture at time i / fps, and every per-frame feature is centred on that
time. The mel spectrogram runs at 80 frames per second (hop 200 samples at
16 kHz), its frame k centred on time k / 80 s, so video frame i sits at mel
index i / fps * 80.

Input audio is mono float at 16 kHz, nominally in [-1, 1]. It is never
rescaled: loud or saturated audio gives louder features, clipped to the mel
range. Non-finite samples (NaN, inf, a broken decoder) are replaced by 0 with
a warning that says how many there were, so one bad packet does not cost a
dataset. Audio shorter than one STFT window is padded with silence.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import signal

from common.errors import PrepareError
from common.video_io import AUDIO_SR

MEL_FPS = 80
MEL_WINDOW = 16

# Wav2Lip's hparams.py (the values its released checkpoints were trained with).
_N_FFT = 800
_HOP = 200
_N_MELS = 80
_FMIN = 55.0
_FMAX = 7600.0
_PREEMPHASIS = 0.97
_REF_LEVEL_DB = 20.0
_MIN_LEVEL_DB = -100.0
_MAX_ABS_VALUE = 4.0

_mel_basis_cache: dict[int, np.ndarray] = {}


def clean_audio(audio: np.ndarray) -> np.ndarray:
    """Check the audio is one channel and replace non-finite samples by silence.

    Args:
        audio: [N] samples.

    Returns:
        [N] float32 samples, all finite.

    Raises:
        PrepareError: the audio is not one-dimensional.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise PrepareError(f"audio must be mono samples of shape [N], got shape {audio.shape}; "
                           "mix the channels down first")
    bad = ~np.isfinite(audio)
    if bad.any():
        warnings.warn(f"{int(bad.sum())} of {audio.size} audio samples are NaN or inf; they were replaced by silence",
                      stacklevel=2)
        audio = np.where(bad, np.float32(0.0), audio)
    return audio


def check_clock(n_frames: int, fps: float) -> None:
    """Raise PrepareError unless there is at least one frame and fps is positive."""
    if n_frames < 1 or not fps > 0:
        raise PrepareError(f"need at least one video frame and a positive fps, got n_frames={n_frames}, fps={fps}")


def _mel_basis(sr: int) -> np.ndarray:
    if sr not in _mel_basis_cache:
        _mel_basis_cache[sr] = mel_filters(sr, _N_FFT, _N_MELS, _FMIN, _FMAX)
    return _mel_basis_cache[sr]


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (Auditory Toolbox): linear to 1 kHz, logarithmic above."""
    hz = np.asarray(hz, np.float64)
    step, knee_hz = 200.0 / 3, 1000.0
    knee, log_step = knee_hz / step, np.log(6.4) / 27.0
    return np.where(hz >= knee_hz, knee + np.log(np.maximum(hz, 1e-10) / knee_hz) / log_step, hz / step)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    step, knee_hz = 200.0 / 3, 1000.0
    knee, log_step = knee_hz / step, np.log(6.4) / 27.0
    return np.where(mel >= knee, knee_hz * np.exp(log_step * (mel - knee)), mel * step)


def mel_filters(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """[n_mels, 1 + n_fft // 2] float32 triangular filters on Slaney's mel scale, each of unit area (Slaney's
    normalisation): librosa.filters.mel's defaults, value for value, without importing librosa (about 1.5 s of CPU
    a process)."""
    fmax = sr / 2 if fmax is None else fmax
    freqs = np.linspace(0.0, sr / 2, 1 + n_fft // 2)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    ramps = edges[:, None] - freqs[None, :]
    widths = np.diff(edges)
    rising, falling = -ramps[:-2] / widths[:-1, None], ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


def stft_magnitude(y: np.ndarray, n_fft: int, hop: int, pad_mode: str = "constant") -> np.ndarray:
    """[1 + n_fft // 2, 1 + N // hop] magnitudes of the centred STFT with a periodic Hann window of n_fft samples
    (librosa.stft's, with ``y`` padded by n_fft // 2 on both sides in ``pad_mode``)."""
    y = np.pad(np.asarray(y), n_fft // 2, mode=pad_mode)
    frames = np.lib.stride_tricks.sliding_window_view(y, n_fft)[::hop]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    return np.abs(np.fft.rfft(frames * window.astype(y.dtype), axis=-1)).T


def wav2lip_mel(audio: np.ndarray, sr: int = AUDIO_SR) -> np.ndarray:
    """Wav2Lip's ``audio.melspectrogram``, value for value.

    Pre-emphasis (1 - 0.97 z^-1), a centred Hann STFT (n_fft 800, hop 200,
    window 800, reflect padding as in librosa 0.7 that Wav2Lip pins), an
    80-band Slaney mel filterbank over 55-7600 Hz, magnitude to dB with a
    1e-5 floor minus a 20 dB reference level, then the symmetric
    normalisation 8 * (dB + 100) / 100 - 4 clipped to [-4, 4]. Silence is -4
    everywhere.

    Args:
        audio: [N] mono samples at ``sr`` Hz (16 kHz gives 80 mel frames/s).
        sr: sample rate in Hz.

    Returns:
        [80, M] float32 in [-4, 4] with M = 1 + max(N, 800) // 200; column k
        is centred on time k * 200 / sr.
    """
    audio = clean_audio(audio)
    if audio.size < _N_FFT:
        audio = np.pad(audio, (0, _N_FFT - audio.size))
    emphasised = signal.lfilter([1.0, -_PREEMPHASIS], [1.0], audio.astype(np.float64))
    spec = stft_magnitude(emphasised, _N_FFT, _HOP, pad_mode="reflect")
    mel = _mel_basis(sr) @ spec
    min_level = 10.0 ** (_MIN_LEVEL_DB / 20.0)
    db = 20.0 * np.log10(np.maximum(min_level, mel)) - _REF_LEVEL_DB
    normalised = 2 * _MAX_ABS_VALUE * (db - _MIN_LEVEL_DB) / -_MIN_LEVEL_DB - _MAX_ABS_VALUE
    return np.clip(normalised, -_MAX_ABS_VALUE, _MAX_ABS_VALUE).astype(np.float32)


def mel_index_of_frame(i: float, fps: float) -> float:
    """The (fractional) mel column at the time of video frame i, i / fps * 80."""
    return i / fps * MEL_FPS


def mel_windows(mel: np.ndarray, n_frames: int, fps: float, width: int = MEL_WINDOW) -> np.ndarray:
    """Cut one mel window per video frame, centred on the frame's time.

    With width 16 a window spans 200 ms. The window of frame i is the
    ``width`` columns whose centre lies nearest to mel index i / fps * 80
    (columns start .. start + width - 1 with start = round(c - (width - 1) / 2)),
    so the frame's own column sits at position width / 2 - 1 or width / 2.
    Columns before the clip's start or past its end repeat the edge column.

    Args:
        mel: [80, M] mel spectrogram from ``wav2lip_mel``.
        n_frames: T, the number of video frames.
        fps: video frames per second.
        width: mel columns per window.

    Returns:
        [T, 80, width] float32.
    """
    check_clock(n_frames, fps)
    centre = mel_index_of_frame(np.arange(n_frames), fps)
    start = np.floor(centre - (width - 1) / 2 + 0.5).astype(np.int64)
    cols = np.clip(start[:, None] + np.arange(width)[None, :], 0, mel.shape[1] - 1)
    return np.ascontiguousarray(mel[:, cols].transpose(1, 0, 2), dtype=np.float32)


def _window_sums(x: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """Sums of x[s : s + length] for every s in starts, by one cumulative sum."""
    cum = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
    return cum[starts + length] - cum[starts]


def frame_zcr_rms(audio: np.ndarray, n_frames: int, fps: float,
                  sr: int = AUDIO_SR) -> tuple[np.ndarray, np.ndarray]:
    """Zero-crossing rate and RMS energy per video frame.

    Frame i's window holds round(2 * sr / fps) samples (two video frames'
    worth) centred on sample i / fps * sr; outside the audio the edge samples
    repeat. A crossing is a sign change between neighbouring samples (0
    counts as positive, so silence has none); the rate is crossings per
    neighbouring pair, 2 f / sr for a sine of frequency f.

    Args:
        audio: [N] mono samples at ``sr`` Hz.
        n_frames: T, the number of video frames.
        fps: video frames per second.
        sr: sample rate in Hz.

    Returns:
        zcr: [T] float32 in [0, 1].
        rms: [T] float32, A / sqrt(2) for a sine of amplitude A.
    """
    check_clock(n_frames, fps)
    audio = clean_audio(audio)
    if audio.size == 0:
        audio = np.zeros(1, np.float32)
    win = max(2, int(round(2 * sr / fps)))
    centre = np.round(np.arange(n_frames) / fps * sr).astype(np.int64)
    first = centre - win // 2
    # Edge padding wide enough that every window lies inside the padded signal.
    pad_left = max(0, -int(first.min()))
    pad_right = max(0, int(first.max()) + win - audio.size)
    padded = np.pad(audio, (pad_left, pad_right), mode="edge").astype(np.float64)
    starts = first + pad_left
    rms = np.sqrt(np.maximum(_window_sums(padded ** 2, starts, win) / win, 0.0))
    # crossed[k] is True when samples k and k + 1 differ in sign.
    positive = padded >= 0
    crossed = (positive[1:] != positive[:-1]).astype(np.float64)
    zcr = _window_sums(crossed, starts, win - 1) / (win - 1)
    return zcr.astype(np.float32), rms.astype(np.float32)


def audio_features(audio: np.ndarray, n_frames: int, fps: float) -> dict[str, np.ndarray]:
    """Everything ``audio_features.npz`` stores except ``speaking``.

    Args:
        audio: [N] mono samples at 16 kHz, already fitted to n_frames / fps
            seconds (``video_io.fit_audio``).
        n_frames: T, the number of video frames.
        fps: video frames per second.

    Returns:
        dict with ``mel`` [80, M] float32 (80 columns per second; cut per
        frame with ``mel_windows``), ``zcr`` [T] float32 and ``rms`` [T]
        float32.
    """
    check_clock(n_frames, fps)
    audio = clean_audio(audio)
    zcr, rms = frame_zcr_rms(audio, n_frames, fps)
    return {"mel": wav2lip_mel(audio), "zcr": zcr, "rms": rms}
