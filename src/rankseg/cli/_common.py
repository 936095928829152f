"""What every ``rankseg`` subcommand shares: usage errors, the error reporter, the progress bar,
option parsers, the predictor built from the command's options, and the checks of input folders
and output paths."""

from __future__ import annotations

import argparse
import math
import os
import stat
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from .._options import DEFAULT_SOLVER, resolve_options
from .._predictor import RankSEG
from .io import InputError, describe_os_error, split_suffix


class UsageError(Exception):
    """A wrong combination of options: reported like argparse's own errors (exit status 2)."""


class Reporter:
    """Errors and warnings on stderr, prefixed with the command; remembers whether any file failed."""

    def __init__(self, command: str, stream: TextIO | None = None) -> None:
        self.prog = f"rankseg {command}"
        self.stream = stream or sys.stderr
        self.failed = 0
        self.warned: set[str] = set()

    def error(self, message: str) -> None:
        self.failed += 1
        print(f"{self.prog}: error: {message}", file=self.stream, flush=True)

    def warn(self, message: str) -> None:
        """Print a warning; the same warning again (another file, another worker) is not repeated."""
        if message in self.warned:
            return
        self.warned.add(message)
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


def _number(text: str, convert: Callable[[str], Any], allowed: str, ok: Callable[[Any], bool]) -> Any:
    """``convert(text)`` if ``ok`` accepts it; else the argparse error ``expected ALLOWED; got TEXT``."""
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {allowed}; got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer ``>= 1`` (``--workers``)."""
    return _number(text, int, "a positive integer", lambda v: v >= 1)


def non_negative_int(text: str) -> int:
    """An integer ``>= 0`` (``--seed``)."""
    return _number(text, int, "an integer >= 0", lambda v: v >= 0)


def int64(text: str) -> int:
    """An integer that int64 label maps can hold (``--ignore-index``)."""
    allowed = "an integer from -2**63 to 2**63-1 (labels are read as int64)"
    return _number(text, int, allowed, lambda v: -(2**63) <= v < 2**63)


def non_negative_float(text: str) -> float:
    """A finite number ``>= 0`` (``--smooth``)."""
    return _number(text, float, "a finite number >= 0", lambda v: 0 <= v < math.inf)


def probability(text: str) -> float:
    """A number in ``[0, 1]`` (``--pruning-prob``)."""
    return _number(text, float, "a number in [0, 1]", lambda v: 0.0 <= v <= 1.0)


def fraction(text: str) -> float:
    """A number in ``(0, 1]`` (``--subsample``)."""
    return _number(text, float, "a fraction in (0, 1]", lambda v: 0.0 < v <= 1.0)


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


def stat_or_reason(path: Path) -> tuple[os.stat_result | None, str]:
    """``os.stat(path)``, or None and why not (does not exist, name too long, symbolic link loop, ...)."""
    try:
        return os.stat(path), ""
    except FileNotFoundError:
        return None, "does not exist"
    except OSError as exc:
        return None, describe_os_error(exc)


def is_folder(path: Path) -> bool:
    info, _ = stat_or_reason(path)
    return info is not None and stat.S_ISDIR(info.st_mode)


def folder_entries(folder: Path, suffixes: tuple[str, ...], report: Reporter) -> list[Path]:
    """The entries of ``folder`` named ``*{suffix}``, sorted, whatever they are (a folder, a FIFO or
    a broken link so named is kept, to be reported by name when read). Hidden names (temporary
    files) are left out; other entries are named in one warning."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        report.error(f"{folder}: cannot list the folder ({describe_os_error(exc)})")
        return []
    found, ignored = [], []
    for name in names:
        if name.startswith("."):
            continue
        if split_suffix(name)[1] in suffixes:
            found.append(folder / name)
        else:
            ignored.append(name + ("/" if is_folder(folder / name) else ""))
    if ignored:
        report.warn(
            f"ignored {len(ignored)} file(s) in {folder} that are not {', '.join(suffixes)}: "
            + ", ".join(ignored)
        )
    return found


def _real(path: Path) -> str:
    return os.path.realpath(path)  # never raises: a symbolic link loop is left as it is


def _places(path: Path) -> set[str]:
    """Where writing ``path`` lands: the name in its real folder (a rename replaces a link there)
    and, when it is a link, the file it points to."""
    return {os.path.join(_real(path.parent), path.name), _real(path)}


def _inside(place: str, folder: Path) -> bool:
    outer = _real(folder)
    return place == outer or place.startswith(outer.rstrip(os.sep) + os.sep)


def check_outputs(outputs: dict[str, Path | None], input_folders: dict[str, Path], force: bool) -> None:
    """Check output paths (``{"--json": path}``) before any work.

    UsageError: an output lies inside an input folder (``{"--labels": path}``), itself or through a
    symbolic link, with or without ``force``, or two options name one file. InputError: the output
    exists (without ``force``), is a folder, or its folder does not exist.
    """
    given = {flag: path for flag, path in outputs.items() if path is not None}
    seen: dict[str, str] = {}
    for flag, path in given.items():
        places = sorted(_places(path))
        for place in places:
            for option, folder in input_folders.items():
                if _inside(place, folder):
                    raise UsageError(
                        f"{flag} {path} is inside the input folder {option} {folder}; "
                        "write outputs outside the input folders"
                    )
            if place in seen:
                raise UsageError(f"{seen[place]} and {flag} name the same file {path}")
        seen.update(dict.fromkeys(places, flag))
    for flag, path in given.items():
        info, reason = stat_or_reason(path)
        if info is not None and stat.S_ISDIR(info.st_mode):
            raise InputError(path, f"is a folder; {flag} needs the name of a file to write")
        if info is not None and not force:
            raise InputError(path, "exists; pass --force to overwrite it")
        if info is None and reason != "does not exist":
            raise InputError(path, f"cannot be written ({reason})")
        if not is_folder(path.parent):
            raise InputError(path, f"cannot be written: the folder {path.parent} does not exist")


def prepare_out_folder(out: Path, input_folders: Iterable[Path]) -> None:
    """Create ``--out`` (with its parents); UsageError when it cannot be, or lies among the inputs."""
    for folder in input_folders:
        if _inside(_real(out), folder):
            raise UsageError(
                f"--out {out} is inside the input folder {folder}; write the masks outside the input folders"
            )
    info, reason = stat_or_reason(out)
    if info is not None:
        if not stat.S_ISDIR(info.st_mode):
            raise UsageError(f"--out {out} exists and is not a folder")
        return
    if reason != "does not exist":
        raise UsageError(f"--out {out}: cannot create the folder ({reason})")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = f" at {exc.filename}" if exc.filename and Path(exc.filename) != out else ""
        raise UsageError(f"--out {out}: cannot create the folder ({describe_os_error(exc)}{where})") from None


def progress_enabled(args: argparse.Namespace) -> bool:
    """The progress bar is drawn when stderr is a terminal or ``--progress`` asks, never with ``--quiet``."""
    return not args.quiet and (bool(args.progress) or sys.stderr.isatty())
