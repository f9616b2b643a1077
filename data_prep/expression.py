"""Expression coefficients, Eq. (1) of the paper: S = S_mean + B_geo F_geo + B_exp F_exp.

Shapes are the pose-normalized face-mesh landmarks of every person of the
dataset: each frame's 3D landmarks aligned by a similarity (on the rigid
landmarks only, so a mouth opening is never aligned away) to its person's
canonical face. ``S_mean`` is the mean over persons of their mean shapes,
``B_geo`` an orthonormal basis of the per-person offsets from it (identity),
and ``B_exp`` the PCA basis of the residuals of all frames (expression).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_prep.head_pose import _rotate, similarity_procrustes


@dataclasses.dataclass
class ExpressionBasis:
    """Eq. (1): shapes are flattened [N*3] landmark vectors in head units."""

    mean: np.ndarray  # [N*3]
    geo_basis: np.ndarray  # [N*3, G] orthonormal columns, G <= P-1
    exp_basis: np.ndarray  # [N*3, K] orthonormal columns
    exp_std: np.ndarray  # [K] standard deviation of each coefficient over the data
    explained_variance_ratio: np.ndarray  # [K_all] of every PCA component, for the spectrum plot

    @property
    def k(self) -> int:
        return self.exp_basis.shape[1]


def pose_normalize(landmarks: np.ndarray, canonical: np.ndarray, rigid: np.ndarray) -> np.ndarray:
    """Align each frame's landmarks to the canonical face by a similarity on the rigid points.

    Args:
        landmarks: [T, N, 3] crop-pixel landmarks (rows may be NaN).
        canonical: [N, 3] the person's canonical face in head units.
        rigid: [M] indices of the rigid landmarks.

    Returns:
        [T, N, 3] shapes in head units (NaN rows stay NaN).
    """
    out = np.full(landmarks.shape, np.nan)
    ok = np.isfinite(landmarks).all(axis=(1, 2))
    lm = landmarks[ok].astype(np.float64)
    s, R, t = similarity_procrustes(lm[:, rigid], np.broadcast_to(canonical[rigid], lm[:, rigid].shape))
    out[ok] = s[:, None, None] * _rotate(R, lm) + t[:, None, :]
    return out


def fit_expression_basis(shapes_per_person: list[np.ndarray], k: int = 32,
                         min_variance: float = 0.95) -> ExpressionBasis:
    """Fit Eq. (1) to the pose-normalized shapes of all persons.

    Args:
        shapes_per_person: per person [F_p, N, 3] pose-normalized shapes of valid frames.
        k: the number of expression components (default 32); raised when
            fewer than that keep ``min_variance`` of the expression variance.
        min_variance: the share of variance the basis must keep.

    Returns:
        ExpressionBasis with K >= min(k, rank) components.
    """
    flat = [s.reshape(len(s), -1) for s in shapes_per_person]
    person_means = np.stack([f.mean(0) for f in flat])
    mean = person_means.mean(0)
    offsets = person_means - mean
    if len(flat) > 1:
        u, sv, _ = np.linalg.svd(offsets.T, full_matrices=False)
        geo_basis = u[:, sv > 1e-9 * max(sv.max(), 1e-30)]
    else:
        geo_basis = np.zeros((mean.size, 0))
    resid = np.concatenate([f - m for f, m in zip(flat, person_means)])
    _, sv, vt = np.linalg.svd(resid, full_matrices=False)
    var = sv**2
    ratio = var / max(var.sum(), 1e-30)
    k95 = int(np.searchsorted(np.cumsum(ratio), min_variance) + 1)
    k_used = int(min(max(k, k95), len(ratio)))
    exp_basis = vt[:k_used].T
    std = sv[:k_used] / np.sqrt(max(len(resid) - 1, 1))
    return ExpressionBasis(mean, geo_basis, exp_basis, std, ratio)


def encode(basis: ExpressionBasis, shapes: np.ndarray, person_mean: np.ndarray) -> np.ndarray:
    """F_exp of shapes: [T, N, 3] (NaN rows allowed) -> [T, K] (NaN rows stay NaN)."""
    flat = shapes.reshape(len(shapes), -1)
    return (flat - person_mean.reshape(-1)) @ basis.exp_basis


def identity_coefficients(basis: ExpressionBasis, person_mean: np.ndarray) -> np.ndarray:
    """F_geo of a person: its mean shape [N*3] -> [G]."""
    return (person_mean.reshape(-1) - basis.mean) @ basis.geo_basis


def decode(basis: ExpressionBasis, f_geo: np.ndarray, f_exp: np.ndarray) -> np.ndarray:
    """Eq. (1): [G], [T, K] -> shapes [T, N, 3]."""
    flat = basis.mean + basis.geo_basis @ f_geo + f_exp @ basis.exp_basis.T
    return flat.reshape(len(f_exp), -1, 3)
