"""Raster figures with NumPy alone: colour panels, bar panels and 5x7 bitmap text.

Used by ``rankseg demo`` so that its figure needs no plotting library; :func:`compose` lays panels
out in rows under one caption each, and the result is written with :func:`rankseg.cli._png.encode_png`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import write_atomic

__all__ = [
    "CHANGED_COLOUR_REMOVED",
    "PALETTE",
    "FigureRow",
    "bars_panel",
    "changed_panel",
    "compose",
    "draw_text",
    "label_panel",
    "probability_panel",
    "resize_nearest",
    "text_width",
]

# Distinct class colours (Trubetskoy's list); class k gets PALETTE[k % 12].
PALETTE = np.array(
    [
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 212),
        (0, 128, 128),
        (220, 190, 255),
    ],
    dtype=np.uint8,
)
CHANGED_COLOUR_REMOVED = (110, 110, 110)  # a foreground pixel RankSEG removes (one-class maps)
TEXT = (235, 235, 235)
BACKGROUND = (24, 24, 24)

_GLYPHS = {
    "A": ".###.|#...#|#...#|#####|#...#|#...#|#...#",
    "B": "####.|#...#|#...#|####.|#...#|#...#|####.",
    "C": ".###.|#...#|#....|#....|#....|#...#|.###.",
    "D": "####.|#...#|#...#|#...#|#...#|#...#|####.",
    "E": "#####|#....|#....|####.|#....|#....|#####",
    "F": "#####|#....|#....|####.|#....|#....|#....",
    "G": ".###.|#...#|#....|#.###|#...#|#...#|.####",
    "H": "#...#|#...#|#...#|#####|#...#|#...#|#...#",
    "I": ".###.|..#..|..#..|..#..|..#..|..#..|.###.",
    "J": "..###|...#.|...#.|...#.|...#.|#..#.|.##..",
    "K": "#...#|#..#.|#.#..|##...|#.#..|#..#.|#...#",
    "L": "#....|#....|#....|#....|#....|#....|#####",
    "M": "#...#|##.##|#.#.#|#.#.#|#...#|#...#|#...#",
    "N": "#...#|#...#|##..#|#.#.#|#..##|#...#|#...#",
    "O": ".###.|#...#|#...#|#...#|#...#|#...#|.###.",
    "P": "####.|#...#|#...#|####.|#....|#....|#....",
    "Q": ".###.|#...#|#...#|#...#|#.#.#|#..#.|.##.#",
    "R": "####.|#...#|#...#|####.|#.#..|#..#.|#...#",
    "S": ".####|#....|#....|.###.|....#|....#|####.",
    "T": "#####|..#..|..#..|..#..|..#..|..#..|..#..",
    "U": "#...#|#...#|#...#|#...#|#...#|#...#|.###.",
    "V": "#...#|#...#|#...#|#...#|#...#|.#.#.|..#..",
    "W": "#...#|#...#|#...#|#.#.#|#.#.#|#.#.#|.#.#.",
    "X": "#...#|#...#|.#.#.|..#..|.#.#.|#...#|#...#",
    "Y": "#...#|#...#|.#.#.|..#..|..#..|..#..|..#..",
    "Z": "#####|....#|...#.|..#..|.#...|#....|#####",
    "0": ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.",
    "1": "..#..|.##..|..#..|..#..|..#..|..#..|.###.",
    "2": ".###.|#...#|....#|...#.|..#..|.#...|#####",
    "3": "#####|...#.|..#..|...#.|....#|#...#|.###.",
    "4": "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.",
    "5": "#####|#....|####.|....#|....#|#...#|.###.",
    "6": "..##.|.#...|#....|####.|#...#|#...#|.###.",
    "7": "#####|....#|...#.|..#..|.#...|.#...|.#...",
    "8": ".###.|#...#|#...#|.###.|#...#|#...#|.###.",
    "9": ".###.|#...#|#...#|.####|....#|...#.|.##..",
    " ": ".....|.....|.....|.....|.....|.....|.....",
    ".": ".....|.....|.....|.....|.....|.##..|.##..",
    ",": ".....|.....|.....|.....|.##..|..#..|.#...",
    ":": ".....|.##..|.##..|.....|.##..|.##..|.....",
    ";": ".....|.##..|.##..|.....|.##..|..#..|.#...",
    "-": ".....|.....|.....|#####|.....|.....|.....",
    "+": ".....|..#..|..#..|#####|..#..|..#..|.....",
    "=": ".....|.....|#####|.....|#####|.....|.....",
    "(": "...#.|..#..|.#...|.#...|.#...|..#..|...#.",
    ")": ".#...|..#..|...#.|...#.|...#.|..#..|.#...",
    "[": ".###.|.#...|.#...|.#...|.#...|.#...|.###.",
    "]": ".###.|...#.|...#.|...#.|...#.|...#.|.###.",
    "/": ".....|....#|...#.|..#..|.#...|#....|.....",
    "%": "##...|##..#|...#.|..#..|.#...|#..##|...##",
    "^": "..#..|.#.#.|#...#|.....|.....|.....|.....",
    "*": ".....|..#..|#.#.#|.###.|#.#.#|..#..|.....",
    ">": ".#...|..#..|...#.|....#|...#.|..#..|.#...",
    "<": "...#.|..#..|.#...|#....|.#...|..#..|...#.",
    "_": ".....|.....|.....|.....|.....|.....|#####",
    "'": "..#..|..#..|.#...|.....|.....|.....|.....",
    "?": ".###.|#...#|....#|...#.|..#..|.....|..#..",
    "!": "..#..|..#..|..#..|..#..|..#..|.....|..#..",
}
FONT = {ch: np.array([[c == "#" for c in row] for row in rows.split("|")]) for ch, rows in _GLYPHS.items()}
GLYPH_W, GLYPH_H, ADVANCE = 5, 7, 6


def text_width(text: str) -> int:
    """Width in pixels of ``text`` drawn by :func:`draw_text`."""
    return max(0, len(text) * ADVANCE - 1)


def draw_text(canvas: np.ndarray, x: int, y: int, text: str, colour: Sequence[int] = TEXT) -> None:
    """Draw ``text`` (upper-cased; unknown characters as ``?``) with its top-left corner at ``(x, y)``.

    Characters falling outside the canvas are clipped.
    """
    height, width = canvas.shape[:2]
    for i, ch in enumerate(text.upper()):
        glyph = FONT.get(ch, FONT["?"])
        x0 = x + i * ADVANCE
        if x0 >= width:
            break
        ys, xs = np.nonzero(glyph)
        keep = (y + ys < height) & (x0 + xs < width) & (y + ys >= 0) & (x0 + xs >= 0)
        canvas[y + ys[keep], x0 + xs[keep]] = colour


def resize_nearest(image: np.ndarray, size: int) -> np.ndarray:
    """A ``(size, size, ...)`` nearest-neighbour resampling of a ``(H, W, ...)`` image."""
    rows = np.arange(size) * image.shape[0] // size
    cols = np.arange(size) * image.shape[1] // size
    return image[rows][:, cols]


def class_colours(classes: int) -> np.ndarray:
    """``(classes, 3)`` uint8 colours."""
    return PALETTE[np.arange(classes) % len(PALETTE)]


def probability_panel(probs: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` probabilities as RGB: the most probable class's colour, dimmed by its probability."""
    top = probs.argmax(axis=0)
    confidence = probs.max(axis=0)
    rgb = class_colours(probs.shape[0])[top].astype(np.float64) * confidence[..., None]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def label_panel(labels: np.ndarray, classes: int) -> np.ndarray:
    """``(H, W)`` class indices as RGB (a value outside the classes is black)."""
    rgb = np.zeros((*labels.shape, 3), np.uint8)
    valid = (labels >= 0) & (labels < classes)
    rgb[valid] = class_colours(classes)[labels[valid]]
    return rgb


