"""Pre-training of the Wav2Lip audio encoder on the user's own conversation (nothing is downloaded).

Material, per person of every dataset (from prepare): each frame's mel window, and what the
person's mouth does: the lip shape (the 40 lip landmarks of Eq. (1)'s expression part,
B_exp F_exp, head units) and the mouth opening (``audio_features.npz: mouth_open``). Samples
are the train-split frames where that person speaks, so the audio is that person's voice.

A batch holds two persons (drawn by their speaking frames), half of its windows each, and the encoder codes each
person's half alone: batch norm normalizes within a voice, and ``nerf.audio.frame_codes`` re-estimates its
statistics on each audio track it codes. Losses on a batch of samples (frame f of person p):
- regression: the 512-d code -> the lip shape and the opening at f (each standardized per
  person; mean squared error, the two terms weighted alike);
- sync (InfoNCE): the code against the person's lips over frames f-2..f+2 (200 ms, the mel
  window's span) as the true pair and the same person's lips 3-15 frames earlier or later
  as the false ones, so the code must carry when and how the mouth moves, not only how loud
  the voice is (a random gain on every window makes loudness alone useless too).

Every window is first made to sound like another microphone, room and voice (``augment``: coloured noise
at 0-30 dB SNR, a low-pass or telephone-like band, a pitch shift, a tempo change; then a random gain), so that
what the encoder learns carries to voices it never heard: on the dev set, held out one identity at a
time, the median mouth-opening correlation rose from 0.24 to 0.39 (docs/PERFORMANCE.md). The encoder written is
the running average of the trained weights (``WeightAverage``), steadier from seed to seed than the last step.

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

from common import dataset
from common.atomic_io import atomic_path
from common.errors import TrainError
from common.landmarks import LIPS
from common.tb import tensorboard_writer
from common.video_io import AUDIO_SR
from data_prep.audio_features import mel_windows, wav2lip_mel
from nerf.audio import HEAD_PREFIX, Wav2LipAudioEncoder, adapted_to, encoder_from_state, read_encoder_state
from nerf.device import resolve_device
from nerf.fields import mlp
from nerf.metrics import pearson

LIP_DIM = 3 * len(LIPS)  # the lip landmarks' x, y, z
TARGET_DIM = LIP_DIM + 1  # and the mouth opening, last
LIP_WINDOW = 2  # frames each side of the lips compared with a mel window (5 frames = 200 ms at 25 fps)
SYNC_DIM = 128
HEADS_PREFIX = "pretrain_heads."
"""The training heads (lip regression, both sync sides) beside the encoder, so that fine-tuning starts where this left."""
PITCH_BINS = 4
"""The spectrum moves by up to this many mel bins (about 4.5% of the frequency each at 1 kHz: 4 bins is about the
gap between a man's and a woman's formants); held out on the dev set, 4 gave a median 0.51 against 0.48 for 2 (two
seeds)."""
VOICES_PER_BATCH = 2
"""Speakers per training batch, each coded alone so that batch norm normalizes within a voice (and frame_codes
re-estimates the statistics on each audio track it codes): held out one identity at a time on the dev set, median
0.495 (mean 0.443) against 0.480 (0.389) with batches drawn over all frames, higher on 10 of 14 clips
(docs/PERFORMANCE.md)."""
AVERAGE_DECAY = 0.995
"""The encoder written is the running average of the trained weights (about the last 200 steps), not the last
step's: held out on the dev set, two seeds' last-step encoders ended 0.12 apart in median correlation, their averages
0.03 apart and higher on 13 of 14 clips (mean of the two seeds; docs/PERFORMANCE.md)."""
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
    init: str = ""
    """An encoder file of this pre-training to start from (with its heads), e.g. the shipped prior; the result is the
    fine-tuned encoder only where it predicts the held-out mouth opening better than the start, else the start
    itself. Empty: from scratch."""
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
        lip_basis = basis.reshape(-1, 3, basis.shape[1])[list(LIPS)].reshape(LIP_DIM, -1)  # [120, K]
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

    def forward(self, mel: torch.Tensor, lips: torch.Tensor, voices: list[int] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: mel [B, 80, 16]; lips [B, C, 5 * 121] lip windows of C candidate times (the true one first);
        voices: the batch's runs of one speaker's windows, as lengths, each coded alone (batch norm within a voice);
        None: the batch at once.

        Returns: predicted targets [B, 121]; sync logits [B, C] (cosine similarities).
        """
        code = torch.cat([self.encoder(m) for m in mel.split(voices)]) if voices else self.encoder(mel)
        a = F.normalize(self.audio_sync(code), dim=-1)
        m = F.normalize(self.lips_sync(lips), dim=-1)
        return self.regress(code), (a[:, None] * m).sum(-1)


