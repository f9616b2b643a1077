"""Evaluation metrics of rendered talking-head frames against real ones (the paper's table).

- ``psnr`` and ``ssim``: fidelity of an [H, W, 3] frame in [0, 1] to the real frame.
- ``cpbd``: no-reference sharpness (Narvekar & Karam 2011), reimplemented to match the
  public ``cpbd`` package (its old scipy/imread deps cannot be installed here).
- ``lmd`` and ``mouth_lmd``: landmark distance in frame pixels, the latter on mediapipe's
  face-mesh lip landmarks found in both frames.
- lip sync without SyncNet (nothing can be fetched): ``pearson`` of the rendered and the real
  mouth opening (``face_mesh_landmarks`` + prepare's ``mouth_opening``), and ``av_offset``,
  the shift in frames that best lines the audio envelope up with the rendered mouth (0: in sync).
- ``summarize``: a plain-text table of per-clip rows, averaged by person and role.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import kornia
import numpy as np
import torch
from scipy import ndimage
from skimage.feature import canny

from common.landmarks import LIPS

SSIM_WINDOW = 11  # Gaussian window of sigma 1.5 (Wang et al. 2004)

# CPBD constants, as in Narvekar & Karam (2011) and the public cpbd package.
CPBD_BLOCK = 64  # block side in pixels; partial blocks at the right and bottom are ignored
CPBD_EDGE_BLOCK_SHARE = 0.002  # a block with more Canny edge pixels than this share is an edge block
CPBD_BETA = 3.6  # slope of the psychometric blur-detection curve
CPBD_CONTRAST_LOW = 50  # block contrast (max - min, 0-255) up to which the JNB width is 5, else 3
CPBD_JNB_LOW_CONTRAST, CPBD_JNB_HIGH_CONTRAST = 5.0, 3.0
CPBD_P_JNB = 0.63  # CPBD is the share of edges whose blur-detection probability is at most this
CPBD_MAX_WALK = 100  # longest walk, per side, from an edge pixel to the end of its intensity ramp


def _as_float_image(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """[H, W] or [H, W, C] float image in [0, 1] as float64 numpy; rejects integer frames."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim not in (2, 3):
        raise ValueError(f"{name} must be [H, W] or [H, W, C], got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} has dtype {a.dtype}; pass float images in [0, 1] (uint8 frames: x / 255)")
    a = a.astype(np.float64)
    if a.size and (a.min() < -1e-6 or a.max() > 1 + 1e-6):
        raise ValueError(f"{name} has values in [{a.min():.4g}, {a.max():.4g}]; expected [0, 1]")
    return a


def _check_pair(pred: np.ndarray, target: np.ndarray) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} must have the same shape")


