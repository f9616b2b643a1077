"""A synthetic two-person conversation whose every motion, mouth opening, blink and turn is known.

Each person is scikit-image's ``astronaut()`` photo cut out at head and
shoulders (person 0 left; person 1 right, mirrored and tinted), composited over a static brick
background and moved by a known 2D similarity about its face centre. The
mouth opens with that person's synthetic voice, the eyes close at planted
blinks, and the audio is a source-filter voice (glottal harmonics through
vowel formants, syllables at ~4 Hz) taking turns with pauses in between.

Ground truth (``truth.npz``; per frame and person arrays are [T, 2]):
    fps, n_frames, width, height: scalars.
    roll: in-plane rotation in radians; positive turns the content clockwise
        on screen: an offset (dx, dy) from the face centre (x right, y down)
        maps to (cos r dx - sin r dy, sin r dx + cos r dy), a rotation about
        +z of OpenCV camera axes. Roll 0 is a level eye line (the photo is levelled).
    scale: size relative to rest; tx, ty: translation in frame pixels (ty
        includes the nods).
    face_center_x, face_center_y: the rest face-box centre moved by the
        similarity, frame pixels (rigid: the jaw drop does not move it).
    mouth: planted jaw opening 0..1; blink: eyelid closure 0..1.
    speaking: bool, the person's voice is on at the frame's time i / fps.
    affine: [T, 2, 2, 3] source-photo pixels -> frame pixels (before the
        local mouth and eyelid warps).
    turns: [N, 3] rows (person, start_s, end_s).
    rest_face_box: [2, 4] x0, y0, x1, y1 of each face's landmarks at rest.
    rest_landmarks: [2, 478, 2] the photo's face-mesh landmarks at rest, frame pixels.
``truth.json`` holds the scalars, turns, blinks, nods and rest boxes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from pathlib import Path

import cv2
import numpy as np

from common.atomic_io import save_json, save_npz
from common.errors import PrepareError
from common.landmarks import EYE_LIDS, LOWER_INNER_LIP_CONTOUR, UPPER_INNER_LIP_CONTOUR
from common.video_io import AUDIO_SR, write_video

N_PERSONS = 2
FACE_HEIGHT_FRAC = 0.30  # face height / frame height: ~108 px at 360 p, enough for face mesh
FACE_CENTER_Y_FRAC = 0.42
MOUTH_MAX_FRAC = 0.16  # full jaw drop, in face heights
F0_HZ = (110.0, 200.0)
FORMANT_SCALE = (1.0, 1.17)  # a shorter vocal tract raises every formant
PERSON_TINT = (np.array([1.0, 1.0, 1.0]), np.array([1.08, 0.97, 0.86]))
PERSON_MIRROR = (False, True)

# (F1, F2, F3) in Hz of an adult male voice, and how far the jaw opens for the vowel.
VOWELS = {
    "a": ((730, 1090, 2440), 1.0), "ae": ((660, 1720, 2410), 0.9), "o": ((570, 840, 2410), 0.75),
    "e": ((530, 1840, 2480), 0.65), "er": ((490, 1350, 1690), 0.55), "u": ((300, 870, 2240), 0.4),
    "i": ((270, 2290, 3010), 0.35),
}
FORMANT_BW = np.array([80.0, 100.0, 140.0, 220.0, 300.0])
HIGH_FORMANTS = (3400.0, 4300.0)



@dataclasses.dataclass(frozen=True)
class Sprite:
    """The astronaut photo ready to composite.

    Attributes:
        rgba: [H, W, 4] float32, colour premultiplied by alpha, 0..1; the photo's
            columns that hold the person ("photo pixels" below are this array's).
        landmarks: [478, 2] face-mesh landmarks in photo pixels.
        center: [2] face centre (landmark box centre), photo pixels.
        face_h: face height (landmark box), photo pixels.
    """

    rgba: np.ndarray
    landmarks: np.ndarray
    center: np.ndarray
    face_h: float


@functools.lru_cache(maxsize=1)
def astronaut_sprite() -> Sprite:
    """Cut the astronaut out at head and shoulders, levelled, with her face-mesh landmarks.

    The photo is turned so her eye line (landmarks 33 -> 263) is horizontal:
    roll 0 in the ground truth then means level eyes, not her own ~3 deg tilt.

    Raises:
        PrepareError: mediapipe finds no face in the photo (a broken install).
    """
    from skimage import data

    rgb = data.astronaut()
    h, w = rgb.shape[:2]
    lm = _face_mesh_landmarks(rgb)
    tilt = np.degrees(np.arctan2(*(lm[263] - lm[33])[::-1]))
    turn = cv2.getRotationMatrix2D(tuple(lm.mean(0)), float(tilt), 1.0)
    rgb = cv2.warpAffine(rgb, turn, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    lm = _face_mesh_landmarks(rgb)
    lo, hi = lm.min(0), lm.max(0)
    center, face_h = (lo + hi) / 2, float(hi[1] - lo[1])
    alpha = _person_alpha(rgb, center, face_h)
    rgba = np.concatenate([rgb.astype(np.float32) / 255 * alpha[..., None], alpha[..., None]], -1)
    # crop to the person's columns: every frame warps this array twice
    cols = np.nonzero(alpha.max(0) > 0)[0]
    x0, x1 = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, w)
    offset = np.array([x0, 0.0])
    return Sprite(np.ascontiguousarray(rgba[:, x0:x1]), lm - offset, center - offset, face_h)


def _face_mesh_landmarks(rgb: np.ndarray) -> np.ndarray:
    """[478, 2] face-mesh landmarks (refined) of the one face in ``rgb`` [H, W, 3] uint8, in pixels."""
    import mediapipe as mp

    h, w = rgb.shape[:2]
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as mesh:
        res = mesh.process(rgb)
    if not res.multi_face_landmarks:
        raise PrepareError("mediapipe face mesh found no face in skimage's astronaut(); reinstall mediapipe==0.10.14")
    return np.array([[p.x * w, p.y * h] for p in res.multi_face_landmarks[0].landmark], np.float64)


def _person_alpha(rgb: np.ndarray, center: np.ndarray, face_h: float) -> np.ndarray:
    """Soft [H, W] alpha of the person, kept to a head-and-shoulders window around the face."""
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    try:
        import mediapipe as mp

        with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
            mask = seg.process(rgb).segmentation_mask.astype(np.float32)
    except Exception as e:  # any mediapipe failure leaves the hand-made mask, said aloud
        warnings.warn(f"selfie segmentation failed ({e}); using a hand-made head-and-shoulders mask", stacklevel=2)
        head = ((xx - center[0]) / (0.62 * face_h)) ** 2 + ((yy - center[1] + 0.1 * face_h) / (0.8 * face_h)) ** 2
        below = yy - center[1] - 0.4 * face_h  # neck from the chin, shoulders widening below it
        body = (below > 0) & (np.abs(xx - center[0]) < 0.3 * face_h + 1.5 * np.maximum(below - 0.4 * face_h, 0))
        mask = cv2.GaussianBlur(((head < 1) | body).astype(np.float32), (0, 0), 3)
    # eroding drops the rim of the photo's pale backdrop that a soft mask keeps around the hair
    mask = cv2.GaussianBlur(cv2.erode(np.clip(mask, 0, 1), np.ones((3, 3), np.uint8), iterations=2), (0, 0), 1.0)
    # the photo's helmet and flag sit beside her; a soft window keeps head, neck and shoulders only
    window_x = np.clip((1.2 * face_h - np.abs(xx - center[0])) / (0.15 * face_h), 0, 1)
    return mask * window_x


def _background(width: int, height: int) -> np.ndarray:
    """A static, face-free [H, W, 3] float32 wall: skimage's brick, tinted, softened and dimmed."""
    from skimage import data

    brick = cv2.resize(data.brick().astype(np.float32) / 255, (width, height), interpolation=cv2.INTER_AREA)
    brick = cv2.GaussianBlur(brick, (0, 0), 1.0)
    shade = np.linspace(1.0, 0.75, height, dtype=np.float32)[:, None]  # darker floor, lit ceiling
    return np.clip((0.25 + 0.45 * brick * shade)[..., None] * np.array([0.85, 0.95, 1.05], np.float32), 0, 1)


def plan_turns(seconds: float, rng: np.random.Generator) -> list[tuple[int, float, float]]:
    """Alternating turns (person 0 first) separated by 0.5-1.0 s pauses, filling the clip.

    Returns:
        [(person, start_s, end_s)], at least three turns.

    Raises:
        PrepareError: shorter than 6 s, too short for three turns of >= 1 s with pauses.
    """
    if seconds < 6.0:
        raise PrepareError(f"a {seconds:g} s clip is too short for three turns with pauses; ask for at least 6 s")
    n_turns = max(3, int(round(seconds / 2.6)))
    lead, tail = rng.uniform(0.3, 0.5), rng.uniform(0.3, 0.5)
    pauses = rng.uniform(0.5, 1.0, n_turns - 1)
    speech = seconds - lead - tail - pauses.sum()
    lengths = speech * (w := rng.uniform(0.8, 1.2, n_turns)) / w.sum()
    turns, t = [], lead
    for i, length in enumerate(lengths):
        turns.append((i % N_PERSONS, float(t), float(t + length)))
        t += length + (pauses[i] if i < n_turns - 1 else 0.0)
    return turns


def _band_noise(rng: np.random.Generator, n: int, lo_hz: float, hi_hz: float, sr: int) -> np.ndarray:
    """[n] unit-RMS noise with nothing outside [lo_hz, hi_hz] (FFT mask)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sr)
    spec[(f < lo_hz) | (f > hi_hz)] = 0
    out = np.fft.irfft(spec, n)
    return out / (out.std() + 1e-12)


def _ramp_window(n: int, attack: int, release: int) -> np.ndarray:
    """[n] raised-cosine rise over ``attack`` samples, flat top, fall over ``release``."""
    win = np.ones(n)
    a, r = min(attack, n // 2), min(release, n // 2)
    win[:a] = 0.5 - 0.5 * np.cos(np.pi * np.arange(a) / max(a, 1))
    win[n - r:] = 0.5 + 0.5 * np.cos(np.pi * np.arange(1, r + 1) / max(r, 1))
    return win


def synth_turn(person: int, seconds: float, rng: np.random.Generator, sr: int = AUDIO_SR
               ) -> tuple[np.ndarray, np.ndarray]:
    """One turn of speech-like voice: CV syllables at ~4 Hz through moving vowel formants.

    Args:
        person: picks the pitch (``F0_HZ``) and vocal-tract length (``FORMANT_SCALE``).
        seconds: length of the turn; the last syllable ends exactly there.

    Returns:
        voice: [n] float64 samples, n = round(seconds * sr), peak ~1.
        mouth: [n] jaw opening 0..1 (voicing envelope times the vowel's openness).
    """
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    durs = []
    while sum(durs) < seconds:
        durs.append(rng.uniform(0.18, 0.32))
    starts = np.concatenate([[0.0], np.cumsum(durs)[:-1]]) * seconds / sum(durs)
    ends = np.append(starts[1:], seconds)
    names = list(VOWELS)
    vowel = [names[i] for i in rng.integers(0, len(names), len(starts))]
    mids = (starts + ends) / 2
    scale = FORMANT_SCALE[person]
    formants = np.array([VOWELS[v][0] for v in vowel], np.float64) * scale * rng.uniform(0.95, 1.05, (len(vowel), 3))
    track = np.stack([np.interp(t, mids, formants[:, j]) for j in range(3)])  # glide between syllable targets
    openness = np.interp(t, mids, [VOWELS[v][1] for v in vowel])
    stress = np.interp(t, mids, rng.uniform(0.95, 1.12, len(mids)))

    f0 = F0_HZ[person] * stress * (1 + 0.06 * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t + rng.uniform(0, 2 * np.pi)))
    f0 *= 1 - 0.12 * t / seconds  # declination across the phrase
    f0 *= 1 + 0.012 * _band_noise(rng, n, 0, 30, sr)  # jitter
    phase = 2 * np.pi * np.cumsum(f0) / sr

    voicing = np.zeros(n)
    noise = np.zeros(n)
    for s, e in zip(starts, ends):
        i0, i1 = int(s * sr), min(int(e * sr), n)
        cons = int(rng.uniform(0.03, 0.07) * sr) if rng.random() < 0.7 else 0
        if cons:
            lo, hi = [(3500, 7500), (2000, 5000), (1000, 7000)][rng.integers(0, 3)]
            noise[i0:i0 + cons] += 0.35 * _band_noise(rng, cons, lo, hi, sr) * np.hanning(cons)
        voicing[i0 + cons // 2:i1] = np.maximum(
            voicing[i0 + cons // 2:i1], _ramp_window(i1 - i0 - cons // 2, int(0.03 * sr), int(0.05 * sr)))
    voicing *= 1 + 0.05 * _band_noise(rng, n, 0, 60, sr)  # shimmer

    voice = np.zeros(n)
    tilt = 1.0 if person == 0 else 1.25  # steeper source slope = softer, breathier higher voice
    bws = FORMANT_BW * np.sqrt(scale)
    high = [np.full(n, f * scale) for f in HIGH_FORMANTS]
    for k in range(1, int(7600 / f0.min()) + 1):
        fk = k * f0
        gain = k ** -tilt * (fk < 7600)
        for F, B in zip([*track, *high], bws):
            gain = gain * F * F / np.sqrt((F * F - fk * fk) ** 2 + (fk * B) ** 2)
        voice += gain * np.sin(k * phase)
    breath = np.diff(_band_noise(rng, n + 1, 0, 6000, sr)) * (0.6 + 0.4 * np.cos(phase))  # aspiration
    voice = voice / (np.abs(voice).max() + 1e-12) + 0.04 * breath
    voice = voice * voicing + noise
    mouth = voicing * openness
    return voice / (np.abs(voice).max() + 1e-12), np.clip(mouth, 0, 1)


def conversation_audio(turns: list[tuple[int, float, float]], seconds: float, rng: np.random.Generator,
                       sr: int = AUDIO_SR) -> tuple[np.ndarray, np.ndarray]:
    """Mix the turns over faint room noise.

    Returns:
        audio: [round(seconds * sr)] float32 mono, peak 0.6.
        mouth: [2, same] per-person jaw opening 0..1, zero while the person is silent.
    """
    n = int(round(seconds * sr))
    audio = 0.0015 * _band_noise(rng, n, 0, 2000, sr)
    mouth = np.zeros((N_PERSONS, n))
    for person, start, end in turns:
        voice, jaw = synth_turn(person, end - start, rng, sr)
        i0 = int(round(start * sr))
        m = min(voice.size, n - i0)
        audio[i0:i0 + m] += 0.6 * voice[:m]
        mouth[person, i0:i0 + m] = jaw[:m]
    return (0.6 * audio / np.abs(audio).max()).astype(np.float32), mouth


def _smooth_curve(rng: np.random.Generator, t: np.ndarray, amplitude: float) -> np.ndarray:
    """[T] a sum of three 0.08-0.6 Hz sinusoids with random phases, max |curve| = amplitude."""
    weights = rng.dirichlet(np.ones(3))
    freqs, phases = rng.uniform(0.08, 0.6, 3), rng.uniform(0, 2 * np.pi, 3)
    curve = (weights[:, None] * np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None])).sum(0)
    # stretched to the full amplitude so every clip, even a short one, moves measurably
    return curve * amplitude / (np.abs(curve).max() + 1e-12)


def head_motion(n_frames: int, fps: float, turns: list[tuple[int, float, float]], px: float,
                rng: np.random.Generator) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Smooth roll, scale and translation per person, plus a listener's nod in every turn.

    Args:
        px: pixels per 'reference pixel' (frame height / 360), so motion scales with the frame.

    Returns:
        motion: roll, scale, tx, ty, each [T, 2].
        nods: [{person, start_s, seconds, pixels}].
    """
    t = np.arange(n_frames) / fps
    motion = {k: np.zeros((n_frames, N_PERSONS)) for k in ("roll", "scale", "tx", "ty")}
    for p in range(N_PERSONS):
        motion["roll"][:, p] = _smooth_curve(rng, t, np.deg2rad(7.0))
        motion["scale"][:, p] = 1 + _smooth_curve(rng, t, 0.05)
        motion["tx"][:, p] = _smooth_curve(rng, t, 8.0 * px)
        motion["ty"][:, p] = _smooth_curve(rng, t, 3.5 * px)
    nods = []
    for speaker, start, end in turns:
        listener = 1 - speaker
        dur = rng.uniform(0.4, 0.7)
        t0 = rng.uniform(start, max(start, end - dur))
        amp = rng.uniform(3.0, 4.5) * px
        inside = (t >= t0) & (t <= t0 + dur)
        motion["ty"][inside, listener] += amp * 0.5 * (1 - np.cos(2 * np.pi * (t[inside] - t0) / dur))
        nods.append({"person": listener, "start_s": round(float(t0), 4), "seconds": round(float(dur), 4),
                     "pixels": round(float(amp), 3)})
    return motion, nods


def blink_track(n_frames: int, fps: float, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """Two or three blinks per person, 4-6 frames each, at least 1 s apart.

    Returns:
        blink: [T, 2] eyelid closure 0..1.
        events: [{person, start_frame, n_frames}].
    """
    blink = np.zeros((n_frames, N_PERSONS))
    events = []
    for p in range(N_PERSONS):
        starts: list[int] = []
        want = int(rng.integers(2, 4))
        for _ in range(200):
            if len(starts) == want:
                break
            s = int(rng.integers(int(0.5 * fps), n_frames - int(0.5 * fps) - 6))
            if all(abs(s - o) >= fps for o in starts):
                starts.append(s)
        for s in sorted(starts):
            d = int(rng.integers(4, 7))
            blink[s:s + d, p] = np.clip(1.6 * np.sin(np.pi * (np.arange(d) + 0.5) / d), 0, 1)
            events.append({"person": p, "start_frame": s, "n_frames": d})
    return blink, events


def _inverse_columns(y: np.ndarray, src: list[np.ndarray], dst: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Invert a per-column piecewise-linear vertical map given by control points.

    Args:
        y: [R, C] destination rows.
        src, dst: K control rows each [C], increasing along K; identity outside [dst[0], dst[-1]].

    Returns:
        source rows [R, C], and the segment index [R, C] (-1 outside).
    """
    out, seg = y.copy(), np.full(y.shape, -1)
    for j in range(len(src) - 1):
        inside = (y >= dst[j]) & (y < dst[j + 1])
        frac = (y - dst[j]) / np.maximum(dst[j + 1] - dst[j], 1e-6)
        out = np.where(inside, src[j] + frac * (src[j + 1] - src[j]), out)
        seg[inside] = j
    return out, seg


def _contour(lm: np.ndarray, idx: tuple[int, ...], xs: np.ndarray) -> np.ndarray:
    """[C] the y of a landmark contour at columns ``xs`` (linear between landmarks, flat past the ends)."""
    pts = lm[list(idx)]
    order = np.argsort(pts[:, 0])
    return np.interp(xs, pts[order, 0], pts[order, 1])


def open_mouth(base: np.ndarray, out: np.ndarray, sprite: Sprite, amount: float) -> None:
    """Drop the jaw by ``amount`` (0..1): split the lips along their midline and show a dark gap.

    Writes the warped mouth region of ``base`` ([H, W, 4] premultiplied) into ``out``.
    """
    if amount < 0.01:  # under a fifth of a pixel: leave the photo untouched
        return
    lm, fh = sprite.landmarks, sprite.face_h
    cx = (lm[61, 0] + lm[291, 0]) / 2
    x0, x1 = int(cx - 0.6 * fh), int(cx + 0.6 * fh) + 1
    y_nose, y_chin = lm[1, 1], lm[152, 1]
    fall = 0.5 * fh
    y0, y1 = int(y_nose) - 1, int(y_chin + fall) + 2
    xs = np.arange(x0, x1, dtype=np.float64)
    lip = (_contour(lm, UPPER_INNER_LIP_CONTOUR, xs) + _contour(lm, LOWER_INNER_LIP_CONTOUR, xs)) / 2
    drop = amount * MOUTH_MAX_FRAC * fh * np.cos(np.clip((xs - cx) / (0.5 * fh), -1, 1) * np.pi / 2) ** 2
    u = (xs - cx) / (0.55 * (lm[291, 0] - lm[61, 0]))
    lens = np.sqrt(np.clip(1 - u * u, 0, 1))
    gap_lo, lift = drop * lens, 0.15 * drop * lens
    ones = np.ones_like(xs)
    src = [y_nose * ones, lip, lip, y_chin * ones, (y_chin + fall) * ones]
    dst = [y_nose * ones, lip - lift, lip + gap_lo, y_chin + drop, (y_chin + fall) * ones]
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    sy, seg = _inverse_columns(yy, src, dst)
    roi = cv2.remap(base, xx.astype(np.float32), sy.astype(np.float32), cv2.INTER_LINEAR)
    depth = np.minimum(yy - dst[1], dst[2] - yy)  # pixels inside the gap from its nearer lip
    dark = (seg == 1) * np.clip(depth / 1.5 + 0.5, 0, 1) * np.clip((gap_lo + lift) / 2, 0, 1)
    interior = np.array([0.16, 0.04, 0.05, 1.0], np.float32) * roi[..., 3:4]
    out[y0:y1, x0:x1] = roi * (1 - dark[..., None]) + interior * dark[..., None]


def close_eyes(base: np.ndarray, out: np.ndarray, sprite: Sprite, amount: float) -> None:
    """Lower both upper lids by ``amount`` (0..1) of the eye opening: the lid skin stretches over the eye."""
    if amount < 0.01:  # under a tenth of a pixel: leave the photo untouched
        return
    lm, fh = sprite.landmarks, sprite.face_h
    for upper_idx, lower_idx in EYE_LIDS:
        pts = lm[list(upper_idx + lower_idx)]
        x0, x1 = int(pts[:, 0].min()) - 2, int(pts[:, 0].max()) + 3
        xs = np.arange(x0, x1, dtype=np.float64)
        upper, lower = _contour(lm, upper_idx, xs), _contour(lm, lower_idx, xs)
        brow = upper.min() - 0.12 * fh
        ones = np.ones_like(xs)
        src = [brow * ones, upper, lower, lower + 2]
        dst = [brow * ones, upper + amount * (lower - upper), lower, lower + 2]
        y0, y1 = int(brow) - 1, int(lower.max()) + 4
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        sy, _ = _inverse_columns(yy, src, dst)
        out[y0:y1, x0:x1] = cv2.remap(base, xx.astype(np.float32), sy.astype(np.float32), cv2.INTER_LINEAR)


def _layout(width: int, height: int, sprite: Sprite) -> tuple[float, np.ndarray]:
    """Photo-to-frame zoom and the rest face centres [2, 2] of the two persons in frame pixels."""
    zoom = FACE_HEIGHT_FRAC * height / sprite.face_h
    centers = np.array([[width * (0.25 + 0.5 * p), height * FACE_CENTER_Y_FRAC] for p in range(N_PERSONS)])
    return zoom, centers


def similarity(sprite: Sprite, zoom: float, center: np.ndarray, mirror: bool,
               roll: float, scale: float, tx: float, ty: float) -> np.ndarray:
    """[2, 3] photo pixels -> frame pixels: mirror, zoom, roll and scale about the face centre, move."""
    c, s = np.cos(roll), np.sin(roll)
    lin = scale * zoom * np.array([[c, -s], [s, c]]) @ np.diag([-1.0 if mirror else 1.0, 1.0])
    return np.concatenate([lin, (center + [tx, ty] - lin @ sprite.center)[:, None]], 1)


def composite(frame: np.ndarray, rgba: np.ndarray, affine: np.ndarray) -> None:
    """Warp premultiplied ``rgba`` [h, w, 4] by ``affine`` [2, 3] and lay it over ``frame`` [H, W, 3] in place."""
    h, w = rgba.shape[:2]
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float64) @ affine[:, :2].T + affine[:, 2]
    x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 2, [frame.shape[1], frame.shape[0]])
    if x1 <= x0 or y1 <= y0:
        return
    # warping into the covered box only keeps the work proportional to the person, not the frame
    shifted = affine - np.array([[0, 0, x0], [0, 0, y0]], np.float64)
    warped = cv2.warpAffine(rgba, shifted, (int(x1 - x0), int(y1 - y0)), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    box = frame[y0:y1, x0:x1]
    box *= 1 - warped[..., 3:]
    box += warped[..., :3]


def make_conversation(out_dir: str | os.PathLike, seconds: float = 8.0, fps: int = 25, width: int = 640,
                      height: int = 360, seed: int = 0, blink: bool = True) -> dict:
    """Write conversation.mp4, truth.npz and truth.json into ``out_dir``.

    Args:
        seconds: clip length (>= 6 s, for three turns with pauses).
        width, height: even frame size; width >= 1.7 * height so two people fit side by side.
        seed: every random choice (turns, voices, motion, blinks) follows from it.
        blink: plant blinks; without, the eyes stay open.

    Returns:
        {"video", "truth_npz", "truth_json": paths, "truth": the arrays of truth.npz}.

    Raises:
        PrepareError: an impossible size or length.
    """
    if width % 2 or height % 2 or height < 160:
        raise PrepareError(f"frame size {width}x{height}: both sides must be even and height >= 160")
    if width < 1.7 * height:
        raise PrepareError(f"frame {width}x{height} is too narrow for two people; use width >= 1.7 * height")
    if not 10 <= fps <= 60:
        raise PrepareError(f"fps {fps} is outside 10..60 (blinks last 4-6 frames, mouths move at ~4 Hz)")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    n_frames = int(round(seconds * fps))
    turns = plan_turns(seconds, rng)
    audio, mouth_audio = conversation_audio(turns, n_frames / fps, rng)
    motion, nods = head_motion(n_frames, fps, turns, height / 360, rng)
    blinks, blink_events = blink_track(n_frames, fps, rng) if blink else (np.zeros((n_frames, N_PERSONS)), [])

    # the jaw at frame i follows the voice over that frame's 40 ms around i / fps
    half = int(AUDIO_SR / fps / 2)
    centers_s = (np.arange(n_frames) / fps * AUDIO_SR).astype(int)
    kernel = np.ones(2 * half + 1) / (2 * half + 1)
    smooth = np.stack([np.convolve(m, kernel, mode="same") for m in mouth_audio])
    mouth = smooth[:, np.clip(centers_s, 0, smooth.shape[1] - 1)].T
    t = np.arange(n_frames) / fps
    speaking = np.zeros((n_frames, N_PERSONS), bool)
    for person, start, end in turns:
        speaking[(t >= start) & (t < end), person] = True
    mouth = np.where(speaking, mouth, 0.0)

    sprite = astronaut_sprite()
    zoom, rest_centers = _layout(width, height, sprite)
    bases = [np.ascontiguousarray(sprite.rgba * np.append(PERSON_TINT[p], 1).astype(np.float32))
             for p in range(N_PERSONS)]
    background = _background(width, height)
    affine = np.zeros((n_frames, N_PERSONS, 2, 3))
    for i in range(n_frames):
        for p in range(N_PERSONS):
            affine[i, p] = similarity(sprite, zoom, rest_centers[p], PERSON_MIRROR[p], motion["roll"][i, p],
                                      motion["scale"][i, p], motion["tx"][i, p], motion["ty"][i, p])

    def frames():
        for i in range(n_frames):
            frame = background.copy()
            for p in range(N_PERSONS):
                face = bases[p]
                if mouth[i, p] > 0 or blinks[i, p] > 0:  # the untouched photo needs no copy
                    face = face.copy()
                    open_mouth(bases[p], face, sprite, float(mouth[i, p]))
                    close_eyes(bases[p], face, sprite, float(blinks[i, p]))
                composite(frame, face, affine[i, p])
            yield (np.clip(frame, 0, 1) * 255 + 0.5).astype(np.uint8)

    video = out_dir / "conversation.mp4"
    write_video(video, frames(), fps, audio=audio, sr=AUDIO_SR)

    rest = [similarity(sprite, zoom, rest_centers[p], PERSON_MIRROR[p], 0.0, 1.0, 0.0, 0.0)
            for p in range(N_PERSONS)]
    rest_lm = np.stack([sprite.landmarks @ a[:, :2].T + a[:, 2] for a in rest])
    rest_box = np.concatenate([rest_lm.min(1), rest_lm.max(1)], 1)
    truth = {
        "fps": np.float64(fps), "n_frames": np.int64(n_frames), "width": np.int64(width),
        "height": np.int64(height), **{k: v.astype(np.float32) for k, v in motion.items()},
        "face_center_x": (rest_centers[:, 0] + motion["tx"]).astype(np.float32),
        "face_center_y": (rest_centers[:, 1] + motion["ty"]).astype(np.float32),
        "mouth": mouth.astype(np.float32), "blink": blinks.astype(np.float32), "speaking": speaking,
        "affine": affine.astype(np.float32), "turns": np.array(turns, np.float64).reshape(-1, 3),
        "rest_face_box": rest_box.astype(np.float32), "rest_landmarks": rest_lm.astype(np.float32),
    }
    npz, js = out_dir / "truth.npz", out_dir / "truth.json"
    save_npz(npz, **truth)
    save_json(js, {
        "fps": fps, "n_frames": n_frames, "width": width, "height": height, "seconds": n_frames / fps,
        "seed": seed, "audio_sr": AUDIO_SR, "mirrored": list(PERSON_MIRROR), "f0_hz": list(F0_HZ),
        "turns": [{"person": p, "start_s": round(s, 4), "end_s": round(e, 4)} for p, s, e in turns],
        "blinks": blink_events, "nods": nods, "rest_face_box": rest_box.round(2).tolist(),
        "roll_convention": "positive roll turns the content clockwise on screen (x right, y down)",
    })
    return {"video": str(video), "truth_npz": str(npz), "truth_json": str(js), "truth": truth}
