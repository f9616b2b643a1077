"""Synthetic dyads with a planted reaction law, to test that posegen learns how listeners react.

Person 0 speaks the whole time; its loudness (log RMS and mel energies) alternates between a
calm level and loud stretches of 0.6 - 1.5 s that start every 2 - 5 s. Person 1 listens:

- the law: ``NOD_LAG_S`` (300 - 600 ms, drawn per event) after each loud onset the
  listener nods: pitch rises by ``NOD_DEG`` and returns, a raised cosine of ``NOD_S``;
- while the speaker is loud the listener's smile coefficient (expression 1) rises;
- besides that, small smooth idle motion and blinks (expression 0) at random times.

The speaker's own pitch dips with its loudness (it raises the head on emphasis), so the
speaker network has an audio-to-pose law to learn too. Features are built directly at the
level posegen reads (``posegen.data.Conversation``), no video involved.
"""

from __future__ import annotations

import numpy as np

from posegen.data import Conversation

FPS = 25.0
NOD_LAG_S = (0.3, 0.6)
NOD_S = 0.5
NOD_DEG = 8.0
N_EXPR = 8


def _smooth_noise(rng: np.random.Generator, n: int, dims: int, sigma_frames: float, amplitude: float) -> np.ndarray:
    """[n, dims] Gaussian-filtered white noise scaled to the given standard deviation."""
    k = np.arange(-3 * int(sigma_frames), 3 * int(sigma_frames) + 1)
    kernel = np.exp(-0.5 * (k / sigma_frames) ** 2)
    kernel /= kernel.sum()
    x = rng.standard_normal((n + len(k), dims))
    out = np.stack([np.convolve(x[:, d], kernel, "same")[len(k) // 2: len(k) // 2 + n] for d in range(dims)], 1)
    return out / (out.std(0) + 1e-9) * amplitude


def _bump(n: int, start: float, length: float) -> np.ndarray:
    """[n] a raised cosine from frame ``start`` lasting ``length`` frames (fractional positions)."""
    t = np.arange(n) - start
    inside = (t >= 0) & (t <= length)
    return np.where(inside, 0.5 * (1 - np.cos(2 * np.pi * np.clip(t, 0, length) / length)), 0.0)


def synthetic_dyad(seconds: float = 60.0, seed: int = 0, name: str | None = None, mel_bands: int = 8,
                   val_fraction: float = 0.3) -> tuple[Conversation, dict]:
    """A dyad with the planted law.

    Returns:
        conversation: persons "<name>:0" (speaker) and "<name>:1" (listener); the last
            ``val_fraction`` of frames held out.
        truth: onsets [N] (frames of loud onsets), nod_peaks [N] (frames where each planted nod peaks),
            loud [T] bool.
    """
    rng = np.random.default_rng(seed)
    name = name or f"dyad{seed}"
    T = int(seconds * FPS)
    # The speaker's loudness: calm speech with syllable ripple, plus loud stretches.
    loud = np.zeros(T, bool)
    onsets = []
    t = rng.uniform(1.0, 3.0) * FPS
    while t < T:
        dur = rng.uniform(0.6, 1.5) * FPS
        loud[int(t): int(t + dur)] = True
        onsets.append(int(t))
        t += dur + rng.uniform(2.0, 5.0) * FPS
    onsets = np.array(onsets)
    ripple = 0.4 * np.sin(2 * np.pi * 4.0 * np.arange(T) / FPS + rng.uniform(0, 2 * np.pi))
    log_rms = np.where(loud, np.log(0.15), np.log(0.03)) + ripple + 0.1 * rng.standard_normal(T)
    zcr = np.clip(0.12 + 0.03 * rng.standard_normal(T), 0, 1)
    bands = np.clip(0.8 * (log_rms[None] - np.log(0.05)) + 0.3 * rng.standard_normal((mel_bands, T))
                    - np.linspace(0, 1.5, mel_bands)[:, None], -4, 4)
    audio = np.concatenate([np.stack([log_rms, zcr, np.ones(T)], 1), bands.T], 1).astype(np.float32)

    loud_s = np.convolve(loud.astype(float), np.ones(5) / 5, "same")
    pose = np.zeros((T, 2, 6))
    pose[:, 0, :3] = np.deg2rad(_smooth_noise(rng, T, 3, 12, 3.0))
    pose[:, 0, 0] -= np.deg2rad(4.0) * loud_s  # the speaker raises the head on loud speech
    pose[:, 0, 3:] = _smooth_noise(rng, T, 3, 15, 0.005) + [0.0, 0.0, 0.6]
    pose[:, 1, :3] = np.deg2rad(_smooth_noise(rng, T, 3, 15, 1.0))
    pose[:, 1, 3:] = _smooth_noise(rng, T, 3, 15, 0.002) + [0.0, 0.0, 0.6]
    peaks = []
    for on in onsets:
        start = on + rng.uniform(*NOD_LAG_S) * FPS
        pose[:, 1, 0] += np.deg2rad(NOD_DEG) * _bump(T, start, NOD_S * FPS)
        pose[:, 1, 4] += 0.004 * _bump(T, start, NOD_S * FPS)  # the head dips a little too
        peaks.append(start + NOD_S * FPS / 2)
    expr = 0.05 * rng.standard_normal((T, 2, N_EXPR))
    expr[:, :, :] += 0.3 * _smooth_noise(rng, T, N_EXPR * 2, 10, 1.0).reshape(T, 2, N_EXPR)
    for p in range(2):
        for b in rng.uniform(0, T, size=int(seconds / 4)):
            expr[:, p, 0] += 3.0 * _bump(T, b, 5)  # blinks
    smile = np.convolve(loud.astype(float), np.ones(12) / 12, "full")[:T]
    expr[:, 1, 1] += 2.0 * smile
    speaking = np.zeros((T, 2), bool)
    speaking[:, 0] = True
    conv = Conversation(name=name, fps=FPS, persons=[f"{name}:0", f"{name}:1"], pose=pose.astype(np.float32),
                        expr=expr.astype(np.float32), valid=np.ones((T, 2), bool), speaking=speaking, audio=audio,
                        train_end=T - int(round(T * val_fraction)))
    return conv, {"onsets": onsets, "nod_peaks": np.array(peaks), "loud": loud}
