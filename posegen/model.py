"""The pose generator: a listener TCN and a speaker TCN, both stochastic, both predicting residuals.

- Listener network, per frame: the active speaker's normalized pose, a speech flag and the
  audio features (log RMS, ZCR, speech probability, mel band energies) -> the listener's
  normalized pose (6) and expression coefficients (``n_expr``: blinks, smiles).
- Speaker network: its own speech flag and the audio features -> its own normalized pose.

Both outputs are z-scores around each person's mean (``posegen.data.Stats``): residual
learning, the output layer initialized at zero (the mean pose).

Several reactions: each network predicts, per frame and output, a Gaussian (mean and
standard deviation; trained by negative log-likelihood). The mean carries what the input
determines (a nod after the speaker's emphasis); the spread carries what it does not (idle
sway, the exact moment of a nod). A sample is mean + std * noise, where the noise is a smooth
causal random process (``SmoothNoise``: two cascaded AR(1) filters of white noise, unit
variance) whose time constant per output is fitted after training to the autocorrelation of
the training residuals, so sampled motion is as smooth as real motion. Different seeds give
different sequences; the same seed gives the same sequence, in batch or frame by frame.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from posegen.data import POSE_DIM, Stats, listener_inputs, speaker_inputs
from posegen.tcn import TCN, StreamingTCN, TCNConfig

LOG_STD_RANGE = (-5.0, 2.0)


@dataclasses.dataclass
class PoseGenConfig:
    """Shape of the two networks and of their inputs (saved in every checkpoint)."""

    channels: int = 64
    levels: int = 5
    kernel_size: int = 3
    dropout: float = 0.0
    n_expr: int = 8
    """Expression coefficients the listener network predicts (the leading PCA components)."""
    mel_bands: int = 8
    """Mel band energies among the audio features (0: RMS, ZCR and speech probability only)."""

    @property
    def audio_dim(self) -> int:
        return 3 + self.mel_bands

    def receptive_field_s(self, fps: float) -> float:
        return TCNConfig(1, 1, self.channels, self.levels, self.kernel_size).receptive_field / fps


class SmoothNoise:
    """Unit-variance smooth noise per channel: u_t = a u_{t-1} + (1 - a) e_t, z_t = a z_{t-1} + (1 - a) u_t,
    scaled to unit stationary variance; started in its stationary distribution.

    Drawn from numpy's Generator, whose draws do not depend on how they are batched, so
    ``sample(T)`` equals T calls of ``next()`` with the same seed.

    Args:
        a: [C] per-channel pole in [0, 1): 0 is white noise, near 1 is slow drift.
    """

    def __init__(self, a: np.ndarray, seed: int, batch: int = 1):
        self.a = np.clip(np.asarray(a, np.float64), 0.0, 0.999)
        self.batch = batch
        self.rng = np.random.default_rng(seed)
        a = self.a
        # stationary variances of u and z for unit e, and their covariance
        var_u = (1 - a) ** 2 / (1 - a ** 2)
        cov_uz = (1 - a) * var_u / (1 - a ** 2)
        var_z = ((1 - a) ** 2 * var_u + 2 * a ** 2 * (1 - a) * cov_uz) / (1 - a ** 2)
        self.scale = 1.0 / np.sqrt(var_z)
        # start in the stationary joint distribution of (u, z)
        corr = cov_uz / np.sqrt(var_u * var_z)
        e0, e1 = self.rng.standard_normal((2, batch, len(a)))
        self.u = e0 * np.sqrt(var_u)
        self.z = (corr * e0 + np.sqrt(np.maximum(1 - corr ** 2, 0.0)) * e1) * np.sqrt(var_z)

    def next(self) -> np.ndarray:
        """[batch, C] the next frame's noise."""
        e = self.rng.standard_normal((self.batch, len(self.a)))
        self.u = self.a * self.u + (1 - self.a) * e
        self.z = self.a * self.z + (1 - self.a) * self.u
        return (self.z * self.scale).astype(np.float32)

    def sample(self, n_frames: int) -> np.ndarray:
        """[batch, T, C] the next T frames."""
        if n_frames == 0:
            return np.zeros((self.batch, 0, len(self.a)), np.float32)
        return np.stack([self.next() for _ in range(n_frames)], 1)


