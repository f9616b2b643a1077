"""Occupancy-grid marching (nerf/march.py): the quadrature against closed forms and the dense compositor,
early termination, and the model's marched render against its stratified + importance one."""

import math

import torch

from nerf import volrend
from nerf.march import MarchField, march


def _slab(lo, hi, sigma, colour, calls=None):
    """A field with density sigma and one colour on t in [lo, hi), empty elsewhere (live only there)."""
    def live(t):
        return (t >= lo) & (t < hi)

    def query(ray, t):
        if calls is not None:
            calls.append(len(t))
        return torch.full_like(t, sigma), torch.tensor(colour).expand(len(t), 3)
    return MarchField(live, query)


def test_one_slab_matches_the_closed_form_and_the_dense_compositor():
    # 3 rays, step 0.01 from t = 0: the slab [0.2, 0.5) covers 30 whole steps
    t0, dt, n = torch.zeros(3), torch.full((3,), 0.01), torch.tensor([100, 100, 40])
    out = march([_slab(0.2, 0.5, 4.0, [0.2, 0.4, 0.6])], t0, dt, n, stop_depth=0.0)
    acc = torch.tensor([1 - math.exp(-4.0 * 0.3)] * 2 + [1 - math.exp(-4.0 * 0.2)])
    torch.testing.assert_close(out["acc"], acc)
    torch.testing.assert_close(out["rgb"], torch.tensor([0.2, 0.4, 0.6]) * acc[:, None])
    assert out["samples"].tolist() == [30, 30, 20]  # the third ray ends at t = 0.4 (40 steps)
    # a varying density: the marcher equals volrend's dense quadrature on the same samples
    gen = torch.Generator().manual_seed(0)
    sig = torch.rand(64, generator=gen) * 30
    field = MarchField(lambda t: torch.ones_like(t, dtype=torch.bool),
                       lambda r, t: (sig[(t / 0.01).long()], torch.ones(len(t), 3)))
    out = march([field], torch.zeros(1), torch.full((1,), 0.01), torch.tensor([64]), stop_depth=0.0, round_size=5)
    w = volrend.render_weights(sig[None], torch.full((1, 64), 0.01))
    torch.testing.assert_close(out["acc"], w.sum(-1))


def test_two_overlapping_fields_add_their_densities_and_split_the_weight_by_them():
    t0, dt, n = torch.zeros(1), torch.full((1,), 0.01), torch.tensor([100])
    a, b = _slab(0.1, 0.4, 2.0, [1.0, 0.0, 0.0]), _slab(0.3, 0.6, 6.0, [0.0, 0.0, 1.0])
    out = march([a, b], t0, dt, n, stop_depth=0.0, round_size=7)
    # closed form: [0.1, 0.3) density 2, [0.3, 0.4) density 8 (split 2:6), [0.4, 0.6) density 6
    T1 = math.exp(-2 * 0.2)
    w1, w2 = 1 - T1, T1 * (1 - math.exp(-8 * 0.1))
    T2 = T1 * math.exp(-8 * 0.1)
    w3 = T2 * (1 - math.exp(-6 * 0.2))
    torch.testing.assert_close(out["field_acc"][:, 0], torch.tensor([w1 + w2 * 0.25, w2 * 0.75 + w3]))
    torch.testing.assert_close(out["rgb"][0], torch.tensor([w1 + w2 * 0.25, 0.0, w2 * 0.75 + w3]))
    assert out["samples"].item() == 60  # 30 samples each: the overlap is queried in both


def test_a_ray_stops_once_opaque_and_the_fields_behind_are_not_queried():
    front, back = [], []
    fields = [_slab(0.1, 0.3, 200.0, [1.0, 1.0, 1.0], front), _slab(0.5, 0.9, 1.0, [0.0, 1.0, 0.0], back)]
    t0, dt, n = torch.zeros(4), torch.full((4,), 0.01), torch.tensor([100, 100, 100, 100])
    full = march(fields, t0, dt, n, stop_depth=0.0, round_size=4)
    assert sum(back) == 4 * 40
    front.clear(), back.clear()
    stopped = march(fields, t0, dt, n, stop_depth=20.0, round_size=4)
    assert sum(back) == 0 and sum(front) == 4 * 12  # optical depth 2 per step: past 20 after 3 rounds of 4
    torch.testing.assert_close(stopped["rgb"], full["rgb"], atol=1e-7, rtol=0)
    assert stopped["samples"].tolist() == [12, 12, 12, 12]


def test_the_models_marched_render_converges_to_its_sampled_one():
    from test_nerf_model import TINY, _person

    from nerf import occupancy
    from nerf.fields import FieldConfig
    from nerf.model import AvatarModel, RenderConfig
    from nerf.render import frame_batch, render_frame

    torch.manual_seed(0)
    persons = [_person(0), _person(1)]
    for mode in ("shared", "per_person"):
        model = AvatarModel(persons, FieldConfig(head_grid=TINY, torso_grid=TINY, hidden=16, expr_dim=4),
                            RenderConfig(64, 64), mode=mode)
        model.occupancy = occupancy.build(model, persons, resolution=8)
        dense = render_frame(model, persons[1], 0)  # (an untrained field: density all through both domains)
        errors = []
        for steps in (32, 128):
            model.render_cfg.march_steps = steps
            marched = render_frame(model, persons[1], 0)
            errors.append((marched["rgb"] - dense["rgb"]).abs().max().item())
            for k in ("head_acc", "torso_acc"):
                torch.testing.assert_close(marched[k], dense[k], atol=0.006, rtol=0)
        assert errors[1] < 0.002 and errors[1] < errors[0], errors  # a finer step comes closer
        with torch.no_grad():
            out = model(frame_batch(persons[1], 0, model.cfg.audio_window), jitter=False)
        assert out["samples"].max() > 0
        with torch.enable_grad():  # training never marches
            assert "samples" not in model(frame_batch(persons[1], 0, model.cfg.audio_window), jitter=False)


def test_a_field_at_a_coarser_step_is_sampled_at_its_intervals_midpoints():
    from nerf.march import coarse_t

    t0, dt = torch.tensor([1.0, 2.0]), torch.tensor([0.1, 0.05])
    k = torch.arange(6.0)
    t = t0[:, None] + (k + 0.5) * dt[:, None]
    torch.testing.assert_close(coarse_t(t, t0[:, None], dt[:, None], torch.ones(2, 1)), t, rtol=0, atol=0)
    two = coarse_t(t, t0[:, None], dt[:, None], torch.full((2, 1), 2.0))
    # fine samples 0,1 -> the midpoint of [t0, t0 + 2 dt); 2,3 -> of [t0 + 2 dt, t0 + 4 dt); ...
    torch.testing.assert_close(two, t0[:, None] + torch.tensor([1.0, 1, 3, 3, 5, 5]) * dt[:, None])
