"""``rankseg demo``: argmax against RankSEG on built-in, calibrated example data, with a figure.

The data are generated deterministically (:func:`demo_cases`): a few 2-D images and one 3-D
volume of network-like softmax maps with several classes (:func:`rankseg.data.synthetic_probs`),
and the one-class map of example 1 of Dai & Li (JMLR 2023, design note section 7),
``p_(i,k) = beta^-(i+k)`` on a ``w x w`` grid. Labels are drawn from the probabilities
(:func:`rankseg.data.sample_labels`), so the maps are calibrated and RankSEG's expected-metric
optimality applies exactly.

For every method (the argmax / 0.5-threshold baseline and each solver of :data:`SOLVERS`) the demo
reports the expected Dice and IoU under the probabilities (:func:`rankseg.metrics.expected_dice`,
:func:`rankseg.metrics.expected_iou`), the realised mDice^I / mIoU^I against the drawn labels,
and the time; it writes a figure of the masks (:func:`rankseg.cli.figures.demo_figure`: PNG, PDF or
SVG by the file suffix).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import metrics
from .._predictor import RankSEG
from ..data import sample_labels, synthetic_probs
from ._common import Reporter
from .figures import DPI, DemoRow, demo_figure, figure_format, save_figure
from .io import InputError, write_atomic

__all__ = [
    "SOLVERS",
    "DemoCase",
    "MethodResult",
    "demo_cases",
    "jmlr_example1",
    "run_case",
    "run_demo",
    "save_cases",
    "with_background",
]

#: RankSEG solvers the demo compares with the baseline, in the order they are shown.
SOLVERS = ("RMA", "exact")
DEFAULT_NAME = "rankseg-demo"
BACKGROUND_WEIGHT = 10.0  # class 0 covers about half of the pixels


@dataclass(frozen=True)
class DemoCase:
    """One example data set: probabilities, labels drawn from them, and the output mode."""

    name: str
    slug: str  # file names of the saved data: slug.npy, or slug-1.npy, slug-2.npy, ... for a batch
    probs: Tensor  # (batch, classes, *spatial)
    labels: Tensor  # multiclass: int64 (batch, *spatial); multilabel: bool (batch, classes, *spatial)
    output_mode: str


def jmlr_example1(width: int = 64, beta: float = 1.05) -> Tensor:
    """Example 1 of Dai & Li (JMLR 2023): ``p_(i,k) = beta^-(i+k)``, ``i, k = 0..width-1``.

    Returns float64 probabilities of shape ``(1, 1, width, width)``.

    >>> p = jmlr_example1(4, 2.0)
    >>> p[0, 0, 0].tolist(), p[0, 0, 3, 3].item()
    ([1.0, 0.5, 0.25, 0.125], 0.015625)
    """
    index = torch.arange(width, dtype=torch.float64)
    return (beta ** -(index[:, None] + index[None, :]))[None, None]


def with_background(probs: Tensor, weight: float) -> Tensor:
    """Softmax maps whose class 0 is a dominant background: its logits raised by ``log(weight)``.

    ``softmax(z + log w e_0) = p * w e_0 / sum(p * w e_0)``, so the result is again a softmax map.

    >>> p = torch.tensor([[[0.5], [0.5]]])
    >>> with_background(p, 3.0)[0, :, 0].tolist()
    [0.75, 0.25]
    """
    weights = torch.ones(probs.shape[1], dtype=probs.dtype)
    weights[0] = weight
    scaled = probs * weights.reshape(1, -1, *([1] * (probs.dim() - 2)))
    return scaled / scaled.sum(dim=1, keepdim=True)


def demo_cases(seed: int = 0) -> tuple[DemoCase, ...]:
    """The demo's data: 4 images ``(5, 128, 128)``, a volume ``(5, 48, 48, 48)``, the JMLR map (w=64).

    The images and the volume are :func:`rankseg.data.synthetic_probs` maps with a background
    class (class 0, about half of the pixels; :func:`with_background`), as in most segmentation
    data. Deterministic in ``seed``.

    >>> [tuple(case.probs.shape) for case in demo_cases()]
    [(4, 5, 128, 128), (1, 5, 48, 48, 48), (1, 1, 64, 64)]
    """
    images = with_background(synthetic_probs(4, 5, (128, 128), seed=seed, scale=3.0), BACKGROUND_WEIGHT)
    volume = with_background(
        synthetic_probs(1, 5, (48, 48, 48), seed=seed + 1, scale=3.0, stride=4), BACKGROUND_WEIGHT
    )
    jmlr = jmlr_example1(64, 1.05)
    return (
        DemoCase(
            "4 images, 5 classes, 128x128",
            "image",
            images,
            sample_labels(images, seed=seed + 10),
            "multiclass",
        ),
        DemoCase(
            "1 volume, 5 classes, 48x48x48",
            "volume",
            volume,
            sample_labels(volume, seed=seed + 11),
            "multiclass",
        ),
        DemoCase(
            "JMLR example 1, w=64, beta=1.05",
            "jmlr-example1",
            jmlr,
            sample_labels(jmlr, seed=seed + 12, output_mode="multilabel"),
            "multilabel",
        ),
    )


@dataclass(frozen=True)
class MethodResult:
    """One method on one case: its prediction, expected and realised metrics, and time."""

    name: str
    preds: Tensor  # as returned: labels (multiclass) or masks (multilabel)
    seconds: float
    expected_dice: float  # mean over images and classes of E[Dice] under the probabilities
    expected_iou: float
    dice: float  # realised mDice^I against the labels
    iou: float  # realised mIoU^I
    per_image_dice: list[float]


def _masks(preds: Tensor, classes: int, multiclass: bool) -> Tensor:
    """Bool masks ``(batch, classes, *spatial)`` of a prediction."""
    if not multiclass:
        return preds
    return F.one_hot(preds, classes).movedim(-1, 1).bool()


def _baseline(probs: Tensor, multiclass: bool) -> Tensor:
    return probs.argmax(dim=1) if multiclass else probs > 0.5


def run_case(case: DemoCase, solvers: tuple[str, ...] = SOLVERS) -> list[MethodResult]:
    """The baseline (argmax, or a 0.5 threshold for one-class maps) and every solver on ``case``."""
    multiclass = case.output_mode == "multiclass"
    classes = case.probs.shape[1]
    baseline = partial(_baseline, multiclass=multiclass)
    methods: list[tuple[str, Callable[[Tensor], Tensor]]] = [
        ("argmax" if multiclass else "threshold", baseline)
    ]
    methods += [
        (solver, RankSEG(metric="dice", solver=solver, output_mode=case.output_mode)) for solver in solvers
    ]
    input_format = "index" if multiclass else "mask"
    corner = case.probs[(slice(0, 1), slice(None)) + (slice(0, 8),) * (case.probs.dim() - 2)]
    results = []
    for name, predict in methods:
        predict(corner)  # a first call pays one-off set-up costs: keep them out of the time
        start = time.perf_counter()
        preds = predict(case.probs)
        seconds = time.perf_counter() - start
        masks = _masks(preds, classes, multiclass)
        results.append(
            MethodResult(
                name=name,
                preds=preds,
                seconds=seconds,
                expected_dice=float(metrics.expected_dice(case.probs, masks).mean()),
                expected_iou=float(metrics.expected_iou(case.probs, masks).mean()),
                dice=float(metrics.dice_score(preds, case.labels, classes, input_format=input_format)),
                iou=float(metrics.iou_score(preds, case.labels, classes, input_format=input_format)),
                per_image_dice=metrics.dice_score(
                    preds, case.labels, classes, input_format=input_format, reduction="none"
                ).tolist(),
            )
        )
    return results


def _default_figure_path() -> Path:
    path = Path.cwd() / f"{DEFAULT_NAME}.png"
    n = 1
    while path.exists():
        path = Path.cwd() / f"{DEFAULT_NAME}-{n}.png"
        n += 1
    return path


def _table(cases: tuple[DemoCase, ...], results: list[list[MethodResult]]) -> str:
    rows = [["data", "method", "E[Dice]", "E[IoU]", "Dice^I", "IoU^I", "time ms"]]
    for case, case_results in zip(cases, results, strict=True):
        for i, r in enumerate(case_results):
            rows.append(
                [
                    case.name if i == 0 else "",
                    r.name,
                    f"{r.expected_dice:.4f}",
                    f"{r.expected_iou:.4f}",
                    f"{r.dice:.4f}",
                    f"{r.iou:.4f}",
                    f"{r.seconds * 1e3:.1f}",
                ]
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        left = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        lines.append(
            "  ".join(left + [c.rjust(w) for c, w in zip(row[2:], widths[2:], strict=True)]).rstrip()
        )
    return "\n".join(lines)


def figure_rows(cases: tuple[DemoCase, ...], results: list[list[MethodResult]]) -> list[DemoRow]:
    """The figure's rows: each 2-D image, the volume's middle slice and the JMLR map, with the
    baseline's and the first solver's masks and every method's Dice on that image."""
    rows = []
    for case, case_results in zip(cases, results, strict=True):
        probs = case.probs.double().numpy()
        multiclass = case.output_mode == "multiclass"
        base, rank = case_results[0].preds.numpy(), case_results[1].preds.numpy()
        for b in range(probs.shape[0]):
            p, pb, pr = probs[b], base[b], rank[b]
            if not multiclass:  # (1, *spatial) masks of the one class
                pb, pr = pb[0], pr[0]
            where = ""
            if p.ndim == 4:  # a volume: its middle slice along the first spatial axis
                mid = p.shape[1] // 2
                p, pb, pr = p[:, mid], pb[mid], pr[mid]
                where = f", slice {mid} of {probs.shape[2]}"
            short = case.name.split(",")[0]
            label = f"{short}{where}" if probs.shape[0] == 1 else f"image {b + 1} of {probs.shape[0]}"
            dice = [(r.name, r.per_image_dice[b]) for r in case_results]
            rows.append(DemoRow(label, p, pb, pr, dice))
    return rows


