"""``rankseg calibrate`` and ``--calibration`` for ``predict`` / ``evaluate`` (issue 10), end to end.

Synthetic truth written as files: smooth true logits ``z``, labels drawn from ``softmax(z)`` (or
``sigmoid(z)``), and an under-confident "model" whose saved logits are ``0.3 z``. The workflow runs
the installed console script in subprocesses (``calibrate`` -> ``evaluate --calibration`` ->
``predict --calibration``); the other cases call ``rankseg.cli.main`` in this process (the same
code, without the start-up cost of a subprocess). Every number is compared with the library run
on the same data in Python.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rankseg import RankSEG
from rankseg.calibration import TemperatureScaling
from rankseg.cli import main
from rankseg.cli.calibrate import ValidationFiles, _Pair
from rankseg.cli.io import InputError
from rankseg.data import sample_labels
from rankseg.metrics import SegmentationCounts, calibration_error, score_from_counts, segmentation_counts

RANKSEG = Path(sys.executable).with_name("rankseg")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
K = 0.3  # the model's logits are K * z: under-confident, the fitted temperature is about K
CLASSES = 4


def run(*args):
    assert RANKSEG.exists(), f"the console script is not installed at {RANKSEG}: pip install -e ."
    return subprocess.run(
        [str(RANKSEG), *map(str, args)], capture_output=True, text=True, env=ENV, timeout=180
    )


@pytest.fixture
def cli(capsys):
    """``rankseg.cli.main(args)`` in this process: ``(exit status, stdout, stderr)``."""

    def call(*args):
        status = main([str(a) for a in args])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return call


def true_logits(batch, classes, size, seed, bias=0.0):
    """Smooth float64 logits: a coarse field upsampled, cell noise, bilinear to full size."""
    gen = torch.Generator().manual_seed(seed)
    field = torch.randn(batch, classes, 2, 2, generator=gen, dtype=torch.float64) * 6.0
    field = F.interpolate(field, size=(size // 8,) * 2, mode="bilinear", align_corners=False)
    field += torch.randn(batch, classes, size // 8, size // 8, generator=gen, dtype=torch.float64)
    return F.interpolate(field, size=(size, size), mode="bilinear", align_corners=False) + bias


def write_split(root, logits, labels, label_formats=("npy",)):
    """One logits file and one label file per image: logits as .npy / .pt / .npz in turn."""
    (root / "logits").mkdir(parents=True)
    (root / "labels").mkdir()
    for i, (x, y) in enumerate(zip(logits, labels, strict=True)):
        name = f"case{i}"
        kind = ("npy", "pt", "npz")[i % 3]
        if kind == "npy":
            np.save(root / "logits" / f"{name}.npy", x.numpy())
        elif kind == "pt":
            torch.save(x, root / "logits" / f"{name}.pt")
        else:
            np.savez(root / "logits" / f"{name}.npz", logits=x.numpy())
        fmt = label_formats[i % len(label_formats)]
        if fmt == "png":
            Image.fromarray(y.numpy().astype(np.uint8)).save(root / "labels" / f"{name}.png")
        else:
            np.save(root / "labels" / f"{name}.npy", y.numpy())


@pytest.fixture(scope="module")
def softmax_files(tmp_path_factory):
    """6 validation and 6 test images of 48 x 48, four classes; labels with a 255 border column."""
    root = tmp_path_factory.mktemp("calibration")
    data = {}
    for split, seed in (("val", 1), ("test", 2)):
        z = true_logits(6, CLASSES, 48, seed)
        labels = sample_labels(torch.softmax(z, 1), seed=seed + 10)
        labels[..., :1] = 255  # unlabelled pixels
        logits = (K * z).float()
        write_split(root / split, logits, labels, label_formats=("npy", "png"))
        data[split] = (logits, labels)
    return root, data


def temperatures(stdout):
    """The temperatures ``rankseg calibrate`` printed."""
    return [float(t) for t in re.findall(r"T = ([0-9.e+-]+)", stdout)]


def table(stdout):
    """``{method: [mDice^I, gain, mIoU^I, gain, mIoU^D, gain, ms]}`` from evaluate's main table."""
    rows = {}
    for line in stdout.splitlines():
        match = re.match(r"^((?:argmax|threshold|RMA|exact)(?: \(calibrated\))?)\s+(-?\d.*)$", line)
        if match and len(match.group(2).split()) == 7:
            rows[match.group(1)] = match.group(2).split()
    return rows


