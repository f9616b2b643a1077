"""Whole frames from the avatar model: every pixel of a person's crop for one frame, in chunks."""

from __future__ import annotations

import torch

from nerf.audio import code_windows
from nerf.data import PersonFrames
from nerf.model import AvatarModel


def frame_batch(p: PersonFrames, frame: int, audio_window: int) -> dict[str, torch.Tensor]:
    """All S*S rays of one frame of one person, in the layout of ``nerf.data.sample_rays``.

    Per-frame values are broadcast views (no copy per ray), the audio code window included; the
    real colour and label only where the person has a recorded image of that frame.
    """
    s = p.size
    v, u = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    n = s * s
    rep = lambda x: x[None].expand(n, *x.shape)  # noqa: E731
    audio = code_windows(p.audio, torch.tensor([frame]), audio_window)[0]  # [2 audio_window + 1, 512]
    batch = {"row": torch.full((n,), p.row),
             "frame": torch.full((n,), frame), "u": u.float(), "v": v.float(),
             "background": p.background[v, u], "R": rep(p.R[frame]), "t": rep(p.t[frame]),
             "euler": rep(p.euler[frame]), "expr": rep(p.expr[frame]), "audio": rep(audio),
             "speaking": p.speaking[frame].expand(n), "focal": torch.full((n,), p.focal)}
    if frame < len(p.images):  # a recorded frame (a driven person has none: render/drive.py)
        batch["rgb"] = p.images[frame, v, u].float() / 255.0
        batch["label"] = p.labels[frame, v, u].long()
    return batch


@torch.no_grad()
def render_frame(model: AvatarModel, p: PersonFrames, frame: int, chunk: int = 4096) -> dict[str, torch.Tensor]:
    """Render one frame: rgb [S, S, 3] in [0, 1], head_acc and torso_acc [S, S]."""
    batch = frame_batch(p, frame, model.cfg.audio_window)
    parts: dict[str, list[torch.Tensor]] = {}
    n = len(batch["u"])
    for a in range(0, n, chunk):
        out = model({k: v[a:a + chunk] for k, v in batch.items()}, jitter=False)
        for k in ("rgb", "head_acc", "torso_acc"):
            parts.setdefault(k, []).append(out[k])
    s = p.size
    return {k: torch.cat(v).reshape(s, s, *v[0].shape[1:]) for k, v in parts.items()}
