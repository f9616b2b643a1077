"""Who speaks when in new audio, matched to the trained persons by their voices.

Rendering a new conversation from an audio file alone needs a speaking
timeline [T, P] (bool) at the video fps for the P trained persons. This module
makes it in three steps:

1. ``enroll``: every person of every prepared dataset gets a speaker
   embedding from the dataset's ``audio.wav`` over the frames where prepare
   says that person speaks (``audio_features.npz: speaking``). Persons are
   named ``"<dataset dir name>:<id>"``, as the NeRF names them. A person with
   less than ``MIN_VOICE_S`` seconds of speech gets no voice (``has_voice``
   False): a listener who never talks cannot be recognised by voice, but can
   still be made to speak with a roles file (``roles_from_json``).
2. ``assign``: silero voice activity (``speech.speaking.voice_activity``)
   finds the speech; voiced runs closer than ``MERGE_GAP_S`` are one run;
   a run long enough to hold two ``CHANGE_WINDOW_S`` windows is cut where
   the voice may change (the similarity of the windows just before and just
   after a point drops below ``CHANGE_SIM``: generous on purpose, a cut
   inside one voice costs little); every piece gets an embedding and goes to
   the enrolled voice it is most similar to (cosine); a cut between two
   different persons is placed again with short windows (``refine_change``)
   and moved into a pause when one lies within ``2 * CHANGE_HOP_S``;
   neighbouring pieces that went to the same person are one turn again.
   Silence goes to nobody; a pause shorter than ``MERGE_GAP_S`` inside one
   person's turn stays that person's (a breath does not make the speaker a
   listener for a few frames).
3. ``roles_from_json``: the same timeline from a user's roles file, for
   voices that were never enrolled or to override the guess.

Speaker embeddings: ``speech.voice_encoder`` (Resemblyzer's GE2E encoder, run from its wheel's weights).

Measured with this code (tests/test_voices.py's material): a real man and a
real woman (the dev clips) enrolled from 2.2 s and 1.3 s of speech have
cosine similarity 0.51, and their other speech matches its own voice by
0.11-0.31 more than the other voice. The synthetic voices of
``data_prep.synthetic`` enrolled from a 16 s conversation have similarity
0.68; a new 12.5 s conversation (five turns, one change without a pause, one
after a 0.25 s pause) is assigned right on 97.6-100% of its voiced frames
over 20 seeds (the five turns exactly right in all 20), a new 60 s one
(23 turns with pauses) on 100%. Enrolled from the 6 s prepared synthetic
dataset instead (2.2 s per person, prepare's own speaking timeline): 95% on
average over 20 seeds, 69% at worst, the turns exactly right in 19 of 20.
One minute of audio takes about 5 s on a shared 2-core CPU (the encoder runs
on one thread), plus about 2 s of loading on the first call.

Limits: one speaker per frame (overlapping speech goes to one voice); a
voice that was never enrolled still goes to its nearest enrolled person (the
per-turn ``scores`` say how near); a turn shorter than about half a second
has an unreliable embedding; a change of speaker with no pause is found only
inside a run of at least two ``CHANGE_WINDOW_S`` windows, and its boundary
is placed to about ``CHANGE_HOP_S``.
"""


from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from common import dataset
from common.video_io import AUDIO_SR, fit_audio, read_wav
from data_prep.audio_features import check_clock, clean_audio
from speech.roles import RolesError, read_roles
from speech.voice_encoder import (  # noqa: F401  (the embedding's names, as voices.X too)
    _HOP,
    _MEL_FPS,
    EMBED_DIM,
    ENCODER_NAME,
    VoiceEncoder,
    VoiceError,
    _encode,
    _unit,
    embed_utterance,
    load_encoder,
    mel_frames,
    normalize_volume,
    weights_path,
)

MIN_VOICE_S = 1.5
MERGE_GAP_S = 0.3
CHANGE_WINDOW_S = 1.0
CHANGE_HOP_S = 0.2
CHANGE_SIM = 0.7
REFINE_WINDOW_S = 0.5
REFINE_HOP_S = 0.1