def psnr(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor,
         mask: np.ndarray | torch.Tensor | None = None) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (peak 1).

    Args:
        pred: [H, W, 3] (or [H, W]) rendered image, float in [0, 1], numpy or torch.
        target: same shape as ``pred``, the real image.
        mask: optional [H, W] bool; only pixels where it is True count.

    Returns:
        ``10 * log10(1 / MSE)`` with the MSE over the counted pixels and all channels;
        ``inf`` when they are identical.
    """
    p, t = _as_float_image(pred, "pred"), _as_float_image(target, "target")
    _check_pair(p, t)
    sq = (p - t) ** 2
    if mask is not None:
        m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        if m.shape != p.shape[:2]:
            raise ValueError(f"mask must be [H, W] = {p.shape[:2]}, got {m.shape}")
        m = m.astype(bool)
        if not m.any():
            raise ValueError("mask selects no pixels; PSNR is undefined")
        sq = sq[m]
    mse = float(sq.mean())
    return float("inf") if mse == 0 else float(-10.0 * np.log10(mse))


def region_psnr(pred: np.ndarray, target: np.ndarray, labels: np.ndarray, plate: np.ndarray) -> dict[str, float]:
    """PSNR of each region of the person crops, and the background plate's own, pooled over frames.

    Where the error of a whole-crop PSNR lies: the head, the torso, the background; and what the plate
    alone scores on the background pixels (a ceiling there: an avatar that draws nothing over the
    background shows the plate, so only a moving camera, changing light or labels off by a few pixels keep
    ``psnr_bg`` from ``psnr_bg_plate``).

    Args:
        pred, target: [N, H, W, 3] in [0, 1]; labels [N, H, W] (0 background, 1 head, 2 torso);
        plate [H, W, 3], the crop's background plate.

    Returns:
        psnr_head, psnr_torso, psnr_bg, psnr_bg_plate (dB; NaN for a region with no pixel, inf where exact), each from the
        mean squared error over all the region's pixels of all frames.
    """
    n, h, w = labels.shape
    stack = lambda a: np.broadcast_to(a, (n, h, w, 3)).reshape(n * h, w, 3)  # noqa: E731  (frames stacked as rows)
    pred, target, plate = stack(pred), stack(target), stack(plate)
    of = lambda a, lab: psnr(a, target, (labels == lab).reshape(n * h, w)) if (labels == lab).any() \
        else float("nan")  # noqa: E731
    return {"psnr_head": of(pred, 1), "psnr_torso": of(pred, 2), "psnr_bg": of(pred, 0), "psnr_bg_plate": of(plate, 0)}


def ssim(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> float:
    """Mean structural similarity (Wang et al. 2004) for images in [0, 1].

    An 11x11 Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03, per channel, averaged over
    the 'valid' map (borders of 5 pixels dropped): kornia.metrics.ssim with padding='valid',
    and eps=0 (c1 * c2 > 0 already keeps the division safe), which equals skimage's
    structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1).

    Args:
        pred: [H, W, 3] (or [H, W]) rendered image, float in [0, 1], numpy or torch; H, W >= 11.
        target: same shape as ``pred``, the real image.

    Returns:
        SSIM in [-1, 1]; 1 for identical images.
    """
    p, t = _as_float_image(pred, "pred"), _as_float_image(target, "target")
    _check_pair(p, t)
    if min(p.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"images of {p.shape[:2]} are smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} SSIM window")
    to_bchw = lambda a: torch.from_numpy(a.reshape(*a.shape[:2], -1)).permute(2, 0, 1)[None]
    ssim_map = kornia.metrics.ssim(to_bchw(p), to_bchw(t), SSIM_WINDOW, max_val=1.0, eps=0.0, padding="valid")
    return float(ssim_map.mean())


def _cpbd_gray(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """[H, W] float64 gray levels 0-255 from uint8 or [0, 1] float, gray or RGB."""
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ValueError(f"image must be [H, W] gray or [H, W, 3] RGB, got shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating):
        # Quantised as when the frame is saved, so rendered and real frames are treated alike.
        a = np.round(np.clip(_as_float_image(a, "image"), 0.0, 1.0) * 255.0).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ValueError(f"image has dtype {a.dtype}; pass uint8 (0-255) or float in [0, 1]")
    if a.ndim == 3:
        a = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)  # BT.601, like PIL's mode 'L'
    return a.astype(np.float64)


def _sobel_edges(gray: np.ndarray) -> np.ndarray:
    """[H, W] bool thinned Sobel edges: magnitude above its mean and a local max along x or y."""
    mag = np.hypot(ndimage.sobel(gray, 0), ndimage.sobel(gray, 1))
    mag[mag <= mag.mean()] = 0.0
    pad = np.pad(mag, 1)
    along_x = (mag > pad[1:-1, :-2]) & (mag > pad[1:-1, 2:])
    along_y = (mag > pad[:-2, 1:-1]) & (mag > pad[2:, 1:-1])
    return along_x | along_y


def _runs_left(step: np.ndarray) -> np.ndarray:
    """[H, W] int: how many consecutive True in ``step`` end at each column, counting leftwards."""
    runs = np.zeros(step.shape, np.int64)
    runs[:, 0] = step[:, 0]
    for c in range(1, step.shape[1]):
        runs[:, c] = step[:, c] * (runs[:, c - 1] + 1)
    return runs


def _edge_widths(gray: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """[H, W] edge widths (Marziliano et al. 2002) at vertical edges, 0 elsewhere.

    Only edge pixels whose gradient points along +x or -x (quantised to 45 degrees) are
    measured, as in the reference: the width walks left and right along the row to the ends
    of the monotone intensity ramp. As in the reference, a pixel with a zero x-gradient gets
    angle 0, and the walks start one pixel either side of the edge.
    """
    gy, gx = np.gradient(gray)
    angle = np.where(gx != 0, np.degrees(np.arctan2(gy, gx)), 0.0)
    quantised = 45.0 * np.round(angle / 45.0)
    # step_dec[r, c]: gray falls from column c to c + 1; step_inc: it rises.
    nxt = gray[:, 1:] - gray[:, :-1]
    zero_col = np.zeros((gray.shape[0], 1), bool)
    step_dec = np.concatenate([nxt < 0, zero_col], axis=1)
    step_inc = np.concatenate([nxt > 0, zero_col], axis=1)
    # Leftward walk from column i goes on while gray[i - 1] vs gray[i] keeps the ramp's sense.
    left_falls = _runs_left(np.concatenate([zero_col, step_inc[:, :-1]], axis=1))  # gray[i-1] < gray[i]
    left_rises = _runs_left(np.concatenate([zero_col, step_dec[:, :-1]], axis=1))  # gray[i-1] > gray[i]
    right_rises = _runs_left(step_inc[:, ::-1])[:, ::-1]
    right_falls = _runs_left(step_dec[:, ::-1])[:, ::-1]

    h, w = gray.shape
    widths = np.zeros((h, w))
    interior = np.zeros((h, w), bool)
    interior[1:-1, 1:-1] = True
    cap = lambda n: np.minimum(n, CPBD_MAX_WALK) + 1
    for rising, sel in ((True, quantised == 0), (False, np.abs(quantised) == 180)):
        rows, cols = np.nonzero(edges & interior & sel)
        left = (left_falls if rising else left_rises)[rows, cols - 1]
        right = (right_rises if rising else right_falls)[rows, cols + 1]
        widths[rows, cols] = cap(left) + cap(right)
    return widths


def cpbd(image: np.ndarray | torch.Tensor) -> float:
    """Cumulative probability of blur detection (Narvekar & Karam 2011), a no-reference sharpness.

    Follows the public ``cpbd`` package (a port of the authors' MATLAB code): Canny edges
    (skimage defaults on 0-255 gray levels) pick the edge blocks, 64x64 blocks with more than
    0.2% edge pixels; thinned Sobel edges give the pixels whose widths are measured, along x at
    vertical edges. Each block's contrast sets the just-noticeable blur width w_JNB (5 if
    max - min <= 50 else 3), each edge of width w is detected as blurred with probability
    ``P = 1 - exp(-(w / w_JNB) ** 3.6)``, and CPBD is the share of edges with P <= 63%
    (P rounded to whole percent, as the reference's histogram does).

    Args:
        image: [H, W] gray or [H, W, 3] RGB, uint8 0-255 or float in [0, 1] (quantised to
            uint8 first); numpy or torch.

    Returns:
        CPBD in [0, 1], higher is sharper; 0 when no edge is found (as the reference).
    """
    gray = _cpbd_gray(image)
    widths = _edge_widths(gray, _sobel_edges(gray))
    canny_edges = canny(gray)
    n_edges, n_sharp = 0, 0
    for r in range(0, gray.shape[0] - CPBD_BLOCK + 1, CPBD_BLOCK):
        for c in range(0, gray.shape[1] - CPBD_BLOCK + 1, CPBD_BLOCK):
            block = (slice(r, r + CPBD_BLOCK), slice(c, c + CPBD_BLOCK))
            if np.count_nonzero(canny_edges[block]) <= CPBD_EDGE_BLOCK_SHARE * CPBD_BLOCK ** 2:
                continue
            contrast = gray[block].max() - gray[block].min()
            jnb = CPBD_JNB_LOW_CONTRAST if contrast <= CPBD_CONTRAST_LOW else CPBD_JNB_HIGH_CONTRAST
            w = widths[block][widths[block] > 0]
            p_blur = 1.0 - np.exp(-np.abs(w / jnb) ** CPBD_BETA)
            n_edges += w.size
            n_sharp += int(np.count_nonzero(np.round(p_blur * 100) <= round(CPBD_P_JNB * 100)))
    return n_sharp / n_edges if n_edges else 0.0


def lmd(pred_landmarks: np.ndarray, real_landmarks: np.ndarray) -> float:
    """Landmark distance: the mean Euclidean distance between matching landmarks.

    Args:
        pred_landmarks: [N, K, 2] landmarks on the rendered frames (pixels); a frame with
            any NaN is skipped.
        real_landmarks: [N, K, 2] the same landmarks on the real frames.

    Returns:
        The mean over the frames valid in both and their K points, in the input's units;
        NaN when no frame is valid.
    """
    p, r = np.asarray(pred_landmarks, np.float64), np.asarray(real_landmarks, np.float64)
    if p.shape != r.shape or p.ndim != 3 or p.shape[2] != 2:
        raise ValueError(f"landmarks must both be [N, K, 2], got {p.shape} and {r.shape}")
    valid = ~(np.isnan(p).any(axis=(1, 2)) | np.isnan(r).any(axis=(1, 2)))
    if not valid.any():
        return float("nan")
    return float(np.linalg.norm(p[valid] - r[valid], axis=-1).mean())


class MouthLMD(NamedTuple):
    """Result of ``mouth_lmd``."""

    px: float
    """Mean lip-landmark distance in frame pixels; NaN when no frame pair had faces."""
    n_frames: int
    """Frame pairs with a face found in both and compared."""
    n_skipped: int
    """Frame pairs skipped because either frame had no face."""


def face_mesh_landmarks(frames: np.ndarray) -> np.ndarray:
    """The 478 face-mesh landmarks of mediapipe on each frame, in frame pixels.

    Each frame is processed independently (static_image_mode=True, refine_landmarks=True,
    one face), so rendered and real frames are treated alike.

    Args:
        frames: [N, H, W, 3] uint8 RGB frames (or a list of [H, W, 3]).

    Returns:
        [N, 478, 3] x * W, y * H, z * W (z scaled like x, as prepare's track.npz); NaN where no face was found.
    """
    import mediapipe as mp

    out = np.full((len(frames), 478, 3), np.nan)
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as mesh:
        for i, frame in enumerate(frames):
            frame = np.asarray(frame)
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                raise ValueError(f"frame {i} must be [H, W, 3] uint8 RGB, got {frame.shape} {frame.dtype}")
            res = mesh.process(np.ascontiguousarray(frame))
            if not res.multi_face_landmarks:
                continue
            h, w = frame.shape[:2]
            out[i] = [(p.x * w, p.y * h, p.z * w) for p in res.multi_face_landmarks[0].landmark]
    return out


def mouth_landmarks(frames: np.ndarray) -> np.ndarray:
    """Lip landmarks of mediapipe's face mesh on each frame, in frame pixels.

    Args:
        frames: [N, H, W, 3] uint8 RGB frames (or a list of [H, W, 3]).

    Returns:
        [N, len(LIPS), 2] x, y in pixels (x * W, y * H); NaN rows where no face was found.
    """
    return face_mesh_landmarks(frames)[:, list(LIPS), :2]


def mouth_lmd(pred_frames: np.ndarray, real_frames: np.ndarray) -> MouthLMD:
    """Mouth landmark distance between rendered and real frames, in pixels of the frame.

    No normalisation (by face size or inter-ocular distance) is applied, so compare values
    only at one resolution.

    Args:
        pred_frames: [N, H, W, 3] uint8 RGB rendered frames.
        real_frames: [N, H, W, 3] uint8 RGB real frames, same N and size.

    Returns:
        MouthLMD(px, n_frames, n_skipped): ``lmd`` over LIPS on the frames where both
        have a face.
    """
    if len(pred_frames) != len(real_frames):
        raise ValueError(f"{len(pred_frames)} rendered frames vs {len(real_frames)} real frames")
    pred_lm, real_lm = mouth_landmarks(pred_frames), mouth_landmarks(real_frames)
    both = ~(np.isnan(pred_lm).any(axis=(1, 2)) | np.isnan(real_lm).any(axis=(1, 2)))
    n = int(both.sum())
    return MouthLMD(lmd(pred_lm, real_lm), n, len(both) - n)


def pearson(a: np.ndarray, b: np.ndarray, min_pairs: int = 3) -> float:
    """Pearson correlation of two signals over the samples where both are finite.

    Args:
        a, b: [N] signals (NaN marks a missing sample).
        min_pairs: fewer finite pairs than this give NaN.

    Returns:
        The correlation in [-1, 1]; NaN with too few pairs or when either signal is constant there.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"signals must both be [N], got {a.shape} and {b.shape}")
    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() < min_pairs:
        return float("nan")
    x, y = a[both] - a[both].mean(), b[both] - b[both].mean()
    norm = np.sqrt((x * x).sum() * (y * y).sum())
    # Below this a signal is constant up to rounding: its correlation is undefined.
    return float((x * y).sum() / norm) if norm > 1e-12 else float("nan")


class AVOffset(NamedTuple):
    """Result of ``av_offset``."""

    frames: int
    """The best shift: positive when the mouth moves that many frames after the sound; 0 is in sync."""
    corr: float
    """The envelope-mouth correlation at that shift; NaN (and frames 0) when no shift could be scored."""


def av_offset(envelope: np.ndarray, opening: np.ndarray, max_shift: int = 10) -> AVOffset:
    """The audio-visual offset: the shift that best lines the audio envelope up with the mouth opening.

    For every shift s in [-reach, reach], the Pearson correlation of opening[t] with
    envelope[t - s] over the frames t where the opening is given (and t - s lies in the clip):
    the same mouth frames at every shift, only the audio moves, as SyncNet's offset search
    does. A shift that loses more than a quarter of them at the clip's ends does not count.
    Speech is loud while the mouth is open, so a mouth that follows the audio correlates best
    at s = 0; ties go to the smaller shift. Syllables come every 5-7 frames, so N scored frames
    resolve shifts up to about N / 4 only (beyond, the next syllable lines up as well as the
    right one): reach = min(max_shift, N // 4).

    Args:
        envelope: [T] audio envelope per video frame, the whole clip (e.g. ``audio_features.npz: rms``).
        opening: [T] mouth opening per frame on the same clock; NaN where unknown or not to be
            scored (frames not rendered, or where the person does not speak).
        max_shift: largest shift tried, frames.

    Returns:
        AVOffset(frames, corr).
    """
    env, mouth = np.asarray(envelope, np.float64), np.asarray(opening, np.float64)
    if env.shape != mouth.shape or env.ndim != 1:
        raise ValueError(f"envelope and opening must both be [T], got {env.shape} and {mouth.shape}")
    t = np.flatnonzero(np.isfinite(mouth))
    need = max(3, int(np.ceil(0.75 * len(t))))
    reach = min(max_shift, len(t) // 4)
    best = AVOffset(0, float("nan"))
    for s in sorted(range(-reach, reach + 1), key=abs):
        inside = t[(t - s >= 0) & (t - s < len(env))]
        corr = pearson(env[inside - s], mouth[inside], min_pairs=need)
        if np.isfinite(corr) and (np.isnan(best.corr) or corr > best.corr):
            best = AVOffset(s, corr)
    return best


def summarize(rows: list[dict]) -> str:
    """A plain-text table of metric rows averaged by person and role.

    Args:
        rows: dicts with 'person' and 'role' keys and numeric metric values (e.g. 'psnr',
            'ssim', 'cpbd', 'lmd'); NaN and missing values are left out of the means.

    Returns:
        One line per (person, role) in first-seen order, plus an 'all' line; columns are the
        metrics in first-seen order and the row count 'n'.
    """
    metrics = list(dict.fromkeys(k for row in rows for k in row if k not in ("person", "role")))
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((str(row.get("person", "?")), str(row.get("role", "?"))), []).append(row)
    groups[("all", "")] = list(rows)

    def mean(group: list[dict], key: str) -> str:
        vals = np.array([float(r[key]) for r in group if key in r], np.float64)
        vals = vals[~np.isnan(vals)]
        return f"{vals.mean():.4f}" if vals.size else "-"

    table = [["person", "role", *metrics, "n"]]
    table += [[p, role, *(mean(g, k) for k in metrics), str(len(g))] for (p, role), g in groups.items()]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.rjust(wd) if i >= 2 else cell.ljust(wd) for i, (cell, wd) in
                               enumerate(zip(line, widths))).rstrip() for line in table)
