"""Pre-training of the Wav2Lip audio encoder on the user's own conversation (nothing is downloaded).

Material, per person of every dataset (from prepare): each frame's mel window, and what the
person's mouth does: the lip shape (the 40 lip landmarks of Eq. (1)'s expression part,
B_exp F_exp, head units) and the mouth opening (``audio_features.npz: mouth_open``). Samples
are the train-split frames where that person speaks, so the audio is that person's voice.

Losses on a batch of samples (frame f of person p):
- regression: the 512-d code -> the lip shape and the opening at f (each standardized per
  person; mean squared error, the two terms weighted alike);
- sync (InfoNCE): the code against the person's lips over frames f-2..f+2 (200 ms, the mel
  window's span) as the true pair and the same person's lips 3-15 frames earlier or later
  as the false ones, so the code must carry when and how the mouth moves, not only how loud
  the voice is (a random gain on every window makes loudness alone useless too).

Held out: the val-split frames where a person speaks; the correlation of predicted and real
mouth opening, and the sync accuracy (the true pair scores above every shifted one).
The checkpoint holds the encoder in Wav2Lip's key layout (``nerf.audio.load_audio_encoder``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from data_prep import dataset
from data_prep.atomic_io import atomic_path
from data_prep.audio_features import mel_windows
from data_prep.tb import tensorboard_writer
from nerf.audio import HEAD_PREFIX, Wav2LipAudioEncoder
from nerf.device import resolve_device
from nerf.errors import TrainError
from nerf.fields import mlp
from nerf.metrics import MOUTH_INDICES, pearson

LIP_DIM = 3 * len(MOUTH_INDICES)  # the lip landmarks' x, y, z
TARGET_DIM = LIP_DIM + 1  # and the mouth opening, last
LIP_WINDOW = 2  # frames each side of the lips compared with a mel window (5 frames = 200 ms at 25 fps)
SYNC_DIM = 128
MEL_UNITS_PER_DB = 8.0 / 100.0  # Wav2Lip's mel normalization maps 100 dB onto [-4, 4]


@dataclasses.dataclass
class AudioPretrainConfig:
    """Options of the pre-training (scripts/pretrain_audio.py, or train.py's audio stage)."""

    data: list[str] = dataclasses.field(default_factory=list)
    """Prepared dataset directories; every person's speaking frames are used."""
    iters: int = 400
    """Optimizer steps."""
    batch: int = 32
    """Mel windows per step (batch norm needs a few dozen)."""
    lr: float = 1e-3
    """Adam learning rate."""
    lambda_sync: float = 0.5
    """Weight of the sync (InfoNCE) loss against the regression loss."""
    min_shift: int = 3
    """Shortest time shift, in frames, of a false (audio, lips) pair."""
    max_shift: int = 15
    """Longest time shift, in frames, of a false pair."""
    temperature: float = 0.1
    """InfoNCE temperature of the cosine similarities."""
    gain_jitter_db: float = 6.0
    """Each mel window is made up to this many dB louder or quieter."""
    eval_every: int = 50
    """Held-out correlation and sync accuracy every this many steps (and at the end)."""
    seed: int = 0
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)."""


@dataclasses.dataclass
class SpeakerData:
    """One person's pre-training material over its dataset's T frames."""

    name: str  # "<dataset dir name>:<person id>"
    mel: torch.Tensor  # [T, 80, 16]
    target: torch.Tensor  # [T, 121] lip shape (120) and mouth opening (last), standardized; 0 where unusable
    usable: torch.Tensor  # [T] bool: landmarks valid and the opening finite
    train: torch.Tensor  # [N] usable train-split frames where the person speaks
    val: torch.Tensor  # [M] usable val-split frames where the person speaks


def load_speakers(roots: list[str | Path]) -> list[SpeakerData]:
    """Every person of every dataset, with standardized lip targets (statistics of its train split).

    Raises:
        PrepareError: a directory is not a finished dataset of this schema.
        TrainError: no person speaks in any train-split frame.
    """
    speakers = []
    for root in map(Path, roots):
        meta = dataset.read_meta(root)
        T, fps = meta["n_frames"], meta["fps"]
        af = dataset.load_npz(root / "audio_features.npz")
        basis = dataset.load_npz(root / "expression_basis.npz")["exp_basis"]
        lip_basis = basis.reshape(-1, 3, basis.shape[1])[list(MOUTH_INDICES)].reshape(LIP_DIM, -1)  # [120, K]
        mel = torch.from_numpy(mel_windows(af["mel"], T, fps))
        (a, b), (c, d) = meta["splits"]["train"], meta["splits"]["val"]
        for person in meta["persons"]:
            pid = person["id"]
            tr = dataset.load_track(root, pid)
            lips = tr["expr"].astype(np.float64) @ lip_basis.T  # [T, 120]
            opening = af["mouth_open"][:, pid].astype(np.float64)
            usable = tr["valid"] & np.isfinite(opening) & np.isfinite(lips).all(1)
            fit = usable.copy()
            fit[b:] = False  # statistics from the train split only
            if fit.sum() < 2:
                continue
            lips = lips - lips[fit].mean(0)
            lips /= np.sqrt((lips[fit] ** 2).mean()) + 1e-12
            opening = (opening - opening[fit].mean()) / (opening[fit].std() + 1e-12)
            target = np.where(usable[:, None], np.concatenate([lips, opening[:, None]], 1), 0.0)
            speaks = usable & af["speaking"][:, pid].astype(bool)
            idx = np.arange(T)
            speakers.append(SpeakerData(
                name=f"{root.name}:{pid}", mel=mel, target=torch.from_numpy(target).float(),
                usable=torch.from_numpy(usable), train=torch.from_numpy(idx[a:b][speaks[a:b]]),
                val=torch.from_numpy(idx[c:d][speaks[c:d]])))
    if not any(len(s.train) for s in speakers):
        raise TrainError(f"nobody speaks in the train split of {', '.join(map(str, roots))} (audio_features.npz: "
                         "speaking); the audio encoder needs frames of speech with a tracked face")
    return speakers


class AudioPretrainNet(nn.Module):
    """The encoder with the heads that train it: lip regression and the two sides of the sync embedding."""

    def __init__(self):
        super().__init__()
        self.encoder = Wav2LipAudioEncoder()
        self.regress = nn.Linear(512, TARGET_DIM)
        self.audio_sync = nn.Linear(512, SYNC_DIM)
        self.lips_sync = mlp((2 * LIP_WINDOW + 1) * TARGET_DIM, 256, SYNC_DIM, layers=1)

    def forward(self, mel: torch.Tensor, lips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: mel [B, 80, 16]; lips [B, C, 5 * 121] lip windows of C candidate times (the true one first).

        Returns: predicted targets [B, 121]; sync logits [B, C] (cosine similarities).
        """
        code = self.encoder(mel)
        a = F.normalize(self.audio_sync(code), dim=-1)
        m = F.normalize(self.lips_sync(lips), dim=-1)
        return self.regress(code), (a[:, None] * m).sum(-1)


