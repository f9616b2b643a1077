"""The fields of the avatar NeRF: a head field in head space, a torso field with a deformation.

A field maps points (already in its hash grid's [0, 1]^3 domain), view directions
and conditioning codes to density and colour; it never samples and never knows
about persons beyond the latent codes it is handed (nerfstudio's layering).

- z_shape joins the position features, so it conditions density and colour;
  z_app joins the direction features, so it conditions colour only.
- The head field is driven by a per-frame code: the audio drive while the person
  speaks (frozen Wav2Lip codes of frames f-4..f+4, projected and smoothed by a temporal
  attention), the expression code while it listens (both of width drive_dim).
- The torso field warps x to x' = x + D(gamma(x), gamma(et), z_shape) first
  (Nerfies-style; D starts at zero), then reads density and colour at x' with gamma(et).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from nerf.encoding import HashEncoding, HashGridConfig


@dataclasses.dataclass
class FieldConfig:
    """Sizes of the fields and encoders (presets in configs/ set them)."""

    head_grid: HashGridConfig = dataclasses.field(default_factory=HashGridConfig)
    """Hash grid of the head field (head space)."""
    torso_grid: HashGridConfig = dataclasses.field(default_factory=HashGridConfig)
    """Hash grid of the torso field (camera space)."""
    hidden: int = 64
    """Width of every MLP."""
    geo_features: int = 15
    """Features passed from the density MLP to the colour MLP."""
    shape_dim: int = 16
    """Length of z_shape."""
    app_dim: int = 16
    """Length of z_app."""
    drive_dim: int = 32
    """Width of the audio and expression drive codes."""
    audio_dim: int = 512
    """Width of the per-frame audio codes (Wav2Lip's audio encoder, ``nerf.audio``)."""
    audio_window: int = 4
    """Frames each side whose audio codes the head field's temporal attention smooths over."""
    expr_dim: int = 32
    """Number of expression coefficients (F_exp) the expression encoder reads."""
    dir_freqs: int = 4
    """Frequencies of the view-direction encoding."""
    pose_freqs: int = 4
    """Frequencies of gamma(et) and of the deformation's gamma(x)."""
    et_freqs: int = 0
    """Frequencies of gamma(et) alone (0: the pose, standardized per person by the model, enters as it is)."""
    hash_backend: str = "auto"
    """Who computes the hash grids: auto (the fused CUDA kernel on a GPU, else PyTorch), torch or cuda."""
    hash_half: bool = False
    """The fused kernel gathers from float16 copies of the tables."""


def freq_encode(x: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """gamma(x) = (x, sin(2^k pi x), cos(2^k pi x)) for k < n_freqs: [..., D] -> [..., D (1 + 2 n_freqs)]."""
    freqs = 2.0 ** torch.arange(n_freqs, dtype=x.dtype, device=x.device) * torch.pi
    angles = (x[..., None] * freqs).flatten(-2)
    return torch.cat([x, torch.sin(angles), torch.cos(angles)], -1)


def mlp(d_in: int, hidden: int, d_out: int, layers: int = 2) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = d_in
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.ReLU(inplace=True)]
        d = hidden
    mods.append(nn.Linear(d, d_out))
    return nn.Sequential(*mods)


def conditioned_linear(layer: nn.Linear, x: torch.Tensor, cond: torch.Tensor, ray: torch.Tensor | None) -> torch.Tensor:
    """``layer(cat([x, cond[ray]], -1))`` without building the per-sample concatenation.

    The inputs of a field's first layers are per sample (position features) and per ray (latent codes,
    drive, view direction, pose): the layer's weight splits by columns, the per-ray part is applied once
    per ray and gathered to the samples. The same parameters as the concatenated form, so checkpoints
    load either way; the result equals it up to float rounding.

    Args:
        layer: Linear over x.shape[-1] + cond.shape[-1] inputs (x's columns first).
        x: [N, Dx] per-sample inputs.
        cond: [R, Dc] per-ray inputs (R = 1 broadcasts to every sample).
        ray: [N] long, the ray of each sample; None when cond's rows already align with x's (or R = 1).
    """
    k = x.shape[-1]
    per_ray = F.linear(cond, layer.weight[:, k:], layer.bias)
    if ray is not None:
        per_ray = per_ray.index_select(0, ray)
    return torch.addmm(per_ray, x, layer.weight[:, :k].t()) if per_ray.shape[0] == x.shape[0] \
        else F.linear(x, layer.weight[:, :k]) + per_ray


def _rest(net: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
    """The layers of an ``mlp`` after its first Linear."""
    for layer in list(net)[1:]:
        h = layer(h)
    return h


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    """exp with its input clamped, in float32 (also under float16 autocast, where e^15 would overflow):
    density stays finite however far the MLP drifts."""
    return torch.exp(x.float().clamp(-15.0, 15.0))


class AudioDrive(nn.Module):
    """The audio codes of frames f-h..f+h [B, 2h+1, 512] -> frame f's audio drive code [B, drive_dim].

    Each frame's (frozen) Wav2Lip code is projected to drive_dim by a small MLP; AD-NeRF's
    AudioAttNet then weighs the window: a 1-D conv stack over time reduces every frame to
    one score, a linear layer over the window mixes the scores, and the softmax weights
    average the projected codes, so one odd frame cannot make the mouth flicker.

    Args (constructor): code_dim, the per-frame code width (512); out_dim, drive_dim; hidden, the
    projection's width; window, h, the frames each side.
    """

    def __init__(self, code_dim: int, out_dim: int, hidden: int, window: int):
        super().__init__()
        self.window = 2 * window + 1
        self.project = mlp(code_dim, hidden, out_dim, layers=1)
        chans = [out_dim, 16, 8, 4, 2, 1]
        convs: list[nn.Module] = []
        for a, b in zip(chans, chans[1:]):
            convs += [nn.Conv1d(a, b, 3, padding=1), nn.LeakyReLU(0.02, inplace=True)]
        self.attention_conv = nn.Sequential(*convs)
        self.attention_mix = nn.Linear(self.window, self.window)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Args: codes [B, W, code_dim], frame f in the middle. Returns: [B, out_dim]."""
        if codes.ndim != 3 or codes.shape[1] != self.window:
            raise ValueError(f"audio code windows must be [B, {self.window}, D], got {tuple(codes.shape)}")
        x = self.project(codes)  # [B, W, out]
        scores = self.attention_conv(x.transpose(1, 2))[:, 0]  # [B, W]
        weights = torch.softmax(self.attention_mix(scores), -1)
        return (weights[..., None] * x).sum(1)


class ExpressionEncoder(nn.Module):
    """F_exp [B, K] -> expression code [B, drive_dim]."""

    def __init__(self, expr_dim: int, out_dim: int, hidden: int):
        super().__init__()
        self.net = mlp(expr_dim, hidden, out_dim, layers=1)

    def forward(self, expr: torch.Tensor) -> torch.Tensor:
        return self.net(expr)


class HeadField(nn.Module):
    """Head-space density and colour conditioned on z_shape, z_app and the driving code."""

    def __init__(self, cfg: FieldConfig):
        super().__init__()
        self.encoding = HashEncoding(cfg.head_grid, cfg.hash_backend, cfg.hash_half)
        self.density = mlp(self.encoding.output_dim + cfg.shape_dim + cfg.drive_dim, cfg.hidden, 1 + cfg.geo_features)
        self.color = mlp(cfg.geo_features + 3 * (1 + 2 * cfg.dir_freqs) + cfg.app_dim, cfg.hidden, 3)
        self.dir_freqs = cfg.dir_freqs

    def forward(self, x01: torch.Tensor, dirs: torch.Tensor, z_shape: torch.Tensor, z_app: torch.Tensor,
                drive: torch.Tensor, ray: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: x01 [N, 3] in [0, 1]^3; per ray: dirs [R, 3] unit, z_shape [R, Ds], z_app [R, Da],
        drive [R, Dd]; ray [N] long, each sample's ray (None: R = N, the rows align, or R = 1).

        Returns: sigma [N], rgb [N, 3] in [0, 1].
        """
        h = _rest(self.density, conditioned_linear(self.density[0], self.encoding(x01), torch.cat([z_shape, drive], -1),
                                                   ray))
        view = torch.cat([freq_encode(dirs, self.dir_freqs), z_app], -1)
        rgb = _rest(self.color, conditioned_linear(self.color[0], h[:, 1:], view, ray))
        return trunc_exp(h[:, 0] - 1.0), torch.sigmoid(rgb)


def _warp_share(offset: torch.Tensor, warp: torch.Tensor | None, ray: torch.Tensor | None) -> torch.Tensor:
    """The warp offsets [N, D] scaled by their rays' shares warp [R] (None: as they are)."""
    if warp is None:
        return offset
    return offset * (warp if ray is None else warp[ray])[:, None].to(offset.dtype)


class TorsoField(nn.Module):
    """Camera-space density and colour of the torso, warped by a pose-conditioned deformation."""

    def __init__(self, cfg: FieldConfig):
        super().__init__()
        self.et_freqs = cfg.et_freqs
        pose_in = 6 * (1 + 2 * self.et_freqs)
        self.pose_freqs, self.dir_freqs = cfg.pose_freqs, cfg.dir_freqs
        self.deform = mlp(3 * (1 + 2 * cfg.pose_freqs) + pose_in + cfg.shape_dim, cfg.hidden, 3)
        nn.init.zeros_(self.deform[-1].weight)  # start as the identity warp
        nn.init.zeros_(self.deform[-1].bias)
        self.encoding = HashEncoding(cfg.torso_grid, cfg.hash_backend, cfg.hash_half)
        self.density = mlp(self.encoding.output_dim + pose_in + cfg.shape_dim, cfg.hidden, 1 + cfg.geo_features)
        self.color = mlp(cfg.geo_features + 3 * (1 + 2 * cfg.dir_freqs) + cfg.app_dim, cfg.hidden, 3)

    def forward(self, x01: torch.Tensor, dirs: torch.Tensor, et: torch.Tensor, z_shape: torch.Tensor,
                z_app: torch.Tensor, ray: torch.Tensor | None = None,
                warp: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args: x01 [N, 3] in [0, 1]^3; per ray: dirs [R, 3] unit, et [R, 6] (Euler angles, translation),
        z_shape, z_app, warp [R] (or None: all 1) the share of the learned warp applied (0: none, a canonical
        torso); ray [N] long, each sample's ray (None: R = N, the rows align, or R = 1).

        Returns: sigma [N], rgb [N, 3], the warp offset [N, 3] as applied (for its regularizer).
        """
        cond = torch.cat([freq_encode(et, self.et_freqs), z_shape], -1)  # per ray: gamma(et), z_shape
        offset = _warp_share(_rest(self.deform, conditioned_linear(self.deform[0], freq_encode(x01, self.pose_freqs),
                                                                   cond, ray)), warp, ray)
        warped = (x01 + offset).clamp(0.0, 1.0)
        h = _rest(self.density, conditioned_linear(self.density[0], self.encoding(warped), cond, ray))
        view = torch.cat([freq_encode(dirs, self.dir_freqs), z_app], -1)
        rgb = _rest(self.color, conditioned_linear(self.color[0], h[:, 1:], view, ray))
        return trunc_exp(h[:, 0] - 1.0), torch.sigmoid(rgb), offset
