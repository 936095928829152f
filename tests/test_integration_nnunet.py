"""rankseg.integration.nnunet on prediction folders written by nnU-Net's own export code.

``nnunet_folders.py`` plans four tiny data sets with nnU-Net (a label-based one with an ignore label
and a non-identity transpose, read by SimpleITKIO; a region-based one read by NibabelIO; a 2-D PNG
one read by NaturalImage2DIO, configuration "2d"; a 3-D TIFF one read by Tiff3DIO, spacing in a
``.json`` beside each file), and exports synthetic logits with ``export_prediction_from_logits``.
The checks, on every folder: ``metric="acc"`` gives back nnU-Net's own files (same pixels, file
type and geometry); Dice / IoU files hold ``rankseg.functional.rankseg`` of the saved probabilities
in nnU-Net's array order; the evaluation equals nnU-Net's ``compute_metrics_on_folder``; and (on
the label-based folder) every bad input is reported with its case while the other cases are written.
"""

from __future__ import annotations

import concurrent.futures
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("nnunetv2")

import nibabel
import SimpleITK as sitk
import tifffile
from nnunetv2.evaluation.evaluate_predictions import (
    compute_metrics_on_folder,
    compute_tp_fp_fn_tn,
    region_or_label_to_mask,
)
from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name
from PIL import Image

from rankseg.functional import rankseg
from rankseg.integration import nnunet

import nnunet_folders
from nnunet_folders import Built


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Built]:
    root = tmp_path_factory.mktemp("nnunet")
    return {
        "labels": nnunet_folders.build(nnunet_folders.LABELS, root / "labels"),
        "regions": nnunet_folders.build(nnunet_folders.REGIONS, root / "regions"),
        "png": nnunet_folders.build(nnunet_folders.PNG, root / "png"),
        "tiff": nnunet_folders.build(nnunet_folders.TIFF, root / "tiff"),
    }


@pytest.fixture(params=["labels", "regions", "png", "tiff"])
def folder(request, built) -> Built:
    return built[request.param]


def _probabilities(folder: Built, case: str) -> np.ndarray:
    with np.load(folder.pred_dir / f"{case}.npz") as data:
        return data["probabilities"]


def _reader(folder: Built):
    return recursive_find_reader_writer_by_name(folder.plans["image_reader_writer"])()


def _side_files(folder: Built, case: str) -> list[str]:
    """The files nnU-Net's writer adds beside a segmentation: Tiff3DIO's ``CASE.json`` (the spacing)."""
    return [f"{case}.json"] if folder.plans["image_reader_writer"] == "Tiff3DIO" else []


def _geometry(folder: Built, path: Path) -> tuple:
    """The file's type and geometry, read without nnU-Net: NIfTI size, spacing, origin, direction and
    pixel type; PNG format, mode and size; TIFF shape, dtype, compression and the side file's spacing."""
    if folder.spec.writer == "png":
        with Image.open(path) as image:
            return image.format, image.mode, image.size
    if folder.spec.writer == "tiff":
        with tifffile.TiffFile(path) as tiff:
            kind = tiff.series[0].shape, tiff.series[0].dtype, tiff.pages[0].compression
        return kind, json.loads(path.with_suffix(".json").read_text())
    image = sitk.ReadImage(str(path))
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection(), image.GetPixelID()


def _array_in_nnunet_order(folder: Built, path: Path) -> np.ndarray:
    """The file's voxels in nnU-Net's (z, y, x) order (``(1, H, W)`` for a 2-D image), read without
    nnU-Net."""
    if folder.spec.writer == "png":
        with Image.open(path) as image:
            return np.asarray(image)[None]
    if folder.spec.writer == "tiff":
        return tifffile.imread(path)
    if folder.spec.writer == "sitk":
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    return np.asarray(nibabel.load(str(path)).dataobj).transpose(2, 1, 0)


