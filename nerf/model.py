"""The avatar model: latent codes, driving encoders, head and torso fields, and the joint render.

One network for every person (``mode="shared"``, the paper's claim) or one per person
(``mode="per_person"``, the AD-NeRF-style baseline in the same code). Rendering a ray:
stratified then importance samples through the head field (in head space, moved there
by the inverse head pose) and through the torso field (camera space); both sample sets
merge by depth and composite once over the person's background plate. The torso's points are read
through its tracked image motion (``torso_motion``), or the one its head pose predicts.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch import nn

from nerf import march, occupancy, rays, sampler, volrend
from nerf.data import PersonFrames, RayBatch
from nerf.fields import AudioDrive, ExpressionEncoder, FieldConfig, HeadField, TorsoField
from nerf.torso import TorsoMotion

TORSO_HALF_DEPTH = 0.35  # the torso box's half depth (head units): its sample spacing is measured in it
@dataclasses.dataclass
class RenderConfig:
    """Samples per ray and per field."""

    n_coarse: int = 32
    """Stratified samples per field."""
    n_importance: int = 32
    """Importance samples per field, from the coarse weights."""
    stop_depth: float = 20.0
    """Rendering (no gradient) skips the importance samples lying behind coarse intervals, of both fields,
    whose optical depth sums past this (transmittance e^-20, about 2e-9; 0: never): such samples cannot
    show; the margin covers coarse estimates up to several times too dense. Marching stops a ray there."""
    march_steps: int = 0
    """Rendering with an occupancy grid set: 0 samples as training does (stratified + importance); N > 0
    marches instead (``nerf.march``): a fixed step of (the smaller of the head sphere's diameter and the torso
    box's depth) / N, the torso held over the whole multiple of that step nearest its depth / N
    (``march.coarse_t``), only samples in occupied cells queried, each ray stopped once opaque."""
    march_round: int = 16
    """Marching: live samples per ray queried per round (fewer: less work behind opaque surfaces, more rounds)."""
    fused: bool = True
    """Marching: with the fused Triton kernel (``nerf.fused_march``) where it can run (a CUDA device with triton),
    else with ``nerf.march`` (the same picture)."""


class AvatarModel(nn.Module):
    """Latent codes and fields for P persons; renders ray batches of ``nerf.data.sample_rays``.

    Per-person buffers (head sphere, torso box, and the torso motion model's pose statistics and motion map) are
    derived from the persons' tracks when a model is built for training and saved in its state dict, so a checkpoint
    renders without them.
    """

    def __init__(self, persons: list[PersonFrames], cfg: FieldConfig, render: RenderConfig, mode: str = "shared"):
        super().__init__()
        if mode not in ("shared", "per_person"):
            raise ValueError(f"model mode must be shared or per_person, not {mode!r}")
        self.cfg, self.render_cfg, self.mode = cfg, render, mode
        P = len(persons)
        self.image_size = persons[0].size
        if any(p.size != self.image_size for p in persons):
            raise ValueError("all persons must be loaded at one image size")
        self.z_shape = nn.Embedding(P, cfg.shape_dim)
        self.z_app = nn.Embedding(P, cfg.app_dim)
        nn.init.normal_(self.z_shape.weight, std=0.1)
        nn.init.normal_(self.z_app.weight, std=0.1)
        n_nets = 1 if mode == "shared" else P
        self.head = nn.ModuleList(HeadField(cfg) for _ in range(n_nets))
        self.torso = nn.ModuleList(TorsoField(cfg) for _ in range(n_nets))
        self.audio = nn.ModuleList(AudioDrive(cfg.audio_dim, cfg.drive_dim, cfg.hidden, cfg.audio_window)
                                   for _ in range(n_nets))
        self.expr = nn.ModuleList(ExpressionEncoder(cfg.expr_dim, cfg.drive_dim, cfg.hidden) for _ in range(n_nets))
        self.occupancy: occupancy.OccupancyGrid | None = None
        """Set for rendering (``nerf.occupancy.build``, or the checkpoint's grid): empty cells are skipped."""
        b = [p.bounds for p in persons]
        self.register_buffer("head_center", torch.tensor([x.head_center for x in b], dtype=torch.float32))
        self.register_buffer("head_radius", torch.tensor([x.head_radius for x in b], dtype=torch.float32))
        self.register_buffer("torso_min", torch.tensor([x.torso_min for x in b], dtype=torch.float32))
        self.register_buffer("torso_max", torch.tensor([x.torso_max for x in b], dtype=torch.float32))
        self.torso_motion = TorsoMotion(persons, self.image_size)
        """Each person's torso motion model (``nerf.torso``): how the torso's points are read, and its pose input."""

    def hash_parameters(self) -> list[nn.Parameter]:
        """The hash tables (trained at a higher learning rate, as instant-ngp does)."""
        return [p for f in [*self.head, *self.torso] for p in f.encoding.parameters()]

    def _net(self, row: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """(network index, ray mask) pairs: one network for all, or each person's own."""
        if self.mode == "shared":
            return [(0, torch.ones_like(row, dtype=torch.bool))]
        return [(int(i), row == i) for i in torch.unique(row)]

    def drive_code(self, net: int, batch: RayBatch) -> torch.Tensor:
        """[R, drive_dim]: the audio drive where the person speaks, the expression code where it listens.

        Rays of one (person, frame) share their audio window (``batch.audio`` holds one per pair,
        ``batch.pair`` says whose), so the attention runs once per pair.
        """
        a = self.audio[net](batch.audio).index_select(0, batch.pair)
        e = self.expr[net](batch.expr)
        return torch.where(batch.speaking[:, None], a, e)

    def ray_hits(self, batch: RayBatch) -> torch.Tensor:
        """[R] bool: whether a ray meets its person's head sphere or torso box (with an occupancy grid set:
        crosses an occupied cell of either); the others show the background."""
        g = self._geometry(batch, cull=True)
        return g["hit_h"] | g["hit_t"]

    def _geometry(self, b: RayBatch, cull: bool = False) -> dict[str, torch.Tensor]:
        """Each ray in head space and camera space, and its interval through each field's domain (float32).

        With ``cull`` and an occupancy grid set (rendering), a ray that crosses no occupied cell of a field
        misses it (probed at 4 G points along the interval, at most about 0.43 cell apart; the grid is
        dilated by a cell, which covers a corner the probes step over). Inside ``_render`` this is not
        needed: a sample in an empty cell is skipped anyway.
        """
        row = b.row
        dirs = rays.pixel_rays(b.u, b.v, b.focal, self.image_size)
        o_h, d_h = rays.to_head_space(dirs, b.R, b.t)
        center, radius = self.head_center[row], self.head_radius[row]
        near_h, far_h, hit_h = rays.sphere_interval(o_h, d_h, center, radius)
        lo, hi = self.torso_min[row], self.torso_max[row]
        near_t, far_t, hit_t = rays.box_interval(torch.zeros_like(dirs), dirs, lo, hi)
        far_h, far_t = torch.maximum(far_h, near_h), torch.maximum(far_t, near_t)
        head_01 = lambda t: (o_h[:, None] + t[..., None] * d_h[:, None] - center[:, None]) \
            / (2 * radius[:, None, None]) + 0.5  # noqa: E731
        torso_01 = lambda t: rays.normalize_to_unit(t[..., None] * dirs[:, None], lo[:, None], hi[:, None])  # noqa: E731
        occ = self.occupancy
        if cull and occ is not None:  # a ray that crosses no occupied cell of a field cannot see it
            hit_h = hit_h & _crosses_occupied(occ.head, row, head_01, near_h, far_h)
            hit_t = hit_t & _crosses_occupied(occ.torso, row, torso_01, near_t, far_t)
        return {"dirs": dirs, "focal": b.focal, "o_h": o_h, "d_h": d_h, "center": center, "radius": radius,
                "lo": lo, "hi": hi,
                "near_h": near_h, "far_h": far_h, "hit_h": hit_h,
                "near_t": near_t, "far_t": far_t, "hit_t": hit_t, "head_01": head_01, "torso_01": torso_01}

    def forward(self, batch: RayBatch, jitter: bool = True,
                gen: torch.Generator | None = None, amp: bool = False) -> dict[str, torch.Tensor]:
        """Render a ray batch.

        Args:
            amp: the field queries (hash-grid features aside) run under float16 autocast; the ray geometry,
                sampling and compositing stay float32.

        Returns:
            rgb [R, 3] composited over the background; head_acc, torso_acc [R] opacities of
            each field; offset_sq [R] mean squared torso warp over the ray's samples (0 outside the torso box);
            torso_hit [R] 1.0 where the ray meets the torso field, else 0.0; when marching (rendering with
            ``render_cfg.march_steps`` and an occupancy grid set), also samples [R], the field queries made.
        """
        if self.mode == "shared":  # one network renders every ray: no split, no scatter back
            return self._render(0, batch, jitter, gen, amp)
        dev = batch.row.device
        out = {k: torch.zeros(len(batch), *s, device=dev) for k, s in
               (("rgb", (3,)), ("head_acc", ()), ("torso_acc", ()), ("offset_sq", ()), ("torso_hit", ()))}
        for net, mask in self._net(batch.row):
            part = batch.select(mask)
            for k, v in self._render(net, part, jitter, gen, amp).items():
                base = out[k] if k in out else v.new_zeros(len(batch.row), *v.shape[1:])
                out[k] = base.index_put((mask,), v)
        return out

    def _conditions(self, net: int, b: RayBatch, g: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per ray: the view directions of each field (head space, camera space), the latent codes, the drive and
        the torso's pose input."""
        row = b.row
        tm = self.torso_motion
        et = tm.pose_input(torch.cat([b.euler, b.t], -1), row)
        return {"unit_h": g["d_h"] / g["d_h"].norm(dim=-1, keepdim=True),
                "unit": g["dirs"] / g["dirs"].norm(dim=-1, keepdim=True),
                "z_shape": self.z_shape(row), "z_app": self.z_app(row), "drive": self.drive_code(net, b), "et": et,
                "motion": tm(b.row, b.euler, b.t, b.torso_motion), "warp": tm.pose_gate[row] if tm.gated else None}

    def _render(self, net: int, b: RayBatch, jitter: bool, gen,
                amp: bool = False) -> dict[str, torch.Tensor]:
        if self.render_cfg.march_steps > 0 and self.occupancy is not None and not torch.is_grad_enabled():
            return self._march(net, b, amp)
        row = b.row
        g = self._geometry(b)
        radius = g["radius"]
        hit_h, hit_t = g["hit_h"], g["hit_t"]
        # Head: rays in head space through the person's head sphere; torso: camera-space rays through its box.
        c = self._conditions(net, b, g)
        unit, unit_h, z_shape, z_app, drive, et = c["unit"], c["unit_h"], c["z_shape"], c["z_app"], c["drive"], c["et"]

        occ = self.occupancy

        def live_samples(x01, hit, grid, hidden):
            """(ray, sample) indices worth a field query: inside the field's domain, on a ray that meets it,
            (when rendering with an occupancy grid) in a cell that can hold density, and not hidden."""
            live = ((x01 >= 0) & (x01 <= 1)).all(-1) & hit[:, None]
            if grid is not None:
                live &= occupancy.lookup(grid, row, x01)
            if hidden is not None:
                live &= ~hidden
            return live.nonzero(as_tuple=True)

        def scatter(values, ray, k, shape):
            """Per-live-sample values back into the dense float32 [R, S, ...] layout (zeros elsewhere: weight 0)."""
            return values.new_zeros(shape + values.shape[1:], dtype=torch.float32).index_put((ray, k), values.float())

        half = torch.autocast(row.device.type, dtype=torch.float16, enabled=amp)

        def head_query(t, hidden=None):
            x01 = g["head_01"](t)
            ray, k = live_samples(x01, hit_h, occ.head if occ is not None else None, hidden)
            with half:
                sigma, rgb = self.head[net](x01[ray, k], unit_h, z_shape, z_app, drive, ray)
            return scatter(sigma, ray, k, t.shape), scatter(rgb, ray, k, t.shape), None

        def torso_query(t, hidden=None):
            x01 = g["torso_01"](t)
            ray, k = live_samples(x01, hit_t, occ.torso if occ is not None else None, hidden)
            x = self.torso_motion.track_points(x01[ray, k], g["lo"], g["hi"], c["motion"], b.focal, ray)
            with half:
                sigma, rgb, offset = self.torso[net](x, unit, et, z_shape, z_app, ray, c["warp"])
            return scatter(sigma, ray, k, t.shape), scatter(rgb, ray, k, t.shape), scatter(offset, ray, k, t.shape)

        head, torso = self._field_samples(
            [(head_query, g["near_h"], g["far_h"], 2 * radius),
             (torso_query, g["near_t"], g["far_t"], torch.full_like(g["near_t"], 2 * TORSO_HALF_DEPTH))],
            jitter, gen)
        t, vals, source = volrend.merge_by_depth(
            head["t"], {"sigma": head["sigma"], "rgb": head["rgb"], "delta": head["delta"]},
            torso["t"], {"sigma": torso["sigma"], "rgb": torso["rgb"], "delta": torso["delta"]})
        weights = volrend.render_weights(vals["sigma"], vals["delta"])
        rgb = volrend.accumulate(weights, vals["rgb"])
        acc = weights.sum(-1)
        out = {"rgb": volrend.composite_over(rgb, acc, b.background),
               "head_acc": (weights * (source == 0)).sum(-1), "torso_acc": (weights * (source == 1)).sum(-1),
               "offset_sq": (torso["offset"] ** 2).sum(-1).mean(-1), "torso_hit": hit_t.float()}
        return out

    def _march(self, net: int, b: RayBatch, amp: bool = False) -> dict[str, torch.Tensor]:
        """Render (no gradient) by occupancy-grid marching (``nerf.march``): both fields on one fixed step along
        each ray, only samples in occupied cells queried, each ray stopped once opaque. Densities enter per
        unit t: the head's divided by the sphere's diameter, the torso's by the box's depth, as the sampler's
        deltas are measured."""
        rc, occ, row = self.render_cfg, self.occupancy, b.row
        g = self._geometry(b)
        c = self._conditions(net, b, g)
        hit_h, hit_t, radius = g["hit_h"], g["hit_t"], g["radius"]
        inf = torch.full_like(g["near_h"], float("inf"))
        t0 = torch.minimum(torch.where(hit_h, g["near_h"], inf), torch.where(hit_t, g["near_t"], inf))
        t1 = torch.maximum(torch.where(hit_h, g["far_h"], -inf), torch.where(hit_t, g["far_t"], -inf))
        hit = hit_h | hit_t
        t0, t1 = torch.where(hit, t0, 0.0), torch.where(hit, t1, 0.0)
        dt = torch.minimum(2 * radius, torch.full_like(radius, 2 * TORSO_HALF_DEPTH)) / rc.march_steps
        n_steps = torch.ceil((t1 - t0) / dt).clamp_min(0).long()
        # the torso's own step: the whole multiple of dt nearest its depth / N (about 2 for a head 0.35 deep)
        stride = torch.round(2 * TORSO_HALF_DEPTH / (dt * rc.march_steps)).clamp_min(1.0)
        half = torch.autocast(row.device.type, dtype=torch.float16, enabled=amp)

        def live(to_unit, grid, hit, near, far):
            def test(t):
                x01 = to_unit(t)
                return (((x01 >= 0) & (x01 <= 1)).all(-1) & hit[:, None] & (t >= near[:, None]) & (t <= far[:, None])
                        & occupancy.lookup(grid, row, x01))
            return test

        def head(r, t):
            x01 = (g["o_h"][r] + t[:, None] * g["d_h"][r] - g["center"][r]) / (2 * radius[r, None]) + 0.5
            with half:
                sigma, rgb = self.head[net](x01, c["unit_h"], c["z_shape"], c["z_app"], c["drive"], r)
            return sigma.float() / (2 * radius[r]), rgb

        def torso_live(t):  # at the midpoint of its coarser step, held over its fine samples
            t = march.coarse_t(t, t0[:, None], dt[:, None], stride[:, None])
            return live(g["torso_01"], occ.torso, hit_t, g["near_t"], g["far_t"])(t)

        def torso(r, t):
            t = march.coarse_t(t, t0[r], dt[r], stride[r])
            x01 = self.torso_motion.track_points(rays.normalize_to_unit(t[:, None] * g["dirs"][r], g["lo"][r],
                                                                        g["hi"][r]), g["lo"], g["hi"], c["motion"],
                                                 b.focal, r)
            with half:
                sigma, rgb, _ = self.torso[net](x01, c["unit"], c["et"], c["z_shape"], c["z_app"], r, c["warp"])
            return sigma.float() / (2 * TORSO_HALF_DEPTH), rgb

        out = self._march_fused(net, g, c, t0, dt, n_steps, stride, row, amp)
        if out is not None:  # a kernel's first render in this process: checked against the PyTorch marcher
            from nerf import fused_march

            key = fused_march.check_key(self.head[net], self.torso[net], t0.device, amp)
            res = self._march_composite(net, b, c, hit_h, hit_t, out, amp)
            if fused_march.verify(key, res, lambda pick: self._march_unfused(net, b.select(pick), amp), n_steps):
                return res
        # (the PyTorch marcher queries the torso at every fine sample, at its interval's midpoint)
        fields = [march.MarchField(live(g["head_01"], occ.head, hit_h, g["near_h"], g["far_h"]), head),
                  march.MarchField(torso_live, torso)]
        out = march.march(fields, t0, dt, n_steps, rc.stop_depth, rc.march_round)
        out["head_acc"] = out["field_acc"][0]
        out["torso_acc"] = out["field_acc"][1]
        return self._march_composite(net, b, c, hit_h, hit_t, out, amp)

    def _march_composite(self, net: int, b: RayBatch, c: dict[str, torch.Tensor], hit_h: torch.Tensor,
                         hit_t: torch.Tensor, out: dict[str, torch.Tensor], amp: bool) -> dict[str, torch.Tensor]:
        """The marched fields (rgb not over the background, head_acc, torso_acc, samples) as ``_march``'s output: over
        the plate."""
        return {"rgb": volrend.composite_over(out["rgb"], out["head_acc"] + out["torso_acc"], b.background),
                "head_acc": out["head_acc"], "torso_acc": out["torso_acc"],
                "offset_sq": torch.zeros_like(out["head_acc"]), "torso_hit": hit_t.float(), "samples": out["samples"]}

    def _march_unfused(self, net: int, b: RayBatch, amp: bool) -> dict[str, torch.Tensor]:
        """``_march`` with the PyTorch marcher (the fused kernel's check)."""
        fused, self.render_cfg.fused = self.render_cfg.fused, False
        try:
            return self._march(net, b, amp)
        finally:
            self.render_cfg.fused = fused

    def fused_marching(self, device: torch.device, net: int = 0) -> tuple[bool, str]:
        """Whether marching runs the fused kernel (``nerf.fused_march``) on ``device``, and why not."""
        from nerf import fused_march

        if not self.render_cfg.fused:
            return False, "RenderConfig.fused is off"
        ok, why = fused_march.available(device)
        if ok:
            ok, why = fused_march.supports(self.head[net], self.torso[net])
        return ok, why

    def _march_fused(self, net: int, g: dict[str, torch.Tensor], c: dict[str, torch.Tensor], t0: torch.Tensor,
                     dt: torch.Tensor, n_steps: torch.Tensor, stride: torch.Tensor, row: torch.Tensor,
                     amp: bool) -> dict | None:
        """The fields marched by ``nerf.fused_march`` (rgb, head_acc, torso_acc, samples), or None where it
        cannot run: the caller then marches with ``nerf.march`` (on a CPU without Triton's interpreter silently,
        that being the plain CPU path; elsewhere after one warning)."""
        from nerf import fused_march

        head, torso = self.head[net], self.torso[net]
        # the kernel reads the torso along each ray's moved direction
        c = dict(c, torso_dirs=self.torso_motion.directions(g["dirs"], c["motion"], g["focal"]))
        ok, why = self.fused_marching(t0.device, net)
        if not ok:  # (turned off: no warning)
            if self.render_cfg.fused and (t0.device.type == "cuda" or fused_march.interpreting()):
                fused_march.warn_once(why)
            return None
        return fused_march.run_or_none(head, torso, g, c, t0, dt, n_steps, row, self.occupancy.head,
                                       self.occupancy.torso, self.render_cfg.stop_depth,
                                       2 * TORSO_HALF_DEPTH, amp, stride)

    def _field_samples(self, fields, jitter, gen) -> list[dict[str, torch.Tensor]]:
        """Coarse then importance samples of each field; deltas in units of the field's own extent.

        Args:
            fields: (query, near [R], far [R], scale [R]) per field; every field's ray parameter t is the
                camera ray's (head space moves rays rigidly), so their samples merge by t.

        Training queries the coarse samples without gradient for the importance weights, then every
        sample, coarse ones again, with gradient in one call per field (fewer kernel launches in the
        backward pass than two calls with gradient). Rendering (no gradient) queries each sample once:
        the coarse values stay in the final, depth-sorted set beside the importance samples, and the
        importance samples that lie behind coarse intervals, of any field, whose optical depth sums past
        ``stop_depth`` are skipped: early ray termination across the fields (a torso sample behind the
        opaque face costs nothing).
        """
        rc = self.render_cfg
        training = torch.is_grad_enabled()
        coarse = []
        for query, near, far, scale in fields:
            t_c, edges = sampler.stratified(near, far, rc.n_coarse, jitter, gen)
            # (without importance samples the coarse ones are the final ones: with gradient when training)
            with torch.no_grad() if rc.n_importance > 0 else contextlib.nullcontext():
                sigma, rgb, offset = query(t_c)
            coarse.append({"t": t_c, "edges": edges, "sigma": sigma, "rgb": rgb, "offset": offset, "far": far,
                           "delta": sampler.deltas_of(t_c, far) / scale[:, None]})
        if rc.n_importance == 0:
            return [{k: c[k] for k in ("t", "sigma", "rgb", "offset", "delta")} for c in coarse]
        terminate = rc.stop_depth > 0 and not training
        if terminate:
            for c in coarse:
                c["depth"] = torch.cumsum(c["sigma"] * c["delta"], -1)  # through coarse interval j
                c["ends"] = torch.cat([c["t"][:, 1:], c["far"][:, None]], -1).contiguous()
        out = []
        for (query, _, far, scale), c in zip(fields, coarse):
            w_c = volrend.render_weights(c["sigma"], c["delta"])
            t_f = sampler.importance(c["edges"], w_c, rc.n_importance, jitter, gen)
            if training:
                t = torch.sort(torch.cat([c["t"], t_f], -1), -1)[0]
                sigma, rgb, offset = query(t)
                out.append({"t": t, "sigma": sigma, "rgb": rgb, "offset": offset,
                            "delta": sampler.deltas_of(t, far) / scale[:, None]})
                continue
            hidden = None
            if terminate:
                # Optical depth of the coarse intervals wholly in front of each importance sample: coarse
                # interval j ends at coarse sample j + 1, so it is in front of t when t_c[j + 1] <= t.
                front = sum(torch.cat([torch.zeros_like(o["depth"][:, :1]), o["depth"]], -1)
                            .gather(1, torch.searchsorted(o["ends"], t_f.contiguous(), right=True)) for o in coarse)
                hidden = front > rc.stop_depth
            sigma_f, rgb_f, offset_f = query(t_f, hidden)
            t, order = torch.sort(torch.cat([c["t"], t_f], -1), -1)
            out.append({"t": t, "sigma": _by_depth(order, c["sigma"], sigma_f), "rgb": _by_depth(order, c["rgb"], rgb_f),
                        "offset": _by_depth(order, c["offset"], offset_f) if c["offset"] is not None else None,
                        "delta": sampler.deltas_of(t, far) / scale[:, None]})
        return out


def _by_depth(order: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Coarse values a [R, S, ...] and importance values b [R, S', ...] in the sorted order of their samples."""
    both = torch.cat([a, b], 1)
    return both.gather(1, order if both.ndim == 2 else order[..., None].expand(-1, -1, both.shape[-1]))


def _crosses_occupied(grid: torch.Tensor, row: torch.Tensor, to_unit, near: torch.Tensor, far: torch.Tensor,
                      probes_per_cell: int = 4) -> torch.Tensor:
    """[R] bool: whether each ray's interval [near, far] crosses an occupied cell of ``grid`` [P, G, G, G]
    (``to_unit``: t [R, M] -> the field's [0, 1]^3 coordinates [R, M, 3]), probed at probes_per_cell x G points."""
    m = probes_per_cell * grid.shape[1]
    t = near[:, None] + ((far - near) / m)[:, None] * (torch.arange(m, device=near.device, dtype=near.dtype) + 0.5)
    x01 = to_unit(t)
    return (occupancy.lookup(grid, row, x01) & ((x01 >= 0) & (x01 <= 1)).all(-1)).any(1)
