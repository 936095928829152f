"""The ``rankseg`` command: ``predict``, ``evaluate``, ``calibrate``, ``nnunet`` and ``demo``.

    rankseg predict probs/*.npy --out masks/            # masks from saved probability maps
    rankseg evaluate --probs probs/ --labels labels/    # argmax against RankSEG on your data
    rankseg calibrate --logits val/ --labels val_labels/ --out calibration.json
    rankseg nnunet pred/ --out pred_rankseg/            # after nnUNetv2_predict --save_probabilities
    rankseg evaluate --nnunet pred/ --labels labelsTs/  # nnU-Net's segmentations against RankSEG's
    rankseg demo                                        # see it work on built-in data

Every error names the file and the reason; a file that fails does not stop the others, and the
exit status is 1 when any file failed, 2 for a usage error, 130 / 143 when stopped by SIGINT /
SIGTERM and 141 when stdout was closed (``| head``). Outputs are written atomically and an
existing file is only replaced with ``--force``; an input is never an output.

The command needs the ``cli`` extra (Pillow, matplotlib, tqdm: ``pip install "rankseg[cli]"``);
without it every subcommand stops before any work with one error naming the extra and exit status
1 (2 stays reserved for mistakes in the command line). ``--help`` and ``--version`` work without it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ._common import (
    UsageError,
    fraction,
    int64,
    non_negative_float,
    non_negative_int,
    positive_int,
    probability,
)
from ._runner import DASK_EXTRA_HINT, dask_address, runner_options_conflict, signals_handled
from .calibrate import run_command as _calibrate
from .demo import run_command as _demo
from .evaluate import ACTIVATIONS
from .evaluate import run_command as _evaluate
from .figures import FIGURE_FORMATS, figure_format
from .io import ARRAY_SUFFIXES, LABEL_SUFFIXES
from .nnunet import run_command as _nnunet
from .predict import run_command as _predict

__all__ = ["main"]

#: What the command line needs beyond the library (the ``cli`` extra): import name -> package name.
CLI_EXTRA = {"PIL.Image": "pillow", "matplotlib": "matplotlib", "tqdm": "tqdm"}
CLI_EXTRA_HINT = 'pip install "rankseg[cli]"'


def missing_cli_extra() -> list[str]:
    """The packages of the ``cli`` extra that cannot be imported here (an empty list when all can)."""
    missing = []
    for module, package in CLI_EXTRA.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    return missing


def _figure_path(text: str) -> Path:
    try:
        figure_format(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return Path(text)


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    quiet = parser.add_mutually_exclusive_group()
    quiet.add_argument(
        "--progress", action="store_true", help="show a progress bar even when stderr is not a terminal"
    )
    quiet.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bar and no line per file written; errors and warnings still go to stderr",
    )


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
        type=non_negative_float,
        default=0.0,
        help="smoothing constant of the metric (default: 0)"
        + ("; also used by the reported metrics" if evaluate else ""),
    )
    group.add_argument(
        "--pruning-prob",
        type=probability,
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
        "(default: the calibration's with --calibration; else softmax for several class channels, "
        "sigmoid for one)",
    )
    group.add_argument(
        "--calibration",
        type=Path,
        default=None,
        metavar="FILE",
        help="with --logits: divide the logits by the temperature in FILE (written by 'rankseg calibrate') "
        "before the activation"
        + (
            "; the table then also shows RankSEG on the calibrated probabilities and the ECE"
            if evaluate
            else ""
        ),
    )


class _RunnerOption(argparse.Action):
    """Stores ``--workers`` / ``--dask``; whichever comes second checks that the two go together."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[override]
        setattr(namespace, self.dest, values)
        conflict = runner_options_conflict(
            getattr(namespace, "workers", None), getattr(namespace, "dask", None)
        )
        if conflict is not None:
            raise argparse.ArgumentError(self, conflict)


