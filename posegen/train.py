"""Training of the pose generator: windows of a few seconds, Gaussian likelihood plus motion continuity.

``train(cfg)`` is what scripts/train_posegen.py runs. Per step it draws ``batch`` listener
windows and ``batch`` speaker windows from the training frames (windows where the person is
in that role for at least a quarter of the frames) and minimizes, over the frames where the
person is tracked and in the role (the first ``warmup`` frames of a window left out: the
causal network has not seen enough yet),

    NLL = 0.5 ((z - mu) / sigma)^2 + log sigma  +  lambda_vel * |diff mu - diff z|

z: the normalized pose (and for the listener the expression coefficients); mu, sigma: the
network's Gaussian. The second term is the motion-continuity loss on frame-to-frame
differences. After training, the pole of each output's sampling noise is fitted to the
autocorrelation of the standardized training residuals (``posegen.model.fit_noise_pole``).
The checkpoint (atomic) holds the networks, the normalization, the persons and the datasets
they came from.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common.atomic_io import atomic_path
from common.errors import PrepareError
from common.tb import tensorboard_writer
from posegen import data as pdata
from posegen.model import PoseGenConfig, PoseGenerator, fit_noise_pole, generate

CKPT_VERSION = 1
MIN_ROLE_SHARE = 0.25


class PoseGenError(Exception):
    """A user-facing failure (no usable frames, mismatched checkpoint); printed without a traceback."""


@dataclasses.dataclass
class PoseTrainConfig:
    """A posegen run; scripts/train_posegen.py fills it from flags and config files."""

    data: list[str] = dataclasses.field(default_factory=list)
    """Prepared dataset directories."""
    out: str = "runs/posegen"
    """Run directory: checkpoint.pt, tb/ (TensorBoard), pose_curves.png."""
    epochs: int = 200
    """Passes over the training windows (one epoch: every window start at a stride of window / 4)."""
    batch: int = 16
    window_s: float = 4.0
    """Length of a training window in seconds."""
    warmup_s: float = 0.5
    """Frames at the start of a window the loss leaves out."""
    lr: float = 1e-2
    """Adam learning rate (the paper's 5e-5 suits its far longer schedule; see docs/ARCHITECTURE.md)."""
    lr_decay: float = 0.1
    """The learning rate falls exponentially to this fraction at the last step."""
    lambda_vel: float = 1.0
    """Weight of the frame-to-frame difference (motion continuity) term."""
    val_fraction: float = 0.0
    """Hold out the last fraction of every dataset instead of its own split (0: the dataset's split, 10%)."""
    seed: int = 0
    channels: int = 64
    levels: int = 5
    kernel_size: int = 3
    dropout: float = 0.0
    n_expr: int = 8
    mel_bands: int = 8

    def model_config(self) -> PoseGenConfig:
        names = {f.name for f in dataclasses.fields(PoseGenConfig)}
        return PoseGenConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


def load_conversations(cfg: PoseTrainConfig) -> list[pdata.Conversation]:
    """The configured datasets as conversations, all at one frame rate."""
    if not cfg.data:
        raise PoseGenError("no --data given")
    convs = [pdata.from_dataset(d, cfg.mel_bands, cfg.n_expr) for d in cfg.data]
    if cfg.val_fraction:
        convs = [c.with_val_fraction(cfg.val_fraction) for c in convs]
    fps = {c.fps for c in convs}
    if len(fps) > 1:
        raise PoseGenError(f"the datasets have different frame rates {sorted(fps)}; prepare them at one --fps")
    names = [c.name for c in convs]
    if len(set(names)) < len(names):
        raise PoseGenError(f"two datasets share a directory name ({names}); persons are named by it")
    return convs


class WindowSampler:
    """Random training windows of one role, weighted by how many usable starts each track has."""

    def __init__(self, tracks: list[pdata.Track], window: int, gen: torch.Generator):
        self.window, self.gen = window, gen
        self.tracks, self.starts = [], []
        for tr in tracks:
            end = tr.train_end - window
            if end < 0:
                continue
            share = np.convolve(tr.mask[: tr.train_end].astype(np.float32), np.ones(window), "valid") / window
            ok = np.nonzero(share >= MIN_ROLE_SHARE)[0]
            if len(ok):
                self.tracks.append(tr)
                self.starts.append(ok)
        counts = np.array([len(s) for s in self.starts], np.float64)
        self.p = torch.from_numpy(counts / counts.sum()) if len(counts) else None

    @property
    def n_starts(self) -> int:
        return int(sum(len(s) for s in self.starts))

    def __bool__(self) -> bool:
        return self.p is not None

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, W, C_in], y [B, W, C_out], mask [B, W]."""
        which = torch.multinomial(self.p, batch, replacement=True, generator=self.gen).tolist()
        xs, ys, ms = [], [], []
        for i in which:
            s = int(self.starts[i][torch.randint(len(self.starts[i]), (1,), generator=self.gen)])
            tr = self.tracks[i]
            xs.append(tr.x[s: s + self.window])
            ys.append(tr.y[s: s + self.window])
            ms.append(tr.mask[s: s + self.window])
        return (torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)),
                torch.from_numpy(np.stack(ms)))


def gaussian_loss(mu: torch.Tensor, log_std: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                  lambda_vel: float, warmup: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked Gaussian negative log-likelihood and continuity L1 of the mean's frame differences.

    Args:
        mu, log_std, y: [B, W, C]; mask: [B, W] bool.

    Returns:
        (total loss, the NLL part) scalars.
    """
    m = mask.clone()
    m[:, :warmup] = False
    m = m.float()
    nll = (0.5 * ((y - mu) * torch.exp(-log_std)) ** 2 + log_std).mean(-1)
    nll = (nll * m).sum() / m.sum().clamp_min(1)
    mv = m[:, 1:] * m[:, :-1]
    verr = ((mu[:, 1:] - mu[:, :-1]) - (y[:, 1:] - y[:, :-1])).abs().mean(-1)
    vel = (verr * mv).sum() / mv.sum().clamp_min(1)
    return nll + lambda_vel * vel, nll


