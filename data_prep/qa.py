"""QA pictures a person checks at a glance after ``prepare``.

Every function returns an RGB uint8 image ``[H, W, 3]`` (the caller saves it,
e.g. with ``atomic_io.save_image``, or logs it to TensorBoard). Plots use
matplotlib's object-oriented ``Figure`` on an Agg canvas, never pyplot: no
global backend is switched and no figure is registered anywhere, so nothing
stays open after a picture is returned.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import cv2
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from common.landmarks import LEFT_EYE, LIPS_INNER, LIPS_OUTER, N_LANDMARKS, RIGHT_EYE

HEAD_RGB = (255, 140, 0)
TORSO_RGB = (40, 120, 255)
DOT_RGB = (80, 255, 80)
LIPS_RGB = (255, 0, 200)
EYES_RGB = (0, 230, 255)
PARSING_ALPHA = 0.4

FIGURE_WIDTH_PX = 1400
_DPI = 100
_ROTATION_COLORS = {"pitch": "tab:red", "yaw": "tab:green", "roll": "tab:blue"}
_AXIS_COLORS = {"x": "tab:purple", "y": "tab:olive", "z": "tab:brown"}
_INVALID_COLOR = "0.6"


# ----------------------------------------------------------------------------
# Image overlays (OpenCV)


def draw_landmarks(crop: np.ndarray, landmarks: np.ndarray | None,
                   parsing: np.ndarray | None = None) -> np.ndarray:
    """Draw parsing, landmarks, lips and eyes over one person crop.

    Args:
        crop: [S, S, 3] uint8 RGB crop.
        landmarks: [478, 2] (or [478, 3], z ignored) float pixel (x, y) in the
            crop, or None when no face was found (then "NO FACE" is written).
            Non-finite points are skipped.
        parsing: [S, S] uint8 labels 0 background, 1 head, 2 torso, or None.

    Returns:
        [S, S, 3] uint8 RGB: head tinted orange, torso blue, landmarks as
        green dots, lip rings magenta, eye rings cyan.
    """
    crop = np.asarray(crop)
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
        raise ValueError(f"crop must be [S, S, 3] uint8, got {crop.shape} {crop.dtype}")
    out = crop.copy()
    size = min(out.shape[:2])

    if parsing is not None:
        parsing = np.asarray(parsing)
        if parsing.shape != out.shape[:2]:
            raise ValueError(f"parsing {parsing.shape} must match the crop {out.shape[:2]}")
        for label, rgb in ((1, HEAD_RGB), (2, TORSO_RGB)):
            mask = parsing == label
            tinted = (1 - PARSING_ALPHA) * out[mask] + PARSING_ALPHA * np.array(rgb, np.float32)
            out[mask] = np.round(tinted).astype(np.uint8)

    if landmarks is None:
        _write_centered(out, "NO FACE", (255, 40, 40))
        return out

    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.ndim != 2 or landmarks.shape[0] != N_LANDMARKS or landmarks.shape[1] < 2:
        raise ValueError(f"landmarks must be [{N_LANDMARKS}, 2], got {landmarks.shape}")
    xy = landmarks[:, :2]
    finite = np.isfinite(xy).all(axis=1)
    # Fixed-point coordinates (shift=4) keep sub-pixel positions with anti-aliasing.
    shift = 4
    fixed = np.zeros(xy.shape, np.int32)
    fixed[finite] = np.round(np.clip(xy[finite], -1e4, 1e4) * (1 << shift)).astype(np.int32)
    thickness = max(2, round(size / 256))
    radius = max(1, round(size / 400)) << shift

    for point in fixed[finite]:
        cv2.circle(out, tuple(int(v) for v in point), radius, DOT_RGB, -1, cv2.LINE_AA, shift)
    for ring, rgb in ((LIPS_OUTER, LIPS_RGB), (LIPS_INNER, LIPS_RGB),
                      (RIGHT_EYE, EYES_RGB), (LEFT_EYE, EYES_RGB)):
        ring = np.array(ring)
        if finite[ring].all():
            cv2.polylines(out, [fixed[ring]], True, rgb, thickness, cv2.LINE_AA, shift)
    return out


def contact_sheet(tiles: Sequence[np.ndarray], captions: Sequence[str],
                  columns: int = 6, tile_size: int = 160) -> np.ndarray:
    """Lay tiles out in a grid, each with a caption strip below it.

    Args:
        tiles: N images, each [h, w, 3] or [h, w] uint8; each is scaled to fit
            a tile_size square (aspect kept, letterboxed).
        captions: N strings, e.g. "p0 f120"; shrunk to fit the tile width.
        columns: tiles per row; the sheet has min(columns, N) columns and
            ceil(N / columns) rows.
        tile_size: side of one tile in pixels.

    Returns:
        [rows * (tile_size + caption_height(tile_size)), n_columns * tile_size, 3]
        uint8 RGB.
    """
    if len(tiles) == 0:
        raise ValueError("contact_sheet needs at least one tile")
    if len(captions) != len(tiles):
        raise ValueError(f"{len(tiles)} tiles but {len(captions)} captions")
    if columns < 1 or tile_size < 8:
        raise ValueError(f"columns must be >= 1 and tile_size >= 8, got {columns}, {tile_size}")
    n_columns = min(columns, len(tiles))
    n_rows = -(-len(tiles) // n_columns)
    cell_h = tile_size + caption_height(tile_size)
    sheet = np.full((n_rows * cell_h, n_columns * tile_size, 3), 30, np.uint8)
    for i, (tile, caption) in enumerate(zip(tiles, captions, strict=True)):
        y0, x0 = (i // n_columns) * cell_h, (i % n_columns) * tile_size
        cell = sheet[y0:y0 + cell_h, x0:x0 + tile_size]
        cell[:tile_size] = _letterbox(np.asarray(tile), tile_size)
        _write_caption(cell[tile_size:], caption)
        cv2.rectangle(cell, (0, 0), (tile_size - 1, cell_h - 1), (0, 0, 0), 1)
    return sheet


def caption_height(tile_size: int) -> int:
    """Height in pixels of the caption strip under a contact-sheet tile."""
    return max(14, tile_size // 8)


def _letterbox(tile: np.ndarray, size: int) -> np.ndarray:
    if tile.ndim == 2:
        tile = np.repeat(tile[..., None], 3, axis=2)
    if tile.ndim != 3 or tile.shape[2] != 3 or tile.dtype != np.uint8:
        raise ValueError(f"a tile must be [h, w, 3] uint8, got {tile.shape} {tile.dtype}")
    h, w = tile.shape[:2]
    scale = size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(tile, (new_w, new_h), interpolation=interpolation)
    out = np.zeros((size, size, 3), np.uint8)
    y0, x0 = (size - new_h) // 2, (size - new_w) // 2
    out[y0:y0 + new_h, x0:x0 + new_w] = resized
    return out


def _write_caption(strip: np.ndarray, text: str) -> None:
    h, w = strip.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = h / 32
    (tw, th), _ = cv2.getTextSize(text, font, scale, 1)
    if tw > w - 6:
        scale *= (w - 6) / tw
        (tw, th), _ = cv2.getTextSize(text, font, scale, 1)
    cv2.putText(strip, text, (4, (h + th) // 2), font, scale, (235, 235, 235), 1, cv2.LINE_AA)


def _write_centered(image: np.ndarray, text: str, rgb: tuple[int, int, int]) -> None:
    h, w = image.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    thickness = max(1, round(min(h, w) / 100))
    (tw, _), _ = cv2.getTextSize(text, font, 1.0, thickness)
    scale = 0.6 * w / tw
    (tw, th), _ = cv2.getTextSize(text, font, scale, thickness)
    origin = ((w - tw) // 2, (h + th) // 2)
    cv2.putText(image, text, origin, font, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(image, text, origin, font, scale, rgb, thickness, cv2.LINE_AA)


# ----------------------------------------------------------------------------
# Plots (matplotlib, Agg)


def pose_curves(euler: np.ndarray, trans: np.ndarray, valid: np.ndarray,
                fps: float, names: Sequence[str]) -> np.ndarray:
    """Head pose over time, one row per person.

    Columns: pitch/yaw/roll in degrees; translation x and y; translation z
    (depth, on its own axis because it is far from zero). Invalid frames are
    gaps in the curves and shaded grey.

    Args:
        euler: [T, P, 3] radians, (pitch, yaw, roll).
        trans: [T, P, 3] head translation in camera space (x, y, z).
        valid: [T, P] bool, the frames with a tracked face.
        fps: video frame rate.
        names: P person names for the row titles.

    Returns:
        [H, 1400, 3] uint8 RGB, H grows with P.
    """
    euler, trans = np.asarray(euler, np.float64), np.asarray(trans, np.float64)
    valid = np.asarray(valid, bool)
    n_frames, n_persons = valid.shape
    _check_shape("euler", euler, (n_frames, n_persons, 3))
    _check_shape("trans", trans, (n_frames, n_persons, 3))
    _check_names(names, n_persons)
    seconds = np.arange(n_frames) / fps
    euler_deg = np.where(valid[..., None], np.degrees(euler), np.nan)
    trans = np.where(valid[..., None], trans, np.nan)

    with _figure_grid(n_persons, 3, row_px=180, top=65, bottom=85, wgap=85,
                      width_ratios=[2, 1.4, 1], sharex=True) as (fig, axes):
        fig.suptitle("Head pose per person")
        for p, name in enumerate(names):
            rot_ax, xy_ax, z_ax = axes[p]
            for k, angle in enumerate(("pitch", "yaw", "roll")):
                rot_ax.plot(seconds, euler_deg[:, p, k], color=_ROTATION_COLORS[angle],
                            lw=1, label=angle)
            for k, axis in enumerate(("x", "y")):
                xy_ax.plot(seconds, trans[:, p, k], color=_AXIS_COLORS[axis], lw=1, label=axis)
            z_ax.plot(seconds, trans[:, p, 2], color=_AXIS_COLORS["z"], lw=1, label="z")
            for ax in axes[p]:
                _shade(ax, ~valid[:, p], fps, _INVALID_COLOR, 0.35)
                ax.grid(alpha=0.3)
            if not valid[:, p].any():
                for ax in axes[p]:
                    ax.set_ylim(-1, 1)
                    ax.text(0.5, 0.5, "no valid frames", transform=ax.transAxes,
                            ha="center", va="center", color="0.3")
            rot_ax.set_title(f"{name}: rotation ({valid[:, p].mean():.0%} of frames valid)",
                             loc="left")
            rot_ax.set_ylabel("degrees")
            xy_ax.set_title(f"{name}: translation x, y", loc="left")
            z_ax.set_title(f"{name}: translation z (depth)", loc="left")
        # One legend for all rows: every curve has its own colour.
        handles = [h for ax in axes[0] for h in ax.get_legend_handles_labels()[0]]
        handles.append(Patch(color=_INVALID_COLOR, alpha=0.35, label="no tracked face"))
        fig.legend(handles=handles, loc="lower center", ncols=len(handles), frameon=False)
        for ax in axes[-1]:
            ax.set_xlabel("time (s)")
        axes[0, 0].set_xlim(0, max(n_frames / fps, 1 / fps))
        return _to_rgb(fig)


def torso_motion_parts(motion: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Readable parts of torso motions [T, 6] (2 x 3 affines on crop fractions, row-major): where the crop's centre
    goes, as a shift [T, 2] in pixels of a ``size`` crop; the rotation [T] in degrees (counter-clockwise in the
    image's x-right, y-down axes is negative); the scale [T] in percent off 1 (the square root of the area ratio).
    NaN rows stay NaN."""
    m = np.asarray(motion, np.float64).reshape(-1, 2, 3)
    centre = np.full(2, 0.5)
    shift = (m[:, :, :2] @ centre + m[:, :, 2] - centre) * size
    rotation = np.degrees(np.arctan2(m[:, 1, 0] - m[:, 0, 1], m[:, 0, 0] + m[:, 1, 1]))
    with np.errstate(invalid="ignore"):  # (NaN rows)
        scale = (np.sqrt(np.abs(np.linalg.det(m[:, :, :2]))) - 1.0) * 100.0
    return shift, rotation, scale


