"""Who speaks when in new speech, for the studio's Direct page: the avatar's voices guess the turns
(``speech.voices.assign``, as render.py does without --roles), the page shows them on the waveform and in a
table the user edits; the table becomes the render's roles.json (``workspace.write_roles``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.atomic_io import atomic_path
from common.video_io import AUDIO_SR, read_wav
from studio.workspace import StudioError, avatar_persons, display


def guess(run: Path, wav: Path) -> tuple[list[list], float]:
    """Rows (start s, end s, person as shown) of the turns the avatar's voices find in ``wav``, and its length."""
    from speech import voices

    names, labels, bank, fps = avatar_persons(run)
    audio, sr = read_wav(wav)
    seconds = len(audio) / sr
    if bank is None:  # (no voice could be enrolled: the user says who speaks)
        return [[0.0, round(seconds, 2), display(names[0], labels)]], seconds
    n_frames = max(1, int(seconds * fps))
    try:
        found = voices.assign(audio, n_frames, fps, voices.VoiceBank.from_dict(bank), names)
    except voices.VoiceError as e:
        raise StudioError(str(e)) from None
    rows = [[round(t.start / fps, 2), round(t.end / fps, 2), display(t.person, labels)] for t in found.turns]
    return rows, seconds


def picture(wav: Path, rows: list[list], out: Path) -> Path:
    """The waveform with each turn shaded in its person's colour (a PNG at ``out``).

    Drawn on a ``Figure`` of its own, not through pyplot, whose figure registry is not safe from the page handlers'
    threads."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    audio, sr = read_wav(wav)
    hop = max(1, sr // 100)  # (an envelope at 100 points a second)
    env = np.abs(audio[: len(audio) // hop * hop]).reshape(-1, hop).max(1) if len(audio) >= hop else np.abs(audio)
    t = np.arange(len(env)) * hop / (sr or AUDIO_SR)
    fig = Figure(figsize=(9, 1.8), dpi=100)
    ax = fig.add_subplot()
    ax.fill_between(t, -env, env, color="0.35", lw=0)
    people = sorted({str(r[2]) for r in rows if len(r) > 2})
    colours = {p: colormaps["tab10"](i % 10) for i, p in enumerate(people)}
    for r in rows:
        try:
            ax.axvspan(float(r[0]), float(r[1]), color=colours[str(r[2])], alpha=0.35, lw=0)
        except (TypeError, ValueError, KeyError, IndexError):
            continue
    for p, c in colours.items():
        ax.plot([], [], color=c, lw=8, alpha=0.5, label=p)
    if people:  # (above the axes, where it hides no speech)
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=8, frameon=False, ncol=len(people))
    ax.set_xlim(0, max(t[-1] if len(t) else 0, 1e-3))
    ax.set_yticks([])
    ax.set_xlabel("seconds")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp)
    return out