def window_embeddings(audio: np.ndarray, window_s: float = CHANGE_WINDOW_S,
                      hop_s: float = CHANGE_HOP_S) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of sliding windows over one stretch of speech (volume-normalised as a whole).

    Args:
        audio: [N] float samples at 16 kHz.
        window_s: window length, seconds (a multiple of 10 ms).
        hop_s: step between windows, seconds (a multiple of 10 ms).

    Returns:
        starts: [K] int, the first 10 ms mel frame of each window (window k covers
            samples [160 starts[k], 160 (starts[k] + window)).
        embeddings: [K, 256] float32, unit length; K = 0 when the audio is shorter than one window.
    """
    length, hop = int(round(window_s * _MEL_FPS)), max(1, int(round(hop_s * _MEL_FPS)))
    mel = mel_frames(normalize_volume(clean_audio(audio)))
    n_mel = min(mel.shape[0], audio.size // _HOP)  # frames whose windows lie inside the audio
    starts = np.arange(0, n_mel - length + 1, hop, dtype=np.int64)
    if starts.size == 0:
        return starts, np.zeros((0, EMBED_DIM), np.float32)
    return starts, _encode(np.stack([mel[s:s + length] for s in starts]))


def change_points(audio: np.ndarray, window_s: float = CHANGE_WINDOW_S, hop_s: float = CHANGE_HOP_S,
                  threshold: float = CHANGE_SIM) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the voice changes inside one stretch of continuous speech.

    A candidate point c (every ``hop_s``) compares the window that ends at c
    with the window that starts there: similarity s(c) = cosine of their
    embeddings. Points are taken lowest similarity first while s(c) <
    ``threshold``, each at least one window from the ends and from every point
    already taken, so every piece lasts at least ``window_s``.

    Args:
        audio: [N] float samples at 16 kHz.
        window_s: length of the two compared windows, seconds.
        hop_s: spacing of the candidate points, seconds; window_s must be a multiple of it.
        threshold: split where the similarity is below this.

    Returns:
        points: [C] int sample indices of the changes, increasing.
        candidates: [K] int sample index of every candidate point.
        similarity: [K] float32 similarity at every candidate point.
    """
    length, hop = int(round(window_s * _MEL_FPS)), max(1, int(round(hop_s * _MEL_FPS)))
    if length % hop:
        raise VoiceError(f"the change window ({window_s} s) must be a multiple of its hop ({hop_s} s)")
    starts, emb = window_embeddings(audio, window_s, hop_s)
    lag = length // hop  # window k ends where window k + lag starts
    if emb.shape[0] <= lag:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float32)
    sim = np.einsum("kd,kd->k", emb[:-lag], emb[lag:]).astype(np.float32)
    at = (starts[:-lag] + length) * _HOP
    taken: list[int] = []
    for k in np.argsort(sim, kind="stable"):
        if sim[k] >= threshold:
            break
        if all(abs(int(at[k]) - t) >= length * _HOP for t in taken):
            taken.append(int(at[k]))
    return np.array(sorted(taken), np.int64), at.astype(np.int64), sim


