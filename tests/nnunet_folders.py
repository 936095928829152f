"""Real nnU-Net prediction folders for the tests, made by nnU-Net's own code.

A tiny raw data set (images with non-trivial spacing, origin and direction, and a zero border so
that nnU-Net's cropping box is smaller than the image) is planned by nnU-Net's ``ExperimentPlanner``
(which writes ``nnUNetPlans.json``: transpose, reader/writer, resampling), test images are
preprocessed by its ``DefaultPreprocessor.run_case`` (transpose, crop, resample, as
``nnUNetv2_predict`` does), and synthetic logits in that preprocessed space are exported by
``export_prediction_from_logits(..., save_probabilities=True)``: ``CASE.npz``, ``CASE.pkl`` and
nnU-Net's own segmentation. ``dataset.json`` and ``plans.json`` are saved into the folder as
``nnUNetPredictor`` saves them.

The one step not run as nnU-Net runs it is fingerprint extraction: its ``run()`` starts a "spawn"
process pool (several seconds per data set here), so the builder calls the extractor's own
per-case ``DatasetFingerprintExtractor.analyze_case`` in this process and saves the same
aggregate ``run()`` saves.

Besides the two NIfTI data sets (3-D, configuration "3d_fullres"), two data sets use nnU-Net's
other reader/writers, chosen by nnU-Net from the file ending as ``nnUNetv2_plan_and_preprocess``
chooses them: a 2-D natural-image data set (``.png``, written with Pillow as 8-bit grey images,
read by ``NaturalImage2DIO`` as arrays of shape ``(1, H, W)`` with spacing ``(999, 1, 1)``; nnU-Net
plans only its "2d" configuration) and a 3-D TIFF data set (``.tif``, read by ``Tiff3DIO``, whose
only geometry is the spacing in a ``CASE.json`` beside each file).

Logits follow simple shapes (seen through the same preprocessing) plus Gaussian noise, so
boundaries are uncertain and RankSEG and argmax disagree on some voxels. The reference labels
(``labelsTs``) are drawn voxel by voxel from the saved probabilities, so the probabilities are
calibrated for them, plus the ignore label in a corner of the label-based data set.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel
import numpy as np
import SimpleITK as sitk
import tifffile
import torch
from batchgenerators.utilities.file_and_folder_operations import save_json
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
from nnunetv2.inference.export_prediction import export_prediction_from_logits
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
from PIL import Image

CONFIGURATION = "3d_fullres"


@dataclass(frozen=True)
class Geometry:
    """World geometry of a volume whose array is in nnU-Net's (z, y, x) order."""

    spacing_xyz: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # row-major 3x3 rotation


def _rotation(about_z: float, about_x: float) -> tuple[float, ...]:
    cz, sz, cx, sx = math.cos(about_z), math.sin(about_z), math.cos(about_x), math.sin(about_x)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return tuple(float(v) for v in (rz @ rx).reshape(-1))


@dataclass(frozen=True)
class Spec:
    """One data set: its labels, reader/writer, geometry, file ending and nnU-Net configuration."""

    name: str
    labels: dict
    regions_class_order: list | None
    writer: str  # "sitk", "nibabel", "png" (Pillow) or "tiff" (tifffile): how the raw files are written
    overwrite_image_reader_writer: str | None
    train_geometry: Geometry
    test_geometry: Geometry
    train_shapes: tuple[tuple[int, int, int], ...]
    test_shapes: tuple[tuple[int, int, int], ...]
    file_ending: str = ".nii.gz"
    configuration: str = CONFIGURATION


# Spacing (x, y, z) = (3.0, 0.8, 1.1): nnU-Net's (z, y, x) spacing is (1.1, 0.8, 3.0), its largest
# axis is the last one, so the planner chooses transpose_forward [2, 0, 1] (not its own inverse).
LABELS = Spec(
    name="Dataset901_Labels",
    labels={"background": 0, "liver": 1, "tumour": 2, "ignore": 3},
    regions_class_order=None,
    writer="sitk",
    overwrite_image_reader_writer=None,
    train_geometry=Geometry((3.0, 0.8, 1.1), (12.5, -30.25, 7.0), _rotation(0.5, 0.3)),
    test_geometry=Geometry((3.3, 0.75, 1.2), (-4.0, 18.5, 101.25), _rotation(-0.4, 0.2)),
    train_shapes=((12, 16, 10), (13, 15, 10)),
    test_shapes=((12, 16, 10), (11, 17, 9), (13, 15, 11)),
)