def changed_panel(before: np.ndarray, after: np.ndarray, classes: int) -> np.ndarray:
    """Pixels where ``after`` differs from ``before`` in ``after``'s class colour, black elsewhere.

    For one-class masks (``classes == 1``, bool): pixels ``after`` adds in the class colour, pixels
    it removes in grey.
    """
    rgb = np.zeros((*before.shape, 3), np.uint8)
    if classes == 1:
        rgb[after & ~before] = PALETTE[0]
        rgb[before & ~after] = CHANGED_COLOUR_REMOVED
        return rgb
    changed = before != after
    return np.where(changed[..., None], label_panel(after, classes), rgb)


def bars_panel(values: Sequence[tuple[str, float, Sequence[int]]], size: int, bar_area: int) -> np.ndarray:
    """A ``(size, size, 3)`` bar chart: one bar per ``(name, value in [0, 1], colour)``.

    A value ``v`` is a bar ``round(v * bar_area)`` pixels tall standing on a baseline 10 pixels
    above the bottom; its value (3 decimals) is written above it and its name below.
    """
    panel = np.zeros((size, size, 3), np.uint8)
    panel[:] = BACKGROUND
    n = len(values)
    slot = size // max(n, 1)
    bar_w = max(4, slot - 10)
    base = size - 10
    panel[base, :] = (90, 90, 90)
    for i, (name, value, colour) in enumerate(values):
        x0 = i * slot + (slot - bar_w) // 2
        if np.isfinite(value):
            height = round(min(max(value, 0.0), 1.0) * bar_area)
            panel[base - height : base, x0 : x0 + bar_w] = colour
            label = f"{value:.3f}".lstrip("0") if value < 1 else "1.00"
            draw_text(panel, x0 + (bar_w - text_width(label)) // 2, base - height - 9, label, (200, 200, 200))
        short = name[:4]
        draw_text(panel, x0 + (bar_w - text_width(short)) // 2, base + 2, short, (200, 200, 200))
    return panel


@dataclass(frozen=True)
class FigureRow:
    """One row of the figure: a caption over ``(size, size, 3)`` panels."""

    caption: str
    panels: Sequence[np.ndarray]


MARGIN, GAP, LINE = 6, 6, 11


def compose(header: Sequence[str], titles: Sequence[str], rows: Sequence[FigureRow], size: int) -> np.ndarray:
    """Lay out header lines, column titles and rows of panels on a dark canvas; returns RGB uint8.

    Width ``2*MARGIN + n*size + (n-1)*GAP`` for ``n`` panels per row; height
    ``2*MARGIN + (len(header) + 1)*LINE + len(rows)*(LINE + size + GAP) - GAP``.
    """
    n = len(titles)
    width = 2 * MARGIN + n * size + (n - 1) * GAP
    height = 2 * MARGIN + (len(header) + 1) * LINE + len(rows) * (LINE + size + GAP) - GAP
    canvas = np.zeros((height, width, 3), np.uint8)
    canvas[:] = BACKGROUND
    y = MARGIN
    for line in header:
        draw_text(canvas, MARGIN, y + 2, line)
        y += LINE
    for j, title in enumerate(titles):
        draw_text(canvas, MARGIN + j * (size + GAP), y + 2, title)
    y += LINE
    for row in rows:
        draw_text(canvas, MARGIN, y + 2, row.caption, (255, 255, 160))
        y += LINE
        for j, panel in enumerate(row.panels):
            x = MARGIN + j * (size + GAP)
            canvas[y : y + size, x : x + size] = panel
        y += size + GAP
    return canvas


# ------------------------------------------------------------------ evaluate --plot (matplotlib)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_gains(plt, summary, path: Path, force: bool) -> Path:
    base = np.asarray(summary.per_image[summary.baseline], dtype=float)
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    for method in summary.methods:
        if method == summary.baseline:
            continue
        gains = np.sort(np.asarray(summary.per_image[method], dtype=float) - base)[::-1]
        ax.plot(
            np.arange(1, gains.size + 1),
            gains,
            marker="o",
            ms=3,
            label=f"{method} (mean {np.nanmean(gains):+.4f})",
        )
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xlabel("image (sorted by gain)")
    ax.set_ylabel(f"per-image mDice gain over {summary.baseline}")
    ax.set_title(f"RankSEG against {summary.baseline}: {len(base)} image(s)")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    data = buf.getvalue()
    return write_atomic(path, lambda f: f.write(data), force=force)
