"""End-to-end runs of ``rankseg nnunet`` and ``rankseg evaluate --nnunet`` (issue 12).

Every run is a subprocess of the installed console script, on prediction folders that nnU-Net's own
planner, preprocessor and ``export_prediction_from_logits`` wrote (``tests/nnunet_folders.py``,
built once for the module). The command must write what :func:`postprocess_folder` writes (with
``--metric acc``: nnU-Net's own files), byte for byte with any ``--workers``; print the table
:func:`format_table` prints for :func:`evaluate_folder`; and name every bad case with its reason
while writing the others.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nnunetv2")

import SimpleITK as sitk
from PIL import Image

from rankseg.functional import rankseg
from rankseg.integration import nnunet

import nnunet_folders
from nnunet_folders import Built

RANKSEG = Path(sys.executable).with_name("rankseg")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
DOCS = Path(__file__).resolve().parents[1] / "docs"


def run(*args, cwd=None, env=None, timeout=180):
    assert RANKSEG.exists(), f"the console script is not installed at {RANKSEG}: pip install -e ."
    return subprocess.run(
        [str(RANKSEG), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env or ENV,
        timeout=timeout,
    )


def errors(stderr: str) -> list[str]:
    return [line.split(": error: ", 1)[1] for line in stderr.splitlines() if ": error: " in line]


def contents(folder: Path) -> dict[str, bytes]:
    """Every entry of ``folder`` (hidden ones too: a temporary file left behind shows) and its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Built]:
    root = tmp_path_factory.mktemp("nnunet-cli")
    return {
        "labels": nnunet_folders.build(nnunet_folders.LABELS, root / "labels"),
        "regions": nnunet_folders.build(nnunet_folders.REGIONS, root / "regions"),
        "png": nnunet_folders.build(nnunet_folders.PNG, root / "png"),
    }


@pytest.fixture(scope="module")
def library_dice(built, tmp_path_factory) -> dict[str, bytes]:
    """What ``postprocess_folder`` writes for the label-based folder with the default options."""
    out = tmp_path_factory.mktemp("library") / "out"
    nnunet.postprocess_folder(built["labels"].pred_dir, out)
    return contents(out)


def _copy(folder: Built, target: Path) -> Path:
    shutil.copytree(folder.pred_dir, target)
    return target


# ------------------------------------------------------------------------------- the documentation


def _console_blocks(markdown: str) -> list[tuple[str, str]]:
    """``(command, output)`` of every ``$ rankseg ...`` line in the ```console blocks."""
    runs, inside = [], False
    for line in markdown.splitlines():
        if line.strip().startswith("```"):
            inside = line.strip() == "```console"
        elif inside and line.startswith("$ "):
            runs.append((line[2:], []))
        elif inside:
            runs[-1][1].append(line)
    return [(command, "\n".join(output) + "\n") for command, output in runs]


def test_the_documented_runs_print_what_they_show_and_write_what_the_library_writes(
    built, library_dice, tmp_path
):
    folder = built["labels"]
    shutil.copytree(folder.pred_dir, tmp_path / "pred")
    shutil.copytree(folder.labels_dir, tmp_path / "labelsTs")
    with_bad_cases(folder, tmp_path / "bad")
    before = contents(tmp_path / "pred")
    documented = _console_blocks((DOCS / "integration-nnunet.md").read_text())
    assert [command.split()[:3] for command, _ in documented] == [
        ["rankseg", "nnunet", "pred"],
        ["rankseg", "evaluate", "--nnunet"],
        ["rankseg", "nnunet", "bad"],
    ]
    for command, shown in documented:
        result = run(*command.split()[1:], cwd=tmp_path)
        assert result.returncode == (1 if ": error: " in shown else 0), result.stderr
        assert result.stdout + result.stderr == shown, command  # stdout lines come first here

    assert contents(tmp_path / "pred_rankseg") == library_dice  # byte for byte, nothing else left
    assert contents(tmp_path / "pred") == before  # the prediction folder is read only
    # the bad cases are named (above), the good ones written, nothing half-written left
    assert contents(tmp_path / "bad_rankseg") == library_dice
    evaluation = nnunet.evaluate_folder(folder.pred_dir, folder.labels_dir, solvers=["RMA", "exact"])
    table = nnunet.format_table(evaluation)
    assert documented[1][1].endswith("\n\n" + table + "\n")
    assert documented[1][1].startswith("3 case(s), 2 label(s), RankSEG metric=dice, nnU-Net folder=pred")
    command, shown = documented[1]
    assert f"$ {command}\n{shown}" in (DOCS / "cli.md").read_text()  # the command line page shows it too
    shown_errors = errors(documented[2][1])
    assert [m.split(":", 1)[0] for m in shown_errors] == ["corrupt", "nopkl", "truncated", "twoclasses"]


