"""The ``rankseg`` command: ``predict``, ``evaluate`` and ``demo``.

    rankseg predict probs/*.npy --out masks/            # masks from saved probability maps
    rankseg evaluate --probs probs/ --labels labels/    # argmax against RankSEG on your data
    rankseg demo                                        # see it work on built-in data

Every error names the file and the reason; a file that fails does not stop the others, and the
exit status is 1 when any file failed, 2 for a usage error. Outputs are written atomically and an
existing file is only replaced with ``--force``.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TextIO

import torch

from . import __version__
from ._evaluate import (
    ACTIVATIONS,
    EvalTask,
    PairResult,
    evaluate_pair,
    format_table,
    load_probs,
    summarise,
    summary_csv,
    summary_json,
)
from ._io import ARRAY_SUFFIXES, LABEL_SUFFIXES, InputError, split_suffix, write_atomic, write_mask
from ._options import DEFAULT_SOLVER, resolve_options
from ._predictor import RankSEG

__all__ = ["main"]

PLOT_HINT = '--plot needs matplotlib: pip install "rankseg[plot]"'


class UsageError(Exception):
    """A wrong combination of options: reported like argparse's own errors (exit status 2)."""


class Reporter:
    """Errors and warnings on stderr, prefixed with the command; remembers whether any file failed."""

    def __init__(self, command: str, stream: TextIO | None = None) -> None:
        self.prog = f"rankseg {command}"
        self.stream = stream or sys.stderr
        self.failed = 0

    def error(self, message: str) -> None:
        self.failed += 1
        print(f"{self.prog}: error: {message}", file=self.stream, flush=True)

    def warn(self, message: str) -> None:
        print(f"{self.prog}: warning: {message}", file=self.stream, flush=True)


