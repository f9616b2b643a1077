"""Held-out evaluation of the pose generator against baselines computed in the same run.

For every conversation, person and role (listener / speaker), on the held-out frames where
the person is tracked and in that role:

- posegen: K samples from the networks (the listener reads the real speaker's pose, as in
  the ViCo challenge);
- Mime: copies the partner's motion (the active speaker's normalized pose for a listener,
  the other person's for a speaker);
- MeanFr: the person's mean training pose;
- Random: a random window of the person's own training frames (K draws);
- NN-audio: per 2 s window, the person's motion in the training window whose audio features
  are nearest (L2).

Metrics (posegen.metrics): FD, P-FD, L1, rPCC, FRDiv, FRVar (and the real FRVar), nods per
minute (and the real count). Rows are per (conversation, person, role, method); the summary
per role pools the frames of every row for FD and P-FD (a larger sample than any one row, so
the distance measures the distributions, not the sampling noise of short segments) and
averages the other metrics weighted by frames. Lower is better for FD, P-FD, L1 and rPCC; FRVar and nods/min
should be near the real values; FRDiv > 0 means the samples differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.atomic_io import atomic_path, save_image, save_json
from posegen import data as pdata
from posegen import metrics as M
from posegen.model import PoseGenerator, generate
from posegen.plots import pitch_plot
from posegen.train import PoseGenError, load_checkpoint

METHODS = ("posegen", "mime", "mean", "random", "nn_audio")
NN_WINDOW_S = 2.0
NN_STRIDE = 5
MIN_FRAMES_S = 1.0
COLUMNS = ("fd", "p_fd", "l1", "rpcc", "frdiv", "frvar", "frvar_real", "nods_pm", "nods_pm_real")


def _partner(conv: pdata.Conversation, j: int, role: str, pose_z: np.ndarray, audio_z: np.ndarray) -> np.ndarray:
    """[T, E] what a person's motion is set against in P-FD and rPCC: for a listener the active
    speaker's normalized pose (0 where nobody speaks) and the speech's log RMS; for a speaker its
    speech's log RMS and zero-crossing rate."""
    if role == "speaker":
        return audio_z[:, :2]
    s = pdata.active_speaker(conv.speaking, j)
    pose = np.where((s >= 0)[:, None], np.nan_to_num(pose_z[np.arange(len(s)), np.maximum(s, 0)]), 0.0)
    return np.concatenate([pose, audio_z[:, :1]], 1)


def _mime(conv: pdata.Conversation, j: int, role: str, pose_z: np.ndarray) -> np.ndarray:
    if role == "listener":
        s = pdata.active_speaker(conv.speaking, j)
        return np.where((s >= 0)[:, None], np.nan_to_num(pose_z[np.arange(len(s)), np.maximum(s, 0)]), 0.0)
    other = next((k for k in range(len(conv.persons)) if k != j), j)
    return np.nan_to_num(pose_z[:, other])


