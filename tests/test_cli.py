"""End-to-end runs of the installed ``rankseg`` command on files in a temporary folder.

Issue: evaluation, the command line and the demo. Every run is a subprocess of the console script
that ``pip install`` puts next to the interpreter (``.venv/bin/rankseg``).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rankseg import RankSEG
from rankseg.data import sample_labels, synthetic_probs
from rankseg.metrics import SegmentationCounts, score_from_counts, segmentation_counts

RANKSEG = Path(sys.executable).with_name("rankseg")
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


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


def probs_map(seed, classes=4, spatial=(24, 24)):
    return synthetic_probs(1, classes, spatial, seed=seed, scale=3.0)[0].numpy()


def blocked(tmp_path, *modules):
    """An environment in which ``import module`` fails, as if the optional extra were not installed
    (the rest of ``PYTHONPATH`` is kept, so a source tree put there is still the one tested)."""
    folder = tmp_path / f"block-{'-'.join(modules)}"
    for module in modules:
        (folder / module).mkdir(parents=True)
        (folder / module / "__init__.py").write_text(f"raise ImportError('no module named {module}')\n")
    return {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), ENV.get("PYTHONPATH")]))}


def errors(stderr):
    return [line for line in stderr.splitlines() if ": error: " in line]


# ------------------------------------------------------------------------------------------- help


def test_every_command_has_help():
    result = run("--help")
    assert result.returncode == 0
    assert all(cmd in result.stdout for cmd in ("predict", "evaluate", "demo"))
    from rankseg.cli import build_parser

    parser = build_parser()
    for command, option in (("predict", "--out"), ("evaluate", "--solvers"), ("demo", "--save-data")):
        with pytest.raises(SystemExit) as info:
            parser.parse_args([command, "--help"])
        assert info.value.code == 0
        sub = parser._subparsers._group_actions[0].choices[command]
        assert option in sub.format_help()


# ---------------------------------------------------------------------------------------- predict


def test_predict_writes_the_library_masks_in_the_input_format(tmp_path):
    import nibabel as nib

    inputs = tmp_path / "in"
    inputs.mkdir()
    maps = {
        "a.npy": probs_map(0),
        "b.npz": probs_map(1, spatial=(6, 10, 8)),
        "c.pt": probs_map(2),
        "d.nii.gz": probs_map(3, spatial=(6, 10, 8)),
        "e.nii": probs_map(4, classes=1, spatial=(12, 9)),
        "f.npy": probs_map(5, classes=1, spatial=(30,)),
    }
    np.save(inputs / "a.npy", maps["a.npy"])
    np.savez(inputs / "b.npz", probs=maps["b.npz"], other=np.zeros(3))
    torch.save(torch.from_numpy(maps["c.pt"]), inputs / "c.pt")
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    nib.save(nib.Nifti1Image(maps["d.nii.gz"], affine), inputs / "d.nii.gz")
    nib.save(nib.Nifti1Image(maps["e.nii"], np.eye(4)), inputs / "e.nii")
    np.save(inputs / "f.npy", maps["f.npy"])
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}

    result = run("predict", inputs, "--out", tmp_path / "out", "--metric", "iou")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*maps, "a.png", "c.png"]
    )  # no temporary files left
    assert {p.name: p.read_bytes() for p in inputs.iterdir()} == before  # inputs untouched

    def expected(name, mode="multiclass"):
        return RankSEG(metric="iou", output_mode=mode)(maps[name][None])[0]

    np.testing.assert_array_equal(np.load(out / "a.npy"), expected("a.npy"))
    assert np.load(out / "a.npy").dtype == np.int64
    np.testing.assert_array_equal(np.array(Image.open(out / "a.png")), expected("a.npy"))
    np.testing.assert_array_equal(np.load(out / "b.npz")["masks"], expected("b.npz"))
    np.testing.assert_array_equal(torch.load(out / "c.pt").numpy(), expected("c.pt"))
    np.testing.assert_array_equal(np.array(Image.open(out / "c.png")), expected("c.pt"))
    d = nib.load(out / "d.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(d.dataobj), expected("d.nii.gz"))
    np.testing.assert_allclose(d.affine, affine)
    # one class channel: multilabel masks (classes, *spatial)
    e = np.asanyarray(nib.load(out / "e.nii").dataobj)
    np.testing.assert_array_equal(e.astype(bool), expected("e.nii", "multilabel"))
    f = np.load(out / "f.npy")
    assert f.dtype == np.bool_ and f.shape == (1, 30)
    np.testing.assert_array_equal(f, expected("f.npy", "multilabel"))
    assert "a.npy -> " in result.stdout and "(multiclass labels (24, 24))" in result.stdout


def test_predict_turns_logits_into_probabilities(tmp_path):
    logits = np.random.default_rng(0).normal(0, 3, (3, 16, 16)).astype(np.float32)
    one = np.random.default_rng(1).normal(0, 3, (1, 16, 16)).astype(np.float32)
    np.save(tmp_path / "multi.npy", logits)
    np.save(tmp_path / "one.npy", one)
    result = run(
        "predict", tmp_path / "multi.npy", tmp_path / "one.npy", "--out", tmp_path / "out", "--logits"
    )
    assert result.returncode == 0, result.stderr
    softmax = torch.softmax(torch.from_numpy(logits), dim=0)[None]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "multi.npy"), RankSEG()(softmax)[0].numpy())
    sigmoid = torch.sigmoid(torch.from_numpy(one))[None]
    expected = RankSEG(output_mode="multilabel")(sigmoid)[0].numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "one.npy"), expected)

    # --activation sigmoid on several channels: one mask per class
    result = run(
        "predict", tmp_path / "multi.npy", "--out", tmp_path / "sig", "--logits", "--activation", "sigmoid",
        "--output-mode", "multilabel",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = RankSEG(output_mode="multilabel")(torch.sigmoid(torch.from_numpy(logits))[None])[0].numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "sig" / "multi.npy"), expected)


def test_predict_reports_each_bad_file_by_name_and_still_writes_the_others(tmp_path):
    src = tmp_path / "in"
    (src / "other").mkdir(parents=True)
    np.save(src / "good.npy", probs_map(0))
    (src / "broken.npz").write_bytes(b"this is not a zip archive")
    np.save(src / "ints.npy", np.zeros((3, 4, 4), np.int64))
    np.save(src / "logits.npy", np.random.default_rng(0).normal(0, 3, (3, 4, 4)).astype(np.float32))
    np.save(src / "flat.npy", np.float32(0.5))
    np.save(src / "other" / "good.npy", probs_map(1))
    (src / "notes.txt").write_text("hello")
    args = [
        src / "good.npy", src / "broken.npz", src / "ints.npy", src / "logits.npy", src / "flat.npy",
        src / "missing.npy", src / "notes.txt", src / "other" / "good.npy",
    ]  # fmt: skip
    out = tmp_path / "out"
    result = run("predict", *args, "--out", out)
    assert result.returncode == 1
    messages = errors(result.stderr)
    expected = {
        "broken.npz": "is not a .npz file (it is not a zip archive)",
        "ints.npy": "holds int64 values; probability maps must be floating point",
        "logits.npy": "outside [0, 1]; if the file holds logits, pass --logits",
        "flat.npy": "has shape (); expected (classes, *spatial)",
        "missing.npy": "does not exist",
        "notes.txt": "unsupported file type '.txt'",
        str(Path("other") / "good.npy"): f"has the same name as {src / 'good.npy'}",
    }
    assert len(messages) == len(expected), result.stderr
    for name, reason in expected.items():
        assert any(f"{src / name}: " in m and reason in m for m in messages), (name, result.stderr)
    assert sorted(p.name for p in out.iterdir()) == ["good.npy", "good.png"]
    first = (out / "good.npy").read_bytes()

    # the outputs exist now: refused without --force, replaced with it
    np.save(src / "good.npy", probs_map(7))
    again = run("predict", src / "good.npy", "--out", out)
    assert again.returncode == 1
    assert errors(again.stderr) == [
        f"rankseg predict: error: {out / 'good.npy'}: exists; pass --force to overwrite it"
    ]
    assert (out / "good.npy").read_bytes() == first
    forced = run("predict", src / "good.npy", "--out", out, "--force")
    assert forced.returncode == 0, forced.stderr
    np.testing.assert_array_equal(np.load(out / "good.npy"), RankSEG()(probs_map(7)[None])[0])
    assert sorted(p.name for p in out.iterdir()) == ["good.npy", "good.png"]


def test_predict_never_writes_over_its_input(tmp_path):
    np.save(tmp_path / "p.npy", probs_map(0))
    before = (tmp_path / "p.npy").read_bytes()
    result = run("predict", tmp_path / "p.npy", "--out", tmp_path, "--force")
    assert result.returncode == 1
    assert f"{tmp_path / 'p.npy'}: is its own output" in result.stderr
    assert (tmp_path / "p.npy").read_bytes() == before


def test_nifti_without_nibabel_names_the_extra_to_install(tmp_path):
    (tmp_path / "scan.nii.gz").write_bytes(b"whatever")
    np.save(tmp_path / "ok.npy", probs_map(0))
    result = run(
        "predict",
        tmp_path / "scan.nii.gz",
        tmp_path / "ok.npy",
        "--out",
        tmp_path / "o",
        env=blocked(tmp_path, "nibabel"),
    )
    assert result.returncode == 1
    assert errors(result.stderr) == [
        f"rankseg predict: error: {tmp_path / 'scan.nii.gz'}: reading and writing NIfTI files needs nibabel: "
        'pip install "rankseg[nifti]"'
    ]
    assert (tmp_path / "o" / "ok.npy").exists()


def test_usage_errors_exit_with_status_2_and_name_the_option(tmp_path):
    np.save(tmp_path / "p.npy", probs_map(0))
    result = run("predict", tmp_path / "p.npy", "--out", tmp_path / "o", "--solver", "fastest")
    assert result.returncode == 2
    assert (
        "--solver: solver must be one of 'RMA', 'exact'" in result.stderr and "got 'fastest'" in result.stderr
    )
    result = run(
        "evaluate", "--probs", tmp_path, "--labels", tmp_path, "--workers", "0", "--pruning-prob", "2"
    )
    assert result.returncode == 2
    assert "argument --workers: expected a positive integer; got '0'" in result.stderr
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------- evaluate


def library_metrics(pairs, solver="RMA", ignore_index=None):
    """What the table should say, computed with rankseg.metrics on the same maps."""
    rows = {}
    for method in ("argmax", solver):
        parts = []
        for probs, labels in pairs:
            pred = probs.argmax(0) if method == "argmax" else RankSEG(solver=solver)(probs[None])[0]
            parts.append(
                segmentation_counts(pred[None], labels[None], probs.shape[0], ignore_index=ignore_index)
            )
        counts = SegmentationCounts.cat(parts)
        rows[method] = {
            "mDice_I": float(score_from_counts(counts, "dice", average="image")),
            "mIoU_I": float(score_from_counts(counts, "iou", average="image")),
            "mIoU_D": float(score_from_counts(counts, "iou", average="dataset")),
            "mDice_C": float(score_from_counts(counts, "dice", average="class")),
            "Dice_C": score_from_counts(counts, "dice", average="class", reduction="none").tolist(),
            "IoU_D": score_from_counts(counts, "iou", average="dataset", reduction="none").tolist(),
        }
    return rows


def table_rows(stdout):
    rows = {}
    for line in stdout.splitlines():
        cells = line.split()
        if cells and cells[0] in ("argmax", "threshold", "RMA") and len(cells) == 8:
            rows[cells[0]] = cells[1:]
    return rows


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    import nibabel as nib

    root = tmp_path_factory.mktemp("evaluate")
    probs_dir, labels_dir = root / "probs", root / "labels"
    probs_dir.mkdir()
    labels_dir.mkdir()
    pairs = []
    for i, (spatial, fmt) in enumerate(
        [((24, 24), "npy"), ((20, 28), "png"), ((24, 24), "pt"), ((6, 10, 8), "nii.gz"), ((16, 16), "npz")]
    ):
        probs = synthetic_probs(1, 4, spatial, seed=i, scale=2.0)[0]
        labels = sample_labels(probs[None], seed=100 + i)[0]
        labels[..., :2] = 255  # ignored pixels
        pairs.append((probs, labels))
        np.save(probs_dir / f"case{i}.npy", probs.numpy())
        target = labels_dir / f"case{i}.{fmt}"
        if fmt == "npy":
            np.save(target, labels.numpy())
        elif fmt == "png":
            Image.fromarray(labels.numpy().astype(np.uint8)).save(target)
        elif fmt == "pt":
            torch.save(labels, target)
        elif fmt == "nii.gz":
            nib.save(nib.Nifti1Image(labels.numpy().astype(np.uint8), np.eye(4)), target)
        else:
            np.savez(target, labels=labels.numpy())
    return root, pairs


def test_evaluate_table_equals_the_library_metrics(eval_data, tmp_path):
    root, pairs = eval_data
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    result = run(
        "evaluate", "--probs", root / "probs", "--labels", root / "labels", "--ignore-index", "255",
        "--num-classes", "4", "--json", out_json, "--csv", out_csv, "--progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = library_metrics(pairs, ignore_index=255)
    rows = table_rows(result.stdout)
    assert set(rows) == {"argmax", "RMA"}
    for method, values in expected.items():
        cells = rows[method]
        for col, key in ((0, "mDice_I"), (2, "mIoU_I"), (4, "mIoU_D")):
            assert float(cells[col]) == pytest.approx(values[key], abs=5.1e-5), (method, key)
        if method == "RMA":
            assert float(cells[1]) == pytest.approx(
                values["mDice_I"] - expected["argmax"]["mDice_I"], abs=1.1e-4
            )
        assert float(cells[6]) > 0  # ms per image
    # per-class rows: class, images, argmax Dice^C, RMA gain, argmax IoU^D, RMA gain
    class_rows = [line.split() for line in result.stdout.splitlines() if re.match(r"^\d+\s+\d+\s", line)]
    assert len(class_rows) == 4
    for c, cells in enumerate(class_rows):
        assert float(cells[2]) == pytest.approx(expected["argmax"]["Dice_C"][c], abs=5.1e-5)
        gain = expected["RMA"]["IoU_D"][c] - expected["argmax"]["IoU_D"][c]
        assert float(cells[5]) == pytest.approx(gain, abs=1.1e-4)

    saved = json.loads(out_json.read_text())
    assert saved["images"] == [f"case{i}" for i in range(5)] and saved["failed"] == {}
    for method, values in expected.items():
        for key in ("mDice_I", "mIoU_I", "mIoU_D", "mDice_C"):
            assert saved["methods"][method][key] == pytest.approx(values[key], rel=1e-12)
        assert saved["methods"][method]["per_class"]["Dice_C"] == pytest.approx(values["Dice_C"], rel=1e-12)
    csv_lines = out_csv.read_text().splitlines()
    assert csv_lines[0].startswith("method,mDice_I,mIoU_I,mIoU_D")
    assert float(csv_lines[2].split(",")[1]) == pytest.approx(expected["RMA"]["mDice_I"], rel=1e-12)
    assert "rankseg evaluate [####################] 5/5 case4" in result.stderr  # the progress bar


def test_evaluate_in_several_processes_gives_the_same_results(eval_data, tmp_path):
    root, _ = eval_data
    single, multi = tmp_path / "one.json", tmp_path / "two.json"
    common = ["evaluate", "--probs", root / "probs", "--labels", root / "labels", "--ignore-index", "255"]
    assert run(*common, "--json", single).returncode == 0
    result = run(*common, "--json", multi, "--workers", "2")
    assert result.returncode == 0, result.stderr
    a, b = json.loads(single.read_text()), json.loads(multi.read_text())
    for method in ("argmax", "RMA"):
        for key in ("mDice_I", "mIoU_I", "mIoU_D", "per_class", "per_image_dice"):
            assert a["methods"][method][key] == b["methods"][method][key]
    assert a["images"] == b["images"]


def test_evaluate_reports_each_bad_pair_by_name_and_evaluates_the_rest(tmp_path):
    probs_dir, labels_dir = tmp_path / "probs", tmp_path / "labels"
    probs_dir.mkdir()
    labels_dir.mkdir()
    good = synthetic_probs(1, 3, (16, 16), seed=0)[0].numpy()
    good_labels = sample_labels(torch.from_numpy(good)[None], seed=1)[0].numpy()
    for name in ("good", "good2"):
        np.save(probs_dir / f"{name}.npy", good)
        np.save(labels_dir / f"{name}.npy", good_labels)
    np.save(probs_dir / "mismatch.npy", good)
    np.save(labels_dir / "mismatch.npy", good_labels[:8])
    np.save(probs_dir / "lonely.npy", good)
    np.save(probs_dir / "badlabel.npy", good)
    np.save(labels_dir / "badlabel.npy", np.full((16, 16), 7))
    np.save(probs_dir / "fraction.npy", good)
    np.save(labels_dir / "fraction.npy", np.full((16, 16), 0.5))
    np.save(probs_dir / "fourclass.npy", synthetic_probs(1, 4, (16, 16), seed=2)[0].numpy())
    np.save(labels_dir / "fourclass.npy", good_labels)
    np.save(probs_dir / "unreadable.npy", good)
    (labels_dir / "unreadable.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    torch.save(torch.from_numpy(good), probs_dir / "good.pt")  # same stem as good.npy
    (labels_dir / "README.txt").write_text("labels")
    result = run("evaluate", "--probs", probs_dir, "--labels", labels_dir, "--json", tmp_path / "r.json")
    assert result.returncode == 1
    messages = errors(result.stderr)
    expected = [
        f"{labels_dir / 'mismatch.npy'}: has shape (8, 16) but the probabilities "
        f"{probs_dir / 'mismatch.npy'} have shape (3, 16, 16)",
        f"{probs_dir / 'lonely.npy'}: no label file named lonely.* in {labels_dir}",
        f"{labels_dir / 'badlabel.npy'}: holds the label 7; labels must lie in [0, 2]",
        f"{labels_dir / 'fraction.npy'}: holds non-integer float64 values",
        f"{probs_dir / 'fourclass.npy'}: has 4 class channels (argmax) but 2 other maps have 3 (argmax); "
        "--num-classes selects the maps to evaluate",
        f"{labels_dir / 'unreadable.png'}: cannot be read as .png",
        f"{probs_dir / 'good.pt'}: has the same name as {probs_dir / 'good.npy'}",
    ]
    assert len(messages) == len(expected), result.stderr
    for text in expected:
        assert any(text in m for m in messages), (text, result.stderr)
    assert "ignored 1 file(s)" in result.stderr and "README.txt" in result.stderr
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["images"] == ["good", "good2"]
    assert set(saved["failed"]) == {"badlabel", "fourclass", "fraction", "mismatch", "unreadable"}
    assert table_rows(result.stdout).keys() == {"argmax", "RMA"}

    # the results file now exists: refused before any work without --force
    again = run("evaluate", "--probs", probs_dir, "--labels", labels_dir, "--json", tmp_path / "r.json")
    assert again.returncode == 1
    assert errors(again.stderr) == [
        f"rankseg evaluate: error: {tmp_path / 'r.json'}: exists; pass --force to overwrite it"
    ]
    assert again.stdout == ""


def test_evaluate_one_class_maps_against_a_threshold_with_a_plot(tmp_path):
    probs_dir, labels_dir = tmp_path / "probs", tmp_path / "labels"
    probs_dir.mkdir()
    labels_dir.mkdir()
    pairs = []
    for i in range(3):
        probs = synthetic_probs(1, 1, (20, 20), seed=i, scale=2.0, bias=-1.0)[0]
        labels = sample_labels(probs[None], seed=9 + i, output_mode="multilabel")[0]
        pairs.append((probs, labels))
        np.save(probs_dir / f"m{i}.npy", probs.numpy())
        Image.fromarray(labels[0].numpy().astype(np.uint8)).save(labels_dir / f"m{i}.png")  # (*spatial) 0/1
    result = run("evaluate", "--probs", probs_dir, "--labels", labels_dir, "--plot", tmp_path / "gains.png")
    assert result.returncode == 0, result.stderr
    parts = {"threshold": [], "RMA": []}
    for probs, labels in pairs:
        parts["threshold"].append(segmentation_counts((probs > 0.5)[None], labels[None], input_format="mask"))
        pred = RankSEG(output_mode="multilabel")(probs[None])
        parts["RMA"].append(segmentation_counts(pred, labels[None], input_format="mask"))
    rows = table_rows(result.stdout)
    for method, counts in parts.items():
        value = float(score_from_counts(SegmentationCounts.cat(counts), "dice", average="image"))
        assert float(rows[method][0]) == pytest.approx(value, abs=5.1e-5)
    with Image.open(tmp_path / "gains.png") as image:
        assert image.format == "PNG" and image.size == (800, 400)
        assert image.text["Software"].startswith("Matplotlib version")

    # without matplotlib: a clear error before any work
    result = run(
        "evaluate", "--probs", probs_dir, "--labels", labels_dir, "--plot", tmp_path / "g2.png",
        env=blocked(tmp_path, "matplotlib"),
    )  # fmt: skip
    assert result.returncode == 1
    assert errors(result.stderr) == [
        "rankseg evaluate: error: the rankseg command needs the 'cli' extra (missing: matplotlib): "
        'pip install "rankseg[cli]"'
    ]
    assert not (tmp_path / "g2.png").exists()


# ------------------------------------------------------------------------------------------- demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("demo")
    result = run("demo", "--save-data", "demo-data", cwd=cwd)  # the command docs/evaluate.md shows
    return cwd, result


def demo_table(stdout):
    """{data set: {method: (E[Dice], E[IoU], Dice^I, IoU^I, ms)}} from the printed table."""
    table, current = {}, None
    for line in stdout.splitlines():
        match = re.match(
            r"^(\S.*?)?\s*\b(argmax|threshold|RMA|exact)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$",
            line,
        )
        if match:
            if match.group(1):
                current = match.group(1).strip()
            table.setdefault(current, {})[match.group(2)] = tuple(float(match.group(i)) for i in range(3, 8))
    return table


def test_demo_prints_argmax_rma_and_exact_with_rankseg_ahead(demo_run):
    _, result = demo_run
    assert result.returncode == 0, result.stderr
    table = demo_table(result.stdout)
    assert list(table) == [
        "4 images, 5 classes, 128x128",
        "1 volume, 5 classes, 48x48x48",
        "JMLR example 1, w=64, beta=1.05",
    ]
    for name, methods in table.items():
        baseline = methods["threshold" if name.startswith("JMLR") else "argmax"]
        assert set(methods) == {"threshold" if name.startswith("JMLR") else "argmax", "RMA", "exact"}
        for solver in ("RMA", "exact"):
            assert methods[solver][0] > baseline[0], (name, solver)  # expected Dice
            assert methods[solver][2] > baseline[2], (name, solver)  # realised Dice on the drawn labels
    # the published anchor (design note section 7): w=64, beta=1.05: optimal .4456, T=0.5 .2959
    jmlr = table["JMLR example 1, w=64, beta=1.05"]
    assert jmlr["threshold"][0] == pytest.approx(0.2959, abs=6e-4)
    assert jmlr["exact"][0] == pytest.approx(0.4456, abs=6e-4)


def test_demo_figure_is_drawn_by_matplotlib_at_the_printed_size(demo_run):
    cwd, result = demo_run
    assert result.returncode == 0, result.stderr
    match = re.search(r"figure: (.+) \((\d+) x (\d+) px\)", result.stdout)
    path = Path(match.group(1))
    assert path == cwd / "rankseg-demo.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode in ("RGB", "RGBA")
        assert image.text["Software"].startswith("Matplotlib version")
        # 6 rows (4 images, the volume's slice, the JMLR map) of 2.3 in, 1.2 in of title and legend
        assert image.size == (1300, 6 * 230 + 120) == (int(match.group(2)), int(match.group(3)))


def test_demo_figure_shows_every_image_and_rankseg_ahead_in_its_dice_bars():
    """The figure's content, from the demo's own data and results (in-process: the same code)."""
    from rankseg.cli.demo import SOLVERS, _figure, demo_cases, figure_rows, run_case

    cases = demo_cases()
    results = [run_case(case, SOLVERS) for case in cases]
    rows = figure_rows(cases, results)
    assert [row.label for row in rows] == [
        "image 1 of 4", "image 2 of 4", "image 3 of 4", "image 4 of 4", "1 volume, slice 24 of 48",
        "JMLR example 1",
    ]  # fmt: skip
    assert [row.probs.shape for row in rows] == [(5, 128, 128)] * 4 + [(5, 48, 48), (1, 64, 64)]
    np.testing.assert_array_equal(rows[4].rankseg, results[1][1].preds[0, 24].numpy())  # the RMA slice
    fig = _figure(cases, results)
    bars = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"][4::5]  # the last of 5 panels per row
    assert len(bars) == len(rows) and bars[0].get_title() == "Dice per image"
    heights = np.array([[p.get_height() for p in ax.patches] for ax in bars])  # (row, method)
    expected = [
        [r.per_image_dice[b] for r in case_results]
        for case, case_results in zip(cases, results, strict=True)
        for b in range(case.probs.shape[0])
    ]
    np.testing.assert_allclose(heights, expected)
    assert [t.get_text() for t in bars[-1].get_xticklabels()] == ["threshold", "RMA", "exact"]
    assert (heights[:, 1:] >= heights[:, :1] - 1e-12).all() and heights[5, 1] - heights[5, 0] > 0.1
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:5] == [f"class {k}" for k in range(5)]


def test_demo_figure_format_follows_the_suffix(tmp_path, capsys):
    from rankseg.cli import main

    result = run("demo", "--out", tmp_path / "demo.svg", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"figure: {tmp_path / 'demo.svg'} (13 x 15 in)" in result.stdout
    data = (tmp_path / "demo.svg").read_bytes()
    assert data.startswith(b"<?xml") and b"<svg" in data and b"<dc:title>Matplotlib v" in data
    # any other suffix is a usage error, before any work
    with pytest.raises(SystemExit) as info:
        main(["demo", "--out", str(tmp_path / "demo.jpg")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --out: {tmp_path / 'demo.jpg'}: unsupported figure format '.jpg'" in err
    assert "expected a file name ending in .png, .pdf, .svg" in err
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--probs", str(tmp_path), "--labels", str(tmp_path), "--plot", "g.tiff"])
    assert info.value.code == 2
    assert "argument --plot: g.tiff: unsupported figure format '.tiff'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.svg"]


def test_demo_data_evaluates_like_the_demo_and_the_figure_is_never_overwritten(demo_run):
    cwd, _ = demo_run
    data = cwd / "demo-data"
    assert sorted(p.name for p in (data / "multiclass" / "probs").iterdir()) == [
        "image-1.npy", "image-2.npy", "image-3.npy", "image-4.npy", "volume.npy",
    ]  # fmt: skip
    second = run("demo", "--out", cwd / "rankseg-demo.png", cwd=cwd)
    assert second.returncode == 1
    assert errors(second.stderr) == [
        f"rankseg demo: error: {cwd / 'rankseg-demo.png'}: exists; pass --force to overwrite it"
    ]


def test_docs_show_the_evaluate_table_of_the_demo_data(demo_run):
    cwd, _ = demo_run
    docs = (ROOT / "docs" / "evaluate.md").read_text()

    def cells(text):
        """Whitespace-separated cells per line, without the times (the one number that varies)."""
        rows = [line.split() for line in text.strip().splitlines()]
        return [
            row[:-1] if len(row) >= 8 and row[-1].replace(".", "").isdigit() and row[0].isalpha() else row
            for row in rows
        ]

    for group in ("multiclass", "one-class"):
        command = (
            f"evaluate --probs demo-data/{group}/probs --labels demo-data/{group}/labels --solvers RMA,exact"
        )
        shown = docs.split(f"$ rankseg {command}\n", 1)[1].split("```", 1)[0]
        result = run(*command.split(), cwd=cwd)
        assert result.returncode == 0, result.stderr
        assert cells(result.stdout) == cells(shown)


def test_option_and_folder_errors_name_the_option_or_file(tmp_path, capsys):
    """The same command in-process (``rankseg.cli.main``), for the checks that run before any work."""
    from rankseg.cli import main

    np.save(tmp_path / "p.npy", probs_map(0))
    elsewhere = tmp_path.parent / f"{tmp_path.name}-missing"  # outside the input folder tmp_path
    cases = [
        (
            ["predict", tmp_path / "p.npy", "--out", tmp_path / "o", "--activation", "sigmoid"],
            2,
            "--activation only applies with --logits",
        ),
        (
            ["predict", tmp_path / "p.npy", "--out", tmp_path / "p.npy"],
            2,
            f"--out {tmp_path / 'p.npy'} exists and is not a folder",
        ),
        (
            ["evaluate", "--probs", tmp_path, "--labels", tmp_path, "--solvers", "RMA,fast"],
            2,
            "--solvers: solver must be one of",
        ),
        (
            ["evaluate", "--probs", tmp_path, "--labels", tmp_path, "--solvers", " , "],
            2,
            "--solvers must name at least one solver",
        ),
        (
            ["evaluate", "--probs", tmp_path, "--labels", tmp_path, "--metric", "acc"],
            2,
            "--metric must be dice or iou",
        ),
        (
            ["evaluate", "--probs", tmp_path / "nope", "--labels", tmp_path],
            2,
            f"--probs {tmp_path / 'nope'} is not a folder",
        ),
        (
            ["evaluate", "--probs", tmp_path, "--labels", tmp_path, "--csv", elsewhere / "r.csv"],
            1,
            f"{elsewhere / 'r.csv'}: cannot be written: the folder {elsewhere} does not exist",
        ),
        (["demo", "--out", tmp_path / "no" / "f.png"], 1, f"{tmp_path / 'no' / 'f.png'}: cannot be written"),
    ]
    for argv, status, message in cases:
        assert main([str(a) for a in argv]) == status, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "o").exists()

    # labels that pair with nothing: nothing can be evaluated
    (tmp_path / "labels").mkdir()
    np.save(tmp_path / "labels" / "other.npy", np.zeros((24, 24), np.int64))
    assert main(["evaluate", "--probs", str(tmp_path), "--labels", str(tmp_path / "labels")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'p.npy'}: no label file named p.* in {tmp_path / 'labels'}" in err
    assert "1 label file(s) have no probability map and were skipped: other" in err
    assert "rankseg evaluate: error: no image could be evaluated" in err


# ---------------------------------------------------------------- the cli extra, progress and quiet


def test_without_the_cli_extra_every_command_names_it_once_and_help_still_works(tmp_path):
    env = blocked(tmp_path, "PIL", "matplotlib", "tqdm")
    np.save(tmp_path / "p.npy", probs_map(0))
    result = run("predict", tmp_path / "p.npy", "--out", tmp_path / "o", env=env)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "rankseg predict: error: the rankseg command needs the 'cli' extra "
        '(missing: pillow, matplotlib, tqdm): pip install "rankseg[cli]"'
    ]
    assert result.stdout == "" and not (tmp_path / "o").exists()
    helped = run("demo", "--help", env=env)
    assert helped.returncode == 0 and "--save-data" in helped.stdout


def test_progress_only_on_request_and_quiet_keeps_only_the_errors(tmp_path, capsys):
    """stderr is not a terminal here: no bar unless --progress; --quiet drops the bar and the line
    per file written, never an error."""
    from rankseg.cli import main

    for name in ("a", "b"):
        np.save(tmp_path / f"{name}.npy", probs_map(0))
    (tmp_path / "bad.npy").write_bytes(b"no")
    inputs = [str(tmp_path / f"{name}.npy") for name in ("a", "bad", "b")]

    assert main(["predict", *inputs, "--out", str(tmp_path / "plain")]) == 1
    plain = capsys.readouterr()
    assert [line.split(" -> ")[0] for line in plain.out.splitlines()] == [inputs[0], inputs[2]]
    assert "[" not in plain.err and len(errors(plain.err)) == 1

    assert main(["predict", *inputs, "--out", str(tmp_path / "bar"), "--progress"]) == 1
    bar = capsys.readouterr()
    assert bar.out == plain.out.replace(str(tmp_path / "plain"), str(tmp_path / "bar"))
    assert "rankseg predict [####################] 3/3 b.npy" in bar.err and len(errors(bar.err)) == 1

    assert main(["predict", *inputs, "--out", str(tmp_path / "quiet"), "--quiet"]) == 1
    quiet = capsys.readouterr()
    assert quiet.out == "" and errors(quiet.err) == errors(plain.err) and "[" not in quiet.err
    assert sorted(p.name for p in (tmp_path / "quiet").iterdir()) == ["a.npy", "a.png", "b.npy", "b.png"]

    with pytest.raises(SystemExit) as info:
        main(["predict", inputs[0], "--out", str(tmp_path / "x"), "--quiet", "--progress"])
    assert info.value.code == 2
    assert "argument --progress: not allowed with argument -q/--quiet" in capsys.readouterr().err
