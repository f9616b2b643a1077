"""Head pose (R, t) per frame and one focal length per person, from face-mesh landmarks.

Convention (../shared/DESIGN.md): a pinhole camera fixed to the person's crop,
focal ``f`` in crop pixels, principal point at the crop centre, OpenCV axes.
``x_cam = R @ x_head + t`` maps head-canonical points into that camera.

Head-canonical space is the person's own canonical face: the generalized
Procrustes mean of its landmarks over the clip, turned frontal (x from the
right outer eye corner to the left one, y from forehead down to chin, z away
from the camera) and scaled so the outer eye corners are ``EYE_SPAN`` apart
(about metres), origin at the landmark centroid.

Fitting: (1) the landmarks that move least once aligned are the rigid ones
(the mouth, jaw and eyelids drop out by themselves); (2) a weak-perspective
Procrustes per frame gives R, scale and image position; (3) for each focal
on a grid, R and t are refined by minimizing the 2D reprojection error of the
rigid landmarks over all frames, the best focal is refined jointly with all
poses (robust Huber loss, L-BFGS).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from common.geometry import euler_pyr
from common.landmarks import CHIN, FOREHEAD, LEFT_EYE_OUTER, RIGHT_EYE_OUTER

# Outer-eye-corner span of the canonical face in head units (an adult's is about 9 cm).
EYE_SPAN = 0.09


def _rotate(R: np.ndarray, points: np.ndarray) -> np.ndarray:
    """R [F, 3, 3] applied to points [N, 3] or [F, N, 3] -> [F, N, 3] (matmul: einsum is slow here)."""
    return np.swapaxes(R @ np.swapaxes(points, -1, -2), -1, -2)


def similarity_procrustes(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None):
    """Best s, R, t with dst ~ s R src + t (Umeyama), batched over frames.

    Args:
        src: [..., N, 3] points; dst: [..., N, 3] points.
        weights: optional [N] non-negative point weights.

    Returns:
        s [...], R [..., 3, 3] (proper rotations), t [..., 3].
    """
    w = np.ones(src.shape[-2]) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu_s = np.moveaxis(src, -1, -2) @ w
    mu_d = np.moveaxis(dst, -1, -2) @ w
    a, b = src - mu_s[..., None, :], dst - mu_d[..., None, :]
    cov = np.moveaxis(b * w[:, None], -1, -2) @ a
    U, S, Vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.ones(S.shape)
    D[..., -1] = d
    R = U @ (D[..., :, None] * Vt)
    var_s = (a * a).sum(-1) @ w
    s = (S * D).sum(-1) / np.maximum(var_s, 1e-12)
    t = mu_d - s[..., None] * (R @ mu_s[..., None])[..., 0]
    return s, R, t


def generalized_procrustes(shapes: np.ndarray, idx: np.ndarray, iters: int = 5) -> np.ndarray:
    """Mean shape of [F, N, 3] shapes after similarity alignment on the points ``idx``.

    Returns:
        [N, 3] mean shape, unit RMS size on ``idx``, centred on ``idx``.
    """
    mean = shapes[0]
    for _ in range(iters):
        s, R, t = similarity_procrustes(shapes[:, idx], np.broadcast_to(mean[idx], shapes[:, idx].shape))
        aligned = s[:, None, None] * _rotate(R, shapes) + t[:, None, :]
        mean = aligned.mean(0)
        mean = mean - mean[idx].mean(0)
        mean = mean / np.sqrt((mean[idx] ** 2).sum(-1).mean())
    return mean


def rigid_landmarks(lm3d: np.ndarray, keep: float = 0.4) -> np.ndarray:
    """Indices of the landmarks that move least relative to the face (the rigid part).

    Args:
        lm3d: [F, N, 3] landmarks of valid frames.
        keep: the share of landmarks kept.

    Returns:
        [M] sorted indices.
    """
    idx = np.arange(lm3d.shape[1])
    for _ in range(2):
        mean = generalized_procrustes(lm3d, idx, iters=3)
        s, R, t = similarity_procrustes(lm3d[:, idx], np.broadcast_to(mean[idx], lm3d[:, idx].shape))
        aligned = s[:, None, None] * _rotate(R, lm3d) + t[:, None, :]
        spread = np.sqrt(((aligned - aligned.mean(0)) ** 2).sum(-1).mean(0))
        idx = np.sort(np.argsort(spread)[: max(12, int(keep * lm3d.shape[1]))])
    return idx


@dataclasses.dataclass
class HeadPoseFit:
    """Per-person result: poses of every frame (NaN where invalid) and one focal."""

    R: np.ndarray  # [T, 3, 3]
    t: np.ndarray  # [T, 3]
    euler: np.ndarray  # [T, 3] pitch, yaw, roll
    focal: float  # crop pixels
    canonical: np.ndarray  # [478, 3] head units
    rigid: np.ndarray  # [M] landmark indices used for the pose
    reproj_px: np.ndarray  # [T] RMS reprojection error of the rigid landmarks


def _axis_angle_to_R(v: np.ndarray) -> np.ndarray:
    """[F, 3] axis-angle -> [F, 3, 3] (Rodrigues, stable near zero)."""
    theta = np.linalg.norm(v, axis=-1)[:, None, None]
    k = v / np.maximum(theta[:, 0], 1e-12)
    K = np.zeros((len(v), 3, 3))
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    K = K - K.transpose(0, 2, 1)
    return np.eye(3) + np.sin(theta) * K + (1 - np.cos(theta)) * (K @ K)


def _R_to_axis_angle(R: np.ndarray) -> np.ndarray:
    """[F, 3, 3] -> [F, 3] axis-angle (angles below pi)."""
    cos = np.clip((np.trace(R, axis1=1, axis2=2) - 1) / 2, -1.0, 1.0)
    theta = np.arccos(cos)
    w = np.stack([R[:, 2, 1] - R[:, 1, 2], R[:, 0, 2] - R[:, 2, 0], R[:, 1, 0] - R[:, 0, 1]], -1)
    sin = np.sin(theta)
    scale = np.where(sin > 1e-8, theta / (2 * np.maximum(sin, 1e-8)), 0.5)
    return w * scale[:, None]


def _project(R: np.ndarray, t: np.ndarray, canon: np.ndarray, f: float, c: float):
    """Camera points and pixels of the canonical points: [F, M, 3], [F, M, 2]."""
    x = _rotate(R, canon) + t[:, None]
    return x, f * x[..., :2] / np.maximum(x[..., 2:], 1e-6) + c


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber cost per frame of residuals [F, K]."""
    a = np.abs(r)
    return np.where(a < delta, 0.5 * r * r, delta * (a - 0.5 * delta)).sum(-1)