def _random_windows(train_z: np.ndarray, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """[k, n, D] random contiguous stretches of the training frames (tiled when shorter than n)."""
    reps = int(np.ceil(n / len(train_z))) + 1
    tiled = np.concatenate([train_z] * reps)
    starts = rng.integers(0, max(1, len(tiled) - n), size=k)
    return np.stack([tiled[s: s + n] for s in starts])


def _nn_audio(audio_z: np.ndarray, train_end: int, pose_z_j: np.ndarray, start: int, fps: float) -> np.ndarray:
    """[T - start, D]: for each NN_WINDOW_S window from ``start``, the person's motion in the training
    window (stride NN_STRIDE) whose audio features are nearest."""
    W = max(2, int(round(NN_WINDOW_S * fps)))
    T = len(audio_z)
    cand = np.arange(0, max(1, train_end - W + 1), NN_STRIDE)
    bank = np.stack([audio_z[c: c + W].ravel() for c in cand if c + W <= train_end]) if train_end >= W else None
    out = np.zeros((T - start, pose_z_j.shape[1]), np.float32)
    if bank is None:
        return out
    for a in range(start, T, W):
        b = min(T, a + W)
        q = audio_z[a:b]
        d = ((bank.reshape(len(bank), W, -1)[:, : b - a] - q[None]) ** 2).sum((1, 2))
        c = int(cand[int(np.argmin(d))])
        out[a - start: b - start] = np.nan_to_num(pose_z_j[c: c + (b - a)])
    return out


def _scores(gen: np.ndarray, real: np.ndarray, partner: np.ndarray, mask: np.ndarray, fps: float,
            pitch_mean: float, pitch_std: float) -> dict[str, float]:
    """Metrics of K sequences gen [K, n, D] against real [n, D] over mask [n]."""
    deg = lambda z: np.rad2deg(z[:, 0] * pitch_std + pitch_mean)  # noqa: E731
    fd = [M.frechet_distance(g[mask], real[mask]) for g in gen]
    p_fd = [M.frechet_distance(np.concatenate([partner, g], 1)[mask], np.concatenate([partner, real], 1)[mask])
            for g in gen]
    return {"fd": float(np.mean(fd)), "p_fd": float(np.mean(p_fd)),
            "l1": float(np.mean([M.l1(g[mask], real[mask]) for g in gen])),
            "rpcc": float(np.mean([M.rpcc(real[mask], g[mask], partner[mask]) for g in gen])),
            "frdiv": M.frdiv(gen[:, mask]), "frvar": float(np.mean([M.frvar(g[mask]) for g in gen])),
            "frvar_real": M.frvar(real[mask]),
            "nods_pm": float(np.mean([M.nods_per_minute(deg(g), fps, mask) for g in gen])),
            "nods_pm_real": M.nods_per_minute(deg(real), fps, mask)}


def evaluate_conversations(model: PoseGenerator, stats: pdata.Stats, convs: list[pdata.Conversation],
                           samples: int = 5, seed: int = 0) -> dict:
    """Metric rows per (conversation, person, role, method), and the curves drawn per conversation.

    Returns:
        {"rows": [...], "summary": {role: {method: mean metrics}}, "curves": {conv name: {method: poses}}}.
    """
    rng = np.random.default_rng(seed)
    rows, curves = [], {}
    pool: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for c in convs:
        start, T = c.train_end, c.n_frames
        audio_z = stats.norm_audio(c.audio)
        pose_z = np.stack([stats.norm_pose(n, c.pose[:, j]) for j, n in enumerate(c.persons)], 1)
        g = generate(model, stats, c.persons, c.audio, c.speaking, c.fps, samples=samples, seed=seed,
                     speaker_pose=np.nan_to_num(c.pose))
        drawn = {m: np.full((T, len(c.persons), pdata.POSE_DIM), np.nan, np.float32) for m in METHODS[1:]}
        for j, name in enumerate(c.persons):
            for role in ("listener", "speaker"):
                in_role = c.speaking[start:, j] if role == "speaker" else ~c.speaking[start:, j]
                mask = c.valid[start:, j] & in_role
                if mask.sum() < MIN_FRAMES_S * c.fps:
                    continue
                real = np.nan_to_num(pose_z[start:, j])
                partner = _partner(c, j, role, pose_z, audio_z)[start:]
                key = "pose_listener" if role == "listener" else "pose_speaker"
                gen_z = np.stack([stats.norm_pose(name, g[key][k, start:, j]) for k in range(samples)])
                train_sel = c.valid[:start, j]
                train_z = np.nan_to_num(pose_z[:start, j][train_sel]) if train_sel.any() else np.zeros((1, 6))
                methods = {"posegen": gen_z, "mime": _mime(c, j, role, pose_z)[None, start:],
                           "mean": np.zeros((1, T - start, pdata.POSE_DIM), np.float32),
                           "random": _random_windows(train_z, T - start, samples, rng),
                           "nn_audio": _nn_audio(audio_z, start, pose_z[:, j], start, c.fps)[None]}
                for method, seq in methods.items():
                    pool.setdefault((role, method), []).append((seq[:, mask], real[mask], partner[mask]))
                    if method != "posegen":
                        raw = stats.denorm_pose(name, seq[0])
                        drawn[method][start:, j][in_role] = raw[in_role]
                    rows.append({"conversation": c.name, "person": name, "role": role, "method": method,
                                 "frames": int(mask.sum()),
                                 **_scores(seq, real, partner, mask, c.fps, float(stats.pose_mean[name][0]),
                                           float(stats.pose_std[name][0]))})
        curves[c.name] = {"posegen": g["pose"], **drawn}
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for role in ("listener", "speaker"):
        for method in METHODS:
            sel = [r for r in rows if r["role"] == role and r["method"] == method]
            if not sel:
                continue
            w = np.array([r["frames"] for r in sel], np.float64)
            vals = {k: float(np.average([r[k] for r in sel], weights=w)) for k in COLUMNS}
            # FD and P-FD of the frames of every row pooled: one distribution per role, as large as the test set
            parts = pool[(role, method)]
            real = np.concatenate([p[1] for p in parts])
            partner = np.concatenate([p[2] for p in parts])
            K = min(len(p[0]) for p in parts)
            gens = [np.concatenate([p[0][k] for p in parts]) for k in range(K)]
            vals["fd"] = float(np.mean([M.frechet_distance(g, real) for g in gens]))
            vals["p_fd"] = float(np.mean([M.frechet_distance(np.concatenate([partner, g], 1),
                                                             np.concatenate([partner, real], 1)) for g in gens]))
            summary.setdefault(role, {})[method] = vals
    return {"rows": rows, "summary": summary, "curves": curves}


def format_table(summary: dict) -> str:
    """The summary as a plain-text table, one block per role."""
    head = f"{'role':9} {'method':9} " + " ".join(f"{c:>12}" for c in COLUMNS)
    lines = [head, "-" * len(head)]
    for role, methods in summary.items():
        for method, vals in methods.items():
            lines.append(f"{role:9} {method:9} " + " ".join(f"{vals[c]:12.4f}" for c in COLUMNS))
    return "\n".join(lines)


def beats_baselines(summary: dict, role: str = "listener") -> dict[str, bool]:
    """Whether posegen is lowest of all methods on FD, P-FD and rPCC for a role."""
    m = summary[role]
    return {k: all(m["posegen"][k] < v[k] for name, v in m.items() if name != "posegen") for k in ("fd", "p_fd", "rpcc")}


def evaluate(ckpt_path: str | Path, data: list[str], out_dir: str | Path, samples: int = 5, seed: int = 0) -> dict:
    """Evaluate a checkpoint on the held-out frames of the datasets it was trained on; writes
    metrics.json, table.txt and pose_curves_<dataset>.png (real pitch, K samples, baselines) into out_dir."""
    model, stats, ckpt = load_checkpoint(ckpt_path)
    cfg = model.cfg
    trained = {d["name"]: d for d in ckpt["datasets"]}
    convs = []
    for d in data:
        conv = pdata.from_dataset(d, cfg.mel_bands, cfg.n_expr)
        info = trained.get(conv.name)
        if info is None:
            raise PoseGenError(f"{d} was not among the checkpoint's training datasets ({', '.join(trained)}); "
                               "posegen knows the persons it was trained on only")
        if info["sha256"] and conv.source_sha256 and info["sha256"] != conv.source_sha256:
            raise PoseGenError(f"{d} comes from another video than the dataset {conv.name} the checkpoint was trained on")
        if info["n_frames"] != conv.n_frames:
            raise PoseGenError(f"{d} has {conv.n_frames} frames, the checkpoint's {conv.name} had {info['n_frames']}")
        conv.train_end = int(info["train_end"])
        if abs(conv.fps - float(ckpt["fps"])) > 1e-6:
            raise PoseGenError(f"{d} runs at {conv.fps} fps, the checkpoint at {ckpt['fps']}")
        convs.append(conv)
    res = evaluate_conversations(model, stats, convs, samples=samples, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for c in convs:
        lo = max(0, c.train_end - int(4 * c.fps))
        img = pitch_plot(c, res["curves"][c.name], start=lo,
                         title=f"{c.name}: head pitch, real vs {samples} posegen samples and the baselines")
        save_image(out / f"pose_curves_{c.name}.png", img)
    table = format_table(res["summary"])
    save_json(out / "metrics.json", {"rows": res["rows"], "summary": res["summary"], "samples": samples,
                                     "checkpoint": str(ckpt_path)})
    with atomic_path(out / "table.txt") as tmp:
        tmp.write_text(table + "\n")
    return {"rows": res["rows"], "summary": res["summary"], "table": table}
