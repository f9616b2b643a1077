"""The avatar model's contracts: coordinates, codes, depth merging, rendering, training progress."""

import numpy as np
import pytest
import torch

from data_prep.head_pose import rotation_from_euler_pyr
from nerf import rays
from nerf.data import PersonFrames
from nerf.encoding import HashGridConfig
from nerf.fields import FieldConfig, HeadField
from nerf.model import AvatarModel, RenderConfig
from nerf.rays import PersonBounds
from nerf.render import frame_batch

TINY = HashGridConfig(n_levels=4, log2_hashmap_size=10, base_resolution=4, finest_resolution=32)


def test_a_point_through_the_head_pose_and_back():
    g = torch.Generator().manual_seed(0)
    R = torch.from_numpy(rotation_from_euler_pyr(np.array([[0.2, -0.3, 0.1]]))).float().expand(5, 3, 3)
    t = torch.tensor([[0.01, -0.02, 3.0]]).expand(5, 3)
    x_head = torch.randn(5, 3, generator=g) * 0.1
    x_cam = rays.to_camera_space(x_head, R, t)
    # The camera ray through x_cam, moved into head space, passes through x_head at the same t.
    dirs = x_cam / x_cam[:, 2:]
    o_h, d_h = rays.to_head_space(dirs, R, t)
    torch.testing.assert_close(o_h + x_cam[:, 2:] * d_h, x_head, atol=1e-5, rtol=0)


def test_pixel_rays_hit_the_principal_point_straight_on():
    d = rays.pixel_rays(torch.tensor([31.5, 0.0]), torch.tensor([31.5, 0.0]), torch.tensor(100.0), 64)
    torch.testing.assert_close(d[0], torch.tensor([0.0, 0.0, 1.0]))
    assert d[1, 0] < 0 and d[1, 1] < 0  # top-left pixel: left and up in OpenCV axes


def test_sphere_and_box_intervals():
    o = torch.zeros(2, 3)
    d = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    near, far, hit = rays.sphere_interval(o, d, torch.tensor([0.0, 0.0, 3.0]), 0.5)
    assert hit.tolist() == [True, False] and abs(near[0] - 2.5) < 1e-6 and abs(far[0] - 3.5) < 1e-6
    near, far, hit = rays.box_interval(o, d, torch.tensor([-1.0, -1.0, 2.0]), torch.tensor([1.0, 1.0, 4.0]))
    assert hit.tolist() == [True, False] and abs(near[0] - 2.0) < 1e-6 and abs(far[0] - 4.0) < 1e-6


def test_the_torso_pixels_are_the_labelled_torso_and_stray_hair_not_the_sky_above_the_head():
    S, focal, tz = 64, 80.0, 3.0
    canonical = np.array([[-0.3, -0.3, 0.0], [0.3, 0.3, 0.0]])  # the head sphere: radius 0.6, centre (0, -0.06, 0.21)
    t_pose = np.tile([0.0, -0.4, tz], (4, 1))
    R, valid = np.tile(np.eye(3), (4, 1, 1)), np.ones(4, bool)
    labels = np.zeros((4, S, S), np.uint8)
    labels[:, 10:30, 22:42] = 1  # the head, inside the head sphere's image
    labels[:, 40:, 12:52] = 2  # shoulders: rows 40.., columns 12..51
    labels[2, 50:, 8:12] = 2  # one frame's arm a little further left
    labels[3, 30:35, 54:58] = 1  # hair outside the head sphere's image (a disc of 16 px radius about
    # pixel (31.5, 20)): the torso field must draw it
    labels[1, 0:4, 0:4] = 1  # a frame without a pose (the face lost): its head pixels say nothing
    R, t_pose = R.copy(), t_pose.copy()
    R[1], t_pose[1], valid[1] = np.nan, np.nan, False
    box = rays.torso_pixel_box(labels, R, t_pose, valid, (0.0, -0.06, 0.21), 0.6, focal, margin=0.0)
    assert box == (8, 30, 57, 63)
    full = PersonBounds.from_track(canonical, t_pose, focal, S)
    b = PersonBounds.from_track(canonical, t_pose, focal, S, labels=labels, R=R, valid=valid)
    m = round(rays.TORSO_MARGIN * S)
    assert full.torso_pixels is None and b.torso_pixels == (8 - m, 30 - m, 57 + m, 63)
    assert (b.head_center, b.head_radius, b.torso_min, b.torso_max) == \
        (full.head_center, full.head_radius, full.torso_min, full.torso_max)  # the fields' domains stay
    # No torso pixel anywhere (a face filling the crop): every pixel's ray may meet the torso, as without labels.
    none = PersonBounds.from_track(canonical, t_pose, focal, S, labels=np.zeros_like(labels), R=R, valid=valid)
    assert none == full


