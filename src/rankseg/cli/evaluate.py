"""``rankseg evaluate``: the per-file work (load and check maps, predict, count, summarise) and the command.

Module-level functions and plain data only, so that :mod:`rankseg.cli._runner` can run
:func:`evaluate_pair` here or in worker processes (``--workers N``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import stat
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._predictor import RankSEG
from ..calibration import TemperatureScaling
from ..metrics import (
    CalibrationError,
    SegmentationCounts,
    calibration_error,
    score_from_counts,
    segmentation_counts,
)
from ._common import (
    Progress,
    Reporter,
    UsageError,
    check_outputs,
    folder_entries,
    predictor_from_args,
    progress_enabled,
    stat_or_reason,
)
from ._runner import TaskFailed, executor_from_args, run_tasks
from .figures import plot_gains
from .io import (
    ARRAY_SUFFIXES,
    LABEL_SUFFIXES,
    InputError,
    atomic_group,
    describe_os_error,
    file_problem,
    read_array,
    split_suffix,
    write_atomic,
)

__all__ = [
    "EvalTask",
    "PairResult",
    "Summary",
    "evaluate_pair",
    "format_table",
    "load_labels",
    "load_logits",
    "load_probs",
    "logits_to_probs",
    "summarise",
]

ACTIVATIONS = ("softmax", "sigmoid")


def load_probs(
    path: Path,
    *,
    logits: bool = False,
    activation: str | None = None,
    calibration: TemperatureScaling | None = None,
) -> tuple[np.ndarray, Any]:
    """Probabilities ``(classes, *spatial)`` from ``path`` (logits turned into probabilities, with
    ``calibration``: divided by its temperature first, see :func:`logits_to_probs`)."""
    arr, like = load_logits(path)
    if logits:
        return logits_to_probs(path, arr, activation, calibration), like
    lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
    if lo < 0 or hi > 1:
        raise InputError(
            path,
            f"values range from {lo:.6g} to {hi:.6g}, outside [0, 1]; if the file holds logits, "
            "pass --logits (with --activation softmax or sigmoid)",
        )
    return arr, like


def load_logits(path: Path) -> tuple[np.ndarray, Any]:
    """The float ``(classes, *spatial)`` map of ``path`` as stored (probabilities or logits), checked:
    floating point, a class axis, no empty axis, finite."""
    arr, like = read_array(path, "probs")
    if arr.dtype.kind != "f":
        raise InputError(
            path,
            f"holds {arr.dtype} values; probability maps must be floating point (float16, float32 or "
            "float64) of shape (classes, *spatial)",
        )
    if arr.ndim < 2:
        raise InputError(
            path, f"has shape {arr.shape}; expected (classes, *spatial) with the class axis first"
        )
    if 0 in arr.shape:
        raise InputError(
            path,
            f"has shape {arr.shape}, with an empty axis; expected (classes, *spatial) with at least "
            "one class and one pixel",
        )
    if not np.isfinite(arr).all():
        raise InputError(path, "contains NaN or infinite values")
    return arr, like


def logits_to_probs(
    path: Path, arr: np.ndarray, activation: str | None, calibration: TemperatureScaling | None = None
) -> np.ndarray:
    """``softmax`` over the class axis or ``sigmoid`` of the logits ``arr`` (float32), divided by
    the temperature of ``calibration`` first (``calibration.transform``; its activation is the one
    used). With a calibration, maps that look like probabilities and a per-class temperature for
    another number of classes are refused, naming ``path``."""
    if calibration is not None:
        activation = calibration.activation
        _check_calibrated_logits(path, arr, calibration)
    activation = activation or ("softmax" if arr.shape[0] > 1 else "sigmoid")
    if activation == "softmax" and arr.shape[0] == 1:
        if calibration is not None:
            raise InputError(
                path,
                "has one class channel, but --calibration was fitted with softmax over several; a "
                "one-channel model needs a sigmoid calibration ('rankseg calibrate' on its logits)",
            )
        raise InputError(path, "has one class channel: softmax over it is always 1; use --activation sigmoid")
    scores = torch.from_numpy(arr.astype(np.float32))
    if calibration is not None:
        return calibration.transform(scores[None])[0].numpy()
    probs = torch.softmax(scores, dim=0) if activation == "softmax" else torch.sigmoid(scores)
    return probs.numpy()


def probabilities_reason(arr: np.ndarray, activation: str) -> str | None:
    """Why the ``(classes, *spatial)`` map ``arr`` reads as probabilities rather than logits, or None.

    softmax: every value in [0, 1] and the classes sum to 1 (within 1e-3) at every pixel; sigmoid:
    every value in [0, 1] (a constant map is not recognisably either).
    """
    lo, hi = float(arr.min()), float(arr.max())
    if not 0 <= lo < hi <= 1:
        return None
    if activation == "softmax":
        if float(np.abs(arr.sum(axis=0, dtype=np.float64) - 1).max()) > 1e-3:
            return None
        return "every value is in [0, 1] and the classes sum to 1 at every pixel"
    return f"every value is in [{lo:.4g}, {hi:.4g}], within [0, 1]"


def calibration_from_args(args: argparse.Namespace) -> TemperatureScaling | None:
    """The fitted calibration ``--calibration FILE`` names (predict, evaluate), or None.

    UsageError: without ``--logits``, a path that is not a regular file (missing, a folder, ...),
    or an ``--activation`` other than the calibration's. InputError: a file that is not a fitted
    ``TemperatureScaling`` JSON file (``rankseg calibrate`` writes them).
    """
    path = getattr(args, "calibration", None)
    if path is None:
        return None
    if not args.logits:
        raise UsageError(
            "--calibration needs --logits: the temperature divides the logits before the activation, "
            "and without --logits the files are read as probabilities"
        )
    problem = file_problem(path)
    if problem is not None:
        raise UsageError(f"--calibration {path} {problem}")
    try:
        state = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            path, f"is not a JSON file ({exc}); --calibration needs the file 'rankseg calibrate' writes"
        ) from None
    except OSError as exc:
        raise InputError(path, f"cannot be read ({describe_os_error(exc)})") from None
    try:
        calibration = TemperatureScaling().load_state_dict(state)
    except (ValueError, TypeError) as exc:
        raise InputError(path, f"is not a calibration written by 'rankseg calibrate': {exc}") from None
    if calibration.state_dict()["temperature"] is None:
        raise InputError(
            path, "holds no fitted temperature (its 'temperature' is null); fit one with 'rankseg calibrate'"
        )
    if args.activation is not None and args.activation != calibration.activation:
        raise UsageError(
            f"--activation {args.activation} does not match the calibration {path}, fitted with "
            f"--activation {calibration.activation}; a temperature is only defined for the activation it "
            "was fitted with (leave --activation out to use the calibration's)"
        )
    return calibration


def _check_calibrated_logits(path: Path, arr: np.ndarray, calibration: TemperatureScaling) -> None:
    reason = probabilities_reason(arr, calibration.activation)
    if reason is not None:
        raise InputError(
            path,
            f"looks like probabilities, not logits ({reason}); a calibration divides the logits "
            f"before the {calibration.activation}: give the model's logits",
        )
    temperature = calibration.temperature_
    if temperature.dim() == 1 and temperature.numel() != arr.shape[0]:
        raise InputError(
            path,
            f"has {arr.shape[0]} class channels (shape {arr.shape}) but --calibration holds per-class "
            f"temperatures for {temperature.numel()} classes",
        )


def load_labels(
    path: Path,
    probs_path: Path,
    probs_shape: tuple[int, ...],
    multiclass: bool,
    ignore_index: int | None = None,
) -> np.ndarray:
    """Integer labels of ``path`` checked against the probabilities' shape, as int64.

    Multiclass: ``(*spatial)`` class indices in ``[0, classes)``. Multilabel: ``(classes, *spatial)``
    0/1 masks, or ``(*spatial)`` for a single class. ``ignore_index`` may appear anywhere. A value
    outside these is reported as stored (no int64 wrap-around), at its first position.
    """
    arr, _ = read_array(path, "labels")
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and np.equal(np.floor(arr), arr).all()):
        raise InputError(path, f"holds non-integer {arr.dtype} values; label maps must hold class indices")
    spatial = tuple(probs_shape[1:])
    if multiclass:
        expected = spatial
    else:
        expected = tuple(probs_shape)
        if probs_shape[0] == 1 and arr.shape == spatial:
            arr = arr[None]
    if arr.shape != expected:
        what = "class indices (*spatial)" if multiclass else "0/1 masks (classes, *spatial)"
        raise InputError(
            path,
            f"has shape {arr.shape} but the probabilities {probs_path} have shape {tuple(probs_shape)} "
            f"(classes, *spatial); the labels must be {what} of shape {expected}",
        )
    top = probs_shape[0] - 1 if multiclass else 1
    bad = (arr < 0) | (arr > top)  # compared in the stored dtype: uint64 and float values stay exact
    if ignore_index is not None:
        bad &= arr != ignore_index
    if bad.any():
        value = arr.flat[int(np.flatnonzero(bad)[0])]
        value = int(value) if arr.dtype.kind != "b" else int(bool(value))
        also = f" or --ignore-index {ignore_index}" if ignore_index is not None else ""
        if multiclass:
            raise InputError(path, f"holds the label {value}; labels must lie in [0, {top}]{also}")
        raise InputError(path, f"holds the value {value}; multilabel masks must hold 0 or 1{also}")
    return arr.astype(np.int64)


@dataclass(frozen=True)
class EvalTask:
    """One (probabilities, labels) pair and what to compare on it."""

    name: str
    probs_path: Path
    labels_path: Path
    solvers: tuple[str, ...]  # canonical RankSEG solver names, checked by the caller
    metric: str = "dice"
    smooth: float = 0.0
    pruning_prob: float = 0.5
    output_mode: str | None = None  # None: multiclass for several classes, multilabel for one
    num_classes: int | None = None
    ignore_index: int | None = None
    logits: bool = False
    activation: str | None = None
    calibration: TemperatureScaling | None = None  # with logits: also RankSEG on calibrated probabilities


#: The method name of ``method`` run on the calibrated probabilities.
CALIBRATED = "{} (calibrated)"


@dataclass
class PairResult:
    """Counts ``(3, classes)`` (intersection, pred, target) and seconds, per method; or an error.

    With a calibration, ``reliability`` holds the :func:`rankseg.metrics.calibration_error` of the
    ``"raw"`` and the ``"calibrated"`` probabilities (NumPy fields, merged over the files later)."""

    name: str
    num_classes: int = 0
    baseline: str = ""
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    warnings: tuple[str, ...] = ()
    reliability: dict[str, CalibrationError] = field(default_factory=dict)


def baseline_masks(probs: torch.Tensor, multiclass: bool) -> torch.Tensor:
    """Argmax labels (multiclass) or 0.5-threshold masks (multilabel) of ``(classes, *spatial)`` probs."""
    return probs.argmax(dim=0) if multiclass else probs > 0.5


def evaluate_pair(task: EvalTask) -> PairResult:
    """Baseline and every RankSEG solver on one pair; a failure is returned as ``error``, not raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _evaluate_pair(task)
    result.warnings = tuple(dict.fromkeys(str(w.message) for w in caught))
    return result


