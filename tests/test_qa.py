"""QA pictures: shapes and dtypes on small inputs, edge cases, and that overlays draw where they should."""

import numpy as np
import pytest

from data_prep import qa

FPS = 25.0
T = 60


def _is_picture(image: np.ndarray, min_h: int = 100, min_w: int = 100) -> bool:
    return (image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            and image.shape[0] >= min_h and image.shape[1] >= min_w and image.std() > 0)


def _names(n_persons):
    return [f"p{p}" for p in range(n_persons)]


# draw_landmarks


def _face(size=128):
    rng = np.random.default_rng(0)
    crop = np.full((size, size, 3), 100, np.uint8)
    parsing = np.zeros((size, size), np.uint8)
    parsing[10:60, 30:90] = 1
    parsing[100:, :] = 2
    landmarks = rng.uniform(35, 85, (qa.N_LANDMARKS, 2))
    return crop, landmarks, parsing


def test_draw_landmarks_tints_head_and_marks_landmarks():
    crop, landmarks, parsing = _face()
    landmarks[0] = (20.0, 80.0)  # background, away from head, torso and the other points
    before = crop.copy()
    out = qa.draw_landmarks(crop, landmarks, parsing)
    assert out.shape == crop.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(crop, before)  # input untouched
    assert (out[12, 32] != crop[12, 32]).any()  # head pixel, corner of the head box: no landmark
    assert (out[110, 5] != crop[110, 5]).any()  # torso pixel
    assert (out[12, 32] != out[110, 5]).any()  # head and torso tinted differently
    np.testing.assert_array_equal(out[80, 5], crop[80, 5])  # plain background stays
    assert (out[80, 20] != crop[80, 20]).any()  # the landmark dot


def test_draw_landmarks_without_face_or_parsing():
    crop, _, parsing = _face()
    no_face = qa.draw_landmarks(crop, None, parsing)
    assert no_face.shape == crop.shape and no_face.dtype == np.uint8
    assert (no_face != qa.draw_landmarks(crop, None, None)).any()  # the overlay shows
    assert (qa.draw_landmarks(crop, None, None) != crop).any()  # "NO FACE" is written


def test_draw_landmarks_skips_non_finite_points_and_accepts_xyz():
    crop, landmarks, _ = _face()
    landmarks = np.concatenate([landmarks, np.zeros((qa.N_LANDMARKS, 1))], axis=1)
    landmarks[qa.LIPS_INNER[0]] = np.nan
    out = qa.draw_landmarks(crop, landmarks, None)
    assert out.shape == crop.shape


def test_draw_landmarks_rejects_bad_shapes():
    crop, landmarks, parsing = _face()
    with pytest.raises(ValueError, match="landmarks"):
        qa.draw_landmarks(crop, landmarks[:468], parsing)
    with pytest.raises(ValueError, match="parsing"):
        qa.draw_landmarks(crop, landmarks, parsing[:64])


# contact_sheet


