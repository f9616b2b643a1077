"""Tracking the torso's image motion (data_prep.torso_track) and reading the torso through it (nerf.model)."""

import dataclasses
import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata
from test_nerf_model import TINY, _moving_person, _person

from common import dataset
from common.errors import PrepareError
from data_prep import torso_track
from nerf.fields import FieldConfig
from nerf.model import AvatarModel, RenderConfig
from nerf.render import frame_batch
from nerf.torso import MIN_TRACKED


def _frames(T=8, S=128, seed=0):
    """A textured torso (the astronaut photo's suit) under known small affine motions, over a flat plate, with its
    label map; the head's label sits on top. Returns images, labels and the true frame -> frame-0 motions [T, 6]
    on crop fractions."""
    rng = np.random.default_rng(seed)
    suit = cv2.resize(skdata.astronaut()[260:512, 100:420], (S, S), interpolation=cv2.INTER_AREA)
    shape = np.zeros((S, S), np.uint8)
    shape[S // 3:, S // 8:S - S // 8] = 1
    images, labels, motions = [], [], []
    D = np.array([[S, 0.0, -0.5], [0.0, S, -0.5], [0.0, 0.0, 1.0]])  # crop fractions -> pixel indices
    for i in range(T):
        a, s = (0.0, 1.0) if i == 0 else (rng.uniform(-0.05, 0.05), rng.uniform(0.97, 1.03))
        shift = np.zeros(2) if i == 0 else rng.uniform(-3, 3, 2)
        c = np.array([S / 2, S / 2])
        Rm = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        W = np.vstack([np.hstack([Rm, (c + shift - Rm @ c)[:, None]]), [0, 0, 1]])  # frame 0 pixels -> frame i's
        img = cv2.warpAffine(suit, W[:2], (S, S), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        lab = cv2.warpAffine(shape, W[:2], (S, S), flags=cv2.INTER_NEAREST) * 2
        lab[: S // 4, S // 3: 2 * S // 3] = 1  # the head, still
        plate = np.full_like(img, 90)
        images.append(np.where(lab[..., None] == 2, img, plate))
        labels.append(lab)
        motions.append((np.linalg.inv(D) @ np.linalg.inv(W) @ D)[:2].reshape(6))
    return np.stack(images), np.stack(labels), np.stack(motions).astype(np.float32)


def test_the_two_sides_of_the_reference_tracked_apart_are_the_whole_track_bit_for_bit():
    images, labels, _ = _frames(T=10)
    both = torso_track.track_torso(images, labels, reference=4)
    after = torso_track.track_torso(images, labels, reference=4, side="after")
    before = torso_track.track_torso(images, labels, reference=4, side="before")
    mine = np.arange(10) >= 4
    for whole, a, b in zip(both, after, before):
        np.testing.assert_array_equal(whole, np.where(mine.reshape(-1, *[1] * (whole.ndim - 1)), a, b))
    assert both[1].all() and not after[1][:4].any() and not before[1][5:].any()


def test_the_tracker_recovers_known_torso_motions_and_refuses_an_unrelated_frame(monkeypatch):
    images, labels, truth = _frames()
    motion, valid, corr = torso_track.track_torso(images, labels, reference=0)
    assert valid.all() and (corr > 0.95).all()
    np.testing.assert_allclose(motion[0], torso_track.IDENTITY, atol=1e-4)
    # where the motions put the torso's pixels, in pixels of the 128 px crop
    pts = np.stack(np.meshgrid(np.linspace(0.2, 0.8, 5), np.linspace(0.4, 0.9, 5)), -1).reshape(-1, 2)
    hom = np.concatenate([pts, np.ones((len(pts), 1))], 1)
    err = np.abs(np.einsum("tij,nj->tni", motion.reshape(-1, 2, 3) - truth.reshape(-1, 2, 3), hom)) * 128
    assert err.max() < 0.25, err.max()
    # grey crops track as the RGB ones do
    grey = np.stack([cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in images])
    np.testing.assert_allclose(torso_track.track_torso(grey, labels, reference=0)[0], motion, atol=1e-4)
    # a frame whose torso is something else altogether is not trusted: identity, not valid
    images[3] = np.random.default_rng(1).integers(0, 255, images[3].shape, dtype=np.uint8)
    motion, valid, corr = torso_track.track_torso(images, labels, reference=0)
    assert not valid[3] and valid[[0, 1, 2, 4, 5, 6, 7]].all() and corr[3] < torso_track.MIN_CORRELATION
    np.testing.assert_array_equal(motion[3], torso_track.IDENTITY)
    # no torso at all (a face filling the crop), or a thin band of it (3% of the crop): nothing is tracked
    _, valid, _ = torso_track.track_torso(images, np.ones_like(labels), reference=0)
    assert not valid.any()
    band = np.where(labels == 2, 0, labels).astype(np.uint8)
    band[:, -10:, 16:112] = 2  # (its interior, 8 rows: 4.5% of the crop)
    _, valid, _ = torso_track.track_torso(images, band, reference=0)
    assert not valid.any()
    # the rule is the torso's trackable share of the crop, nothing else: this well-tracked torso is refused once the
    # minimum lies just above its share, and tracked again just below it
    share = torso_track.trackable_mask(labels[0]).mean()
    assert share > torso_track.MIN_TORSO_SHARE
    assert torso_track.trackable_mask(band[0]).mean() < torso_track.MIN_TORSO_SHARE
    monkeypatch.setattr(torso_track, "MIN_TORSO_SHARE", share * 1.01)
    assert not torso_track.track_torso(images, labels, reference=0)[1].any()
    monkeypatch.setattr(torso_track, "MIN_TORSO_SHARE", share * 0.99)
    assert torso_track.track_torso(images, labels, reference=0)[1][[0, 1, 2, 4, 5, 6, 7]].all()


def test_ecc_over_the_torsos_box_alone_finds_the_motions_it_found_over_the_whole_frame(monkeypatch):
    images, labels, _ = _frames(T=6)
    labels[:, :, :20] = 0  # the torso's box starts right of and below the crop's corner: the template has an offset
    mask = torso_track.trackable_mask(labels[2])
    assert mask[:, :20].sum() == 0 and mask.mean() < 0.6
    boxed = torso_track.track_torso(images, labels, reference=2)
    monkeypatch.setattr(torso_track, "TEMPLATE_MARGIN", 10_000)  # the whole frame
    whole = torso_track.track_torso(images, labels, reference=2)
    assert boxed[1].all() and whole[1].all()
    np.testing.assert_allclose(boxed[0], whole[0], atol=1e-5)
    np.testing.assert_allclose(boxed[2], whole[2], atol=1e-5)


def test_a_motion_that_stretches_the_torso_beyond_belief_is_not_trusted(monkeypatch):
    # (ECC can converge to a collapsed warp that maps the torso onto a flat patch with a high correlation: seen on a
    # dev clip's small, plain torso. A real torso does not grow by half between frames of one clip.)
    images, labels, _ = _frames(T=2)
    S = images.shape[1]
    W = np.array([[1.45, 0.0, -0.45 * S / 2], [0.0, 1.45, -0.45 * S / 2]])  # frame 0's torso, 1.45 times as large
    images[1] = cv2.warpAffine(images[0], W, (S, S), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    monkeypatch.setattr(torso_track, "MAX_STRETCH", 10.0)
    motion, valid, _ = torso_track.track_torso(images, labels, reference=0)
    assert valid[1] and abs(np.linalg.det(motion[1].reshape(2, 3)[:, :2]) - 1 / 1.45**2) < 0.02  # ECC follows it
    monkeypatch.setattr(torso_track, "MAX_STRETCH", 1.3)
    motion, valid, _ = torso_track.track_torso(images, labels, reference=0)
    assert not valid[1]


def test_the_reference_frame_is_the_pose_nearest_the_mean():
    euler = np.array([[0.1, 0, 0], [0.0, 0, 0], [-0.1, 0, 0], [0.3, 0, 0]])
    t = np.zeros((4, 3))
    euler[1] = [0.07, 0, 0]  # the mean of frames 0..3 is 0.0925: frame 0 (0.1) is nearest
    assert torso_track.reference_frame(euler, t, np.arange(4)) == 0
    assert torso_track.reference_frame(euler, t, np.array([2, 3])) in (2, 3)


def _tracked_person(T=6, motions=None):
    torch.manual_seed(0)
    p = _moving_person(angle=0.1, shift=0.02, T=T)
    if motions is None:  # a motion linear in the head pose: a shift with the yaw, a turn with the roll
        z = p.euler
        motions = torch.stack([1 + 0 * z[:, 0], -0.2 * z[:, 2], 0.1 * z[:, 1], 0.2 * z[:, 2], 1 + 0 * z[:, 0],
                               0.05 * z[:, 0]], -1)
    return dataclasses.replace(p, torso_motion=motions.float())


def test_a_tracked_motion_moves_the_volume_torsos_points_along_its_pixels_ray():
    p = _tracked_person()
    model = AvatarModel([p], FieldConfig(head_grid=TINY, torso_grid=TINY, hidden=16, expr_dim=4), RenderConfig(8, 8))
    S, f = p.size, torch.tensor([p.focal])
    M = torch.tensor([[[1.02, -0.05, 0.01], [0.04, 0.99, -0.02]]])
    uv = torch.tensor([[0.3, 0.7]])
    for z in (2.8, 3.0, 3.3):  # a point on the ray of pixel uv, at depth z
        xy = (uv * S - S / 2) * z / f
        lo, hi = model.torso_min[0], model.torso_max[0]
        x01 = (torch.cat([xy, torch.tensor([[z]])], -1) - lo) / (hi - lo)
        moved = model.torso_motion.track_points(x01, model.torso_min[[0]], model.torso_max[[0]], M, f) * (hi - lo) + lo
        # ... goes to the point at the same depth on the ray of the pixel M(uv)
        target = M[0, :, :2] @ uv[0] + M[0, :, 2]
        torch.testing.assert_close(moved[0, 2], torch.tensor(z))
        torch.testing.assert_close((moved[0, :2] / z * f + S / 2) / S, target, atol=1e-5, rtol=0)
    # the identity motion leaves every point where it is
    x = torch.rand(10, 3)
    eye = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]]).expand(10, 2, 3)
    torch.testing.assert_close(model.torso_motion.track_points(x, model.torso_min[[0] * 10], model.torso_max[[0] * 10], eye,
                                                               f.expand(10)), x)


def test_untracked_frames_get_the_motion_predicted_from_the_head_pose():
    T = 12
    p = _tracked_person(T=T)
    model = AvatarModel([p], FieldConfig(head_grid=TINY, torso_grid=TINY, hidden=16, expr_dim=4), RenderConfig(8, 8))
    assert "torso_motion.motion_W" in model.state_dict()  # a checkpoint predicts motions without the tracks
    b = frame_batch(p, T - 1, 4)  # the held-out frame, tracked
    torch.testing.assert_close(model.torso_motion(b.row, b.euler, b.t, b.torso_motion)[0].reshape(6),
                               p.torso_motion[T - 1])
    # a driven person (no tracks) or a failed track (NaN) gets the prediction: here the motion is linear in the
    # pose, so the prediction from the training frames gives the held-out frame's motion
    for q in (dataclasses.replace(p, torso_motion=None),
              dataclasses.replace(p, torso_motion=torch.full_like(p.torso_motion, float("nan")))):
        b = frame_batch(q, T - 1, 4)
        got = model.torso_motion(b.row, b.euler, b.t, b.torso_motion)[0].reshape(6)
        torch.testing.assert_close(got, p.torso_motion[T - 1], atol=2e-3, rtol=0)
    # an untracked person's prediction is the identity
    plain = AvatarModel([_person(0)], FieldConfig(head_grid=TINY, torso_grid=TINY, hidden=16, expr_dim=4),
                        RenderConfig(8, 8))
    torch.testing.assert_close(plain.torso_motion.motion_W[0, 6], torch.tensor(torso_track.IDENTITY))


def test_a_tracked_persons_torso_field_reads_no_head_pose_nor_warps_and_an_untracked_ones_does():
    T = 12
    tracked, plain = _tracked_person(T=T), _moving_person(angle=0.1, shift=0.02, T=T)
    plain.row = 1
    cfg = FieldConfig(head_grid=TINY, torso_grid=TINY, hidden=16, expr_dim=4)
    model = AvatarModel([tracked, plain], cfg, RenderConfig(8, 8))
    torch.testing.assert_close(model.torso_motion.pose_gate, torch.tensor([0.0, 1.0]))
    assert "torso_motion.pose_gate" in model.state_dict()
    with torch.no_grad():  # a warp that moves points (it starts as the identity)
        model.torso[0].deform[-1].weight.normal_(0.0, 0.3)
    seen, offsets = [], []  # the pose inputs the torso field gets, its warps (coarse and importance calls), per frame

    def spy(x, d, et, *a, **k):
        seen[-1].append(et)
        out = forward(x, d, et, *a, **k)
        offsets[-1].append(out[2])
        return out

    forward, model.torso[0].forward = model.torso[0].forward, spy
    with torch.no_grad():
        for p in (tracked, plain):
            for frame in (2, 5):
                seen.append([])
                offsets.append([])
                model(frame_batch(p, frame, 4), jitter=False)
    still = torch.zeros(6)  # the mean pose, standardized
    # ... and no learned warp: the tracked motion alone moves it; the untracked torso warps
    assert all((o == 0).all() for o in offsets[0] + offsets[1])
    assert all(o.abs().max() > 1e-3 for o in offsets[2] + offsets[3])
    for et in seen[0] + seen[1]:  # the tracked person's torso: held at its mean pose whatever the head does
        torch.testing.assert_close(et, still.expand_as(et))
    assert (seen[2][0] - seen[3][0]).abs().max() > 1e-3  # the untracked person's follows its head pose
    # the occupancy grid reads the torso through the same input
    assert torch.equal(model.torso_motion.pose_input(torch.randn(3, 6), torch.zeros(3, dtype=torch.long)),
                       still.expand(3, 6))
    # a person with fewer than MIN_TRACKED tracked training frames counts as untracked
    few = dataclasses.replace(tracked, torso_motion=tracked.torso_motion.clone())
    few.torso_motion[MIN_TRACKED - 1:] = float("nan")
    assert AvatarModel([few], cfg, RenderConfig(8, 8)).torso_motion.pose_gate[0] == 1.0


def test_prepare_tracks_each_torso_and_the_loader_reads_it(synthetic, tmp_path):
    from nerf.audio import Wav2LipAudioEncoder
    from nerf.data import load_datasets

    root = synthetic["dataset"]
    meta = dataset.read_meta(root)
    for p in meta["persons"]:  # the synthetic torsos move rigidly: nearly every frame tracks
        z = dataset.load_npz(dataset.person_dir(root, p["id"]) / "torso.npz")
        assert z["motion"].shape == (meta["n_frames"], 6) and np.isfinite(z["motion"]).all(1).mean() > 0.9
        np.testing.assert_allclose(z["motion"][int(z["reference"])], torso_track.IDENTITY, atol=1e-4)
    assert (root / "qa" / "torso_motion.png").is_file()
    persons = load_datasets([str(root)], 32, Wav2LipAudioEncoder().eval())  # at any training size, the same motion
    np.testing.assert_array_equal(persons[0].torso_motion.numpy(),
                                  dataset.load_npz(dataset.person_dir(root, 0) / "torso.npz")["motion"])
    # a dataset of schema 1 (before the torso stage) is refused with the command that upgrades it
    old = tmp_path / "old"
    shutil.copytree(root, old)
    meta["schema_version"] = 1
    (old / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(PrepareError, match=r"schema version 1.*scripts/prepare.py --video .* upgrades it"):
        dataset.read_meta(old)


def test_a_tracked_torso_trains_evaluates_both_ways_and_drives(synthetic, tmp_path):
    import json

    from nerf.evaluate import evaluate, load_model
    from nerf.render import render_frame
    from nerf.trainer import TrainConfig, TrainError, train
    from render.drive import driven_person, from_track

    cfg = dict(data=[str(synthetic["dataset"])], image_size=64, batch_rays=64, n_coarse=8, n_importance=4, hidden=16,
               n_levels=4, log2_hashmap_size=10, audio_pretrain_iters=1, ckpt_every=1, val_every=10**9)
    lines = []
    run = train(TrainConfig(out=str(tmp_path / "a"), iters=3, **cfg), log=lines.append, progress=False)
    assert np.isfinite(run["loss_history"]).all()
    assert (tmp_path / "a" / "torso_track.png").is_file()  # the tracks' QA picture
    assert sum("torso tracked on" in line and "reads no head pose" in line for line in lines) == 2, lines
    model, persons, _ = load_model(tmp_path / "a" / "checkpoint.pt", cfg["data"])
    for p in persons:  # the synthetic torsos move rigidly: nearly every frame tracks
        assert p.torso_motion.shape == (len(p.euler), 6) and torch.isfinite(p.torso_motion).all(1).float().mean() > 0.9
    rows = {}
    for how in ("tracked", "predicted"):
        evaluate(tmp_path / "a" / "checkpoint.pt", cfg["data"], tmp_path / how, max_frames=2, torso_motion=how)
        got = json.loads((tmp_path / how / "metrics.json").read_text())
        assert got["torso_motion"] == how
        rows[how] = [r["psnr"] for r in got["rows"]]
    assert rows["tracked"] != rows["predicted"]  # the held-out torsos were read through other motions
    with pytest.raises(TrainError, match="torso_motion"):
        evaluate(tmp_path / "a" / "checkpoint.pt", cfg["data"], tmp_path / "x", torso_motion="guessed")
    p = persons[0]  # a driven person has no tracks: its torso moves as its head pose predicts
    q = driven_person(p, from_track(p, np.arange(4)), torch.zeros(4, p.audio.shape[1]))
    assert q.torso_motion is None and torch.isfinite(render_frame(model, q, 3)["rgb"]).all()
