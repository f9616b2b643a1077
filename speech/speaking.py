"""Who speaks when: voice activity from silero-vad, the speaker from lips and audio.

``voice_activity`` says when anybody speaks; ``active_speaker`` says who. The
choice is audio-visual: the speaker is the person whose mouth moves while the
audio is voiced and whose mouth opening rises and falls with the audio
envelope. Every array is on the video clock of ``common.video_io`` (frame
i at time i / fps).

Limits: one speaker per frame, so overlapping speech goes to whoever's lips
fit the audio best; a voice from off screen goes to somebody whose face is
visible; a listener who laughs or chews while the other speaks can win a
window; silero's threshold decides what counts as speech (whispers may not).
"""

from __future__ import annotations

import warnings

import numpy as np

from common.errors import PrepareError
from common.landmarks import LEFT_EYE_OUTER, LOWER_INNER_LIP, RIGHT_EYE_OUTER, UPPER_INNER_LIP
from common.video_io import AUDIO_SR
from data_prep.audio_features import check_clock, clean_audio, frame_zcr_rms

VAD_THRESHOLD = 0.5
MIN_SPEECH_MS = 250
# Long enough to bridge the pauses between words, short enough to end a turn.
MIN_SILENCE_MS = 200
SPEECH_PAD_MS = 30
# A person needs landmarks on this share of a window's frames to be chosen.
MIN_VALID_SHARE = 0.25
MIN_SEGMENT_S = 0.3

_vad_model = None


def _silero():
    """The silero-vad TorchScript model shipped inside the wheel, loaded once."""
    global _vad_model
    if _vad_model is None:
        import torch

        # Importing silero_vad sets torch's thread count to 1 for the whole process (its model.py): everything the
        # process trains or renders after prepare would run on one core, and differ in its last bits from a fresh
        # process's run. The count is given back.
        threads = torch.get_num_threads()
        try:
            from silero_vad import load_silero_vad

            # silero's loader uses importlib.resources.path and torch.jit.load, both deprecated, both fine.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                _vad_model = load_silero_vad()
        finally:
            torch.set_num_threads(threads)
    return _vad_model