def _add_runner_options(parser: argparse.ArgumentParser) -> None:
    """Where the per-file work runs (read by ``_runner.executor_from_args`` alone)."""
    group = parser.add_argument_group("where the files are worked on")
    group.add_argument(
        "--workers",
        type=positive_int,
        action=_RunnerOption,
        default=None,  # None: 1; and "not given", which --dask ADDRESS needs
        metavar="N",
        help="work on N files at a time, in N processes (default: 1); with --dask local, the number "
        "of Dask worker processes",
    )
    group.add_argument(
        "--dask",
        type=dask_address,
        action=_RunnerOption,
        default=None,
        metavar="ADDRESS",
        help="send the files to the workers of a Dask cluster: its scheduler's address "
        "(tcp://host:8786) or scheduler file (.json), or 'local' for a local cluster of --workers "
        "processes. The workers read and write the files themselves: they must see them at the same "
        f"paths (a shared file system). Needs the 'dask' extra ({DASK_EXTRA_HINT})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``rankseg`` argument parser with its four subcommands."""
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
    _add_runner_options(predict)
    _add_output_options(predict)
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
            "for multilabel output. With --nnunet PRED_DIR (or --probs naming a folder with plans.json): "
            "nnU-Net's own segmentations against RankSEG's on an nnUNetv2_predict --save_probabilities "
            "folder, Dice per label or region and mean as nnU-Net computes it (labels: CASE<file_ending> "
            "read with the plans' reader/writer; needs the 'nnunet' extra)."
        ),
    )
    probs = evaluate.add_mutually_exclusive_group(required=True)
    probs.add_argument(
        "--probs",
        type=Path,
        metavar="DIR",
        help="folder of probability maps (one holding plans.json is read as with --nnunet)",
    )
    probs.add_argument(
        "--nnunet",
        type=Path,
        metavar="PRED_DIR",
        help="an nnUNetv2_predict --save_probabilities folder, evaluated against --labels as nnU-Net "
        "does (--smooth then only applies to RankSEG)",
    )
    evaluate.add_argument("--labels", required=True, type=Path, metavar="DIR", help="folder of label maps")
    evaluate.add_argument(
        "--num-classes",
        type=positive_int,
        default=None,
        metavar="N",
        help="expected number of class channels",
    )
    evaluate.add_argument(
        "--ignore-index", type=int64, default=None, metavar="I", help="label value left out of every metric"
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
        type=_figure_path,
        metavar="FIGURE",
        help=f"save a plot of per-image Dice gains ({', '.join(FIGURE_FORMATS)}: the format by the suffix)",
    )
    _add_runner_options(evaluate)
    evaluate.add_argument(
        "--force", action="store_true", help="overwrite existing --json / --csv / --plot files"
    )
    _add_output_options(evaluate)
    _add_model_options(evaluate, evaluate=True)
    evaluate.set_defaults(run=_evaluate, parser=evaluate)

    nnunet = commands.add_parser(
        "nnunet",
        help="write RankSEG segmentations for an nnUNetv2_predict folder, as nnU-Net writes its own",
        description=(
            "Read the probabilities that 'nnUNetv2_predict ... --save_probabilities' saved in PRED_DIR "
            "(CASE.npz with CASE.pkl, dataset.json, plans.json) and write each case's RankSEG "
            "segmentation to OUT_DIR as nnU-Net writes its own: the plans' reader/writer, dataset.json's "
            "file ending, the .pkl's image geometry; dataset.json and plans.json are copied beside them. "
            "Label-based models: multiclass RankSEG; region-based models (regions_class_order): one "
            "mask per region, then nnU-Net's region-to-label conversion. Needs the 'nnunet' extra."
        ),
    )
    nnunet.add_argument("pred_dir", type=Path, metavar="PRED_DIR", help="the nnUNetv2_predict output folder")
    nnunet.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="OUT_DIR",
        help="folder for the segmentations (created; not PRED_DIR or inside it)",
    )
    nnunet.add_argument("--force", action="store_true", help="overwrite existing segmentations")
    _add_runner_options(nnunet)
    _add_output_options(nnunet)
    group = nnunet.add_argument_group("RankSEG options")
    group.add_argument(
        "--metric", default="dice", help="metric RankSEG maximises: dice, iou or acc (default: dice)"
    )
    group.add_argument(
        "--solver",
        default=None,
        help="RMA (default), exact, BA, TRNA, BA+TRNA; acc gives nnU-Net's own segmentations",
    )
    group.add_argument(
        "--smooth", type=non_negative_float, default=0.0, help="smoothing constant of the metric (default: 0)"
    )
    group.add_argument(
        "--pruning-prob",
        type=probability,
        default=0.5,
        help="a label or region whose largest probability in a case is not above this gets no voxels "
        "(default: 0.5)",
    )
    nnunet.set_defaults(run=_nnunet, parser=nnunet)

    calibrate = commands.add_parser(
        "calibrate",
        help="fit a temperature on validation logits and labels (for --calibration)",
        description=(
            "Pair logit maps (--logits, (classes, *spatial) one image per file) with label maps "
            "(--labels) by file name without extension, as evaluate does, and fit the temperature T "
            "that minimises the negative log-likelihood of the labels under softmax(logits / T) (or "
            "sigmoid): temperature scaling. The files are read again on every pass of the fit, so the "
            "validation set need not fit in memory. Writes the result as JSON to --out, for "
            "'rankseg predict/evaluate --logits --calibration FILE' and the integrations' calibration=, "
            "and prints the temperature(s), the NLL before and after, and the pixels used."
        ),
    )
    calibrate.add_argument("--logits", required=True, type=Path, metavar="DIR", help="folder of logit maps")
    calibrate.add_argument("--labels", required=True, type=Path, metavar="DIR", help="folder of label maps")
    calibrate.add_argument(
        "--out", required=True, type=Path, metavar="FILE", help="where to write the calibration (JSON)"
    )
    calibrate.add_argument(
        "--per-class", action="store_true", help="one temperature per class channel instead of one for all"
    )
    calibrate.add_argument(
        "--activation",
        choices=ACTIVATIONS,
        default=None,
        help="softmax over the class axis (labels: class indices) or sigmoid per class (labels: 0/1 "
        "masks); default: softmax for several class channels, sigmoid for one",
    )
    calibrate.add_argument(
        "--ignore-index", type=int64, default=None, metavar="I", help="label value left out of the fit"
    )
    calibrate.add_argument(
        "--subsample",
        type=fraction,
        default=None,
        metavar="F",
        help="fit on a fraction F in (0, 1] of the pixel positions (the same in every image)",
    )
    calibrate.add_argument(
        "--seed", type=non_negative_int, default=None, metavar="S", help="seed of --subsample (default: 0)"
    )
    calibrate.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    calibrate.add_argument("-q", "--quiet", action="store_true", help="no 'saved FILE' line")
    calibrate.set_defaults(run=_calibrate, parser=calibrate)

    demo = commands.add_parser(
        "demo",
        help="argmax against RankSEG on built-in example data, with a figure",
        description=(
            "Generate calibrated example probability maps (several classes: a few 2-D images and a 3-D "
            "volume, plus the one-class map of example 1 of Dai & Li, JMLR 2023), draw labels from them, "
            "print argmax against RankSEG's solvers (expected and realised Dice / IoU, time), and write a "
            "figure of the masks (PNG, PDF or SVG by the suffix of --out)."
        ),
    )
    demo.add_argument(
        "--out",
        type=_figure_path,
        default=None,
        metavar="FIGURE",
        help=f"where to write the figure, {', '.join(FIGURE_FORMATS)} (default: rankseg-demo.png in the "
        "current folder, or rankseg-demo-N.png when that exists)",
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
    """Run the ``rankseg`` command; returns the exit status (0 ok, 1 a file failed or the ``cli``
    extra is missing, 2 usage error, 130 / 143 interrupted by SIGINT / SIGTERM, 141 stdout closed)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = args.parser.prog
    missing = missing_cli_extra()
    if missing:
        print(
            f"{prog}: error: the rankseg command needs the 'cli' extra "
            f"(missing: {', '.join(missing)}): {CLI_EXTRA_HINT}",
            file=sys.stderr,
        )
        return 1
    with signals_handled():
        try:
            status = args.run(args)
            sys.stdout.flush()  # a closed stdout shows here, not at exit
            return status
        except UsageError as exc:
            args.parser.print_usage(sys.stderr)
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
        except BrokenPipeError:
            # stdout (or stderr) was closed by its reader, e.g. '| head -1': stop quietly, as Unix
            # tools stopped by SIGPIPE do, with the status a shell shows for them
            _silence_stdout()
            return 128 + getattr(signal, "SIGPIPE", 13)
        except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM (runner.Terminated)
            signum = getattr(exc, "signum", signal.SIGINT)
            _say(f"{prog}: {'terminated' if signum == signal.SIGTERM else 'interrupted'}")
            return 128 + signum
        except OSError as exc:  # a file problem no check foresaw: named, without a traceback
            where = f"{exc.filename}: " if exc.filename else ""
            _say(f"{prog}: error: {where}{exc.strerror or exc}")
            return 1


def _say(message: str) -> None:
    try:
        print(message, file=sys.stderr, flush=True)
    except OSError:
        pass


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
