"""The fused head-marching kernel (nerf/fused_march.py) against the PyTorch marcher (nerf/march.py).

On a GPU the kernel is compiled; on the CPU box Triton's interpreter runs the same kernel source
(``TRITON_INTERPRET=1``), so CI checks the arithmetic without a GPU. Skipped where triton is absent.
Triton reads that setting when it decorates a kernel (its own library functions are decorated when it is
imported), so this module imports triton and the kernel with it set, at collection, and then unsets it: the
other tests' renders keep the plain PyTorch path, and the tests here set it again to let the model use the kernel.
"""

import os
import warnings

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import nerf._fused_march_kernel  # noqa: F401  (imports triton)
    except ImportError:
        pass
    finally:
        del os.environ["TRITON_INTERPRET"]
pytest.importorskip("triton")

from nerf import fused_march, march, occupancy, rays  # noqa: E402
from nerf.encoding import HashGridConfig  # noqa: E402
from nerf.fields import FieldConfig, HeadField, TorsoField  # noqa: E402

# dense levels (res 4, 7) and hashed ones (res 13, 23 > 10 = 2^10 ** (1/3)), wrap-around at the top face included
GRID = HashGridConfig(n_levels=4, log2_hashmap_size=10, base_resolution=4, finest_resolution=23)


# float32 layers: on the CPU the kernel does the reference's operations in the same order; on a GPU its block
# products run in TF32 (10-bit mantissas, as train.py and evaluate.py set torch's), the reference in full float32
TOL = 5e-3 if torch.cuda.is_available() else 2e-5


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    """Each test starts with no kernel checked, failed or warned about in this process."""
    monkeypatch.setattr(fused_march, "checks", {})
    monkeypatch.setattr(fused_march, "_broken", [])
    monkeypatch.setattr(fused_march, "_warned", set())