def _speech_segments(probs: np.ndarray, chunk: int, sr: int, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Silero's ``get_speech_timestamps`` rules applied to its chunk probabilities.

    A segment starts at a chunk with probability >= 0.5; after a chunk below
    0.35 it ends there unless a chunk >= 0.5 comes within 200 ms; segments
    under 250 ms are dropped and the rest padded by 30 ms each side.

    Args:
        probs: [K] speech probability of chunk k, samples [k * chunk, (k + 1) * chunk).
        chunk: samples per chunk.
        sr: sample rate in Hz.
        n_samples: the audio's length, where the last segment ends at the latest.

    Returns:
        starts, ends: [S] sample indices of the segments, both increasing.
    """
    min_silence = MIN_SILENCE_MS * sr / 1000
    segments = []
    start = silent_from = None
    for k, p in enumerate(probs):
        at = k * chunk
        if p >= VAD_THRESHOLD:
            silent_from = None
            if start is None:
                start = at
        elif start is not None and p < VAD_THRESHOLD - 0.15:
            if silent_from is None:
                silent_from = at
            if at - silent_from >= min_silence:
                segments.append((start, silent_from))
                start = silent_from = None
    if start is not None:
        segments.append((start, n_samples))
    pad = SPEECH_PAD_MS * sr / 1000
    kept = [(max(0.0, a - pad), min(float(n_samples), b + pad))
            for a, b in segments if b - a >= MIN_SPEECH_MS * sr / 1000]
    bounds = np.array(kept, np.float64).reshape(-1, 2)
    return bounds[:, 0], bounds[:, 1]


def voice_activity(audio: np.ndarray, n_frames: int, fps: float,
                   sr: int = AUDIO_SR) -> tuple[np.ndarray, np.ndarray]:
    """Whether anybody speaks at each video frame, by silero-vad.

    Silero gives a speech probability per 512-sample chunk (32 ms at 16 kHz);
    the rules of its ``get_speech_timestamps`` turn them into segments (see
    ``_speech_segments``: enter at 0.5, leave below 0.35 after 200 ms of
    silence, drop segments under 250 ms, pad by 30 ms). A frame is voiced
    when its time falls in a segment. One minute of audio takes about 0.8 s
    on one CPU core, plus about 1.5 s of TorchScript warm-up on the first call.
    The model is shared by the process and keeps state: do not call this from
    two threads at once.

    Args:
        audio: [N] mono samples at ``sr`` Hz.
        n_frames: T, the number of video frames.
        fps: video frames per second.
        sr: 16000 (or 8000, which silero also takes).

    Returns:
        voiced: [T] bool.
        prob: [T] float32, the chunk probabilities interpolated at frame times.

    Raises:
        PrepareError: a sample rate silero cannot take.
    """
    import torch

    if sr not in (8000, 16000):
        raise PrepareError(f"voice activity needs 16 kHz (or 8 kHz) audio, got {sr} Hz; resample it first")
    check_clock(n_frames, fps)
    audio = clean_audio(audio)
    if audio.size == 0:
        return np.zeros(n_frames, bool), np.zeros(n_frames, np.float32)
    chunk = 512 if sr == 16000 else 256
    padded = torch.from_numpy(np.pad(audio, (0, -audio.size % chunk)))
    model = _silero()
    # The model carries state from chunk to chunk: one clip, one fresh state.
    model.reset_states()
    with torch.no_grad():
        probs = np.array([model(c, sr).item() for c in padded.split(chunk)], np.float64)
    starts, ends = _speech_segments(probs, chunk, sr, audio.size)
    sample = np.arange(n_frames) / fps * sr
    # Segments are sorted: the last one starting at or before a frame is the one that can hold it.
    k = np.searchsorted(starts, sample, side="right") - 1
    voiced = (k >= 0) & (sample < ends[np.maximum(k, 0)]) if starts.size else np.zeros(n_frames, bool)
    centres = (np.arange(probs.size) + 0.5) * chunk
    prob = np.interp(sample, centres, probs).astype(np.float32)
    return voiced, prob


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip gap over the outer-eye-corner distance, a size-free mouth opening.

    Distances use all three coordinates, which must share one unit (pixels,
    or mediapipe's normalised x, y, z on a square crop), so that turning the
    head shrinks the eye distance less than it would in 2D.

    Args:
        landmarks: [T, 478, 3] face-mesh landmarks (468 points also work).

    Returns:
        [T] float32, about 0 with closed lips and 0.3-0.5 wide open; NaN where
        the landmarks are NaN or the eye corners coincide.

    Raises:
        PrepareError: landmarks are not [T, >=264, 3].
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.ndim != 3 or landmarks.shape[1] <= LEFT_EYE_OUTER or landmarks.shape[2] != 3:
        raise PrepareError(f"landmarks must be face-mesh points of shape [T, 478, 3], got {landmarks.shape}")
    gap = np.linalg.norm(landmarks[:, UPPER_INNER_LIP] - landmarks[:, LOWER_INNER_LIP], axis=-1)
    scale = np.linalg.norm(landmarks[:, RIGHT_EYE_OUTER] - landmarks[:, LEFT_EYE_OUTER], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        opening = np.where(scale > 0, gap / scale, np.nan)
    return opening.astype(np.float32)


def _window_sum(x: np.ndarray, half: int) -> np.ndarray:
    """Sum of x over frames [t - half, t + half] (cut at the clip's ends), for each t.

    Args:
        x: [T, ...] values.
        half: frames each side.

    Returns:
        [T, ...] float64 sums.
    """
    t = x.shape[0]
    cum = np.concatenate([np.zeros((1,) + x.shape[1:]), np.cumsum(x, axis=0, dtype=np.float64)])
    lo = np.clip(np.arange(t) - half, 0, t)
    hi = np.clip(np.arange(t) + half + 1, 0, t)
    return cum[hi] - cum[lo]


def active_speaker(voiced: np.ndarray, mouth_open: np.ndarray, valid: np.ndarray, envelope: np.ndarray,
                   fps: float, window_s: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Choose who speaks at each voiced frame from lips and audio.

    In a window of ``window_s`` seconds centred on each frame every person
    gets score = correlation + activity:
      - correlation: Pearson correlation between the person's mouth opening
        and the audio envelope over the window's frames where the person has
        landmarks (speech is loud when the mouth is open, the mouth is shut in
        silence); 0 when either is constant;
      - activity: the mean |frame-to-frame change| of the mouth opening over
        the window's voiced frames, divided by the largest among the persons
        who can be chosen (1 for the most active mouth).
    At a voiced frame the best-scoring person speaks; at an unvoiced frame
    nobody does. A person with landmarks on fewer than a quarter of the
    window's frames (or fewer than 3) cannot be chosen; when nobody can,
    nobody speaks. A majority vote over 0.3 s then removes flicker. With one
    person, speaking is simply ``voiced``.

    Args:
        voiced: [T] bool, from ``voice_activity``.
        mouth_open: [T, P] mouth opening per person (``mouth_opening``), NaN allowed.
        valid: [T, P] bool, whether the person's landmarks are real at the frame.
        envelope: [T] audio envelope per frame (RMS).
        fps: video frames per second.
        window_s: the scoring window, seconds.

    Returns:
        speaking: [T, P] bool, at most one True per frame.
        scores: [T, P] float32, NaN where the person cannot be chosen.

    Raises:
        PrepareError: the arrays do not share T frames and P persons.
    """
    voiced = np.asarray(voiced, bool)
    mouth_open = np.asarray(mouth_open, np.float64)
    valid = np.asarray(valid, bool)
    envelope = np.nan_to_num(np.asarray(envelope, np.float64))
    n_frames = voiced.shape[0]
    if (voiced.ndim != 1 or mouth_open.ndim != 2 or mouth_open.shape[0] != n_frames or valid.shape != mouth_open.shape
            or envelope.shape != (n_frames,)):
        raise PrepareError(f"active_speaker needs voiced [T], mouth_open [T, P], valid [T, P], envelope [T]; got "
                           f"{voiced.shape}, {mouth_open.shape}, {valid.shape}, {envelope.shape}")
    check_clock(n_frames, fps)
    half = max(1, int(round(window_s * fps / 2)))

    seen = valid & np.isfinite(mouth_open)
    w = seen.astype(np.float64)
    x = np.where(seen, mouth_open, 0.0)
    y = envelope[:, None] * w
    n = _window_sum(w, half)
    window_len = _window_sum(np.ones((n_frames, 1)), half)
    eligible = (n >= 3) & (n >= MIN_VALID_SHARE * window_len)

    # Pearson correlation from windowed moments, each over the person's own seen frames.
    safe_n = np.maximum(n, 1.0)
    mean_x, mean_y = _window_sum(x, half) / safe_n, _window_sum(y, half) / safe_n
    cov = _window_sum(x * y, half) / safe_n - mean_x * mean_y
    var_x = np.maximum(_window_sum(x * x, half) / safe_n - mean_x ** 2, 0.0)
    var_y = np.maximum(_window_sum(y * y, half) / safe_n - mean_y ** 2, 0.0)
    # Below these variances a signal is constant up to rounding: it tells nothing.
    informative = (var_x > 1e-10) & (var_y > 1e-12)
    corr = np.where(informative, cov / np.sqrt(np.where(informative, var_x * var_y, 1.0)), 0.0)

    change = np.zeros_like(x)
    change[1:] = np.abs(np.diff(x, axis=0))
    moving = np.zeros_like(seen)
    moving[1:] = seen[1:] & seen[:-1] & voiced[1:, None]
    activity = _window_sum(change * moving, half) / np.maximum(_window_sum(moving.astype(np.float64), half), 1.0)
    top = np.max(np.where(eligible, activity, 0.0), axis=1, keepdims=True)
    activity_rel = np.where(top > 0, activity / np.where(top > 0, top, 1.0), 0.0)

    combined = corr + activity_rel
    scores = np.where(eligible, combined, np.nan).astype(np.float32)
    n_persons = mouth_open.shape[1]
    if n_persons == 1:
        return voiced[:, None].copy(), scores

    best = np.argmax(np.where(eligible, combined, -np.inf), axis=1)
    chosen = voiced & eligible.any(axis=1)
    votes = np.zeros((n_frames, n_persons))
    votes[np.flatnonzero(chosen), best[chosen]] = 1.0
    vote_half = max(1, int(round(MIN_SEGMENT_S * fps / 2)))
    tally = np.where(eligible, _window_sum(votes, vote_half), -1.0)
    winner = np.argmax(tally, axis=1)
    speaking = np.zeros((n_frames, n_persons), bool)
    speaking[np.flatnonzero(chosen), winner[chosen]] = True
    return speaking, scores


def speaking_timeline(audio: np.ndarray, landmarks_per_person: list[np.ndarray], valid: np.ndarray,
                      n_frames: int, fps: float,
                      vad: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Run voice activity, mouth opening and the speaker choice on one clip.

    Args:
        audio: [N] mono samples at 16 kHz on the video's clock.
        landmarks_per_person: P arrays [T, 478, 3], one per tracked person.
        valid: [T, P] bool, whether each person's landmarks are real.
        n_frames: T, the number of video frames.
        fps: video frames per second.
        vad: ``voice_activity(audio, n_frames, fps)`` when it was already run (elsewhere, in parallel).

    Returns:
        dict with ``speaking`` [T, P] bool, ``voiced`` [T] bool, ``vad_prob``
        [T] float32, ``scores`` [T, P] float32 and ``mouth_open`` [T, P] float32.

    Raises:
        PrepareError: no person, or arrays that do not have T frames.
    """
    valid = np.asarray(valid, bool)
    if not landmarks_per_person or valid.shape != (n_frames, len(landmarks_per_person)):
        raise PrepareError(f"need landmarks for at least one person and valid of shape [T={n_frames}, "
                           f"P={len(landmarks_per_person)}], got valid {valid.shape}")
    audio = clean_audio(audio)
    openings = [mouth_opening(lm) for lm in landmarks_per_person]
    if any(o.shape[0] != n_frames for o in openings):
        raise PrepareError(f"landmarks have {[o.shape[0] for o in openings]} frames per person, "
                           f"the clip has {n_frames}")
    mouth = np.stack(openings, axis=1)
    voiced, vad_prob = voice_activity(audio, n_frames, fps) if vad is None else vad
    _, rms = frame_zcr_rms(audio, n_frames, fps)
    speaking, scores = active_speaker(voiced, mouth, valid, rms, fps)
    return {"speaking": speaking, "voiced": voiced, "vad_prob": vad_prob, "scores": scores, "mouth_open": mouth}