# Region-based (BraTS-like), read and written by NibabelIO (which transposes its arrays to
# SimpleITK's order); one region given as a bare label.
REGIONS = Spec(
    name="Dataset902_Regions",
    labels={"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3},
    regions_class_order=[1, 2, 3],
    writer="nibabel",
    overwrite_image_reader_writer="NibabelIO",
    train_geometry=Geometry((1.0, 1.25, 2.5), (3.0, 4.0, -5.0), _rotation(0.25, -0.35)),
    test_geometry=Geometry((1.1, 1.2, 2.4), (-1.5, 0.5, 2.0), _rotation(0.7, 0.1)),
    train_shapes=((10, 14, 12), (10, 13, 13)),
    test_shapes=((10, 14, 12), (9, 15, 13)),
)


# A 2-D natural-image data set: nnU-Net picks NaturalImage2DIO for ".png" and, as every image has
# one plane (array shape (1, H, W), spacing (999, 1, 1)), plans the "2d" configuration only. PNG
# files carry no geometry (the Geometry below is not written). Cases of several sizes.
PNG = Spec(
    name="Dataset903_Png",
    labels={"background": 0, "cell": 1, "nucleus": 2, "ignore": 3},
    regions_class_order=None,
    writer="png",
    overwrite_image_reader_writer=None,
    train_geometry=Geometry((1.0, 1.0, 999.0), (0.0, 0.0, 0.0), _rotation(0.0, 0.0)),
    test_geometry=Geometry((1.0, 1.0, 999.0), (0.0, 0.0, 0.0), _rotation(0.0, 0.0)),
    train_shapes=((1, 24, 20), (1, 22, 26)),
    test_shapes=((1, 24, 20), (1, 21, 27), (1, 26, 19)),
    file_ending=".png",
    configuration="2d",
)

# A 3-D TIFF data set: for ".tif" nnU-Net tries NaturalImage2DIO first, which refuses a volume
# whose last axis is not 3 or 4 (RGB/RGBA), and then picks Tiff3DIO. Tiff3DIO keeps only the
# spacing, from "CASE.json" beside each file, in array order (z, y, x) = the reversed spacing_xyz:
# (1.2, 0.9, 2.6), largest on the last axis, so the transpose is [2, 0, 1] here too.
TIFF = Spec(
    name="Dataset904_Tiff",
    labels={"background": 0, "liver": 1, "tumour": 2, "ignore": 3},
    regions_class_order=None,
    writer="tiff",
    overwrite_image_reader_writer=None,
    train_geometry=Geometry((2.6, 0.9, 1.2), (0.0, 0.0, 0.0), _rotation(0.0, 0.0)),
    test_geometry=Geometry((2.4, 0.95, 1.3), (0.0, 0.0, 0.0), _rotation(0.0, 0.0)),
    train_shapes=((12, 16, 10), (13, 15, 10)),
    test_shapes=((12, 16, 10), (11, 17, 9)),
    file_ending=".tif",
)


@dataclass(frozen=True)
class Built:
    """A prediction folder made by nnU-Net, and the reference labels of its cases."""

    spec: Spec
    pred_dir: Path
    labels_dir: Path
    images_dir: Path
    dataset_json: dict
    plans: dict
    cases: tuple[str, ...]

    @property
    def file_ending(self) -> str:
        return self.dataset_json["file_ending"]


def write_volume(array_zyx: np.ndarray, path: Path, geometry: Geometry, writer: str) -> None:
    """Write a (z, y, x) array with the given world geometry: a NIfTI file ("sitk", "nibabel"), an
    8-bit grey PNG of its one plane ("png"), or a TIFF with its spacing in a .json beside it
    ("tiff", named as Tiff3DIO looks for it: without the channel suffix "_0000" of images)."""
    if writer == "png":
        if array_zyx.shape[0] != 1:
            raise ValueError(f"a PNG holds one plane; got an array of shape {array_zyx.shape}")
        plane = np.clip(np.round(array_zyx[0]), 0, 255).astype(np.uint8)
        Image.fromarray(plane, mode="L").save(path)
        return
    if writer == "tiff":
        tifffile.imwrite(path, array_zyx)
        stem = path.name[: -len(".tif")]
        stem = stem[: -len("_0000")] if stem.endswith("_0000") else stem
        save_json({"spacing": list(geometry.spacing_xyz[::-1])}, str(path.with_name(f"{stem}.json")))
        return
    if writer == "sitk":
        image = sitk.GetImageFromArray(array_zyx)
        image.SetSpacing(geometry.spacing_xyz)
        image.SetOrigin(geometry.origin)
        image.SetDirection(geometry.direction)
        sitk.WriteImage(image, str(path), True)
        return
    affine = np.eye(4)
    affine[:3, :3] = np.array(geometry.direction).reshape(3, 3) @ np.diag(geometry.spacing_xyz)
    affine[:3, 3] = geometry.origin
    nibabel.save(nibabel.Nifti1Image(np.ascontiguousarray(array_zyx.transpose(2, 1, 0)), affine), str(path))


def _volumes(shape: tuple[int, int, int], rng: np.random.Generator, spec: Spec, variant: int):
    """An image with a zero border (nnU-Net crops it) and labelled shapes inside the body."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    image = np.zeros(shape, np.float32)
    body = (slice(1, shape[0] - 1), slice(2, shape[1] - 1), slice(1, shape[2] - 2))
    image[body] = 100 + 20 * rng.standard_normal(image[body].shape)
    inside = np.zeros(shape, bool)
    inside[body] = True
    labels = np.zeros(shape, np.uint8)
    outer = ((z - 0.1) / 0.7) ** 2 + ((y + 0.05) / 0.6) ** 2 + ((x - 0.1) / 0.55) ** 2 <= 1
    inner = ((z - 0.15) / 0.35) ** 2 + ((y - 0.1) / 0.3) ** 2 + ((x - 0.05) / 0.3) ** 2 <= 1
    core = ((z - 0.15) / 0.2) ** 2 + ((y - 0.1) / 0.18) ** 2 + ((x - 0.05) / 0.2) ** 2 <= 1
    labels[outer & inside] = 1
    if spec.regions_class_order is None:
        if variant != 2:  # the third case has no tumour: Dice is NaN there for both methods
            labels[inner & inside] = 2
        labels[(x > 0.3) & (z < -0.3) & inside] = 3  # the ignore label
    else:
        labels[inner & inside] = 2
        labels[core & inside] = 3
    return image, labels


def _planes(shape: tuple[int, int, int], rng: np.random.Generator, spec: Spec, variant: int):
    """A one-plane (1, H, W) image with a zero border (nnU-Net crops it; the inside is never 0,
    so that it survives the 8-bit PNG) and a cell, its nucleus and an ignored corner."""
    y, x = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape[1:]), indexing="ij")
    image = np.zeros(shape, np.float32)
    body = (slice(None), slice(2, shape[1] - 1), slice(1, shape[2] - 3))
    image[body] = np.clip(100 + 20 * rng.standard_normal(image[body].shape), 1, 255)
    inside = np.zeros(shape, bool)
    inside[body] = True
    labels = np.zeros(shape, np.uint8)
    cell = ((y + 0.05) / 0.65) ** 2 + ((x - 0.1) / 0.6) ** 2 <= 1
    nucleus = ((y - 0.1) / 0.3) ** 2 + ((x - 0.05) / 0.35) ** 2 <= 1
    labels[cell[None] & inside] = 1
    if variant != 2:  # the third case has no nucleus: Dice is NaN there for both methods
        labels[nucleus[None] & inside] = 2
    labels[((x > 0.4) & (y < -0.4))[None] & inside] = 3  # the ignore label
    return image, labels


def _planned(spec: Spec, root: Path, rng: np.random.Generator) -> tuple[dict, dict]:
    raw = root / "nnUNet_raw" / spec.name
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    dataset_json = {
        "channel_names": {"0": "MRI"},
        "labels": spec.labels,
        "numTraining": len(spec.train_shapes),
        "file_ending": spec.file_ending,
    }
    if spec.regions_class_order is not None:
        dataset_json["regions_class_order"] = spec.regions_class_order
    if spec.overwrite_image_reader_writer is not None:
        dataset_json["overwrite_image_reader_writer"] = spec.overwrite_image_reader_writer
    save_json(dataset_json, str(raw / "dataset.json"), sort_keys=False)
    ending = spec.file_ending
    for i, shape in enumerate(spec.train_shapes):
        image, labels = _images(spec)(shape, rng, spec, i)
        write_volume(image, raw / "imagesTr" / f"train{i}_0000{ending}", spec.train_geometry, spec.writer)
        write_volume(labels, raw / "labelsTr" / f"train{i}{ending}", spec.train_geometry, spec.writer)

    # The fingerprint, as DatasetFingerprintExtractor.run() aggregates it (without its process pool).
    dataset = get_filenames_of_train_images_and_targets(str(raw), dataset_json)
    first = next(iter(dataset.values()))["images"][0]
    reader_writer = determine_reader_writer_from_dataset_json(dataset_json, first, verbose=False)
    cases = [
        DatasetFingerprintExtractor.analyze_case(entry["images"], entry["label"], reader_writer, 10000)
        for entry in dataset.values()
    ]
    intensities = np.concatenate([case[2][0] for case in cases])
    low, median, high = np.percentile(intensities, (0.5, 50.0, 99.5))
    fingerprint = {
        "spacings": [case[1] for case in cases],
        "shapes_after_crop": [case[0] for case in cases],
        "foreground_intensity_properties_per_channel": {
            0: {
                "mean": float(np.mean(intensities)),
                "median": float(median),
                "std": float(np.std(intensities)),
                "min": float(np.min(intensities)),
                "max": float(np.max(intensities)),
                "percentile_99_5": float(high),
                "percentile_00_5": float(low),
            }
        },
        "median_relative_size_after_cropping": np.median([case[4] for case in cases], 0),
    }
    preprocessed = root / "nnUNet_preprocessed" / spec.name
    preprocessed.mkdir(parents=True)
    save_json(fingerprint, str(preprocessed / "dataset_fingerprint.json"))

    ExperimentPlanner(spec.name).plan_experiment()  # writes nnUNetPlans.json
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    return dataset_json, plans


def _images(spec: Spec):
    return _planes if spec.configuration == "2d" else _volumes


def _logits(seg: np.ndarray, spec: Spec, rng: np.random.Generator, variant: int) -> np.ndarray:
    """Synthetic network output in nnU-Net's preprocessed space (``seg``: labels seen there)."""
    seg = seg[0]
    noise = rng.standard_normal((3, *seg.shape)).astype(np.float32)
    if spec.regions_class_order is None:
        logits = np.stack([3.0 * (seg == c) for c in range(3)]).astype(np.float32) + 1.5 * noise
        if variant == 2:
            logits[2] -= 8.0  # the model sees no tumour where there is none
        return logits
    members = [np.isin(seg, (1, 2, 3)), np.isin(seg, (2, 3)), seg == 3]
    return np.stack([5.0 * m - 2.5 for m in members]).astype(np.float32) + 2.0 * noise


def _sampled_reference(
    probabilities: np.ndarray, shapes: np.ndarray, spec: Spec, rng: np.random.Generator, variant: int
) -> np.ndarray:
    """Reference labels drawn voxel by voxel from the saved probabilities (so that they are
    calibrated), with the ignore label where ``shapes`` has it."""
    uniform = rng.random(probabilities.shape[1:])
    if spec.regions_class_order is None:
        reference = (uniform[None] > np.cumsum(probabilities, axis=0)).sum(axis=0).clip(max=2)
        if variant == 2:
            reference[reference == 2] = 1  # no tumour in this case
        reference[shapes == 3] = 3
        return reference.astype(np.uint8)
    members = rng.random(probabilities.shape) < probabilities
    reference = np.zeros(probabilities.shape[1:], np.uint8)
    for region, label in enumerate(spec.regions_class_order):
        reference[members[region]] = label
    return reference


@contextlib.contextmanager
def _nnunet_paths(root: Path):
    names = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: str(root / name) for name in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def build(spec: Spec, root: Path, seed: int = 0) -> Built:
    """Plan ``spec`` with nnU-Net and write an ``nnUNetv2_predict --save_probabilities`` folder."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    ending = spec.file_ending
    # nnU-Net prints its plans, and the traceback of each reader/writer that cannot read an example
    with (
        _nnunet_paths(root),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        dataset_json, plans = _planned(spec, root, rng)
        plans_manager = PlansManager(plans)
        configuration = plans_manager.get_configuration(spec.configuration)
        preprocessor = configuration.preprocessor_class(verbose=False)
        images, labels, pred, truth = root / "imagesTs", root / "labelsTs", root / "pred", root / "truth"
        for folder in (images, labels, pred, truth):
            folder.mkdir()
        # What nnUNetPredictor.predict_from_files saves first.
        save_json(dataset_json, str(pred / "dataset.json"), sort_keys=False)
        save_json(plans, str(pred / "plans.json"), sort_keys=False)
        cases = []
        for i, shape in enumerate(spec.test_shapes):
            case = f"case{i}"
            image, shapes = _images(spec)(shape, rng, spec, i)
            write_volume(image, images / f"{case}_0000{ending}", spec.test_geometry, spec.writer)
            write_volume(shapes, truth / f"{case}{ending}", spec.test_geometry, spec.writer)
            image_files = [str(images / f"{case}_0000{ending}")]
            # The shapes seen in the preprocessed space make the synthetic logits; the properties
            # exported are those of the image alone, as at prediction time.
            _, seg, _ = preprocessor.run_case(
                image_files, str(truth / f"{case}{ending}"), plans_manager, configuration, dataset_json
            )
            _, _, properties = preprocessor.run_case(
                image_files, None, plans_manager, configuration, dataset_json
            )
            logits = torch.from_numpy(_logits(seg, spec, rng, i))
            export_prediction_from_logits(
                logits,
                properties,
                configuration,
                plans_manager,
                dataset_json,
                str(pred / case),
                save_probabilities=True,
                num_threads_torch=1,
            )
            with np.load(pred / f"{case}.npz") as saved:
                reference = _sampled_reference(saved["probabilities"], shapes, spec, rng, i)
            write_volume(reference, labels / f"{case}{ending}", spec.test_geometry, spec.writer)
            cases.append(case)
    torch.set_num_threads(threads)
    return Built(spec, pred, labels, images, dataset_json, plans, tuple(cases))