@pytest.fixture
def dev(monkeypatch):
    if torch.cuda.is_available():
        return torch.device("cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the kernel was built for the interpreter at collection
    return torch.device("cpu")


def _scene(dev, R=64, hidden=16, bias=0.0, seed=0, torso=False, steps=16):
    """A head field (and a torso field) with lively random weights; R rays of two persons through their head
    spheres (some miss) and torso boxes, the two overlapping along the rays; occupancy grids with empty cells;
    per-ray codes, in the layout of ``AvatarModel._geometry`` and ``_conditions``."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cfg = FieldConfig(head_grid=GRID, torso_grid=GRID, hidden=hidden, hash_backend="torch")
    fields = [HeadField(cfg)] + ([TorsoField(cfg)] if torso else [])
    with torch.no_grad():
        for f in fields:
            f.encoding.tables.uniform_(-1.0, 1.0, generator=g)
            f.density[-1].bias[0] += bias
        if torso:  # a warp that moves points (it starts at zero)
            fields[1].deform[-1].weight.normal_(0.0, 0.05, generator=g)
    fields = [f.to(dev).eval() for f in fields]
    row = torch.randint(0, 2, (R,), generator=g)
    center = torch.tensor([[0.0, 0.02, 0.0], [0.01, -0.03, 0.02]])[row]
    radius = torch.tensor([0.2, 0.25])[row]
    o_h = torch.tensor([0.0, 0.0, -3.0]) + 0.05 * torch.randn(R, 3, generator=g)
    aim = center + radius[:, None] * 1.3 * (2 * torch.rand(R, 3, generator=g) - 1)  # some rays miss
    d_h = aim - o_h
    d_h = d_h / d_h.norm(dim=-1, keepdim=True) * (1 + 0.1 * torch.rand(R, 1, generator=g))  # not unit: as R^T dirs
    near_h, far_h, hit_h = rays.sphere_interval(o_h, d_h, center, radius)
    dirs = torch.cat([0.1 * (2 * torch.rand(R, 2, generator=g) - 1), torch.ones(R, 1)], -1)  # camera space, z = 1
    lo = torch.tensor([[-0.3, -0.1, 2.85], [-0.35, -0.05, 2.9]])[row]
    hi = lo + torch.tensor([0.6, 0.5, 0.7])
    near_t, far_t, hit_t = rays.box_interval(torch.zeros_like(dirs), dirs, lo, hi)
    hit_t &= torch.rand(R, generator=g) < 0.8
    far_h, far_t = torch.maximum(far_h, near_h), torch.maximum(far_t, near_t)
    inf = torch.full((R,), float("inf"))
    if torso:
        t0 = torch.minimum(torch.where(hit_h, near_h, inf), torch.where(hit_t, near_t, inf))
        t1 = torch.maximum(torch.where(hit_h, far_h, -inf), torch.where(hit_t, far_t, -inf))
        hit = hit_h | hit_t
    else:
        t0, t1, hit = near_h, far_h, hit_h
    t0, t1 = torch.where(hit, t0, 0.0), torch.where(hit, t1, 0.0)
    dt = torch.minimum(2 * radius, torch.full_like(radius, 0.7)) / steps
    n_steps = torch.ceil((t1 - t0) / dt).clamp_min(0).long()
    occ = torch.rand(2, 2, 8, 8, 8, generator=g) < 0.7
    geo = {"o_h": o_h, "d_h": d_h, "center": center, "radius": radius, "near_h": near_h, "far_h": far_h,
           "hit_h": hit_h, "dirs": dirs, "lo": lo, "hi": hi, "near_t": near_t, "far_t": far_t, "hit_t": hit_t}
    cond = {"unit_h": d_h / d_h.norm(dim=-1, keepdim=True), "unit": dirs / dirs.norm(dim=-1, keepdim=True),
            "z_shape": torch.randn(R, 16, generator=g), "z_app": torch.randn(R, 16, generator=g),
            "drive": torch.randn(R, 32, generator=g), "et": torch.randn(R, 6, generator=g)}
    to = lambda d: {k: v.to(dev) for k, v in d.items()}  # noqa: E731
    stride = torch.round(0.7 / (dt * steps)).clamp_min(1.0)  # 2 for person 0 (head 0.4 deep), 1 for person 1 (0.5)
    march_args = {"t0": t0, "dt": dt, "n_steps": n_steps, "row": row, "occ_head": occ[0], "occ_torso": occ[1],
                  "stride": stride}
    return fields, to(geo), to(cond), to(march_args)


def _reference(fields, g, c, m, stop_depth, amp=False):
    """What ``AvatarModel._march`` does, with ``nerf.march``."""
    half = torch.autocast(g["o_h"].device.type, dtype=torch.float16, enabled=amp)
    row = m["row"]

    def head_live(t):
        x01 = (g["o_h"][:, None] + t[..., None] * g["d_h"][:, None] - g["center"][:, None]) \
            / (2 * g["radius"][:, None, None]) + 0.5
        return (((x01 >= 0) & (x01 <= 1)).all(-1) & g["hit_h"][:, None] & (t >= g["near_h"][:, None])
                & (t <= g["far_h"][:, None]) & occupancy.lookup(m["occ_head"], row, x01))

    def head_query(r, t):
        x01 = (g["o_h"][r] + t[:, None] * g["d_h"][r] - g["center"][r]) / (2 * g["radius"][r, None]) + 0.5
        with half:
            sigma, rgb = fields[0](x01, c["unit_h"], c["z_shape"], c["z_app"], c["drive"], r)
        return sigma.float() / (2 * g["radius"][r]), rgb

    def torso_live(t):  # the torso at its coarser step's midpoint, held over the fine samples
        t = march.coarse_t(t, m["t0"][:, None], m["dt"][:, None], m["stride"][:, None])
        x01 = rays.normalize_to_unit(t[..., None] * g["dirs"][:, None], g["lo"][:, None], g["hi"][:, None])
        return (((x01 >= 0) & (x01 <= 1)).all(-1) & g["hit_t"][:, None] & (t >= g["near_t"][:, None])
                & (t <= g["far_t"][:, None]) & occupancy.lookup(m["occ_torso"], row, x01))

    def torso_query(r, t):
        t = march.coarse_t(t, m["t0"][r], m["dt"][r], m["stride"][r])
        x01 = rays.normalize_to_unit(t[:, None] * g["dirs"][r], g["lo"][r], g["hi"][r])
        with half:
            sigma, rgb, _ = fields[1](x01, c["unit"], c["et"], c["z_shape"], c["z_app"], r)
        return sigma.float() / 0.7, rgb

    fs = [march.MarchField(head_live, head_query)] + ([march.MarchField(torso_live, torso_query)]
                                                      if len(fields) > 1 else [])
    with torch.no_grad():
        out = march.march(fs, m["t0"], m["dt"], m["n_steps"], stop_depth)
    out["head_acc"] = out["field_acc"][0]
    out["torso_acc"] = out["field_acc"][1] if len(fields) > 1 else torch.zeros_like(out["acc"])
    return out


def _fused(fields, g, c, m, stop_depth, half=False):
    return fused_march.march_fused(fields[0], fields[1] if len(fields) > 1 else None, g, c, m["t0"], m["dt"],
                                   m["n_steps"], m["row"], m["occ_head"], m["occ_torso"], stop_depth, 0.7, half,
                                   m["stride"])


def _close(out, ref, tol):
    for k in ("rgb", "head_acc", "torso_acc"):
        torch.testing.assert_close(out[k], ref[k], atol=tol, rtol=0)


def test_the_fused_kernel_marches_the_head_as_the_pytorch_marcher_does(dev):
    fields, g, c, m = _scene(dev)
    ref, out = _reference(fields, g, c, m, 0.0), _fused(fields, g, c, m, 0.0)
    hit = g["hit_h"]
    assert 20 < int(hit.sum()) < len(hit) and (ref["samples"][hit] > 0).float().mean() > 0.8
    assert 0.05 < ref["acc"][hit].mean() < 0.95  # translucent: every sample counts
    _close(out, ref, TOL)
    # the same samples: live where the marcher's are (a GPU may round a sample on a cell's edge the other way)
    assert (out["samples"] != ref["samples"]).float().mean() <= (0.02 if dev.type == "cuda" else 0.0)
    assert (out["samples"][~hit] == 0).all() and (out["head_acc"][~hit] == 0).all()


def test_the_fused_kernel_marches_head_and_torso_together_as_the_pytorch_marcher_does(dev):
    fields, g, c, m = _scene(dev, seed=3, torso=True)
    ref, out = _reference(fields, g, c, m, 0.0), _fused(fields, g, c, m, 0.0)
    both = g["hit_h"] & g["hit_t"]
    assert both.sum() > 12 and ref["head_acc"][both].mean() > 0.05 and ref["torso_acc"][both].mean() > 0.05
    _close(out, ref, TOL)
    # the kernel queries the torso once per stride (the marcher at every fine sample, at the same point)
    two = (m["stride"] == 2) & g["hit_t"]
    assert two.sum() > 5 and (out["samples"] <= ref["samples"]).all()
    assert out["samples"][two].sum() < 0.8 * ref["samples"][two].sum()


def test_the_fused_kernel_stops_opaque_rays_and_keeps_their_colour(dev):
    fields, g, c, m = _scene(dev, bias=6.0, seed=1, torso=True)  # dense: rays turn opaque a few samples in
    ref, out = _reference(fields, g, c, m, 20.0), _fused(fields, g, c, m, 20.0)
    full = _reference(fields, g, c, m, 0.0)
    hit = g["hit_h"] | g["hit_t"]
    assert (ref["acc"][hit] > 0.999).float().mean() > 0.5
    # it stops at the sample (the marcher at the end of its round of 16), so it queries no more than the marcher
    assert (out["samples"] <= ref["samples"]).all() and out["samples"].sum() < 0.8 * full["samples"].sum()
    _close(out, full, TOL)


def test_the_fused_kernel_in_float16_is_the_autocast_march(dev):
    fields, g, c, m = _scene(dev, hidden=32, seed=2, torso=True, steps=8)
    ref, out = _reference(fields, g, c, m, 20.0, amp=True), _fused(fields, g, c, m, 20.0, half=True)
    # float16 layers on both sides, rounded at different points: colours agree to a few float16 ulps
    _close(out, ref, 4e-3)


@pytest.mark.slow  # a speed-up's bookkeeping, in the interpreter (11 s)
def test_the_kernels_model_tensors_are_kept_between_calls_and_remade_when_the_weights_change(dev):
    """The per-model arguments (transposed and padded layers, the grid's level tables) are made once per model, not
    at every call of a render; an optimizer step or a loaded state (in-place changes) makes them again."""
    fields, g, c, m = _scene(dev, seed=3, torso=True)
    cond = torch.cat([c["z_shape"], c["drive"]], -1)
    view = torch.zeros(len(cond), fields[0].color[0].in_features - fields[0].density[4].out_features + 1, device=dev)
    k = fields[0].encoding.output_dim
    first = fused_march._field_tensors(fields[0], k, cond, view, False)
    again = fused_march._field_tensors(fields[0], k, cond, view, False)
    assert all(a is b for a, b in zip(first[2:], again[2:]))  # the same tensors: nothing copied again
    assert fused_march._field_tensors(fields[0], k, cond, view, True)[7] is not first[7]  # float16 layers apart
    _fused(fields, g, c, m, 0.0)
    with torch.no_grad():  # as an optimizer step would: in place, in both fields and the torso's warp
        for f in fields:
            f.density[2].weight.mul_(1.5)
            f.encoding.tables.add_(0.25)
        fields[1].deform[2].weight.mul_(2.0)
    assert fused_march._field_tensors(fields[0], k, cond, view, False)[7] is not first[7]
    _close(_fused(fields, g, c, m, 0.0), _reference(fields, g, c, m, 0.0), TOL)


@pytest.mark.parametrize("mode,track", [pytest.param("per_person", False, marks=pytest.mark.slow),
                                        pytest.param("shared", False, marks=pytest.mark.slow), ("shared", True)])
def test_a_models_marched_render_is_the_same_with_the_fused_kernel(dev, mode, track):
    """Also with a tracked torso: the kernel reads the volume torso along each ray's moved direction, without the
    learned warp (the rendered person is tracked, the other not)."""
    from nerf.render import render_frame

    model, persons = _model(dev, mode, track)
    assert model.torso_motion.pose_gate.tolist() == ([1.0, 0.0] if track else [1.0, 1.0])
    calls = []
    real = fused_march.march_fused
    fused_march.march_fused = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback, and no warning when the kernel is turned off
            fused = [render_frame(model, p, 2) for p in persons[-1:]]  # (the interpreter is slow)
            model.render_cfg.fused = False
            plain = [render_frame(model, p, 2) for p in persons[-1:]]
    finally:
        fused_march.march_fused = real
    assert len(calls) == len(plain)  # one kernel launch per person's frame (one chunk of rays)
    for a, b in zip(fused, plain):
        assert b["head_acc"].max() > 0.2 and b["torso_acc"].max() > 0.2
        for k in ("rgb", "head_acc", "torso_acc"):
            torch.testing.assert_close(a[k], b[k], atol=TOL, rtol=0)
    # the kernel's first render was checked against the PyTorch marcher, once for this shape and precision
    (db,) = fused_march.checks.values()
    assert db > (46.0 if torch.cuda.is_available() else 100.0)


def _model(dev, mode="shared", track=False):
    """A small two-person model with lively random weights and its occupancy grid (8 marching steps)."""
    from test_nerf_model import TINY, _person

    from nerf.model import AvatarModel, RenderConfig

    torch.manual_seed(0)
    persons = [_person(0, T=10), _person(1, T=10)]
    for p in persons:
        p.background = torch.rand(16, 16, 3)
    if track:  # a turn, a stretch and a shift per frame
        a = torch.linspace(-0.2, 0.2, 10)
        persons[1].torso_motion = torch.stack([torch.cos(a) * 1.05, -torch.sin(a), 0.1 * a, torch.sin(a),
                                               torch.cos(a), -0.05 + 0 * a], -1)
    model = AvatarModel(persons, FieldConfig(head_grid=TINY, torso_grid=TINY, hidden=16, expr_dim=4),
                        RenderConfig(8, 8, march_steps=8), mode=mode).to(dev)
    with torch.no_grad():
        for f in [*model.head, *model.torso]:
            f.encoding.tables.uniform_(-1.0, 1.0)
        for f in model.torso:  # a warp that moves points (it starts as the identity)
            f.deform[-1].weight.normal_(0.0, 0.3)
    model.occupancy = occupancy.build(model, persons, resolution=8)
    return model, persons


def test_a_kernel_that_renders_wrong_is_caught_at_its_first_render_and_not_used_again(dev, monkeypatch):
    """What a miscompiled kernel on a user's GPU would do: draw a slightly wrong picture without an error. The
    first render's check catches it, warns once, and that render and every later one are the PyTorch marcher's."""
    from nerf.render import render_frame

    model, persons = _model(dev)
    real, calls = fused_march._launch, []

    def wrong(*a, **k):  # the right kernel, then every colour a tenth too dark
        calls.append(1)
        out = real(*a, **k)
        out["rgb"] *= 0.9
        return out

    monkeypatch.setattr(fused_march, "_launch", wrong)
    with pytest.warns(UserWarning, match="failed its check.*disagrees with the PyTorch marcher"):
        first = render_frame(model, persons[1], 2)
    assert len(calls) == 1 and fused_march._broken and not fused_march.checks
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning was said once
        again = render_frame(model, persons[1], 2)
    assert len(calls) == 1  # the kernel is not launched again in this process
    model.render_cfg.fused = False
    plain = render_frame(model, persons[1], 2)
    for k in ("rgb", "head_acc", "torso_acc"):
        torch.testing.assert_close(first[k], plain[k], atol=0, rtol=0)
        torch.testing.assert_close(again[k], plain[k], atol=0, rtol=0)


def test_the_check_compares_rays_with_samples_once_per_kernel():
    """``verify`` alone (no kernel): up to CHECK_RAYS rays that have samples, spread over the call, rendered again;
    a disagreement of rounding size passes, a wrong colour fails, a checked key is not checked again."""
    g = torch.Generator().manual_seed(0)
    R = 1000
    n_steps = (torch.rand(R, generator=g) > 0.3).long() * 5  # some rays have no samples
    cast = n_steps > 0
    ref = {"rgb": torch.rand(R, 3, generator=g), "head_acc": torch.rand(R, generator=g),
           "torso_acc": torch.rand(R, generator=g)}
    seen = []

    def reference(pick):
        seen.append(pick)
        return {k: v[pick] for k, v in ref.items()}

    close = {k: v + 1e-4 * torch.randn(v.shape, generator=g) for k, v in ref.items()}  # 80 dB
    assert fused_march.verify(("a",), close, reference, n_steps)
    (pick,) = seen
    assert len(pick) == len(pick.unique()) == fused_march.CHECK_RAYS and bool(cast[pick].all())
    assert pick.min() < R // 10 and pick.max() > R - R // 10  # spread over the call
    assert 79 < fused_march.checks[("a",)] < 81
    assert fused_march.verify(("a",), {k: v * 0 for k, v in ref.items()}, reference, n_steps)  # checked: trusted
    assert len(seen) == 1
    for name in ref:  # colour or either opacity a tenth off: each is compared on its own
        fused_march._broken.clear()
        fused_march._warned.clear()
        with pytest.warns(UserWarning, match="disagrees"):
            assert not fused_march.verify((name,), dict(close, **{name: ref[name] * 0.9}), reference, n_steps)
        assert (name,) not in fused_march.checks and fused_march._broken
    # no rays with samples: nothing to compare, nothing recorded
    assert fused_march.verify(("c",), close, reference, torch.zeros(R, dtype=torch.long))
    assert ("c",) not in fused_march.checks


def test_without_a_gpu_or_the_interpreter_or_for_other_shapes_the_model_marches_with_pytorch(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ok, why = fused_march.available(torch.device("cpu"))
    assert not ok and "CUDA" in why
    field = HeadField(FieldConfig(head_grid=HashGridConfig(n_features_per_level=4, n_levels=2,
                                                           log2_hashmap_size=8, base_resolution=4), hidden=16))
    ok, why = fused_march.supports(field)
    assert not ok and "4 features" in why
    ok, why = fused_march.supports(HeadField(FieldConfig(hidden=48)))
    assert not ok and "hidden width 48" in why


def test_the_renderer_passes_rays_in_8x8_squares():
    from nerf.render import tile_order

    S = 20  # 2.5 squares per side: the last column and row of squares are partial
    v, u = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    order = tile_order(u.flatten(), v.flatten(), S)
    assert torch.equal(order.sort().values, torch.arange(S * S))  # a permutation
    uo, vo = u.flatten()[order], v.flatten()[order]
    assert (uo[:64] < 8).all() and (vo[:64] < 8).all()  # the first block of rays is the first square
    assert ((uo[64:128] >= 8) & (uo[64:128] < 16) & (vo[64:128] < 8)).all()
    assert ((uo[128:160] >= 16) & (vo[128:160] < 8)).all()  # the partial square closes the first row of squares
    # a masked subset (the rays that meet a field) keeps the squares' order
    keep = (u + v).flatten() % 3 != 0
    sub = tile_order(u.flatten()[keep], v.flatten()[keep], S)
    assert torch.equal(keep.nonzero()[:, 0][sub], order[keep[order]])
