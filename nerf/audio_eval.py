"""How well an audio encoder's code predicts a speaker's mouth, on datasets it never saw.

For every person of a prepared dataset, over the frames where that person speaks and the face
is tracked: the correlation of the mouth opening predicted from the audio alone (the encoder and
its mouth-opening head, both from pre-training) with the tracked opening, and the audio-visual
offset, the shift within +-10 frames that lines the two up best (0 is right; positive: the real
mouth moves after the predicted one). The same two figures for the log-RMS energy envelope of
the audio, the baseline any encoder must beat: loudness alone is not lip sync.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common import dataset
from common.errors import TrainError
from data_prep.audio_features import mel_windows
from nerf.audio import AUDIO_CODE_DIM, HEAD_PREFIX, encoder_from_state, frame_codes, read_encoder_state
from nerf.metrics import av_offset, pearson

MAX_SHIFT = 10


class MouthPredictor(torch.nn.Module):
    """A frozen encoder and its linear mouth-opening head: mel windows [B, 80, 16] -> opening [B] (z-units)."""

    def __init__(self, encoder: torch.nn.Module, head: torch.nn.Linear):
        super().__init__()
        self.encoder, self.head = encoder, head

    @torch.no_grad()
    def opening(self, mel: torch.Tensor) -> np.ndarray:
        return self.head(frame_codes(self.encoder, mel))[:, 0].numpy().astype(np.float64)


def load_predictor(path: str | Path) -> MouthPredictor:
    """An encoder file written by the audio pre-training (``scripts/pretrain_audio.py``), with its mouth head.

    Raises:
        TrainError: missing, unreadable, of another layout, or without a mouth-opening head (a public
            wav2lip.pth has none: it can drive an avatar but not be scored here).
    """
    state = read_encoder_state(path)
    encoder = encoder_from_state(state, str(path))
    w, b = state.get(HEAD_PREFIX + "weight"), state.get(HEAD_PREFIX + "bias")
    if not isinstance(w, torch.Tensor) or tuple(w.shape) != (1, AUDIO_CODE_DIM) or not isinstance(b, torch.Tensor):
        raise TrainError(f"{path} holds no mouth-opening head ({HEAD_PREFIX}weight [1, {AUDIO_CODE_DIM}]): only "
                         "encoders pre-trained by scripts/pretrain_audio.py can be scored")
    head = torch.nn.Linear(AUDIO_CODE_DIM, 1)
    head.load_state_dict({"weight": w.float(), "bias": b.float().reshape(1)})
    return MouthPredictor(encoder, head.requires_grad_(False))


def score_dataset(predictor: MouthPredictor, root: str | Path, split: str = "all") -> list[dict]:
    """One row per person of the dataset at ``root``, over its ``split``: all frames, or "val" (the held-out last
    10%: for an encoder pre-trained on this dataset's train split).

    Returns:
        [{dataset, person, frames, corr, offset, energy_corr, energy_offset}]: ``corr`` and
        ``energy_corr`` at shift 0 (NaN under 3 frames), offsets in frames (None where no shift could be scored).

    Raises:
        PrepareError: not a finished dataset of this schema.
    """
    root = Path(root)
    meta = dataset.read_meta(root)
    T, fps = meta["n_frames"], meta["fps"]
    af = dataset.load_npz(root / "audio_features.npz")
    predicted = predictor.opening(torch.from_numpy(mel_windows(af["mel"], T, fps)))
    energy = np.log(af["rms"].astype(np.float64) + 1e-4)
    in_split = np.ones(T, bool)
    if split == "val":
        a, b = meta["splits"]["val"]
        in_split[:a], in_split[b:] = False, False
    elif split != "all":
        raise ValueError(f"split must be all or val, not {split!r}")
    rows = []
    for person in meta["persons"]:
        pid = person["id"]
        valid = dataset.load_track(root, pid)["valid"].astype(bool)
        opening = af["mouth_open"][:, pid].astype(np.float64)
        scored = in_split & valid & af["speaking"][:, pid].astype(bool) & np.isfinite(opening)
        real = np.where(scored, opening, np.nan)
        ours, loud = av_offset(predicted, real, MAX_SHIFT), av_offset(energy, real, MAX_SHIFT)
        rows.append({"dataset": root.name, "person": pid, "frames": int(scored.sum()),
                     "corr": pearson(predicted, real), "offset": _shift(ours),
                     "energy_corr": pearson(energy, real), "energy_offset": _shift(loud)})
    return rows


def _shift(offset) -> int | None:
    """An ``av_offset``'s frames, or None when no shift could be scored (too few frames)."""
    return offset.frames if np.isfinite(offset.corr) else None


def signed(x) -> str:
    """An offset as +N / -N, or "-" when there is none."""
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:+.0f}"


