"""The command line's figures, drawn by matplotlib: the demo figure and ``evaluate --plot`` (with
``--calibration``, a reliability diagram beside it).

Both share one look (:data:`STYLE`, class colours :data:`PALETTE`, method colours
:data:`METHOD_COLOURS`) and are written atomically in the format the file suffix names
(:data:`FIGURE_FORMATS`: PNG, PDF or SVG). Figures are built on :class:`matplotlib.figure.Figure`
directly, never through ``pyplot``, so that calling them from Python leaves matplotlib's global state
(backend, open figures) alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .io import split_suffix, write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "FIGURE_FORMATS",
    "METHOD_COLOURS",
    "PALETTE",
    "DemoRow",
    "demo_figure",
    "figure_format",
    "gains_figure",
    "plot_gains",
    "reliability_axes",
    "save_figure",
]

#: File suffix -> matplotlib output format.
FIGURE_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}
DPI = 100  # pixels per inch of PNG figures
# Distinct class colours (Trubetskoy's list); class k gets PALETTE[k % 12].
PALETTE = (
    "#e6194b",
    "#3cb44b",
    "#ffe119",
    "#0082c8",
    "#f58230",
    "#911eb4",
    "#46f0f0",
    "#f032e6",
    "#d2f53c",
    "#fabed4",
    "#008080",
    "#dcbeff",
)
REMOVED_COLOUR = "#8c8c8c"  # a foreground pixel RankSEG removes (one-class maps)
EMPTY_COLOUR = "#000000"  # no class / unchanged pixel
PROBABILITY_CMAP = "magma"
#: The baseline (argmax / threshold) first, then the RankSEG solvers in the order shown.
METHOD_COLOURS = ("#9e9e9e", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
#: Reliability diagram: the raw and the calibrated probabilities (the colours of "RMA" and
#: "RMA (calibrated)" in the gains plot beside it).
PROBABILITY_COLOURS = {"raw": METHOD_COLOURS[1], "calibrated": METHOD_COLOURS[2]}
STYLE = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 12,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "rankseg",  # the same SVG ids on every run
}


def figure_format(path: os.PathLike | str) -> str:
    """The matplotlib format for ``path``'s suffix; ``ValueError`` for any other suffix.

    >>> figure_format("fig.PDF"), figure_format("out/demo.png")
    ('pdf', 'png')
    """
    suffix = split_suffix(path)[1]
    if suffix not in FIGURE_FORMATS:
        raise ValueError(
            f"{path}: unsupported figure format {suffix or '(no suffix)'!r}; "
            f"expected a file name ending in {', '.join(FIGURE_FORMATS)}"
        )
    return FIGURE_FORMATS[suffix]


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_figure(fig: Figure, path: os.PathLike | str, force: bool = False) -> Path:
    """Write ``fig`` to ``path`` atomically, in the format its suffix names (see :func:`figure_format`).

    PNG figures are ``figsize * DPI`` pixels. Without ``force`` an existing file is left alone
    (:class:`rankseg.cli.io.OutputExistsError`).
    """
    import matplotlib

    fmt = figure_format(path)
    with matplotlib.rc_context(STYLE):
        return write_atomic(path, lambda f: fig.savefig(f, format=fmt, dpi=DPI), force=force)


# ------------------------------------------------------------------------------ the demo figure


@dataclass(frozen=True)
class DemoRow:
    """One row of the demo figure: an image (or a volume's slice), its masks and per-method Dice.

    ``probs`` is ``(classes, H, W)``; ``baseline`` and ``rankseg`` are ``(H, W)`` class indices
    (``classes > 1``) or ``(H, W)`` bool foreground masks (``classes == 1``); ``dice`` holds
    ``(method, Dice of this image)`` with the baseline first.
    """

    label: str
    probs: np.ndarray
    baseline: np.ndarray
    rankseg: np.ndarray
    dice: Sequence[tuple[str, float]]


def _class_rgb(classes: int) -> np.ndarray:
    from matplotlib.colors import to_rgb

    return np.array([to_rgb(PALETTE[k % len(PALETTE)]) for k in range(classes)])


def _label_rgb(labels: np.ndarray, classes: int) -> np.ndarray:
    """``(H, W, 3)`` floats: each pixel in its class colour; no class (or background of a one-class
    mask) black."""
    rgb = np.zeros((*labels.shape, 3))
    if labels.dtype == bool:
        rgb[labels] = _class_rgb(1)[0]
        return rgb
    valid = (labels >= 0) & (labels < classes)
    rgb[valid] = _class_rgb(classes)[labels[valid]]
    return rgb


def _changed_rgb(before: np.ndarray, after: np.ndarray, classes: int) -> np.ndarray:
    """Pixels where ``after`` differs from ``before`` in ``after``'s colour (one class: removed
    pixels grey), black elsewhere."""
    from matplotlib.colors import to_rgb

    if before.dtype == bool:
        rgb = np.zeros((*before.shape, 3))
        rgb[after & ~before] = _class_rgb(1)[0]
        rgb[before & ~after] = to_rgb(REMOVED_COLOUR)
        return rgb
    return np.where((before != after)[..., None], _label_rgb(after, classes), 0.0)


def _image_axes(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def demo_figure(rows: Sequence[DemoRow], solver: str, classes: int, title: str) -> Figure:
    """The demo figure: one row per :class:`DemoRow`, five titled panels per row.

    Panels: the probability of the most likely class (one class: the foreground probability) on
    one colour scale with a colour bar; the baseline's mask and RankSEG's (``solver``) in the class
    colours; the pixels RankSEG changes; and a bar per method with its Dice on that image. A legend
    gives the colour of each class id (``classes``) and of removed pixels.
    """
    import matplotlib
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    titles = (
        "probabilities",
        "argmax / threshold",
        f"RankSEG ({solver})",
        "changed pixels",
        "Dice per image",
    )
    norm = Normalize(0.0, 1.0)
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(13.0, 2.3 * len(rows) + 1.2)
        axes = fig.subplots(len(rows), len(titles), squeeze=False)
        image = None
        for r, row in enumerate(rows):
            one_class = row.probs.shape[0] == 1
            confidence = row.probs[0] if one_class else row.probs.max(axis=0)
            panels = (
                _label_rgb(row.baseline, row.probs.shape[0]),
                _label_rgb(row.rankseg, row.probs.shape[0]),
                _changed_rgb(row.baseline, row.rankseg, row.probs.shape[0]),
            )
            image = axes[r, 0].imshow(confidence, cmap=PROBABILITY_CMAP, norm=norm, interpolation="nearest")
            for c, rgb in enumerate(panels, start=1):
                axes[r, c].imshow(rgb, interpolation="nearest")
            for c in range(4):
                _image_axes(axes[r, c])
                if r == 0:
                    axes[r, c].set_title(titles[c])
            axes[r, 0].set_ylabel(row.label)
            _dice_bars(axes[r, 4], row.dice)
            if r == 0:
                axes[r, 4].set_title(titles[4])
        fig.colorbar(
            image,
            ax=axes[:, 0].tolist(),
            location="left",
            shrink=0.5,
            label="probability (most likely class; one class: foreground)",
        )
        legend = [Patch(facecolor=PALETTE[k % len(PALETTE)], label=f"class {k}") for k in range(classes)]
        legend.append(Patch(facecolor=REMOVED_COLOUR, label="removed by RankSEG (one class)"))
        legend.append(Patch(facecolor=EMPTY_COLOUR, label="no class / unchanged"))
        fig.legend(handles=legend, loc="outside lower center", ncols=len(legend), frameon=False)
        fig.suptitle(title)
    return fig


def _dice_bars(ax: Any, dice: Sequence[tuple[str, float]]) -> None:
    names = [name for name, _ in dice]
    values = np.array([value for _, value in dice], dtype=float)
    colours = [METHOD_COLOURS[i % len(METHOD_COLOURS)] for i in range(len(dice))]
    bars = ax.bar(names, np.nan_to_num(values), color=colours, width=0.7)
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], padding=2, fontsize=9)
    ax.set_ylim(0.0, 1.15)
    ax.set_yticks([0.0, 0.5, 1.0])


# ------------------------------------------------------------------------------ evaluate --plot


def gains_figure(summary: Any, reliability: Any = None) -> Figure:
    """Per-image Dice gain of every RankSEG solver over the baseline, sorted, one line per solver.

    ``summary`` is a :class:`rankseg.cli.evaluate.Summary`. The figure is 800 x 400 pixels as PNG.
    With ``reliability`` (a :class:`rankseg.cli.evaluate.Reliability`: ``evaluate --calibration``)
    a reliability diagram of the raw and calibrated probabilities is drawn on the right
    (:func:`reliability_axes`), and the figure is 1300 x 450 pixels.
    """
    import matplotlib

    base = np.asarray(summary.per_image[summary.baseline], dtype=float)
    with matplotlib.rc_context(STYLE):
        if reliability is None:
            fig = _new_figure(8.0, 4.0)
            ax = fig.subplots()
        else:
            fig = _new_figure(13.0, 4.5)
            axes = fig.subplot_mosaic(
                [["gains", "reliability"], ["gains", "share"]],
                width_ratios=[8.0, 4.5],
                height_ratios=[3.0, 1.0],
            )
            ax = axes["gains"]
            reliability_axes(axes["reliability"], axes["share"], reliability)
        for i, method in enumerate(summary.methods):
            if method == summary.baseline:
                continue
            gains = np.sort(np.asarray(summary.per_image[method], dtype=float) - base)[::-1]
            ax.plot(
                np.arange(1, gains.size + 1),
                gains,
                marker="o",
                ms=3,
                color=METHOD_COLOURS[i % len(METHOD_COLOURS)],
                label=f"{method} (mean {np.nanmean(gains):+.4f})",
            )
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xlabel("image (sorted by gain)")
        ax.set_ylabel(f"per-image mDice gain over {summary.baseline}")
        ax.set_title(f"RankSEG against {summary.baseline}: {len(base)} image(s)")
        ax.legend()
    return fig


def plot_gains(summary: Any, path: os.PathLike | str, force: bool = False, reliability: Any = None) -> Path:
    """Write :func:`gains_figure` to ``path`` (PNG, PDF or SVG by its suffix); returns the path."""
    return save_figure(gains_figure(summary, reliability), path, force=force)


def _pooled(result: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin ``(counts, confidence, accuracy)`` of a calibration error, per-class bins pooled
    over the classes (count-weighted means); NaN where a bin is empty."""
    counts = np.asarray(result.counts, dtype=float)
    confidence = np.nan_to_num(np.asarray(result.confidence, dtype=float)) * counts
    accuracy = np.nan_to_num(np.asarray(result.accuracy, dtype=float)) * counts
    if counts.ndim == 2:
        counts, confidence, accuracy = counts.sum(0), confidence.sum(0), accuracy.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts, confidence / counts, accuracy / counts


