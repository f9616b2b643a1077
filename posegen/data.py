"""What posegen learns from: per-frame poses, expressions, audio features and who speaks.

A ``Conversation`` is read from a prepared dataset (``from_dataset``) or built by
``posegen.synthetic``. Poses are (pitch, yaw, roll) in radians and the head
translation t (head units, about metres), as prepare writes them. The networks
see them normalized per person (``Stats``): z = (x - person mean) / person std,
so every output is a residual from the person's own mean pose, and amplitudes
carry over between people who move more or less.

Audio features per video frame (``frame_audio_features``): log RMS, zero-crossing
rate, silero's speech probability and ``mel_bands`` band energies of Wav2Lip's
mel spectrogram averaged over the frame's span; normalized by statistics pooled
over the training conversations.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from common import dataset
from common.errors import PrepareError
from data_prep.audio_features import MEL_FPS

POSE_DIM = 6
POSE_NAMES = ("pitch", "yaw", "roll", "tx", "ty", "tz")
POSE_STD_FLOOR = np.array([np.deg2rad(0.5)] * 3 + [1e-3] * 3, np.float32)  # 0.5 degree, 1 mm
EXPR_STD_FLOOR = 1e-3
RMS_FLOOR = 1e-4


@dataclasses.dataclass
class Conversation:
    """Everything posegen reads of one conversation; T frames, P persons.

    Attributes:
        name: the dataset directory's name (persons are called "<name>:<id>", as the NeRF names them).
        fps: frames per second.
        persons: P person names.
        pose: [T, P, 6] float32 (pitch, yaw, roll, tx, ty, tz); NaN where not tracked.
        expr: [T, P, K] float32 expression coefficients F_exp; NaN where not tracked.
        valid: [T, P] bool.
        speaking: [T, P] bool.
        audio: [T, A] float32 raw audio features (``frame_audio_features``).
        train_end: frames [0, train_end) are for training, [train_end, T) are held out.
        source_sha256: the source video's hash (to match a NeRF checkpoint), "" for synthetic data.
    """

    name: str
    fps: float
    persons: list[str]
    pose: np.ndarray
    expr: np.ndarray
    valid: np.ndarray
    speaking: np.ndarray
    audio: np.ndarray
    train_end: int
    source_sha256: str = ""

    @property
    def n_frames(self) -> int:
        return len(self.pose)

    def with_val_fraction(self, val_fraction: float) -> Conversation:
        """The same conversation with the last ``val_fraction`` of frames held out instead."""
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
        n_val = max(1, int(round(self.n_frames * val_fraction)))
        return dataclasses.replace(self, train_end=self.n_frames - n_val)


def frame_audio_features(zcr: np.ndarray, rms: np.ndarray, vad_prob: np.ndarray, mel: np.ndarray,
                         fps: float, mel_bands: int) -> np.ndarray:
    """Per-frame audio features: [T, 3 + mel_bands] = log RMS, ZCR, speech probability, band energies.

    Args:
        zcr, rms, vad_prob: [T] per video frame (data_prep.audio_features, speech.speaking).
        mel: [80, M] Wav2Lip mel spectrogram at 80 columns per second.
        fps: video frames per second.
        mel_bands: the 80 mel bins are averaged into this many bands (0: none).
    """
    T = len(zcr)
    cols = [np.log(np.maximum(rms, RMS_FLOOR)), zcr, vad_prob]
    if mel_bands:
        if 80 % mel_bands:
            raise ValueError(f"mel_bands must divide 80, got {mel_bands}")
        bands = mel.reshape(mel_bands, 80 // mel_bands, -1).mean(1)  # [B, M]
        span = max(1, int(round(MEL_FPS / fps)))
        centre = np.round(np.arange(T) * MEL_FPS / fps).astype(int)
        idx = np.clip(centre[:, None] + np.arange(span) - span // 2, 0, bands.shape[1] - 1)
        cols += list(bands[:, idx].mean(-1))
    return np.stack(cols, -1).astype(np.float32)


def from_dataset(root: str | Path, mel_bands: int, n_expr: int) -> Conversation:
    """A prepared dataset as a Conversation (its own train / val split).

    Raises:
        PrepareError: not a finished dataset of this schema.
    """
    root = Path(root)
    meta = dataset.read_meta(root)
    af = dataset.load_npz(root / "audio_features.npz")
    T, fps = int(meta["n_frames"]), float(meta["fps"])
    pose, expr, valid = [], [], []
    for info in meta["persons"]:
        tr = dataset.load_track(root, info["id"])
        v = tr["valid"].astype(bool)
        pose.append(np.where(v[:, None], np.concatenate([tr["euler"], tr["t"]], 1), np.nan))
        e = np.full((T, n_expr), np.nan, np.float32)
        k = min(n_expr, tr["expr"].shape[1])
        e[:, :k] = tr["expr"][:, :k]
        e[:, k:] = 0.0
        expr.append(np.where(v[:, None], e, np.nan))
        valid.append(v)
    names = [f"{root.name}:{info['id']}" for info in meta["persons"]]
    return Conversation(
        name=root.name, fps=fps, persons=names, pose=np.stack(pose, 1).astype(np.float32),
        expr=np.stack(expr, 1).astype(np.float32), valid=np.stack(valid, 1),
        speaking=af["speaking"].astype(bool),
        audio=frame_audio_features(af["zcr"], af["rms"], af["vad_prob"], af["mel"], fps, mel_bands),
        train_end=int(meta["splits"]["train"][1]), source_sha256=str(meta["source"].get("sha256", "")))


@dataclasses.dataclass
class Stats:
    """Normalization of every person's pose and expression and of the audio features."""

    pose_mean: dict[str, np.ndarray]  # person -> [6]
    pose_std: dict[str, np.ndarray]
    expr_mean: dict[str, np.ndarray]  # person -> [K]
    expr_std: dict[str, np.ndarray]
    audio_mean: np.ndarray  # [A]
    audio_std: np.ndarray

    @classmethod
    def fit(cls, convs: list[Conversation]) -> Stats:
        """Means and standard deviations over the training frames (floored so that still people stay finite)."""
        pm, ps, em, es = {}, {}, {}, {}
        for c in convs:
            for j, name in enumerate(c.persons):
                sel = c.valid[: c.train_end, j]
                if sel.sum() < 2:
                    raise PrepareError(f"{name} is tracked in fewer than 2 training frames")
                pose, expr = c.pose[: c.train_end, j][sel], c.expr[: c.train_end, j][sel]
                pm[name], ps[name] = pose.mean(0), np.maximum(pose.std(0), POSE_STD_FLOOR)
                em[name], es[name] = expr.mean(0), np.maximum(expr.std(0), EXPR_STD_FLOOR)
        audio = np.concatenate([c.audio[: c.train_end] for c in convs])
        return cls(pm, ps, em, es, audio.mean(0), np.maximum(audio.std(0), 1e-3))

    def norm_pose(self, person: str, pose: np.ndarray) -> np.ndarray:
        return (pose - self.pose_mean[person]) / self.pose_std[person]

    def denorm_pose(self, person: str, z: np.ndarray) -> np.ndarray:
        return z * self.pose_std[person] + self.pose_mean[person]

    def norm_expr(self, person: str, expr: np.ndarray) -> np.ndarray:
        return (expr - self.expr_mean[person]) / self.expr_std[person]

    def denorm_expr(self, person: str, z: np.ndarray) -> np.ndarray:
        return z * self.expr_std[person] + self.expr_mean[person]

    def norm_audio(self, audio: np.ndarray) -> np.ndarray:
        return ((audio - self.audio_mean) / self.audio_std).astype(np.float32)

    def to_dict(self) -> dict:
        """Plain lists, for a checkpoint."""
        as_lists = lambda d: {k: np.asarray(v).tolist() for k, v in d.items()}  # noqa: E731
        return {"pose_mean": as_lists(self.pose_mean), "pose_std": as_lists(self.pose_std),
                "expr_mean": as_lists(self.expr_mean), "expr_std": as_lists(self.expr_std),
                "audio_mean": self.audio_mean.tolist(), "audio_std": self.audio_std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Stats:
        arrays = lambda m: {k: np.asarray(v, np.float32) for k, v in m.items()}  # noqa: E731
        return cls(arrays(d["pose_mean"]), arrays(d["pose_std"]), arrays(d["expr_mean"]), arrays(d["expr_std"]),
                   np.asarray(d["audio_mean"], np.float32), np.asarray(d["audio_std"], np.float32))


def active_speaker(speaking: np.ndarray, listener: int) -> np.ndarray:
    """[T] index of the person (other than ``listener``) who speaks at each frame, -1 where nobody else does.

    Where several others speak at once, the lowest index is taken.
    """
    others = speaking.copy()
    others[:, listener] = False
    return np.where(others.any(1), others.argmax(1), -1)


def listener_inputs(stats: Stats, persons: list[str], speaker_pose_z: np.ndarray, speaking: np.ndarray,
                    audio_z: np.ndarray, listener: int) -> np.ndarray:
    """The listener network's input: [T, 6 + 1 + A] = the active speaker's normalized pose, a speech flag, audio.

    Args:
        speaker_pose_z: [T, P, 6] every person's normalized pose (real or generated); NaN is read as 0.
        speaking: [T, P] bool.
        audio_z: [T, A] normalized audio features.
    """
    s = active_speaker(speaking, listener)
    has = s >= 0
    pose = np.where(has[:, None], speaker_pose_z[np.arange(len(s)), np.maximum(s, 0)], 0.0)
    return np.concatenate([np.nan_to_num(pose), has[:, None], audio_z], 1).astype(np.float32)


def speaker_inputs(speaking_self: np.ndarray, audio_z: np.ndarray) -> np.ndarray:
    """The speaker network's input: [T, 1 + A] = whether this person speaks, audio."""
    return np.concatenate([speaking_self[:, None], audio_z], 1).astype(np.float32)


@dataclasses.dataclass
class Track:
    """One training sequence of one network: inputs, normalized targets and the frames the loss counts."""

    conv: str
    person: str
    role: str  # "listener" or "speaker"
    x: np.ndarray  # [T, C_in]
    y: np.ndarray  # [T, C_out] normalized; 0 where invalid
    mask: np.ndarray  # [T] bool: the person is tracked and in this role
    train_end: int


def tracks(conv: Conversation, stats: Stats) -> list[Track]:
    """Every (person, role) sequence of a conversation: a listener track per person (where it listens
    while being tracked) and a speaker track per person (where it speaks)."""
    audio_z = stats.norm_audio(conv.audio)
    pose_z = np.stack([stats.norm_pose(n, conv.pose[:, j]) for j, n in enumerate(conv.persons)], 1)
    out = []
    for j, name in enumerate(conv.persons):
        expr_z = stats.norm_expr(name, conv.expr[:, j])
        target = np.nan_to_num(np.concatenate([pose_z[:, j], expr_z], 1)).astype(np.float32)
        x_l = listener_inputs(stats, conv.persons, pose_z, conv.speaking, audio_z, j)
        out.append(Track(conv.name, name, "listener", x_l, target, conv.valid[:, j] & ~conv.speaking[:, j],
                         conv.train_end))
        x_s = speaker_inputs(conv.speaking[:, j], audio_z)
        out.append(Track(conv.name, name, "speaker", x_s, target[:, :POSE_DIM], conv.valid[:, j] & conv.speaking[:, j],
                         conv.train_end))
    return out