def identity_of(name: str) -> str:
    """A dataset folder's speaker: what comes before "_clip" (speak_andrew_clip_1_256 -> speak_andrew), or the name."""
    return name.split("_clip", 1)[0]


def identity_folds(data: list[Path]) -> dict[str, list[Path]]:
    """identity -> its datasets, for the single-person datasets (those with several people are always trained on)."""
    out: dict[str, list[Path]] = {}
    for d in data:
        if len(dataset.read_meta(d)["persons"]) == 1:
            out.setdefault(identity_of(d.name), []).append(d)
    return out


def leave_one_identity_out(data: list[Path], folds: dict[str, list[Path]], cfg, out: Path, own_iters: int = 0,
                           log=print) -> list[dict]:
    """For each fold: pre-train on every dataset but the fold's (``cfg``: an AudioPretrainConfig, its data replaced),
    write <out>/fold_<identity>.pt and score the fold's datasets; returns every row, with its ``identity``.

    With ``own_iters``, each held-out dataset is also trained on as train.py would (its train split, ``own_iters``
    steps): once from the fold's encoder (fine-tuning, kept only where it raises the held-out correlation) and once
    from scratch; the row gains ``own`` with the three encoders' scores on the dataset's val split: ``prior``,
    ``fine_tuned`` (the encoder kept), ``scratch``, ``kept`` ("fine-tuned" or "start") and ``fine_tuned_val_corr``
    (the fine-tuned encoder's held-out correlation, kept or not)."""
    import dataclasses
    import time

    from nerf.audio_pretrain import pretrain_audio

    quiet = lambda *_: None  # noqa: E731
    rows = []
    for k, (ident, held) in enumerate(folds.items(), 1):
        t0 = time.perf_counter()
        ckpt = out / f"fold_{ident}.pt"
        train = [str(d) for d in data if d not in held]
        pretrain_audio(dataclasses.replace(cfg, data=train), ckpt, log=quiet, progress=False)
        predictor = load_predictor(ckpt)
        fold = [{**r, "identity": ident} for d in held for r in score_dataset(predictor, d)]
        if own_iters:
            for d in held:
                own = {"prior": score_dataset(predictor, d, "val")}
                for name, init in (("fine_tuned", str(ckpt)), ("scratch", "")):
                    path = out / f"own_{name}_{d.name}.pt"
                    facts = pretrain_audio(dataclasses.replace(cfg, data=[str(d)], iters=own_iters, init=init), path,
                                           log=quiet, progress=False)
                    own[name] = score_dataset(load_predictor(path), d, "val")
                    if init:  # also the fine-tuned encoder's own figure, whichever was kept
                        own["kept"], own["fine_tuned_val_corr"] = facts["kept"], facts["val_fine_tuned"]["mouth_open_corr"]
                for r in fold:
                    if r["dataset"] == d.name:
                        r["own"] = {n: v if not isinstance(v, list) else next(x for x in v if x["person"] == r["person"])
                                    for n, v in own.items()}
        rows += fold
        scores = ", ".join(f"{r['dataset']}:{r['person']} {r['corr']:.3f} (energy {r['energy_corr']:.3f})" for r in fold)
        log(f"[{k}/{len(folds)}] {ident}: {scores}; {time.perf_counter() - t0:.0f} s")
    return rows


