"""The speaker embedding: Resemblyzer 0.1.4's GE2E voice encoder, run here from its wheel's weights.

The GE2E voice encoder of Resemblyzer 0.1.4 (a 3-layer
LSTM over 40-band mel frames, 256-d L2-normalised output, trained on
LibriSpeech, VoxCeleb 1 and 2). Its weights, ``pretrained.pt``, ship inside
the PyPI wheel; this module finds the file without importing the
``resemblyzer`` package (whose ``__init__`` imports ``webrtcvad``, which
imports ``pkg_resources``, gone from setuptools >= 81, and a deprecated SciPy
module) and runs the same network and the same mel front end here, so
nothing is ever downloaded. An utterance's embedding is Resemblyzer's
``embed_utterance``: 1.6 s partial windows at 1.3 per second (zero padded
when shorter), each embedded, averaged and normalised; the audio is first
raised to -30 dBFS when quieter (Resemblyzer's ``normalize_volume``).
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import numpy as np
import torch

from common.video_io import AUDIO_SR
from data_prep.audio_features import clean_audio, mel_filters, stft_magnitude

ENCODER_NAME = "resemblyzer-0.1.4-ge2e"
EMBED_DIM = 256

# Resemblyzer's hparams.py: mel front end and partial utterances.
_MEL_BANDS = 40
_N_FFT = 400  # 25 ms windows
_HOP = 160  # 10 ms steps: 100 mel frames per second
_MEL_FPS = AUDIO_SR // _HOP
_PARTIAL_FRAMES = 160  # 1.6 s
_PARTIAL_RATE = 1.3  # partial windows per second
_MIN_COVERAGE = 0.75
_TARGET_DBFS = -30.0
_INT16_MAX = 2 ** 15 - 1
_LSTM_HIDDEN = 256
_LSTM_LAYERS = 3
_BATCH = 64  # windows per LSTM call


class VoiceError(ValueError):
    """Bad input to voice enrollment, assignment or a roles file; the message says what to do."""


class VoiceEncoder(torch.nn.Module):
    """Resemblyzer's GE2E speaker encoder: LSTM(40 -> 256, 3 layers), linear, ReLU, L2 norm."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(_MEL_BANDS, _LSTM_HIDDEN, _LSTM_LAYERS, batch_first=True)
        self.linear = torch.nn.Linear(_LSTM_HIDDEN, EMBED_DIM)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """Embed a batch of mel windows.

        Args:
            mels: [B, F, 40] power mel frames (``mel_frames``), F frames of 10 ms.

        Returns:
            [B, 256] embeddings, non-negative and of unit length (zero where the ReLU left nothing).
        """
        _, (hidden, _) = self.lstm(mels)
        raw = torch.relu(self.linear(hidden[-1]))
        return raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)


def weights_path() -> Path:
    """Where ``pretrained.pt`` of the installed resemblyzer wheel lies (the package is not imported).

    Raises:
        VoiceError: resemblyzer is not installed, or its wheel lacks the weights.
    """
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise VoiceError("the speaker encoder needs the resemblyzer package (its weights ship inside the wheel): "
                         "pip install resemblyzer==0.1.4 (see requirements.txt)")
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"
    if not path.is_file():
        raise VoiceError(f"{path} is missing: reinstall resemblyzer==0.1.4")
    return path


@functools.lru_cache(maxsize=1)
def load_encoder() -> VoiceEncoder:
    """The voice encoder with Resemblyzer's weights, on the CPU in eval mode, loaded once per process."""
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)["model_state"]
    encoder = VoiceEncoder()
    # The checkpoint also holds GE2E's training-only similarity scale and bias.
    encoder.load_state_dict({k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))})
    return encoder.eval()


def normalize_volume(audio: np.ndarray) -> np.ndarray:
    """Raise quiet audio to -30 dBFS RMS; louder audio is left alone (Resemblyzer's ``normalize_volume``).

    Args:
        audio: [N] float samples in [-1, 1].

    Returns:
        [N] float32; silence (RMS 0) comes back unchanged.
    """
    audio = np.asarray(audio, np.float32)
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    if rms <= 0.0:
        return audio
    change_db = _TARGET_DBFS - 20.0 * math.log10(rms)
    return audio * np.float32(10.0 ** (change_db / 20.0)) if change_db > 0 else audio


def mel_frames(audio: np.ndarray) -> np.ndarray:
    """Resemblyzer's encoder input: a power (not log) mel spectrogram, 40 bands, 25 ms windows, 10 ms hop.

    Args:
        audio: [N] float samples at 16 kHz.

    Returns:
        [1 + N // 160, 40] float32, frame k centred on sample 160 k.
    """
    spec = stft_magnitude(np.asarray(audio, np.float32), _N_FFT, _HOP) ** 2
    mel = mel_filters(AUDIO_SR, _N_FFT, _MEL_BANDS) @ spec
    return np.ascontiguousarray(mel.T, dtype=np.float32)


def _encode(windows: np.ndarray) -> np.ndarray:
    """[B, F, 40] mel windows -> [B, 256] embeddings, in batches of ``_BATCH``.

    Runs on one CPU thread: the LSTM steps are small matrix products that
    gain little from more threads, and on a busy machine torch's thread pool
    made them 10-50x slower (measured on 2 cores shared with other jobs). The
    process's thread count is restored afterwards.
    """
    encoder = load_encoder()
    out = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for i in range(0, windows.shape[0], _BATCH):
                out.append(encoder(torch.from_numpy(np.ascontiguousarray(windows[i:i + _BATCH]))).numpy())
    finally:
        torch.set_num_threads(threads)
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, EMBED_DIM), np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    """x / |x| along the last axis; all-zero vectors stay zero."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(norm > 0, x / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def embed_utterance(audio: np.ndarray) -> np.ndarray:
    """One speaker embedding for an utterance (Resemblyzer's ``embed_utterance`` after volume normalisation).

    The audio is cut into 1.6 s partial windows, 1.3 per second, covering it
    all (the last window is kept when at least 75% of it is audio, and
    zero-padded); the unit-length partial embeddings are averaged and
    normalised.

    Args:
        audio: [N] float samples at 16 kHz, speech only (silence dilutes the voice).

    Returns:
        [256] float32 of unit length (zero for pure silence).

    Raises:
        VoiceError: empty audio.
    """
    audio = normalize_volume(clean_audio(audio))
    if audio.size == 0:
        raise VoiceError("cannot embed an empty utterance")
    n_mel = int(math.ceil((audio.size + 1) / _HOP))
    step = int(round(AUDIO_SR / _PARTIAL_RATE / _HOP))
    starts = list(range(0, max(1, n_mel - _PARTIAL_FRAMES + step + 1), step))
    coverage = (audio.size - starts[-1] * _HOP) / (_PARTIAL_FRAMES * _HOP)
    if coverage < _MIN_COVERAGE and len(starts) > 1:
        starts.pop()
    stop = (starts[-1] + _PARTIAL_FRAMES) * _HOP
    mel = mel_frames(np.pad(audio, (0, max(0, stop - audio.size))))
    windows = np.stack([mel[s:s + _PARTIAL_FRAMES] for s in starts])
    return _unit(_encode(windows).mean(0))