def library_scores(probs, labels, method, ignore_index=255, multiclass=True):
    """mDice^I, mIoU^I and mIoU^D of ``method`` (argmax / threshold or RankSEG) on (B, C, H, W) probs."""
    if method in ("argmax", "threshold"):
        pred = probs.argmax(1) if multiclass else probs > 0.5
    else:
        pred = RankSEG(solver=method, output_mode="multiclass" if multiclass else "multilabel")(probs)
    counts = SegmentationCounts.cat(
        [
            segmentation_counts(
                p[None], y[None], probs.shape[1], ignore_index=ignore_index,
                input_format="index" if multiclass else "mask",
            )
            for p, y in zip(pred, labels, strict=True)
        ]
    )  # fmt: skip
    return {
        "mDice_I": float(score_from_counts(counts, "dice", average="image")),
        "mIoU_I": float(score_from_counts(counts, "iou", average="image")),
        "mIoU_D": float(score_from_counts(counts, "iou", average="dataset")),
    }


# ------------------------------------------------------------------------------ the workflow


def test_calibrate_evaluate_predict_workflow(softmax_files, tmp_path):
    root, data = softmax_files
    val_logits, val_labels = data["val"]
    test_logits, test_labels = data["test"]
    calibration = tmp_path / "calibration.json"

    # 1. calibrate: the temperature of TemperatureScaling().fit on the same data
    result = run(
        "calibrate", "--logits", root / "val" / "logits", "--labels", root / "val" / "labels",
        "--out", calibration, "--ignore-index", "255",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    scaler = TemperatureScaling(ignore_index=255).fit(val_logits, val_labels)
    (printed,) = temperatures(result.stdout)
    assert printed == pytest.approx(float(scaler.temperature_), rel=1e-6)
    assert abs(printed - K) < 0.05 * K
    saved = json.loads(calibration.read_text())
    assert saved["temperature"] == pytest.approx(float(scaler.temperature_), rel=1e-9)
    python_state = scaler.state_dict()  # what TemperatureScaling.save writes
    assert set(saved) == set(python_state)
    for key, value in python_state.items():
        assert saved[key] == (pytest.approx(value, rel=1e-9) if isinstance(value, float) else value), key
    assert f"({scaler.n_pixels_} labelled pixels, {scaler.n_passes_} passes" in result.stdout
    assert f"{scaler.nll_before_:.6f} before -> {scaler.nll_after_:.6f} after" in result.stdout
    assert f"saved {calibration}" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.json"]  # no temporary file left

    # 2. evaluate: argmax, RankSEG raw, RankSEG calibrated; the ECE before and after
    report, csv_path, plot = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.png"
    result = run(
        "evaluate", "--probs", root / "test" / "logits", "--labels", root / "test" / "labels", "--logits",
        "--calibration", calibration, "--ignore-index", "255", "--json", report, "--csv", csv_path,
        "--plot", plot,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    loaded = TemperatureScaling.load(calibration)
    raw = torch.softmax(test_logits, 1)
    calibrated = loaded.transform(test_logits)
    expected = {
        "argmax": library_scores(raw, test_labels, "argmax"),
        "RMA": library_scores(raw, test_labels, "RMA"),
        "RMA (calibrated)": library_scores(calibrated, test_labels, "RMA"),
    }
    rows = table(result.stdout)
    assert list(rows) == list(expected)
    summary = json.loads(report.read_text())
    for method, values in expected.items():
        for key, value in values.items():
            assert summary["methods"][method][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (method, key)
        assert float(rows[method][0]) == pytest.approx(values["mDice_I"], abs=5.1e-5)
    # calibration is what makes RankSEG work on an under-confident model
    assert (
        expected["RMA"]["mDice_I"] < expected["argmax"]["mDice_I"] < expected["RMA (calibrated)"]["mDice_I"]
    )
    ece_raw = float(calibration_error(raw, test_labels, ignore_index=255).ece)
    ece_calibrated = float(calibration_error(calibrated, test_labels, ignore_index=255).ece)
    assert summary["calibration"]["ece"] == pytest.approx(
        {"raw": ece_raw, "calibrated": ece_calibrated}, rel=1e-9
    )
    assert ece_calibrated < 0.3 * ece_raw
    assert f"ECE (top-label, 15 bins): raw {ece_raw:.4f} -> calibrated {ece_calibrated:.4f}" in result.stdout
    assert (
        f"calibration {calibration}: T = {float(loaded.temperature_):.4g} (softmax, global)" in result.stdout
    )
    reliability = summary["calibration"]["reliability"]
    assert (
        sum(reliability["raw"]["counts"])
        == sum(reliability["calibrated"]["counts"])
        == int((test_labels != 255).sum())
    )
    csv_rows = [line.split(",") for line in csv_path.read_text().splitlines()]
    assert csv_rows[0][-1] == "ECE" and [r[0] for r in csv_rows[1:]] == list(expected)
    assert [float(r[-1]) for r in csv_rows[1:]] == pytest.approx([ece_raw, ece_raw, ece_calibrated], rel=1e-9)
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size == (1300, 450)  # gains and the reliability diagram

    # 3. predict: RankSEG on the calibrated probabilities
    result = run(
        "predict",
        root / "test" / "logits",
        "--out",
        tmp_path / "masks",
        "--logits",
        "--calibration",
        calibration,
    )
    assert result.returncode == 0, result.stderr
    masks = RankSEG()(calibrated)
    for i, suffix in enumerate((".npy", ".pt", ".npz") * 2):
        path = tmp_path / "masks" / f"case{i}{suffix}"
        stored = {
            ".npy": np.load,
            ".pt": lambda p: torch.load(p).numpy(),
            ".npz": lambda p: np.load(p)["masks"],
        }
        np.testing.assert_array_equal(stored[suffix](path), masks[i].numpy())
    assert not torch.equal(masks, RankSEG()(raw))  # the calibration changed the masks


def test_evaluate_with_a_calibration_in_two_processes_equals_one(softmax_files, tmp_path, cli):
    root, data = softmax_files
    calibration = TemperatureScaling(ignore_index=255).fit(*data["val"]).save(tmp_path / "c.json")
    common = [
        "evaluate", "--probs", root / "test" / "logits", "--labels", root / "test" / "labels",
        "--logits", "--calibration", calibration, "--ignore-index", "255", "--solvers", "RMA,BA",
    ]  # fmt: skip
    status, _, err = cli(*common, "--json", tmp_path / "one.json")
    assert status == 0, err
    result = run(*common, "--json", tmp_path / "two.json", "--workers", "2")
    assert result.returncode == 0, result.stderr
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert list(one["methods"]) == ["argmax", "RMA", "RMA (calibrated)", "BA", "BA (calibrated)"]
    assert list(two["methods"]) == list(one["methods"])
    for method in one["methods"]:
        for key in ("mDice_I", "mIoU_I", "mIoU_D", "per_class", "per_image_dice"):
            assert one["methods"][method][key] == two["methods"][method][key]
    assert one["calibration"] == two["calibration"]


def test_per_class_temperatures_and_the_calibrated_argmax(softmax_files, tmp_path, cli):
    root, data = softmax_files
    out = tmp_path / "per-class.json"
    status, stdout, err = cli(
        "calibrate", "--logits", root / "val" / "logits", "--labels", root / "val" / "labels", "--out", out,
        "--ignore-index", "255", "--per-class", "--quiet",
    )  # fmt: skip
    assert status == 0, err
    scaler = TemperatureScaling(per_class=True, ignore_index=255).fit(*data["val"])
    assert temperatures(stdout) == pytest.approx(scaler.temperature_.tolist(), rel=1e-6)
    assert len(temperatures(stdout)) == CLASSES and "saved" not in stdout
    status, stdout, err = cli(
        "evaluate", "--probs", root / "test" / "logits", "--labels", root / "test" / "labels",
        "--logits", "--calibration", out, "--ignore-index", "255",
    )  # fmt: skip
    assert status == 0, err
    # per-class temperatures can move the argmax, so it is reported on the calibrated maps too
    assert list(table(stdout)) == ["argmax", "argmax (calibrated)", "RMA", "RMA (calibrated)"]
    test_logits, test_labels = data["test"]
    expected = library_scores(scaler.transform(test_logits), test_labels, "argmax")["mDice_I"]
    assert float(table(stdout)["argmax (calibrated)"][0]) == pytest.approx(expected, abs=5.1e-5)
    assert "(softmax, per class)" in stdout


def test_sigmoid_calibration_of_a_one_channel_model(tmp_path, cli):
    """One-channel logits: sigmoid by default, 0/1 labels (*spatial), threshold as the baseline."""
    split = {}
    for name, seed in (("val", 3), ("test", 4)):
        z = true_logits(5, 1, 48, seed, bias=-1.0)
        labels = sample_labels(torch.sigmoid(z), seed=seed, output_mode="multilabel")[:, 0].to(torch.uint8)
        write_split(tmp_path / name, (K * z).float(), labels, label_formats=("png",))
        split[name] = ((K * z).float(), labels)
    out = tmp_path / "sigmoid.json"
    status, stdout, err = cli(
        "calibrate", "--logits", tmp_path / "val" / "logits", "--labels", tmp_path / "val" / "labels",
        "--out", out, "--subsample", "0.5", "--seed", "3",
    )  # fmt: skip
    assert status == 0, err
    scaler = TemperatureScaling("sigmoid", subsample=0.5, seed=3).fit(*split["val"])
    assert temperatures(stdout) == pytest.approx([float(scaler.temperature_)], rel=1e-6)
    assert (
        "activation=sigmoid" in stdout and f"({scaler.n_pixels_} labelled (pixel, class) elements" in stdout
    )
    assert json.loads(out.read_text())["subsample"] == 0.5
    status, stdout, err = cli(
        "evaluate", "--probs", tmp_path / "test" / "logits", "--labels", tmp_path / "test" / "labels",
        "--logits", "--calibration", out, "--plot", tmp_path / "r.svg",
    )  # fmt: skip
    assert status == 0, err
    test_logits, test_labels = split["test"]
    calibrated = scaler.transform(test_logits)
    rows = table(stdout)
    assert list(rows) == ["threshold", "RMA", "RMA (calibrated)"]
    expected = library_scores(calibrated, test_labels[:, None], "RMA", ignore_index=None, multiclass=False)
    assert float(rows["RMA (calibrated)"][0]) == pytest.approx(expected["mDice_I"], abs=5.1e-5)
    ece = calibration_error(calibrated, test_labels[:, None].long()).ece
    assert "ECE (per class, mean over 1 class(es), 15 bins): raw " in stdout
    assert f"-> calibrated {float(ece[0]):.4f}" in stdout
    assert (tmp_path / "r.svg").read_text().startswith("<?xml")


# ------------------------------------------------------------------------------ bad input


@pytest.fixture
def calibrations(tmp_path, softmax_files):
    """A softmax and a per-class calibration of the test data's model, and broken files."""
    _, data = softmax_files
    folder = tmp_path / "calibrations"
    folder.mkdir()
    TemperatureScaling(ignore_index=255).fit(*data["val"]).save(folder / "softmax.json")
    TemperatureScaling(per_class=True, ignore_index=255).fit(*data["val"]).save(folder / "per-class.json")
    TemperatureScaling(per_class=True).fit(data["val"][0][:, :3], data["val"][1].clamp(max=2)).save(
        folder / "three-classes.json"
    )
    (folder / "not-json.json").write_text("T = 0.3\n")
    (folder / "other.json").write_text('{"format": "something else", "version": 1}\n')
    (folder / "unfitted.json").write_text(json.dumps(TemperatureScaling().state_dict()))
    return folder


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_bad_calibration_options_are_named(softmax_files, calibrations, tmp_path, cli, command):
    root, _ = softmax_files
    logits, labels = root / "test" / "logits", root / "test" / "labels"
    head = ["evaluate", "--probs", logits, "--labels", labels] if command == "evaluate" else [
        "predict", logits, "--out", tmp_path / "masks",
    ]  # fmt: skip
    cases = [
        # (extra arguments, exit status, message)
        (["--calibration", calibrations / "softmax.json"], 2, "--calibration needs --logits"),
        (
            ["--logits", "--activation", "sigmoid", "--calibration", calibrations / "softmax.json"],
            2,
            "--activation sigmoid does not match the calibration",
        ),
        (["--logits", "--calibration", tmp_path / "missing.json"], 2, "missing.json does not exist"),
        (["--logits", "--calibration", calibrations], 2, "is a folder, not a file"),
        (
            ["--logits", "--calibration", calibrations / "not-json.json"],
            1,
            "not-json.json: is not a JSON file",
        ),
        (
            ["--logits", "--calibration", calibrations / "other.json"],
            1,
            "other.json: is not a calibration written by 'rankseg calibrate': state is not a "
            "rankseg.TemperatureScaling state",
        ),
        (["--logits", "--calibration", calibrations / "unfitted.json"], 1, "holds no fitted temperature"),
    ]
    for extra, expected_status, message in cases:
        status, stdout, err = cli(*head, *extra)
        assert status == expected_status, (extra, err)
        assert f"rankseg {command}: error: " in err and message in err, (extra, err)
        assert "Traceback" not in err and "image(s)" not in stdout
    assert not (tmp_path / "masks").exists() or not any((tmp_path / "masks").iterdir())


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_files_that_do_not_fit_the_calibration_are_named(softmax_files, calibrations, tmp_path, cli, command):
    """Per file: probabilities where logits belong, a per-class temperature of another class count."""
    root, data = softmax_files
    logits_dir = tmp_path / "logits"
    logits_dir.mkdir()
    test_logits, _ = data["test"]
    np.save(logits_dir / "case0.npy", test_logits[0].numpy())
    np.save(logits_dir / "case1.npy", torch.softmax(test_logits[1], 0).numpy())  # probabilities
    np.save(logits_dir / "case2.npy", test_logits[2, :1].numpy())  # one channel: a sigmoid model
    head = (
        ["evaluate", "--probs", logits_dir, "--labels", root / "test" / "labels", "--ignore-index", "255"]
        if command == "evaluate"
        else ["predict", logits_dir, "--out", tmp_path / "masks"]
    )
    status, _, err = cli(*head, "--logits", "--calibration", calibrations / "softmax.json")
    assert status == 1
    reason = "looks like probabilities, not logits (every value is in [0, 1] and the classes sum to 1"
    assert f"error: {logits_dir / 'case1.npy'}: {reason}" in err
    assert (
        f"error: {logits_dir / 'case2.npy'}: has one class channel, but --calibration was fitted with "
        "softmax over several; a one-channel model needs a sigmoid calibration" in err
    )
    assert "case0" not in err
    status, _, err = cli(*head, "--logits", "--calibration", calibrations / "three-classes.json", "--force")
    assert status == 1
    assert (
        f"{logits_dir / 'case0.npy'}: has 4 class channels (shape (4, 48, 48)) but --calibration holds "
        "per-class temperatures for 3 classes" in err
    )
    assert f"{logits_dir / 'case1.npy'}: looks like probabilities" in err


def test_calibrate_names_every_file_it_cannot_use_and_fits_on_the_others(softmax_files, tmp_path, cli):
    _, data = softmax_files
    val_logits, val_labels = data["val"]
    logits_dir, labels_dir = tmp_path / "logits", tmp_path / "labels"
    logits_dir.mkdir()
    labels_dir.mkdir()
    for i in range(6):
        np.save(logits_dir / f"case{i}.npy", val_logits[i].numpy())
        np.save(labels_dir / f"case{i}.npy", val_labels[i].numpy())
    np.save(logits_dir / "case1.npy", torch.softmax(val_logits[1], 0).numpy())  # probabilities
    np.save(logits_dir / "case2.npy", val_logits[2, :3].numpy())  # another class count
    (logits_dir / "case3.npy").write_bytes(b"not an array")
    np.save(labels_dir / "case4.npy", np.full((48, 48), 7))  # a label outside the classes
    np.save(logits_dir / "extra.npy", val_logits[0].numpy())  # no labels
    out = tmp_path / "c.json"
    status, stdout, err = cli(
        "calibrate", "--logits", logits_dir, "--labels", labels_dir, "--out", out, "--ignore-index", "255"
    )
    assert status == 1
    errors = [
        line.removeprefix("rankseg calibrate: error: ") for line in err.splitlines() if ": error: " in line
    ]
    assert errors == [
        f"{logits_dir / 'extra.npy'}: no label file named extra.* in {labels_dir}",
        f"{logits_dir / 'case1.npy'}: looks like probabilities, not logits (every value is in [0, 1] and the "
        "classes sum to 1 at every pixel); a temperature is fitted on the logits before the softmax",
        f"{logits_dir / 'case2.npy'}: has 3 class channels (shape (3, 48, 48)) but "
        f"{logits_dir / 'case0.npy'} has 4; one calibration is fitted on logits of one model",
        f"{logits_dir / 'case3.npy'}: is not a .npy file (it does not start with the NumPy header)",
        f"{labels_dir / 'case4.npy'}: holds the label 7; labels must lie in [0, 3] or --ignore-index 255",
    ]
    # the calibration is fitted on the usable pairs, and written
    good = [0, 5]
    scaler = TemperatureScaling(ignore_index=255).fit(val_logits[good], val_labels[good])
    assert temperatures(stdout) == pytest.approx([float(scaler.temperature_)], rel=1e-6)
    assert "2 pair(s) of files" in stdout and "(4 failed)" in stdout
    assert json.loads(out.read_text())["n_pixels"] == scaler.n_pixels_


def test_calibrate_usage_and_fit_errors(softmax_files, tmp_path, cli):
    root, data = softmax_files
    val = ["--logits", root / "val" / "logits", "--labels", root / "val" / "labels"]
    out = tmp_path / "c.json"
    status, _, err = cli("calibrate", *val, "--out", out, "--seed", "3")
    assert (status, err.splitlines()[-1]) == (
        2,
        "rankseg calibrate: error: --seed only applies with --subsample (it draws the pixels kept)",
    )
    with pytest.raises(SystemExit) as info:
        cli("calibrate", *val, "--out", out, "--subsample", "1.5")
    assert info.value.code == 2
    status, _, err = cli("calibrate", *val, "--out", root / "val" / "labels" / "c.json")
    assert status == 2 and "is inside the input folder --labels" in err
    status, _, err = cli(
        "calibrate", "--logits", tmp_path / "nowhere", "--labels", root / "val" / "labels", "--out", out
    )
    assert status == 2 and f"--logits {tmp_path / 'nowhere'} is not a folder (does not exist)" in err
    out.write_text("keep me")
    status, _, err = cli("calibrate", *val, "--out", out)
    assert status == 1 and f"{out}: exists; pass --force to overwrite it" in err
    assert out.read_text() == "keep me"
    status, _, err = cli("calibrate", *val, "--out", out, "--force", "--activation", "sigmoid")
    assert status == 1  # class indices are not 0/1 masks: named per file
    assert "labels must be 0/1 masks (classes, *spatial) of shape (4, 48, 48)" in err
    assert "no pair of files could be used; nothing to fit on" in err and out.read_text() == "keep me"

    # every file holds probabilities: nothing left to fit on
    probs_dir, labels_dir = tmp_path / "probs", tmp_path / "labels"
    probs_dir.mkdir()
    labels_dir.mkdir()
    val_logits, val_labels = data["val"]
    for i in range(2):
        np.save(probs_dir / f"case{i}.npy", torch.softmax(val_logits[i], 0).numpy())
        np.save(labels_dir / f"case{i}.npy", val_labels[i].numpy())
    status, _, err = cli(
        "calibrate", "--logits", probs_dir, "--labels", labels_dir, "--out", tmp_path / "p.json"
    )
    assert status == 1 and err.count("looks like probabilities, not logits") == 2
    assert "no pair of files could be used" in err and not (tmp_path / "p.json").exists()

    # labels that the logits do not predict (the least likely class): the library's reason, for the data
    for i in range(2):
        np.save(probs_dir / f"case{i}.npy", val_logits[i].numpy())
        np.save(labels_dir / f"case{i}.npy", val_logits[i].argmin(0).numpy())
    status, _, err = cli(
        "calibrate", "--logits", probs_dir, "--labels", labels_dir, "--out", tmp_path / "p.json"
    )
    assert status == 1
    assert (
        "cannot fit a temperature on the 2 usable pair(s) of files: the logits predict the labels no better"
        in err
    )


def test_a_file_that_changes_between_passes_stops_the_fit_by_name(softmax_files, tmp_path):
    """Each pass re-reads the files: one that is no longer usable is named (not silently skipped)."""
    _, data = softmax_files
    val_logits, val_labels = data["val"]
    pairs = []
    for i in range(2):
        np.save(tmp_path / f"x{i}.npy", val_logits[i].numpy())
        np.save(tmp_path / f"y{i}.npy", val_labels[i].numpy())
        pairs.append(_Pair(f"case{i}", tmp_path / f"x{i}.npy", tmp_path / f"y{i}.npy"))

    class Report:
        def __init__(self):
            self.errors = []

        def error(self, message):
            self.errors.append(message)

    files = ValidationFiles(pairs, "softmax", 255, Report())
    first = list(files())
    assert len(first) == 2 and files.usable == pairs and files.passes == 1
    assert torch.equal(first[1][0], val_logits[1][None]) and torch.equal(
        first[1][1], val_labels[1][None].long()
    )
    np.save(tmp_path / "x1.npy", np.zeros((4, 5, 5), np.float32))  # changed after the first pass
    with pytest.raises(InputError, match=r"y1.npy: has shape \(48, 48\) but .*x1.npy have shape \(4, 5, 5\)"):
        list(files())
    with pytest.raises(InputError, match=r"\(it was usable on the first pass over the files\)$"):
        list(files())