def fit_noise_pole(residuals: list[np.ndarray], max_lag: int = 25) -> np.ndarray:
    """[C] the SmoothNoise pole per channel whose autocorrelation best matches that of the residuals.

    Args:
        residuals: sequences [T_i, C] of standardized residuals (y - mean) / std (NaN-free).
    """
    C = residuals[0].shape[1]
    lags = np.arange(1, max_lag + 1)

    def acf(seqs: list[np.ndarray]) -> np.ndarray:
        width = seqs[0].shape[1]
        num, den = np.zeros((len(lags), width)), np.zeros(width)
        for x in seqs:
            x = x - x.mean(0)
            den += (x ** 2).sum(0)
            for i, k in enumerate(lags):
                if k < len(x):
                    num[i] += (x[k:] * x[:-k]).sum(0)
        return num / np.maximum(den, 1e-12)

    target = acf([r for r in residuals if len(r) > max_lag + 1] or residuals)
    grid = np.linspace(0.0, 0.99, 100)
    model_acf = acf([SmoothNoise(grid, seed=0).sample(4000)[0].astype(np.float64)])  # [lags, grid]
    best = np.zeros(C)
    for c in range(C):
        best[c] = grid[int(np.argmin(((model_acf - target[:, c: c + 1]) ** 2).sum(0)))]
    return best.astype(np.float32)


