"""Training of the avatar model: losses, optimizers, checkpoints that resume exactly, logs.

``train(cfg)`` is what scripts/train.py runs. Its first stage gives the run its frozen
audio encoder: the one of ``--wav2lip_ckpt``, or one pre-trained on the run's own data
(``nerf.audio_pretrain``, written to <out>/audio_encoder.pt); every frame is then coded
once. A checkpoint holds the model, the audio encoder, the optimizer, the iteration, both
random generators and the model-shaping config; resuming from it continues the same run
step for step. A NaN loss stops training with a clear message and leaves the last good
checkpoint in place.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data_prep.atomic_io import atomic_path, save_image
from data_prep.tb import tensorboard_writer
from nerf.audio import SHIPPED_ENCODER, Wav2LipAudioEncoder, encoder_from_state, load_audio_encoder
from nerf.audio_pretrain import AudioPretrainConfig, pretrain_audio
from nerf.data import ErrorMap, PersonFrames, check_shares, load_datasets, sample_rays
from nerf.device import prepare_device, resolve_device
from nerf.encoding import HashGridConfig
from nerf.errors import TrainError
from nerf.fields import FieldConfig
from nerf.model import AvatarModel, RenderConfig, compile_fields
from nerf.occupancy import OccupancyGrid
from nerf.occupancy import build as build_occupancy
from nerf.render import render_frame


@dataclasses.dataclass
class TrainConfig:
    """Everything a run needs; scripts/train.py fills it from flags and config files."""

    data: list[str] = dataclasses.field(default_factory=list)
    """Prepared dataset directories (one network for all of their persons)."""
    out: str = "runs/avatar"
    """Run directory: checkpoints, TensorBoard logs, validation pictures."""
    image_size: int = 64
    """Side of the crops trained on (frames are resized at load time)."""
    model: str = "shared"
    """shared (one network, latent codes per person) or per_person (the AD-NeRF-style baseline)."""
    iters: int = 2000
    batch_rays: int = 1024
    lr: float = 2e-4
    """Adam learning rate of the MLPs and codes (the paper's)."""
    lr_hash: float = 1e-2
    """Adam learning rate of the hash tables (instant-ngp's)."""
    lr_decay: float = 0.1
    """Learning rates fall exponentially to this fraction at the last iteration."""
    mouth_share: float = 0.15
    """Share of each ray batch drawn inside the frame's mouth box (the lips' landmarks, padded)."""
    head_share: float = 0.4
    """Share drawn inside the box of the frame's head-labelled pixels."""
    torso_share: float = 0.0
    """Share drawn inside the box of the frame's torso-labelled pixels; the rest fall anywhere in the crop."""
    error_share: float = 0.0
    """Share drawn where the person's rendering error lies: cells of an error map (``nerf.data.ErrorMap``) that
    every batch's per-ray errors update, drawn in proportion to their running mean squared error."""
    error_grid: int = 32
    """Cells per side of that error map."""
    error_refresh: int = 16
    """Iterations between the sampler's copies of the error map (each a host sync on a GPU)."""
    lambda_parse: float = 0.05
    """Weight of the parsing losses (head opacity in the head region, torso opacity in the torso region)."""
    lambda_deform: float = 0.01
    """Weight of the torso warp's squared length."""
    lambda_code: float = 1e-4
    """Weight of the latent codes' squared length."""
    lambda_dist: float = 0.0
    """Weight of mip-NeRF 360's distortion loss (``volrend.distortion``; positions in head-sphere diameters): pulls
    each ray's weight into one short stretch, which leaves fewer samples to query when rendering by marching.
    Experimental (docs/PERFORMANCE.md)."""
    wav2lip_ckpt: str = ""
    """A checkpoint holding Wav2Lip's audio encoder (wav2lip.pth, wav2lip_gan.pth, or one written by
    scripts/pretrain_audio.py), used frozen; empty: the shipped prior (nerf/weights/audio_prior.pt), fine-tuned on
    --data first."""
    audio_pretrain_iters: int = 200
    """Steps of fine-tuning the shipped prior on --data (nerf.audio_pretrain; the fine-tuned encoder is kept only
    where it predicts the held-out frames' mouth opening better than the prior); 0: the prior, frozen."""
    audio_window: int = 4
    """The head field smooths the audio codes of frames f-audio_window..f+audio_window (temporal attention)."""
    n_coarse: int = 32
    n_importance: int = 32
    hidden: int = 64
    n_levels: int = 16
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    finest_resolution: int = 2048
    val_every: int = 500
    ckpt_every: int = 500
    seed: int = 0
    device: str = "auto"
    """auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda or cuda:N."""
    hash_backend: str = "auto"
    """auto (the fused CUDA hash grid on a GPU, else PyTorch), torch, cuda or tcnn."""
    compile: bool = False
    """torch.compile the fields' forward passes (dynamic shapes; fused kernels, fewer launches). Compiling
    costs tens of seconds at the start (40 s for one field on the 2-core CPU box, where a head field's
    forward + backward then ran 1.4-1.6x faster); whether it pays on a GPU: ``bench.py --compile``."""
    hash_half: bool = False
    """The fused hash grid gathers from float16 copies of the tables (float32 master tables and gradients)."""
    log_every: int = 10
    """Iterations between TensorBoard scalars (each costs a host-device sync on a GPU)."""
    time_budget_s: float = 0.0
    """Stop after this many seconds of training, resumes included (the checkpoint keeps the count; 0: no
    limit); the learning-rate decay then follows whichever of iterations and time runs out first. A
    stopped run checkpoints, validates and summarizes as a finished one; --resume with a larger budget
    continues it, but not step for step (the time-based decay depends on the machine's speed)."""
    resume: bool = False
    occupancy_every: int = 0
    """Iterations between rebuilds of an occupancy grid that training samples through (``nerf.occupancy.build``: the
    fields' density at a grid's cells under a spread of driving codes and poses, so a wide-open mouth is not
    culled); samples in empty cells are not queried, as when rendering. 0: every sample queried. configs/gpu_full.txt
    sets 500: 35-40% fewer field queries per step and no PSNR change at equal iterations with the GPU's 64^3 grid on
    the CPU box's 128 px runs; at 32^3 (the CPU's) one real clip's person lost 0.2-0.3 dB (docs/PERFORMANCE.md)."""
    occupancy_from: int = 500
    """The iteration of the first grid (before it every sample is queried: untrained fields' density says nothing
    of where the person is)."""
    occupancy_resolution: int = 0
    """Cells per axis of that grid (0: the renderer's, 64 on a GPU and 32 on the CPU)."""
    torso_cull: bool = False
    """Only the rays of the torso's pixel box (the torso-labelled pixels of the training frames, widened by 5% of
    the crop) meet the torso field; the others, above and beside the head, show the head and the plate. On the
    CPU box 1.45x the training iterations/s and 1.35-1.8x the render rate (1.1x with the occupancy grid), but on
    the 64-128 px CPU runs a person's held-out PSNR moved by -1.1 to +0.6 dB against the default (seed noise
    there: 0.4-1.6 dB): off until a full-scale comparison decides (docs/PERFORMANCE.md)."""
    pose_norm: bool = True
    """The torso field reads the head pose standardized per person (mean and spread of the training frames) and
    as it is; false: the raw pose (Euler angles, translation) through sin/cos frequencies, as before 2026-11-23.
    On by default since it gained on every 128 px CPU comparison (three datasets, docs/PERFORMANCE.md)."""

    torso_follow: bool = False
    """The torso's points move with the head by two learned shares per person (of the head's translation and of
    its rotation about the head, away from the person's mean pose; ``AvatarModel.follow_head``), both starting at
    0: a torso that sways with the head needs no large learned warp. Experimental: measured in docs/PERFORMANCE.md."""

    torso_field: str = "volume"
    """volume (the torso field in camera space, sampled along each ray like the head) or layer (a pose-warped field
    over the crop's pixels, composited behind the head: one query per ray; RAD-NeRF's and ER-NeRF's 2D torso;
    ``nerf.fields.TorsoLayer``). The layer trains 1.8x and renders 1.8-2.3x as fast on the CPU box; at equal
    training time it scored higher on the synthetic conversation and lower on a real clip (docs/PERFORMANCE.md)."""

    torso_density_pose: bool = True
    """The torso's density reads the head pose beside the warped point; false: the pose acts through the torso's
    warp alone (one canonical torso, warped per frame, as DialogueNeRF's torso deformation). Measured in
    docs/PERFORMANCE.md."""

    torso_track: bool = True
    """The torso's points are read through its tracked image motion onto a reference frame (an affine per frame,
    ``data_prep.torso_track``, computed when the data are loaded), the learned warp then adds what that leaves;
    frames without a tracked motion (tracking failed, a torso too small to track, or a driven conversation) get the
    motion predicted from the head pose (``AvatarModel.torso_motion``). On by default since 2026-11-23: +1.1 to
    +3.0 dB on the synthetic conversation (two seeds) and +0.4 to +1.3 dB on a real clip's tracked person at 128 px
    (docs/PERFORMANCE.md, "Tracking the torso"); false: the torso placed by the pose-keyed warp alone, as before."""

    torso_pose: str = "untracked"
    """Whose torso field reads the head pose and applies its learned warp: untracked (only persons whose torso is
    not tracked; a tracked torso is then one canonical torso moved by its tracked motion alone, its field's pose
    input held at the person's mean pose and its warp off, ``AvatarModel.pose_gate``) or all (every person's, as
    before this option, 2026-11-23). Measured in docs/PERFORMANCE.md, "A tracked torso without the pose"."""

    # Keys that shape the model: a checkpoint is only valid for a run with the same values.
    MODEL_KEYS = ("image_size", "model", "hidden", "n_levels", "log2_hashmap_size", "base_resolution",
                  "finest_resolution", "audio_window", "wav2lip_ckpt", "audio_pretrain_iters", "torso_cull",
                  "pose_norm", "torso_follow", "torso_field", "torso_density_pose", "torso_track",
                  "torso_pose")
    # Model keys added after checkpoints were written, with the value those checkpoints were trained with.
    LATER_KEYS = {"torso_cull": False, "pose_norm": False, "torso_follow": False, "torso_field": "volume",
                  "torso_density_pose": True, "torso_track": False, "torso_pose": "all"}

    def field_config(self, expr_dim: int) -> FieldConfig:
        grid = HashGridConfig(n_levels=self.n_levels, log2_hashmap_size=self.log2_hashmap_size,
                              base_resolution=self.base_resolution, finest_resolution=self.finest_resolution)
        return FieldConfig(head_grid=grid, torso_grid=grid, hidden=self.hidden, expr_dim=expr_dim,
                           audio_window=self.audio_window, hash_backend=self.hash_backend, hash_half=self.hash_half,
                           torso_density_pose=self.torso_density_pose)


def psnr_of_mse(mse: float) -> float:
    return -10.0 * math.log10(max(mse, 1e-10))


def losses(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], model: AvatarModel,
           cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Photometric, parsing and regularizer losses of one rendered batch."""
    photo = F.mse_loss(out["rgb"], batch["rgb"])
    head_target = (batch["label"] == 1).float()
    torso_target = (batch["label"] == 2).float()
    # Head opacity only in the head region; torso opacity in the torso region and never in the
    # background (behind the head it is unconstrained: the head covers it there). A torso layer is also held
    # to no weight on head pixels that the head sphere covers: a layer over the pixels could otherwise draw
    # the face itself, pose-keyed and deaf to the audio, and leave the head field transparent there.
    parse_head = F.binary_cross_entropy(out["head_acc"].clamp(1e-4, 1 - 1e-4), head_target)
    # (masked means rather than boolean indexing: no host sync on a GPU)
    held = (batch["label"] != 1).float()  # the pixels whose torso opacity is held to the labels
    if model.torso_layer:
        held = torch.maximum(held, out["head_hit"])
    bce_torso = F.binary_cross_entropy(out["torso_acc"].clamp(1e-4, 1 - 1e-4), torso_target, reduction="none")
    parse_torso = (bce_torso * held).sum() / held.sum().clamp_min(1.0)
    # the codes of the persons in the batch, each counted once
    present = torch.zeros(len(model.z_shape.weight), device=photo.device).index_fill_(0, batch["row"], 1.0)
    norms = (model.z_shape.weight ** 2).sum(-1) + (model.z_app.weight ** 2).sum(-1)
    code = (norms * present).sum() / present.sum()
    # the warp's regularizer over the rays that meet the torso field (all of them unless torso_cull)
    torso_rays = out["torso_hit"]
    deform = (out["offset_sq"] * torso_rays).sum() / torso_rays.sum().clamp_min(1.0)
    total = photo + cfg.lambda_parse * (parse_head + parse_torso) + cfg.lambda_deform * deform + cfg.lambda_code * code
    parts = {"photo": photo, "parse_head": parse_head, "parse_torso": parse_torso}
    if cfg.lambda_dist > 0:
        parts["distortion"] = out["distortion"].mean()
        total = total + cfg.lambda_dist * parts["distortion"]
    return {"total": total, **parts}


class _StopRequest:
    """While training: SIGINT (Ctrl-C) or SIGTERM asks the loop to stop after the step under way, which then
    writes a checkpoint and raises KeyboardInterrupt; a second signal interrupts at once (no checkpoint
    beyond the periodic ones). Handlers are installed only from the main thread and restored on exit."""

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def save_checkpoint(path: Path, model, opt, it: int, cfg: TrainConfig, persons: list[PersonFrames],
                    gens: dict[str, torch.Generator], audio_encoder: Wav2LipAudioEncoder,
                    train_seconds: float = 0.0, error_map: ErrorMap | None = None) -> None:
    """Everything a resume needs, written atomically; ``train_seconds``: training time so far (resumes included)."""
    state = {"model": model.state_dict(), "audio_encoder": audio_encoder.state_dict(), "optimizer": opt.state_dict(),
             "iteration": it, "config": json.dumps(dataclasses.asdict(cfg)), "persons": [p.name for p in persons],
             "generators": {k: g.get_state() for k, g in gens.items()},
             "generator_devices": {k: g.device.type for k, g in gens.items()}, "train_seconds": train_seconds}
    if error_map is not None:
        state["error_map"] = error_map.state_dict()
    if model.occupancy is not None:  # (training's grid: a resume goes on with it, step for step)
        state["occupancy"] = {"head": model.occupancy.head, "torso": model.occupancy.torso}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file
        raise TrainError(f"cannot read checkpoint {path}: {str(e).splitlines()[0][:200]}") from None


def config_of(ckpt: dict, **changes) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with: its saved values, and for the model keys added after it was
    written the values it was trained with (``TrainConfig.LATER_KEYS``), not today's defaults; then ``changes``."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = {k: v for k, v in json.loads(ckpt["config"]).items() if k in known}
    return TrainConfig(**{**TrainConfig.LATER_KEYS, **saved, **changes})


def check_config(ckpt: dict, cfg: TrainConfig) -> None:
    """Refuse a checkpoint made with another model shape or audio encoder."""
    old = json.loads(ckpt["config"])
    old = {k: old.get(k, TrainConfig.LATER_KEYS.get(k)) for k in TrainConfig.MODEL_KEYS}
    diff = [k for k in TrainConfig.MODEL_KEYS if old[k] != getattr(cfg, k)]
    if diff:
        raise TrainError("the checkpoint was made with another config (" +
                         ", ".join(f"{k}: {old.get(k)} vs {getattr(cfg, k)}" for k in diff) + ")")


def checkpoint_audio_encoder(ckpt: dict, path: Path) -> Wav2LipAudioEncoder:
    """The frozen audio encoder a checkpoint's run coded its frames with."""
    if "audio_encoder" not in ckpt:
        raise TrainError(f"{path} holds no audio encoder (made before the Wav2Lip audio codes); train afresh")
    return encoder_from_state(ckpt["audio_encoder"], str(path))


def check_compatible(ckpt: dict, cfg: TrainConfig, persons: list[PersonFrames]) -> None:
    """Refuse a checkpoint made with another model shape, audio encoder or other persons."""
    check_config(ckpt, cfg)
    names = [p.name for p in persons]
    if ckpt["persons"] != names:
        raise TrainError(f"the checkpoint's persons {ckpt['persons']} differ from the data's {names}")


def check_sampler(cfg: TrainConfig) -> None:
    """The ray sampler's settings, checked before a run writes anything."""
    try:
        check_shares(cfg.head_share, cfg.mouth_share, cfg.torso_share, cfg.error_share)
    except ValueError as e:
        raise TrainError(str(e)) from None
    if cfg.error_share > 0 and not 1 <= cfg.error_grid <= cfg.image_size:
        raise TrainError(f"error_grid must be between 1 and image_size ({cfg.image_size}), not {cfg.error_grid}")
    if cfg.error_share > 0 and cfg.error_refresh < 1:
        raise TrainError(f"error_refresh must be at least 1, not {cfg.error_refresh}")
    if cfg.occupancy_every < 0 or cfg.occupancy_from < 0 or cfg.occupancy_resolution < 0:
        raise TrainError(f"occupancy_every, occupancy_from and occupancy_resolution must be 0 or more, not "
                         f"{cfg.occupancy_every}, {cfg.occupancy_from} and {cfg.occupancy_resolution}")


def build(cfg: TrainConfig, persons: list[PersonFrames],
          device: torch.device | str = "cpu") -> tuple[AvatarModel, torch.optim.Optimizer]:
    """The model (initialized from cfg.seed on the CPU, then moved: the same weights on any device) and its Adam."""
    if cfg.torso_field not in ("volume", "layer"):
        raise TrainError(f"torso_field must be volume or layer, not {cfg.torso_field!r}")
    if cfg.torso_field == "layer" and cfg.torso_follow:
        raise TrainError("torso_follow moves the volume torso's points: it does not apply to --torso_field layer")
    if cfg.torso_pose not in ("all", "untracked"):
        raise TrainError(f"torso_pose must be all or untracked, not {cfg.torso_pose!r}")
    if cfg.torso_track and cfg.torso_follow:
        raise TrainError("--torso_track and --torso_follow both move the torso's points (by its tracked motion, by "
                         "the head's): choose one (tracking is on by default: add --torso_track false)")
    torch.manual_seed(cfg.seed)
    model = AvatarModel(persons, cfg.field_config(persons[0].expr.shape[1]),
                        RenderConfig(cfg.n_coarse, cfg.n_importance), mode=cfg.model, torso_cull=cfg.torso_cull,
                        pose_norm=cfg.pose_norm, torso_follow=cfg.torso_follow,
                        torso_layer=cfg.torso_field == "layer", torso_track=cfg.torso_track,
                        torso_pose=cfg.torso_pose).to(device)
    hash_ids = {id(p) for p in model.hash_parameters()}
    others = [p for p in model.parameters() if id(p) not in hash_ids]
    # On a GPU the fused Adam: one kernel per step for all parameters instead of several per tensor list
    opt = torch.optim.Adam([{"params": others, "lr": cfg.lr}, {"params": model.hash_parameters(), "lr": cfg.lr_hash}],
                           betas=(0.9, 0.99), eps=1e-15, fused=torch.device(device).type == "cuda" or None)
    return model, opt


def report_torso_tracks(model: AvatarModel, persons: list[PersonFrames], picture: Path, log=print) -> None:
    """One line per person on its torso tracking (frames tracked; whether its torso field reads the head pose) and
    the motion curves as a QA picture (``data_prep.qa.torso_motion_curves``), written atomically."""
    from data_prep.qa import torso_motion_curves

    motions, held = [], []
    for p in persons:
        m = None if p.torso_motion is None else p.torso_motion.cpu().numpy()
        motions.append(m)
        h = np.zeros(len(p.euler), bool)
        h[p.val.cpu().numpy()] = True
        held.append(h)
        n = 0 if m is None else int(np.isfinite(m).all(1).sum())
        pose = ("reads the head pose" if float(model.pose_gate[p.row]) > 0
                else "reads no head pose (--torso_pose untracked)")
        rest = f" (the other {len(h) - n} predicted from the head pose)" if n < len(h) else ""
        what = (f"tracked on {n} of {len(h)} frames{rest}" if n else
                "not tracked (too little torso in the crop, or no frame aligned)")
        log(f"{p.name}: torso {what}; its torso field {pose}")
    save_image(picture, torso_motion_curves(motions, persons[0].size, [p.name for p in persons], held))


def evaluate_psnr(model: AvatarModel, persons: list[PersonFrames], max_frames: int = 4) -> dict[str, float]:
    """Mean held-out PSNR per person over up to ``max_frames`` evenly spread validation frames."""
    model.eval()
    out = {}
    for p in persons:
        frames = p.val[torch.linspace(0, len(p.val) - 1, min(max_frames, len(p.val))).round().long()]
        mses = [F.mse_loss(render_frame(model, p, int(f))["rgb"], p.images[int(f)].float() / 255).item() for f in frames]
        out[p.name] = psnr_of_mse(float(np.mean(mses)))
    model.train()
    return out


def audio_encoder_of(cfg: TrainConfig, out: Path, log=print, progress: bool = True) -> Wav2LipAudioEncoder:
    """A new run's frozen audio encoder: --wav2lip_ckpt's, the shipped prior, or the prior fine-tuned on --data now
    (<out>/audio_encoder.pt)."""
    if cfg.wav2lip_ckpt or cfg.audio_pretrain_iters == 0:
        path = cfg.wav2lip_ckpt or SHIPPED_ENCODER
        encoder = load_audio_encoder(path)
        log(f"audio encoder: {path} (frozen)")
        return encoder
    path = out / "audio_encoder.pt"
    pretrain_audio(AudioPretrainConfig(data=list(cfg.data), iters=cfg.audio_pretrain_iters, init=str(SHIPPED_ENCODER),
                                       seed=cfg.seed, device=cfg.device), path,
                   log=log, progress=progress, logdir=out / "tb" / "audio_pretrain")
    return load_audio_encoder(path)


def train(cfg: TrainConfig, log=print, progress: bool = True) -> dict:
    """Train (or resume) a run; returns the final held-out PSNR per person and the run's facts."""
    check_sampler(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    ckpt = None
    if cfg.resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path)
        check_config(ckpt, cfg)
        audio_encoder = checkpoint_audio_encoder(ckpt, ckpt_path)
    else:
        audio_encoder = audio_encoder_of(cfg, out, log, progress)
    dev = resolve_device(cfg.device)
    prepare_device(dev)
    persons = [p.to(dev) for p in load_datasets(cfg.data, cfg.image_size, audio_encoder, cfg.torso_track)]
    model, opt = build(cfg, persons, dev)
    # The schedule's starting rates, read before a resume loads the optimizer (whose groups hold the decayed rates
    # of the step it stopped at: decaying from those would make a resumed run another run).
    base_lrs = [g["lr"] for g in opt.param_groups]
    if cfg.compile:  # this run only: a checkpoint's later users (evaluate, render) do not compile
        compile_fields(model)
    # Ray choices are drawn on the CPU; the sample jitter where the samples are made.
    gens = {"rays": torch.Generator().manual_seed(cfg.seed),
            "jitter": torch.Generator(device=dev).manual_seed(cfg.seed + 1)}
    error_map = (ErrorMap(len(persons), cfg.image_size, cfg.error_grid, refresh=cfg.error_refresh, device=dev)
                 if cfg.error_share > 0 else None)
    start, spent_before = 0, 0.0
    if ckpt is not None:
        check_compatible(ckpt, cfg, persons)
        saved_on = ckpt.get("generator_devices", {}).get("jitter", "cpu")
        if saved_on != dev.type:
            raise TrainError(f"{ckpt_path} was written by a run on {saved_on}; resume it there (--device "
                             f"{saved_on}) to continue the same run step for step, or train afresh")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        for k, g in gens.items():
            g.set_state(ckpt["generators"][k])
        if error_map is not None and "error_map" in ckpt:
            error_map.load_state_dict(ckpt["error_map"])
        if cfg.occupancy_every and "occupancy" in ckpt:
            model.occupancy = OccupancyGrid(**{k: v.to(dev) for k, v in ckpt["occupancy"].items()})
        start = ckpt["iteration"]
        spent_before = float(ckpt.get("train_seconds", 0.0))
        log(f"resumed from {ckpt_path} at iteration {start} ({spent_before:.0f} s of training so far)")
    if cfg.torso_track:
        report_torso_tracks(model, persons, out / "torso_track.png", log)
    log(f"training on {dev}" + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""))
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    writer = tensorboard_writer(out / "tb")
    t0 = time.perf_counter()
    spent = lambda: spent_before + time.perf_counter() - t0  # noqa: E731  (training seconds, resumes included)
    bar = tqdm(range(start, cfg.iters), desc="train", unit="it", disable=not progress, initial=start, total=cfg.iters)
    last_psnr = float("nan")
    history: list[torch.Tensor] = []
    stopped_at = None
    # Host syncs stall a GPU's queue: the loss is checked for NaN/inf on the device and read back only when
    # logging and before a checkpoint is written (so a checkpoint never holds a state after a bad step).
    bad = torch.zeros((), dtype=torch.bool, device=dev)
    first_bad = torch.full((), -1, dtype=torch.long, device=dev)

    def check_finite() -> None:
        if bool(bad):
            raise TrainError(f"the loss became NaN or infinite at iteration {int(first_bad)}; training stopped and "
                             f"{ckpt_path} keeps the last good state (try a lower --lr_hash or --lr)")

    def checkpoint(iteration: int) -> None:
        check_finite()
        save_checkpoint(ckpt_path, model, opt, iteration, cfg, persons, gens, audio_encoder, spent(), error_map)

    with _StopRequest() as stop:
        for it in bar:
            if stop.requested:  # Ctrl-C or SIGTERM during the last step: it finished, keep it and stop
                bar.close()
                checkpoint(it)
                log(f"stopped on request: {ckpt_path} holds iteration {it}; --resume continues from it")
                raise KeyboardInterrupt
            frac = it / max(cfg.iters - 1, 1)
            if cfg.time_budget_s > 0:
                if spent() >= cfg.time_budget_s:
                    stopped_at = it
                    checkpoint(it)
                    log(f"time budget of {cfg.time_budget_s:.0f} s reached at iteration {it}")
                    break
                frac = max(frac, spent() / cfg.time_budget_s)
            for g, lr0 in zip(opt.param_groups, base_lrs):
                g["lr"] = lr0 * cfg.lr_decay**frac
            if error_map is not None:
                error_map.step(it)
            if cfg.occupancy_every and it >= cfg.occupancy_from and (it - cfg.occupancy_from) % cfg.occupancy_every == 0:
                model.occupancy = build_occupancy(model, persons, cfg.occupancy_resolution or None)
                if writer:
                    for k, v in model.occupancy.fraction().items():
                        writer.add_scalar(f"occupancy/{k}", v, it)
            batch = sample_rays(persons, cfg.batch_rays, gens["rays"], cfg.audio_window,
                                head_share=cfg.head_share, mouth_share=cfg.mouth_share, torso_share=cfg.torso_share,
                                error_share=cfg.error_share, error_map=error_map)
            rendered = model(batch, jitter=True, gen=gens["jitter"], distortion=cfg.lambda_dist > 0)
            if error_map is not None:
                error_map.update(batch["row"], batch["u"], batch["v"],
                                 (rendered["rgb"].detach() - batch["rgb"]).square().mean(-1))
            loss = losses(rendered, batch, model, cfg)
            total = loss["total"].detach()
            newly_bad = ~torch.isfinite(total) & ~bad
            first_bad.masked_fill_(newly_bad, it)
            bad |= newly_bad
            opt.zero_grad(set_to_none=True)
            loss["total"].backward()
            opt.step()
            history.append(total)
            if it % cfg.log_every == 0 or it + 1 == cfg.iters:
                check_finite()
                last_psnr = psnr_of_mse(loss["photo"].item())
                bar.set_postfix(psnr=f"{last_psnr:.2f}")
                if writer:
                    for k, v in loss.items():
                        writer.add_scalar(f"loss/{k}", v.item(), it)
                    writer.add_scalar("train/psnr", last_psnr, it)
                    writer.add_scalar("lr/mlp", opt.param_groups[0]["lr"], it)
                    writer.add_scalar("lr/hash", opt.param_groups[1]["lr"], it)
            done = it + 1
            if done % cfg.ckpt_every == 0 or done == cfg.iters:
                checkpoint(done)
            if done % cfg.val_every == 0 or done == cfg.iters:
                val = evaluate_psnr(model, persons)
                for name, v in val.items():
                    if writer:
                        writer.add_scalar(f"val_psnr/{name}", v, done)
                _save_val_pictures(model, persons, out, done, writer)
    bar.close()
    val = evaluate_psnr(model, persons)
    facts = {"iterations": stopped_at if stopped_at is not None else cfg.iters,
             "seconds": round(time.perf_counter() - t0, 1), "train_seconds_total": round(spent(), 1), "val_psnr": val,
             "train_psnr_last_batch": last_psnr, "parameters": sum(p.numel() for p in model.parameters()),
             "first_iteration": start, "device": str(dev),
             "loss_history": torch.stack(history).tolist() if history else []}
    if dev.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(dev)
        facts["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    (out / "summary.json").write_text(json.dumps(facts, indent=2) + "\n")
    if writer:
        writer.close()
    return facts


def _save_val_pictures(model: AvatarModel, persons: list[PersonFrames], out: Path, it: int, writer) -> None:
    """Rendered beside real for the first validation frame of each person (PNG and TensorBoard)."""
    model.eval()
    rows = []
    for p in persons:
        f = int(p.val[0])
        r = render_frame(model, p, f)
        real = p.images[f].float() / 255
        rows.append(torch.cat([r["rgb"], real, r["head_acc"][..., None].expand(-1, -1, 3),
                               r["torso_acc"][..., None].expand(-1, -1, 3)], 1))
    grid = (torch.cat(rows, 0).clamp(0, 1) * 255).byte().cpu().numpy()
    save_image(out / "val" / f"{it:07d}.png", grid)
    if writer:
        writer.add_image("val/rendered_real_headacc_torsoacc", grid, it, dataformats="HWC")
    model.train()