def refine_change(audio: np.ndarray, start: int, change: int, end: int, fps: float,
                  left_voice: np.ndarray, right_voice: np.ndarray) -> int:
    """Place a change between two known voices to about ``REFINE_HOP_S``.

    Short windows (``REFINE_WINDOW_S``, every ``REFINE_HOP_S``) within one
    ``CHANGE_WINDOW_S`` of the coarse change each vote d = cos(window, left
    voice) - cos(window, right voice); the change goes where the votes before
    it are most positive and the votes after it most negative (the split that
    maximises sum(d before) - sum(d after)). Both pieces keep at least
    ``REFINE_WINDOW_S``.

    Args:
        audio: [N] the whole clip, 16 kHz.
        start, change, end: video frames: the left piece is [start, change), the right [change, end).
        fps: video frames per second.
        left_voice, right_voice: [256] unit embeddings of the two voices.

    Returns:
        The refined change, a video frame in (start, end).
    """
    reach = int(round(CHANGE_WINDOW_S * fps))
    lo, hi = max(start, change - reach), min(end, change + reach)
    s0 = _frame_sample(lo, fps)
    starts, emb = window_embeddings(audio[s0:_frame_sample(hi, fps)], REFINE_WINDOW_S, REFINE_HOP_S)
    if starts.size < 2:
        return change
    votes = emb @ left_voice - emb @ right_voice
    centres = (s0 + (starts + REFINE_WINDOW_S * _MEL_FPS / 2) * _HOP) / AUDIO_SR * fps  # video frames
    # Splitting before window j: windows < j vote left, windows >= j vote right.
    gain = np.concatenate([[0.0], np.cumsum(votes)])
    score = gain - (gain[-1] - gain)
    j = int(np.argmax(score[1:-1])) + 1
    edge = int(math.ceil(REFINE_WINDOW_S * fps))
    refined = int(round((centres[j - 1] + centres[j]) / 2))
    return int(np.clip(refined, start + edge, end - edge)) if end - start > 2 * edge else change


@dataclasses.dataclass
class VoiceBank:
    """The enrolled voices of the trained persons.

    Attributes:
        names: P person names, ``"<dataset dir name>:<id>"``.
        embeddings: [P, 256] float32 unit-length voice embeddings; zero rows where ``has_voice`` is False.
        has_voice: [P] bool, whether the person spoke long enough (``MIN_VOICE_S``) to be enrolled.
        speech_s: [P] float32 seconds of the person's speech in the dataset audio.
        encoder: the embedding's name (``ENCODER_NAME``); a bank from another encoder cannot be used.
    """

    names: list[str]
    embeddings: np.ndarray
    has_voice: np.ndarray
    speech_s: np.ndarray
    encoder: str = ENCODER_NAME

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        self.embeddings = np.asarray(self.embeddings, np.float32).reshape(len(self.names), -1)
        self.has_voice = np.asarray(self.has_voice, bool).reshape(len(self.names))
        self.speech_s = np.asarray(self.speech_s, np.float32).reshape(len(self.names))
        self.encoder = str(self.encoder)
        if len(set(self.names)) != len(self.names):
            raise VoiceError(f"person names must be unique, got {self.names}")
        if self.embeddings.shape[1] != EMBED_DIM:
            raise VoiceError(f"voice embeddings must be [P, {EMBED_DIM}], got {self.embeddings.shape}")

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of lists, numbers and strings (``json.dump`` and ``np.savez`` both take it)."""
        return {"encoder": self.encoder, "names": list(self.names),
                "embeddings": self.embeddings.astype(float).round(7).tolist(),
                "has_voice": self.has_voice.tolist(), "speech_s": self.speech_s.astype(float).round(3).tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VoiceBank:
        """The bank that ``to_dict`` described; also takes the arrays of a loaded ``.npz``.

        Raises:
            VoiceError: keys missing, or the bank was made with another encoder.
        """
        missing = {"encoder", "names", "embeddings", "has_voice", "speech_s"} - set(d)
        if missing:
            raise VoiceError(f"a voice bank needs the keys {sorted(missing)}")
        encoder = str(np.asarray(d["encoder"]).item()) if isinstance(d["encoder"], np.ndarray) else str(d["encoder"])
        if encoder != ENCODER_NAME:
            raise VoiceError(f"the voices were enrolled with {encoder!r}, this code embeds with {ENCODER_NAME!r}: "
                             "enroll the datasets again")
        names = [str(n) for n in np.asarray(d["names"]).reshape(-1)]
        emb = np.asarray(d["embeddings"], np.float32).reshape(len(names), EMBED_DIM) if names else \
            np.zeros((0, EMBED_DIM), np.float32)
        return cls(names, emb, d["has_voice"], d["speech_s"], encoder)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the bank as ``.json`` or ``.npz`` (by the suffix) and return the path."""
        path = Path(path)
        if path.suffix == ".json":
            path.write_text(json.dumps(self.to_dict()))
        elif path.suffix == ".npz":
            d = self.to_dict()
            np.savez(path, encoder=np.array(d["encoder"]), names=np.array(self.names, dtype=str),
                     embeddings=self.embeddings, has_voice=self.has_voice, speech_s=self.speech_s)
        else:
            raise VoiceError(f"save a voice bank as .json or .npz, not {path.name}")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> VoiceBank:
        """Read a bank written by ``save``."""
        path = Path(path)
        if path.suffix == ".json":
            return cls.from_dict(json.loads(path.read_text()))
        with np.load(path, allow_pickle=False) as z:
            return cls.from_dict({k: z[k] for k in z.files})