def test_rays_outside_the_torso_pixels_do_not_query_the_torso():
    import dataclasses

    p = _person(0)
    p.bounds = dataclasses.replace(p.bounds, torso_pixels=(3, 9, 12, 15))
    cfg = FieldConfig(head_grid=TINY, torso_grid=TINY, hidden=16, expr_dim=4)
    model = AvatarModel([p], cfg, RenderConfig(8, 8), torso_cull=True)
    hit_t = model._geometry(frame_batch(p, 2, model.cfg.audio_window))["hit_t"].reshape(16, 16)
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[9:16, 3:13] = True
    assert torch.equal(hit_t, inside)
    assert "torso_pixels" not in model.state_dict()  # derived from the labels: older checkpoints load as they are
    # Without torso_cull (the default) the frustum box alone decides: it meets every ray of this crop.
    assert AvatarModel([p], cfg, RenderConfig(8, 8))._geometry(frame_batch(p, 2, 4))["hit_t"].all()


def _moving_person(angle: float, shift: float, T: int = 6):
    """``_person(0)`` with random head poses: Euler angles of spread ``angle`` (radians), translations of ``shift``."""
    p = _person(0, T=T)
    p.euler = torch.randn(T, 3) * angle
    p.t = p.t + torch.randn(T, 3) * shift
    p.R = torch.stack([torch.from_numpy(np.asarray(rotation_from_euler_pyr(np.array(e)))).float() for e in p.euler.tolist()])
    return p


def test_pose_norm_standardizes_the_torso_pose_by_the_persons_training_frames(monkeypatch):
    torch.manual_seed(0)
    p = _moving_person(angle=0.1, shift=0.02)
    cfg = FieldConfig(head_grid=TINY, torso_grid=TINY, hidden=16, expr_dim=4)
    model = AvatarModel([p], cfg, RenderConfig(8, 8), pose_norm=True)
    seen = torch.cat([p.euler[:5], p.t[:5]], -1)  # the training frames (frame 5 is held out)
    torch.testing.assert_close(model.pose_mean[0], seen.mean(0))
    torch.testing.assert_close(model.pose_std[0], seen.std(0, unbiased=False).clamp_min(1e-3))
    assert "pose_mean" not in model.state_dict()  # derived from the tracks: older checkpoints load as they are
    got = []
    forward = model.torso[0].forward
    monkeypatch.setattr(model.torso[0], "forward", lambda x, d, et, *a: got.append(et) or forward(x, d, et, *a))
    with torch.no_grad():
        model(frame_batch(p, 5, model.cfg.audio_window), jitter=False)
    expected = (torch.cat([p.euler[5], p.t[5]]) - model.pose_mean[0]) / model.pose_std[0]
    torch.testing.assert_close(got[0][0], expected)
    # the occupancy grid is built from the torso field under the same standardized poses
    from nerf import occupancy

    got.clear()
    occupancy.build(model, [p], resolution=4, n_frames=2)
    standardized = (torch.cat([p.euler, p.t], -1) - model.pose_mean[0]) / model.pose_std[0]
    built = torch.cat(got)  # each a frame's standardized pose (raw, tz would be about 3)
    assert len(built) and ((built[:, None] - standardized[None]).abs().sum(-1).min(1).values < 1e-4).all()
    # the pose enters as it is (6 numbers), not through sin/cos frequencies
    assert model.torso[0].deform[0].in_features == 3 * (1 + 2 * cfg.pose_freqs) + 6 + cfg.shape_dim
    assert AvatarModel([p], cfg, RenderConfig(8, 8)).torso[0].deform[0].in_features == \
        3 * (1 + 2 * cfg.pose_freqs) + 6 * (1 + 2 * cfg.pose_freqs) + cfg.shape_dim