def _solve_poses(R: np.ndarray, t: np.ndarray, canon: np.ndarray, uv: np.ndarray, f: float, c: float,
                 iters: int = 10, huber_px: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Levenberg-Marquardt on every frame's 6-DoF pose at once (frames are independent given f).

    Analytic Jacobian with a left rotation update R <- exp(d) R; a Huber loss enters as IRLS weights.

    Args:
        R: [F, 3, 3], t: [F, 3] initial poses; canon: [M, 3] rigid canonical points;
        uv: [F, M, 2] observed landmarks; f: focal; c: principal point (both axes).

    Returns:
        R [F, 3, 3], t [F, 3] and the Huber cost per frame [F].
    """
    R, t = R.copy(), t.copy()
    F, M = uv.shape[:2]
    lam = np.full(F, 1e-3)
    x, proj = _project(R, t, canon, f, c)
    r = (proj - uv).reshape(F, -1)
    current = _huber(r, huber_px)
    for _ in range(iters):
        p = x - t[:, None]
        iz = 1.0 / np.maximum(x[..., 2], 1e-6)
        A = np.zeros((F, M, 2, 3))  # d pixel / d camera point
        A[..., 0, 0] = A[..., 1, 1] = f * iz
        A[..., 0, 2] = -f * x[..., 0] * iz * iz
        A[..., 1, 2] = -f * x[..., 1] * iz * iz
        # d(exp(d) p)/dd = -[p]x, so each pixel row a of A gives a @ (-[p]x) = p x a.
        J = np.concatenate([np.cross(p[..., None, :], A), A], -1).reshape(F, 2 * M, 6)
        w = np.minimum(1.0, huber_px / np.maximum(np.abs(r), 1e-12))
        JtW = np.swapaxes(J, 1, 2) * w[:, None, :]
        H = JtW @ J
        g = (JtW @ r[..., None])[..., 0]
        H = H + lam[:, None, None] * (np.eye(6) * np.diagonal(H, axis1=1, axis2=2)[:, None, :] + 1e-9 * np.eye(6))
        d = -np.linalg.solve(H, g[..., None])[..., 0]
        R_try, t_try = _axis_angle_to_R(d[:, :3]) @ R, t + d[:, 3:]
        x_try, proj_try = _project(R_try, t_try, canon, f, c)
        r_try = (proj_try - uv).reshape(F, -1)
        new = _huber(r_try, huber_px)
        ok = new < current
        R[ok], t[ok], x[ok], r[ok], current[ok] = R_try[ok], t_try[ok], x_try[ok], r_try[ok], new[ok]
        lam = np.where(ok, lam * 0.3, lam * 10.0)
    return R, t, current


def _frontal(shape: np.ndarray) -> np.ndarray:
    """Turn a [N, 3] face frontal, centre it and scale it to head units (module doc)."""
    x = shape[LEFT_EYE_OUTER] - shape[RIGHT_EYE_OUTER]
    x = x / np.linalg.norm(x)
    y = shape[CHIN] - shape[FOREHEAD]
    y = y - (y @ x) * x
    y = y / np.linalg.norm(y)
    basis = np.stack([x, y, np.cross(x, y)])  # rows: head axes in the shape's frame
    canon = (shape - shape.mean(0)) @ basis.T
    return canon * (EYE_SPAN / np.linalg.norm(canon[LEFT_EYE_OUTER] - canon[RIGHT_EYE_OUTER]))


def _fit_poses(canon: np.ndarray, lm: np.ndarray, rigid: np.ndarray, c: float,
               focals: list[float], fit_focal: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """Best poses of a fixed canonical face over candidate focals, then (optionally) the focal.

    Returns:
        R [F, 3, 3], t [F, 3], focal.
    """
    s, R0, t_img = similarity_procrustes(canon[rigid], lm[:, rigid])
    canon_r, uv = canon[rigid], lm[:, rigid, :2]

    def solve(f, R=R0, t=None, iters=10):
        if t is None:
            z = f / s  # weak perspective: image scale s = f / depth
            t = np.stack([(t_img[:, 0] - c) * z / f, (t_img[:, 1] - c) * z / f, z], -1)
        R, t, per_frame = _solve_poses(R, t, canon_r, uv, f, c, iters=iters)
        return per_frame.sum(), R, t, f

    results = [solve(f) for f in focals]
    best = min(results, key=lambda r: r[0])
    if fit_focal:
        # Golden-section search in log focal between the best candidate's neighbours, poses warm-started.
        i = results.index(best)
        lo, hi = np.log(focals[max(i - 1, 0)]), np.log(focals[min(i + 1, len(focals) - 1)])
        g = (np.sqrt(5) - 1) / 2
        for _ in range(7):  # brackets the focal to about 5%: more than the landmarks can tell
            a, b = hi - g * (hi - lo), lo + g * (hi - lo)
            ra, rb = solve(np.exp(a), best[1], best[2], iters=4), solve(np.exp(b), best[1], best[2], iters=4)
            if ra[0] < rb[0]:
                hi = b
            else:
                lo = a
            best = min([best, ra, rb], key=lambda r: r[0])
    _, R, t, focal = best
    return R, t, float(focal)


def fit_head_pose(landmarks: np.ndarray, valid: np.ndarray, crop_size: int,
                  focal_grid: tuple[float, ...] = (0.8, 1.2, 1.8, 2.7, 4.0, 6.0, 9.0),
                  rounds: int = 1, max_shape_frames: int = 60) -> HeadPoseFit:
    """Fit per-frame (R, t), one focal and the canonical face to a person's landmarks.

    The canonical face starts as the weak-perspective Procrustes mean; each
    round fits poses and focal, then re-estimates the canonical face by
    lifting every frame's 2D landmarks to the depth the current model gives
    them and taking them back into head space (the median over frames), which
    removes the perspective bias of the first estimate.

    Args:
        landmarks: [T, 478, 3] face-mesh landmarks in crop pixels (z scaled like x).
        valid: [T] bool, frames with landmarks.
        crop_size: the crop side in pixels (principal point at its centre).
        focal_grid: focal candidates in multiples of ``crop_size``; the fitted
            focal stays within their span, beyond which depth and focal trade off freely.
        rounds: canonical-face re-estimation rounds.
        max_shape_frames: frames (evenly spread) used to fit the focal and the canonical face.

    Returns:
        HeadPoseFit; R, t, euler, reproj_px are NaN on invalid frames.
    """
    T = landmarks.shape[0]
    lm = landmarks[valid].astype(np.float64)
    rigid = rigid_landmarks(lm)
    canon = _frontal(generalized_procrustes(lm, rigid))
    c = crop_size / 2.0
    lo, hi = focal_grid[0] * crop_size, focal_grid[-1] * crop_size
    focals = [k * crop_size for k in focal_grid]
    # Focal and face shape are clip-wide: a spread of frames pins them, then every frame gets its pose.
    sub = lm[np.unique(np.linspace(0, len(lm) - 1, min(len(lm), max_shape_frames)).round().astype(int))]
    for _ in range(rounds):
        Rv, tv, focal = _fit_poses(canon, sub, rigid, c, focals, fit_focal=True)
        focal = float(np.clip(focal, lo, hi))
        depth = (_rotate(Rv, canon) + tv[:, None])[..., 2]
        x_cam = np.concatenate([(sub[..., :2] - c) / focal * depth[..., None], depth[..., None]], -1)
        lifted = _rotate(Rv.transpose(0, 2, 1), x_cam - tv[:, None])
        canon = _frontal(np.median(lifted, axis=0))
        focals = [focal]
    Rv, tv, _ = _fit_poses(canon, lm, rigid, c, [focal], fit_focal=False)
    x = _rotate(Rv, canon[rigid]) + tv[:, None]
    proj = focal * x[..., :2] / x[..., 2:] + c
    err = np.sqrt(((proj - lm[:, rigid, :2]) ** 2).sum(-1).mean(-1))
    R = np.full((T, 3, 3), np.nan)
    t = np.full((T, 3), np.nan)
    reproj = np.full(T, np.nan)
    R[valid], t[valid], reproj[valid] = Rv, tv, err
    return HeadPoseFit(R, t, euler_pyr(R), focal, canon, rigid, reproj)


def smooth_poses(R: np.ndarray, t: np.ndarray, valid: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian temporal smoothing of poses within each run of valid frames.

    Rotations are smoothed as axis-angle offsets from the run's mean rotation,
    which is accurate for the moderate head turns of a conversation.

    Args:
        R: [T, 3, 3]; t: [T, 3]; valid: [T] bool; sigma: in frames (0 = off).
    """
    from scipy.ndimage import gaussian_filter1d

    if sigma <= 0:
        return R, t
    R, t = R.copy(), t.copy()
    edges = np.flatnonzero(np.diff(np.r_[0, valid.astype(np.int8), 0]))
    for a, b in zip(edges[::2], edges[1::2]):
        U, _, Vt = np.linalg.svd(np.mean(R[a:b], 0))
        Rm = U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt  # nearest rotation to the mean
        rel = _R_to_axis_angle(Rm.T @ R[a:b])
        rel = gaussian_filter1d(rel, sigma, axis=0, mode="nearest")
        R[a:b] = Rm @ _axis_angle_to_R(rel)
        t[a:b] = gaussian_filter1d(t[a:b], sigma, axis=0, mode="nearest")
    return R, t