@pytest.mark.parametrize("n_tiles, columns, rows, n_columns", [(7, 3, 3, 3), (6, 6, 1, 6), (2, 6, 1, 2)])
def test_contact_sheet_grid(n_tiles, columns, rows, n_columns):
    tile_size = 40
    tiles = [np.full((64, 64, 3), 10 * i, np.uint8) for i in range(n_tiles)]
    sheet = qa.contact_sheet(tiles, [f"p0 f{i}" for i in range(n_tiles)], columns=columns,
                             tile_size=tile_size)
    cell_h = tile_size + qa.caption_height(tile_size)
    assert sheet.dtype == np.uint8 and sheet.shape == (rows * cell_h, n_columns * tile_size, 3)
    last = n_tiles - 1
    y, x = (last // n_columns) * cell_h + tile_size // 2, (last % n_columns) * tile_size + tile_size // 2
    np.testing.assert_array_equal(sheet[y, x], tiles[last][0, 0])


def test_contact_sheet_letterboxes_and_takes_gray():
    sheet = qa.contact_sheet([np.full((30, 90, 3), 200, np.uint8), np.zeros((50, 50), np.uint8)],
                             ["wide", "gray"], tile_size=60)
    assert sheet.shape == (60 + qa.caption_height(60), 120, 3)
    assert sheet[5, 30].max() == 0 and sheet[30, 30].min() == 200  # bars above, image in the middle


def test_contact_sheet_rejects_mismatch():
    with pytest.raises(ValueError, match="captions"):
        qa.contact_sheet([np.zeros((8, 8, 3), np.uint8)], ["a", "b"])
    with pytest.raises(ValueError, match="at least one"):
        qa.contact_sheet([], [])


# plots


@pytest.mark.parametrize("n_persons", [1, 3])
@pytest.mark.parametrize("all_invalid", [False, True])
def test_pose_curves(n_persons, all_invalid):
    rng = np.random.default_rng(n_persons)
    euler = rng.uniform(-0.3, 0.3, (T, n_persons, 3))
    trans = rng.normal(0, 0.05, (T, n_persons, 3)) + [0, 0, 1]
    valid = np.zeros((T, n_persons), bool) if all_invalid else rng.random((T, n_persons)) > 0.2
    image = qa.pose_curves(euler, trans, valid, FPS, _names(n_persons))
    assert _is_picture(image, min_h=150 * n_persons, min_w=1200)


def test_pose_curves_rows_grow_with_persons():
    heights = [qa.pose_curves(np.zeros((T, p, 3)), np.zeros((T, p, 3)), np.ones((T, p), bool),
                              FPS, _names(p)).shape[0] for p in (1, 2, 3)]
    assert heights[0] < heights[1] < heights[2]
    assert heights[2] - heights[1] == heights[1] - heights[0]


def test_torso_motion_parts_and_curves():
    a = np.radians(5.0)
    turn = [1.1 * np.cos(a), -1.1 * np.sin(a), 0.0, 1.1 * np.sin(a), 1.1 * np.cos(a), 0.0]
    shift = [1.0, 0.0, 0.1, 0.0, 1.0, -0.05]
    m = np.array([[1.0, 0, 0, 0, 1.0, 0], shift, turn, [np.nan] * 6])
    moved, rotation, scale = qa.torso_motion_parts(m, 128)
    np.testing.assert_allclose(moved[:3], [[0, 0], [12.8, -6.4], [0.5 * 128 * (1.1 * (np.cos(a) - np.sin(a)) - 1),
                                                                  0.5 * 128 * (1.1 * (np.sin(a) + np.cos(a)) - 1)]])
    np.testing.assert_allclose(rotation[:3], [0, 0, 5.0])
    np.testing.assert_allclose(scale[:3], [0, 0, 10.0])
    assert np.isnan(moved[3]).all() and np.isnan(rotation[3]) and np.isnan(scale[3])
    rng = np.random.default_rng(0)
    walk = np.tile([1.0, 0, 0, 0, 1.0, 0], (T, 1)) + np.cumsum(rng.normal(0, 1e-3, (T, 6)), 0)
    walk[10:14] = np.nan
    held = np.zeros(T, bool)
    held[-6:] = True
    image = qa.torso_motion_curves([walk, np.full((T // 2, 6), np.nan), None], 128, _names(3), [held, held[:T // 2],
                                                                                           held])
    assert _is_picture(image, min_h=450, min_w=1200)
    assert qa.torso_motion_curves([walk], 128, _names(1)).shape[0] < image.shape[0]
    with pytest.raises(ValueError):
        qa.torso_motion_curves([walk], 128, _names(2))


@pytest.mark.parametrize("n_persons", [1, 3])
@pytest.mark.parametrize("silent", [False, True])
def test_speaking_timeline(n_persons, silent):
    rng = np.random.default_rng(n_persons)
    sr = 16000
    audio = rng.normal(0, 0.1, int(T / FPS * sr) - 500)  # slightly shorter than the video
    speaking = np.zeros((T, n_persons), bool)
    if not silent:
        speaking[10:30, 0] = True
        speaking[40:50, -1] = True
    image = qa.speaking_timeline(audio, sr, speaking, speaking.any(axis=1), FPS, _names(n_persons))
    assert _is_picture(image, min_h=300, min_w=1200)


def test_speaking_timeline_without_audio():
    speaking = np.ones((T, 2), bool)
    image = qa.speaking_timeline(np.zeros(0), 16000, speaking, speaking[:, 0], FPS, ["left", "right"])
    assert _is_picture(image, min_h=300, min_w=1200)


@pytest.mark.parametrize("k_used", [1, 7, 20])
def test_expression_spectrum(k_used):
    ratio = np.sort(np.random.default_rng(0).exponential(size=20))[::-1]
    image = qa.expression_spectrum(ratio / ratio.sum(), k_used)
    assert _is_picture(image, min_h=300, min_w=1000)


def test_expression_spectrum_rejects_bad_k():
    with pytest.raises(ValueError, match="k_used"):
        qa.expression_spectrum(np.full(5, 0.2), 6)


@pytest.mark.parametrize("n_persons", [1, 3])
@pytest.mark.parametrize("no_face", [False, True])
def test_mouth_and_speaking(n_persons, no_face):
    rng = np.random.default_rng(n_persons)
    mouth = np.full((T, n_persons), np.nan) if no_face else rng.random((T, n_persons))
    speaking = rng.random((T, n_persons)) > 0.5
    image = qa.mouth_and_speaking(mouth, speaking, FPS, _names(n_persons))
    assert _is_picture(image, min_h=100 * n_persons, min_w=1200)


def test_plots_reject_mismatched_names():
    with pytest.raises(ValueError, match="names"):
        qa.mouth_and_speaking(np.zeros((T, 2)), np.zeros((T, 2), bool), FPS, ["only one"])