@pytest.mark.parametrize("layer", [False, True])
def test_without_torso_density_pose_the_pose_moves_the_torso_only_through_its_warp(layer):
    from nerf.fields import TorsoField, TorsoLayer

    torch.manual_seed(0)
    n = 64
    x, dirs = torch.rand(n, 3), torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)
    zs, za, et, et2 = torch.randn(n, 16), torch.randn(n, 16), torch.randn(n, 6), torch.randn(n, 6)
    for density_pose in (True, False):
        cfg = FieldConfig(head_grid=TINY, torso_grid=TINY, hidden=16, expr_dim=4, torso_density_pose=density_pose)
        field = TorsoLayer(cfg) if layer else TorsoField(cfg)
        with torch.no_grad():
            field.encoding.tables.uniform_(-1.0, 1.0)  # features that vary over space (they start near 0)

        def run(e, field=field):
            return field(x[:, :2], e, zs, za) if layer else field(x, dirs, e, zs, za)

        (a, rgb_a, off_a), (b, rgb_b, _) = run(et), run(et2)
        assert (off_a == 0).all()  # the warp starts as the identity: the pose can act only through the density
        if density_pose:
            assert (a - b).abs().max() > 1e-4
        else:
            torch.testing.assert_close(a, b)
            torch.testing.assert_close(rgb_a, rgb_b)
            with torch.no_grad():  # a warp that moves points: now the pose changes the torso
                field.deform[-1].weight.normal_(0.0, 0.1)
            assert (run(et)[0] - run(et2)[0]).abs().max() > 1e-4


def test_z_app_cannot_change_density_but_z_shape_can():
    torch.manual_seed(0)
    cfg = FieldConfig(head_grid=TINY, torso_grid=TINY, hidden=16, expr_dim=4)
    field = HeadField(cfg)
    n = 64
    x, dirs = torch.rand(n, 3), torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)
    drive = torch.randn(n, cfg.drive_dim)
    zs, za = torch.randn(n, cfg.shape_dim), torch.randn(n, cfg.app_dim)
    sigma, rgb = field(x, dirs, zs, za, drive)
    sigma_app, rgb_app = field(x, dirs, zs, torch.randn(n, cfg.app_dim), drive)
    sigma_shape, _ = field(x, dirs, torch.randn(n, cfg.shape_dim), za, drive)
    torch.testing.assert_close(sigma, sigma_app)
    assert (rgb - rgb_app).abs().max() > 1e-4
    assert (sigma - sigma_shape).abs().max() > 1e-4


def _person(row, size=16, T=6, tz=3.0, focal=60.0):
    """A tiny person with a flat grey image and the identity pose."""
    bounds = PersonBounds((0.0, 0.0, 0.0), 0.2, (-0.6, -0.6, tz - 0.35), (0.6, 0.6, tz + 0.35))
    return PersonFrames(
        row=row, name=f"p{row}", images=torch.full((T, size, size, 3), 128, dtype=torch.uint8),
        labels=torch.zeros(T, size, size, dtype=torch.uint8), background=torch.zeros(size, size, 3),
        R=torch.eye(3).expand(T, 3, 3).clone(), t=torch.tensor([0.0, 0.0, tz]).expand(T, 3).clone(),
        euler=torch.zeros(T, 3), expr=torch.zeros(T, 4), audio=torch.zeros(T, 512),
        speaking=torch.zeros(T, dtype=torch.bool), mouth_box=torch.tensor([[4.0, 4.0, 8.0, 8.0]]).expand(T, 4),
        head_box=torch.tensor([[2.0, 2.0, 10.0, 10.0]]).expand(T, 4),
        torso_box=torch.tensor([[0.0, 10.0, 15.0, 15.0]]).expand(T, 4), train=torch.arange(T - 1),
        val=torch.tensor([T - 1]), focal=focal, size=size, bounds=bounds)