def reliability_axes(ax: Any, share_ax: Any, reliability: Any) -> None:
    """A reliability diagram on ``ax``: observed accuracy against mean confidence per bin for the
    raw and the calibrated probabilities, with the diagonal of perfect calibration; below it, on
    ``share_ax``, the share of pixels in each confidence bin.

    ``reliability`` is a :class:`rankseg.cli.evaluate.Reliability`; per-class (multilabel) results
    are pooled over the classes.
    """
    edges = np.asarray(reliability.raw.bin_edges, dtype=float)
    centres = (edges[:-1] + edges[1:]) / 2
    width = (edges[1] - edges[0]) / 2.4
    ax.plot([0.0, 1.0], [0.0, 1.0], ls="--", color="black", lw=0.8, label="perfectly calibrated")
    for offset, which in ((-0.5, "raw"), (0.5, "calibrated")):
        counts, confidence, accuracy = _pooled(getattr(reliability, which))
        filled = counts > 0
        colour = PROBABILITY_COLOURS[which]
        ax.plot(
            confidence[filled],
            accuracy[filled],
            marker="o",
            ms=3,
            color=colour,
            label=f"{which} (ECE {reliability.ece(which):.4f})",
        )
        share = counts / max(counts.sum(), 1.0)
        share_ax.bar(centres + offset * width, share, width=width, color=colour)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("accuracy" if not reliability.per_class else "fraction positive")
    ax.set_title(f"reliability: {reliability.describe()}")
    ax.legend(loc="best")
    ax.tick_params(labelbottom=False)
    share_ax.set_xlim(0.0, 1.0)
    share_ax.set_xlabel("confidence (mean per bin)" if not reliability.per_class else "probability")
    share_ax.set_ylabel("share of pixels")
