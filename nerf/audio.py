"""The audio code of a video frame: Wav2Lip's audio encoder over the frame's mel window.

The encoder is the audio half of Wav2Lip (Prajwal et al. 2020; ``audio_encoder`` in
models/wav2lip.py of Rudrabha/Wav2Lip) with its parameter names, so the public
checkpoints (wav2lip.pth, wav2lip_gan.pth) load as they are: 13 blocks of conv ->
batch norm (-> + input) -> ReLU take a [B, 1, 80, 16] mel window (80 bins x 16 mel
frames = 200 ms, values in [-4, 4], ``data_prep.audio_features``) to [B, 512, 1, 1].

Nothing is downloaded: without such a checkpoint the encoder is pre-trained on the
user's own conversation (``nerf.audio_pretrain``). The avatar NeRF uses it frozen and codes
every frame once (``frame_codes``); a ray then carries the codes of frames f-4..f+4
(``code_windows``), which the head field's ``nerf.fields.AudioDrive`` smooths over time.

Batch norm normalizes within a voice: before an audio track is coded, the encoder's batch-norm
statistics are re-estimated on that track's own windows (``adapted_to``), as the pre-training
normalized each speaker's windows apart. Held out one identity at a time on the dev set, this
raised the mouth-opening correlation on 10 of 14 clips (median 0.480 -> 0.495, mean 0.389 -> 0.443;
docs/PERFORMANCE.md, "Audio").
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.errors import TrainError
from data_prep.audio_features import MEL_WINDOW

AUDIO_CODE_DIM = 512
N_MELS = 80

# Wav2Lip's audio_encoder, block for block: (in, out, kernel, stride, padding, residual).
# The feature map goes 80 x 16 -> 27 x 16 -> 9 x 6 -> 3 x 3 -> 1 x 1.
WAV2LIP_AUDIO_BLOCKS = (
    (1, 32, 3, 1, 1, False), (32, 32, 3, 1, 1, True), (32, 32, 3, 1, 1, True),
    (32, 64, 3, (3, 1), 1, False), (64, 64, 3, 1, 1, True), (64, 64, 3, 1, 1, True),
    (64, 128, 3, 3, 1, False), (128, 128, 3, 1, 1, True), (128, 128, 3, 1, 1, True),
    (128, 256, 3, (3, 2), 1, False), (256, 256, 3, 1, 1, True),
    (256, 512, 3, 1, 0, False), (512, 512, 1, 1, 0, False),
)
SHIPPED_ENCODER = Path(__file__).resolve().parent / "weights" / "audio_prior.pt"
"""The universal encoder shipped with the project (rebuilt by the command in configs/audio_prior.txt)."""
STATE_PREFIX = "audio_encoder."  # the encoder's keys in a Wav2Lip state_dict (after any "module.")
ADAPT_MIN_WINDOWS = 50
"""Fewer windows than this (2 s at 25 fps) are coded on the stored statistics: too few to estimate a voice's."""
HEAD_PREFIX = "mouth_open_head."
"""Pre-training's mouth-opening head beside the encoder (nerf.audio_eval scores with it; Wav2Lip's loaders skip it)."""