def _expected(folder: Built, probs: np.ndarray, metric: str) -> np.ndarray:
    """RankSEG of the saved probabilities, labelled as nnU-Net labels (restated, not via LabelManager)."""
    order = folder.dataset_json.get("regions_class_order")
    if order is None:
        return rankseg(probs[None], metric=metric)[0]
    masks = rankseg(probs[None], metric=metric, output_mode="multilabel")[0]
    labels = np.zeros(probs.shape[1:], np.int64)
    for region, label in enumerate(order):  # later regions on top, as nnU-Net paints them
        labels[masks[region]] = label
    return labels


def test_the_folders_are_what_the_tests_claim(built):
    labels, regions, png, tiff = built["labels"], built["regions"], built["png"], built["tiff"]
    assert labels.plans["transpose_forward"] == [2, 0, 1]
    assert labels.plans["image_reader_writer"] == "SimpleITKIO"
    assert regions.plans["image_reader_writer"] == "NibabelIO"
    # chosen by nnU-Net from the file ending (dataset.json names no reader/writer)
    assert "overwrite_image_reader_writer" not in png.dataset_json | tiff.dataset_json
    assert png.plans["image_reader_writer"] == "NaturalImage2DIO"
    assert list(png.plans["configurations"]) == ["2d"]  # nnU-Net plans no 3-D model for 2-D images
    assert tiff.plans["image_reader_writer"] == "Tiff3DIO"
    assert tiff.plans["transpose_forward"] == [2, 0, 1]
    png_shapes = set()
    for case in png.cases:
        properties = pickle.loads((png.pred_dir / f"{case}.pkl").read_bytes())
        assert tuple(properties["spacing"]) == (999, 1, 1)
        with Image.open(png.pred_dir / f"{case}.png") as image:  # nnU-Net's own: an 8-bit grey PNG
            assert (image.format, image.mode) == ("PNG", "L")
            assert _probabilities(png, case).shape == (3, 1, image.height, image.width)
            png_shapes.add(image.size)
    assert len(png_shapes) == len(png.cases)  # cases of different sizes
    for case in tiff.cases:
        assert json.loads((tiff.pred_dir / f"{case}.json").read_text()) == {"spacing": [1.3, 0.95, 2.4]}
    for folder in built.values():
        for case in folder.cases:
            properties = pickle.loads((folder.pred_dir / f"{case}.pkl").read_bytes())
            bbox, shape = properties["bbox_used_for_cropping"], properties["shape_before_cropping"]
            assert any(lo > 0 or hi < size for (lo, hi), size in zip(bbox, shape, strict=True))
            assert _probabilities(folder, case).shape[0] == 3
    for folder in (labels, png, tiff):
        reference = _array_in_nnunet_order(folder, folder.labels_dir / f"case0{folder.file_ending}")
        assert (reference == 3).any()  # the ignore label is in a reference


# ------------------------------------------------------------------------------ postprocessing


def test_acc_gives_back_nnunets_own_segmentations_with_their_geometry(folder, tmp_path):
    out = tmp_path / "out"
    written = nnunet.postprocess_folder(folder.pred_dir, out, {"metric": "acc"})
    assert list(written) == list(folder.cases)
    for case in folder.cases:
        ours, theirs = out / f"{case}{folder.file_ending}", folder.pred_dir / f"{case}{folder.file_ending}"
        assert written[case] == ours
        assert _geometry(folder, ours) == _geometry(folder, theirs)
        np.testing.assert_array_equal(
            _array_in_nnunet_order(folder, ours), _array_in_nnunet_order(folder, theirs)
        )
        ours_seg, theirs_seg = (
            _reader(folder).read_seg(str(ours))[0],
            _reader(folder).read_seg(str(theirs))[0],
        )
        np.testing.assert_array_equal(ours_seg, theirs_seg)
        if folder.spec.writer == "nibabel":
            np.testing.assert_array_equal(nibabel.load(str(ours)).affine, nibabel.load(str(theirs)).affine)
        for name in _side_files(folder, case):
            assert (out / name).read_bytes() == (folder.pred_dir / name).read_bytes()
    for name in ("dataset.json", "plans.json"):
        assert (out / name).read_bytes() == (folder.pred_dir / name).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{c}{folder.file_ending}" for c in folder.cases]
        + [name for c in folder.cases for name in _side_files(folder, c)]
        + ["dataset.json", "plans.json"]
    )


