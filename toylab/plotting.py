"""One figure style for the lab, and deterministic PNGs.

Figures use the Agg backend and carry no timestamps, so the same results give the
same bytes; a figure function takes saved analysis arrays and never retrains.
"""

from collections.abc import Callable, Iterable
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


def save_animation(fig: "plt.Figure", update: "Callable[[int], Iterable[object]]", n_frames: int, path: Path,
                   fps: int = 8, dpi: int = 72) -> Path:
    """Write frames ``update(0..n_frames-1)`` as a looping GIF (plays inline on GitHub and in slides) and
    close the figure.

    ``update(i)`` changes the moving artists for frame i and returns them. Everything else (axes, ticks,
    labels) is drawn once and reused (blitting), so a frame costs only its moving artists. Pillow, which
    matplotlib already depends on, writes the GIF; the same arrays give the same bytes.
    """
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.set_dpi(dpi)
    moving = list(update(0))
    for a in moving:
        a.set_animated(True)
    fig.canvas.draw()  # the static parts only: animated artists are skipped
    background = fig.canvas.copy_from_bbox(fig.bbox)
    frames = []
    for i in range(n_frames):
        fig.canvas.restore_region(background)
        for a in update(i):
            fig.draw_artist(a)
        rgb = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
        frames.append(rgb.quantize(colors=128, dither=Image.Dither.NONE))
    plt.close(fig)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)
    return path
