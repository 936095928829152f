"""``rankseg predict``: RankSEG masks for saved probability maps."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from pathlib import Path

from .._options import DEFAULT_SOLVER
from .._predictor import RankSEG
from ._common import Progress, Reporter, UsageError, predictor_from_args, progress_enabled
from .evaluate import load_probs
from .io import ARRAY_SUFFIXES, InputError, split_suffix, write_mask


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


def run_command(args: argparse.Namespace) -> int:
    report = Reporter("predict")
    solver = args.solver if args.solver is not None else DEFAULT_SOLVER
    first_mode = args.output_mode or "multiclass"
    # checked now (a bad option is a usage error); a predictor per output mode, made when first needed
    predictors = {first_mode: predictor_from_args(args, solver, first_mode, report)}

    def predictor_for(mode: str) -> RankSEG:
        if mode not in predictors:
            predictors[mode] = predictor_from_args(args, solver, mode, report)
        return predictors[mode]

    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a folder")
    args.out.mkdir(parents=True, exist_ok=True)

    files = _expand_inputs(args.inputs, report)
    first_by_stem: dict[str, Path] = {}
    progress = Progress(len(files), "rankseg predict", progress_enabled(args))
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
    if not args.quiet:
        print(f"{path} -> {', '.join(shown)} ({mode} {kind} {tuple(mask.shape)})", flush=True)
