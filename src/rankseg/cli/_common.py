"""What every ``rankseg`` subcommand shares: usage errors, the error reporter, the progress bar,
option parsers and the predictor built from the command's options."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import TextIO

from .._options import DEFAULT_SOLVER, resolve_options
from .._predictor import RankSEG
from .io import InputError


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
    """A tqdm progress bar on stderr, one step per file: ``rankseg evaluate [####......] 2/5 case2``.

    Silent unless ``enabled`` (see :func:`progress_enabled`) and there is something to count.
    """

    def __init__(self, total: int, label: str, enabled: bool, stream: TextIO | None = None) -> None:
        self.total, self.label, self.enabled = total, label, enabled and total > 0
        self.done = 0
        self._bar = None
        if self.enabled:
            from tqdm import tqdm

            class Bar(tqdm):
                monitor_interval = 0  # no monitor thread (evaluate --workers forks worker processes)
                name = ""  # the last file done, shown after the count

                @property
                def format_dict(self) -> dict:
                    return {**super().format_dict, "name": self.name}

            self._bar = Bar(
                total=total,
                desc=label,
                file=stream or sys.stderr,
                ascii=".#",
                bar_format="{desc} [{bar:20}] {n_fmt}/{total_fmt} {name}  {elapsed}<{remaining}",
            )

    def step(self, name: str) -> None:
        """Count one more file done, ``name`` being the last one."""
        self.done += 1
        if self._bar is not None:
            self._bar.name = name
            self._bar.update(1)

    def close(self) -> None:
        """Draw the final state and end the line (when enabled and anything was counted)."""
        if self._bar is not None:
            self._bar.close()


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0; got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0; got {text!r}")
    return value


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1]; got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1]; got {text!r}")
    return value


_FLAGS = {"metric": "--metric", "solver": "--solver", "smooth": "--smooth", "pruning_prob": "--pruning-prob"}


def predictor_from_args(
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


def check_output(path: Path | None, force: bool) -> None:
    if path is not None and not force and path.exists():
        raise InputError(path, "exists; pass --force to overwrite it")
    if path is not None and not path.parent.is_dir():
        raise InputError(path, f"cannot be written: the folder {path.parent} does not exist")


def progress_enabled(args: argparse.Namespace) -> bool:
    """The progress bar is drawn when stderr is a terminal or ``--progress`` asks, never with ``--quiet``."""
    return not args.quiet and (bool(args.progress) or sys.stderr.isatty())
