"""``rankseg calibrate``: fit a temperature on validation logits and labels, write it as JSON.

The files are paired by name as ``rankseg evaluate`` pairs them and read through the command
line's one reader (:func:`rankseg.cli.io.read_array`). :meth:`rankseg.calibration.TemperatureScaling.fit`
reads its data once per Newton step, so the pairs are streamed to it from the files on every pass
(:class:`ValidationFiles`): the validation set never has to fit in memory. A pair that cannot be
used is reported by name and left out on the first pass; the fit goes on with the others (exit
status 1, as for any failed file). The result goes through the atomic writer, with the
``--force`` and no-output-among-the-inputs rules of the other subcommands.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..calibration import TemperatureScaling
from ._common import Reporter, UsageError, check_outputs
from .evaluate import (
    _files_by_stem,
    _input_folder,
    load_labels,
    load_logits,
    probabilities_reason,
)
from .io import ARRAY_SUFFIXES, LABEL_SUFFIXES, InputError, write_atomic

__all__ = ["ValidationFiles", "run_command"]


@dataclass(frozen=True)
class _Pair:
    name: str
    logits: Path
    labels: Path


class ValidationFiles:
    """The (logits, labels) file pairs as :meth:`TemperatureScaling.fit` reads them: calling the
    object starts a new pass, a generator of ``(logits (1, C, *spatial), labels (1, ...))`` batches,
    one file pair at a time.

    The first pass checks every pair (the reader's checks, finite logits, labels that fit them, no
    map that looks like probabilities, the class count of the first usable pair) and reports the
    ones that fail through ``report``; later passes read only the pairs that passed, and a pair that
    fails then (changed meanwhile) stops the fit with an :class:`InputError`.
    """

    def __init__(
        self, pairs: list[_Pair], activation: str, ignore_index: int | None, report: Reporter
    ) -> None:
        self.pairs = pairs
        self.activation = activation
        self.ignore_index = ignore_index
        self.report = report
        self.usable: list[_Pair] = []  # the pairs that passed the first pass (so far)
        self.passes = 0
        self.num_classes: int | None = None
        self.first: _Pair | None = None

    def __call__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.passes += 1
        return self._first_pass() if self.passes == 1 else self._next_pass(list(self.usable))

    def _first_pass(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for pair in self.pairs:
            try:
                batch = self.load(pair)
            except InputError as exc:
                self.report.error(str(exc))
                continue
            self.usable.append(pair)
            yield batch

    def _next_pass(self, pairs: list[_Pair]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for pair in pairs:
            try:
                yield self.load(pair)
            except InputError as exc:
                raise InputError(
                    exc.path, f"{exc.reason} (it was usable on the first pass over the files)"
                ) from None

    def load(self, pair: _Pair) -> tuple[torch.Tensor, torch.Tensor]:
        """One pair as a batch of one image, checked; InputError naming the file otherwise."""
        logits, _ = load_logits(pair.logits)
        classes = logits.shape[0]
        if self.activation == "softmax" and classes == 1:
            raise InputError(
                pair.logits, "has one class channel: softmax over it is always 1; use --activation sigmoid"
            )
        if self.num_classes is not None and classes != self.num_classes:
            raise InputError(
                pair.logits,
                f"has {classes} class channels (shape {logits.shape}) but {self.first.logits} has "
                f"{self.num_classes}; one calibration is fitted on logits of one model",
            )
        reason = probabilities_reason(logits, self.activation)
        if reason is not None:
            raise InputError(
                pair.logits,
                f"looks like probabilities, not logits ({reason}); a temperature is fitted on the "
                f"logits before the {self.activation}",
            )
        multiclass = self.activation == "softmax"
        labels = load_labels(pair.labels, pair.logits, logits.shape, multiclass, self.ignore_index)
        if self.num_classes is None:
            self.num_classes, self.first = classes, pair
        return torch.from_numpy(logits)[None], torch.from_numpy(labels)[None]


def _default_activation(pairs: list[_Pair]) -> str:
    """softmax for logits with several class channels, sigmoid for one: decided by the first pair
    whose logits can be read (the others are checked, and reported, during the fit)."""
    for pair in pairs:
        try:
            logits, _ = load_logits(pair.logits)
        except InputError:
            continue
        return "softmax" if logits.shape[0] > 1 else "sigmoid"
    return "softmax"


def _pairs(args: argparse.Namespace, report: Reporter) -> list[_Pair]:
    logits = _files_by_stem(args.logits, ARRAY_SUFFIXES, "logits", report)
    labels = _files_by_stem(args.labels, LABEL_SUFFIXES, "labels", report)
    pairs = []
    for stem, path in logits.items():
        if stem not in labels:
            report.error(f"{path}: no label file named {stem}.* in {args.labels}")
            continue
        pairs.append(_Pair(stem, path, labels[stem]))
    unused = sorted(set(labels) - set(logits))
    if unused:
        report.warn(f"{len(unused)} label file(s) have no logits and were skipped: {', '.join(unused)}")
    return pairs


def _temperature_lines(scaler: TemperatureScaling) -> list[str]:
    temperature = scaler.temperature_
    if temperature.dim() == 0:
        return [f"temperature: T = {float(temperature):.7g} (global)"]
    width = len(str(temperature.numel() - 1))
    lines = ["temperature per class:"]
    lines += [f"  class {c:>{width}}: T = {float(t):.7g}" for c, t in enumerate(temperature)]
    return lines


def run_command(args: argparse.Namespace) -> int:
    report = Reporter("calibrate")
    inputs = {"--logits": _input_folder(args.logits, "--logits")}
    inputs["--labels"] = _input_folder(args.labels, "--labels")
    if args.seed is not None and args.subsample is None:
        raise UsageError("--seed only applies with --subsample (it draws the pixels kept)")
    try:
        check_outputs({"--out": args.out}, inputs, args.force)
    except InputError as exc:
        report.error(str(exc))
        return 1

    pairs = _pairs(args, report)
    if not pairs:
        report.error(
            f"no pair of logits and labels to fit on in --logits {args.logits} and --labels {args.labels}"
        )
        return 1
    activation = args.activation or _default_activation(pairs)
    files = ValidationFiles(pairs, activation, args.ignore_index, report)
    scaler = TemperatureScaling(
        activation,
        per_class=args.per_class,
        ignore_index=args.ignore_index,
        subsample=args.subsample,
        seed=args.seed if args.seed is not None else 0,
    )
    try:
        scaler.fit(files)
    except InputError as exc:  # a file that changed between passes
        report.error(str(exc))
        return 1
    except (ValueError, TypeError) as exc:  # the data as a whole admit no temperature
        if not files.usable:
            report.error("no pair of files could be used; nothing to fit on")
        else:
            report.error(
                f"cannot fit a temperature on the {len(files.usable)} usable pair(s) of files: {exc}"
            )
        return 1

    text = (json.dumps(scaler.state_dict(), indent=2) + "\n").encode()
    try:
        saved = write_atomic(args.out, lambda f: f.write(text), force=args.force)
    except InputError as exc:
        report.error(str(exc))
        return 1
    used = files.usable
    failed = len(pairs) - len(used)
    unit = "labelled pixels" if activation == "softmax" else "labelled (pixel, class) elements"
    per = "pixel" if activation == "softmax" else "element"
    print(
        f"{len(used)} pair(s) of files, {scaler.num_classes_} class(es), activation={activation}, "
        f"logits={args.logits}, labels={args.labels}" + (f" ({failed} failed)" if failed else "")
    )
    for line in _temperature_lines(scaler):
        print(line)
    print(
        f"NLL per labelled {per}: {_nll(scaler.nll_before_)} before -> {_nll(scaler.nll_after_)} after "
        f"({scaler.n_pixels_} {unit}, {scaler.n_passes_} passes over the files)",
        flush=True,
    )
    if not args.quiet:
        print(f"saved {saved}", flush=True)
    return 1 if report.failed else 0


def _nll(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.6f}"
