"""Metrics of generated head motion (the ViCo / Learning2Listen family), on normalized pose frames.

Poses are compared as per-person z-scores (``posegen.data.Stats``), so pitch, yaw, roll
and translation weigh alike and one person's larger motion does not dominate.

- FD: Frechet distance between Gaussians fitted to the frames of two sets.
- P-FD: FD of frames of speaker and listener concatenated (the joint distribution).
- L1: mean absolute error to the real sequence, frame by frame (reported, not a goal:
  a plausible reaction need not be the recorded one).
- FRDiv: mean pairwise L1 between K samples for the same input (0: deterministic).
- FRVar: variance over time of the sequence, to set against the real one (over-smoothing
  shows as a smaller value).
- rPCC: |PCC(real, partner) - PCC(generated, partner)| averaged over every pair of a motion
  dimension and a partner dimension: whether the generated motion keeps the real coupling
  to what it reacts to.
- Nods per minute: peaks of pitch (positive pitch nods down) that rise at least
  ``NOD_PROMINENCE_DEG`` above their surroundings and last 0.15 - 1.5 s (measured at
  half prominence, where a raised-cosine nod is half as wide).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg, signal

NOD_PROMINENCE_DEG = 2.0
NOD_WIDTH_S = (0.15, 1.5)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FD between Gaussians fitted to the rows of a [N, D] and b [M, D].

    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).
    """
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    eps = 1e-6 * np.eye(len(sa))  # a constant sequence (the mean-pose baseline) has a singular covariance
    covmean = linalg.sqrtm((sa + eps) @ (sb + eps))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(max(0.0, ((mu_a - mu_b) ** 2).sum() + np.trace(sa + sb - 2 * covmean)))


def l1(gen: np.ndarray, real: np.ndarray) -> float:
    return float(np.abs(gen - real).mean())


def frdiv(samples: np.ndarray) -> float:
    """Mean pairwise L1 between K samples [K, T, D]; 0 for K < 2."""
    K = len(samples)
    if K < 2:
        return 0.0
    return float(np.mean([np.abs(samples[i] - samples[j]).mean() for i in range(K) for j in range(i + 1, K)]))


def frvar(seq: np.ndarray) -> float:
    """Variance over time [T, D], averaged over dimensions."""
    return float(seq.var(0).mean())


def pcc(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two [T] signals; 0 where either is constant."""
    sa, sb = a.std(), b.std()
    if sa < 1e-9 or sb < 1e-9:
        return 0.0
    return float(((a - a.mean()) * (b - b.mean())).mean() / (sa * sb))


def rpcc(real: np.ndarray, gen: np.ndarray, partner: np.ndarray) -> float:
    """|PCC(real_d, partner_e) - PCC(gen_d, partner_e)| averaged over every pair of dimensions (d, e).

    Args:
        real, gen: [T, D] the person's motion; partner: [T, E] what it reacts to.
    """
    return float(np.mean([abs(pcc(real[:, d], partner[:, e]) - pcc(gen[:, d], partner[:, e]))
                          for d in range(real.shape[1]) for e in range(partner.shape[1])]))


def count_nods(pitch_deg: np.ndarray, fps: float, mask: np.ndarray | None = None,
               prominence_deg: float = NOD_PROMINENCE_DEG) -> int:
    """Nods in a pitch curve [T] (degrees, positive down): peaks of at least ``prominence_deg`` that last
    NOD_WIDTH_S; with ``mask`` [T] bool, only peaks at frames where it holds count."""
    if len(pitch_deg) < 3:
        return 0
    lo, hi = (w * fps / 2 for w in NOD_WIDTH_S)  # widths at half prominence
    peaks, _ = signal.find_peaks(pitch_deg, prominence=prominence_deg, width=(lo, hi))
    if mask is not None:
        peaks = peaks[mask[peaks]]
    return int(len(peaks))


def nods_per_minute(pitch_deg: np.ndarray, fps: float, mask: np.ndarray) -> float:
    minutes = mask.sum() / fps / 60.0
    return float(count_nods(pitch_deg, fps, mask) / minutes) if minutes > 0 else float("nan")