class ConvBlock(nn.Module):
    """Wav2Lip's ``Conv2d``: conv -> batch norm, plus the input when residual, -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int | tuple[int, int], padding: int, residual: bool):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        return torch.relu(out + x if self.residual else out)


class Wav2LipAudioEncoder(nn.Module):
    """A frame's mel window [B, 80, 16] -> its audio code [B, 512] (non-negative: the last block ends in ReLU).

    ``state_dict()`` keys are Wav2Lip's (``audio_encoder.0.conv_block.0.weight``, ...).
    """

    def __init__(self):
        super().__init__()
        self.audio_encoder = nn.Sequential(*(ConvBlock(*spec) for spec in WAV2LIP_AUDIO_BLOCKS))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.ndim != 3 or mel.shape[1:] != (N_MELS, MEL_WINDOW):
            raise ValueError(f"mel windows must be [B, {N_MELS}, {MEL_WINDOW}], got {tuple(mel.shape)}")
        return self.audio_encoder(mel[:, None]).flatten(1)


def freeze(encoder: Wav2LipAudioEncoder) -> Wav2LipAudioEncoder:
    """No gradients, eval mode (batch norm on running statistics); returns the encoder."""
    encoder.requires_grad_(False)
    return encoder.eval()


def encoder_from_state(state: dict[str, torch.Tensor], source: str) -> Wav2LipAudioEncoder:
    """A frozen encoder from a Wav2Lip-layout state dict; other keys (face encoder, decoder) are ignored.

    Args:
        state: keys ``[module.]audio_encoder.<block>.conv_block.<0|1>.<name>`` and any others.
        source: where the state came from, for error messages.

    Raises:
        TrainError: the state lacks the audio encoder or holds one of another shape.
    """
    ours = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    ours = {k: v for k, v in ours.items() if k.startswith(STATE_PREFIX)}
    encoder = Wav2LipAudioEncoder()
    if not ours:
        raise TrainError(f"{source} holds no Wav2Lip audio encoder (no '{STATE_PREFIX}*' weights); pass a "
                         "wav2lip.pth / wav2lip_gan.pth or a checkpoint written by scripts/pretrain_audio.py")
    expected = encoder.state_dict()
    # Batch norm's step counter is absent from checkpoints of old PyTorch and unused in eval mode.
    missing = [k for k in expected if k not in ours and not k.endswith("num_batches_tracked")]
    foreign = [k for k, v in ours.items() if k not in expected or v.shape != expected[k].shape]
    if missing or foreign:
        first = foreign[0] if foreign else missing[0]
        raise TrainError(f"{source} holds an audio encoder of another architecture ({len(missing)} weights missing, "
                         f"{len(foreign)} unknown or of another shape, e.g. {first}); it is not Wav2Lip's")
    encoder.load_state_dict(ours, strict=False)
    return freeze(encoder)


def read_encoder_state(path: str | Path) -> dict:
    """The state dict of an audio encoder file (a Wav2Lip checkpoint or one of scripts/pretrain_audio.py), loaded as
    weights only: no code in the file runs.

    Raises:
        TrainError: missing or unreadable file, or no state dict in it.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"audio encoder checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file
        why = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise TrainError(f"cannot read audio encoder checkpoint {path}: {why}") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise TrainError(f"{path} holds no state_dict; pass a wav2lip.pth / wav2lip_gan.pth or a checkpoint "
                         "written by scripts/pretrain_audio.py")
    return state


def load_audio_encoder(path: str | Path) -> Wav2LipAudioEncoder:
    """A frozen encoder from a checkpoint in Wav2Lip's layout.

    Reads the public wav2lip.pth / wav2lip_gan.pth (``{"state_dict": {"module.audio_encoder...": ...}}``,
    with or without the ``module.`` prefix) and the checkpoints of scripts/pretrain_audio.py
    (same layout).

    Raises:
        TrainError: missing or unreadable file, or no audio encoder in it.
    """
    return encoder_from_state(read_encoder_state(path), str(path))


@contextlib.contextmanager
def adapted_to(encoder: nn.Module, mel: torch.Tensor, chunk: int = 256):
    """The encoder with its batch-norm statistics those of ``mel`` [T, 80, 16] (one voice's, or one audio track's
    windows) inside the block, its own again after; unchanged for fewer than ``ADAPT_MIN_WINDOWS`` windows."""
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if len(mel) < ADAPT_MIN_WINDOWS or not norms:
        yield encoder
        return
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum) for m in norms]
    was_training = encoder.training
    device = next(encoder.parameters()).device
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a plain average over the chunks
        encoder.train()
        with torch.no_grad():
            for part in np.array_split(np.arange(len(mel)), -(-len(mel) // chunk)):  # no chunk of one window
                encoder(mel[torch.from_numpy(part)].to(device))
        encoder.eval()
        yield encoder
    finally:
        for m, (mean, var, n, momentum) in zip(norms, saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(n)
            m.momentum = momentum
        encoder.train(was_training)


@torch.no_grad()
def frame_codes(encoder: Wav2LipAudioEncoder, mel: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Every frame's audio code, the encoder's batch norm on the statistics of these windows (``adapted_to``).

    Args:
        mel: [T, 80, 16] the frames' mel windows (``data_prep.audio_features.mel_windows``), one audio track.

    Returns:
        [T, 512] float32 on the CPU.
    """
    was_training = encoder.training
    device = next(encoder.parameters()).device
    with adapted_to(encoder, mel, chunk):
        encoder.eval()
        codes = torch.cat([encoder(mel[a:a + chunk].to(device)).cpu() for a in range(0, len(mel), chunk)])
    encoder.train(was_training)
    return codes


def code_windows(codes: torch.Tensor, frames: torch.Tensor, half: int) -> torch.Tensor:
    """The codes of frames f - half .. f + half for each f, clamped at the clip's ends.

    Args:
        codes: [T, D] per-frame codes.
        frames: [N] long frame indices.
        half: frames each side.

    Returns:
        [N, 2 half + 1, D].
    """
    offsets = torch.arange(-half, half + 1, device=frames.device)
    return codes[(frames[:, None] + offsets).clamp(0, len(codes) - 1)]
