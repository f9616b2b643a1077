"""The fused head-marching kernel (nerf/fused_march.py) against the PyTorch marcher (nerf/march.py).

On a GPU the kernel is compiled; on the CPU box Triton's interpreter runs the same kernel source
(``TRITON_INTERPRET=1``), so CI checks the arithmetic without a GPU. Skipped where triton is absent.
Triton reads that setting when it is imported (its own library functions are decorated then), so this module
sets it at collection, before anything imports triton.
"""

import os
import warnings

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from nerf import fused_march, march, occupancy, rays  # noqa: E402
from nerf.encoding import HashGridConfig  # noqa: E402
from nerf.fields import FieldConfig, HeadField  # noqa: E402

# dense levels (res 4, 7) and hashed ones (res 13, 23 > 10 = 2^10 ** (1/3)), wrap-around at the top face included
GRID = HashGridConfig(n_levels=4, log2_hashmap_size=10, base_resolution=4, finest_resolution=23)


@pytest.fixture
def dev():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _scene(dev, R=150, hidden=16, bias=0.0, seed=0):
    """A head field with lively random weights, R rays of two persons through their head spheres (some miss),
    an occupancy grid with empty cells, per-ray codes."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    field = HeadField(FieldConfig(head_grid=GRID, hidden=hidden, hash_backend="torch"))
    with torch.no_grad():
        field.encoding.tables.uniform_(-1.0, 1.0, generator=g)
        field.density[-1].bias[0] += bias
    field = field.to(dev).eval()
    row = torch.randint(0, 2, (R,), generator=g)
    center = torch.tensor([[0.0, 0.02, 0.0], [0.01, -0.03, 0.02]])[row]
    radius = torch.tensor([0.2, 0.25])[row]
    o_h = torch.tensor([0.0, 0.0, -3.0]) + 0.05 * torch.randn(R, 3, generator=g)
    aim = center + radius[:, None] * 1.3 * (2 * torch.rand(R, 3, generator=g) - 1)  # some rays miss
    d_h = aim - o_h
    d_h = d_h / d_h.norm(dim=-1, keepdim=True) * (1 + 0.1 * torch.rand(R, 1, generator=g))  # not unit: as R^T dirs
    near, far, hit = rays.sphere_interval(o_h, d_h, center, radius)
    far = torch.maximum(far, near)
    dt = 2 * radius / 24
    t0 = torch.where(hit, near, 0.0)
    n_steps = torch.where(hit, torch.ceil((far - t0) / dt), 0).long()
    grid = torch.rand(2, 8, 8, 8, generator=g) < 0.7
    codes = {"unit_h": d_h / d_h.norm(dim=-1, keepdim=True), "z_shape": torch.randn(R, 16, generator=g),
             "z_app": torch.randn(R, 16, generator=g), "drive": torch.randn(R, 32, generator=g)}
    scene = {"o_h": o_h, "d_h": d_h, "center": center, "radius": radius, "t0": t0, "dt": dt, "n_steps": n_steps,
             "near": near, "far": far, "hit": hit, "row": row, "grid": grid, **codes}
    return field, {k: v.to(dev) for k, v in scene.items()}


def _reference(field, s, stop_depth, amp=False):
    """What ``AvatarModel._march`` does for the head field, with ``nerf.march``."""
    def live(t):
        x01 = (s["o_h"][:, None] + t[..., None] * s["d_h"][:, None] - s["center"][:, None]) \
            / (2 * s["radius"][:, None, None]) + 0.5
        return (((x01 >= 0) & (x01 <= 1)).all(-1) & s["hit"][:, None] & (t >= s["near"][:, None])
                & (t <= s["far"][:, None]) & occupancy.lookup(s["grid"], s["row"], x01))

    def query(r, t):
        x01 = (s["o_h"][r] + t[:, None] * s["d_h"][r] - s["center"][r]) / (2 * s["radius"][r, None]) + 0.5
        with torch.autocast(x01.device.type, dtype=torch.float16, enabled=amp):
            sigma, rgb = field(x01, s["unit_h"], s["z_shape"], s["z_app"], s["drive"], r)
        return sigma.float() / (2 * s["radius"][r]), rgb

    with torch.no_grad():
        return march.march([march.MarchField(live, query)], s["t0"], s["dt"], s["n_steps"], stop_depth)


def _fused(field, s, stop_depth, half=False):
    return fused_march.march_head(field, s["o_h"], s["d_h"], s["center"], s["radius"], s["t0"], s["dt"],
                                  s["n_steps"], s["near"], s["far"], s["row"], s["grid"], s["unit_h"], s["z_shape"],
                                  s["z_app"], s["drive"], stop_depth=stop_depth, half=half)


def test_the_fused_kernel_marches_the_head_as_the_pytorch_marcher_does(dev):
    field, s = _scene(dev)
    ref, out = _reference(field, s, 0.0), _fused(field, s, 0.0)
    hit = s["hit"]
    assert 20 < int(hit.sum()) < len(hit) and (ref["samples"][hit] > 0).float().mean() > 0.8
    assert 0.05 < ref["acc"][hit].mean() < 0.95  # translucent: every sample counts
    # float32 throughout (TF32 matrix products on a GPU); on the CPU the same operations in the same order
    tol = 2e-3 if dev.type == "cuda" else 2e-5
    torch.testing.assert_close(out["rgb"], ref["rgb"][:, :3], atol=tol, rtol=0)
    torch.testing.assert_close(out["acc"], ref["acc"], atol=tol, rtol=0)
    # the same samples: live where the marcher's are (a GPU may round a sample on a cell's edge the other way)
    assert (out["samples"] != ref["samples"]).float().mean() <= (0.02 if dev.type == "cuda" else 0.0)
    assert (out["samples"][~hit] == 0).all() and (out["acc"][~hit] == 0).all()


def test_the_fused_kernel_stops_opaque_rays_and_keeps_their_colour(dev):
    field, s = _scene(dev, bias=6.0, seed=1)  # dense: rays turn opaque a few samples in
    ref, out = _reference(field, s, 20.0), _fused(field, s, 20.0)
    full = _reference(field, s, 0.0)
    hit = s["hit"]
    assert (ref["acc"][hit] > 0.999).float().mean() > 0.5
    # it stops at the sample (the marcher at the end of its round of 16), so it queries no more than the marcher
    assert (out["samples"] <= ref["samples"]).all() and out["samples"].sum() < 0.8 * full["samples"].sum()
    tol = 2e-3 if dev.type == "cuda" else 2e-5
    torch.testing.assert_close(out["rgb"], full["rgb"], atol=tol, rtol=0)
    torch.testing.assert_close(out["acc"], full["acc"], atol=tol, rtol=0)


def test_the_fused_kernel_in_float16_is_the_autocast_march(dev):
    field, s = _scene(dev, hidden=32, seed=2)
    ref, out = _reference(field, s, 20.0, amp=True), _fused(field, s, 20.0, half=True)
    # float16 layers on both sides, rounded at different points: colours agree to a few float16 ulps
    torch.testing.assert_close(out["rgb"], ref["rgb"], atol=4e-3, rtol=0)
    torch.testing.assert_close(out["acc"], ref["acc"], atol=4e-3, rtol=0)


def test_a_layer_models_marched_render_is_the_same_with_the_fused_kernel(dev):
    from test_nerf_model import TINY, _person

    from nerf.model import AvatarModel, RenderConfig
    from nerf.render import render_frame

    torch.manual_seed(0)
    persons = [_person(0), _person(1)]
    for p in persons:
        p.background = torch.rand(16, 16, 3)
    model = AvatarModel(persons, FieldConfig(head_grid=TINY, torso_grid=TINY, hidden=16, expr_dim=4),
                        RenderConfig(8, 8, march_steps=24), mode="per_person", torso_layer=True).to(dev)
    with torch.no_grad():
        for f in model.head:
            f.encoding.tables.uniform_(-1.0, 1.0)
    model.occupancy = occupancy.build(model, persons, resolution=8)
    calls = []
    real = fused_march.march_head
    fused_march.march_head = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback
            fused = [render_frame(model, p, 2) for p in persons]
        model.render_cfg.fused = False
        plain = [render_frame(model, p, 2) for p in persons]
    finally:
        fused_march.march_head = real
    assert len(calls) == 2  # one kernel launch per person's frame (the model is per_person: one per net)
    tol = 2e-3 if dev.type == "cuda" else 2e-5
    for a, b in zip(fused, plain):
        assert b["head_acc"].max() > 0.2
        for k in ("rgb", "head_acc", "torso_acc"):
            torch.testing.assert_close(a[k], b[k], atol=tol, rtol=0)


def test_without_a_gpu_or_the_interpreter_or_for_other_shapes_the_model_marches_with_pytorch(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ok, why = fused_march.available(torch.device("cpu"))
    assert not ok and "CUDA" in why
    field = HeadField(FieldConfig(head_grid=HashGridConfig(n_features_per_level=4, n_levels=2,
                                                           log2_hashmap_size=8, base_resolution=4), hidden=16))
    ok, why = fused_march.supports(field)
    assert not ok and "4 features" in why