def _evaluate_pair(task: EvalTask) -> PairResult:
    result = PairResult(task.name)
    try:
        if task.calibration is None:
            probs_np, _ = load_probs(task.probs_path, logits=task.logits, activation=task.activation)
            calibrated_np = None
        else:
            scores, _ = load_logits(task.probs_path)
            calibrated_np = logits_to_probs(task.probs_path, scores, None, task.calibration)  # checks first
            probs_np = logits_to_probs(task.probs_path, scores, task.calibration.activation)
        classes = probs_np.shape[0]
        if task.num_classes is not None and classes != task.num_classes:
            raise InputError(
                task.probs_path,
                f"has {classes} class channels (shape {probs_np.shape}); --num-classes is {task.num_classes}",
            )
        mode = task.output_mode or ("multiclass" if classes > 1 else "multilabel")
        multiclass = mode == "multiclass"
        if multiclass and classes == 1:
            raise InputError(
                task.probs_path,
                f"has one class channel (shape {probs_np.shape}); "
                "--output-mode multiclass needs at least two",
            )
        labels = load_labels(task.labels_path, task.probs_path, probs_np.shape, multiclass, task.ignore_index)
        probs = torch.from_numpy(probs_np)
        result.num_classes = classes
        result.baseline = "argmax" if multiclass else "threshold"

        def count(pred: torch.Tensor) -> np.ndarray:
            try:
                counts = segmentation_counts(
                    pred[None],
                    torch.from_numpy(labels)[None],
                    classes,
                    ignore_index=task.ignore_index,
                    input_format="index" if multiclass else "mask",
                )
            except ValueError as exc:
                raise InputError(task.labels_path, str(exc)) from None
            return np.stack([c[0].numpy() for c in counts])

        def run(method: str, maps: torch.Tensor, predictor: RankSEG | None = None) -> None:
            """Time and count ``method``: the baseline without a predictor, else RankSEG."""
            start = time.perf_counter()
            pred = baseline_masks(maps, multiclass) if predictor is None else predictor(maps[None])[0]
            result.seconds[method] = time.perf_counter() - start
            result.counts[method] = count(pred)

        calibrated = None if calibrated_np is None else torch.from_numpy(calibrated_np)
        run(result.baseline, probs)
        if calibrated is not None and multiclass and task.calibration.temperature_.dim() == 1:
            # per-class temperatures can change the argmax (a global one never does)
            run(CALIBRATED.format(result.baseline), calibrated)
        for name in task.solvers:
            predictor = RankSEG(task.metric, task.smooth, mode, name, task.pruning_prob)
            run(name, probs, predictor)
            if calibrated is not None:
                run(CALIBRATED.format(name), calibrated, predictor)
        if calibrated_np is not None:
            for key, maps in (("raw", probs_np), ("calibrated", calibrated_np)):
                result.reliability[key] = _reliability(task, maps, labels)
    except InputError as exc:
        result.error = str(exc)
    except Exception as exc:  # reported with the file; the batch goes on
        result.error = f"{task.probs_path}: {type(exc).__name__}: {exc}"
    return result


