"""The avatar model's contracts: coordinates, codes, depth merging, rendering, training progress."""

import numpy as np
import pytest
import torch

from common.geometry import rotation_from_euler_pyr
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


def _moving_person(angle: float, shift: float, T: int = 6):
    """``_person(0)`` with random head poses: Euler angles of spread ``angle`` (radians), translations of ``shift``."""
    p = _person(0, T=T)
    p.euler = torch.randn(T, 3) * angle
    p.t = p.t + torch.randn(T, 3) * shift
    p.R = torch.stack([torch.from_numpy(np.asarray(rotation_from_euler_pyr(np.array(e)))).float() for e in p.euler.tolist()])
    return p


def test_the_torso_reads_the_pose_standardized_by_the_persons_training_frames(monkeypatch):
    torch.manual_seed(0)
    p = _moving_person(angle=0.1, shift=0.02)
    cfg = FieldConfig(head_grid=TINY, torso_grid=TINY, hidden=16, expr_dim=4)
    model = AvatarModel([p], cfg, RenderConfig(8, 8))
    seen = torch.cat([p.euler[:5], p.t[:5]], -1)  # the training frames (frame 5 is held out)
    torch.testing.assert_close(model.torso_motion.pose_mean[0], seen.mean(0))
    torch.testing.assert_close(model.torso_motion.pose_std[0], seen.std(0, unbiased=False).clamp_min(1e-3))
    assert "torso_motion.pose_mean" in model.state_dict()  # a checkpoint renders without the tracks it was derived from
    got = []
    forward = model.torso[0].forward
    monkeypatch.setattr(model.torso[0], "forward", lambda x, d, et, *a: got.append(et) or forward(x, d, et, *a))
    with torch.no_grad():
        model(frame_batch(p, 5, model.cfg.audio_window), jitter=False)
    expected = (torch.cat([p.euler[5], p.t[5]]) - model.torso_motion.pose_mean[0]) / model.torso_motion.pose_std[0]
    torch.testing.assert_close(got[0][0], expected)
    # the occupancy grid is built from the torso field under the same standardized poses
    from nerf import occupancy

    got.clear()
    occupancy.build(model, [p], resolution=4, n_frames=2)
    standardized = (torch.cat([p.euler, p.t], -1) - model.torso_motion.pose_mean[0]) / model.torso_motion.pose_std[0]
    built = torch.cat(got)  # each a frame's standardized pose (raw, tz would be about 3)
    assert len(built) and ((built[:, None] - standardized[None]).abs().sum(-1).min(1).values < 1e-4).all()
    # the pose enters as it is (6 numbers), not through sin/cos frequencies
    assert model.torso[0].deform[0].in_features == 3 * (1 + 2 * cfg.pose_freqs) + 6 + cfg.shape_dim


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
        head_box=torch.tensor([[2.0, 2.0, 10.0, 10.0]]).expand(T, 4), train=torch.arange(T - 1),
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
    assert batch.audio.shape[1:] == (5, 512) and len(batch.audio) <= 12
    assert len({(int(r), int(f)) for r, f in zip(batch.row, batch.frame)}) == len(batch.audio)
    for i in (0, 17, 40):
        p = persons[int(batch.row[i])]
        torch.testing.assert_close(batch.audio[batch.pair[i]], code_windows(p.audio, batch.frame[i:i + 1], 2)[0])
    with torch.no_grad():
        shared = model.drive_code(0, batch)  # once per (person, frame)
        per_ray = torch.stack([code_windows(persons[int(r)].audio, f[None], 2)[0]
                               for r, f in zip(batch.row, batch.frame)])
        alone = torch.where(batch.speaking[:, None], model.audio[0](per_ray), model.expr[0](batch.expr))
    torch.testing.assert_close(shared, alone)


def test_ray_shares_land_in_their_boxes():
    """sample_rays' mouth and head shares: each share's rays fall in its box, the rest anywhere."""
    from nerf.data import sample_rays

    persons = [_person(0, size=32)]
    p = persons[0]
    p.mouth_box = torch.tensor([[4.0, 4.0, 8.0, 8.0]]).expand(6, 4)
    p.head_box = torch.tensor([[2.0, 2.0, 12.0, 12.0]]).expand(6, 4)
    gen = torch.Generator().manual_seed(0)

    def share_in(box, **shares):
        b = sample_rays(persons, 4000, gen, audio_window=1, **shares)
        inside = (b.u >= box[0]) & (b.u <= box[2]) & (b.v >= box[1]) & (b.v <= box[3])
        return inside.float().mean().item()

    head = p.head_box[0].tolist()
    # uniform rays land in the head box by its area (11 x 11 of 32 x 32 pixels = 11.8%)
    assert abs(share_in(head, head_share=0.0, mouth_share=0.0) - 121 / 1024) < 0.02
    # a quarter of the batch in the head box, the uniform rest adds its area's share of 75%
    assert abs(share_in(head, head_share=0.25, mouth_share=0.0) - (0.25 + 0.75 * 121 / 1024)) < 0.03
    assert share_in(head, head_share=1.0, mouth_share=0.0) == 1.0
    assert share_in([4, 4, 7, 7], head_share=0.0, mouth_share=1.0) == 1.0  # the float mouth box ends at x1, y1
    with pytest.raises(ValueError, match="sum to at most 1"):
        sample_rays(persons, 8, gen, audio_window=1, head_share=0.9, mouth_share=0.2)