@pytest.mark.parametrize("mode", ["shared", "per_person"])
def test_persons_render_together_as_alone_and_rays_missing_both_fields_show_the_plate(mode):
    import dataclasses

    from nerf.render import render_frame, render_persons

    torch.manual_seed(0)
    persons = [_person(0), _person(1)]
    for p in persons:
        p.background = torch.rand(16, 16, 3)
    # person 1's torso box lies right of the head: rays through the left columns meet neither field
    persons[1].bounds = dataclasses.replace(persons[1].bounds, torso_min=(0.25, -0.6, 2.65))
    model = AvatarModel(persons, FieldConfig(head_grid=TINY, torso_grid=TINY, hidden=16, expr_dim=4),
                        RenderConfig(8, 8), mode=mode)
    together = render_persons(model, [(persons[0], 2), (persons[1], 4), (persons[0], 4)], chunk=100)
    for (p, f), out in zip([(persons[0], 2), (persons[1], 4), (persons[0], 4)], together):
        alone = render_frame(model, p, f)
        for k in ("rgb", "head_acc", "torso_acc"):
            torch.testing.assert_close(out[k], alone[k], atol=1e-6, rtol=0)
    missed = ~model.ray_hits(frame_batch(persons[1], 4, model.cfg.audio_window)).reshape(16, 16)
    assert missed[:, :3].all() and not missed.all()
    assert torch.equal(together[1]["rgb"][missed], persons[1].background[missed])
    assert (together[1]["head_acc"][missed] == 0).all() and (together[1]["torso_acc"][missed] == 0).all()
    # with an occupancy grid, a ray that crosses no occupied cell is culled too: an empty grid shows the plate
    from nerf.occupancy import OccupancyGrid

    empty = torch.zeros(2, 8, 8, 8, dtype=torch.bool)
    model.occupancy = OccupancyGrid(head=empty, torso=empty.clone())
    assert not model.ray_hits(frame_batch(persons[0], 2, model.cfg.audio_window)).any()
    assert torch.equal(render_frame(model, persons[0], 2)["rgb"], persons[0].background)
    model.occupancy = OccupancyGrid(head=~empty, torso=~empty)  # everything occupied: the same as no grid
    torch.testing.assert_close(render_frame(model, persons[0], 2)["rgb"], together[0]["rgb"], atol=1e-6, rtol=0)
    model.occupancy = None
    # float16 autocast (the GPU's render option) stays close to float32 (measured: mean squared difference
    # 3e-10 here; 2.4e-5 when the ray geometry also ran in float16, which a pose that float16 cannot hold
    # exactly shows)
    persons[1].R[4] = torch.from_numpy(rotation_from_euler_pyr(np.array([0.13, -0.21, 0.05]))).float()
    persons[1].t[4] = torch.tensor([0.0131, -0.0213, 2.8713])
    fp32 = render_persons(model, [(persons[1], 4)])[0]
    amp = render_persons(model, [(persons[1], 4)], amp=True)[0]
    assert ((amp["rgb"] - fp32["rgb"]) ** 2).mean() < 1e-6


@pytest.mark.parametrize("mode", ["shared", "per_person"])
def test_model_renders_both_fields_merged_and_over_the_background(mode):
    from nerf.render import render_frame

    torch.manual_seed(0)
    persons = [_person(0), _person(1)]
    cfg = FieldConfig(head_grid=TINY, torso_grid=TINY, hidden=16, expr_dim=4)
    model = AvatarModel(persons, cfg, RenderConfig(8, 8), mode=mode)
    out = render_frame(model, persons[1], 0)
    assert out["rgb"].shape == (16, 16, 3) and torch.isfinite(out["rgb"]).all()
    acc = out["head_acc"] + out["torso_acc"]
    assert (acc <= 1 + 1e-5).all()
    # The centre ray crosses the head sphere, a corner ray misses it.
    assert out["head_acc"][8, 8] > 0 and out["head_acc"][0, 0] == 0
    # Where nothing is dense, the background (black here) shows through.
    with torch.no_grad():
        for f in [*model.head, *model.torso]:
            f.density[-1].bias.fill_(-30.0)
    empty = render_frame(model, persons[1], 0)
    assert empty["rgb"].abs().max() < 1e-3
    n_params = sum(p.numel() for p in model.parameters())
    assert (mode == "per_person") == (n_params > 1.9 * sum(p.numel() for p in AvatarModel(
        persons[:1], cfg, RenderConfig(8, 8), mode="shared").parameters()))



