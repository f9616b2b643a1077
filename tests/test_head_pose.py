"""Head pose: the Euler convention, Procrustes, and recovering known poses and focal."""

import numpy as np
from scipy.spatial.transform import Rotation

from common.geometry import euler_pyr, rotation_from_euler_pyr
from common.landmarks import LEFT_EYE_OUTER, RIGHT_EYE_OUTER
from data_prep.head_pose import EYE_SPAN, fit_head_pose, similarity_procrustes, smooth_poses


def test_euler_matches_intrinsic_xyz_and_round_trips():
    rng = np.random.default_rng(0)
    e = rng.uniform(-1.0, 1.0, (50, 3))
    R = rotation_from_euler_pyr(e)
    np.testing.assert_allclose(R, Rotation.from_euler("XYZ", e).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(euler_pyr(R), e, atol=1e-10)


def test_positive_pitch_is_a_nod_down():
    nose = np.array([0.0, 0.0, -0.1])  # in front of the face, toward the camera
    moved = rotation_from_euler_pyr(np.array([0.2, 0.0, 0.0])) @ nose
    assert moved[1] > 0.01  # image y points down


def test_similarity_procrustes_recovers_transform():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(40, 3))
    R = Rotation.from_euler("xyz", [0.3, -0.2, 0.5]).as_matrix()
    dst = 2.5 * src @ R.T + np.array([1.0, -2.0, 3.0])
    s, R_hat, t = similarity_procrustes(src, dst)
    assert abs(s - 2.5) < 1e-9
    np.testing.assert_allclose(R_hat, R, atol=1e-9)
    np.testing.assert_allclose(t, [1.0, -2.0, 3.0], atol=1e-9)


def _face_like_points(rng, n=478):
    """A head-sized ellipsoid cap of points facing the camera (-z), eye corners placed."""
    u = rng.uniform(-1.2, 1.2, n)
    v = rng.uniform(-1.4, 1.4, n)
    pts = np.stack([0.07 * np.sin(u), 0.09 * np.sin(v), -0.08 * np.cos(u) * np.cos(v)], -1)
    pts[RIGHT_EYE_OUTER] = [-0.045, -0.02, -0.05]
    pts[LEFT_EYE_OUTER] = [0.045, -0.02, -0.05]
    pts[10] = [0.0, -0.09, -0.05]
    pts[152] = [0.0, 0.09, -0.05]
    return pts


def test_fit_recovers_poses_and_focal_from_perspective_projections():
    rng = np.random.default_rng(2)
    canon = _face_like_points(rng)
    T, S, f = 60, 256, 2.0 * 256
    e_true = np.stack([0.25 * np.sin(np.linspace(0, 6, T)), 0.3 * np.cos(np.linspace(0, 4, T)),
                       0.1 * np.sin(np.linspace(0, 9, T))], -1)
    t_true = np.stack([0.02 * np.sin(np.linspace(0, 3, T)), np.zeros(T), 0.45 + 0.03 * np.cos(np.linspace(0, 5, T))], -1)
    x = np.einsum("tij,nj->tni", rotation_from_euler_pyr(e_true), canon) + t_true[:, None]
    uv = f * x[..., :2] / x[..., 2:] + S / 2
    z_px = (x[..., 2] - x[..., 2].mean(-1, keepdims=True)) * f / x[..., 2].mean(-1, keepdims=True)
    lm = np.concatenate([uv, z_px[..., None]], -1) + rng.normal(0, 0.3, (T, 478, 3))
    valid = np.ones(T, bool)
    valid[10:13] = False
    fit = fit_head_pose(lm, valid, S)
    assert np.isnan(fit.euler[10:13]).all()
    # The canonical face comes out frontal and in head units.
    assert abs(np.linalg.norm(fit.canonical[LEFT_EYE_OUTER] - fit.canonical[RIGHT_EYE_OUTER]) - EYE_SPAN) < 1e-9
    # A strongly perspective view (the face spans a third of its distance): depth and focal
    # trade off against the face's own depth, so pitch and yaw carry a few degrees of error.
    err = np.degrees(np.abs(fit.euler[valid] - e_true[valid])).max(0)
    assert (err < [3.0, 3.5, 1.5]).all(), err
    # The focal is weakly observable from landmarks and errs long (a flatter face further away).
    assert 0.8 < fit.focal / f <= 9.0 * 256 / f, fit.focal / f
    assert np.nanmedian(fit.reproj_px) < 1.5


def test_smoothing_reduces_jitter_and_keeps_invalid_untouched():
    rng = np.random.default_rng(3)
    T = 80
    e = np.stack([0.2 * np.sin(np.linspace(0, 4, T)), np.zeros(T), np.zeros(T)], -1)
    noisy = e + rng.normal(0, 0.02, e.shape)
    R = rotation_from_euler_pyr(noisy)
    t = rng.normal(0, 0.01, (T, 3)) + [0, 0, 0.5]
    valid = np.ones(T, bool)
    valid[40:45] = False
    R[~valid], t[~valid] = np.nan, np.nan
    Rs, ts = smooth_poses(R, t, valid, sigma=2.0)
    err_raw = np.abs(euler_pyr(R[valid]) - e[valid]).mean()
    err_s = np.abs(euler_pyr(Rs[valid]) - e[valid]).mean()
    assert err_s < 0.6 * err_raw
    assert np.isnan(Rs[~valid]).all() and np.isnan(ts[~valid]).all()