def test_workers_write_the_same_bytes_and_lines_as_one_process(built, library_dice, tmp_path):
    folder = built["labels"]
    result = run("nnunet", folder.pred_dir, "--out", tmp_path / "out", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert contents(tmp_path / "out") == library_dice
    assert result.stdout.splitlines() == [
        f"{folder.pred_dir / case}.npz -> {tmp_path / 'out' / case}.nii.gz" for case in folder.cases
    ]


def test_acc_writes_nnunets_own_files_for_a_region_based_model(built, tmp_path):
    folder = built["regions"]
    out = tmp_path / "out"
    result = run("nnunet", folder.pred_dir, "--out", out, "--metric", "acc", "--solver", "argmax", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # --quiet
    # argmax does not fit regions (one sigmoid each): said once, not once per case
    assert result.stderr == (
        "rankseg nnunet: warning: solver 'argmax' does not fit output_mode='multilabel' for accuracy; "
        "using solver 'TR' instead\n"
    )
    assert sorted(contents(out)) == sorted(["dataset.json", "plans.json", "case0.nii.gz", "case1.nii.gz"])
    for name in contents(out):
        assert (out / name).read_bytes() == (folder.pred_dir / name).read_bytes(), name
    ours, theirs = (
        sitk.ReadImage(str(out / "case1.nii.gz")),
        sitk.ReadImage(str(folder.pred_dir / "case1.nii.gz")),
    )
    assert (ours.GetSpacing(), ours.GetOrigin(), ours.GetDirection()) == (
        theirs.GetSpacing(),
        theirs.GetOrigin(),
        theirs.GetDirection(),
    )
    assert ours.GetOrigin() != (0.0, 0.0, 0.0)  # a real geometry, kept


def test_a_2d_png_folder_gets_png_segmentations_as_nnunet_writes_them(built, tmp_path):
    folder = built["png"]  # NaturalImage2DIO, configuration "2d": probabilities (C, 1, H, W)
    out = tmp_path / "out"
    result = run("nnunet", folder.pred_dir, "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        f"{folder.pred_dir / case}.npz -> {out / case}.png" for case in folder.cases
    ]
    nnunet.postprocess_folder(folder.pred_dir, tmp_path / "library")
    assert contents(out) == contents(tmp_path / "library")  # byte for byte
    for case in folder.cases:
        with np.load(folder.pred_dir / f"{case}.npz") as saved:
            expected = rankseg(saved["probabilities"][None], metric="dice")[0]  # (1, H, W)
        with Image.open(out / f"{case}.png") as image:
            assert (image.format, image.mode) == ("PNG", "L")
            np.testing.assert_array_equal(np.asarray(image)[None], expected)

    result = run("nnunet", folder.pred_dir, "--out", tmp_path / "acc", "--metric", "acc", "-q")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert sorted(contents(tmp_path / "acc")) == sorted(
        ["dataset.json", "plans.json", *(f"{case}.png" for case in folder.cases)]
    )
    for name, data in contents(tmp_path / "acc").items():
        assert data == (folder.pred_dir / name).read_bytes(), name  # nnU-Net's own PNGs


def _nan_to_none(values):
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values]


def test_evaluate_detects_an_nnunet_folder_given_as_probs_and_saves_the_results(built, tmp_path):
    folder = built["regions"]
    paths = {"json": tmp_path / "r.json", "csv": tmp_path / "r.csv", "plot": tmp_path / "gains.png"}
    result = run(
        "evaluate", "--probs", folder.pred_dir, "--labels", folder.labels_dir,
        *(x for key, path in paths.items() for x in (f"--{key}", path)),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    evaluation = nnunet.evaluate_folder(folder.pred_dir, folder.labels_dir)
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"2 case(s), 3 region(s), RankSEG metric=dice, nnU-Net folder={folder.pred_dir}, "
        f"labels={folder.labels_dir}"
    )
    assert "\n".join(lines[4:-3]) == nnunet.format_table(evaluation)
    assert lines[-3:] == [f"saved {paths['json']}", f"saved {paths['csv']}", f"saved {paths['plot']}"]

    saved = json.loads(paths["json"].read_text())
    assert saved["keys"] == [[1, 2, 3], [2, 3], 3]
    assert saved["cases"] == ["case0", "case1"] and saved["failed"] == {}
    assert list(saved["methods"]) == ["nnU-Net", "RMA"]
    for method, values in saved["methods"].items():
        assert values["mean_dice"] == evaluation.mean_dice[method].tolist()
        assert values["foreground_mean_dice"] == evaluation.foreground_mean_dice[method]
        assert values["counts_tp_fp_fn_tn"] == evaluation.counts[method].tolist()
    assert len(saved["methods"]["RMA"]["seconds_per_case"]) == 2

    rows = list(csv.reader(io.StringIO(paths["csv"].read_text())))
    dice = ["Dice (1, 2, 3)", "Dice (2, 3)", "Dice 3", "Dice mean"]
    iou = ["IoU (1, 2, 3)", "IoU (2, 3)", "IoU 3", "IoU mean"]
    assert rows[0] == ["method", *dice, *iou, "seconds_per_case"]
    for row, method in zip(rows[1:], evaluation.methods, strict=True):
        assert row[0] == method
        assert [float(v) for v in row[1:5]] == [
            *evaluation.mean_dice[method].tolist(),
            evaluation.foreground_mean_dice[method],
        ]
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------- bad input


def with_bad_cases(folder: Built, target: Path) -> Path:
    """A copy of the label-based prediction folder plus one bad case of each kind the issue names."""
    pred = _copy(folder, target)
    shutil.copy(pred / "case0.npz", pred / "nopkl.npz")
    data = (pred / "case1.npz").read_bytes()
    (pred / "truncated.npz").write_bytes(data[: len(data) // 2])
    (pred / "corrupt.npz").write_bytes(b"not a zip file at all" * 10)
    with np.load(pred / "case1.npz") as saved:
        two = saved["probabilities"][:2]
    np.savez_compressed(pred / "twoclasses.npz", probabilities=two / two.sum(axis=0, keepdims=True))
    for name in ("truncated", "corrupt", "twoclasses"):
        shutil.copy(pred / "case1.pkl", pred / f"{name}.pkl")
    return pred


def test_evaluate_names_every_bad_case_and_evaluates_the_others(built, tmp_path):
    folder = built["labels"]
    bad = with_bad_cases(folder, tmp_path / "bad")
    result = run("evaluate", "--nnunet", bad, "--labels", folder.labels_dir)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert errors(result.stderr) == [
        f"corrupt: {bad / 'corrupt.npz'} cannot be read: it is not an .npz (zip) archive, "
        "the file is corrupt",
        f"nopkl: {bad / 'nopkl.npz'} has no nopkl.pkl beside it; nnUNetv2_predict --save_probabilities "
        "writes both (the .pkl holds the image geometry)",
        f"truncated: {bad / 'truncated.npz'} cannot be read, the file is corrupt or truncated "
        "(BadZipFile: File is not a zip file)",
        f"twoclasses: {bad / 'twoclasses.npz'} has 2 probability channel(s) (shape (2, 11, 17, 9)), but "
        "dataset.json defines 3 labels (0, 1, 2): the probabilities belong to another model",
    ]
    assert result.stdout.splitlines()[0].endswith(f"labels={folder.labels_dir} (4 failed)")
    evaluation = nnunet.evaluate_folder(folder.pred_dir, folder.labels_dir)
    assert result.stdout.endswith("\n\n" + nnunet.format_table(evaluation) + "\n")  # the good cases


@pytest.mark.parametrize(
    ("missing", "command"),
    [("plans.json", "nnunet"), ("dataset.json", "evaluate")],
)
def test_a_folder_without_plans_or_dataset_json_is_named(built, tmp_path, missing, command):
    pred = _copy(built["labels"], tmp_path / "pred")
    (pred / missing).unlink()
    if command == "nnunet":
        result = run("nnunet", pred, "--out", tmp_path / "out")
    else:
        result = run("evaluate", "--nnunet", pred, "--labels", built["labels"].labels_dir)
    assert result.returncode == 1
    assert errors(result.stderr) == [
        f"pred_dir '{pred}' has no {missing}; nnUNetv2_predict writes dataset.json and plans.json into "
        "its output folder: is this an nnU-Net prediction folder?"
    ]
    assert result.stdout == ""
    assert not (tmp_path / "out").exists()  # nothing is created for a folder that cannot be used


def test_existing_outputs_are_kept_without_force_the_others_written_and_replaced_with_it(
    built, library_dice, tmp_path
):
    folder, out = built["labels"], tmp_path / "out"
    nnunet.postprocess_folder(folder.pred_dir, out, {"metric": "acc"})
    (out / "case1.nii.gz").unlink()
    before = contents(out)
    result = run("nnunet", folder.pred_dir, "--out", out)
    assert result.returncode == 1
    assert errors(result.stderr) == [
        f"{case}: {out / case}.nii.gz exists; pass force=True (--force) to replace it"
        for case in ("case0", "case2")
    ]
    assert result.stdout == f"{folder.pred_dir / 'case1'}.npz -> {out / 'case1'}.nii.gz\n"
    after = contents(out)
    assert after.pop("case1.nii.gz") == library_dice["case1.nii.gz"]
    assert after == before  # untouched

    result = run("nnunet", folder.pred_dir, "--out", out, "--force", "-q")
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")
    assert contents(out) == library_dice


@pytest.mark.parametrize("where", ["itself", "inside"])
def test_the_output_folder_is_never_the_prediction_folder_or_inside_it(built, tmp_path, where):
    pred = _copy(built["labels"], tmp_path / "pred")
    before = contents(pred)
    if where == "itself":
        out = tmp_path / "pred" / ".." / "pred"
        message = (
            f"--out {out} is PRED_DIR {pred}: RankSEG's segmentations would replace nnU-Net's own; "
            "choose another folder"
        )
    else:
        (tmp_path / "link").symlink_to(pred)
        out = tmp_path / "link" / "rankseg"
        message = f"--out {out} is inside PRED_DIR {pred}; write the segmentations outside it"
    result = run("nnunet", pred, "--out", out, "--force")
    assert result.returncode == 2  # a usage error
    assert errors(result.stderr) == [message]
    assert contents(pred) == before


def test_without_nnunetv2_the_error_names_the_extra(built, tmp_path):
    blocker = tmp_path / "blocked" / "nnunetv2"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no module named nnunetv2')\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(blocker.parent), ENV.get("PYTHONPATH")]))}
    folder = built["labels"]
    result = run("nnunet", folder.pred_dir, "--out", tmp_path / "out", env=env)
    assert result.returncode == 1
    assert errors(result.stderr) == [
        "the rankseg nnunet command needs the 'nnunet' extra: rankseg.integration.nnunet needs nnU-Net v2 "
        '(the nnunetv2 package): pip install "rankseg[nnunet]" (no module named nnunetv2)'
    ]
    assert not (tmp_path / "out").exists()


def test_sigterm_stops_cleanly_leaving_whole_cases_and_no_temporary_files(built, tmp_path):
    folder, out = built["labels"], tmp_path / "out"
    pred = _copy(folder, tmp_path / "pred")
    for i in range(60):  # enough cases that the run is still going when the signal comes
        for suffix in (".npz", ".pkl"):
            shutil.copy(pred / f"case0{suffix}", pred / f"many{i:02d}{suffix}")
    proc = subprocess.Popen(
        [str(RANKSEG), "nnunet", str(pred), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert proc.stdout.readline().endswith(".nii.gz\n")  # working: the first case is written
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.strip().splitlines()[-1] == "rankseg nnunet: terminated"
    written = sorted(p.name for p in out.iterdir())
    assert not [name for name in written if name.startswith(".")], written  # no staging folder left
    segmentations = [name for name in written if name.endswith(".nii.gz")]
    assert 1 <= len(segmentations) < 63
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case0.nii.gz")))
    for name in segmentations:  # every file there is whole
        if name.startswith("many"):
            np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / name))), expected)


# --------------------------------------------------------------- usage errors (before any work)


def _main(argv, capsys) -> tuple[int, str]:
    from rankseg.cli import main

    status = main([str(a) for a in argv])
    return status, capsys.readouterr().err


def test_options_that_nnunet_files_decide_are_usage_errors(built, tmp_path, capsys):
    folder = built["labels"]
    pred, labels = folder.pred_dir, folder.labels_dir
    cases = [
        (
            ["evaluate", "--nnunet", pred, "--labels", labels, "--logits"],
            f"--nnunet {pred} takes no --logits (nnU-Net saves probabilities)",
        ),
        (
            ["evaluate", "--probs", pred, "--labels", labels, "--ignore-index", "3"],
            f"--probs {pred} holds plans.json: it is an nnU-Net prediction folder, evaluated as with "
            "--nnunet, and takes no --ignore-index (the ignore label comes from dataset.json)",
        ),
        (  # was silently ignored: the table compared uncalibrated probabilities
            ["evaluate", "--nnunet", pred, "--labels", labels, "--calibration", tmp_path / "cal.json"],
            f"--nnunet {pred} takes no --calibration (nnU-Net saves probabilities, not logits)",
        ),
        (
            ["evaluate", "--nnunet", pred, "--labels", labels, "--metric", "acc"],
            "--metric must be dice or iou for evaluate (accuracy has no RankSEG solver)",
        ),
        (
            ["nnunet", pred, "--out", tmp_path / "out", "--metric", "f1"],
            "--metric: metric must be one of 'dice', 'iou', 'acc' ('accuracy'); got 'f1'",
        ),
        (
            ["nnunet", tmp_path / "nowhere", "--out", tmp_path / "out"],
            f"PRED_DIR {tmp_path / 'nowhere'} is not a folder (does not exist)",
        ),
    ]
    for argv, message in cases:
        status, stderr = _main(argv, capsys)
        assert status == 2, argv
        assert stderr.splitlines()[-1].split(": error: ", 1)[1] == message
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as info:  # argparse: one of --probs / --nnunet
        _main(["evaluate", "--probs", pred, "--nnunet", pred, "--labels", labels], capsys)
    assert info.value.code == 2
    assert "argument --nnunet: not allowed with argument --probs" in capsys.readouterr().err


def test_folder_problems_found_before_any_case_are_errors(built, tmp_path, capsys):
    folder = built["labels"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "plans.json").write_text(json.dumps({"plans_name": "another"}))
    status, stderr = _main(["nnunet", folder.pred_dir, "--out", out], capsys)
    assert status == 1
    assert errors(stderr) == [
        f"{out / 'plans.json'} exists and differs from {folder.pred_dir / 'plans.json'}; the output "
        "folder holds another model's results: choose another folder or pass force=True (--force) to "
        "replace it"
    ]
    assert sorted(contents(out)) == ["dataset.json", "plans.json"]  # no case written beside it

    empty = tmp_path / "empty"
    empty.mkdir()
    for name in ("dataset.json", "plans.json"):
        shutil.copy(folder.pred_dir / name, empty / name)
    status, stderr = _main(["evaluate", "--probs", empty, "--labels", folder.labels_dir], capsys)
    assert status == 1
    assert errors(stderr) == [
        f"pred_dir '{empty}' holds no CASE.npz probability files; run nnUNetv2_predict with "
        "--save_probabilities"
    ]