def _load_start(net: AudioPretrainNet, path: str) -> None:
    """The encoder and the training heads of an encoder file of this pre-training into ``net``.

    Raises:
        TrainError: unreadable, another layout, or without the heads of this pre-training.
    """
    state = read_encoder_state(path)
    net.encoder.load_state_dict(encoder_from_state(state, path).state_dict())
    heads = {k.removeprefix(HEADS_PREFIX): v for k, v in state.items() if k.startswith(HEADS_PREFIX)}
    try:
        net.load_state_dict({**{"encoder." + k: v for k, v in net.encoder.state_dict().items()}, **heads})
    except RuntimeError:
        raise TrainError(f"{path} lacks the heads of this pre-training ({HEADS_PREFIX}*): fine-tuning starts from a file "
                         "written by scripts/pretrain_audio.py; use a Wav2Lip checkpoint frozen (--wav2lip_ckpt)") from None


def noise_bank(seconds: float = 4.0, seed: int = 0) -> torch.Tensor:
    """Mel power spectrograms [3, 80, M] of white, pink and brown noise at unit RMS (Wav2Lip's mel, as power)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * AUDIO_SR)
    white = rng.standard_normal(n)
    f = np.fft.rfftfreq(n, 1 / AUDIO_SR)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    pink = np.fft.irfft(spectrum / np.sqrt(np.maximum(f, 20.0)), n)
    brown = np.fft.irfft(spectrum / np.maximum(f, 20.0), n)
    mels = [wav2lip_mel((x / np.sqrt((x**2).mean()) * 0.1).astype(np.float32)) for x in (white, pink, brown)]
    return _power(torch.from_numpy(np.stack(mels)))


def _power(mel: torch.Tensor) -> torch.Tensor:
    """Wav2Lip's normalized mel (magnitude dB mapped onto [-4, 4]) -> power."""
    return 10.0 ** (((mel + 4.0) / MEL_UNITS_PER_DB - 100.0) / 10.0)


def _mel(power: torch.Tensor) -> torch.Tensor:
    return ((10.0 * torch.log10(power.clamp_min(1e-10)) + 100.0) * MEL_UNITS_PER_DB - 4.0).clamp(-4.0, 4.0)


def augment(mel: torch.Tensor, bank: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each window [B, 80, 16] as another microphone, room and voice might give it: coloured noise at an SNR of
    0-30 dB (on half of the windows), a low-pass at about 2-5 kHz (a quarter; bins above it 40 dB down) or a
    telephone-like band of about 400-2900 Hz (15%), a pitch and formant shift of -4..4 mel bins (half), a tempo
    change of 0.85-1.15x about the window's centre (half)."""
    B, F, W = mel.shape
    on = lambda p: torch.rand(B, generator=gen) < p  # noqa: E731
    power = _power(mel)
    # noise
    kind = torch.randint(0, len(bank), (B,), generator=gen)
    start = torch.randint(0, bank.shape[-1] - W + 1, (B,), generator=gen)
    noise = torch.stack([bank[k, :, s:s + W] for k, s in zip(kind.tolist(), start.tolist())])
    snr = torch.rand(B, generator=gen) * 30.0
    scale = power.sum((1, 2)) / (noise.sum((1, 2)) * 10.0 ** (snr / 10.0))
    power = power + (scale * on(0.5))[:, None, None] * noise
    # band-limiting: a low-pass, or a telephone-like band (mel bins 8-54: about 400-2900 Hz)
    cut = torch.randint(45, 70, (B,), generator=gen)
    lowpass, phone = on(0.25), on(0.15)
    bins = torch.arange(F)[None]
    keep = torch.where(lowpass[:, None], bins < cut[:, None], torch.ones(B, F, dtype=torch.bool))
    keep &= ~phone[:, None] | ((bins >= 8) & (bins < 55))
    power = power * torch.where(keep, 1.0, 1e-4)[..., None]
    out = _mel(power)
    # pitch: the spectrum moved along the mel axis (edges repeated)
    shift = torch.randint(-PITCH_BINS, PITCH_BINS + 1, (B,), generator=gen) * on(0.5)
    src = (bins - shift[:, None]).clamp(0, F - 1)
    out = torch.gather(out, 1, src[..., None].expand(B, F, W))
    # tempo: the window read faster or slower about its centre (linear, edges repeated)
    rate = torch.where(on(0.5), 0.85 + 0.3 * torch.rand(B, generator=gen), torch.ones(B))
    t = ((torch.arange(W)[None] - (W - 1) / 2) * rate[:, None] + (W - 1) / 2).clamp(0, W - 1)
    lo = t.floor().long().clamp(max=W - 2)
    frac = (t - lo)[:, None]
    left = torch.gather(out, 2, lo[:, None].expand(B, F, W))
    right = torch.gather(out, 2, (lo + 1)[:, None].expand(B, F, W))
    return left + frac * (right - left)


class WeightAverage:
    """An exponential moving average of a network's state (batch norm's statistics too); early steps weigh less
    (decay (1 + t) / (10 + t) until it reaches ``AVERAGE_DECAY``), so a short fine-tuning still moves it."""

    def __init__(self, net: nn.Module):
        self.state = {k: v.detach().clone() for k, v in net.state_dict().items()}

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        decay = min(AVERAGE_DECAY, (1 + step) / (10 + step))
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                self.state[k].lerp_(v, 1.0 - decay)
            else:
                self.state[k].copy_(v)


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


def _losses(net: AudioPretrainNet, mel, target, lips, valid, cfg: AudioPretrainConfig,
            voices: list[int] | None = None) -> dict[str, torch.Tensor]:
    pred, sim = net(mel, lips, voices)
    regress = F.mse_loss(pred[:, :LIP_DIM], target[:, :LIP_DIM]) + F.mse_loss(pred[:, LIP_DIM], target[:, LIP_DIM])
    logits = (sim / cfg.temperature).masked_fill(~valid, -math.inf)
    sync = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))
    return {"total": regress + cfg.lambda_sync * sync, "regress": regress, "sync": sync,
            "sync_acc": (logits.argmax(-1) == 0).float().mean(), "opening": pred[:, LIP_DIM]}