def test_fields_are_queried_only_inside_their_domains_and_an_occupancy_grid_skips_empty_cells(monkeypatch):
    from nerf import occupancy
    from nerf.fields import HeadField
    from nerf.render import render_frame

    torch.manual_seed(0)
    persons = [_person(0), _person(1)]
    model = AvatarModel(persons, FieldConfig(head_grid=TINY, torso_grid=TINY, hidden=16, expr_dim=4), RenderConfig(8, 8))
    seen = []
    real_forward = HeadField.forward

    def spy(self, x01, *rest):
        seen.append(x01.detach().clone())
        return real_forward(self, x01, *rest)

    monkeypatch.setattr(HeadField, "forward", spy)
    full = render_frame(model, persons[1], 0)
    queried = torch.cat(seen)
    assert ((queried >= 0) & (queried <= 1)).all()  # never outside the head sphere's cube
    # 16 x 16 rays, 8 coarse + 8 importance samples each, each queried once: rays that miss the sphere cost nothing
    assert 0 < len(queried) < 0.8 * 16 * 16 * 16
    # A grid that marks only the front half (x < 0.5) of each head cube empty: those samples are skipped,
    # and the render equals the full one where no ray meets that half
    grid = occupancy.build(model, persons, resolution=8, dilate=0)
    assert grid.head.all()  # an untrained field has density everywhere: nothing is culled
    grid.head[:, :4] = False
    model.occupancy = grid
    seen.clear()
    culled = render_frame(model, persons[1], 0)
    assert len(seen) and (torch.cat(seen)[:, 0] >= 0.5).all()
    assert not torch.allclose(culled["head_acc"], full["head_acc"])
    model.occupancy = None
    torch.testing.assert_close(render_frame(model, persons[1], 0)["rgb"], full["rgb"])
    # Early ray termination: with opaque fields, the importance samples behind the first opaque coarse
    # intervals (of either field: here the head's behind the torso box's front) are not queried when
    # rendering, and the frame stays the same
    with torch.no_grad():
        for f in [*model.head, *model.torso]:
            f.density[-1].bias.fill_(8.0)
    renders, counts = {}, {}
    for stop in (0.0, 20.0):
        model.render_cfg.stop_depth = stop
        seen.clear()
        renders[stop] = render_frame(model, persons[1], 0)
        counts[stop] = sum(len(x) for x in seen)
    assert counts[20.0] < 0.8 * counts[0.0], counts
    torch.testing.assert_close(renders[20.0]["rgb"], renders[0.0]["rgb"], atol=1e-6, rtol=0)


def test_audio_drive_weights_a_window_and_leaves_a_steady_one_as_it_is():
    from nerf.fields import AudioDrive

    torch.manual_seed(0)
    drive = AudioDrive(code_dim=512, out_dim=8, hidden=16, window=4)
    code = torch.rand(3, 1, 512)
    steady = drive(code.expand(3, 9, 512))
    torch.testing.assert_close(steady, drive.project(code[:, 0]))  # softmax weights sum to 1
    varied = torch.rand(3, 9, 512)
    out = drive(varied)
    projected = drive.project(varied)
    lo, hi = projected.min(1).values, projected.max(1).values
    assert ((out >= lo - 1e-6) & (out <= hi + 1e-6)).all()  # a convex combination of the window's frames
    with pytest.raises(ValueError, match="9"):
        drive(varied[:, :5])


def test_rays_carry_their_frames_audio_window_and_share_its_drive_code():
    from nerf.audio import code_windows
    from nerf.data import sample_rays

    codes = torch.arange(6.0)[:, None].expand(6, 512)  # frame k's code is k everywhere
    windows = code_windows(codes, torch.tensor([0, 2, 5]), 2)[..., 0]
    assert windows.tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [3, 4, 5, 5, 5]]  # clamped at the ends
    torch.manual_seed(0)
    persons = [_person(0), _person(1)]
    for p in persons:
        p.audio = torch.rand(p.audio.shape)
        p.speaking = torch.tensor([True, False, True, True, False, True])
    cfg = FieldConfig(head_grid=TINY, torso_grid=TINY, hidden=16, expr_dim=4, audio_window=2)
    model = AvatarModel(persons, cfg, RenderConfig(8, 8))
    batch = sample_rays(persons, 64, torch.Generator().manual_seed(0), audio_window=2)
    # one audio window per (person, frame) pair, at most 2 persons x 6 frames of them
    assert batch["audio"].shape[1:] == (5, 512) and len(batch["audio"]) <= 12
    assert len({(int(r), int(f)) for r, f in zip(batch["row"], batch["frame"])}) == len(batch["audio"])
    for i in (0, 17, 40):
        p = persons[int(batch["row"][i])]
        torch.testing.assert_close(batch["audio"][batch["pair"][i]], code_windows(p.audio, batch["frame"][i:i + 1], 2)[0])
    with torch.no_grad():
        shared = model.drive_code(0, batch)  # once per (person, frame)
        per_ray = torch.stack([code_windows(persons[int(r)].audio, f[None], 2)[0]
                               for r, f in zip(batch["row"], batch["frame"])])
        alone = torch.where(batch["speaking"][:, None], model.audio[0](per_ray), model.expr[0](batch["expr"]))
    torch.testing.assert_close(shared, alone)