def _figure(cases: tuple[DemoCase, ...], results: list[list[MethodResult]]):
    classes = max(case.probs.shape[1] for case in cases)
    return demo_figure(
        figure_rows(cases, results),
        solver=results[0][1].name,
        classes=classes,
        title="rankseg demo: argmax (0.5 threshold for one class) against RankSEG, "
        "labels drawn from the probabilities",
    )


def save_cases(cases: tuple[DemoCase, ...], folder: Path, force: bool = False) -> list[Path]:
    """Save the cases as ``.npy`` files for ``rankseg evaluate``: ``multiclass/{probs,labels}`` (the
    images and the volume, one file per image) and ``one-class/{probs,labels}`` (the JMLR map)."""
    written = []
    for case in cases:
        group = "multiclass" if case.output_mode == "multiclass" else "one-class"
        for sub in ("probs", "labels"):
            (folder / group / sub).mkdir(parents=True, exist_ok=True)
        for b in range(case.probs.shape[0]):
            name = f"{case.slug}-{b + 1}" if case.probs.shape[0] > 1 else case.slug
            for sub, array in (("probs", case.probs[b].numpy()), ("labels", case.labels[b].numpy())):
                path = folder / group / sub / f"{name}.npy"
                written.append(
                    write_atomic(path, lambda f, a=array: np.save(f, a, allow_pickle=False), force=force)
                )
    return written


