"""``rankseg nnunet`` and ``rankseg evaluate --nnunet``: RankSEG on ``nnUNetv2_predict`` output folders.

Both commands are the command-line face of :mod:`rankseg.integration.nnunet`: its per-case
functions (``postprocess_case``, ``evaluate_case``) are the runner's work, so ``--workers`` (and
any backend :func:`rankseg.cli._runner.executor_from_args` learns) applies unchanged. nnU-Net is
imported only when one of the two runs: the rest of the command works without the ``nnunet`` extra.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .._options import resolve_options
from ._common import (
    Progress,
    Reporter,
    UsageError,
    check_outputs,
    prepare_out_folder,
    progress_enabled,
    stat_or_reason,
)
from ._runner import TaskFailed, executor_from_args, run_tasks
from .evaluate import _finite, _input_folder, _solver_list
from .figures import plot_gains
from .io import InputError, atomic_group, write_atomic

__all__ = ["evaluate_command", "evaluates_nnunet", "run_command"]

PLANS_JSON = "plans.json"  # what marks an nnU-Net prediction folder (nnUNetv2_predict writes it)

# The RankSEG options of `rankseg nnunet` -> their flags, to name the flag of a bad value.
_FLAGS = {"metric": "--metric", "solver": "--solver", "smooth": "--smooth", "pruning_prob": "--pruning-prob"}


def _integration(report: Reporter) -> ModuleType | None:
    """:mod:`rankseg.integration.nnunet`, or None after an error naming the extra (nnunetv2 missing)."""
    try:
        from ..integration import nnunet
    except ImportError as exc:
        report.error(f"the {report.prog} command needs the 'nnunet' extra: {exc}")
        return None
    return nnunet


@contextmanager
def _warnings_to(report: Reporter) -> Iterator[None]:
    """Warnings raised in the block (RankSEG's solver fallbacks) printed once each by ``report``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        report.warn(str(warning.message))


# ------------------------------------------------------------------------------- rankseg nnunet


def _rankseg_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``--metric`` / ``--solver`` / ``--smooth`` / ``--pruning-prob`` as ``rankseg_kwargs``; a bad
    value is a usage error naming its flag. ``output_mode`` follows from the model, later."""
    kwargs: dict[str, Any] = {"metric": args.metric, "smooth": args.smooth, "pruning_prob": args.pruning_prob}
    if args.solver is not None:  # unset, accuracy picks its own solver without a warning
        kwargs["solver"] = args.solver
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fallbacks depend on the model's output mode: reported later
        try:
            resolve_options(**kwargs)
        except (ValueError, TypeError) as exc:
            message = str(exc)
            flag = _FLAGS.get(message.split(" ", 1)[0])
            raise UsageError(f"{flag}: {message}" if flag else message) from None
    return kwargs


def _check_out(out: Path, pred_dir: Path) -> None:
    """A usage error when ``--out`` is ``PRED_DIR`` or inside it (through links too), before any work."""
    real_out, real_pred = os.path.realpath(out), os.path.realpath(pred_dir)
    if real_out == real_pred:
        raise UsageError(
            f"--out {out} is PRED_DIR {pred_dir}: RankSEG's segmentations would replace nnU-Net's own; "
            "choose another folder"
        )
    if real_out.startswith(real_pred.rstrip(os.sep) + os.sep):
        raise UsageError(f"--out {out} is inside PRED_DIR {pred_dir}; write the segmentations outside it")


def run_command(args: argparse.Namespace) -> int:
    """``rankseg nnunet PRED_DIR --out OUT_DIR``: RankSEG segmentations written as nnU-Net writes its own."""
    report = Reporter("nnunet")
    kwargs = _rankseg_kwargs(args)
    pred_dir = _input_folder(args.pred_dir, "PRED_DIR")
    _check_out(args.out, pred_dir)
    nnunet = _integration(report)
    if nnunet is None:
        return 1
    try:
        nnunet.read_folder(pred_dir)  # a folder that is no nnU-Net output: named before --out is made
    except ValueError as exc:
        report.error(str(exc))
        return 1
    prepare_out_folder(args.out, [pred_dir])
    try:
        with _warnings_to(report):
            tasks = nnunet.prepare_postprocess(pred_dir, args.out, kwargs, force=args.force)
    except (ValueError, TypeError) as exc:  # e.g. --out holds another model's plans.json
        report.error(str(exc))
        return 1

    written = 0

    def handle(index: int, outcome: Any) -> None:
        nonlocal written
        task = tasks[index]
        if isinstance(outcome, TaskFailed):
            report.error(f"{task.case}: {outcome.reason}")
        elif outcome.error is not None:
            report.error(outcome.error)
        else:
            written += 1
            if not args.quiet:
                print(f"{Path(task.pred_dir) / (task.case + '.npz')} -> {outcome.output}", flush=True)

    run_tasks(
        nnunet.postprocess_case,
        tasks,
        executor_from_args(args, len(tasks), report.warn),
        names=[task.case for task in tasks],
        progress=Progress(len(tasks), "rankseg nnunet", progress_enabled(args)),
        handle=handle,
    )
    if report.failed:
        report.warn(f"{report.failed} problem(s); {written} of {len(tasks)} case(s) written")
        return 1
    return 0


# ------------------------------------------------------------------------- rankseg evaluate --nnunet

# evaluate's options that nnU-Net's files decide instead (dataset.json, the model's outputs)
_NOT_WITH_NNUNET = {
    "num_classes": ("--num-classes", "the labels or regions come from dataset.json"),
    "ignore_index": ("--ignore-index", "the ignore label comes from dataset.json"),
    "output_mode": ("--output-mode", "labels or regions come from dataset.json"),
    "logits": ("--logits", "nnU-Net saves probabilities"),
    "activation": ("--activation", "nnU-Net saves probabilities"),
    "calibration": ("--calibration", "nnU-Net saves probabilities, not logits"),
}


def evaluates_nnunet(args: argparse.Namespace) -> bool:
    """Whether ``rankseg evaluate`` runs on an nnU-Net folder: ``--nnunet``, or ``--probs`` naming a
    folder that holds ``plans.json`` (such a folder read as plain maps would give wrong axes)."""
    if args.nnunet is not None:
        return True
    info, _ = stat_or_reason(args.probs / PLANS_JSON)
    return info is not None


def _check_evaluate_options(args: argparse.Namespace) -> None:
    if args.nnunet is not None:
        given = f"--nnunet {args.nnunet}"
    else:
        given = (
            f"--probs {args.probs} holds {PLANS_JSON}: it is an nnU-Net prediction folder, "
            "evaluated as with --nnunet, and"
        )
    for name, (flag, reason) in _NOT_WITH_NNUNET.items():
        if getattr(args, name) not in (None, False):
            raise UsageError(f"{given} takes no {flag} ({reason})")


@dataclass(frozen=True)
class _GainsSummary:
    """What :func:`rankseg.cli.figures.plot_gains` reads, from an nnU-Net evaluation: per case, the
    mean Dice over the labels or regions defined in it."""

    baseline: str
    methods: tuple[str, ...]
    per_image: dict[str, list[float]]


def _gains_summary(evaluation: Any, baseline: str) -> _GainsSummary:
    per_case = {}
    for method in evaluation.methods:
        dice = evaluation.dice[method]  # (cases, keys), NaN where absent from both
        defined = ~np.isnan(dice)
        total, count = np.where(defined, dice, 0.0).sum(axis=1), defined.sum(axis=1)
        mean = np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)
        per_case[method] = mean.tolist()
    return _GainsSummary(baseline, tuple(evaluation.methods), per_case)


def _key_name(key: Any) -> str:
    return str(key)  # 2, or a region (1, 2, 3): as format_table and nnU-Net's summary.json name them


def evaluation_json(evaluation: Any, baseline: str, extra: dict[str, Any]) -> str:
    """The evaluation as JSON: per method the per-case and mean Dice / IoU per label or region, the
    foreground means, the counts and RankSEG's seconds per case (NaN written as null)."""
    keys = [list(k) if isinstance(k, tuple) else k for k in evaluation.keys]
    methods = {}
    for m in evaluation.methods:
        methods[m] = {
            "foreground_mean_dice": evaluation.foreground_mean_dice[m],
            "foreground_mean_iou": evaluation.foreground_mean_iou[m],
            "mean_dice": evaluation.mean_dice[m].tolist(),
            "mean_iou": evaluation.mean_iou[m].tolist(),
            "per_case_dice": evaluation.dice[m].tolist(),
            "per_case_iou": evaluation.iou[m].tolist(),
            "counts_tp_fp_fn_tn": evaluation.counts[m].tolist(),
        }
        if m != baseline:
            methods[m]["seconds_per_case"] = evaluation.seconds[m].tolist()
    payload = {
        **extra,
        "baseline": baseline,
        "keys": keys,
        "cases": list(evaluation.cases),
        "failed": evaluation.failed,
        "cases_with_key": evaluation.present.tolist(),
        "methods": methods,
    }
    return json.dumps(_finite(payload), indent=2) + "\n"


def evaluation_csv(evaluation: Any, baseline: str) -> str:
    """One row per method: mean Dice per label or region and their mean, the same for IoU, and the
    mean seconds per case in RankSEG (empty for nnU-Net's own segmentations)."""
    names = [_key_name(k) for k in evaluation.keys]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    dice, iou = [f"Dice {n}" for n in names], [f"IoU {n}" for n in names]
    writer.writerow(["method", *dice, "Dice mean", *iou, "IoU mean", "seconds_per_case"])
    for m in evaluation.methods:
        dice = [*evaluation.mean_dice[m].tolist(), evaluation.foreground_mean_dice[m]]
        iou = [*evaluation.mean_iou[m].tolist(), evaluation.foreground_mean_iou[m]]
        seconds = repr(float(np.mean(evaluation.seconds[m]))) if m != baseline else ""
        writer.writerow([m, *map(repr, dice), *map(repr, iou), seconds])
    return buf.getvalue()


def evaluate_command(args: argparse.Namespace) -> int:
    """``rankseg evaluate --nnunet PRED_DIR --labels LABELS_DIR``: nnU-Net's own segmentations against
    RankSEG's, per label or region and mean, with nnU-Net's Dice convention."""
    report = Reporter("evaluate")
    _check_evaluate_options(args)
    solvers = _solver_list(args, report)
    flag = "--nnunet" if args.nnunet is not None else "--probs"
    pred_dir = _input_folder(args.nnunet if args.nnunet is not None else args.probs, flag)
    inputs = {flag: pred_dir, "--labels": _input_folder(args.labels, "--labels")}
    try:
        check_outputs({"--json": args.json, "--csv": args.csv, "--plot": args.plot}, inputs, args.force)
    except InputError as exc:
        report.error(str(exc))
        return 1
    nnunet = _integration(report)
    if nnunet is None:
        return 1
    kwargs = {"metric": args.metric, "smooth": args.smooth, "pruning_prob": args.pruning_prob}
    try:
        with _warnings_to(report):
            tasks = nnunet.prepare_evaluation(pred_dir, args.labels, kwargs, solvers=list(solvers))
    except (ValueError, TypeError) as exc:  # no plans.json / dataset.json, invalid ones, no .npz
        report.error(str(exc))
        return 1

    results: list[Any] = []

    def collect(index: int, outcome: Any) -> None:
        if isinstance(outcome, TaskFailed):
            outcome = nnunet.CaseCounts(tasks[index].case, error=f"{tasks[index].case}: {outcome.reason}")
        if outcome.error is not None:
            report.error(outcome.error)
        results.append(outcome)

    run_tasks(
        nnunet.evaluate_case,
        tasks,
        executor_from_args(args, len(tasks), report.warn),
        names=[task.case for task in tasks],
        progress=Progress(len(tasks), "rankseg evaluate", progress_enabled(args)),
        handle=collect,
    )
    if all(result.error is not None for result in results):
        report.error("no case could be evaluated")
        return 1
    evaluation = nnunet.summarise_evaluation(results)
    baseline = nnunet.BASELINE
    extra = {
        "nnunet": str(pred_dir),
        "labels": str(args.labels),
        "metric": args.metric,
        "smooth": args.smooth,
        "pruning_prob": args.pruning_prob,
    }
    saved = _save_results(args, evaluation, baseline, extra, report)
    regions = any(isinstance(k, tuple) for k in evaluation.keys)
    failed = f" ({len(evaluation.failed)} failed)" if evaluation.failed else ""
    print(
        f"{len(evaluation.cases)} case(s), {len(evaluation.keys)} {'region' if regions else 'label'}(s), "
        f"RankSEG metric={args.metric}, nnU-Net folder={pred_dir}, labels={args.labels}{failed}"
    )
    print("Dice as nnU-Net computes it: per case, ignore label left out, NaN when a label or region is in")
    print(
        "neither reference nor segmentation; averaged over the cases without NaN. cases: references with it"
    )
    print()
    print(nnunet.format_table(evaluation), flush=True)
    if not args.quiet:
        for path in saved:
            print(f"saved {path}", flush=True)
    return 1 if report.failed else 0


def _save_results(
    args: argparse.Namespace, evaluation: Any, baseline: str, extra: dict[str, Any], report: Reporter
) -> list[Path]:
    """``--json`` / ``--csv`` / ``--plot``, all of them or none (written before the table is printed,
    so that a closed stdout does not lose them)."""
    writers: list[tuple[Path | None, Callable[[], Path]]] = [
        (args.json, lambda: _write_text(args.json, evaluation_json(evaluation, baseline, extra), args.force)),
        (args.csv, lambda: _write_text(args.csv, evaluation_csv(evaluation, baseline), args.force)),
        (args.plot, lambda: plot_gains(_gains_summary(evaluation, baseline), args.plot, args.force)),
    ]
    saved = []
    try:
        with atomic_group():
            for path, write in writers:
                if path is not None:
                    saved.append(write())
    except InputError as exc:
        report.error(str(exc))
        return []
    return saved


def _write_text(path: Path, text: str, force: bool) -> Path:
    data = text.encode()
    return write_atomic(path, lambda f: f.write(data), force=force)
