import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import data
from skimage.metrics import structural_similarity

from common.landmarks import LIPS
from nerf import metrics
from nerf.metrics import av_offset, cpbd, lmd, mouth_lmd, pearson, psnr, ssim, summarize


def _blurred_camera(sigma: float) -> np.ndarray:
    cam = data.camera()
    if sigma == 0:
        return cam
    return np.clip(np.round(ndimage.gaussian_filter(cam.astype(np.float64), sigma)), 0, 255).astype(np.uint8)


def _astronaut_face() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut()[0:256, 120:376])


def test_psnr_identical_is_inf_and_known_mse_is_exact():
    rng = np.random.default_rng(0)
    img = rng.uniform(0.2, 0.8, (32, 40, 3))
    assert psnr(img, img) == math.inf
    # MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB
    assert psnr(img + 0.1, img) == pytest.approx(20.0, abs=1e-9)
    assert psnr(torch.from_numpy(img + 0.1).float(), torch.from_numpy(img).float()) == pytest.approx(20.0, abs=1e-4)


def test_psnr_mask_ignores_outside_pixels():
    target = np.full((20, 30, 3), 0.5)
    pred = target + 0.1
    mask = np.zeros((20, 30), bool)
    mask[5:15, 10:20] = True
    pred[~mask] = 1.0  # large error outside the mask
    assert psnr(pred, target, mask) == pytest.approx(20.0, abs=1e-9)
    assert psnr(pred, target) < 15.0
    with pytest.raises(ValueError, match="no pixels"):
        psnr(pred, target, np.zeros((20, 30), bool))


def test_region_psnr_splits_the_error_by_label_and_scores_the_plate():
    target = np.full((2, 8, 8, 3), 0.5)
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[:, 2:5] = 1
    labels[:, 5:] = 2
    pred = target.copy()
    pred[labels == 1] += 0.1  # head: MSE 0.01 -> 20 dB
    pred[labels == 2] += 0.01  # torso: 40 dB
    pred[0][labels[0] == 0] += 0.001  # background: half the frames 60 dB off -> MSE 5e-7
    plate = np.full((8, 8, 3), 0.5)
    plate[0, 0] = 0.6  # one of the 16 background pixels of a frame: MSE 1e-2 / 16
    r = metrics.region_psnr(pred, target, labels, plate)
    assert r["psnr_head"] == pytest.approx(20.0, abs=1e-9) and r["psnr_torso"] == pytest.approx(40.0, abs=1e-9)
    assert r["psnr_bg"] == pytest.approx(-10 * math.log10(5e-7), abs=1e-6)
    assert r["psnr_bg_plate"] == pytest.approx(-10 * math.log10(0.01 / 16), abs=1e-6)
    assert math.isnan(metrics.region_psnr(pred, target, np.zeros_like(labels), plate)["psnr_head"])


def test_psnr_rejects_uint8_and_shape_mismatch():
    with pytest.raises(ValueError, match="x / 255"):
        psnr(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="same shape"):
        psnr(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))


def test_ssim_identical_is_one_and_decreases_with_noise():
    img = data.astronaut()[100:228, 150:278] / 255.0
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-9)
    rng = np.random.default_rng(0)
    scores = [ssim(np.clip(img + rng.normal(0, s, img.shape), 0, 1), img) for s in (0.02, 0.05, 0.1, 0.2)]
    assert all(a > b for a, b in zip(scores, scores[1:])), scores


def test_ssim_matches_skimage_gaussian_ssim():
    rng = np.random.default_rng(1)
    img = data.astronaut()[100:228, 150:278] / 255.0
    noisy = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)
    ref = structural_similarity(noisy, img, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=1.0, channel_axis=2)
    assert ssim(noisy, img) == pytest.approx(ref, abs=1e-6)