def run_demo(
    out: os.PathLike | str | None = None,
    force: bool = False,
    save_data: os.PathLike | str | None = None,
    stream: TextIO | None = None,
) -> Path:
    """Run the demo, print its table to ``stream`` (stdout) and write the figure; returns its path.

    ``out``: the figure's path, ``.png``, ``.pdf`` or ``.svg`` (default ``rankseg-demo.png`` in the
    current folder, numbered when that exists). Raises ``ValueError`` for another suffix and
    :class:`rankseg.cli.io.InputError` when ``out`` exists and ``force`` is False.
    """
    stream = stream or sys.stdout
    path = Path(out) if out is not None else _default_figure_path()
    fmt = figure_format(path)
    if path.exists() and not force:
        raise InputError(path, "exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        raise InputError(path, f"cannot be written: the folder {path.parent} does not exist")
    cases = demo_cases()
    print(
        "rankseg demo: argmax (or a 0.5 threshold) against RankSEG on calibrated example data\n"
        "(labels are drawn from the probabilities, so the expected metrics are what RankSEG maximises)\n",
        file=stream,
        flush=True,
    )
    results = [run_case(case, SOLVERS) for case in cases]
    print(_table(cases, results), file=stream)
    print(
        "\nE[Dice], E[IoU]: expected metric under the probabilities, mean over images and classes.\n"
        "Dice^I, IoU^I: realised against the drawn labels (mean over images of the mean over the\n"
        "classes present in the labels or the prediction).",
        file=stream,
    )
    means = {}
    for case_results in results:
        for i, r in enumerate(case_results):
            means.setdefault(i, []).append(r.dice)
    names = ["argmax/threshold"] + [r.name for r in results[0][1:]]
    base = float(np.mean(means[0]))
    parts = [f"{names[0]} {base:.4f}"] + [
        f"{names[i]} {np.mean(means[i]):.4f} ({np.mean(means[i]) - base:+.4f})" for i in range(1, len(names))
    ]
    print(f"mean Dice^I over the {len(cases)} data sets: " + ", ".join(parts), file=stream)

    fig = _figure(cases, results)
    save_figure(fig, path, force=force)
    width, height = fig.get_size_inches()
    size = (
        f"{round(width * DPI)} x {round(height * DPI)} px" if fmt == "png" else f"{width:g} x {height:g} in"
    )
    print(f"figure: {path} ({size})", file=stream)
    if save_data is not None:
        written = save_cases(cases, Path(save_data), force=force)
        print(
            f"data: {len(written)} .npy files under {save_data} (rankseg evaluate --probs ... --labels ...)",
            file=stream,
        )
    stream.flush()
    return path


def run_command(args: argparse.Namespace) -> int:
    report = Reporter("demo")
    try:
        run_demo(out=args.out, force=args.force, save_data=args.save_data)
    except InputError as exc:
        report.error(str(exc))
        return 1
    except OSError as exc:
        report.error(f"{exc.filename or 'output'}: cannot be written ({exc.strerror or exc})")
        return 1
    return 0