@pytest.mark.parametrize("metric", ["dice", "iou"])
def test_dice_and_iou_files_hold_rankseg_of_the_saved_probabilities(folder, metric, tmp_path):
    out = tmp_path / "out"
    nnunet.postprocess_folder(folder.pred_dir, out, {"metric": metric})
    changed = 0
    for case in folder.cases:
        ours, theirs = out / f"{case}{folder.file_ending}", folder.pred_dir / f"{case}{folder.file_ending}"
        expected = _expected(folder, _probabilities(folder, case), metric)
        np.testing.assert_array_equal(_array_in_nnunet_order(folder, ours), expected)
        np.testing.assert_array_equal(_reader(folder).read_seg(str(ours))[0][0], expected)
        assert _geometry(folder, ours) == _geometry(folder, theirs)
        changed += int((_array_in_nnunet_order(folder, theirs) != expected).sum())
    assert changed > 0  # RankSEG differs from nnU-Net's own rule on these probabilities


def test_rankseg_segmentation_on_tensors_equals_the_numpy_path(built, device):
    folder = built["labels"]
    probs = _probabilities(folder, "case0")
    expected = nnunet.rankseg_segmentation(probs, folder.dataset_json, {"metric": "dice"}, plans=folder.plans)
    on_device = nnunet.rankseg_segmentation(
        torch.from_numpy(probs).to(device), folder.dataset_json, {"metric": "dice"}, plans=folder.plans
    )
    assert on_device.dtype == np.uint8
    np.testing.assert_array_equal(on_device, expected)


@pytest.mark.parametrize("metric", ["dice", "acc"])
def test_regions_are_painted_in_regions_class_order_later_on_top(metric):
    dataset_json = {
        "labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]},
        "regions_class_order": [3, 1, 2],  # not increasing: the painting order decides overlaps
    }
    sigmoids = np.random.default_rng(7).random((3, 5, 9, 8)).astype(np.float32)
    masks = (
        rankseg(sigmoids[None], metric=metric, output_mode="multilabel")[0]
        if metric != "acc"
        else sigmoids > 0.5
    )
    expected = np.zeros(sigmoids.shape[1:], np.int64)
    for region, label in enumerate(dataset_json["regions_class_order"]):
        expected[masks[region]] = label
    largest = (masks * np.array([3, 1, 2])[:, None, None, None]).max(axis=0)
    assert (expected != largest).any()  # overlaps exist where the order matters
    np.testing.assert_array_equal(
        nnunet.rankseg_segmentation(sigmoids, dataset_json, {"metric": metric}), expected
    )


def test_cases_run_in_worker_processes(built, tmp_path):
    folder = built["regions"]
    tasks = nnunet.prepare_postprocess(folder.pred_dir, tmp_path / "out", {"metric": "iou"})
    with concurrent.futures.ProcessPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(nnunet.postprocess_case, tasks))
    assert [r.case for r in results] == list(folder.cases)
    assert all(r.error is None and Path(r.output).is_file() for r in results)
    for case in folder.cases:
        np.testing.assert_array_equal(
            _array_in_nnunet_order(folder, tmp_path / "out" / f"{case}{folder.file_ending}"),
            _expected(folder, _probabilities(folder, case), "iou"),
        )


# ---------------------------------------------------------------------------------- evaluation


def _nnunet_summary(folder: Built, predictions: Path) -> dict:
    manager = nnunet._label_manager(folder.plans, folder.dataset_json)
    keys = manager.foreground_regions if manager.has_regions else manager.foreground_labels
    return compute_metrics_on_folder(
        str(folder.labels_dir),
        str(predictions),
        None,
        _reader(folder),
        folder.file_ending,
        keys,
        manager.ignore_label,
        num_processes=1,
    )