def _edge_widths_by_walking(gray: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Pixel-by-pixel twin of metrics._edge_widths: walk each row away from each vertical edge."""
    gy, gx = np.gradient(gray)
    h, w = gray.shape
    widths = np.zeros((h, w))
    for r in range(1, h - 1):
        for c in range(1, w - 1):
            if not edges[r, c]:
                continue
            angle = 45 * round(math.degrees(math.atan2(gy[r, c], gx[r, c])) / 45) if gx[r, c] != 0 else 0
            if angle not in (0, 180, -180):
                continue
            sign = 1 if angle == 0 else -1  # the ramp rises (0) or falls (180) to the right
            left = 0
            while left < 100 and c - 2 - left >= 0 and sign * (gray[r, c - 1 - left] - gray[r, c - 2 - left]) > 0:
                left += 1
            right = 0
            while right < 100 and c + 2 + right < w and sign * (gray[r, c + 2 + right] - gray[r, c + 1 + right]) > 0:
                right += 1
            widths[r, c] = left + right + 2
    return widths


def test_edge_widths_match_pixel_walk():
    for sigma in (0, 2):
        gray = _blurred_camera(sigma)[200:328, 150:278].astype(np.float64)
        edges = metrics._sobel_edges(gray)
        widths = metrics._edge_widths(gray, edges)
        assert np.count_nonzero(widths) > 100
        np.testing.assert_array_equal(widths, _edge_widths_by_walking(gray, edges))


def test_cpbd_decreases_monotonically_with_blur():
    scores = [cpbd(_blurred_camera(s)) for s in (0, 1, 2, 4)]
    assert all(0.0 <= s <= 1.0 for s in scores), scores
    assert all(a > b for a, b in zip(scores, scores[1:])), scores
    assert 0.6 < scores[0] < 0.85  # 0.736 for camera(); sharp LIVE images score about 0.6-0.8


def test_cpbd_inputs_float_rgb_and_flat():
    cam = data.camera()
    assert cpbd(cam / 255.0) == cpbd(cam)
    assert cpbd(np.repeat(cam[..., None], 3, axis=2)) == pytest.approx(cpbd(cam), abs=1e-12)
    assert cpbd(np.full((128, 128), 100, np.uint8)) == 0.0
    with pytest.raises(ValueError, match="uint8"):
        cpbd(cam.astype(np.int32))


def test_lmd_skips_nan_frames():
    pred = np.zeros((4, 2, 2))
    real = np.zeros((4, 2, 2))
    real[0] = [[3, 4], [3, 4]]  # distances 5, 5
    real[1, 0] = np.nan  # skipped frame
    real[1, 1] = [100, 100]
    real[2, 1] = [6, 8]  # distances 0, 10
    pred[3, 1, 1] = np.nan  # skipped frame
    real[3] = 50.0
    assert lmd(pred, real) == pytest.approx(5.0)
    assert math.isnan(lmd(pred[1:2], real[1:2]))
    with pytest.raises(ValueError, match=r"\[N, K, 2\]"):
        lmd(pred, real[:2])


def test_mouth_indices_are_mediapipe_lips():
    mp = pytest.importorskip("mediapipe")
    lips = sorted({i for edge in mp.solutions.face_mesh.FACEMESH_LIPS for i in edge})
    assert list(LIPS) == lips and len(lips) == 40


def test_mouth_lmd_zero_on_itself_and_three_px_when_shifted():
    pytest.importorskip("mediapipe")
    face = _astronaut_face()
    blank = np.full_like(face, 128)
    same = mouth_lmd(np.stack([face, blank]), np.stack([face, face]))
    assert same.n_frames == 1 and same.n_skipped == 1
    assert same.px == pytest.approx(0.0, abs=0.05)
    shifted = mouth_lmd(np.roll(face, 3, axis=1)[None], face[None])
    assert shifted.px == pytest.approx(3.0, abs=0.5)  # 2.98 px measured
    none = mouth_lmd(blank[None], face[None])
    assert math.isnan(none.px) and none.n_frames == 0 and none.n_skipped == 1


def test_mouth_opening_on_frames_follows_the_planted_jaw():
    pytest.importorskip("mediapipe")
    from data_prep.synthetic import astronaut_sprite, open_mouth
    from speech.speaking import mouth_opening

    sprite = astronaut_sprite()
    cx, cy = sprite.center.astype(int)
    half = int(0.9 * sprite.face_h)
    amounts = np.linspace(0.0, 1.0, 6)
    frames = []
    for amount in amounts:
        rgba = sprite.rgba.copy()
        open_mouth(sprite.rgba, rgba, sprite, float(amount))
        rgb = rgba[..., :3] + (1 - rgba[..., 3:]) * 0.5  # premultiplied over grey
        frames.append((rgb[cy - half:cy + half, cx - half:cx + half] * 255).round().astype(np.uint8))
    opening = mouth_opening(metrics.face_mesh_landmarks(np.stack(frames)))
    assert np.isfinite(opening).all()
    assert pearson(opening, amounts) > 0.95, opening


def test_pearson_of_identical_signals_is_one_and_undefined_cases_are_nan():
    rng = np.random.default_rng(0)
    a = rng.normal(size=50)
    assert pearson(a, a) == pytest.approx(1.0, abs=1e-12)
    assert pearson(a, -2 * a + 3) == pytest.approx(-1.0, abs=1e-12)
    gappy = a.copy()
    gappy[::3] = np.nan  # missing samples drop out of both
    assert pearson(gappy, 5 * a) == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(pearson(np.ones(50), a))  # constant: undefined
    assert math.isnan(pearson(a[:2], a[:2]))  # too few pairs
    with pytest.raises(ValueError, match=r"\[N\]"):
        pearson(a, a[:10])


def _syllables(n: int, seed: int = 0) -> np.ndarray:
    """A speech-like envelope: smoothed random bursts, [n]."""
    rng = np.random.default_rng(seed)
    return np.convolve(rng.uniform(0, 1, n) ** 3, np.hanning(5), mode="same")


@pytest.mark.parametrize("lag", [-4, 0, 3, 7])
def test_av_offset_recovers_a_known_shift_exactly(lag):
    envelope = _syllables(300)
    opening = np.full(300, np.nan)
    t = np.arange(40, 260)
    opening[t] = 0.1 + 2.0 * envelope[t - lag]  # the mouth moves lag frames after the sound
    found = av_offset(envelope, opening)
    assert found.frames == lag and found.corr == pytest.approx(1.0, abs=1e-9)
    listening = opening.copy()
    listening[100:160] = np.nan  # frames not scored (the person listens) are left out
    assert av_offset(envelope, listening).frames == lag


def test_av_offset_searches_only_what_the_scored_frames_resolve():
    envelope = _syllables(300, seed=1)
    opening = np.full(300, np.nan)
    opening[100:112] = envelope[100 - 5:112 - 5]  # 12 frames resolve shifts up to 3
    assert abs(av_offset(envelope, opening).frames) <= 3
    assert math.isnan(av_offset(envelope, np.full(300, np.nan)).corr)


def test_summarize_averages_by_person_and_role():
    rows = [
        {"person": "ana", "role": "speaker", "psnr": 30.0, "lmd": 2.0},
        {"person": "ana", "role": "speaker", "psnr": 32.0, "lmd": float("nan")},
        {"person": "ben", "role": "listener", "psnr": 28.0, "lmd": 4.0},
    ]
    lines = summarize(rows).splitlines()
    assert lines[0].split() == ["person", "role", "psnr", "lmd", "n"]
    assert lines[1].split() == ["ana", "speaker", "31.0000", "2.0000", "2"]
    assert lines[2].split() == ["ben", "listener", "28.0000", "4.0000", "1"]
    assert lines[3].split() == ["all", "30.0000", "3.0000", "3"]