def _reliability(task: EvalTask, probs: np.ndarray, labels: np.ndarray) -> CalibrationError:
    """:func:`rankseg.metrics.calibration_error` of one map: top-label for class-index labels
    ``(*spatial)``, per class for multilabel masks ``(classes, *spatial)``."""
    try:
        return calibration_error(probs[None], labels[None], ignore_index=task.ignore_index)
    except ValueError as exc:
        raise InputError(task.labels_path, str(exc)) from None


@dataclass
class Summary:
    """Metrics of every method over the evaluated images."""

    names: list[str]
    num_classes: int
    baseline: str
    methods: list[str]
    metrics: dict[str, dict[str, float]]  # method -> {"mDice_I": ..., "seconds_per_image": ...}
    per_class: dict[str, dict[str, list[float]]]  # method -> {"Dice_C": [...], "IoU_D": [...]}
    per_image: dict[str, list[float]]  # method -> per-image mean Dice over present classes
    images_with_class: list[int]


AGGREGATES = {
    "mDice_I": ("dice", "image"),
    "mIoU_I": ("iou", "image"),
    "mIoU_D": ("iou", "dataset"),
    "mDice_C": ("dice", "class"),
    "mIoU_C": ("iou", "class"),
    "mDice_D": ("dice", "dataset"),
}


