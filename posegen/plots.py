"""Pose curves to look at: real pitch against generated samples and baselines, per person."""

from __future__ import annotations

import numpy as np

from data_prep.qa import _figure_grid, _shade, _to_rgb
from posegen.data import Conversation

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")


def pitch_plot(conv: Conversation, curves: dict[str, np.ndarray], start: int = 0, stop: int | None = None,
               title: str = "") -> np.ndarray:
    """An RGB picture [H, W, 3] uint8: one panel per person, pitch in degrees over time (positive: down).

    Args:
        conv: the conversation (real pitch in black, its speaking frames shaded, the held-out part marked).
        curves: name -> poses [K, T, P, 6] (K samples, thin lines of one colour) or [T, P, 6].
        start, stop: the frame range drawn.
    """
    stop = conv.n_frames if stop is None else stop
    t = np.arange(start, stop) / conv.fps
    P = len(conv.persons)
    with _figure_grid(P, 1, 170, sharex=True) as (fig, axes):
        for j, ax in enumerate(axes[:, 0]):
            speaking = np.zeros(conv.n_frames, bool)
            speaking[start:stop] = conv.speaking[start:stop, j]
            _shade(ax, speaking, conv.fps, "gold", 0.3)
            ax.plot(t, np.rad2deg(conv.pose[start:stop, j, 0]), color="black", lw=2.0, label="real")
            for c, (name, poses) in enumerate(curves.items()):
                poses = poses if poses.ndim == 4 else poses[None]
                for k, seq in enumerate(poses):
                    ax.plot(t, np.rad2deg(seq[start:stop, j, 0]), color=COLORS[c % len(COLORS)],
                            lw=1.0, alpha=0.85 if len(poses) == 1 else 0.6,
                            label=f"{name}" + (f" (K={len(poses)})" if len(poses) > 1 else "") if k == 0 else None)
            if start < conv.train_end < stop:
                ax.axvline(conv.train_end / conv.fps, color="grey", ls="--", lw=1)
            ax.set_ylabel(f"{conv.persons[j]}\npitch (deg)")
            ax.grid(alpha=0.3)
        axes[0, 0].legend(loc="upper right", fontsize=9, ncol=min(4, 1 + len(curves)))
        axes[-1, 0].set_xlabel("time (s); shaded: speaking; dashed: start of held-out frames")
        if title:
            fig.suptitle(title)
        return _to_rgb(fig)
