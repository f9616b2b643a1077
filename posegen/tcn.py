"""A causal temporal convolutional network (Bai, Kolter and Koltun 2018) that also runs frame by frame.

Each residual block holds two dilated causal 1-D convolutions (weight-normalized,
ReLU, dropout) and a 1x1 convolution on the skip path where the width changes;
the dilation doubles per block (1, 2, 4, ...). Output frame t depends on input
frames t - receptive_field + 1 .. t only, so the network can run on a live stream:
``StreamingTCN`` keeps, per convolution, a ring buffer of the last
(kernel_size - 1) * dilation + 1 inputs and returns exactly what the batch
forward returns at that frame (tests/test_posegen.py checks it).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


@dataclasses.dataclass
class TCNConfig:
    """Shape of a TCN."""

    in_dim: int
    out_dim: int
    channels: int = 64
    """Width of every residual block."""
    levels: int = 5
    """Residual blocks; block i has dilation 2^i."""
    kernel_size: int = 3
    dropout: float = 0.1

    @property
    def receptive_field(self) -> int:
        """Frames an output sees, itself included: 1 + 2 (k - 1) (2^levels - 1)."""
        return 1 + 2 * (self.kernel_size - 1) * (2 ** self.levels - 1)


class CausalConv1d(nn.Module):
    """A dilated 1-D convolution padded on the left only: output t sees inputs t - (k - 1) d .. t."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int):
        super().__init__()
        self.conv = weight_norm(nn.Conv1d(c_in, c_out, kernel_size, dilation=dilation))
        self.history = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, T] -> [B, C_out, T]."""
        return self.conv(F.pad(x, (self.history, 0)))


class TemporalBlock(nn.Module):
    """Two causal convolutions with a residual connection."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        self.conv1 = CausalConv1d(c_in, c_out, kernel_size, dilation)
        self.conv2 = CausalConv1d(c_out, c_out, kernel_size, dilation)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(F.relu(self.conv1(x)))
        h = self.dropout(F.relu(self.conv2(h)))
        return F.relu(h + (x if self.skip is None else self.skip(x)))


class TCN(nn.Module):
    """Sequence [B, T, in_dim] -> [B, T, out_dim], causal."""

    def __init__(self, cfg: TCNConfig):
        super().__init__()
        self.cfg = cfg
        dims = [cfg.in_dim] + [cfg.channels] * cfg.levels
        self.blocks = nn.ModuleList(TemporalBlock(dims[i], dims[i + 1], cfg.kernel_size, 2 ** i, cfg.dropout)
                                    for i in range(cfg.levels))
        self.head = nn.Conv1d(cfg.channels, cfg.out_dim, 1)
        nn.init.zeros_(self.head.weight)  # outputs start at zero: the person's mean pose
        nn.init.zeros_(self.head.bias)

    @property
    def receptive_field(self) -> int:
        return self.cfg.receptive_field

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)
        for block in self.blocks:
            h = block(h)
        return self.head(h).transpose(1, 2)


class StreamingTCN:
    """Frame-by-frame inference of a trained TCN: ``step(x_t) -> y_t``, equal to the batch forward.

    The network is used in eval mode (no dropout) and without autograd. Every causal
    convolution keeps a buffer of its last (k - 1) d + 1 input frames, zero at the start
    exactly like the batch forward's left padding.
    """

    def __init__(self, tcn: TCN, batch: int = 1):
        self.tcn = tcn.eval()
        p = next(tcn.parameters())
        self.buffers: dict[int, torch.Tensor] = {}
        for conv in self._convs():
            c_in = conv.conv.in_channels
            self.buffers[id(conv)] = torch.zeros(batch, c_in, conv.history + 1, dtype=p.dtype, device=p.device)

    def _convs(self):
        for block in self.tcn.blocks:
            yield block.conv1
            yield block.conv2

    def _conv_step(self, conv: CausalConv1d, x: torch.Tensor) -> torch.Tensor:
        buf = self.buffers[id(conv)]
        buf = torch.cat([buf[:, :, 1:], x[:, :, None]], 2)
        self.buffers[id(conv)] = buf
        return conv.conv(buf)[:, :, -1]

    @torch.no_grad()
    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One frame: [B, in_dim] -> [B, out_dim]."""
        h = x
        for block in self.tcn.blocks:
            a = F.relu(self._conv_step(block.conv1, h))
            a = F.relu(self._conv_step(block.conv2, a))
            skip = h if block.skip is None else block.skip(h[:, :, None])[:, :, 0]
            h = F.relu(a + skip)
        return self.tcn.head(h[:, :, None])[:, :, 0]