def torso_motion_curves(motions: Sequence[np.ndarray | None], size: int, names: Sequence[str],
                        held_out: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Each person's tracked torso motion (``data_prep.torso_track``) over the frames, one row per person.

    Columns: where the crop's centre moves to in the reference frame (x and y, pixels of a ``size`` crop); the
    rotation (degrees); the scale (percent off 1). Frames the tracker refused are gaps, shaded grey; a person
    with no tracked frame (``None``: tracking off; or all NaN: a torso too small to track) gets a note instead of
    curves.

    Args:
        motions: per person [T, 6] affines (crop fractions of the frame -> of the reference frame, row-major), NaN
            where not tracked, or None.
        size: the crop side the motions were tracked at, for the pixel axis.
        names: the persons' names, for the row titles.
        held_out: per person [T] bool, the held-out frames (shaded orange), or None.

    Returns:
        [H, 1400, 3] uint8 RGB, H grows with the number of persons.
    """
    _check_names(names, len(motions))
    with _figure_grid(len(motions), 3, row_px=170, top=65, bottom=85, wgap=85,
                      width_ratios=[2, 1, 1]) as (fig, axes):
        fig.suptitle("Torso motion onto the reference frame, per person (tracked at load)")
        for p, (m, name) in enumerate(zip(motions, names)):
            shift_ax, rot_ax, scale_ax = axes[p]
            for ax in axes[p]:
                ax.grid(alpha=0.3)
            if m is None or not np.isfinite(np.asarray(m, np.float64)).all(1).any():
                for ax in axes[p]:
                    ax.text(0.5, 0.5, "not tracked", transform=ax.transAxes, ha="center", va="center", color="0.3")
                    ax.set_yticks([])
                shift_ax.set_title(f"{name}: torso not tracked (the head pose moves it)", loc="left")
                continue
            moved, rotation, scale = torso_motion_parts(m, size)
            frames = np.arange(len(moved))
            ok = np.isfinite(moved).all(1)
            for k, axis in enumerate(("x", "y")):
                shift_ax.plot(frames, moved[:, k], color=_AXIS_COLORS[axis], lw=1, label=f"shift {axis}")
            rot_ax.plot(frames, rotation, color=_ROTATION_COLORS["roll"], lw=1, label="rotation")
            scale_ax.plot(frames, scale, color=_AXIS_COLORS["z"], lw=1, label="scale")
            for ax in axes[p]:
                _shade(ax, ~ok, 1.0, _INVALID_COLOR, 0.35)
                if held_out is not None:
                    _shade(ax, np.asarray(held_out[p], bool), 1.0, "tab:orange", 0.12)
                ax.set_xlim(0, max(len(ok), 1))
            shift_ax.set_title(f"{name}: centre shift ({ok.mean():.0%} of {len(ok)} frames tracked)", loc="left")
            shift_ax.set_ylabel(f"pixels ({size} px crop)")
            rot_ax.set_title("rotation (degrees)", loc="left")
            scale_ax.set_title("scale (% off 1)", loc="left")
        handles = [Line2D([], [], color=_AXIS_COLORS["x"], label="shift x"),
                   Line2D([], [], color=_AXIS_COLORS["y"], label="shift y"),
                   Line2D([], [], color=_ROTATION_COLORS["roll"], label="rotation"),
                   Line2D([], [], color=_AXIS_COLORS["z"], label="scale"),
                   Patch(color=_INVALID_COLOR, alpha=0.35, label="not tracked (predicted from the head pose)")]
        if held_out is not None:
            handles.append(Patch(color="tab:orange", alpha=0.12, label="held out"))
        fig.legend(handles=handles, loc="lower center", ncols=len(handles), frameon=False)
        for ax in axes[-1]:
            ax.set_xlabel("frame")
        return _to_rgb(fig)


def speaking_timeline(audio: np.ndarray, sr: int, speaking: np.ndarray, voiced: np.ndarray,
                      fps: float, names: Sequence[str]) -> np.ndarray:
    """Waveform, voice activity and who speaks, on one time axis.

    Args:
        audio: [N] float waveform.
        sr: audio sample rate in Hz.
        speaking: [T, P] bool, the person who speaks in each video frame.
        voiced: [T] bool, voice activity per video frame.
        fps: video frame rate.
        names: P person names.

    Returns:
        [H, 1400, 3] uint8 RGB, H grows with P.
    """
    audio = np.asarray(audio, np.float64).reshape(-1)
    speaking, voiced = np.asarray(speaking, bool), np.asarray(voiced, bool)
    n_frames, n_persons = speaking.shape
    _check_shape("voiced", voiced, (n_frames,))
    _check_names(names, n_persons)
    duration = max(len(audio) / sr, n_frames / fps, 1 / fps)

    band_rows = [("voiced", voiced, "tab:gray")] + [
        (name, speaking[:, p], _person_color(p)) for p, name in enumerate(names)]
    left = max(100, 25 + 8 * max(len(label) for label, _, _ in band_rows))
    with _figure_grid(1 + len(band_rows), 1, row_px=40, left=left, right=50, hgap=10,
                      height_ratios=[6] + [1] * len(band_rows), sharex=True) as (fig, axes):
        axes = axes[:, 0]
        wave_ax = axes[0]
        fig.suptitle("Audio, voice activity and who speaks")
        if len(audio):
            start_s, low, high = _envelope(audio, sr)
            wave_ax.fill_between(start_s, low, high, color="tab:blue", lw=0.5, step="post")
        wave_ax.set_ylabel("waveform")
        wave_ax.grid(alpha=0.3)
        for ax, (label, mask, color) in zip(axes[1:], band_rows, strict=True):
            _shade(ax, mask, fps, color, 0.85)
            ax.set_yticks([])
            ax.set_ylabel(label, rotation=0, ha="right", va="center")
            ax.text(1.005, 0.5, f"{mask.mean():.0%}", transform=ax.transAxes, va="center")
            ax.grid(axis="x", alpha=0.3)
        axes[-1].set_xlabel("time (s)")
        axes[-1].set_xlim(0, duration)
        return _to_rgb(fig)


def expression_spectrum(explained_variance_ratio: np.ndarray, k_used: int) -> np.ndarray:
    """Expression PCA spectrum: per-component variance and its cumulative sum.

    Args:
        explained_variance_ratio: [K_all] float, each component's share of the
            variance, in decreasing order.
        k_used: how many leading components the dataset keeps (1..K_all).

    Returns:
        [500, 1200, 3] uint8 RGB.
    """
    ratio = np.asarray(explained_variance_ratio, np.float64).reshape(-1)
    n_components = len(ratio)
    if not 1 <= k_used <= n_components:
        raise ValueError(f"k_used must be in 1..{n_components}, got {k_used}")
    cumulative = np.cumsum(ratio)
    index = np.arange(1, n_components + 1)
    reached = cumulative[k_used - 1]

    with _figure_grid(1, 1, row_px=400, width_px=1200, right=80) as (fig, axes):
        ax = axes[0, 0]
        # one filled outline per group, not a bar artist per component (876 of them took 0.9 s to draw)
        ax.stairs(ratio[:k_used], np.arange(k_used + 1) + 0.5, fill=True, color="tab:blue")
        if k_used < n_components:
            ax.stairs(ratio[k_used:], np.arange(k_used, n_components + 1) + 0.5, fill=True, color="0.7")
        ax.set_xlabel("component")
        ax.set_ylabel("explained variance ratio (bars)")
        ax.set_xlim(0.3, n_components + 0.7)
        ax.grid(axis="y", alpha=0.3)
        cum_ax = ax.twinx()
        cum_ax.plot(index, cumulative, color="tab:orange", marker="." if n_components <= 80 else None,
                    label="cumulative")
        cum_ax.axhline(0.95, color="tab:red", ls="--", lw=1, label="95%")
        cum_ax.axvline(k_used, color="k", ls=":", lw=1)
        cum_ax.plot([k_used], [reached], "o", color="k", ms=7,
                    label=f"k_used = {k_used}: {reached:.1%}")
        cum_ax.set_ylim(0, 1.02)
        cum_ax.set_ylabel("cumulative explained variance")
        cum_ax.legend(handles=[Patch(color="tab:blue", label="kept"), Patch(color="0.7", label="dropped")]
                      + cum_ax.get_legend_handles_labels()[0], loc="center right")
        fig.suptitle(f"Expression basis: {k_used} of {n_components} components "
                     f"keep {reached:.1%} of the variance")
        return _to_rgb(fig)


def mouth_and_speaking(mouth_open: np.ndarray, speaking: np.ndarray, fps: float,
                       names: Sequence[str]) -> np.ndarray:
    """Mouth opening per person with the frames chosen as speaking shaded.

    Rows share the y axis so mouths compare across people.

    Args:
        mouth_open: [T, P] float mouth opening (any scale; NaN where no face).
        speaking: [T, P] bool, the speaker decision per frame.
        fps: video frame rate.
        names: P person names.

    Returns:
        [H, 1400, 3] uint8 RGB, H grows with P.
    """
    mouth_open = np.asarray(mouth_open, np.float64)
    speaking = np.asarray(speaking, bool)
    n_frames, n_persons = speaking.shape
    _check_shape("mouth_open", mouth_open, (n_frames, n_persons))
    _check_names(names, n_persons)
    seconds = np.arange(n_frames) / fps

    with _figure_grid(n_persons, 1, row_px=150, top=65, bottom=85, hgap=40,
                      sharex=True, sharey=True) as (fig, axes):
        axes = axes[:, 0]
        fig.suptitle("Mouth opening and the speaker decision")
        for p, (ax, name) in enumerate(zip(axes, names, strict=True)):
            color = _person_color(p)
            _shade(ax, speaking[:, p], fps, color, 0.2)
            ax.plot(seconds, mouth_open[:, p], color=color, lw=1)
            ax.set_title(f"{name}: speaking in {speaking[:, p].mean():.0%} of frames", loc="left")
            ax.set_ylabel("mouth opening")
            ax.grid(alpha=0.3)
        fig.legend(handles=[Line2D([], [], color="0.3", label="mouth opening (colour per person)"),
                            Patch(color="0.3", alpha=0.2, label="speaking")],
                   loc="lower center", ncols=2, frameon=False)
        axes[-1].set_xlabel("time (s)")
        axes[-1].set_xlim(0, max(n_frames / fps, 1 / fps))
        return _to_rgb(fig)


@contextlib.contextmanager
def _figure_grid(nrows: int, ncols: int, row_px: int, *, width_px: int = FIGURE_WIDTH_PX,
                 top: int = 45, bottom: int = 55, left: int = 100, right: int = 25,
                 hgap: int = 45, wgap: int = 0, height_ratios: Sequence[float] | None = None,
                 width_ratios: Sequence[float] | None = None,
                 **subplots_kw) -> Iterator[tuple[Figure, np.ndarray]]:
    """A figure sized in pixels around an [nrows, ncols] grid of axes.

    Margins and gaps are fixed pixels rather than a layout engine: constrained
    layout doubled the drawing time. ``row_px`` is the height of a ratio-1 row.
    """
    height_ratios = list(height_ratios or [1] * nrows)
    axes_h = row_px * sum(height_ratios)
    height_px = top + bottom + axes_h + (nrows - 1) * hgap
    axes_w = width_px - left - right - (ncols - 1) * wgap
    gridspec = {"left": left / width_px, "right": 1 - right / width_px,
                "bottom": bottom / height_px, "top": 1 - top / height_px,
                "hspace": hgap / (axes_h / nrows), "wspace": wgap / (axes_w / ncols),
                "height_ratios": height_ratios, "width_ratios": width_ratios}
    with matplotlib.rc_context({"font.size": 11, "axes.titlesize": 11, "figure.titlesize": 13}):
        fig = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI)
        FigureCanvasAgg(fig)
        try:
            yield fig, fig.subplots(nrows, ncols, squeeze=False, gridspec_kw=gridspec, **subplots_kw)
        finally:
            fig.clear()


def _to_rgb(fig: Figure) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _shade(ax, mask: np.ndarray, fps: float, color, alpha: float) -> None:
    """Shade the full height of ``ax`` over the frames where ``mask`` is true."""
    spans = _runs(mask) / fps
    if len(spans) == 0:
        return
    verts = [[(a, 0), (a, 1), (b, 1), (b, 0)] for a, b in spans]
    patches = PolyCollection(verts, facecolors=color, alpha=alpha, edgecolors="none",
                             transform=ax.get_xaxis_transform())
    ax.add_collection(patches, autolim=False)


def _runs(mask: np.ndarray) -> np.ndarray:
    """[T] bool -> [R, 2] (start, stop) frame indices of the true runs."""
    edges = np.diff(np.concatenate([[0], np.asarray(mask, np.int8), [0]]))
    return np.stack([np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)], axis=1)


def _envelope(audio: np.ndarray, sr: int, n_bins: int = 4000):
    """Min/max per bin, so a long waveform draws as a few thousand vertices."""
    bin_len = max(1, -(-len(audio) // n_bins))
    starts = np.arange(0, len(audio), bin_len)
    return starts / sr, np.minimum.reduceat(audio, starts), np.maximum.reduceat(audio, starts)


def _person_color(p: int):
    return matplotlib.colormaps["tab10"](p % 10)


def _check_shape(name: str, array: np.ndarray, shape: tuple[int, ...]) -> None:
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")


def _check_names(names: Sequence[str], n_persons: int) -> None:
    if len(names) != n_persons:
        raise ValueError(f"{len(names)} names for {n_persons} persons")
