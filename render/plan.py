"""The product side of ``scripts/render.py``: its options checked, the conversation planned (who speaks, the motion of
every person, the audio codes), the avatar loaded from its checkpoint alone, and the render run.

``make_plan`` takes the motion from posegen (generated from the audio), from the recorded tracks (``--pose_from
tracked``) or from another prepared person (``--pose_from DATASET[:id]``, retargeted); who speaks from a roles file or
from the voices the checkpoint enrolled (``speech.voices``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common import dataset
from common.atomic_io import sha256_of
from common.errors import PrepareError
from render.conversation import (
    Plan,
    RenderError,
    audio_codes,
    check_posegen_matches,
    conference_layout,
    load_audio,
    original_layout,
    posegen_audio_features,
    render_video,
    replay_drive,
    source_motion,
)
from render.drive import from_track


def check_options(args) -> None:
    """Flag combinations that cannot work, refused before anything is loaded."""
    if args.samples < 1:
        raise RenderError("--samples must be at least 1")
    if args.samples > 1 and args.pose_from:
        raise RenderError("--samples draws several generated reactions; it does not apply to --pose_from")
    if args.audio and not args.pose_from and not args.posegen:
        raise RenderError("rendering from --audio needs --posegen (a checkpoint of scripts/train_posegen.py) "
                          "or --pose_from")
    if not args.audio and args.pose_from is None:
        raise RenderError("give --audio (new speech) or --pose_from tracked (the recorded video)")
    if not args.audio and not args.data:
        raise RenderError("without --audio, --data names the dataset whose own audio is rendered")
    if args.chunk < 1:
        raise RenderError("--chunk must be at least 1")


def check_persons(spec: str | None, names: list[str]) -> None:
    for tok in (spec.split(",") if spec else []):
        tok = tok.strip()
        if tok not in names and not (tok.isdigit() and int(tok) < len(names)):
            raise RenderError(f"the checkpoint has no person {tok!r}; it has {', '.join(names)}")


def pick_persons(spec: str | None, all_persons, first: str, layout: str):
    if spec is None:
        if layout == "conference":
            return list(all_persons)
        return [p for p in all_persons if p.name.split(":")[0] == first]
    chosen = []
    for tok in spec.split(","):
        tok = tok.strip()
        hit = [p for p in all_persons if p.name == tok] or (
            [all_persons[int(tok)]] if tok.isdigit() and int(tok) < len(all_persons) else [])
        if not hit:
            raise RenderError(f"the checkpoint has no person {tok!r}; it has {', '.join(p.name for p in all_persons)}")
        chosen.append(hit[0])
    return chosen


def speaking_of_audio(args, persons, audio, T, fps, T_audio, bank: dict | None) -> np.ndarray:
    """[T, P] who speaks, from roles.json or from the checkpoint's voices. A roles file is checked against the whole
    audio (T_audio frames), so that --max_seconds may cut a conversation whose later turns it names."""
    from speech import voices

    names = [p.name for p in persons]
    if args.roles:
        try:
            return voices.roles_from_json(args.roles, names, T_audio, fps)[:T]
        except (ValueError, OSError) as e:
            raise RenderError(f"{args.roles}: {e}") from e
    if bank is None:
        raise RenderError("this avatar has no enrolled voices (its datasets' speech was too short or missing): "
                          "say who speaks when with --roles roles.json")
    return voices.assign(audio, T, fps, voices.VoiceBank.from_dict(bank), names).speaking


def make_plan(args, model, all_persons, encoder, infos, bank) -> Plan:
    persons = pick_persons(args.persons, all_persons, infos[0].name, args.layout)
    fps = infos[0].fps
    if args.audio:
        audio, T = load_audio(args.audio, fps)
    else:
        from common.video_io import read_audio

        meta = dataset.read_meta(args.data)
        if Path(args.data).name not in [i.name for i in infos]:
            raise RenderError(f"the avatar was not trained on {args.data}: it was trained on "
                              f"{', '.join(i.name for i in infos)}")
        audio = read_audio(Path(args.data) / "audio.wav")
        T = int(meta["n_frames"])
    T_audio = T
    if args.max_seconds:
        T = min(T, max(1, int(args.max_seconds * fps)))
    audio = audio[: int(round(T / fps * 16000))]
    codes = audio_codes(encoder, audio, T, fps) if args.audio else persons[0].audio[:T]
    if args.pose_from == "tracked":
        if not args.audio:
            drives = [from_track(p, np.arange(T) % len(p.euler)) for p in persons]
        else:
            speaking = speaking_of_audio(args, persons, audio, T, fps, T_audio, bank)
            drives = []
            for i, p in enumerate(persons):
                d = from_track(p, np.arange(T) % len(p.euler))
                d.speaking = speaking[:, i]
                drives.append(d)
        return Plan(fps, audio, persons, [drives], codes)
    if args.pose_from:
        src, _, idx = args.pose_from.partition(":")
        try:
            src_meta = dataset.read_meta(src)
            pid = int(idx or 0)
            if pid not in [p["id"] for p in src_meta["persons"]]:
                raise RenderError(f"{src} has no person {pid}")
            pose, expr, valid = source_motion(src, pid)
        except (PrepareError, ValueError) as e:
            raise RenderError(f"--pose_from {args.pose_from}: {e}") from e
        speaking = speaking_of_audio(args, persons, audio, T, fps, T_audio, bank) if args.audio else \
            np.stack([p.speaking[:T].numpy() for p in persons], 1)
        drives = [replay_drive(pose, expr, valid, p, T, speaking[:, i]) for i, p in enumerate(persons)]
        return Plan(fps, audio, persons, [drives], codes)
    # generated motion
    from posegen.model import generate
    from posegen.train import PoseGenError, load_checkpoint

    try:
        pg, stats, pg_ckpt = load_checkpoint(args.posegen)
    except PoseGenError as e:
        raise RenderError(str(e)) from e
    check_posegen_matches(pg_ckpt, persons, infos)
    if abs(float(pg_ckpt["fps"]) - fps) > 1e-6:
        raise RenderError(f"the posegen checkpoint runs at {pg_ckpt['fps']} fps, the datasets at {fps}")
    feats, _ = posegen_audio_features(audio, T, fps, pg.cfg.mel_bands)
    speaking = speaking_of_audio(args, persons, audio, T, fps, T_audio, bank)
    names = [p.name for p in persons]
    g = generate(pg, stats, names, feats, speaking, fps, samples=args.samples, seed=args.seed)
    from render.drive import Drive

    drives = [[Drive(euler=g["pose"][k, :, i, :3], t=g["pose"][k, :, i, 3:], expr=g["expr"][k, :, i],
                     speaking=speaking[:, i]) for i in range(len(persons))] for k in range(args.samples)]
    return Plan(fps, audio, persons, drives, codes)


def render_conversation(args) -> dict:
    """What ``scripts/render.py`` does with its parsed options: load the avatar checkpoint (no dataset), plan the
    conversation, render it in resumable chunks and write the videos. Returns ``render_video``'s facts (with
    "main": False on the ranks other than 0 under torchrun, which share the chunks out and write no video).

    Raises:
        RenderError, common.errors.TrainError, common.errors.PrepareError, ValueError: one-line user errors.
    """
    from common import distributed
    from nerf.device import resolve_device

    check_options(args)
    dev = resolve_device(args.device)
    with distributed.session(dev, args.dist_timeout_s) as ranks:
        try:
            facts = _render(args, ranks, str(distributed.rank_device(dev, ranks)))
        except RuntimeError as e:
            if not distributed.is_lost_rank(ranks, e):
                raise
            raise RenderError(distributed.lost_message(ranks, e, args.dist_timeout_s)) from None
    return {**facts, "main": ranks.main}


def _render(args, ranks, device: str) -> dict:
    from nerf.avatar import datasets_of
    from nerf.evaluate import load_model, parse_ray_samples
    from nerf.trainer import checkpoint_audio_encoder, load_checkpoint

    out = Path(args.out)
    ckpt = load_checkpoint(Path(args.ckpt))
    check_persons(args.persons, ckpt["persons"])
    model, all_persons, cfg = load_model(args.ckpt, None, device, occupancy=not args.no_occupancy,
                                         ckpt=ckpt, march_steps=args.march_steps,
                                         ray_samples=parse_ray_samples(args.ray_samples))
    infos = datasets_of(ckpt["avatar"])
    encoder = checkpoint_audio_encoder(ckpt, Path(args.ckpt))
    plan = make_plan(args, model, all_persons, encoder, infos, ckpt["avatar"].get("voices"))
    conference = conference_layout(plan.persons, args.tile or cfg.image_size, not args.no_highlight)
    layout = original_layout(infos, plan.persons, args.scale) if args.layout == "original" else conference
    outputs = [(layout, out)] + ([(conference, Path(args.conference_out))] if args.conference_out else [])
    # The chunks' key: everything that decides their pixels (the plan, the checkpoint's content, the grid).
    key_extra = {"ckpt_sha256": sha256_of(args.ckpt), "occupancy": not args.no_occupancy}
    if args.march_steps:
        key_extra["march_steps"] = args.march_steps
    if args.ray_samples:
        key_extra["ray_samples"] = [model.render_cfg.n_coarse, model.render_cfg.n_importance]
    return render_video(model, plan, outputs, chunk=args.chunk, key_extra=key_extra, tiles_only=args.tiles_only,
                         amp=args.amp, ranks=ranks)