class Turn(NamedTuple):
    """One speaker turn: frames [start, end) go to ``person``, whose voice matched with ``similarity``."""

    start: int
    end: int
    person: str
    similarity: float


@dataclasses.dataclass
class Assignment:
    """Who speaks when in one audio clip.

    Attributes:
        persons: the P person names, the columns of ``speaking`` and ``scores``.
        speaking: [T, P] bool, at most one True per frame; all False in silence.
        voiced: [T] bool, silero voice activity.
        turns: N turns in time order, (start_frame, end_frame, person_name, similarity).
        scores: [N, P] float32 cosine similarity of each turn's voice to each
            person's (NaN for persons without a voice).
    """

    persons: list[str]
    speaking: np.ndarray
    voiced: np.ndarray
    turns: list[Turn]
    scores: np.ndarray


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open [start, end) index ranges where the 1-D bool ``mask`` is True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _frame_sample(frame: int, fps: float) -> int:
    """The first 16 kHz sample of video frame ``frame`` (frame i starts at i / fps)."""
    return int(round(frame / fps * AUDIO_SR))


def _read_wav(path: Path) -> np.ndarray:
    audio, sr = read_wav(path)
    if sr != AUDIO_SR:
        raise VoiceError(f"{path} is {sr} Hz; a prepared dataset's audio.wav is {AUDIO_SR} Hz mono: prepare it again")
    return audio


def enroll(dataset_dirs: list[str | os.PathLike], min_voice_s: float = MIN_VOICE_S) -> VoiceBank:
    """Enroll the voice of every person of every prepared dataset.

    A person's embedding comes from the dataset's audio over the frames where
    ``audio_features.npz: speaking`` says that person speaks (frame i is
    samples [i / fps, (i + 1) / fps) x 16 kHz), all those stretches joined
    and embedded as one utterance (``embed_utterance``). With less than
    ``min_voice_s`` seconds of speech the person gets no voice.

    Args:
        dataset_dirs: prepared dataset directories (``scripts/prepare.py``).
        min_voice_s: least speech, seconds, to enroll a voice.

    Returns:
        The bank, persons in the NeRF's order: dataset by dataset, each dataset's persons as in meta.json.

    Raises:
        VoiceError: no dataset, a dataset without audio or speaking, or one given twice.
        common.errors.PrepareError: a directory is not a finished dataset of this schema version.
    """
    if not dataset_dirs:
        raise VoiceError("enroll needs at least one prepared dataset directory")
    names, embeddings, has_voice, speech_s = [], [], [], []
    for d in dataset_dirs:
        root = Path(d)
        meta = dataset.read_meta(root)
        fps, n_frames = float(meta["fps"]), int(meta["n_frames"])
        features = root / "audio_features.npz"
        if not (root / "audio.wav").is_file() or not features.is_file():
            raise VoiceError(f"{root} lacks audio.wav or audio_features.npz: prepare the video again")
        audio = _read_wav(root / "audio.wav")
        with np.load(features) as z:
            if "speaking" not in z.files:
                raise VoiceError(f"{features} has no 'speaking' timeline: prepare the video again")
            speaking = np.asarray(z["speaking"], bool)
        ids = [int(p["id"]) for p in meta["persons"]]
        if speaking.ndim != 2 or speaking.shape[0] != n_frames or (ids and max(ids) >= speaking.shape[1]):
            raise VoiceError(f"{features}: speaking is {speaking.shape}, expected "
                             f"[{n_frames}, {max(ids, default=-1) + 1}]; prepare the video again")
        for pid in ids:
            name = f"{root.name}:{pid}"
            if name in names:
                raise VoiceError(f"two persons are named {name}: is a dataset (or two of the same name) given twice?")
            pieces = [audio[_frame_sample(a, fps):_frame_sample(b, fps)] for a, b in _runs(speaking[:, pid])]
            speech = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
            seconds = speech.size / AUDIO_SR
            voiced = seconds >= min_voice_s and bool(np.any(speech))
            names.append(name)
            speech_s.append(seconds)
            has_voice.append(voiced)
            embeddings.append(embed_utterance(speech) if voiced else np.zeros(EMBED_DIM, np.float32))
    emb = np.stack(embeddings)
    has = np.asarray(has_voice) & (np.linalg.norm(emb, axis=1) > 0)
    return VoiceBank(names, emb, has, np.asarray(speech_s, np.float32))