def test_ray_shares_land_in_their_boxes():
    """sample_rays' mouth, head and torso shares: each share's rays fall in its box, the rest anywhere."""
    from nerf.data import sample_rays

    persons = [_person(0, size=32)]
    p = persons[0]
    p.mouth_box = torch.tensor([[4.0, 4.0, 8.0, 8.0]]).expand(6, 4)
    p.head_box = torch.tensor([[2.0, 2.0, 12.0, 12.0]]).expand(6, 4)
    p.torso_box = torch.tensor([[20.0, 24.0, 31.0, 31.0]]).expand(6, 4)
    gen = torch.Generator().manual_seed(0)

    def share_in(box, **shares):
        b = sample_rays(persons, 4000, gen, audio_window=1, **shares)
        inside = (b["u"] >= box[0]) & (b["u"] <= box[2]) & (b["v"] >= box[1]) & (b["v"] <= box[3])
        return inside.float().mean().item()

    torso = p.torso_box[0].tolist()
    assert share_in(torso, head_share=0.0, mouth_share=0.0, torso_share=1.0) == 1.0
    # uniform rays land in the torso box by its area (12 x 8 of 32 x 32 pixels = 9.4%)
    assert abs(share_in(torso, head_share=0.0, mouth_share=0.0) - 96 / 1024) < 0.02
    # a quarter of the batch in the torso box, the uniform rest adds its area's share of 60%
    assert abs(share_in(torso, torso_share=0.25) - (0.25 + 0.6 * 96 / 1024)) < 0.03
    assert share_in(p.head_box[0].tolist(), head_share=1.0, mouth_share=0.0) == 1.0
    assert share_in([4, 4, 7, 7], head_share=0.0, mouth_share=1.0) == 1.0  # the float mouth box ends at x1, y1
    # without a torso share the generator draws what it drew before the share existed (persons, frames, kinds,
    # pixels, mouth and head offsets), so the batches after the first stay those of older runs
    g, ref = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    sample_rays(persons, 64, g, audio_window=1)
    torch.randint(0, 1, (64,), generator=ref)
    torch.randint(0, len(p.train), (64,), generator=ref)
    torch.rand(64, generator=ref)
    torch.randint(0, 32, (64,), generator=ref), torch.randint(0, 32, (64,), generator=ref)
    torch.rand(64, 2, generator=ref), torch.rand(64, 2, generator=ref)
    assert torch.equal(g.get_state(), ref.get_state())
    with pytest.raises(ValueError, match="sum to at most 1"):
        sample_rays(persons, 8, gen, audio_window=1, torso_share=0.5)