@torch.no_grad()
def held_out(net: AudioPretrainNet, speakers: list[SpeakerData], cfg: AudioPretrainConfig,
             device: torch.device, chunk: int = 256) -> dict[str, float]:
    """Mouth-opening correlation and sync accuracy over every val-split speaking frame (NaN when none), each
    person's frames coded as ``nerf.audio.frame_codes`` codes them: batch norm on the statistics of its clip."""
    if not sum(len(s.val) for s in speakers):
        return {"mouth_open_corr": float("nan"), "sync_acc": float("nan"), "frames": 0}
    net.eval()
    predicted, real, hits, n = [], [], 0.0, 0
    for i, sp in enumerate(speakers):
        if not len(sp.val):
            continue
        with adapted_to(net.encoder, sp.mel):
            for a in range(0, len(sp.val), chunk):
                frame = sp.val[a:a + chunk]
                mel, target, lips, valid = (x.to(device) for x in _batch(speakers, torch.full_like(frame, i), frame,
                                                                         _shifts(cfg)))
                out = _losses(net, mel, target, lips, valid, cfg)
                predicted.append(out["opening"].cpu())
                real.append(target[:, LIP_DIM].cpu())
                hits += float(out["sync_acc"]) * len(mel)
                n += len(mel)
    net.train()
    return {"mouth_open_corr": pearson(torch.cat(predicted).numpy(), torch.cat(real).numpy()),
            "sync_acc": hits / n, "frames": n}


