"""Eq. (1): identity and expression separate, and a planted blink shows in F_exp."""

import numpy as np

from common.geometry import rotation_from_euler_pyr
from data_prep.expression import decode, encode, fit_expression_basis, identity_coefficients, pose_normalize

UPPER_LID, LOWER_LID = 159, 145  # right eye, face-mesh indices


def _person(rng, n_frames, face, blink_frames=()):
    """Landmark tracks of one face: talking (a mouth mode), moving, with planted blinks."""
    mouth = rng.normal(size=face.shape) * 0.004
    mouth[:300] = 0.0  # only the lower face moves with the mouth
    shapes = face + np.sin(np.linspace(0, 20, n_frames))[:, None, None] * mouth
    shapes = shapes + rng.normal(0, 2e-4, shapes.shape)
    for f in blink_frames:
        shapes[f, UPPER_LID] = shapes[f, LOWER_LID] + [0.0, -0.0005, 0.0]
    e = rng.uniform(-0.2, 0.2, (n_frames, 3))
    R = rotation_from_euler_pyr(e)
    lm = 900.0 * np.einsum("tij,tnj->tni", R, shapes) + [128.0, 128.0, 0.0]
    return lm, shapes


def test_blink_shows_in_f_exp_and_identity_is_apart():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(478, 3)) * 0.03
    base[UPPER_LID] = base[LOWER_LID] + [0.0, -0.01, 0.0]
    faces = [base, base + rng.normal(size=base.shape) * 0.004]
    blink = [50, 51, 52, 53]
    rigid = np.arange(300)
    tracks = [_person(rng, 120, faces[0], blink)[0], _person(rng, 120, faces[1])[0]]
    shapes = [pose_normalize(lm, faces[i], rigid) for i, lm in enumerate(tracks)]
    basis = fit_expression_basis(shapes, k=8)
    assert basis.k >= 2 and np.cumsum(basis.explained_variance_ratio)[basis.k - 1] >= 0.95
    assert basis.geo_basis.shape[1] == 1
    means = [s.reshape(len(s), -1).mean(0) for s in shapes]
    f_exp = encode(basis, shapes[0], means[0])
    f_geo = identity_coefficients(basis, means[0])
    recon = decode(basis, f_geo, f_exp)
    gap = np.linalg.norm(recon[:, UPPER_LID] - recon[:, LOWER_LID], axis=-1)
    open_gap = np.median(np.delete(gap, blink))
    assert gap[blink].max() < 0.3 * open_gap
    assert np.delete(gap, blink).min() > 0.7 * open_gap  # and only there
    # The two persons' identities differ in F_geo, not in the expression codes' means.
    f_geo1 = identity_coefficients(basis, means[1])
    assert abs(f_geo[0] - f_geo1[0]) > 0.01
    assert np.abs(encode(basis, shapes[1], means[1]).mean(0)).max() < 1e-9


def test_pose_normalize_removes_pose_and_keeps_nan_rows():
    rng = np.random.default_rng(1)
    face = rng.normal(size=(478, 3)) * 0.03
    lm, shapes = _person(rng, 10, face)
    lm[3] = np.nan
    out = pose_normalize(lm, face, np.arange(478))
    assert np.isnan(out[3]).all()
    err = np.abs(np.delete(out - shapes, 3, axis=0)).max()
    assert err < 2e-3  # the per-frame noise and mouth motion, not the pose