def table(rows: list[dict]) -> str:
    """A markdown table of ``score_dataset`` rows, with the median over rows last."""
    lines = ["| dataset | person | frames | corr | offset | energy corr | energy offset |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['person']} | {r['frames']} | {r['corr']:.3f} | {signed(r['offset'])} | "
                     f"{r['energy_corr']:.3f} | {signed(r['energy_offset'])} |")
    if len(rows) > 1:
        med = lambda k: float(np.nanmedian([np.nan if r[k] is None else r[k] for r in rows]))  # noqa: E731
        lines.append(f"| median | | {int(np.median([r['frames'] for r in rows]))} | {med('corr'):.3f} | "
                     f"{signed(med('offset'))} | {med('energy_corr'):.3f} | {signed(med('energy_offset'))} |")
    return "\n".join(lines)


def speech_auc(speech: np.ndarray, silence: np.ndarray) -> float:
    """The chance that a speech frame's mouth is more open than a silent frame's (ties count half; Mann-Whitney's U
    over the pairs); NaN without both."""
    if not len(speech) or not len(silence):
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([speech, silence]))  # ties get their average rank
    return float((ranks[: len(speech)].sum() - len(speech) * (len(speech) + 1) / 2) / (len(speech) * len(silence)))


def score_speech(predictor: MouthPredictor, paths: list[str | Path], fps: float = 25.0) -> list[dict]:
    """Does the encoder open the mouth for speech it never heard, and close it in the pauses? One row per audio file
    (any voice, language or microphone; silero says where the speech is) and one for all files together.

    Returns:
        [{audio, frames, speech (share of frames), open_speech, open_silence (median predicted opening, in the
        standard deviations of the training speakers' openings), auc (``speech_auc``)}], the pooled row last
        ("all").

    Raises:
        PrepareError: a file that cannot be read as audio.
    """
    from common.errors import PrepareError
    from common.video_io import AUDIO_SR, read_audio
    from data_prep.audio_features import wav2lip_mel
    from speech.speaking import voice_activity

    rows, pooled = [], ([], [])
    for path in map(Path, paths):
        try:
            audio = read_audio(path)
        except Exception as e:  # noqa: BLE001  (ffmpeg's message on a file that is not audio)
            raise PrepareError(f"cannot read {path} as audio: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
        if audio is None or audio.size < AUDIO_SR / fps:
            raise PrepareError(f"{path} holds no audio")
        T = int(audio.size / AUDIO_SR * fps)
        predicted = predictor.opening(torch.from_numpy(mel_windows(wav2lip_mel(audio), T, fps)))
        voiced, _ = voice_activity(audio, T, fps)
        pooled[0].append(predicted[voiced])
        pooled[1].append(predicted[~voiced])
        rows.append(_speech_row(path.name, predicted[voiced], predicted[~voiced]))
    rows.append(_speech_row("all", np.concatenate(pooled[0]), np.concatenate(pooled[1])))
    return rows


def _speech_row(name: str, speech: np.ndarray, silence: np.ndarray) -> dict:
    median = lambda x: float(np.median(x)) if len(x) else float("nan")  # noqa: E731
    return {"audio": name, "frames": len(speech) + len(silence), "speech": len(speech) / max(len(speech) + len(silence), 1),
            "open_speech": median(speech), "open_silence": median(silence), "auc": speech_auc(speech, silence)}


def speech_table(rows: list[dict]) -> str:
    """A markdown table of ``score_speech`` rows."""
    lines = ["| audio | frames | speech | opening in speech | in silence | AUC |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['audio']} | {r['frames']} | {r['speech']:.0%} | {r['open_speech']:+.2f} | {r['open_silence']:+.2f} | "
              f"{r['auc']:.2f} |" for r in rows]
    return "\n".join(lines)


def mouth_on_speech(video: str | Path, audio: str | Path | None = None, max_seconds: float = 0.0) -> dict:
    """How the mouth of the (one) face in a video follows the speech of its audio track or of ``audio``.

    Each frame's mouth opening is measured as prepare measures it (face mesh, inner-lip gap over the eye-corner
    distance: about 0 closed, 0.3-0.5 wide open); silero says which frames are speech.

    Returns:
        {"fps", "opening" [T] (NaN: no face), "voiced" [T] bool, "energy" [T] log-RMS, and the summary: "frames",
        "faces" (share of frames with a face), "voiced_share", "open_speech" and "open_silence" (median openings),
        "moves_speech" and "moves_silence" (standard deviations), "auc" (the chance that a speech frame's mouth is
        more open than a silent frame's; 0.5: the mouth ignores the speech), "energy_corr" and "offset" (frames
        where the envelope lines up best with the mouth, over the speech frames; 0 is in sync)}.

    Raises:
        PrepareError: unreadable video, no audio, or no face in any frame.
    """
    from common.errors import PrepareError
    from common.video_io import AUDIO_SR, iter_frames, probe, read_audio
    from data_prep.audio_features import frame_zcr_rms
    from nerf.metrics import face_mesh_landmarks
    from speech.speaking import mouth_opening, voice_activity

    info = probe(video)
    sound = read_audio(audio if audio is not None else video)
    if sound is None or sound.size == 0:
        raise PrepareError(f"{audio or video} has no audio to compare the mouth with")
    frames = []
    for frame in iter_frames(video):
        frames.append(frame)
        if max_seconds and len(frames) >= max_seconds * info.fps:
            break
    T = len(frames)
    sound = sound[: int(round(T / info.fps * AUDIO_SR))]
    opening = mouth_opening(face_mesh_landmarks(np.stack(frames))).astype(np.float64)
    if not np.isfinite(opening).any():
        raise PrepareError(f"no face found in any of the {T} frames of {video}")
    voiced, _ = voice_activity(sound, T, info.fps)
    _, rms = frame_zcr_rms(sound, T, info.fps)
    energy = np.log(rms.astype(np.float64) + 1e-4)
    face = np.isfinite(opening)
    speech, silence = opening[face & voiced], opening[face & ~voiced]
    auc = speech_auc(speech, silence)
    stat = lambda f, x: float(f(x)) if len(x) else float("nan")  # noqa: E731
    sync = av_offset(energy, np.where(voiced, opening, np.nan), MAX_SHIFT)
    return {"fps": info.fps, "opening": opening, "voiced": voiced, "energy": energy, "frames": T,
            "faces": float(face.mean()), "voiced_share": float(voiced.mean()),
            "open_speech": stat(np.median, speech), "open_silence": stat(np.median, silence),
            "moves_speech": stat(np.std, speech), "moves_silence": stat(np.std, silence), "auc": auc,
            "energy_corr": pearson(energy, np.where(voiced, opening, np.nan)), "offset": _shift(sync)}


def speech_figure(result: dict, path: str | Path, title: str = "") -> None:
    """A picture of ``mouth_on_speech``: the audio envelope with speech shaded, and the mouth opening below."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from common.atomic_io import atomic_path

    t = np.arange(result["frames"]) / result["fps"]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    for ax in (top, bottom):
        ax.fill_between(t, 0, 1, where=result["voiced"], transform=ax.get_xaxis_transform(), color="tab:green",
                        alpha=0.15, linewidth=0, label="speech (silero)")
    top.plot(t, result["energy"], color="tab:gray", linewidth=0.8)
    top.set_ylabel("log RMS")
    top.set_title(title or f"mouth opening: median {result['open_speech']:.3f} in speech, {result['open_silence']:.3f} "
                  f"in silence; AUC {result['auc']:.2f}; offset {signed(result['offset'])} frames")
    bottom.plot(t, result["opening"], color="tab:red", linewidth=1.0)
    bottom.set_ylabel("mouth opening")
    bottom.set_xlabel("seconds")
    top.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
