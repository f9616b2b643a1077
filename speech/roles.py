"""Who speaks when, from a file the user writes (or the compose tool's turns.json).

Two forms are read:

- a roles file: a JSON list of ``{"person": <name or index>, "start": <seconds>, "end": <seconds>}``;
- ``scripts/compose_conversation.py``'s ``OUT.turns.json``: an object whose ``turns`` list holds
  ``{"person": <index>, "start_s": ..., "end_s": ...}``.

Frame i (time i / fps) belongs to a person when start <= i / fps < end. Intervals may touch but not
overlap (one speaker at a time); an end past the audio is cut at n_frames / fps; time outside every
interval is silence. prepare (``--roles``) and render (``--roles``) both read them here.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import PrepareError
from data_prep.audio_features import check_clock

FORMAT = '[{"person": "<name or index>", "start": seconds, "end": seconds}, ...]'


class RolesError(PrepareError):
    """A roles file that cannot be read or says something impossible; the message says which entry."""


def _person(value: Any, persons: list[str], where: str) -> int:
    """Column of an entry's person: a name, or an index into ``persons``."""
    if isinstance(value, str):
        if value in persons:
            return persons.index(value)
        if value.strip().lstrip("-").isdigit():
            value = int(value)
        else:
            raise RolesError(f"{where}: unknown person {value!r}; known: {', '.join(persons)} "
                             f"(or an index 0..{len(persons) - 1})")
    if isinstance(value, bool) or not isinstance(value, int):
        raise RolesError(f"{where}: 'person' must be a name or an index, got {value!r}")
    if not 0 <= value < len(persons):
        raise RolesError(f"{where}: person index {value} is out of range 0..{len(persons) - 1} ({', '.join(persons)})")
    return value


def _time(entry: dict, key: str, where: str) -> float:
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RolesError(f"{where}: {key!r} must be a finite number of seconds, got {value!r}")
    return float(value)


def _entries(raw: Any, name: str) -> list:
    """The roles list of either form (a compose turns.json becomes {person, start, end} entries)."""
    if isinstance(raw, dict) and isinstance(raw.get("turns"), list):
        turns = raw["turns"]
        if not all(isinstance(t, dict) and {"person", "start_s", "end_s"} <= set(t) for t in turns):
            raise RolesError(f"{name}: its 'turns' entries need person, start_s and end_s (a compose turns.json)")
        return [{"person": t["person"], "start": t["start_s"], "end": t["end_s"]} for t in turns]
    if not isinstance(raw, list):
        raise RolesError(f"{name} must hold a JSON list of {{person, start, end}} objects (or be a compose "
                         f"turns.json), got {type(raw).__name__}")
    return raw


def read_roles(path: str | os.PathLike, persons: list[str], n_frames: int, fps: float) -> np.ndarray:
    """Read who speaks when.

    Args:
        path: the roles JSON file (either form of the module docstring).
        persons: the P person names, the output's columns; an entry may name one or give its index.
        n_frames: T, the number of video frames.
        fps: video frames per second.

    Returns:
        speaking: [T, P] bool, at most one True per frame.

    Raises:
        RolesError: unreadable or malformed JSON, unknown persons, negative, inverted, overlapping or
            out-of-clip intervals.
        PrepareError: no frame, or fps not positive.
    """
    check_clock(n_frames, fps)
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as e:
        raise RolesError(f"cannot read the roles file {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RolesError(f"{path} is not valid JSON ({e}); expected {FORMAT}") from None
    duration = n_frames / fps
    spans = []
    for k, entry in enumerate(_entries(raw, path.name)):
        where = f"{path.name} entry {k}"
        if not isinstance(entry, dict):
            raise RolesError(f"{where}: expected an object {{person, start, end}}, got {entry!r}")
        keys = set(entry)
        if keys != {"person", "start", "end"}:
            missing, extra = {"person", "start", "end"} - keys, keys - {"person", "start", "end"}
            raise RolesError(f"{where}: " + "; ".join(
                ([f"missing {sorted(missing)}"] if missing else []) + ([f"unknown keys {sorted(extra)}"] if extra else [])))
        col = _person(entry["person"], persons, where)
        start, end = _time(entry, "start", where), _time(entry, "end", where)
        if start < 0:
            raise RolesError(f"{where}: start {start} s is negative")
        if end <= start:
            raise RolesError(f"{where}: end {end} s is not after start {start} s")
        if start >= duration:
            raise RolesError(f"{where}: starts at {start} s, after the audio ends ({duration:.3f} s)")
        spans.append((start, end, col, k))
    spans.sort()
    for (_, e0, _, k0), (s1, _, _, k1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise RolesError(f"{path.name}: entries {k0} and {k1} overlap ({s1} s < {e0} s); one person speaks at a time")
    speaking = np.zeros((n_frames, len(persons)), bool)
    t = np.arange(n_frames) / fps
    for start, end, col, _ in spans:
        speaking[(t >= start) & (t < end), col] = True
    return speaking