def _assert_same_as_nnunet(
    evaluation: nnunet.NnunetEvaluation, method: str, summary: dict, file_ending: str = ".nii.gz"
) -> None:
    per_case = summary["metric_per_case"]
    assert [Path(c["prediction_file"]).name for c in per_case] == [
        f"{case}{file_ending}" for case in evaluation.cases
    ]
    for k, key in enumerate(evaluation.keys):
        theirs = np.array([c["metrics"][key]["Dice"] for c in per_case], dtype=np.float64)
        np.testing.assert_allclose(evaluation.dice[method][:, k], theirs, rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(
            evaluation.iou[method][:, k],
            [c["metrics"][key]["IoU"] for c in per_case],
            rtol=1e-12,
            equal_nan=True,
        )
        for i, name in enumerate(("TP", "FP", "FN", "TN")):
            assert evaluation.counts[method][:, k, i].tolist() == [c["metrics"][key][name] for c in per_case]
        np.testing.assert_allclose(evaluation.mean_dice[method][k], summary["mean"][key]["Dice"], rtol=1e-12)
    np.testing.assert_allclose(
        evaluation.foreground_mean_dice[method], summary["foreground_mean"]["Dice"], rtol=1e-12
    )


def test_evaluation_gives_nnunets_own_dice_for_both_methods(folder, tmp_path):
    evaluation = nnunet.evaluate_folder(folder.pred_dir, folder.labels_dir, {"metric": "dice"})
    assert evaluation.methods == (nnunet.BASELINE, "RMA")
    assert evaluation.cases == folder.cases and evaluation.failed == {}
    summary = _nnunet_summary(folder, folder.pred_dir)
    _assert_same_as_nnunet(evaluation, nnunet.BASELINE, summary, folder.file_ending)
    nnunet.postprocess_folder(folder.pred_dir, tmp_path / "rankseg", {"metric": "dice"})
    _assert_same_as_nnunet(
        evaluation, "RMA", _nnunet_summary(folder, tmp_path / "rankseg"), folder.file_ending
    )
    assert (evaluation.dice["RMA"] != evaluation.dice[nnunet.BASELINE]).any()  # two different folders
    if folder.spec.regions_class_order is None and len(folder.cases) > 2:
        assert np.isnan(evaluation.dice[nnunet.BASELINE][2, 1])  # case2 has no tumour: NaN, left out
        assert not np.isnan(evaluation.mean_dice[nnunet.BASELINE]).any()


def test_evaluation_table_and_several_solvers(built):
    folder = built["labels"]
    evaluation = nnunet.evaluate_folder(folder.pred_dir, folder.labels_dir, solvers=["RMA", "exact", "RMA"])
    assert evaluation.methods == (nnunet.BASELINE, "RMA", "exact")
    assert set(evaluation.seconds) == {"RMA", "exact"}
    assert evaluation.present.tolist() == [3, 2]
    lines = nnunet.format_table(evaluation).splitlines()
    assert lines[0].split()[:4] == ["label/region", "cases", "nnU-Net", "Dice"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "mean"]
    mean = lines[-1].split()
    assert mean[2] == f"{evaluation.foreground_mean_dice[nnunet.BASELINE]:.4f}"
    gain = evaluation.foreground_mean_dice["exact"] - evaluation.foreground_mean_dice[nnunet.BASELINE]
    assert mean[-1] == f"{gain:+.4f}"


@settings(max_examples=100)
@given(
    reference=st.lists(st.integers(0, 6), min_size=0, max_size=40),
    prediction_seed=st.integers(0, 2**32 - 1),
    ignore=st.sampled_from([None, 4]),
)
def test_region_counts_equal_nnunets_compute_tp_fp_fn_tn(reference, prediction_seed, ignore):
    reference = np.array(reference, dtype=np.int64)
    prediction = np.random.default_rng(prediction_seed).integers(0, 7, size=reference.shape)
    keys = (1, 2, (1, 2, 3), (2, 3), 5)
    counts = nnunet._region_counts(reference, prediction, keys, ignore)
    ignore_mask = reference == ignore if ignore is not None else None
    for k, key in enumerate(keys):
        theirs = compute_tp_fp_fn_tn(
            region_or_label_to_mask(reference, key), region_or_label_to_mask(prediction, key), ignore_mask
        )
        assert counts[k].tolist() == [int(v) for v in theirs]


# -------------------------------------------------------------------------------- bad inputs


def _copy(folder: Built, target: Path) -> Path:
    shutil.copytree(folder.pred_dir, target)
    return target


@pytest.mark.parametrize("missing", ["plans.json", "dataset.json"])
def test_a_folder_without_plans_or_dataset_json_is_refused(built, tmp_path, missing):
    pred = _copy(built["labels"], tmp_path / "pred")
    (pred / missing).unlink()
    with pytest.raises(
        nnunet.NnunetFolderError, match=rf"pred_dir '.*pred' has no {missing}; nnUNetv2_predict"
    ):
        nnunet.postprocess_folder(pred, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=rf"has no {missing}"):
        nnunet.evaluate_folder(pred, built["labels"].labels_dir)


def test_a_folder_without_probabilities_is_refused(built, tmp_path):
    pred = _copy(built["labels"], tmp_path / "pred")
    for npz in pred.glob("*.npz"):
        npz.unlink()
    with pytest.raises(nnunet.NnunetFolderError, match=r"no CASE\.npz .* --save_probabilities"):
        nnunet.postprocess_folder(pred, tmp_path / "out")


@pytest.fixture
def broken(built, tmp_path) -> Path:
    """The label folder plus one bad case of each kind."""
    folder = built["labels"]
    pred = _copy(folder, tmp_path / "pred")
    probs = _probabilities(folder, "case1")
    shutil.copy(pred / "case0.npz", pred / "nopkl.npz")
    data = (pred / "case1.npz").read_bytes()
    (pred / "truncated.npz").write_bytes(data[: len(data) // 2])
    (pred / "corrupt.npz").write_bytes(b"not a zip file at all" * 10)
    two = probs[:2] / probs[:2].sum(axis=0, keepdims=True)
    np.savez_compressed(pred / "twoclasses.npz", probabilities=two)
    nan = probs.copy()
    nan[0, 0, 0, 0] = np.nan
    np.savez_compressed(pred / "nan.npz", probabilities=nan)
    shutil.copy(pred / "case1.npz", pred / "mixed.npz")  # probabilities of case1, geometry of case0
    for name in ("truncated", "corrupt", "twoclasses", "nan"):
        shutil.copy(pred / "case1.pkl", pred / f"{name}.pkl")
    shutil.copy(pred / "case0.pkl", pred / "mixed.pkl")
    return pred


REASONS = {
    "nopkl": r"nopkl: .*nopkl\.npz has no nopkl\.pkl beside it; nnUNetv2_predict --save_probabilities "
    r"writes both",
    "truncated": r"truncated: .*truncated\.npz cannot be read, the file is corrupt or truncated",
    "corrupt": r"corrupt: .*corrupt\.npz cannot be read: it is not an \.npz \(zip\) archive, "
    r"the file is corrupt",
    "twoclasses": r"twoclasses: .*twoclasses\.npz has 2 probability channel\(s\) .* but dataset\.json "
    r"defines 3 labels \(0, 1, 2\)",
    "nan": r"nan: .*nan\.npz: probs .*NaN",
    "mixed": r"mixed: .*mixed\.npz has probabilities of spatial shape \(11, 17, 9\), but mixed\.pkl records "
    r"an image of shape \(12, 16, 10\)",
}


def test_bad_cases_are_named_with_their_reason_and_the_others_are_written(built, broken, tmp_path):
    folder = built["labels"]
    out = tmp_path / "out"
    with pytest.raises(nnunet.NnunetCaseError, match=r"6 of 9 case\(s\) failed \(3 written\)") as info:
        nnunet.postprocess_folder(broken, out, {"metric": "dice"})
    assert sorted(info.value.failed) == sorted(REASONS)
    for case, pattern in REASONS.items():
        assert _matches(pattern, info.value.failed[case]), info.value.failed[case]
    assert sorted(info.value.written) == list(folder.cases)
    for case in folder.cases:
        np.testing.assert_array_equal(
            _array_in_nnunet_order(folder, out / f"{case}.nii.gz"),
            _expected(folder, _probabilities(folder, case), "dice"),
        )
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{c}.nii.gz" for c in folder.cases] + ["dataset.json", "plans.json"]
    )  # nothing half-written, no temporary file left behind

    evaluation = nnunet.evaluate_folder(broken, folder.labels_dir)
    assert evaluation.cases == folder.cases
    assert sorted(evaluation.failed) == sorted(REASONS)
    for case, pattern in REASONS.items():
        if case == "nan":  # readable, so its missing reference is found first
            pattern = r"nan: no reference segmentation .*nan\.nii\.gz"
        assert _matches(pattern, evaluation.failed[case]), evaluation.failed[case]


def _matches(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def test_a_palette_or_rgb_png_reference_is_refused_not_read_as_its_red_channel(built, tmp_path):
    # NaturalImage2DIO reads a palette PNG as RGB, (3, 1, H, W): label 1 painted red would be
    # evaluated as label 255 if the first channel were taken as the label map (Dice 0, silently).
    folder = built["png"]
    labels = tmp_path / "labels"
    shutil.copytree(folder.labels_dir, labels)
    grey = _array_in_nnunet_order(folder, folder.labels_dir / "case0.png")[0]
    palette = Image.fromarray(grey, mode="L").convert("P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    palette.save(labels / "case0.png")
    with Image.open(labels / "case0.png") as saved:
        assert saved.mode == "P" and (np.asarray(saved) == grey).all()  # the same labels, as indices
    # RGB with the label in every channel: refused too, a label map has one channel
    grey = _array_in_nnunet_order(folder, folder.labels_dir / "case1.png")[0]
    Image.fromarray(np.repeat(grey[..., None], 3, axis=-1), mode="RGB").save(labels / "case1.png")
    evaluation = nnunet.evaluate_folder(folder.pred_dir, labels)
    assert evaluation.cases == ("case2",)
    for case in ("case0", "case1"):
        assert _matches(
            rf"{case}: reference .*{case}\.png has 3 channels as NaturalImage2DIO reads it \(an RGB\(A\) or "
            r"palette image\?\); a segmentation has one channel of label values",
            evaluation.failed[case],
        ), evaluation.failed[case]


def test_an_evaluation_case_without_reference_is_reported(built, tmp_path):
    folder = built["labels"]
    labels = tmp_path / "labels"
    shutil.copytree(folder.labels_dir, labels)
    (labels / "case1.nii.gz").unlink()
    evaluation = nnunet.evaluate_folder(folder.pred_dir, labels)
    assert evaluation.cases == ("case0", "case2")
    assert _matches(r"case1: no reference segmentation .*case1\.nii\.gz", evaluation.failed["case1"])
    with pytest.raises(ValueError, match="no case could be evaluated:\n  case0: no reference"):
        nnunet.evaluate_folder(folder.pred_dir, tmp_path)


def test_existing_outputs_are_kept_without_force_and_replaced_with_it(built, tmp_path):
    folder = built["labels"]
    out = tmp_path / "out"
    nnunet.postprocess_folder(folder.pred_dir, out, {"metric": "acc"})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(nnunet.NnunetCaseError, match=r"3 of 3 case\(s\) failed") as info:
        nnunet.postprocess_folder(folder.pred_dir, out, {"metric": "dice"})
    assert _matches(r"case0: .*case0\.nii\.gz exists; pass force=True", info.value.failed["case0"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    nnunet.postprocess_folder(folder.pred_dir, out, {"metric": "dice"}, force=True)
    np.testing.assert_array_equal(
        _array_in_nnunet_order(folder, out / "case0.nii.gz"),
        _expected(folder, _probabilities(folder, "case0"), "dice"),
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(before)


def test_force_must_be_a_bool_so_that_a_truthy_string_replaces_nothing(built, tmp_path):
    folder = built["labels"]
    out = tmp_path / "out"
    nnunet.postprocess_folder(folder.pred_dir, out, {"metric": "acc"})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(TypeError, match=r"force must be True or False; got 'no'"):
        nnunet.postprocess_folder(folder.pred_dir, out, {"metric": "dice"}, force="no")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_side_file_without_its_segmentation_is_named_as_such_and_kept_without_force(built, tmp_path):
    folder = built["tiff"]
    out = tmp_path / "out"
    nnunet.postprocess_folder(folder.pred_dir, out, {"metric": "acc"})
    (out / "case0.tif").unlink()  # as a run stopped between Tiff3DIO's case0.json and case0.tif leaves it
    side = (out / "case0.json").read_bytes()
    with pytest.raises(nnunet.NnunetCaseError) as info:
        nnunet.postprocess_folder(folder.pred_dir, out, {"metric": "acc"})
    assert _matches(
        r"case0: .*case0\.json exists but case0\.tif does not \(left by an interrupted run.*pass force=True",
        info.value.failed["case0"],
    )
    assert not (out / "case0.tif").exists() and (out / "case0.json").read_bytes() == side
    nnunet.postprocess_folder(folder.pred_dir, out, {"metric": "acc"}, force=True)
    assert (out / "case0.tif").read_bytes() == (folder.pred_dir / "case0.tif").read_bytes()


def test_an_output_folder_of_another_model_is_refused_without_force(built, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "plans.json").write_text(json.dumps({"plans_name": "another"}))
    with pytest.raises(nnunet.NnunetFolderError, match=r"plans\.json exists and differs from .*force=True"):
        nnunet.postprocess_folder(built["labels"].pred_dir, out)
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "plans.json"]
    assert json.loads((out / "plans.json").read_text()) == {"plans_name": "another"}


def test_the_prediction_folder_is_never_an_output(built, tmp_path):
    pred = _copy(built["labels"], tmp_path / "pred")
    before = {p.name: p.read_bytes() for p in pred.iterdir()}
    with pytest.raises(ValueError, match=r"out_dir '.*pred' is pred_dir"):
        nnunet.postprocess_folder(pred, tmp_path / "pred" / ".." / "pred", force=True)
    assert {p.name: p.read_bytes() for p in pred.iterdir()} == before


@pytest.mark.parametrize(
    ("name", "kwargs", "error", "pattern"),
    [
        ("labels", {"metric": "f1"}, ValueError, "metric must be one of"),
        ("labels", ["dice"], TypeError, "rankseg_kwargs must be a dict of RankSEG arguments; got list"),
        ("labels", {"output_mode": "multilabel"}, ValueError, "output_mode='multilabel', but this nnU-Net"),
        (
            "regions",
            {"output_mode": "multiclass"},
            ValueError,
            "predicts regions .* output_mode='multilabel'",
        ),
        ("labels", {"unassigned_policy": "void"}, ValueError, "unassigned_policy='void'"),
        ("labels", {"temperature": 2}, TypeError, "unexpected solver parameter"),
    ],
)
def test_bad_rankseg_options_are_refused_before_anything_is_written(
    built, tmp_path, name, kwargs, error, pattern
):
    with pytest.raises(error, match=pattern):
        nnunet.postprocess_folder(built[name].pred_dir, tmp_path / "out", kwargs)
    assert not (tmp_path / "out").exists()
    with pytest.raises(error, match=pattern):
        nnunet.evaluate_folder(built[name].pred_dir, built[name].labels_dir, kwargs)


def test_unknown_classes_in_plans_are_named(built, tmp_path):
    pred = _copy(built["labels"], tmp_path / "pred")
    plans = json.loads((pred / "plans.json").read_text())
    (pred / "plans.json").write_text(json.dumps({**plans, "label_manager": "NoSuchManager"}))
    with pytest.raises(
        nnunet.NnunetFolderError,
        match=r"pred/plans\.json: label_manager 'NoSuchManager' is not a class nnU-Net has",
    ):
        nnunet.postprocess_folder(pred, tmp_path / "out")
    (pred / "plans.json").write_text(json.dumps({**plans, "image_reader_writer": "NoSuchIO"}))
    with pytest.raises(
        nnunet.NnunetFolderError, match=r"plans\.json: Unable to find reader writer class 'NoSuchIO'"
    ):
        nnunet.postprocess_folder(pred, tmp_path / "out")
    with pytest.raises(ValueError, match="solvers must be a non-empty list"):
        nnunet.evaluate_folder(built["labels"].pred_dir, built["labels"].labels_dir, solvers="RMA")


def test_channel_count_and_dataset_json_are_checked_in_memory_too(built):
    folder = built["regions"]
    probs = _probabilities(folder, "case0")[:2]
    with pytest.raises(ValueError, match=r"have 2 channel\(s\), but dataset.json defines 3 regions"):
        nnunet.rankseg_segmentation(probs, folder.dataset_json)
    with pytest.raises(ValueError, match=r"dataset_json must be the content of nnU-Net's dataset\.json"):
        nnunet.rankseg_segmentation(probs, {"file_ending": ".nii.gz"})


# ------------------------------------------------------------------------------- documentation

DOCS = Path(__file__).resolve().parents[1] / "docs" / "integration-nnunet.md"


def _blocks(markdown: str, language: str) -> list[str]:
    blocks, current, inside = [], [], False
    for line in markdown.splitlines():
        if line.strip() == f"```{language}":
            inside, current = True, []
        elif line.strip() == "```" and inside:
            inside = False
            blocks.append("\n".join(current))
        elif inside:
            current.append(line)
    return blocks


def test_the_documented_python_calls_run_on_an_nnunet_folder(built, tmp_path, monkeypatch, capsys):
    folder = built["labels"]
    blocks = _blocks(DOCS.read_text(), "python")
    assert len(blocks) == 2
    for i, block in enumerate(blocks):
        here = tmp_path / str(i)
        shutil.copytree(folder.pred_dir, here / "pred")
        shutil.copytree(folder.labels_dir, here / "labelsTs")
        monkeypatch.chdir(here)
        exec(compile(block, str(DOCS), "exec"), {"__name__": "__main__"})
        written = sorted(p.name for p in (here / "pred_rankseg").iterdir())
        assert written == sorted([f"{c}.nii.gz" for c in folder.cases] + ["dataset.json", "plans.json"])
    out = capsys.readouterr().out
    assert [line.split() for line in out.splitlines()[-len(folder.cases) :]] == [
        [case, f"pred_rankseg/{case}.nii.gz"] for case in folder.cases
    ]


def test_the_documented_table_is_what_format_table_prints(built):
    folder = built["labels"]
    evaluation = nnunet.evaluate_folder(
        folder.pred_dir, folder.labels_dir, {"metric": "dice"}, solvers=["RMA", "exact"]
    )
    assert _blocks(DOCS.read_text(), "text") == [nnunet.format_table(evaluation)]


# ------------------------------------------------------------------------------------ packaging


def test_rankseg_does_not_import_nnunetv2_and_without_it_the_error_names_the_extra():
    code = (
        "import sys\n"
        "import rankseg, rankseg.functional, rankseg.integration\n"
        "print('nnunetv2' in sys.modules)\n"
        "sys.modules['nnunetv2'] = None  # as if it were not installed\n"
        "try:\n"
        "    import rankseg.integration.nnunet\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    imported, message = out.splitlines()
    assert imported == "False"
    assert message.startswith(
        'rankseg.integration.nnunet needs nnU-Net v2 (the nnunetv2 package): pip install "rankseg[nnunet]"'
    )
