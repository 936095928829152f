"""``rankseg predict``: RankSEG masks for saved probability maps.

The per-file work (:func:`predict_file` on a :class:`PredictTask`) is a module-level function of
plain data, so that :mod:`rankseg.cli._runner` can run it here or in worker processes.
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._options import DEFAULT_SOLVER
from .._predictor import RankSEG
from ..calibration import TemperatureScaling
from ._common import (
    Progress,
    Reporter,
    folder_entries,
    is_folder,
    predictor_from_args,
    prepare_out_folder,
    progress_enabled,
)
from ._runner import TaskFailed, executor_from_args, run_tasks
from .evaluate import calibration_from_args, load_probs
from .io import (
    ARRAY_SUFFIXES,
    InputError,
    OutputExistsError,
    atomic_group,
    read_array,
    split_suffix,
    write_mask,
)

__all__ = ["PredictResult", "PredictTask", "predict_file"]


@dataclass(frozen=True)
class PredictTask:
    """One probability file, where its mask goes, and RankSEG's options."""

    path: Path
    target: Path  # --out / name + the input's suffix
    metric: str = "dice"
    smooth: float = 0.0
    pruning_prob: float = 0.5
    solver: str = DEFAULT_SOLVER  # as the user gave it (DEFAULT_SOLVER when not given)
    output_mode: str | None = None  # None: multiclass for several classes, multilabel for one
    logits: bool = False
    activation: str | None = None
    force: bool = False
    calibration: TemperatureScaling | None = None  # with logits: divide them by its temperature


@dataclass(frozen=True)
class PredictResult:
    """The line to print for a file written, or the error; and the warnings raised on the way."""

    line: str | None = None
    error: str | None = None
    warnings: tuple[str, ...] = ()


def predict_file(task: PredictTask) -> PredictResult:
    """Write the masks of one file (all of its outputs or none); problems are returned, not raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            line, error = _predict(task), None
        except InputError as exc:
            line, error = None, str(exc)
        except Exception as exc:  # named, reported, and the batch goes on
            line, error = None, f"{task.path}: {type(exc).__name__}: {exc}"
    return PredictResult(line, error, tuple(dict.fromkeys(str(w.message) for w in caught)))


def _predict(task: PredictTask) -> str:
    probs, like = load_probs(
        task.path, logits=task.logits, activation=task.activation, calibration=task.calibration
    )
    classes = probs.shape[0]
    mode = task.output_mode or ("multiclass" if classes > 1 else "multilabel")
    outputs = [task.target]
    if mode == "multiclass" and probs.ndim == 3:  # 2-D labels: also a PNG
        outputs.append(task.target.with_name(split_suffix(task.target)[0] + ".png"))
    present = [] if task.force else [out for out in outputs if os.path.lexists(out)]
    if len(present) == len(outputs):
        raise OutputExistsError(present[0])
    try:
        mask = RankSEG(task.metric, task.smooth, mode, task.solver, task.pruning_prob)(probs[None])[0]
    except ValueError as exc:
        raise InputError(task.path, str(exc)) from None
    for out in present:  # a case that an earlier run left partial: completed when it holds this mask
        if not _holds(out, mask):
            raise OutputExistsError(out)
    with atomic_group():  # every output of the file, or none
        for out in outputs:
            if out not in present:
                like_out = like if out == task.target else None
                write_mask(out, mask, like=like_out, num_classes=classes, force=task.force)
    kind = "labels" if mode == "multiclass" else "masks"
    line = f"{task.path} -> {', '.join(map(str, outputs))} ({mode} {kind} {tuple(mask.shape)})"
    if present:
        line += f"; completed: {', '.join(map(str, present))} already held this mask"
    return line


def _holds(path: Path, mask: np.ndarray) -> bool:
    try:
        stored, _ = read_array(path, "labels")
    except InputError:
        return False
    return stored.shape == mask.shape and bool(np.array_equal(stored, mask))


def _expand_inputs(inputs: Iterable[str], report: Reporter) -> tuple[list[Path], list[Path]]:
    """The files to read, in order (folders expanded), and the folders given."""
    files: list[Path] = []
    folders: list[Path] = []
    for text in inputs:
        path = Path(text)
        if is_folder(path):
            folders.append(path)
            found = folder_entries(path, ARRAY_SUFFIXES, report)
            if not found:
                report.error(f"{path}: folder holds no probability files ({', '.join(ARRAY_SUFFIXES)})")
            files += found
        else:
            files.append(path)  # read_array says why, if it cannot be read
    return files, folders


def run_command(args: argparse.Namespace) -> int:
    report = Reporter("predict")
    solver = args.solver if args.solver is not None else DEFAULT_SOLVER
    # checked now: a bad option is a usage error before any work
    predictor_from_args(args, solver, args.output_mode or "multiclass", report)
    try:
        calibration = calibration_from_args(args)
    except InputError as exc:
        report.error(str(exc))
        return 1
    files, folders = _expand_inputs(args.inputs, report)
    prepare_out_folder(args.out, folders)

    tasks: list[PredictTask] = []
    first_by_stem: dict[str, Path] = {}
    for path in files:
        stem, suffix = split_suffix(path)
        if suffix not in ARRAY_SUFFIXES:
            allowed = ", ".join(ARRAY_SUFFIXES)
            report.error(f"{path}: unsupported file type {suffix or '(none)'!r}; expected one of {allowed}")
            continue
        if stem in first_by_stem:
            report.error(
                f"{path}: has the same name as {first_by_stem[stem]}; "
                f"their masks would both be {args.out / stem}.*"
            )
            continue
        first_by_stem[stem] = path
        target = args.out / f"{stem}{suffix}"
        if os.path.realpath(target) == os.path.realpath(path):
            report.error(
                f"{path}: is its own output {target}; "
                "choose another --out folder (inputs are never overwritten)"
            )
            continue
        tasks.append(
            PredictTask(
                path=path,
                target=target,
                metric=args.metric,
                smooth=args.smooth,
                pruning_prob=args.pruning_prob,
                solver=solver,
                output_mode=args.output_mode,
                logits=args.logits,
                activation=args.activation,
                force=args.force,
                calibration=calibration,
            )
        )

    written = 0

    def handle(index: int, outcome: PredictResult | TaskFailed) -> None:
        nonlocal written
        if isinstance(outcome, TaskFailed):
            outcome = PredictResult(error=f"{tasks[index].path}: {outcome.reason}")
        for message in outcome.warnings:
            report.warn(message)
        if outcome.error is not None:
            report.error(outcome.error)
        else:
            if not args.quiet:
                print(outcome.line, flush=True)
            written += 1

    run_tasks(
        predict_file,
        tasks,
        executor_from_args(args, len(tasks), report.warn),
        names=[task.path.name for task in tasks],
        progress=Progress(len(tasks), "rankseg predict", progress_enabled(args)),
        handle=handle,
    )
    if report.failed:
        report.warn(f"{report.failed} problem(s); {written} of {len(files)} file(s) written")
        return 1
    return 0