def summarise(results: list[PairResult], smooth: float = 0.0) -> Summary:
    """Aggregate successful per-pair results (all with the same classes and methods)."""
    methods = list(results[0].counts)
    metrics: dict[str, dict[str, float]] = {}
    per_class: dict[str, dict[str, list[float]]] = {}
    per_image: dict[str, list[float]] = {}
    for method in methods:
        stacked = np.stack([r.counts[method] for r in results])  # (images, 3, classes)
        counts = SegmentationCounts(*(torch.from_numpy(stacked[:, i]) for i in range(3)))
        values = {
            key: float(score_from_counts(counts, metric, average=average, smooth=smooth))  # type: ignore[arg-type]
            for key, (metric, average) in AGGREGATES.items()
        }
        values["seconds_per_image"] = float(np.mean([r.seconds[method] for r in results]))
        metrics[method] = values
        per_class[method] = {
            "Dice_C": score_from_counts(
                counts, "dice", average="class", reduction="none", smooth=smooth
            ).tolist(),
            "IoU_D": score_from_counts(
                counts, "iou", average="dataset", reduction="none", smooth=smooth
            ).tolist(),
        }
        per_image[method] = score_from_counts(counts, "dice", reduction="none", smooth=smooth).tolist()
    stacked = np.stack([r.counts[methods[0]] for r in results])
    union = stacked[:, 1] + stacked[:, 2] - stacked[:, 0]
    return Summary(
        names=[r.name for r in results],
        num_classes=results[0].num_classes,
        baseline=results[0].baseline,
        methods=methods,
        metrics=metrics,
        per_class=per_class,
        per_image=per_image,
        images_with_class=(union > 0).sum(axis=0).tolist(),
    )