@torch.no_grad()
def fit_poles(model: PoseGenerator, all_tracks: list[pdata.Track]) -> None:
    """Set each network's sampling-noise poles from its standardized residuals on the training frames."""
    model.eval()
    for role in ("listener", "speaker"):
        res = []
        for tr in all_tracks:
            if tr.role != role:
                continue
            mu, log_std = model(role, torch.from_numpy(tr.x[: tr.train_end])[None])
            r = ((torch.from_numpy(tr.y[: tr.train_end]) - mu[0]) * torch.exp(-log_std[0])).numpy()
            ok = tr.mask[: tr.train_end]
            edges = np.flatnonzero(np.diff(np.concatenate([[0], ok.astype(np.int8), [0]])))
            res += [r[a:b] for a, b in zip(edges[::2], edges[1::2]) if b - a > 30]
        if res:
            getattr(model, f"pole_{role}").copy_(torch.from_numpy(fit_noise_pole(res)))
    model.train()


def save_checkpoint(path: Path, model: PoseGenerator, cfg: PoseTrainConfig, stats: pdata.Stats,
                    convs: list[pdata.Conversation], extra: dict) -> None:
    ckpt = {"version": CKPT_VERSION, "config": json.dumps(dataclasses.asdict(cfg)),
            "model_config": dataclasses.asdict(model.cfg), "model": model.state_dict(), "stats": stats.to_dict(),
            "fps": convs[0].fps, "persons": [p for c in convs for p in c.persons],
            "datasets": [{"name": c.name, "sha256": c.source_sha256, "persons": c.persons,
                          "train_end": c.train_end, "n_frames": c.n_frames} for c in convs], **extra}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(path: str | Path) -> tuple[PoseGenerator, pdata.Stats, dict]:
    """The model (eval mode), its normalization and the checkpoint dict.

    Raises:
        PoseGenError: missing file, or not a posegen checkpoint of this version.
    """
    path = Path(path)
    if not path.is_file():
        raise PoseGenError(f"no posegen checkpoint at {path}; train one with scripts/train_posegen.py")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
    except Exception as e:  # a truncated or foreign file
        raise PoseGenError(f"{path} is not a readable checkpoint ({type(e).__name__})") from e
    if not isinstance(ckpt, dict) or ckpt.get("version") != CKPT_VERSION or "model_config" not in ckpt:
        raise PoseGenError(f"{path} is not a posegen checkpoint of version {CKPT_VERSION}")
    model = PoseGenerator(PoseGenConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), pdata.Stats.from_dict(ckpt["stats"]), ckpt