def _shifts(cfg: AudioPretrainConfig) -> torch.Tensor:
    """[C] frame offsets of the candidates: 0 (the true pair), then -max..-min and min..max."""
    far = torch.arange(cfg.min_shift, cfg.max_shift + 1)
    return torch.cat([torch.zeros(1, dtype=torch.long), -far.flip(0), far])


def _batch(speakers: list[SpeakerData], who: torch.Tensor, frame: torch.Tensor, shifts: torch.Tensor,
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Samples (speaker who[i], frame[i]) grouped by speaker.

    Returns:
        mel windows [B, 80, 16], targets [B, 121], lip windows of the candidate times [B, C, 5 * 121]
        and whether each candidate is a usable frame inside the clip [B, C].
    """
    mel, target, lips, valid = [], [], [], []
    around = torch.arange(-LIP_WINDOW, LIP_WINDOW + 1)
    for s in who.unique().tolist():
        sel = who == s
        sp, f = speakers[s], frame[sel]
        T = len(sp.usable)
        cand = f[:, None] + shifts  # [b, C]
        inside = (cand >= 0) & (cand < T)
        cand = cand.clamp(0, T - 1)
        mel.append(sp.mel[f])
        target.append(sp.target[f])
        lips.append(sp.target[(cand[..., None] + around).clamp(0, T - 1)].flatten(2))
        valid.append(inside & sp.usable[cand])
    return torch.cat(mel), torch.cat(target), torch.cat(lips), torch.cat(valid)


def _losses(net: AudioPretrainNet, mel, target, lips, valid, cfg: AudioPretrainConfig) -> dict[str, torch.Tensor]:
    pred, sim = net(mel, lips)
    regress = F.mse_loss(pred[:, :LIP_DIM], target[:, :LIP_DIM]) + F.mse_loss(pred[:, LIP_DIM], target[:, LIP_DIM])
    logits = (sim / cfg.temperature).masked_fill(~valid, -math.inf)
    sync = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))
    return {"total": regress + cfg.lambda_sync * sync, "regress": regress, "sync": sync,
            "sync_acc": (logits.argmax(-1) == 0).float().mean(), "opening": pred[:, LIP_DIM]}


@torch.no_grad()
def held_out(net: AudioPretrainNet, speakers: list[SpeakerData], cfg: AudioPretrainConfig,
             device: torch.device, chunk: int = 256) -> dict[str, float]:
    """Mouth-opening correlation and sync accuracy over every val-split speaking frame (NaN when none)."""
    who = torch.cat([torch.full((len(s.val),), i) for i, s in enumerate(speakers)])
    frame = torch.cat([s.val for s in speakers])
    if len(frame) == 0:
        return {"mouth_open_corr": float("nan"), "sync_acc": float("nan"), "frames": 0}
    net.eval()
    predicted, real, hits = [], [], 0.0
    for a in range(0, len(frame), chunk):
        mel, target, lips, valid = (x.to(device) for x in _batch(speakers, who[a:a + chunk], frame[a:a + chunk],
                                                                 _shifts(cfg)))
        out = _losses(net, mel, target, lips, valid, cfg)
        predicted.append(out["opening"].cpu())
        real.append(target[:, LIP_DIM].cpu())
        hits += float(out["sync_acc"]) * len(mel)
    net.train()
    return {"mouth_open_corr": pearson(torch.cat(predicted).numpy(), torch.cat(real).numpy()),
            "sync_acc": hits / len(frame), "frames": len(frame)}


def pretrain_audio(cfg: AudioPretrainConfig, out: str | Path, log=print, progress: bool = True,
                   logdir: str | Path | None = None) -> dict:
    """Pre-train the encoder on ``cfg.data`` and write it to ``out`` (atomically).

    Args:
        cfg: the options.
        out: the checkpoint file: ``{"state_dict": encoder weights in Wav2Lip's layout, "config",
            "persons", "facts"}``.
        log: where progress lines go.
        progress: show a tqdm bar.
        logdir: TensorBoard directory (loss, sync accuracy, held-out correlation); None: none.

    Returns:
        facts: steps, seconds, samples, the last losses and the held-out metrics.

    Raises:
        TrainError: bad options, no speech to learn from, or a diverged loss.
    """
    if cfg.iters < 1 or cfg.batch < 2 or cfg.eval_every < 1 or not 0 < cfg.min_shift <= cfg.max_shift:
        raise TrainError(f"audio pre-training needs iters >= 1, batch >= 2, eval_every >= 1 and 0 < min_shift <= "
                         f"max_shift; got iters {cfg.iters}, batch {cfg.batch}, eval_every {cfg.eval_every}, shifts "
                         f"{cfg.min_shift}..{cfg.max_shift}")
    device = resolve_device(cfg.device)
    speakers = load_speakers(cfg.data)
    who = torch.cat([torch.full((len(s.train),), i) for i, s in enumerate(speakers)])
    frames = torch.cat([s.train for s in speakers])
    n_val = sum(len(s.val) for s in speakers)
    log(f"audio encoder pre-training: {len(frames)} speaking frames of {len(speakers)} persons "
        f"({n_val} held out), {cfg.iters} steps of {cfg.batch} on {device}")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net = AudioPretrainNet().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    shifts = _shifts(cfg)
    writer = tensorboard_writer(logdir)
    t0 = time.perf_counter()
    val: dict[str, float] = {}
    bar = tqdm(range(cfg.iters), desc="audio", unit="it", disable=not progress)
    for it in bar:
        pick = torch.randint(0, len(frames), (cfg.batch,), generator=gen)
        mel, target, lips, valid = _batch(speakers, who[pick], frames[pick], shifts)
        gain = (torch.rand(len(mel), 1, 1, generator=gen) * 2 - 1) * cfg.gain_jitter_db * MEL_UNITS_PER_DB
        mel = (mel + gain).clamp(-4.0, 4.0)
        loss = _losses(net, mel.to(device), target.to(device), lips.to(device), valid.to(device), cfg)
        if not torch.isfinite(loss["total"]):
            raise TrainError(f"the audio pre-training loss became {loss['total'].item()} at step {it}; try a lower "
                             "--lr")
        opt.zero_grad(set_to_none=True)
        loss["total"].backward()
        opt.step()
        bar.set_postfix(loss=f"{loss['total'].item():.3f}", sync=f"{loss['sync_acc'].item():.2f}")
        if writer:
            for k in ("total", "regress", "sync"):
                writer.add_scalar(f"audio/loss_{k}", loss[k].item(), it)
            writer.add_scalar("audio/train_sync_acc", loss["sync_acc"].item(), it)
        if (it + 1) % cfg.eval_every == 0 or it + 1 == cfg.iters:
            val = held_out(net, speakers, cfg, device)
            if writer:
                writer.add_scalar("audio/val_mouth_open_corr", val["mouth_open_corr"], it + 1)
                writer.add_scalar("audio/val_sync_acc", val["sync_acc"], it + 1)
    bar.close()
    facts = {"steps": cfg.iters, "seconds": round(time.perf_counter() - t0, 1), "train_frames": len(frames),
             "loss": loss["total"].item(), "loss_regress": loss["regress"].item(), "loss_sync": loss["sync"].item(),
             "train_sync_acc_last_batch": loss["sync_acc"].item(), "val": val}
    state = {k: v.cpu() for k, v in net.encoder.state_dict().items()}
    state[HEAD_PREFIX + "weight"] = net.regress.weight[LIP_DIM:].detach().cpu().clone()  # the opening's row
    state[HEAD_PREFIX + "bias"] = net.regress.bias[LIP_DIM:].detach().cpu().clone()
    with atomic_path(Path(out)) as tmp:
        torch.save({"state_dict": state, "config": json.dumps(dataclasses.asdict(cfg)),
                    "persons": [s.name for s in speakers], "facts": facts}, tmp)
    if writer:
        writer.close()
    log(f"audio encoder: held-out mouth-opening correlation {val['mouth_open_corr']:.3f}, sync accuracy "
        f"{val['sync_acc']:.2f} over {val['frames']} frames; {facts['seconds']} s -> {out}")
    return facts