def _pick(speakers: list[SpeakerData], batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """A training batch of ``VOICES_PER_BATCH`` speakers (drawn by their train frames, without replacement), an
    equal share of windows each: (speaker [B], frame [B], the runs' lengths), grouped by speaker in ``_batch``'s
    order."""
    weights = torch.tensor([float(len(s.train)) for s in speakers])
    k = min(VOICES_PER_BATCH, int((weights > 0).sum()), batch // 2)  # batch norm needs 2 windows a voice
    who = torch.multinomial(weights, k, generator=gen).sort().values
    share = [len(part) for part in torch.arange(batch).tensor_split(len(who))]
    frames = [speakers[s].train[torch.randint(0, len(speakers[s].train), (n,), generator=gen)]
              for s, n in zip(who.tolist(), share)]
    return torch.repeat_interleave(who, torch.tensor(share)), torch.cat(frames), share


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
    n_train, n_val = sum(len(s.train) for s in speakers), sum(len(s.val) for s in speakers)
    log(f"audio encoder pre-training: {n_train} speaking frames of {len(speakers)} persons "
        f"({n_val} held out), {cfg.iters} steps of {cfg.batch} on {device}")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net = AudioPretrainNet()
    start: dict[str, float] = {}
    if cfg.init:
        _load_start(net, cfg.init)
        net.to(device)
        start = held_out(net, speakers, cfg, device)
        initial = {k: v.detach().clone() for k, v in net.state_dict().items()}
        log(f"starting from {cfg.init}: held-out mouth-opening correlation {start['mouth_open_corr']:.3f} over "
            f"{start['frames']} frames")
    net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    shifts = _shifts(cfg)
    bank = noise_bank(seed=cfg.seed)
    writer = tensorboard_writer(logdir)
    t0 = time.perf_counter()
    val: dict[str, float] = {}
    average = WeightAverage(net)
    bar = tqdm(range(cfg.iters), desc="audio", unit="it", disable=not progress)
    for it in bar:
        who, frame, voices = _pick(speakers, cfg.batch, gen)
        mel, target, lips, valid = _batch(speakers, who, frame, shifts)
        mel = augment(mel, bank, gen)  # (leave-one-identity-out on the dev set: median 0.39 against 0.24 without)
        gain = (torch.rand(len(mel), 1, 1, generator=gen) * 2 - 1) * cfg.gain_jitter_db * MEL_UNITS_PER_DB
        mel = (mel + gain).clamp(-4.0, 4.0)
        loss = _losses(net, mel.to(device), target.to(device), lips.to(device), valid.to(device), cfg, voices)
        if not torch.isfinite(loss["total"]):
            raise TrainError(f"the audio pre-training loss became {loss['total'].item()} at step {it}; try a lower "
                             "--lr")
        opt.zero_grad(set_to_none=True)
        loss["total"].backward()
        opt.step()
        average.update(net, it)
        bar.set_postfix(loss=f"{loss['total'].item():.3f}", sync=f"{loss['sync_acc'].item():.2f}")
        if writer:
            for k in ("total", "regress", "sync"):
                writer.add_scalar(f"audio/loss_{k}", loss[k].item(), it)
            writer.add_scalar("audio/train_sync_acc", loss["sync_acc"].item(), it)
        if (it + 1) % cfg.eval_every == 0 or it + 1 == cfg.iters:
            trained_now = {k: v.clone() for k, v in net.state_dict().items()}
            net.load_state_dict(average.state)  # scored (and, at the end, kept) as the average
            val = held_out(net, speakers, cfg, device)
            if it + 1 < cfg.iters:
                net.load_state_dict(trained_now)
            if writer:
                writer.add_scalar("audio/val_mouth_open_corr", val["mouth_open_corr"], it + 1)
                writer.add_scalar("audio/val_sync_acc", val["sync_acc"], it + 1)
    bar.close()
    kept, trained = "trained", val
    if cfg.init:
        kept = "fine-tuned" if val["mouth_open_corr"] > start["mouth_open_corr"] else "start"
        if kept == "start":  # fine-tuning did not help this clip's held-out frames (or there are none to tell)
            net.load_state_dict(initial)
            val = start
    facts = {"steps": cfg.iters, "seconds": round(time.perf_counter() - t0, 1), "train_frames": n_train,
             "loss": loss["total"].item(), "loss_regress": loss["regress"].item(), "loss_sync": loss["sync"].item(),
             "train_sync_acc_last_batch": loss["sync_acc"].item(), "val": val, "kept": kept}
    if cfg.init:
        facts["val_start"], facts["val_fine_tuned"] = start, trained
    state = {k: v.cpu() for k, v in net.encoder.state_dict().items()}
    state.update({HEADS_PREFIX + k: v.detach().cpu() for k, v in net.state_dict().items() if not k.startswith("encoder.")})
    state[HEAD_PREFIX + "weight"] = net.regress.weight[LIP_DIM:].detach().cpu().clone()  # the opening's row
    state[HEAD_PREFIX + "bias"] = net.regress.bias[LIP_DIM:].detach().cpu().clone()
    with atomic_path(Path(out)) as tmp:
        torch.save({"state_dict": state, "config": json.dumps(dataclasses.asdict(cfg)),
                    "persons": [s.name for s in speakers], "facts": facts}, tmp)
    if writer:
        writer.close()
    which = {"trained": "", "fine-tuned": " (fine-tuned)", "start": f" (kept {cfg.init}: fine-tuning did not raise it)"}
    if val["frames"] and math.isfinite(val["mouth_open_corr"]):
        score = (f"on {val['frames']} held-out speaking frames, its predicted mouth opening follows the tracked one "
                 f"with correlation {val['mouth_open_corr']:.3f} (1: perfectly; 0: not at all), sync accuracy "
                 f"{val['sync_acc']:.2f}")
    else:
        score = ("not scored: the held-out frames hold no speech (the last tenth of the clip; give a clip where "
                 "someone speaks there to measure it)")
    log(f"audio encoder{which[kept]}: {score}; {facts['seconds']} s -> {out}")
    return facts

