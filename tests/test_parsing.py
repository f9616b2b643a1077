"""Parsing labels and background plates on constructed images with known answers."""

import numpy as np

from data_prep.parsing import BACKGROUND, HEAD, TORSO, head_ellipse, median_plate, parse_labels
from data_prep.person_track import fill_short_gaps


def test_median_plate_recovers_background_and_flags_never_seen_pixels():
    rng = np.random.default_rng(0)
    bg = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    frames, masks = [], []
    for i in range(9):
        f = bg.copy()
        person = np.zeros((40, 60), bool)
        person[10:30, 5 + 4 * i:20 + 4 * i] = True  # a block walking right
        person[0:5, 0:5] = True  # a corner nobody ever leaves
        f[person] = 255 - f[person]
        f = np.clip(f.astype(int) + rng.integers(-3, 4, f.shape), 0, 255).astype(np.uint8)
        frames.append(f)
        masks.append(~person)
    plate, hole = median_plate(np.stack(frames), np.stack(masks), margin=1)
    assert hole[0:4, 0:4].all() and hole.sum() < 60
    seen = ~hole
    assert np.abs(plate[seen].astype(int) - bg[seen].astype(int)).max() <= 3


def _face_landmarks(cx, cy, w, h):
    """478 points on an ellipse-filled face; forehead (10) on top, chin (152) at the bottom, outer eye corners
    (33, 263) at a third of the height, the nose tip (1) in the middle."""
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 2 * np.pi, 478)
    r = np.sqrt(rng.uniform(0, 1, 478))
    lm = np.stack([cx + w / 2 * r * np.cos(a), cy + h / 2 * r * np.sin(a)], -1)
    lm[10], lm[152] = [cx, cy - h / 2], [cx, cy + h / 2]
    lm[33], lm[263] = [cx - 0.4 * w, cy - h / 6], [cx + 0.4 * w, cy - h / 6]
    lm[1] = [cx, cy]
    return lm


def _turned_face(yaw_deg, span=40.0, centre=(64.0, 60.0)):
    """[478, 3] face-mesh-like points of a head turned by ``yaw`` (positive: the nose to the image's left),
    depth z growing away from the camera, in crop pixels."""
    rng = np.random.default_rng(2)
    pts = rng.uniform([-0.5, -0.9, -0.4], [0.5, 1.3, 0.0], (478, 3)) * span  # a face's front, y down
    pts[33], pts[263] = [-0.5 * span, 0, 0], [0.5 * span, 0, 0]  # outer eye corners
    pts[10], pts[152] = [0, -0.9 * span, -0.1 * span], [0, 1.3 * span, -0.1 * span]  # forehead, chin
    pts[1] = [0, 0.5 * span, -0.45 * span]  # nose tip, towards the camera
    pts[234], pts[454] = [-0.65 * span, 0.4 * span, 0.1 * span], [0.65 * span, 0.4 * span, 0.1 * span]  # cheeks
    a = np.radians(yaw_deg)
    R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    return pts @ R.T + [*centre, 0.0]


def test_labels_split_head_above_the_chin_and_torso_below():
    s = 128
    prob = np.zeros((s, s), np.float32)
    prob[20:, 30:98] = 1.0  # the person: hair from row 20, shoulders to the bottom
    prob[90:, 5:123] = 1.0
    lm = _face_landmarks(64, 55, 40, 50)
    labels = parse_labels(prob, lm, np.ones(s, bool))
    assert labels[55, 64] == HEAD and labels[22, 64] == HEAD  # face and hair above it
    assert labels[110, 64] == TORSO and labels[100, 10] == TORSO  # below the chin
    assert labels[5, 5] == BACKGROUND and labels[50, 110] == BACKGROUND
    # A neighbour's columns are never this person's.
    own = np.ones(s, bool)
    own[100:] = False
    assert (parse_labels(prob, lm, own)[:, 100:] == BACKGROUND).all()
    assert (parse_labels(prob, None, np.ones(s, bool)) != HEAD).all()


def test_head_outline_turns_with_the_head_and_keeps_the_back_of_a_profile():
    frontal_c, frontal_A = head_ellipse(_turned_face(0))
    assert abs(frontal_c[0] - 64) < 1e-6 and abs(frontal_A[0, 1]) < 1e-9  # centred, upright
    for yaw, back in ((70, +1), (-70, -1)):  # the nose points left: the back of the head lies to the right
        lm = _turned_face(yaw)
        c, A = head_ellipse(lm)
        assert back * (c[0] - 64) > 0.3 * 40
        s = 160
        prob = np.zeros((s, s), np.float32)
        prob[10:, 20:140] = 1.0  # the person (hair at the back of the head included)
        labels = parse_labels(prob, lm, np.ones(s, bool))
        hull_edge = lm[:, 0].max() if back > 0 else lm[:, 0].min()
        x_back = int(hull_edge + back * 0.6 * 40)  # the back of the head, beyond the face mesh's hull
        assert labels[50, x_back] == HEAD
        assert labels[150, x_back] == TORSO  # under the chin line: the shoulders
    # The old band around the face hull gave that hair to the torso; a frontal face keeps its width.
    labels = parse_labels(np.ones((160, 160), np.float32), _turned_face(0), np.ones(160, bool))
    assert labels[40, 64 + 40] == HEAD and labels[40, 64 + 70] == TORSO


def test_short_gaps_are_filled_and_long_ones_stay_invalid():
    T = 30
    lm = np.arange(T, dtype=np.float32)[:, None, None] * np.ones((T, 478, 3), np.float32)
    found = np.ones(T, bool)
    found[5:8] = False  # 3 frames: filled
    found[15:22] = False  # 7 frames: left invalid
    lm[~found] = np.nan
    out, valid = fill_short_gaps(lm, found)
    assert valid[5:8].all() and not valid[15:22].any()
    np.testing.assert_allclose(out[6, 0, 0], 6.0)
    assert np.isnan(out[15:22]).all()
