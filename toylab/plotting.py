"""One figure style for the lab, and deterministic PNGs.

Figures use the Agg backend and carry no timestamps, so the same results give the
same bytes; a figure function takes saved analysis arrays and never retrains.
"""

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "figure.titlesize": 12,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "image.cmap": "coolwarm",
    "legend.frameon": False,
    "svg.hashsalt": "toylab",
}


def style() -> "matplotlib.rc_context":
    """Context manager applying the lab's matplotlib style."""
    return plt.rc_context(STYLE)


def savefig(fig: "plt.Figure", path: Path) -> Path:
    """Save ``fig`` as a deterministic PNG (no software/date metadata) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
    return path


def save_animation(fig: "plt.Figure", update: "Callable[[int], object]", n_frames: int, path: Path,
                   fps: int = 8) -> Path:
    """Write ``update(0..n_frames-1)`` as a looping GIF with Pillow (plays inline on GitHub and in
    slides; no system dependency) and close the figure.

    Frames are drawn at a modest dpi so an animation stays well under a few megabytes.
    """
    from matplotlib.animation import FuncAnimation, PillowWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    anim = FuncAnimation(fig, update, frames=n_frames, blit=False)
    anim.save(path, writer=PillowWriter(fps=fps), dpi=72)
    plt.close(fig)
    return path
