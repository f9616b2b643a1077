#!/usr/bin/env python
"""Render a conversation of trained avatars into a video, from new audio or from recorded motion.

From audio alone (the main use): who speaks when comes from the voices (each speech turn goes to
the trained person whose voice it resembles most; --roles roles.json says it instead), posegen
generates every speaker's and listener's head motion and expressions, the audio encoder drives
the speaker's mouth, the NeRF renders each person, and the frames are laid out as in the
original video (over its background plate) or as an N-person conference grid. The mp4 has the
audio muxed in.

The avatar checkpoint holds everything rendering needs (the fields, the audio encoder, every person's buffers,
background plates and crop boxes, the occupancy grid, the enrolled voices): no dataset is read, except the one
whose own audio is rendered when --audio is not given (--data).

Examples:
    python scripts/render.py --ckpt runs/talk/checkpoint.pt --posegen runs/pg/checkpoint.pt \\
        --audio new.wav --out out/conversation.mp4
    python scripts/render.py ... --audio new.wav --layout conference --persons 0,1 --out out/conf.mp4
    python scripts/render.py ... --audio new.wav --samples 3 --out out/reactions.mp4   # 3 reactions side by side
    python scripts/render.py --ckpt runs/talk/checkpoint.pt --data data/talk --pose_from tracked --out out/recon.mp4
    python scripts/render.py --ckpt runs/talk/checkpoint.pt --audio new.wav --pose_from data/other:0 --out out/replay.mp4

roles.json: [{"person": "talk:0", "start": 0.0, "end": 3.5}, {"person": 1, "start": 3.9, "end": 8.0}]
(person: a name "<dataset>:<id>" or an index into --persons; times in seconds).

Long audio renders in chunks (--chunk frames) into <out>.parts/; an interrupted run resumes there.
--tiles_only stops after the chunks (a GPU machine without ffmpeg, say); the same command without it,
here or wherever <out>.parts/ was copied (the checkpoint is recognized by its content), writes the videos.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configargparse  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from data_prep import dataset  # noqa: E402
from data_prep.atomic_io import sha256_of  # noqa: E402
from data_prep.console import quiet  # noqa: E402
from data_prep.errors import PrepareError  # noqa: E402
from nerf.errors import TrainError  # noqa: E402
from render.conversation import (  # noqa: E402
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
from render.drive import from_track  # noqa: E402


def build_parser() -> configargparse.ArgumentParser:
    p = configargparse.ArgumentParser(description=__doc__, formatter_class=configargparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbose", action="store_true", help="also show third-party warnings and logs "
                   "(TensorFlow Lite, absl, protobuf)")
    p.add_argument("--config", is_config_file=True, help="a config file of 'key = value' lines")
    p.add_argument("--ckpt", required=True, help="the avatar NeRF checkpoint (scripts/train.py)")
    p.add_argument("--data", default=None, help="a dataset the avatar was trained on, whose own audio (and recorded "
                   "motion, --pose_from tracked) is rendered when --audio is not given")
    p.add_argument("--out", required=True, help="the mp4 to write")
    p.add_argument("--audio", default=None, help="new speech (any format, rate, channels); default: the dataset's own")
    p.add_argument("--posegen", default=None, help="the posegen checkpoint (scripts/train_posegen.py); needed with --audio "
                   "unless --pose_from is given")
    p.add_argument("--roles", default=None, help="roles.json: who speaks when, instead of recognizing voices")
    p.add_argument("--pose_from", default=None, help="'tracked' (the video's own motion) or <dataset>[:person] "
                   "(another person's motion, retargeted to each avatar's mean pose and range)")
    p.add_argument("--layout", choices=("original", "conference"), default="original", help="original video layout or grid")
    p.add_argument("--persons", default=None, help="comma-separated indices or names of the persons to render (default: all "
                   "of the first dataset; every person for --layout conference)")
    p.add_argument("--samples", type=int, default=1, help="K different listener reactions side by side (posegen only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated motion")
    p.add_argument("--tile", type=int, default=0, help="conference tile side in px (default: the NeRF's image size)")
    p.add_argument("--no_highlight", action="store_true", help="do not frame the active speaker (conference)")
    p.add_argument("--scale", type=float, default=1.0, help="original layout: output size relative to the source video")
    p.add_argument("--conference_out", default=None, help="also write the conference grid to this mp4, from the "
                   "same rendered frames (no second render)")
    p.add_argument("--chunk", type=int, default=50, help="frames rendered per resumable chunk")
    p.add_argument("--max_seconds", type=float, default=0.0, help="render at most this much (0: all)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--device", default="auto", help="auto (a GPU if torch sees one), cpu or cuda (default auto)")
    p.add_argument("--tiles_only", action="store_true",
                   help="render the tiles into <out>.parts/ and stop; run again without it to write the videos")
    p.add_argument("--no_occupancy", action="store_true",
                   help="query the fields at every sample (default: skip cells an occupancy grid, built from the "
                        "training data's expressions, speech and poses, finds empty; nerf/occupancy.py)")
    p.add_argument("--amp", action="store_true",
                   help="float16 autocast for the fields' MLPs (for GPUs; slower on a CPU; see nerf/render.py)")
    p.add_argument("--march_steps", type=int, default=0,
                   help="march through the occupancy grid instead of sampling as in training: N steps across the "
                        "head's diameter and N across the torso box's depth, only occupied cells "
                        "queried, rays stopped once opaque (nerf/march.py; on a GPU one fused Triton kernel, "
                        "nerf/fused_march.py; 0: off; docs/PERFORMANCE.md says when it pays)")
    p.add_argument("--ray_samples", default="", help="COARSE+IMPORTANCE samples per field and ray, e.g. 24+16: fewer "
                   "than the training run's renders faster at some cost in detail (default: the training run's)")
    return p


def _check_args(args) -> None:
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


def _check_persons(spec: str | None, names: list[str]) -> None:
    for tok in (spec.split(",") if spec else []):
        tok = tok.strip()
        if tok not in names and not (tok.isdigit() and int(tok) < len(names)):
            raise RenderError(f"the checkpoint has no person {tok!r}; it has {', '.join(names)}")


def _pick_persons(spec: str | None, all_persons, first: str, layout: str):
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


def _speaking(args, persons, audio, T, fps, T_audio, bank: dict | None) -> np.ndarray:
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
    persons = _pick_persons(args.persons, all_persons, infos[0].name, args.layout)
    fps = infos[0].fps
    if args.audio:
        audio, T = load_audio(args.audio, fps)
    else:
        from data_prep.video_io import read_audio

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
            speaking = _speaking(args, persons, audio, T, fps, T_audio, bank)
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
        speaking = _speaking(args, persons, audio, T, fps, T_audio, bank) if args.audio else \
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
    speaking = _speaking(args, persons, audio, T, fps, T_audio, bank)
    names = [p.name for p in persons]
    g = generate(pg, stats, names, feats, speaking, fps, samples=args.samples, seed=args.seed)
    from render.drive import Drive

    drives = [[Drive(euler=g["pose"][k, :, i, :3], t=g["pose"][k, :, i, 3:], expr=g["expr"][k, :, i],
                     speaking=speaking[:, i]) for i in range(len(persons))] for k in range(args.samples)]
    return Plan(fps, audio, persons, drives, codes)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet(args.verbose)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    try:
        for path in [out] + ([Path(args.conference_out)] if args.conference_out else []):
            if path.suffix.lower() != ".mp4":
                raise RenderError(f"the output must end in .mp4, got {path.name}")
            path.parent.mkdir(parents=True, exist_ok=True)
            probe = path.parent / f".{path.name}.writable"
            probe.touch()
            probe.unlink()
    except OSError as e:
        print(f"error: cannot write {out} ({e.strerror})", file=sys.stderr)
        return 1
    except RenderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        from nerf.avatar import unpack
        from nerf.evaluate import load_model, parse_ray_samples
        from nerf.trainer import checkpoint_audio_encoder, load_checkpoint

        _check_args(args)
        ckpt = load_checkpoint(Path(args.ckpt))
        _check_persons(args.persons, ckpt["persons"])
        model, all_persons, cfg = load_model(args.ckpt, None, args.device, occupancy=not args.no_occupancy,
                                             ckpt=ckpt, march_steps=args.march_steps,
                                             ray_samples=parse_ray_samples(args.ray_samples))
        infos = unpack(ckpt["avatar"])[1]
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
        facts = render_video(model, plan, outputs, chunk=args.chunk, key_extra=key_extra, tiles_only=args.tiles_only,
                             amp=args.amp)
    except (RenderError, TrainError, PrepareError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume from the finished chunks", file=sys.stderr)
        return 130
    if args.tiles_only:
        print(f"{facts['parts']}: tiles of {facts['frames']} frames, {facts['seconds_per_frame']:.3f} s per frame "
              f"({facts['chunks_reused']} chunks reused); run again without --tiles_only to write the videos")
        return 0
    written = f"{out} and {args.conference_out}" if args.conference_out else str(out)
    print(f"{written}: {facts['frames']} frames, {facts['seconds_per_frame']:.3f} s per frame "
          f"({facts['chunks_reused']} chunks reused)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