def _select(bank: VoiceBank, persons: list[str] | None) -> list[int]:
    """Rows of ``bank`` for the chosen person names (all when None)."""
    if persons is None:
        return list(range(len(bank.names)))
    rows = []
    for name in persons:
        if name not in bank.names:
            raise VoiceError(f"{name!r} is not an enrolled person; the bank holds {', '.join(bank.names) or 'nobody'}")
        rows.append(bank.names.index(name))
    if len(set(rows)) != len(rows):
        raise VoiceError(f"persons repeat a name: {persons}")
    return rows


def assign(audio: np.ndarray, n_frames: int, fps: float, bank: VoiceBank,
           persons: list[str] | None = None, change_sim: float = CHANGE_SIM) -> Assignment:
    """Decide who speaks when in new audio, by voice (see the module doc for the steps).

    Args:
        audio: [N] float32 mono samples at 16 kHz; padded with silence or trimmed
            to n_frames / fps seconds (``common.video_io.fit_audio``, which warns on a mismatch).
        n_frames: T, the number of video frames to render.
        fps: video frames per second.
        bank: enrolled voices (``enroll``).
        persons: the P names to choose among, in the order of the output columns
            (default: every person of the bank). Persons without a voice are
            columns that stay False.
        change_sim: split a run where the similarity of the windows either side
            of a point drops below this (``change_points``).

    Returns:
        The assignment: speaking [T, P], voiced [T], turns and per-turn scores [N, P].

    Raises:
        VoiceError: unknown or repeated names, a bank from another encoder, or
            speech to assign but no chosen person with a voice.
        common.errors.PrepareError: no frame, or fps not positive.
    """
    check_clock(n_frames, fps)
    if bank.encoder != ENCODER_NAME:
        raise VoiceError(f"the bank was enrolled with {bank.encoder!r}, this code embeds with {ENCODER_NAME!r}")
    rows = _select(bank, persons)
    names = [bank.names[r] for r in rows]
    voice = bank.has_voice[rows]
    emb = bank.embeddings[rows]
    audio = fit_audio(clean_audio(audio), n_frames, fps)

    from speech.speaking import voice_activity

    voiced, _ = voice_activity(audio, n_frames, fps)
    speaking = np.zeros((n_frames, len(rows)), bool)
    runs = _runs(voiced)
    if not runs:
        return Assignment(names, speaking, voiced, [], np.zeros((0, len(rows)), np.float32))
    if not voice.any():
        raise VoiceError(f"none of {', '.join(names)} has an enrolled voice (each needs >= {MIN_VOICE_S} s of "
                         "speech in its dataset): say who speaks when with a roles file instead")

    gap = int(round(MERGE_GAP_S * fps))
    reach = int(round(CHANGE_HOP_S * 2 * fps))  # how far a change may move into a pause
    merged = [list(runs[0])]
    for a, b in runs[1:]:
        if a - merged[-1][1] < gap:
            merged[-1][1] = b
        else:
            merged.append([a, b])

    pieces: list[tuple[int, int, bool]] = []  # (start frame, end frame, follows the previous piece without a pause)
    for a, b in merged:
        s0, s1 = _frame_sample(a, fps), _frame_sample(b, fps)
        points, _, _ = change_points(audio[s0:s1], threshold=change_sim)
        cuts = sorted({int(round((s0 + p) / AUDIO_SR * fps)) for p in points} - {a, b})
        bounds = [a, *[c for c in cuts if a < c < b], b]
        for i in range(len(bounds) - 1):
            pieces.append((bounds[i], bounds[i + 1], i > 0))

    def similarities() -> np.ndarray:
        out = [np.where(voice, emb @ embed_utterance(audio[_frame_sample(a, fps):_frame_sample(b, fps)]), np.nan)
               for a, b, _ in pieces]
        return np.asarray(out, np.float32).reshape(len(pieces), len(rows))

    sims = similarities()
    best = np.nanargmax(sims, axis=1)
    # A change between two different voices is placed again more finely; then the pieces are scored again.
    moved = False
    for k in range(1, len(pieces)):
        if pieces[k][2] and best[k] != best[k - 1]:
            a, c, b = pieces[k - 1][0], pieces[k][0], pieces[k][1]
            c2 = refine_change(audio, a, c, b, fps, emb[best[k - 1]], emb[best[k]])
            if c2 != c:
                pieces[k - 1] = (a, c2, pieces[k - 1][2])
                pieces[k] = (c2, b, True)
                moved = True
    if moved:
        sims = similarities()
        best = np.nanargmax(sims, axis=1)

    # Pieces cut from one run that went to the same person are one turn again (scores weighted by length).
    groups: list[list[int]] = []
    for k, (_, _, joined) in enumerate(pieces):
        if groups and joined and best[groups[-1][-1]] == best[k]:
            groups[-1].append(k)
        else:
            groups.append([k])
    spans, scores = [], []
    for g in groups:
        weights = np.array([pieces[k][1] - pieces[k][0] for k in g], np.float64)
        scores.append((sims[g] * weights[:, None]).sum(0) / weights.sum())
        spans.append([pieces[g[0]][0], pieces[g[-1]][1], int(best[g[0]]), pieces[g[0]][2]])

    # A change of person next to a short pause moves into the pause, which is then nobody's.
    pauses = _runs(~voiced)
    for k in range(1, len(spans)):
        (a, _, left, _), (c, b, right, joined) = spans[k - 1], spans[k]
        near = [(g0, g1) for g0, g1 in pauses if a < g0 and g1 < b and g0 - reach <= c <= g1 + reach]
        if joined and left != right and near:
            g0, g1 = min(near, key=lambda g: min(abs(g[0] - c), abs(g[1] - c)))
            spans[k - 1][1], spans[k][0] = g0, g1
    turns = []
    for (a, b, p, _), row in zip(spans, scores):
        speaking[a:b, p] = True
        turns.append(Turn(a, b, names[p], float(row[p])))
    return Assignment(names, speaking, voiced, turns, np.asarray(scores, np.float32))


def roles_from_json(path: str | os.PathLike, persons: list[str], n_frames: int, fps: float) -> np.ndarray:
    """Read who speaks when from a user's roles file (``speech.roles.read_roles``: a JSON list of
    ``{"person": <name or index>, "start": <seconds>, "end": <seconds>}``, or a compose turns.json).

    Returns:
        speaking: [T, P] bool, at most one True per frame.

    Raises:
        VoiceError: unreadable or malformed JSON, unknown persons, negative, inverted, overlapping or
            out-of-clip intervals.
        common.errors.PrepareError: no frame, or fps not positive.
    """
    try:
        return read_roles(path, persons, n_frames, fps)
    except RolesError as e:
        raise VoiceError(str(e)) from None