def _number(value: float, digits: int = 4, sign: bool = False) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _align(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


MAIN_COLUMNS = (("mDice^I", "mDice_I"), ("mIoU^I", "mIoU_I"), ("mIoU^D", "mIoU_D"))


def format_table(summary: Summary) -> str:
    """The main table (one row per method, gains against the baseline) and the per-class gains."""
    base = summary.metrics[summary.baseline]
    header = ["method"]
    for title, _ in MAIN_COLUMNS:
        header += [title, "gain"]
    header.append("ms/image")
    rows = [header]
    for method in summary.methods:
        values = summary.metrics[method]
        row = [method]
        for _, key in MAIN_COLUMNS:
            gain = "-" if method == summary.baseline else _number(values[key] - base[key], sign=True)
            row += [_number(values[key]), gain]
        row.append(f"{values['seconds_per_image'] * 1e3:.2f}")
        rows.append(row)

    solvers = [m for m in summary.methods if m != summary.baseline]
    class_rows = [
        ["class", "images", f"{summary.baseline} Dice^C"]
        + [f"{s} gain" for s in solvers]
        + [f"{summary.baseline} IoU^D"]
        + [f"{s} gain" for s in solvers]
    ]
    pc = summary.per_class
    for c in range(summary.num_classes):
        row = [str(c), str(summary.images_with_class[c]), _number(pc[summary.baseline]["Dice_C"][c])]
        row += [_number(pc[s]["Dice_C"][c] - pc[summary.baseline]["Dice_C"][c], sign=True) for s in solvers]
        row.append(_number(pc[summary.baseline]["IoU_D"][c]))
        row += [_number(pc[s]["IoU_D"][c] - pc[summary.baseline]["IoU_D"][c], sign=True) for s in solvers]
        class_rows.append(row)
    return (
        _align(rows)
        + "\n\nper class: Dice^C (mean over the images where the class is present) and IoU^D (data set)\n"
        + _align(class_rows)
    )


def _finite(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def summary_json(summary: Summary, failed: dict[str, str], extra: dict[str, Any]) -> str:
    """The summary as JSON (NaN written as null)."""
    payload = {
        **extra,
        "num_classes": summary.num_classes,
        "baseline": summary.baseline,
        "images": summary.names,
        "failed": failed,
        "images_with_class": summary.images_with_class,
        "methods": {
            m: {
                **summary.metrics[m],
                "per_class": summary.per_class[m],
                "per_image_dice": summary.per_image[m],
            }
            for m in summary.methods
        },
    }
    return json.dumps(_finite(payload), indent=2) + "\n"


def summary_csv(summary: Summary, reliability: Reliability | None = None) -> str:
    """One row per method: every aggregate and the seconds per image; with a calibration also the
    ECE of the probabilities the method used (raw or calibrated)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    keys = [*AGGREGATES, "seconds_per_image"]
    writer.writerow(["method", *keys, *(["ECE"] if reliability is not None else [])])
    for method in summary.methods:
        row = [method, *(repr(summary.metrics[method][k]) for k in keys)]
        if reliability is not None:
            row.append(repr(reliability.ece(reliability.probabilities(method))))
        writer.writerow(row)
    return buf.getvalue()


# ------------------------------------------------------------------------------ calibration


@dataclass
class Reliability:
    """Calibration of the raw and the calibrated probabilities over the evaluated images.

    ``raw`` and ``calibrated`` are :class:`rankseg.metrics.CalibrationError` results merged over
    the files (top-label for class-index labels; per class, ``(classes,)`` ECEs, for masks).
    """

    raw: CalibrationError
    calibrated: CalibrationError

    @property
    def per_class(self) -> bool:
        return np.ndim(self.raw.ece) == 1

    def ece(self, which: str) -> float:
        """The ECE of ``"raw"`` or ``"calibrated"``: top-label, or the mean of the per-class ECEs."""
        ece = np.asarray(getattr(self, which).ece, dtype=float)
        if ece.ndim == 0:
            return float(ece)
        return float(np.nanmean(ece)) if np.isfinite(ece).any() else math.nan

    @staticmethod
    def probabilities(method: str) -> str:
        """``"calibrated"`` for a method run on the calibrated probabilities, else ``"raw"``."""
        return "calibrated" if method.endswith(CALIBRATED.format("")) else "raw"

    def describe(self) -> str:
        bins = np.size(self.raw.bin_edges) - 1
        if self.per_class:
            return f"ECE (per class, mean over {np.size(self.raw.ece)} class(es), {bins} bins)"
        return f"ECE (top-label, {bins} bins)"

    def line(self) -> str:
        """``ECE (top-label, 15 bins): raw 0.1812 -> calibrated 0.0048``."""
        raw, calibrated = _number(self.ece("raw")), _number(self.ece("calibrated"))
        return f"{self.describe()}: raw {raw} -> calibrated {calibrated}"

    def as_json(self) -> dict[str, Any]:
        def fields(result: CalibrationError) -> dict[str, Any]:
            return {
                key: np.asarray(getattr(result, key)).tolist()
                for key in ("ece", "counts", "confidence", "accuracy")
            }

        return {
            "ece": {"raw": self.ece("raw"), "calibrated": self.ece("calibrated")},
            "reliability": {
                "bin_edges": np.asarray(self.raw.bin_edges).tolist(),
                "raw": fields(self.raw),
                "calibrated": fields(self.calibrated),
            },
        }


def merge_reliability(results: list[PairResult]) -> Reliability | None:
    """The per-file calibration errors of ``results`` merged (``CalibrationError.merge``); None
    without a calibration."""
    if not results or not results[0].reliability:
        return None
    raw, calibrated = (
        CalibrationError.merge([r.reliability[k] for r in results]) for k in ("raw", "calibrated")
    )
    return Reliability(raw, calibrated)


def describe_temperature(calibration: TemperatureScaling) -> str:
    """``T = 0.4012 (softmax, global)`` or ``T = [0.3, 0.5] (sigmoid, per class)``."""
    temperature = calibration.temperature_
    if temperature.dim() == 0:
        return f"T = {float(temperature):.4g} ({calibration.activation}, global)"
    values = ", ".join(f"{float(t):.4g}" for t in temperature)
    return f"T = [{values}] ({calibration.activation}, per class)"


# ------------------------------------------------------------------------------ the command


def _files_by_stem(folder: Path, suffixes: tuple[str, ...], what: str, report: Reporter) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in folder_entries(folder, suffixes, report):
        stem = split_suffix(path)[0]
        if stem in found:
            report.error(f"{path}: has the same name as {found[stem]}; keep one file per image in --{what}")
            continue
        found[stem] = path
    return found


def _input_folder(folder: Path, flag: str) -> Path:
    info, reason = stat_or_reason(folder)
    if info is None or not stat.S_ISDIR(info.st_mode):
        raise UsageError(f"{flag} {folder} is not a folder" + (f" ({reason})" if info is None else ""))
    return folder


def _solver_list(args: argparse.Namespace, report: Reporter) -> tuple[str, ...]:
    names = [s.strip() for s in args.solvers.split(",") if s.strip()]
    if not names:
        raise UsageError(f"--solvers must name at least one solver (e.g. RMA,exact); got {args.solvers!r}")
    if args.metric.strip().lower() in ("acc", "accuracy"):
        raise UsageError("--metric must be dice or iou for evaluate (accuracy has no RankSEG solver)")
    solvers = [
        predictor_from_args(args, name, args.output_mode or "multiclass", report, "--solvers").solver
        for name in names
    ]
    return tuple(dict.fromkeys(solvers))  # without repeats, in the order given


def run_command(args: argparse.Namespace) -> int:
    from .nnunet import evaluate_command, evaluates_nnunet  # here: that module builds on this one

    if evaluates_nnunet(args):  # --nnunet, or --probs naming a folder with plans.json
        return evaluate_command(args)
    report = Reporter("evaluate")
    solvers = _solver_list(args, report)
    try:
        calibration = calibration_from_args(args)
    except InputError as exc:
        report.error(str(exc))
        return 1
    inputs = {"--probs": _input_folder(args.probs, "--probs")}
    inputs["--labels"] = _input_folder(args.labels, "--labels")
    outputs = {"--json": args.json, "--csv": args.csv, "--plot": args.plot}
    try:
        check_outputs(outputs, inputs, args.force)
    except InputError as exc:
        report.error(str(exc))
        return 1

    probs = _files_by_stem(args.probs, ARRAY_SUFFIXES, "probs", report)
    labels = _files_by_stem(args.labels, LABEL_SUFFIXES, "labels", report)
    tasks = []
    for stem, path in probs.items():
        if stem not in labels:
            report.error(f"{path}: no label file named {stem}.* in {args.labels}")
            continue
        tasks.append(
            EvalTask(
                name=stem,
                probs_path=path,
                labels_path=labels[stem],
                solvers=solvers,
                metric=args.metric,
                smooth=args.smooth,
                pruning_prob=args.pruning_prob,
                output_mode=args.output_mode,
                num_classes=args.num_classes,
                ignore_index=args.ignore_index,
                logits=args.logits,
                activation=args.activation,
                calibration=calibration,
            )
        )
    unused = sorted(set(labels) - set(probs))
    if unused:
        report.warn(
            f"{len(unused)} label file(s) have no probability map and were skipped: {', '.join(unused)}"
        )

    results: list[PairResult] = []

    def collect(index: int, outcome: PairResult | TaskFailed) -> None:
        if isinstance(outcome, TaskFailed):
            outcome = PairResult(tasks[index].name, error=f"{tasks[index].probs_path}: {outcome.reason}")
        for message in outcome.warnings:
            report.warn(message)
        results.append(outcome)

    run_tasks(
        evaluate_pair,
        tasks,
        executor_from_args(args, len(tasks), report.warn),
        names=[task.name for task in tasks],
        progress=Progress(len(tasks), "rankseg evaluate", progress_enabled(args)),
        handle=collect,
    )
    good: list[PairResult] = []
    failed: dict[str, str] = {}
    kinds = Counter((r.num_classes, r.baseline) for r in results if r.error is None)
    kind = max(kinds, key=lambda k: kinds[k]) if kinds else None  # the most common; ties: the first
    for task, result in zip(tasks, results, strict=True):
        if result.error is None and (result.num_classes, result.baseline) != kind:
            result.error = (
                f"{task.probs_path}: has {result.num_classes} class channels ({result.baseline}) but "
                f"{kinds[kind]} other maps have {kind[0]} ({kind[1]}); "
                "--num-classes selects the maps to evaluate"
            )
        if result.error is not None:
            report.error(result.error)
            failed[result.name] = result.error
        else:
            good.append(result)
    if not good:
        report.error("no image could be evaluated")
        return 1

    summary = summarise(good, args.smooth)
    reliability = merge_reliability(good)
    extra = {
        "probs": str(args.probs),
        "labels": str(args.labels),
        "metric": args.metric,
        "smooth": args.smooth,
        "ignore_index": args.ignore_index,
    }
    if calibration is not None and reliability is not None:
        state = calibration.state_dict()
        extra["calibration"] = {
            "file": str(args.calibration),
            **{key: state[key] for key in ("activation", "per_class", "temperature")},
            **reliability.as_json(),
        }
    saved = []
    try:  # written before the table is printed: a closed stdout ('| head') does not lose them
        with atomic_group():  # the results files all appear, or none
            if args.json is not None:
                text = summary_json(summary, failed, extra).encode()
                saved.append(write_atomic(args.json, lambda f: f.write(text), force=args.force))
            if args.csv is not None:
                text_csv = summary_csv(summary, reliability).encode()
                saved.append(write_atomic(args.csv, lambda f: f.write(text_csv), force=args.force))
            if args.plot is not None:
                saved.append(plot_gains(summary, args.plot, args.force, reliability))
    except InputError as exc:
        report.error(str(exc))
        saved = []
    print(
        f"{len(good)} image(s), {summary.num_classes} class(es), RankSEG metric={args.metric}, "
        f"probs={args.probs}, labels={args.labels}" + (f" ({len(failed)} failed)" if failed else "")
    )
    if calibration is not None and reliability is not None:
        print(f"calibration {args.calibration}: {describe_temperature(calibration)}; {reliability.line()}")
    print()
    print(format_table(summary), flush=True)
    if not args.quiet:
        for path in saved:
            print(f"saved {path}", flush=True)
    return 1 if report.failed else 0