class PoseGenerator(nn.Module):
    """The listener and speaker networks, each with the fitted poles of its sampling noise."""

    def __init__(self, cfg: PoseGenConfig):
        super().__init__()
        self.cfg = cfg
        tcn = lambda d_in, d_out: TCN(TCNConfig(d_in, 2 * d_out, cfg.channels, cfg.levels,  # noqa: E731
                                                cfg.kernel_size, cfg.dropout))
        self.out_dims = {"listener": POSE_DIM + cfg.n_expr, "speaker": POSE_DIM}
        self.listener = tcn(POSE_DIM + 1 + cfg.audio_dim, self.out_dims["listener"])
        self.speaker = tcn(1 + cfg.audio_dim, self.out_dims["speaker"])
        self.register_buffer("pole_listener", torch.full((self.out_dims["listener"],), 0.9))
        self.register_buffer("pole_speaker", torch.full((self.out_dims["speaker"],), 0.9))

    def net(self, role: str) -> TCN:
        return self.listener if role == "listener" else self.speaker

    def pole(self, role: str) -> np.ndarray:
        return (self.pole_listener if role == "listener" else self.pole_speaker).numpy()

    def forward(self, role: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, C_in] inputs -> mean [B, T, C_out] and log standard deviation [B, T, C_out] (normalized units)."""
        out = self.net(role)(x)
        mu, log_std = out.chunk(2, -1)
        return mu, log_std.clamp(*LOG_STD_RANGE)

    def streaming(self, role: str, batch: int = 1) -> StreamingTCN:
        """A frame-by-frame runner of one network: ``step(x_t)`` -> [B, 2 C_out] (mean, then log std unclamped)."""
        return StreamingTCN(self.net(role), batch)


def role_weight(speaking: np.ndarray, fps: float, fade_s: float = 0.2) -> np.ndarray:
    """[T, P] in [0, 1]: 1 where a person speaks, faded linearly over ``fade_s`` at turn changes,
    so the switch between the speaker and listener networks' poses does not jump."""
    w = speaking.astype(np.float32)
    n = max(1, int(round(fade_s * fps)))
    if n == 1:
        return w
    kernel = np.ones(n, np.float32) / n
    pad = np.pad(w, ((n // 2, n - 1 - n // 2), (0, 0)), mode="edge")
    return np.stack([np.convolve(pad[:, p], kernel, mode="valid") for p in range(w.shape[1])], 1)


@torch.no_grad()
def run(model: PoseGenerator, role: str, x: np.ndarray, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One network over a whole sequence: x [T, C_in] -> K samples [K, T, C_out] and the mean [T, C_out] (normalized)."""
    model.eval()
    mu, log_std = model(role, torch.from_numpy(x)[None])
    mu, std = mu[0].numpy(), log_std[0].exp().numpy()
    noise = SmoothNoise(model.pole(role), seed, batch=samples).sample(len(x))
    return mu[None] + std[None] * noise, mu


def generate(model: PoseGenerator, stats: Stats, persons: list[str], audio: np.ndarray, speaking: np.ndarray,
             fps: float, samples: int = 1, seed: int = 0, speaker_pose: np.ndarray | None = None,
             ) -> dict[str, np.ndarray]:
    """Head poses and expressions of every person of a conversation, from its audio and turn-taking.

    Each person's speaker network runs on the audio (its speech flag on where it speaks); the
    listener network of each person then reads the active speaker's pose (generated, or
    ``speaker_pose`` when given) and the audio. A person's pose follows the speaker network
    where it speaks and the listener network where it listens, crossfaded at turn changes.

    Args:
        persons: P person names known to ``stats``.
        audio: [T, A] raw audio features (``posegen.data.frame_audio_features``).
        speaking: [T, P] bool.
        samples: K different sequences; sample k of every network uses seed + k (offset per
            person and network), so the same seed reproduces the same K sequences.
        speaker_pose: [T, P, 6] real poses to use as the speakers' instead of generated ones.

    Returns:
        pose [K, T, P, 6] (radians, head units), expr [K, T, P, n_expr],
        pose_speaker, pose_listener [K, T, P, 6]: each network's own samples before the crossfade,
        mean_speaker, mean_listener [T, P, 6]: each network's mean (the most likely motion).
    """
    for name in persons:
        if name not in stats.pose_mean:
            raise KeyError(f"the pose model was not trained on {name}")
    T, P = speaking.shape
    audio_z = stats.norm_audio(audio)
    spk = [run(model, "speaker", speaker_inputs(speaking[:, j], audio_z), samples, seed + 7919 * j) for j in range(P)]
    spk_z = np.stack([s for s, _ in spk], 2)  # [K, T, P, 6]
    if speaker_pose is not None:
        real_z = np.stack([stats.norm_pose(n, speaker_pose[:, j]) for j, n in enumerate(persons)], 1)
        drive = [np.nan_to_num(real_z)] * samples
    else:
        drive = list(spk_z)
    lis, lis_mu = [], []
    for j in range(P):
        per_k = [run(model, "listener", listener_inputs(stats, persons, drive[k], speaking, audio_z, j), 1,
                     seed + 7919 * j + 104729 + k) for k in range(samples)]
        lis.append(np.concatenate([s for s, _ in per_k]))
        lis_mu.append(per_k[0][1])
    lis = np.stack(lis, 2)  # [K, T, P, 6 + n_expr]
    w = role_weight(speaking, fps)[None, :, :, None]
    pose_z = w * spk_z + (1 - w) * lis[..., :POSE_DIM]
    each = lambda z, fn: np.stack([fn(n, z[..., j, :]) for j, n in enumerate(persons)], -2)  # noqa: E731
    out = {"pose": each(pose_z, stats.denorm_pose), "expr": each(lis[..., POSE_DIM:], stats.denorm_expr),
           "pose_speaker": each(spk_z, stats.denorm_pose), "pose_listener": each(lis[..., :POSE_DIM], stats.denorm_pose),
           "mean_speaker": each(np.stack([m for _, m in spk], 1), stats.denorm_pose),
           "mean_listener": each(np.stack(lis_mu, 1)[..., :POSE_DIM], stats.denorm_pose)}
    return {k: v.astype(np.float32) for k, v in out.items()}
