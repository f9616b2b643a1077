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

Under torchrun (docs/DISTRIBUTED.md) the ranks share the chunks out (<out>.parts/ must be a folder all of them
see) and rank 0 writes the videos, bit for bit the one-process render's:
    torchrun --nproc_per_node 4 scripts/render.py --ckpt runs/talk/checkpoint.pt ... --out out/long.mp4
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configargparse  # noqa: E402
import torch  # noqa: E402

from common.console import quiet  # noqa: E402
from common.distributed import DEFAULT_TIMEOUT_S, launched_rank  # noqa: E402
from common.errors import (
    PrepareError,  # noqa: E402
    TrainError,  # noqa: E402
)
from render.conversation import RenderError  # noqa: E402
from render.plan import render_conversation  # noqa: E402


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
    p.add_argument("--dist_timeout_s", type=float, default=DEFAULT_TIMEOUT_S,
                   help="under torchrun: seconds a rank waits for the others (its last chunk included) before the job "
                        "stops with an error (default %(default)s)")
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
            probe = path.parent / f".{path.name}.{os.getpid()}.writable"  # (one per rank under torchrun)
            probe.touch()
            probe.unlink()
    except OSError as e:
        print(f"error: cannot write {out} ({e.strerror})", file=sys.stderr)
        return 1
    except RenderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        facts = render_conversation(args)
    except (RenderError, TrainError, PrepareError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if launched_rank() == 0:  # (under torchrun every rank stops; one says so)
            print("interrupted; run the same command again to resume from the finished chunks", file=sys.stderr)
        return 130
    if not facts["main"]:  # a rank other than 0 under torchrun: rank 0 reports
        return 0
    on = f" on {facts['ranks']} ranks" if facts["ranks"] > 1 else ""
    if args.tiles_only:
        print(f"{facts['parts']}: tiles of {facts['frames']} frames, {facts['seconds_per_frame']:.3f} s per frame "
              f"({facts['chunks_reused']} chunks reused){on}; run again without --tiles_only to write the videos")
        return 0
    written = f"{out} and {args.conference_out}" if args.conference_out else str(out)
    print(f"{written}: {facts['frames']} frames, {facts['seconds_per_frame']:.3f} s per frame "
          f"({facts['chunks_reused']} chunks reused){on}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