def test_the_error_map_follows_the_error_and_draws_rays_where_it_lies():
    from nerf.data import ErrorMap, sample_rays

    m = ErrorMap(2, size=32, grid=4, momentum=0.5, refresh=2)  # cells of 8 x 8 pixels
    gen = torch.Generator().manual_seed(0)
    # before any update every cell is unvisited (error 1): the draws spread over the whole crop
    u, v = m.draw(1, 4000, gen)
    counts = torch.bincount((v // 8 * 4 + u // 8).long(), minlength=16)
    assert counts.min() > 150 and u.max() == 31 and v.max() == 31
    # every pixel of person 1 seen once, error 0.01 everywhere but cell (row 2, column 3), where it is 0.25
    uu, vv = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="xy")
    uu, vv = uu.flatten(), vv.flatten()
    err = torch.where((uu >= 24) & (vv >= 16) & (vv < 24), 0.25, 0.01)
    m.update(torch.ones_like(uu, dtype=torch.long), uu, vv, err)
    expected = torch.full((4, 4), 0.01)
    expected[2, 3] = 0.25
    torch.testing.assert_close(m.err[1].view(4, 4), expected)  # first visits set the cells
    assert (m.err[0] == 1).all() and not m.seen[0].any()  # person 0 untouched
    m.update(torch.tensor([1]), torch.tensor([25.0]), torch.tensor([17.0]), torch.tensor([0.05]))
    assert torch.isclose(m.err[1].view(4, 4)[2, 3], torch.tensor(0.15))  # then a running mean (momentum 0.5)
    m.step(1)
    assert (m.snapshot[1] == 1).all()  # the sampler's copy waits for the refresh
    m.step(2)
    u, v = m.draw(1, 3000, gen)
    hot = ((u >= 24) & (v >= 16) & (v < 24)).float().mean()
    assert abs(hot - 0.15 / (0.15 + 15 * 0.01)) < 0.03  # in proportion to the cells' errors
    # the sampler's error share comes from the map; the resumed state is the same map
    persons = [_person(0, size=32), _person(1, size=32)]
    b = sample_rays(persons, 2000, gen, audio_window=1, head_share=0.0, mouth_share=0.0, error_share=1.0,
                    error_map=m)
    one = b["row"] == 1
    assert abs(((b["u"] >= 24) & (b["v"] >= 16) & (b["v"] < 24))[one].float().mean() - 0.5) < 0.05
    copy = ErrorMap(2, size=32, grid=4)
    copy.load_state_dict(m.state_dict())
    assert torch.equal(copy.err, m.err) and torch.equal(copy.snapshot, m.snapshot)
    with pytest.raises(ValueError, match="needs an error map"):
        sample_rays(persons, 8, gen, audio_window=1, error_share=0.2)


@pytest.mark.slow  # torch.compile's first build takes 40 s on 2 cores: make test-all
def test_compiled_fields_render_what_the_eager_ones_do():
    """train.py --compile true: torch.compile of each field's forward (dynamic shapes), same parameters."""
    from nerf.model import compile_fields
    from nerf.render import render_frame

    torch.manual_seed(0)
    persons = [_person(0), _person(1)]
    model = AvatarModel(persons, FieldConfig(head_grid=TINY, torso_grid=TINY, hidden=16, expr_dim=4), RenderConfig(8, 8))
    keys = set(model.state_dict())
    eager = [render_frame(model, p, 1)["rgb"] for p in persons]
    compile_fields(model)
    assert set(model.state_dict()) == keys  # checkpoints are unchanged
    torch.testing.assert_close(render_frame(model, persons[1], 1)["rgb"], eager[1], atol=1e-5, rtol=0)


def test_torso_follow_moves_torso_points_back_with_the_heads_motion_by_its_shares():
    torch.manual_seed(0)
    p = _moving_person(angle=0.2, shift=0.05)
    cfg = FieldConfig(head_grid=TINY, torso_grid=TINY, hidden=16, expr_dim=4)
    model = AvatarModel([p], cfg, RenderConfig(8, 8), torso_follow=True)
    assert model.state_dict()["follow"].shape == (1, 2) and "ref_R" not in model.state_dict()
    R0, t0 = model.ref_R[0], model.pose_mean[0, 3:]
    q = torch.rand(5, 3)  # torso-box points at the mean pose ...
    lo, hi = model.torso_min[0], model.torso_max[0]
    f = 5
    cam_q = lo + q * (hi - lo)
    moved = (p.R[f] @ R0.T @ (cam_q - t0).T).T + p.t[f]  # ... carried rigidly by the head to frame f's pose
    x01 = (moved - lo) / (hi - lo)
    row, R, t = torch.zeros(1, dtype=torch.long), p.R[f:f + 1], p.t[f:f + 1]
    ray = torch.zeros(5, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(model.follow_head(x01, row, R, t, ray), x01)  # shares 0: as without it
        model.follow.fill_(1.0)
        torch.testing.assert_close(model.follow_head(x01, row, R, t, ray), q, atol=1e-5, rtol=0)  # rigidly back
        model.follow.copy_(torch.tensor([[1.0, 0.0]]))
        torch.testing.assert_close(model.follow_head(x01, row, R, t, ray), (moved + t0 - p.t[f] - lo) / (hi - lo))
    # and the shares learn: a rendered ray's colour has a gradient in them once the head moves
    model.follow.data.zero_()
    batch = frame_batch(p, f, model.cfg.audio_window)
    model(batch, jitter=False)["rgb"].sum().backward()
    assert model.follow.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["shared", "per_person"])
def test_the_torso_layer_is_each_rays_last_sample_behind_the_head(mode, monkeypatch):
    from nerf import occupancy
    from nerf.fields import TorsoLayer
    from nerf.render import render_frame

    torch.manual_seed(0)
    persons = [_person(0), _person(1)]
    for p in persons:
        p.background = torch.rand(16, 16, 3)
    cfg = FieldConfig(head_grid=TINY, torso_grid=TINY, hidden=16, expr_dim=4)
    model = AvatarModel(persons, cfg, RenderConfig(8, 8), mode=mode, torso_layer=True)
    layer = model.torso[-1]
    assert isinstance(layer, TorsoLayer)
    calls = []
    real = TorsoLayer.forward
    monkeypatch.setattr(TorsoLayer, "forward", lambda self, uv, *a: calls.append(len(uv)) or real(self, uv, *a))
    out = render_frame(model, persons[1], 3)
    # The layer read directly at every pixel centre under frame 3's pose, composited behind the head's opacity
    # and over the plate: the render is exactly that (the head's own colour left aside where it is transparent).
    v, u = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    uv01 = torch.stack([(u.flatten() + 0.5) / 16, (v.flatten() + 0.5) / 16], -1)
    row = torch.ones(1, dtype=torch.long)
    et = model.torso_pose(torch.cat([persons[1].euler[3], persons[1].t[3]])[None], row)
    with torch.no_grad():
        alpha, rgb_t, _ = real(layer, uv01, et, model.z_shape(row), model.z_app(row))
    head = out["head_acc"].flatten()
    torch.testing.assert_close(out["torso_acc"].flatten(), (1 - head) * alpha)
    bare = head == 0  # rays that miss the head sphere: the layer over the plate alone
    assert bare.sum() > 50 and (~bare).sum() > 50
    expected = alpha[:, None] * rgb_t + (1 - alpha[:, None]) * persons[1].background.reshape(-1, 3)
    torch.testing.assert_close(out["rgb"].reshape(-1, 3)[bare], expected[bare])
    assert calls == [256]  # one query per ray, the head's rays included
    # An opaque head hides the layer: when rendering, its rays do not query it (training would)
    with torch.no_grad():
        for f in model.head:
            f.density[-1].bias.fill_(30.0)
    calls.clear()
    opaque = render_frame(model, persons[1], 3)
    assert 0 < calls[0] <= int(bare.sum()) and (opaque["torso_acc"].flatten()[~bare] == 0).all()
    # The occupancy grid leaves the layer whole (nothing to skip), and marching the head gives the same frame
    model.occupancy = occupancy.build(model, persons, resolution=8)
    assert model.occupancy.torso.all()
    model.render_cfg.march_steps = 256
    marched = render_frame(model, persons[1], 3)
    assert (marched["rgb"] - opaque["rgb"]).abs().max() < 0.02
    assert torch.equal(marched["torso_acc"].flatten()[bare], opaque["torso_acc"].flatten()[bare])


def test_the_torso_layer_trains_its_warp_and_refuses_torso_follow():
    from nerf.trainer import TrainConfig, TrainError, build

    torch.manual_seed(0)
    p = _moving_person(angle=0.1, shift=0.02)
    cfg = FieldConfig(head_grid=TINY, torso_grid=TINY, hidden=16, expr_dim=4)
    model = AvatarModel([p], cfg, RenderConfig(8, 8), torso_layer=True)
    out = model(frame_batch(p, 2, model.cfg.audio_window), distortion=True)
    assert out["offset_sq"].shape == (256,) and (out["torso_hit"] == 1).all()
    (out["rgb"].sum() + out["distortion"].sum()).backward()
    layer = model.torso[0]
    assert layer.encoding.tables.grad.abs().sum() > 0 and layer.deform[-1].weight.grad.abs().sum() > 0
    # the warp is 2D, over pixel coordinates; the grid is read on its z = 0 plane
    assert layer.deform[-1].out_features == 2
    with pytest.raises(ValueError, match="torso_follow"):
        AvatarModel([p], cfg, RenderConfig(8, 8), torso_layer=True, torso_follow=True)
    with pytest.raises(TrainError, match="volume or layer"):
        build(TrainConfig(torso_field="plane"), [p])
    with pytest.raises(TrainError, match="torso_follow"):
        build(TrainConfig(torso_field="layer", torso_follow=True), [p])


def test_a_torso_layer_is_held_off_the_head_pixels_that_the_head_sphere_covers():
    # Without that, a layer over the pixels drew the synthetic speaker's face itself (pose-keyed, deaf to the
    # audio) behind a transparent head field: the held-out mouth stopped following the jaw (correlation -0.10
    # in test_train's run, 0.98 with this term).
    from nerf.trainer import TrainConfig, losses

    p = _person(0)
    cfg = FieldConfig(head_grid=TINY, torso_grid=TINY, hidden=16, expr_dim=4)
    batch = frame_batch(p, 2, 4)
    n = len(batch["row"])
    batch["label"] = torch.ones(n, dtype=torch.long)  # every pixel labelled head
    covered = torch.arange(n) % 2 == 0  # half of them inside the head sphere's image
    out = {"rgb": batch["rgb"].clone(), "head_acc": torch.full((n,), 0.9), "torso_acc": torch.full((n,), 0.3),
           "offset_sq": torch.zeros(n), "torso_hit": torch.ones(n), "head_hit": covered.float()}
    volume = losses(out, batch, AvatarModel([p], cfg, RenderConfig(8, 8)), TrainConfig())
    layer = losses(out, batch, AvatarModel([p], cfg, RenderConfig(8, 8), torso_layer=True), TrainConfig())
    assert volume["parse_torso"] == 0  # the volume torso is free behind the head
    torch.testing.assert_close(layer["parse_torso"], -torch.log(torch.tensor(0.7)))  # BCE toward 0 on the covered
