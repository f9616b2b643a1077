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

from common import distributed
from common.atomic_io import atomic_path, save_image
from common.distributed import Ranks
from common.errors import TrainError
from common.tb import tensorboard_writer
from nerf.audio import SHIPPED_ENCODER, Wav2LipAudioEncoder, encoder_from_state, load_audio_encoder
from nerf.audio_pretrain import AudioPretrainConfig, pretrain_audio
from nerf.data import PersonFrames, RayBatch, load_datasets, sample_rays
from nerf.device import prepare_device, resolve_device
from nerf.encoding import HashGridConfig
from nerf.fields import FieldConfig
from nerf.model import AvatarModel, RenderConfig
from nerf.occupancy import OccupancyGrid
from nerf.occupancy import build as build_occupancy
from nerf.render import render_frame


@dataclasses.dataclass
class TrainConfig:
    """Everything a run needs; scripts/train.py fills it from flags and config files (``sized``: a model size of
    ``SIZES``, whose "full" are these defaults)."""

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
    lr: float = 1e-3
    """Adam learning rate of the MLPs and codes."""
    lr_hash: float = 1e-2
    """Adam learning rate of the hash tables (instant-ngp's)."""
    lr_decay: float = 0.1
    """Learning rates fall exponentially to this fraction at the last iteration."""
    lambda_parse: float = 0.05
    """Weight of the parsing losses (head opacity in the head region, torso opacity in the torso region)."""
    lambda_deform: float = 0.01
    """Weight of the torso warp's squared length."""
    lambda_code: float = 1e-4
    """Weight of the latent codes' squared length."""
    wav2lip_ckpt: str = ""
    """A checkpoint holding Wav2Lip's audio encoder (wav2lip.pth, wav2lip_gan.pth, or one written by
    scripts/pretrain_audio.py), used frozen; empty: the shipped prior (nerf/weights/audio_prior.pt), fine-tuned on
    --data first."""
    audio_pretrain_iters: int = 200
    """Steps of fine-tuning the shipped prior on --data (nerf.audio_pretrain; the fine-tuned encoder is kept only
    where it predicts the held-out frames' mouth opening better than the prior); 0: the prior, frozen."""
    audio_window: int = 4
    """The head field smooths the audio codes of frames f-audio_window..f+audio_window (temporal attention)."""
    n_coarse: int = 48
    n_importance: int = 48
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
    """auto (the fused CUDA hash grid on a GPU, else PyTorch), torch or cuda."""
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
    dist_timeout_s: float = distributed.DEFAULT_TIMEOUT_S
    """Under torchrun: how long a rank waits for the others at a collective before the job stops with an error (the
    audio encoder's fine-tuning and the validation pictures, done by rank 0 alone, must fit in it)."""
    occupancy_every: int = 0
    """Iterations between builds of an occupancy grid that training samples through, the first at this iteration
    (``nerf.occupancy.build``: the fields' density at a grid's cells under a spread of driving codes and poses, so a
    wide-open mouth is not culled); samples in empty cells are not queried, as when rendering. 0: every sample
    queried. configs/gpu_full.txt sets 500: 35-40% fewer field queries per step and no PSNR change at equal
    iterations with the GPU's 64^3 grid on the CPU box's 128 px runs (docs/PERFORMANCE.md)."""
    CHECKPOINT_VERSION = 2
    """Written into every checkpoint; a checkpoint of another version is refused with one line (train again)."""
    # Keys that shape the model: a checkpoint is only valid for a run with the same values.
    MODEL_KEYS = ("image_size", "model", "hidden", "n_levels", "log2_hashmap_size", "base_resolution",
                  "finest_resolution", "audio_window", "wav2lip_ckpt", "audio_pretrain_iters")

    def field_config(self, expr_dim: int) -> FieldConfig:
        grid = HashGridConfig(n_levels=self.n_levels, log2_hashmap_size=self.log2_hashmap_size,
                              base_resolution=self.base_resolution, finest_resolution=self.finest_resolution)
        return FieldConfig(head_grid=grid, torso_grid=grid, hidden=self.hidden, expr_dim=expr_dim,
                           audio_window=self.audio_window, hash_backend=self.hash_backend, hash_half=self.hash_half)