class Progress:
    """A one-line progress bar on stderr, redrawn in place; silent unless enabled."""

    def __init__(self, total: int, label: str, enabled: bool, stream: TextIO | None = None) -> None:
        self.total, self.label, self.enabled = total, label, enabled and total > 0
        self.stream = stream or sys.stderr
        self.done = 0
        self.width = 0

    def step(self, name: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        filled = round(20 * self.done / self.total)
        line = f"{self.label} [{'#' * filled}{'.' * (20 - filled)}] {self.done}/{self.total} {name}"
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()
        self.width = len(line)

    def close(self) -> None:
        if self.enabled and self.done:
            self.stream.write("\n")
            self.stream.flush()


# ----------------------------------------------------------------------------------------- parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0; got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0; got {text!r}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1]; got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1]; got {text!r}")
    return value


def _add_model_options(parser: argparse.ArgumentParser, evaluate: bool) -> None:
    group = parser.add_argument_group("RankSEG options")
    group.add_argument(
        "--metric",
        default="dice",
        help="metric RankSEG maximises: dice, iou" + ("" if evaluate else " or acc") + " (default: dice)",
    )
    if not evaluate:
        group.add_argument(
            "--solver", default=None, help="RMA (default), exact, BA, TRNA, BA+TRNA; argmax/TR for acc"
        )
    group.add_argument(
        "--output-mode",
        choices=("multiclass", "multilabel"),
        default=None,
        help="multiclass (one label per pixel) or multilabel (one mask per class); "
        "default: multiclass for several class channels, multilabel for one",
    )
    group.add_argument(
        "--smooth",
        type=_non_negative_float,
        default=0.0,
        help="smoothing constant of the metric (default: 0)"
        + ("; also used by the reported metrics" if evaluate else ""),
    )
    group.add_argument(
        "--pruning-prob",
        type=_probability,
        default=0.5,
        help="a class whose largest probability in an image is not above this gets no pixels (default: 0.5)",
    )
    group = parser.add_argument_group("input options")
    group.add_argument("--logits", action="store_true", help="the files hold logits, not probabilities")
    group.add_argument(
        "--activation",
        choices=ACTIVATIONS,
        default=None,
        help="with --logits: softmax over the class axis or sigmoid per class "
        "(default: softmax for several class channels, sigmoid for one)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``rankseg`` argument parser with its three subcommands."""
    parser = argparse.ArgumentParser(
        prog="rankseg",
        description="Metric-optimal segmentation masks (expected Dice / IoU) from saved probability maps.",
        epilog="Run 'rankseg COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"rankseg {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    predict = commands.add_parser(
        "predict",
        help="write RankSEG masks for probability maps",
        description=(
            "Read probability maps with the class axis first, shape (classes, *spatial), one image per "
            f"file ({', '.join(ARRAY_SUFFIXES)}; NIfTI needs the 'nifti' extra), and write RankSEG's "
            "masks to --out in the same format, under the same name: int64 class indices (*spatial) "
            "for multiclass output, bool masks (classes, *spatial) for multilabel output (NIfTI: uint8). "
            "2-D multiclass masks are also written as 8-bit PNG."
        ),
    )
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="probability files, or folders of them")
    predict.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="folder for the masks (created)"
    )
    predict.add_argument("--force", action="store_true", help="overwrite existing output files")
    predict.add_argument(
        "--progress", action="store_true", help="show a progress bar even when stderr is not a terminal"
    )
    _add_model_options(predict, evaluate=False)
    predict.set_defaults(run=_predict, parser=predict)

    evaluate = commands.add_parser(
        "evaluate",
        help="compare argmax with RankSEG on probability maps and labels",
        description=(
            "Pair probability maps (--probs) with label maps (--labels) by file name without extension, "
            "and print argmax (multiclass) or a 0.5 threshold (multilabel) against each RankSEG solver: "
            "mDice^I and mIoU^I (per image, over the classes present in the labels or the prediction), "
            "mIoU^D (per class over the whole data set), time per image, and per-class gains. Labels are "
            f"integer class maps (*spatial) ({', '.join(LABEL_SUFFIXES)}), or 0/1 masks (classes, *spatial) "
            "for multilabel output."
        ),
    )
    evaluate.add_argument(
        "--probs", required=True, type=Path, metavar="DIR", help="folder of probability maps"
    )
    evaluate.add_argument("--labels", required=True, type=Path, metavar="DIR", help="folder of label maps")
    evaluate.add_argument(
        "--num-classes",
        type=_positive_int,
        default=None,
        metavar="N",
        help="expected number of class channels",
    )
    evaluate.add_argument(
        "--ignore-index", type=int, default=None, metavar="I", help="label value left out of every metric"
    )
    evaluate.add_argument(
        "--solvers",
        default="RMA",
        metavar="LIST",
        help="comma-separated RankSEG solvers to compare, e.g. RMA,exact (default: RMA)",
    )
    evaluate.add_argument("--json", type=Path, metavar="PATH", help="also save the results as JSON")
    evaluate.add_argument("--csv", type=Path, metavar="PATH", help="also save the table as CSV")
    evaluate.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="save a plot of per-image Dice gains (needs the 'plot' extra)",
    )
    evaluate.add_argument(
        "--workers", type=_positive_int, default=1, metavar="N", help="evaluate in N processes (default: 1)"
    )
    evaluate.add_argument(
        "--force", action="store_true", help="overwrite existing --json / --csv / --plot files"
    )
    evaluate.add_argument(
        "--progress", action="store_true", help="show a progress bar even when stderr is not a terminal"
    )
    _add_model_options(evaluate, evaluate=True)
    evaluate.set_defaults(run=_evaluate, parser=evaluate)

    demo = commands.add_parser(
        "demo",
        help="argmax against RankSEG on built-in example data, with a figure",
        description=(
            "Generate calibrated example probability maps (several classes: a few 2-D images and a 3-D "
            "volume, plus the one-class map of example 1 of Dai & Li, JMLR 2023), draw labels from them, "
            "print argmax against RankSEG's solvers (expected and realised Dice / IoU, time), and write a "
            "PNG figure of the masks."
        ),
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="PNG",
        help="where to write the figure (default: rankseg-demo.png in the current folder, "
        "or rankseg-demo-N.png when that exists)",
    )
    demo.add_argument(
        "--force", action="store_true", help="overwrite --out (and --save-data files) if they exist"
    )
    demo.add_argument(
        "--save-data",
        type=Path,
        default=None,
        metavar="DIR",
        help="also save the demo's probabilities and labels as .npy files, for 'rankseg evaluate'",
    )
    demo.set_defaults(run=_demo, parser=demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rankseg`` command; returns the exit status (0 ok, 1 a file failed, 2 usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UsageError as exc:
        args.parser.print_usage(sys.stderr)
        print(f"{args.parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{args.parser.prog}: interrupted", file=sys.stderr)
        return 130


# ----------------------------------------------------------------------------------------- shared


_FLAGS = {"metric": "--metric", "solver": "--solver", "smooth": "--smooth", "pruning_prob": "--pruning-prob"}


def _predictor(
    args: argparse.Namespace,
    solver: object,
    output_mode: str,
    report: Reporter,
    solver_flag: str = "--solver",
) -> RankSEG:
    """A RankSEG for these options, checked now; raises UsageError for a bad value.

    A solver that does not fit the metric is replaced by the one used (with a warning printed once).
    """
    if args.activation is not None and not args.logits:
        raise UsageError("--activation only applies with --logits")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            options = resolve_options(args.metric, args.smooth, output_mode, solver, args.pruning_prob)
        except (ValueError, TypeError, NotImplementedError) as exc:
            message = str(exc)
            flag = {**_FLAGS, "solver": solver_flag}.get(message.split(" ", 1)[0])
            raise UsageError(f"{flag}: {message}" if flag else message) from None
    for warning in caught:
        report.warn(str(warning.message))
    chosen = options.solver if not (solver is DEFAULT_SOLVER and options.metric == "acc") else DEFAULT_SOLVER
    return RankSEG(args.metric, args.smooth, output_mode, chosen, args.pruning_prob)


def _check_output(path: Path | None, force: bool) -> None:
    if path is not None and not force and path.exists():
        raise InputError(path, "exists; pass --force to overwrite it")
    if path is not None and not path.parent.is_dir():
        raise InputError(path, f"cannot be written: the folder {path.parent} does not exist")


def _progress_enabled(args: argparse.Namespace) -> bool:
    return bool(args.progress) or sys.stderr.isatty()


# ---------------------------------------------------------------------------------------- predict


def _expand_inputs(inputs: Iterable[str], report: Reporter) -> list[Path]:
    files: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and not p.name.startswith(".") and split_suffix(p)[1] in ARRAY_SUFFIXES
            )
            if not found:
                report.error(f"{path}: folder holds no probability files ({', '.join(ARRAY_SUFFIXES)})")
            files += found
        elif path.exists():
            files.append(path)
        else:
            report.error(f"{path}: does not exist")
    return files


def _predict(args: argparse.Namespace) -> int:
    report = Reporter("predict")
    solver = args.solver if args.solver is not None else DEFAULT_SOLVER
    first_mode = args.output_mode or "multiclass"
    # checked now (a bad option is a usage error); a predictor per output mode, made when first needed
    predictors = {first_mode: _predictor(args, solver, first_mode, report)}

    def predictor_for(mode: str) -> RankSEG:
        if mode not in predictors:
            predictors[mode] = _predictor(args, solver, mode, report)
        return predictors[mode]

    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a folder")
    args.out.mkdir(parents=True, exist_ok=True)

    files = _expand_inputs(args.inputs, report)
    first_by_stem: dict[str, Path] = {}
    progress = Progress(len(files), "rankseg predict", _progress_enabled(args))
    written = 0
    for path in files:
        try:
            stem, suffix = split_suffix(path)
            if suffix not in ARRAY_SUFFIXES:
                raise InputError(
                    path,
                    f"unsupported file type {suffix or '(none)'!r}; "
                    f"expected one of {', '.join(ARRAY_SUFFIXES)}",
                )
            if stem in first_by_stem:
                raise InputError(
                    path,
                    f"has the same name as {first_by_stem[stem]}; "
                    f"their masks would both be {args.out / stem}.*",
                )
            first_by_stem[stem] = path
            target = args.out / f"{stem}{suffix}"
            if target.exists() and target.resolve() == path.resolve():
                raise InputError(
                    path,
                    f"is its own output {target}; choose another --out folder (inputs are never overwritten)",
                )
            _write_prediction(path, target, predictor_for, args)
            written += 1
        except InputError as exc:
            report.error(str(exc))
        except Exception as exc:  # named, reported, and the batch goes on
            report.error(f"{path}: {type(exc).__name__}: {exc}")
        progress.step(path.name)
    progress.close()
    if report.failed:
        report.warn(f"{report.failed} problem(s); {written} of {len(files)} file(s) written")
        return 1
    return 0


def _write_prediction(
    path: Path, target: Path, predictor_for: Callable[[str], RankSEG], args: argparse.Namespace
) -> None:
    probs, like = load_probs(path, logits=args.logits, activation=args.activation)
    classes = probs.shape[0]
    mode = args.output_mode or ("multiclass" if classes > 1 else "multilabel")
    png = (
        target.with_name(split_suffix(target)[0] + ".png")
        if mode == "multiclass" and probs.ndim == 3
        else None
    )
    for out in (target, png):
        if out is not None and not args.force and out.exists():
            raise InputError(out, "exists; pass --force to overwrite it")
    try:
        mask = predictor_for(mode)(probs[None])[0]
    except ValueError as exc:
        raise InputError(path, str(exc)) from None
    write_mask(target, mask, like=like, num_classes=classes, force=args.force)
    shown = [str(target)]
    if png is not None:
        write_mask(png, mask, num_classes=classes, force=args.force)
        shown.append(str(png))
    kind = "labels" if mode == "multiclass" else "masks"
    print(f"{path} -> {', '.join(shown)} ({mode} {kind} {tuple(mask.shape)})", flush=True)


# --------------------------------------------------------------------------------------- evaluate


def _files_by_stem(folder: Path, suffixes: tuple[str, ...], what: str, report: Reporter) -> dict[str, Path]:
    if not folder.is_dir():
        raise UsageError(f"--{what} {folder} is not a folder")
    found: dict[str, Path] = {}
    skipped = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        stem, suffix = split_suffix(path)
        if suffix not in suffixes:
            skipped.append(path.name)
            continue
        if stem in found:
            report.error(f"{path}: has the same name as {found[stem]}; keep one file per image in --{what}")
            continue
        found[stem] = path
    if skipped:
        report.warn(
            f"ignored {len(skipped)} file(s) in {folder} that are not {', '.join(suffixes)}: "
            + ", ".join(skipped)
        )
    return found


def _solver_list(args: argparse.Namespace, report: Reporter) -> tuple[str, ...]:
    names = [s.strip() for s in args.solvers.split(",") if s.strip()]
    if not names:
        raise UsageError(f"--solvers must name at least one solver (e.g. RMA,exact); got {args.solvers!r}")
    if args.metric.strip().lower() in ("acc", "accuracy"):
        raise UsageError("--metric must be dice or iou for evaluate (accuracy has no RankSEG solver)")
    solvers = [
        _predictor(args, name, args.output_mode or "multiclass", report, "--solvers").solver for name in names
    ]
    return tuple(dict.fromkeys(solvers))  # without repeats, in the order given


def _evaluate(args: argparse.Namespace) -> int:
    report = Reporter("evaluate")
    solvers = _solver_list(args, report)
    plt = None
    try:
        for path in (args.json, args.csv, args.plot):
            _check_output(path, args.force)
        if args.plot is not None:
            plt = _pyplot()
    except InputError as exc:
        report.error(str(exc))
        return 1
    except ImportError:
        report.error(PLOT_HINT)
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
            )
        )
    unused = sorted(set(labels) - set(probs))
    if unused:
        report.warn(
            f"{len(unused)} label file(s) have no probability map and were skipped: {', '.join(unused)}"
        )

    results = _run_tasks(
        tasks, args.workers, Progress(len(tasks), "rankseg evaluate", _progress_enabled(args))
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
    print(
        f"{len(good)} image(s), {summary.num_classes} class(es), RankSEG metric={args.metric}, "
        f"probs={args.probs}, labels={args.labels}" + (f" ({len(failed)} failed)" if failed else "")
    )
    print()
    print(format_table(summary))
    extra = {
        "probs": str(args.probs),
        "labels": str(args.labels),
        "metric": args.metric,
        "smooth": args.smooth,
        "ignore_index": args.ignore_index,
    }
    saved = []
    try:
        if args.json is not None:
            text = summary_json(summary, failed, extra).encode()
            saved.append(write_atomic(args.json, lambda f: f.write(text), force=args.force))
        if args.csv is not None:
            text_csv = summary_csv(summary).encode()
            saved.append(write_atomic(args.csv, lambda f: f.write(text_csv), force=args.force))
        if plt is not None:
            saved.append(_plot_gains(plt, summary, args.plot, args.force))
    except InputError as exc:
        report.error(str(exc))
    except OSError as exc:
        report.error(f"{exc.filename or 'output'}: cannot be written ({exc.strerror or exc})")
    for path in saved:
        print(f"saved {path}")
    return 1 if report.failed else 0


def _set_worker_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_tasks(tasks: list[EvalTask], workers: int, progress: Progress) -> list[PairResult]:
    """Results in the order of ``tasks``; in ``workers`` processes when more than one."""
    results: list[PairResult | None] = [None] * len(tasks)
    if workers == 1 or len(tasks) <= 1:
        for i, task in enumerate(tasks):
            results[i] = evaluate_pair(task)
            progress.step(task.name)
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(
            max_workers=workers, initializer=_set_worker_threads, initargs=(threads,)
        ) as pool:
            futures = {pool.submit(evaluate_pair, task): i for i, task in enumerate(tasks)}
            for future in as_completed(futures):
                i = futures[future]
                try:
                    results[i] = future.result()
                except Exception as exc:  # a worker that died: report the file
                    results[i] = PairResult(
                        tasks[i].name, error=f"{tasks[i].probs_path}: worker failed ({exc})"
                    )
                progress.step(tasks[i].name)
    progress.close()
    return [r for r in results if r is not None]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_gains(plt, summary, path: Path, force: bool) -> Path:
    import io

    import numpy as np

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


# ------------------------------------------------------------------------------------------- demo


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