def train(cfg: PoseTrainConfig, convs: list[pdata.Conversation] | None = None) -> dict:
    """Train both networks; returns facts of the run (losses, steps, seconds, checkpoint path).

    Args:
        convs: conversations to train on instead of reading ``cfg.data`` (synthetic dyads in tests).
    """
    t0 = time.time()
    convs = load_conversations(cfg) if convs is None else convs
    fps = convs[0].fps
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    try:
        stats = pdata.Stats.fit(convs)
    except PrepareError as e:
        raise PoseGenError(str(e)) from e
    all_tracks = [t for c in convs for t in pdata.tracks(c, stats)]
    window, warmup = max(8, int(round(cfg.window_s * fps))), int(round(cfg.warmup_s * fps))
    samplers = {r: WindowSampler([t for t in all_tracks if t.role == r], window, gen) for r in ("listener", "speaker")}
    if not samplers["listener"] and not samplers["speaker"]:
        raise PoseGenError(f"no training window of {cfg.window_s} s has a tracked person listening or speaking "
                           f"for {MIN_ROLE_SHARE:.0%} of it; use longer videos or a shorter --window_s")
    missing = [r for r, s in samplers.items() if not s]
    if missing:
        raise PoseGenError(f"no {missing[0]} frames to learn from (a {missing[0]} must be tracked for "
                           f"{MIN_ROLE_SHARE:.0%} of a {cfg.window_s} s window); posegen needs a conversation "
                           "with turns: two or more people, each both speaking and listening")
    model = PoseGenerator(cfg.model_config())
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    per_epoch = max(1, math.ceil(max(s.n_starts for s in samplers.values()) / max(1, window // 4) / cfg.batch))
    steps = cfg.epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cfg.lr_decay ** (s / max(1, steps)))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    writer = tensorboard_writer(out / "tb")
    history = []
    bar = tqdm(range(steps), desc="posegen", unit="step", dynamic_ncols=True)
    for step in bar:
        losses = {}
        total = 0.0
        for role, sampler in samplers.items():
            x, y, m = sampler.sample(cfg.batch)
            mu, log_std = model(role, x)
            loss, nll = gaussian_loss(mu, log_std, y, m, cfg.lambda_vel, warmup)
            losses[role], losses[f"{role}_nll"] = loss, nll
            total = total + loss
        if not torch.isfinite(total):
            raise PoseGenError(f"the loss became {float(total)} at step {step}; lower --lr")
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        rec = {k: float(v.detach()) for k, v in losses.items()}
        history.append(rec)
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(listener=f"{rec['listener']:.3f}", speaker=f"{rec['speaker']:.3f}")
            if writer:
                for k, v in rec.items():
                    writer.add_scalar(f"loss/{k}", v, step)
                writer.add_scalar("lr", sched.get_last_lr()[0], step)
        if writer and (step + 1) % (per_epoch * max(1, cfg.epochs // 5)) == 0:
            _log_curves(writer, model, stats, convs, step + 1)
    fit_poles(model, all_tracks)
    val = validate(model, stats, convs, cfg)
    if writer:
        for k, v in val.items():
            writer.add_scalar(f"val/{k}", v, steps)
        _log_curves(writer, model, stats, convs, steps)
        writer.close()
    facts = {"steps": steps, "steps_per_epoch": per_epoch, "seconds": round(time.time() - t0, 1),
             "final_loss": {k: float(np.mean([h[k] for h in history[-max(1, per_epoch):]])) for k in history[-1]},
             "val": val, "receptive_field_s": cfg.model_config().receptive_field_s(fps), "window_frames": window,
             "ckpt": str(out / "checkpoint.pt")}
    save_checkpoint(out / "checkpoint.pt", model, cfg, stats, convs, {"facts": facts})
    return facts


@torch.no_grad()
def validate(model: PoseGenerator, stats: pdata.Stats, convs: list[pdata.Conversation],
             cfg: PoseTrainConfig) -> dict[str, float]:
    """Held-out L1 (normalized units, one noise draw) of each network over its role's held-out frames."""
    model.eval()
    errs: dict[str, list[float]] = {"listener": [], "speaker": []}
    for c in convs:
        g = generate(model, stats, c.persons, c.audio, c.speaking, c.fps, samples=1, seed=cfg.seed,
                     speaker_pose=np.nan_to_num(c.pose))
        for j, name in enumerate(c.persons):
            real = stats.norm_pose(name, c.pose[c.train_end:, j])
            for role, key, sel in (("listener", "pose_listener", ~c.speaking[c.train_end:, j]),
                                   ("speaker", "pose_speaker", c.speaking[c.train_end:, j])):
                sel = sel & c.valid[c.train_end:, j]
                if sel.any():
                    gen_z = stats.norm_pose(name, g[key][0, c.train_end:, j])
                    errs[role].append(float(np.abs(gen_z[sel] - real[sel]).mean()))
    model.train()
    return {f"l1_{r}": float(np.mean(v)) for r, v in errs.items() if v}


def _log_curves(writer, model: PoseGenerator, stats: pdata.Stats, convs: list[pdata.Conversation], step: int) -> None:
    from posegen.plots import pitch_plot

    c = convs[0]
    g = generate(model, stats, c.persons, c.audio, c.speaking, c.fps, samples=3, seed=0,
                 speaker_pose=np.nan_to_num(c.pose))
    img = pitch_plot(c, {"generated": g["pose"]}, title=f"{c.name} (step {step})")
    writer.add_image("pitch/real_vs_generated", img, step, dataformats="HWC")
    model.train()

