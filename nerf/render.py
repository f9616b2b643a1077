"""Whole frames from the avatar model: every pixel of a person's crop for one frame, in chunks."""

from __future__ import annotations

import torch

from nerf.audio import code_windows
from nerf.data import PersonFrames
from nerf.model import AvatarModel


def frame_batch(p: PersonFrames, frame: int, audio_window: int,
                device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """All S*S rays of one frame of one person, in the layout of ``nerf.data.sample_rays``.

    Per-frame values are broadcast views (no copy per ray), the audio code window included; the
    real colour and label only where the person has a recorded image of that frame. Only the
    frame's own slices move to ``device`` (default: where the person's frames are), so a person
    kept on the CPU renders on a GPU model without copying its whole clip.
    """
    s, dev = p.size, device if device is not None else p.device
    v, u = torch.meshgrid(torch.arange(s, device=dev), torch.arange(s, device=dev), indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    n = s * s
    here = lambda x: x.to(dev, non_blocking=True)  # noqa: E731
    rep = lambda x: here(x)[None].expand(n, *x.shape)  # noqa: E731
    audio = code_windows(p.audio, torch.tensor([frame], device=p.audio.device), audio_window)[0]  # [2 h + 1, 512]
    batch = {"row": torch.full((n,), p.row, device=dev),
             "frame": torch.full((n,), frame, device=dev), "u": u.float(), "v": v.float(),
             "background": here(p.background).reshape(n, 3), "R": rep(p.R[frame]), "t": rep(p.t[frame]),
             "euler": rep(p.euler[frame]), "expr": rep(p.expr[frame]), "audio": rep(audio),
             "speaking": here(p.speaking[frame]).expand(n), "focal": torch.full((n,), p.focal, device=dev)}
    if frame < len(p.images):  # a recorded frame (a driven person has none: render/drive.py)
        batch["rgb"] = here(p.images[frame]).reshape(n, 3).float() / 255.0
        batch["label"] = here(p.labels[frame]).reshape(n).long()
    return batch


@torch.no_grad()
def render_frame(model: AvatarModel, p: PersonFrames, frame: int, chunk: int | None = None) -> dict[str, torch.Tensor]:
    """Render one frame on the model's device: rgb [S, S, 3] in [0, 1], head_acc and torso_acc [S, S].

    Args:
        chunk: rays per model call (default: 4096 on the CPU, 65536 on a GPU).
    """
    dev = model.head_center.device
    chunk = chunk or (4096 if dev.type == "cpu" else 65536)
    batch = frame_batch(p, frame, model.cfg.audio_window, device=dev)
    parts: dict[str, list[torch.Tensor]] = {}
    n = len(batch["u"])
    for a in range(0, n, chunk):
        out = model({k: v[a:a + chunk] for k, v in batch.items()}, jitter=False)
        for k in ("rgb", "head_acc", "torso_acc"):
            parts.setdefault(k, []).append(out[k])
    s = p.size
    return {k: torch.cat(v).reshape(s, s, *v[0].shape[1:]) for k, v in parts.items()}