SIZES = {
    "tiny": dict(hidden=32, n_levels=8, log2_hashmap_size=14, base_resolution=8, finest_resolution=256, n_coarse=16,
                 n_importance=8, lr=5e-3, lr_hash=3e-2, lr_decay=0.3, lambda_parse=0.01),
    "full": {},  # TrainConfig's defaults
}
"""Model sizes (``train.py --size``): the fields' widths, hash grids, samples per ray, and the learning rates and
parsing weight that suit them. tiny: CI and the demo, 64-128 px crops, hundreds of iterations on a CPU (the learning
rates are higher than the paper's 2e-4, tuned for 600k iterations); full: one GPU, 512 px, tens of thousands of
iterations, tcnn-sized hash grids (16 levels x 2 features, 2^19 entries)."""


def sized(size: str, **changes) -> TrainConfig:
    """A TrainConfig of one of ``SIZES``, then ``changes``."""
    if size not in SIZES:
        raise TrainError(f"size must be one of {', '.join(SIZES)}, not {size!r}")
    return TrainConfig(**{**SIZES[size], **changes})


def psnr_of_mse(mse: float) -> float:
    return -10.0 * math.log10(max(mse, 1e-10))


def losses(out: dict[str, torch.Tensor], batch: RayBatch, model: AvatarModel,
           cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Photometric, parsing and regularizer losses of one rendered batch."""
    photo = F.mse_loss(out["rgb"], batch.rgb)
    head_target = (batch.label == 1).float()
    torso_target = (batch.label == 2).float()
    # Head opacity only in the head region; torso opacity in the torso region and never in the
    # background (behind the head it is unconstrained: the head covers it there).
    parse_head = F.binary_cross_entropy(out["head_acc"].clamp(1e-4, 1 - 1e-4), head_target)
    # (masked means rather than boolean indexing: no host sync on a GPU)
    held = (batch.label != 1).float()  # the pixels whose torso opacity is held to the labels
    bce_torso = F.binary_cross_entropy(out["torso_acc"].clamp(1e-4, 1 - 1e-4), torso_target, reduction="none")
    parse_torso = (bce_torso * held).sum() / held.sum().clamp_min(1.0)
    # the codes of the persons in the batch, each counted once
    present = torch.zeros(len(model.z_shape.weight), device=photo.device).index_fill_(0, batch.row, 1.0)
    norms = (model.z_shape.weight ** 2).sum(-1) + (model.z_app.weight ** 2).sum(-1)
    code = (norms * present).sum() / present.sum()
    # the warp's regularizer over the rays that meet the torso field
    torso_rays = out["torso_hit"]
    deform = (out["offset_sq"] * torso_rays).sum() / torso_rays.sum().clamp_min(1.0)
    total = photo + cfg.lambda_parse * (parse_head + parse_torso) + cfg.lambda_deform * deform + cfg.lambda_code * code
    return {"total": total, "photo": photo, "parse_head": parse_head, "parse_torso": parse_torso}


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
                    train_seconds: float = 0.0, avatar: dict | None = None,
                    render_grid: OccupancyGrid | None = None, rank_gens: list[dict] | None = None) -> None:
    """Everything a resume needs, and everything rendering needs (``avatar``: ``nerf.avatar.pack``'s section;
    ``render_grid``: the occupancy grid of the trained fields), written atomically; ``train_seconds``: training
    time so far (resumes included); ``rank_gens``: under torchrun, every rank's generator states in rank order
    (``gens`` are rank 0's)."""
    state = {"version": TrainConfig.CHECKPOINT_VERSION, "model": model.state_dict(),
             "audio_encoder": audio_encoder.state_dict(), "optimizer": opt.state_dict(),
             "iteration": it, "config": json.dumps(dataclasses.asdict(cfg)), "persons": [p.name for p in persons],
             "generators": {k: g.get_state() for k, g in gens.items()},
             "generator_devices": {k: g.device.type for k, g in gens.items()}, "train_seconds": train_seconds}
    if rank_gens is not None and len(rank_gens) > 1:
        state["world_size"] = len(rank_gens)
        state["rank_generators"] = rank_gens
    if model.occupancy is not None:  # (training's grid: a resume goes on with it, step for step)
        state["occupancy"] = {"head": model.occupancy.head, "torso": model.occupancy.torso}
    if avatar is not None:
        state["avatar"] = avatar
    if render_grid is not None:
        state["render_occupancy"] = {"head": render_grid.head.cpu(), "torso": render_grid.torso.cpu()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's contents, after checking it is one of this version (one-line TrainError otherwise)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file
        raise TrainError(f"cannot read checkpoint {path}: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise TrainError(f"{path} is not an avatar checkpoint of scripts/train.py")
    version = ckpt.get("version", 1)
    if version != TrainConfig.CHECKPOINT_VERSION:
        raise TrainError(f"{path} is an avatar checkpoint of version {version}; this code reads version "
                         f"{TrainConfig.CHECKPOINT_VERSION}: train the avatar again with scripts/train.py")
    return ckpt


def config_of(ckpt: dict, **changes) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with, then ``changes``."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = {k: v for k, v in json.loads(ckpt["config"]).items() if k in known}
    return TrainConfig(**{**saved, **changes})


def check_config(ckpt: dict, cfg: TrainConfig) -> None:
    """Refuse a checkpoint made with another model shape or audio encoder."""
    old = json.loads(ckpt["config"])
    diff = [k for k in TrainConfig.MODEL_KEYS if old.get(k) != getattr(cfg, k)]
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


def check_config_values(cfg: TrainConfig) -> None:
    """Values that cannot work, refused before a run writes anything."""
    if cfg.model not in ("shared", "per_person"):
        raise TrainError(f"model must be shared or per_person, not {cfg.model!r}")
    for key in ("image_size", "iters", "batch_rays", "val_every", "ckpt_every"):
        if getattr(cfg, key) < 1:
            raise TrainError(f"{key} must be at least 1, not {getattr(cfg, key)}")
    if cfg.occupancy_every < 0 or cfg.time_budget_s < 0 or cfg.audio_pretrain_iters < 0:
        raise TrainError(f"occupancy_every, time_budget_s and audio_pretrain_iters must be 0 or more, not "
                         f"{cfg.occupancy_every}, {cfg.time_budget_s} and {cfg.audio_pretrain_iters}")


def build(cfg: TrainConfig, persons: list[PersonFrames],
          device: torch.device | str = "cpu") -> tuple[AvatarModel, torch.optim.Optimizer]:
    """The model (initialized from cfg.seed on the CPU, then moved: the same weights on any device) and its Adam."""
    torch.manual_seed(cfg.seed)
    model = AvatarModel(persons, cfg.field_config(persons[0].expr.shape[1]),
                        RenderConfig(cfg.n_coarse, cfg.n_importance), mode=cfg.model).to(device)
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
        pose = ("reads the head pose" if float(model.torso_motion.pose_gate[p.row]) > 0
                else "reads no head pose (the tracked motion moves it)")
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


def pack_avatar(persons: list[PersonFrames], roots: list[str], log=print) -> dict:
    """The checkpoint's avatar section (``nerf.avatar.pack``), with the persons' voices enrolled from the datasets'
    audio (``speech.voices.enroll``) where they can be."""
    from nerf.avatar import pack
    from speech.voices import VoiceError, enroll

    try:
        bank = enroll(roots)
        voices = bank.to_dict()
        missing = [n for n, ok in zip(bank.names, bank.has_voice) if not ok]
        log(f"voices: {len(bank.names) - len(missing)} of {len(bank.names)} persons enrolled (render.py recognizes them "
            "in new audio)")
        if missing:
            log(f"voices: {', '.join(missing)} spoke too little to be recognized by voice; render.py --roles can "
                "still make them speak")
    except VoiceError as e:
        log(f"voices: not enrolled ({e}); render.py needs --roles to say who speaks in new audio")
        voices = None
    return pack(persons, roots, voices)


RANK_SEED = 1_000_003
"""Rank r draws its rays and jitter from seed + r * RANK_SEED: no two ranks draw the same batch, and rank 0 draws
what a one-process run draws."""


def train(cfg: TrainConfig, log=print, progress: bool = True) -> dict | None:
    """Train (or resume) a run; returns the final held-out PSNR per person and the run's facts.

    Under ``torchrun --nproc_per_node N`` every process runs this: each rank draws its own rays (``RANK_SEED``),
    DistributedDataParallel averages the gradients, and rank 0 alone logs and writes the audio encoder,
    checkpoints, TensorBoard, validation and summary.json (the other ranks return None). One process, or one
    not started by torchrun, runs exactly as before.
    """
    check_config_values(cfg)
    dev = resolve_device(cfg.device)
    with distributed.session(dev, cfg.dist_timeout_s) as ranks:
        try:
            return _train(cfg, ranks, distributed.rank_device(dev, ranks), log if ranks.main else _quiet,
                          progress and ranks.main)
        except RuntimeError as e:
            if not distributed.is_lost_rank(ranks, e):
                raise
            raise TrainError(distributed.lost_message(ranks, e, cfg.dist_timeout_s)) from None


def _quiet(*_args, **_kw) -> None:
    """The log of ranks other than 0."""


def _generators(cfg: TrainConfig, dev: torch.device, rank: int) -> dict[str, torch.Generator]:
    """Ray choices are drawn on the CPU; the sample jitter where the samples are made."""
    seed = cfg.seed + rank * RANK_SEED
    return {"rays": torch.Generator().manual_seed(seed), "jitter": torch.Generator(device=dev).manual_seed(seed + 1)}


def _run_audio_encoder(cfg: TrainConfig, out: Path, ckpt: dict | None, ckpt_path: Path, ranks: Ranks, log,
                       progress: bool) -> Wav2LipAudioEncoder:
    """The run's frozen audio encoder: the checkpoint's on a resume, else rank 0's (``audio_encoder_of``: it alone
    fine-tunes and writes it), sent to the other ranks."""
    if ckpt is not None:
        return checkpoint_audio_encoder(ckpt, ckpt_path)
    if not ranks.active:
        return audio_encoder_of(cfg, out, log, progress)
    encoder = audio_encoder_of(cfg, out, log, progress) if ranks.main else None
    state = ranks.share(None if encoder is None else {k: v.cpu() for k, v in encoder.state_dict().items()})
    return encoder if encoder is not None else encoder_from_state(state, f"rank 0's audio encoder of {out}")


def _train(cfg: TrainConfig, ranks: Ranks, dev: torch.device, log, progress: bool) -> dict | None:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    resuming = cfg.resume and ranks.share(ckpt_path.is_file())  # (rank 0 decides: every rank must do the same)
    if resuming and not ckpt_path.is_file():
        raise TrainError(f"rank {ranks.rank}: {ckpt_path} is not there; under torchrun --out must be a folder every "
                         "rank sees")
    ckpt = load_checkpoint(ckpt_path) if resuming else None
    if ckpt is not None:
        check_config(ckpt, cfg)
    audio_encoder = _run_audio_encoder(cfg, out, ckpt, ckpt_path, ranks, log, progress)
    prepare_device(dev)
    persons = [p.to(dev) for p in load_datasets(cfg.data, cfg.image_size, audio_encoder)]
    model, opt = build(cfg, persons, dev)
    # The schedule's starting rates, read before a resume loads the optimizer (whose groups hold the decayed rates
    # of the step it stopped at: decaying from those would make a resumed run another run).
    base_lrs = [g["lr"] for g in opt.param_groups]
    gens = _generators(cfg, dev, ranks.rank)
    start, spent_before = 0, 0.0
    if ckpt is not None:
        check_compatible(ckpt, cfg, persons)
        saved_on = ckpt.get("generator_devices", {}).get("jitter", "cpu")
        if saved_on != dev.type:
            raise TrainError(f"{ckpt_path} was written by a run on {saved_on}; resume it there (--device "
                             f"{saved_on}) to continue the same run step for step, or train afresh")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start = ckpt["iteration"]
        saved_world = int(ckpt.get("world_size", 1))
        if saved_world == ranks.world:
            states = ckpt["rank_generators"][ranks.rank] if ranks.active else ckpt["generators"]
            for k, g in gens.items():
                g.set_state(states[k])
        else:  # the same model and optimizer, but other ray draws than an uninterrupted run's
            gens = _generators(dataclasses.replace(cfg, seed=cfg.seed + start), dev, ranks.rank)
            log(f"the checkpoint was written by {saved_world} rank(s), this run has {ranks.world}: training goes on "
                "from it, with new ray draws (not step for step)")
        if cfg.occupancy_every and "occupancy" in ckpt:
            model.occupancy = OccupancyGrid(**{k: v.to(dev) for k, v in ckpt["occupancy"].items()})
        spent_before = float(ckpt.get("train_seconds", 0.0))
        log(f"resumed from {ckpt_path} at iteration {start} ({spent_before:.0f} s of training so far)")
    if ranks.main:
        report_torso_tracks(model, persons, out / "torso_track.png", log)
        avatar = ckpt["avatar"] if ckpt is not None and "avatar" in ckpt else pack_avatar(persons, cfg.data, log)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    else:
        avatar = None
    on = f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""
    log(f"training on {dev}{on}" + (f", {ranks.world} ranks ({cfg.batch_rays} rays each per step)"
                                    if ranks.active else ""))
    # Under DDP the wrapper runs the forward pass (its backward averages the gradients over the ranks); everything
    # else (losses' code norms, occupancy, validation, checkpoints) reads the model itself.
    # (device_ids None: the batch is made on the rank's device already, and stays a RayBatch)
    net = model if not ranks.active else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=None, broadcast_buffers=False,
        find_unused_parameters=cfg.model == "per_person")  # (a person's own network idles when its rays miss a batch)
    writer = tensorboard_writer(out / "tb") if ranks.main else None
    t0 = time.perf_counter()
    spent = lambda: spent_before + time.perf_counter() - t0  # noqa: E731  (training seconds, resumes included)
    bar = tqdm(range(start, cfg.iters), desc="train", unit="it", disable=not progress, initial=start, total=cfg.iters)
    last_psnr = float("nan")
    history: list[torch.Tensor] = []
    val_history: list[dict] = []  # (rank 0's held-out PSNR at each validation, and the training time until then)
    val_seconds = 0.0  # (validation time in this process, left out of val_history's training time)
    stopped_at = None
    # Host syncs stall a GPU's queue: the loss is checked for NaN/inf on the device and read back only when
    # logging and before a checkpoint is written (so a checkpoint never holds a state after a bad step).
    bad = torch.zeros((), dtype=torch.bool, device=dev)
    first_bad = torch.full((), -1, dtype=torch.long, device=dev)

    def check_finite() -> None:
        # (every rank at the same iterations: all stop together, whichever saw it)
        never = float(cfg.iters + 1)
        seen, first = ranks.max([float(bad), -(float(first_bad) if bool(bad) else never)])
        if seen:
            raise TrainError(f"the loss became NaN or infinite at iteration {int(-first)}; training stopped and "
                             f"{ckpt_path} keeps the last good state (try a lower --lr_hash or --lr)")

    def checkpoint(iteration: int, render_grid: OccupancyGrid | None = None) -> None:
        check_finite()
        rank_gens = ranks.gather({k: g.get_state() for k, g in gens.items()}) if ranks.active else None
        if ranks.main:
            save_checkpoint(ckpt_path, model, opt, iteration, cfg, persons, gens, audio_encoder, spent(), avatar,
                            render_grid, rank_gens)

    # What every rank must see alike, each step: whether to stop (a signal) and the training time (the time budget
    # and the learning rates follow it). One process reads its own; ranks agree on rank-wise maxima at each logging
    # step (a host sync there anyway) and hold them in between.
    agreed = [0.0, spent_before]

    def control(it: int, stop_requested: bool) -> tuple[bool, float]:
        if not ranks.active:
            return stop_requested, spent()
        if it == start or it % cfg.log_every == 0:
            agreed[:] = ranks.max([float(stop_requested), spent()])
        return bool(agreed[0]), agreed[1]

    with _StopRequest() as stop:
        for it in bar:
            stop_now, seconds = control(it, stop.requested)
            if stop_now:  # Ctrl-C or SIGTERM during the last step: it finished, keep it and stop
                bar.close()
                checkpoint(it)
                log(f"stopped on request: {ckpt_path} holds iteration {it}; --resume continues from it")
                raise KeyboardInterrupt
            frac = it / max(cfg.iters - 1, 1)
            if cfg.time_budget_s > 0:
                if seconds >= cfg.time_budget_s:
                    stopped_at = it  # (its checkpoint is the final one, below)
                    log(f"time budget of {cfg.time_budget_s:.0f} s reached at iteration {it}")
                    break
                frac = max(frac, seconds / cfg.time_budget_s)
            for g, lr0 in zip(opt.param_groups, base_lrs):
                g["lr"] = lr0 * cfg.lr_decay**frac
            if cfg.occupancy_every and it >= cfg.occupancy_every and it % cfg.occupancy_every == 0:
                grid = build_occupancy(model, persons) if ranks.main else None
                if ranks.active:  # (rank 0 built it; every rank samples through that one)
                    shared = ranks.share(None if grid is None else {k: v.cpu() for k, v in vars(grid).items()})
                    grid = OccupancyGrid(**{k: v.to(dev) for k, v in shared.items()})
                model.occupancy = grid
                if writer:
                    for k, v in model.occupancy.fraction().items():
                        writer.add_scalar(f"occupancy/{k}", v, it)
            batch = sample_rays(persons, cfg.batch_rays, gens["rays"], cfg.audio_window)
            rendered = net(batch, jitter=True, gen=gens["jitter"])
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
            if done % cfg.ckpt_every == 0 and done != cfg.iters:  # (the last one is written once, below)
                checkpoint(done)
            if ranks.main and (done % cfg.val_every == 0 or done == cfg.iters):
                t_val = time.perf_counter()
                val = evaluate_psnr(model, persons)
                for name, v in val.items():
                    if writer:
                        writer.add_scalar(f"val_psnr/{name}", v, done)
                _save_val_pictures(model, persons, out, done, writer)
                val_seconds += time.perf_counter() - t_val
                val_history.append({"iteration": done, "train_seconds": round(spent() - val_seconds, 2),
                                    "psnr": {k: round(v, 3) for k, v in val.items()}})
    bar.close()
    # The final checkpoint, with the occupancy grid rendering skips empty cells with, built once from the trained
    # fields, so that render.py starts without the training data.
    checkpoint(stopped_at if stopped_at is not None else cfg.iters, build_occupancy(model, persons) if ranks.main
               else None)
    if not ranks.main:
        return None
    val = evaluate_psnr(model, persons)
    iterations = stopped_at if stopped_at is not None else cfg.iters
    if not val_history or val_history[-1]["iteration"] != iterations:  # (the time budget stopped it between two)
        for name, v in val.items():
            if writer:
                writer.add_scalar(f"val_psnr/{name}", v, iterations)
        _save_val_pictures(model, persons, out, iterations, writer)
        val_history.append({"iteration": iterations, "train_seconds": round(spent() - val_seconds, 2),
                            "psnr": {k: round(v, 3) for k, v in val.items()}})
    facts = {"iterations": iterations,
             "seconds": round(time.perf_counter() - t0, 1), "train_seconds_total": round(spent(), 1), "val_psnr": val,
             "train_psnr_last_batch": last_psnr, "parameters": sum(p.numel() for p in model.parameters()),
             "first_iteration": start, "device": str(dev), "world_size": ranks.world,
             "rays_per_step": cfg.batch_rays * ranks.world, "val_history": val_history,
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

