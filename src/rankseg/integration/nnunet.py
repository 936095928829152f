"""RankSEG on nnU-Net prediction folders: a drop-in step after ``nnUNetv2_predict --save_probabilities``.

``nnUNetv2_predict -i IN -o PRED_DIR ... --save_probabilities`` writes, per case, ``CASE.npz`` (key
``probabilities``: softmax over the labels, or a sigmoid per region for region-based models, class
axis first, spatial axes in the array order of the plans' image reader/writer, e.g. SimpleITK's
``(z, y, x)``), ``CASE.pkl`` (the properties: image geometry, cropping box, shapes), its own
segmentation ``CASE<file_ending>`` and copies of ``dataset.json`` and ``plans.json``. This module
turns those probabilities into RankSEG segmentations written exactly as nnU-Net writes its own:

* :func:`postprocess_folder` (``rankseg nnunet PRED_DIR --out OUT_DIR``): one segmentation per case,
  through the reader/writer named in ``plans.json`` (nnU-Net's registry), with ``dataset.json``'s
  file ending and the geometry from the ``.pkl``; ``dataset.json`` and ``plans.json`` copied beside.
* :func:`evaluate_folder` (``rankseg evaluate --nnunet PRED_DIR --labels LABELS_DIR``): nnU-Net's
  own segmentations against RankSEG's, per label or region, with nnU-Net's Dice convention.
* :func:`rankseg_segmentation`: the per-case rule on probabilities in memory.

Rules. Label-based models: multiclass RankSEG over all channels (background included); the class
index is the label value, as in nnU-Net's argmax. Region-based models (``regions_class_order`` in
``dataset.json``): multilabel RankSEG, one mask per region, then nnU-Net's own region-to-label
conversion (``LabelManager.convert_probabilities_to_segmentation``: regions painted in
``regions_class_order``, later ones on top). The ``ignore`` label is never predicted (nnU-Net has no
output channel for it); the evaluation leaves reference voxels that carry it out of every count, as
nnU-Net's ``compute_metrics_on_folder`` does. With ``{"metric": "acc"}`` the result is nnU-Net's own
segmentation, voxel for voxel.

The per-case functions (:func:`postprocess_case`, :func:`evaluate_case`) are module-level, take
one picklable task (from :func:`prepare_postprocess` / :func:`prepare_evaluation`) and return a
small result holding an error string that names the case instead of raising, so that a caller can
run them in worker processes. Needs the ``nnunet`` extra (``pip install "rankseg[nnunet]"``); only
nnU-Net's image IO and label handling are used (no GPU, no model weights).

Example (a minimal folder as nnU-Net writes it; normally ``nnUNetv2_predict`` made it):

    >>> import json, pickle, shutil, tempfile, numpy as np
    >>> from pathlib import Path
    >>> from rankseg.integration import nnunet
    >>> root = Path(tempfile.mkdtemp()); pred = root / "pred"; pred.mkdir()
    >>> labels = {"background": 0, "liver": 1, "tumour": 2}
    >>> plans = {"image_reader_writer": "SimpleITKIO", "label_manager": "LabelManager",
    ...          "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2]}
    >>> _ = (pred / "dataset.json").write_text(json.dumps({"labels": labels, "file_ending": ".nii.gz"}))
    >>> _ = (pred / "plans.json").write_text(json.dumps(plans))
    >>> probs = np.random.default_rng(0).dirichlet([1, 1, 1], size=(4, 8, 8)).astype(np.float32)
    >>> np.savez_compressed(pred / "case1.npz", probabilities=probs.transpose(3, 0, 1, 2))  # (3, 4, 8, 8)
    >>> geometry = {"spacing": [2.0, 0.8, 0.8], "sitk_stuff": {"spacing": (0.8, 0.8, 2.0),
    ...             "origin": (0.0, 0.0, 0.0), "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)}}
    >>> _ = (pred / "case1.pkl").write_bytes(pickle.dumps(geometry))
    >>> written = nnunet.postprocess_folder(pred, root / "rankseg", {"metric": "dice"})
    >>> sorted(p.name for p in (root / "rankseg").iterdir())
    ['case1.nii.gz', 'dataset.json', 'plans.json']

    With reference labels (here: nnU-Net's own segmentation, written by nnU-Net's SimpleITKIO):

    >>> from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    >>> (root / "labels").mkdir()
    >>> SimpleITKIO().write_seg(probs.argmax(-1), str(root / "labels" / "case1.nii.gz"), geometry)
    >>> evaluation = nnunet.evaluate_folder(pred, root / "labels", solvers=["RMA", "exact"])
    >>> evaluation.methods, evaluation.keys, evaluation.dice["nnU-Net"].tolist()
    (('nnU-Net', 'RMA', 'exact'), (1, 2), [[1.0, 1.0]])
    >>> shutil.rmtree(root)
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from .._files import new_file_mode
from .._options import Options, resolve_options
from ..functional import rankseg_resolved
from ._common import kwargs_dict

try:
    from nnunetv2.imageio.base_reader_writer import BaseReaderWriter
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name
    from nnunetv2.utilities.label_handling.label_handling import (
        LabelManager,
        get_labelmanager_class_from_plans,
    )
except ImportError as exc:  # pragma: no cover - exercised in a subprocess that hides nnunetv2
    raise ImportError(
        'rankseg.integration.nnunet needs nnU-Net v2 (the nnunetv2 package): pip install "rankseg[nnunet]"'
        f" ({exc})"
    ) from exc

__all__ = [
    "BASELINE",
    "CaseCounts",
    "CaseResult",
    "EvaluationTask",
    "NnunetCaseError",
    "NnunetEvaluation",
    "NnunetFolder",
    "NnunetFolderError",
    "PostprocessTask",
    "evaluate_case",
    "evaluate_folder",
    "format_table",
    "postprocess_case",
    "postprocess_folder",
    "prepare_evaluation",
    "prepare_postprocess",
    "rankseg_segmentation",
    "read_folder",
    "summarise_evaluation",
]

DATASET_JSON = "dataset.json"
PLANS_JSON = "plans.json"
BASELINE = "nnU-Net"  # the method name of nnU-Net's own segmentations in evaluations

LabelOrRegion = int | tuple[int, ...]


class NnunetFolderError(ValueError):
    """A folder that cannot be used as a whole (no ``plans.json``, an invalid ``dataset.json``...)."""


class _CaseError(Exception):
    """A problem with one case; reported as ``"CASE: reason"`` and the other cases go on."""


class NnunetCaseError(ValueError):
    """Some cases failed; every other case was written.

    Attributes:
        failed: ``{case: "case: reason"}`` for each case that failed.
        written: ``{case: path}`` of the segmentations that were written.
    """

    def __init__(self, failed: dict[str, str], written: dict[str, Path]) -> None:
        self.failed = failed
        self.written = written
        total = len(failed) + len(written)
        super().__init__(
            f"{len(failed)} of {total} case(s) failed ({len(written)} written):\n  "
            + "\n  ".join(failed.values())
        )


# ------------------------------------------------------------------------------------- the folder


@dataclass(frozen=True)
class NnunetFolder:
    """An nnU-Net prediction folder: its ``dataset.json``, ``plans.json`` and the cases with a ``.npz``."""

    path: Path
    dataset_json: dict[str, Any]
    plans: dict[str, Any]
    cases: tuple[str, ...]

    @property
    def file_ending(self) -> str:
        """The segmentation file ending from ``dataset.json`` (e.g. ``".nii.gz"``)."""
        return self.dataset_json["file_ending"]


def _load_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NnunetFolderError(f"{path} cannot be read as JSON ({exc})") from None
    if not isinstance(content, dict):
        raise NnunetFolderError(f"{path} holds a JSON {type(content).__name__}; expected an object")
    return content


@lru_cache(maxsize=16)
def _reader_writer_class(name: str) -> type[BaseReaderWriter]:
    return recursive_find_reader_writer_by_name(name)


def _label_manager(plans: Mapping[str, Any], dataset_json: Mapping[str, Any]) -> LabelManager:
    """The label manager nnU-Net itself builds (``PlansManager.get_label_manager``), without its print
    when ``plans.json`` names no class."""
    cls = get_labelmanager_class_from_plans(plans) if "label_manager" in plans else LabelManager
    if cls is None:
        raise NnunetFolderError(
            f"label_manager {plans['label_manager']!r} is not a class nnU-Net has "
            "(expected a class in nnunetv2.utilities.label_handling such as 'LabelManager')"
        )
    return cls(label_dict=dataset_json["labels"], regions_class_order=dataset_json.get("regions_class_order"))


def _check_folder_files(path: Path, dataset_json: dict[str, Any], plans: dict[str, Any]) -> None:
    ending = dataset_json.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise NnunetFolderError(
            f"{path / DATASET_JSON} has file_ending {ending!r}; expected a file ending such as '.nii.gz'"
        )
    if not isinstance(dataset_json.get("labels"), dict):
        raise NnunetFolderError(
            f"{path / DATASET_JSON} has labels {dataset_json.get('labels')!r}; expected an object "
            "such as {'background': 0, 'liver': 1}"
        )
    try:
        _label_manager(plans, dataset_json)
    except NnunetFolderError as exc:
        raise NnunetFolderError(f"{path / PLANS_JSON}: {exc}") from None
    except Exception as exc:  # nnU-Net asserts and raises RuntimeError on bad label definitions
        raise NnunetFolderError(
            f"{path / DATASET_JSON}: nnU-Net's LabelManager refuses labels {dataset_json['labels']!r}"
            f" with regions_class_order {dataset_json.get('regions_class_order')!r} "
            f"({type(exc).__name__}: {exc})"
        ) from None
    name = plans.get("image_reader_writer")
    if not isinstance(name, str):
        raise NnunetFolderError(
            f"{path / PLANS_JSON} has image_reader_writer {name!r}; expected the name of an nnU-Net "
            "reader/writer such as 'SimpleITKIO'"
        )
    try:
        _reader_writer_class(name)
    except RuntimeError as exc:
        raise NnunetFolderError(f"{path / PLANS_JSON}: {exc}") from None
    backward = plans.get("transpose_backward")
    if not isinstance(backward, list) or sorted(backward) != list(range(len(backward))):
        raise NnunetFolderError(
            f"{path / PLANS_JSON} has transpose_backward {backward!r}; expected a permutation "
            "such as [0, 1, 2]"
        )


def read_folder(pred_dir: str | os.PathLike) -> NnunetFolder:
    """Read and check an nnU-Net prediction folder.

    Args:
        pred_dir: the output folder of ``nnUNetv2_predict ... --save_probabilities``.

    Returns:
        The folder's ``dataset.json``, ``plans.json`` and its case names (every ``CASE.npz``,
        sorted; a case whose ``.pkl`` is missing is still listed and fails when processed).

    Raises:
        NnunetFolderError: (a ``ValueError``) not a folder, no or an invalid ``dataset.json`` /
            ``plans.json``, or no ``.npz`` file at all.
    """
    path = Path(pred_dir)
    if not path.is_dir():
        raise NnunetFolderError(f"pred_dir {str(path)!r} is not a folder")
    missing = [name for name in (DATASET_JSON, PLANS_JSON) if not (path / name).is_file()]
    if missing:
        raise NnunetFolderError(
            f"pred_dir {str(path)!r} has no {' and no '.join(missing)}; nnUNetv2_predict writes "
            f"{DATASET_JSON} and {PLANS_JSON} into its output folder: is this an nnU-Net prediction folder?"
        )
    dataset_json = _load_json(path / DATASET_JSON)
    plans = _load_json(path / PLANS_JSON)
    _check_folder_files(path, dataset_json, plans)
    cases = tuple(
        sorted(
            p.name[: -len(".npz")]
            for p in path.iterdir()
            if p.name.endswith(".npz") and not p.name.startswith(".") and p.is_file()
        )
    )
    if not cases:
        raise NnunetFolderError(
            f"pred_dir {str(path)!r} holds no CASE.npz probability files; run nnUNetv2_predict with "
            "--save_probabilities"
        )
    return NnunetFolder(path, dataset_json, plans, cases)


# ------------------------------------------------------------------------------- the per-case rule


def _checked_options(rankseg_kwargs: Mapping[str, Any] | None, regions: bool) -> Options:
    """RankSEG's options for an nnU-Net model, checked and canonical (so workers never warn again)."""
    kwargs = kwargs_dict(rankseg_kwargs)
    mode = "multilabel" if regions else "multiclass"
    given = kwargs.pop("output_mode", mode)
    if resolve_options(output_mode=given).output_mode != mode:
        model = (
            "predicts regions (one sigmoid per region, regions overlap), which take output_mode='multilabel'"
            if regions
            else "predicts labels (a softmax over them), which take output_mode='multiclass'"
        )
        raise ValueError(f"rankseg_kwargs has output_mode={given!r}, but this nnU-Net model {model}")
    options = resolve_options(output_mode=mode, **kwargs)
    if options.output_mode == "multiclass" and options.unassigned_policy == "void":
        raise ValueError(
            "rankseg_kwargs has unassigned_policy='void'; nnU-Net segmentations hold label values only, "
            "so use 'max_score' (the default)"
        )
    return options


def _channel_names(manager: LabelManager) -> str:
    keys = manager.foreground_regions if manager.has_regions else manager.all_labels
    return ", ".join(str(k) for k in keys)


def _segmentation_dtype(manager: LabelManager) -> type:
    # nnU-Net's export: uint8 label maps below 255 foreground labels, uint16 above
    return np.uint8 if len(manager.foreground_labels) < 255 else np.uint16


def _segment(probabilities: Tensor | np.ndarray, manager: LabelManager, options: Options) -> np.ndarray:
    heads = manager.num_segmentation_heads
    if probabilities.ndim < 2 or probabilities.shape[0] != heads:
        kind = "regions" if manager.has_regions else "labels"
        raise ValueError(
            f"probabilities of shape {tuple(probabilities.shape)} have "
            f"{probabilities.shape[0] if probabilities.ndim else 0} channel(s), but dataset.json defines "
            f"{heads} {kind} ({_channel_names(manager)}); expected shape ({heads}, *spatial)"
        )
    masks = rankseg_resolved(probabilities[None], options)[0]
    if isinstance(masks, Tensor):
        masks = masks.cpu().numpy()
    if manager.has_regions:
        # nnU-Net's own conversion: region i where its value is > 0.5, painted in regions_class_order
        masks = manager.convert_probabilities_to_segmentation(masks.view(np.uint8))
    return masks.astype(_segmentation_dtype(manager), copy=False)


def rankseg_segmentation(
    probabilities: Tensor | np.ndarray,
    dataset_json: Mapping[str, Any],
    rankseg_kwargs: Mapping[str, Any] | None = None,
    *,
    plans: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """The RankSEG segmentation of one case's nnU-Net probabilities, as nnU-Net would label it.

    Args:
        probabilities: ``(C, *spatial)``: nnU-Net's softmax over ``C`` labels (background first), or
            its sigmoid per region for region-based models; a NumPy array (as in ``CASE.npz``) or a
            tensor on any device. Never modified.
        dataset_json: the model's ``dataset.json`` content (``labels``, ``regions_class_order``).
        rankseg_kwargs: RankSEG's options (``metric``, ``solver``, ``smooth``, ``pruning_prob``...);
            ``output_mode`` follows from the model (multiclass for labels, multilabel for regions).
        plans: the ``plans.json`` content, for a custom ``label_manager`` class (default: nnU-Net's).

    Returns:
        ``(*spatial)`` label map (uint8; uint16 from 255 foreground labels on), NumPy.

    Raises:
        ValueError / TypeError: the channel count disagrees with ``dataset_json``, bad probabilities
            (NaN, outside [0, 1]) or bad options.

    Example:
        >>> import numpy as np
        >>> from rankseg.integration.nnunet import rankseg_segmentation
        >>> probs = np.random.default_rng(0).dirichlet([1, 1, 1], size=(4, 6, 6)).transpose(3, 0, 1, 2)
        >>> labels = {"background": 0, "liver": 1, "tumour": 2}
        >>> seg = rankseg_segmentation(probs, {"labels": labels}, {"metric": "dice"})
        >>> seg.shape, seg.dtype
        ((4, 6, 6), dtype('uint8'))
        >>> regions = {"labels": {"background": 0, "whole": [1, 2], "core": 2}, "regions_class_order": [1, 2]}
        >>> sigmoids = np.random.default_rng(1).random((2, 4, 6, 6))  # one map per region
        >>> argmax_like = rankseg_segmentation(sigmoids, regions, {"metric": "acc"})
        >>> bool((argmax_like == np.where(sigmoids[1] > 0.5, 2, np.where(sigmoids[0] > 0.5, 1, 0))).all())
        True
    """
    if not isinstance(dataset_json, Mapping) or not isinstance(dataset_json.get("labels"), Mapping):
        raise ValueError(
            "dataset_json must be the content of nnU-Net's dataset.json, with a 'labels' object such as "
            f"{{'background': 0, 'liver': 1}}; got {dataset_json!r:.200}"
        )
    manager = _label_manager(plans or {}, dataset_json)
    options = _checked_options(rankseg_kwargs, manager.has_regions)
    return _segment(probabilities, manager, options)


# ------------------------------------------------------------------------------------ case files


def _load_case(
    pred_dir: Path, case: str, plans: Mapping[str, Any], manager: LabelManager
) -> tuple[np.ndarray, dict]:
    """``(probabilities, properties)`` of one case, checked; raises :class:`_CaseError`."""
    npz, pkl = pred_dir / f"{case}.npz", pred_dir / f"{case}.pkl"
    if not pkl.is_file():
        raise _CaseError(
            f"{npz} has no {pkl.name} beside it; nnUNetv2_predict --save_probabilities writes both "
            "(the .pkl holds the image geometry)"
        )
    try:
        with open(npz, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise _CaseError(f"{npz} cannot be read ({exc.strerror or exc})") from None
    if magic != b"PK\x03\x04":  # np.load would try to unpickle it and say so: misleading
        raise _CaseError(f"{npz} cannot be read: it is not an .npz (zip) archive, the file is corrupt")
    try:
        with np.load(npz, allow_pickle=False) as data:
            if "probabilities" not in data.files:
                raise _CaseError(
                    f"{npz} holds {', '.join(data.files) or 'no arrays'}; nnU-Net saves its probabilities "
                    "under the key 'probabilities'"
                )
            probabilities = data["probabilities"]
    except _CaseError:
        raise
    except Exception as exc:  # BadZipFile, EOFError, zlib.error, ValueError...: all mean unreadable
        raise _CaseError(
            f"{npz} cannot be read, the file is corrupt or truncated ({type(exc).__name__}: {exc})"
        ) from None
    if probabilities.dtype.kind != "f":
        raise _CaseError(f"{npz} holds {probabilities.dtype} probabilities; expected floating point")
    heads = manager.num_segmentation_heads
    if probabilities.shape[:1] != (heads,):
        kind = "regions" if manager.has_regions else "labels"
        raise _CaseError(
            f"{npz} has {probabilities.shape[0] if probabilities.ndim else 0} probability channel(s) "
            f"(shape {probabilities.shape}), but dataset.json defines {heads} {kind} "
            f"({_channel_names(manager)}): the probabilities belong to another model"
        )
    try:
        with open(pkl, "rb") as f:
            properties = pickle.load(f)
    except Exception as exc:
        raise _CaseError(f"{pkl} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(properties, dict):
        raise _CaseError(f"{pkl} holds a {type(properties).__name__}; nnU-Net's properties are a dict")
    backward = plans["transpose_backward"]
    if probabilities.ndim != len(backward) + 1:
        raise _CaseError(
            f"{npz} has probabilities of shape {probabilities.shape}; expected (channels, *spatial) with "
            f"{len(backward)} spatial axes"
        )
    before = properties.get("shape_before_cropping")
    if before is not None:
        expected = tuple(int(before[i]) for i in backward)
        if probabilities.shape[1:] != expected:
            raise _CaseError(
                f"{npz} has probabilities of spatial shape {probabilities.shape[1:]}, but {pkl.name} "
                f"records an image of shape {expected}: the two files do not belong together"
            )
    return probabilities, properties


def _publish(source: Path, target: Path, force: bool) -> None:
    """Move ``source`` to ``target`` in one step; without ``force`` never replace an existing file."""
    if force:
        os.replace(source, target)
        return
    try:
        os.link(source, target)  # fails on an existing name, even one created a moment ago
    except FileExistsError:
        raise _CaseError(f"{target} exists; pass force=True (--force) to replace it") from None
    except OSError:  # no hard links on this file system: the existence check is the guard
        if target.exists():
            raise _CaseError(f"{target} exists; pass force=True (--force) to replace it") from None
        os.replace(source, target)
    else:
        source.unlink()


def _write_segmentation(
    segmentation: np.ndarray, properties: dict, target: Path, writer: BaseReaderWriter, force: bool
) -> None:
    """Write through nnU-Net's ``writer.write_seg`` into a private folder beside ``target``, under
    ``target``'s own name (so the file ending and any side file a writer adds, such as Tiff3DIO's
    ``.json``, come out as nnU-Net names them), then move each file into place."""
    if not force and target.exists():
        raise _CaseError(f"{target} exists; pass force=True (--force) to replace it")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".rankseg-tmp", dir=target.parent))
    try:
        writer.write_seg(segmentation, str(staging / target.name), properties)
        if not (staging / target.name).is_file():
            raise _CaseError(f"{type(writer).__name__}.write_seg wrote no {target.name}")
        side_files = sorted(p for p in staging.iterdir() if p.name != target.name)
        for path in side_files:
            try:
                _publish(path, target.parent / path.name, force)
            except _CaseError:
                raise _CaseError(
                    f"{target.parent / path.name} exists but {target.name} does not (left by an "
                    "interrupted run, or another file of that name); pass force=True (--force) to "
                    "replace it"
                ) from None
        _publish(staging / target.name, target, force)  # last: its presence means the case is complete
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _timed_segment(
    probabilities: np.ndarray, manager: LabelManager, options: Options, npz: Path
) -> tuple[np.ndarray, float]:
    """:func:`_segment` and its seconds; bad probabilities (NaN, outside [0, 1]) name the file."""
    start = time.perf_counter()
    try:
        segmentation = _segment(probabilities, manager, options)
    except ValueError as exc:
        raise _CaseError(f"{npz}: {exc}") from None
    return segmentation, time.perf_counter() - start


def _case_error(case: str, exc: BaseException) -> str:
    if isinstance(exc, _CaseError):
        return f"{case}: {exc}"
    return f"{case}: {type(exc).__name__}: {exc}"


# ------------------------------------------------------------------------------------ postprocess


@dataclass(frozen=True)
class PostprocessTask:
    """One case for :func:`postprocess_case` (picklable: paths as strings, plain dicts)."""

    case: str
    pred_dir: str
    out_dir: str
    dataset_json: dict[str, Any]
    plans: dict[str, Any]
    rankseg_kwargs: Options  # checked, from prepare_postprocess
    force: bool = False


@dataclass(frozen=True)
class CaseResult:
    """What :func:`postprocess_case` did: the written file, or an error naming the case."""

    case: str
    output: str | None = None
    error: str | None = None
    seconds: float = 0.0  # time in RankSEG


def _copy_atomic(source: Path, target: Path, force: bool) -> None:
    data = source.read_bytes()
    if target.exists():
        if target.is_file() and target.read_bytes() == data:
            return
        if not force:
            raise NnunetFolderError(
                f"{target} exists and differs from {source}; the output folder holds another model's "
                "results: choose another folder or pass force=True (--force) to replace it"
            )
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def prepare_postprocess(
    pred_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    rankseg_kwargs: Mapping[str, Any] | None = None,
    *,
    force: bool = False,
) -> list[PostprocessTask]:
    """Check the folder and the options, create ``out_dir`` with copies of ``dataset.json`` and
    ``plans.json``, and return one :class:`PostprocessTask` per case (for :func:`postprocess_case`).

    Raises:
        NnunetFolderError: see :func:`read_folder`; or ``out_dir`` already holds a different
            ``dataset.json`` / ``plans.json`` and ``force`` is False.
        ValueError / TypeError: bad ``rankseg_kwargs``, or ``out_dir`` is ``pred_dir``.
    """
    if not isinstance(force, bool):  # a truthy string such as "no" would replace the user's files
        raise TypeError(f"force must be True or False; got {force!r}")
    folder = read_folder(pred_dir)
    manager = _label_manager(folder.plans, folder.dataset_json)
    options = _checked_options(rankseg_kwargs, manager.has_regions)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} exists and is not a folder")
    if out.exists() and out.resolve() == folder.path.resolve():
        raise ValueError(
            f"out_dir {str(out)!r} is pred_dir: RankSEG's segmentations would replace nnU-Net's own; "
            "choose another folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    for name in (DATASET_JSON, PLANS_JSON):  # as nnUNetv2_predict does, before the cases
        _copy_atomic(folder.path / name, out / name, force)
    return [
        PostprocessTask(case, str(folder.path), str(out), folder.dataset_json, folder.plans, options, force)
        for case in folder.cases
    ]


def postprocess_case(task: PostprocessTask) -> CaseResult:
    """Write one case's RankSEG segmentation as nnU-Net writes its own; never raises.

    Reads ``CASE.npz`` and ``CASE.pkl`` from ``task.pred_dir``, applies :func:`rankseg_segmentation`
    and writes ``CASE<file_ending>`` into ``task.out_dir`` with the plans' reader/writer and the
    ``.pkl``'s geometry, atomically. Safe to run in a worker process.
    """
    try:
        target = Path(task.out_dir) / f"{task.case}{task.dataset_json['file_ending']}"
        if not task.force and target.exists():  # before any work; checked again when publishing
            raise _CaseError(f"{target} exists; pass force=True (--force) to replace it")
        manager = _label_manager(task.plans, task.dataset_json)
        pred_dir = Path(task.pred_dir)
        probabilities, properties = _load_case(pred_dir, task.case, task.plans, manager)
        segmentation, seconds = _timed_segment(
            probabilities, manager, task.rankseg_kwargs, pred_dir / f"{task.case}.npz"
        )
        writer = _reader_writer_class(task.plans["image_reader_writer"])()
        _write_segmentation(segmentation, properties, target, writer, task.force)
        return CaseResult(task.case, output=str(target), seconds=seconds)
    except Exception as exc:  # reported with the case; the other cases go on
        return CaseResult(task.case, error=_case_error(task.case, exc))


def postprocess_folder(
    pred_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    rankseg_kwargs: Mapping[str, Any] | None = None,
    *,
    force: bool = False,
) -> dict[str, Path]:
    """RankSEG segmentations for every case of an nnU-Net prediction folder, written as nnU-Net would.

    For every ``CASE.npz`` + ``CASE.pkl`` in ``pred_dir`` (``nnUNetv2_predict --save_probabilities``),
    writes ``out_dir/CASE<file_ending>`` with the reader/writer named in ``plans.json``, the file
    ending of ``dataset.json`` and the image geometry of the ``.pkl``; copies ``dataset.json`` and
    ``plans.json`` into ``out_dir``. Files are written atomically; an existing file is only
    replaced with ``force=True``.

    Args:
        pred_dir: the nnU-Net prediction folder (read only).
        out_dir: where to write (created; must not be ``pred_dir``).
        rankseg_kwargs: RankSEG's options, e.g. ``{"metric": "dice", "solver": "RMA"}`` (default
            Dice with RMA); ``output_mode`` follows from the model. ``{"metric": "acc"}`` gives back
            nnU-Net's own segmentations.
        force: replace existing outputs.

    Returns:
        ``{case: written path}``, in case order.

    Raises:
        NnunetFolderError / ValueError / TypeError: before any case is written (see
            :func:`prepare_postprocess`).
        NnunetCaseError: after every other case was written, when some failed (a ``.npz`` without
            its ``.pkl``, a corrupt or truncated ``.npz``, a channel count that disagrees with
            ``dataset.json``, an existing output without ``force``...); ``.failed`` names each case
            and reason, ``.written`` lists the files written.

    Example: see the module docstring.
    """
    tasks = prepare_postprocess(pred_dir, out_dir, rankseg_kwargs, force=force)
    results = [postprocess_case(task) for task in tasks]
    written = {r.case: Path(r.output) for r in results if r.output is not None}
    failed = {r.case: r.error for r in results if r.error is not None}
    if failed:
        raise NnunetCaseError(failed, written)
    return written


# ------------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class EvaluationTask:
    """One case for :func:`evaluate_case` (picklable)."""

    case: str
    pred_dir: str
    labels_dir: str
    dataset_json: dict[str, Any]
    plans: dict[str, Any]
    methods: tuple[tuple[str, Options], ...]  # (name, checked RankSEG options)


@dataclass
class CaseCounts:
    """Counts of one case: per method, an int64 ``(K, 4)`` array of (TP, FP, FN, TN) for each of the
    ``K`` labels or regions in ``keys`` (nnU-Net's ``compute_tp_fp_fn_tn``, ignore label left out)."""

    case: str
    keys: tuple[LabelOrRegion, ...] = ()
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # RankSEG methods: time in RankSEG
    error: str | None = None


def _keys(manager: LabelManager) -> tuple[LabelOrRegion, ...]:
    """What nnU-Net evaluates (``compute_metrics_on_folder2``): foreground regions or labels."""
    keys = manager.foreground_regions if manager.has_regions else manager.foreground_labels
    return tuple(tuple(int(v) for v in k) if isinstance(k, (tuple, list)) else int(k) for k in keys)


def prepare_evaluation(
    pred_dir: str | os.PathLike,
    labels_dir: str | os.PathLike,
    rankseg_kwargs: Mapping[str, Any] | None = None,
    *,
    solvers: Sequence[str] | None = None,
) -> list[EvaluationTask]:
    """Check the folders and options; one :class:`EvaluationTask` per case with probabilities.

    ``solvers``: compare several RankSEG solvers (each with the other ``rankseg_kwargs``); by
    default the one solver of ``rankseg_kwargs``. Methods are named after the solver used.
    """
    folder = read_folder(pred_dir)
    labels = Path(labels_dir)
    if not labels.is_dir():
        raise NnunetFolderError(f"labels_dir {str(labels)!r} is not a folder")
    manager = _label_manager(folder.plans, folder.dataset_json)
    if solvers is not None and (isinstance(solvers, str) or not isinstance(solvers, Sequence) or not solvers):
        raise ValueError(f"solvers must be a non-empty list of RankSEG solver names; got {solvers!r}")
    base = _checked_options(rankseg_kwargs, manager.has_regions)  # checks the type and every option
    given = {} if rankseg_kwargs is None else dict(rankseg_kwargs)
    variants = [given] if solvers is None else [{**given, "solver": s} for s in solvers]
    methods: dict[str, dict[str, Any]] = {}
    for kwargs in variants:
        options = _checked_options(kwargs, manager.has_regions) if solvers is not None else base
        methods.setdefault(options.solver, options)  # a solver named twice (or falling back) runs once
    return [
        EvaluationTask(
            case, str(folder.path), str(labels), folder.dataset_json, folder.plans, tuple(methods.items())
        )
        for case in folder.cases
    ]


def _read_label_map(reader: BaseReaderWriter, path: Path, what: str) -> np.ndarray:
    try:
        array, _ = reader.read_seg(str(path))
    except Exception as exc:
        raise _CaseError(
            f"{what} {path} cannot be read with {type(reader).__name__} ({type(exc).__name__}: {exc})"
        ) from None
    array = np.asarray(array)
    if array.shape[0] != 1:  # read_seg gives (1, *spatial); NaturalImage2DIO reads palette PNGs as RGB
        raise _CaseError(
            f"{what} {path} has {array.shape[0]} channels as {type(reader).__name__} reads it (an RGB(A) "
            "or palette image?); a segmentation has one channel of label values, e.g. an 8-bit grey PNG"
        )
    array = array[0]
    if not np.isfinite(array).all() or (array < 0).any() or (array != np.round(array)).any():
        raise _CaseError(f"{what} {path} holds values that are not non-negative integers")
    return array.astype(np.int64)


def _region_counts(
    reference: np.ndarray, prediction: np.ndarray, keys: tuple[LabelOrRegion, ...], ignore_label: int | None
) -> np.ndarray:
    """``(K, 4)`` int64 (TP, FP, FN, TN) per label or region, as nnU-Net's ``compute_tp_fp_fn_tn``:
    voxels whose reference is ``ignore_label`` are left out. One pass over the voxels (a confusion
    matrix of the labels that occur in ``keys`` plus one "other" bin), then set sums per key."""
    wanted = sorted({v for k in keys for v in (k if isinstance(k, tuple) else (k,))})
    ref, pred = reference.reshape(-1), prediction.reshape(-1)
    if ignore_label is not None:
        keep = ref != ignore_label
        ref, pred = ref[keep], pred[keep]
    other = len(wanted)
    top = max(int(ref.max(initial=0)), int(pred.max(initial=0)), wanted[-1])
    lookup = np.full(top + 1, other, dtype=np.int64)
    lookup[wanted] = np.arange(other)
    bins = other + 1
    confusion = np.bincount(lookup[ref] * bins + lookup[pred], minlength=bins * bins).reshape(bins, bins)
    member = np.zeros((len(keys), bins), dtype=np.int64)
    for k, key in enumerate(keys):  # a handful of labels or regions
        member[k, [wanted.index(v) for v in (key if isinstance(key, tuple) else (key,))]] = 1
    outside = 1 - member
    tp = np.einsum("kr,rp,kp->k", member, confusion, member)
    fp = np.einsum("kr,rp,kp->k", outside, confusion, member)
    fn = np.einsum("kr,rp,kp->k", member, confusion, outside)
    tn = np.einsum("kr,rp,kp->k", outside, confusion, outside)
    return np.stack([tp, fp, fn, tn], axis=1)


def evaluate_case(task: EvaluationTask) -> CaseCounts:
    """Counts of nnU-Net's own segmentation and of each RankSEG method against the reference; never raises.

    The reference is ``labels_dir/CASE<file_ending>`` and nnU-Net's segmentation
    ``pred_dir/CASE<file_ending>``, both read with the plans' reader/writer (so the axes agree with
    the probabilities); without the latter, nnU-Net's ``LabelManager`` derives it from the
    probabilities (the same rule ``nnUNetv2_predict`` applies).
    """
    result = CaseCounts(task.case)
    try:
        manager = _label_manager(task.plans, task.dataset_json)
        result.keys = keys = _keys(manager)
        pred_dir, ending = Path(task.pred_dir), task.dataset_json["file_ending"]
        probabilities, _ = _load_case(pred_dir, task.case, task.plans, manager)
        reader = _reader_writer_class(task.plans["image_reader_writer"])()
        reference_path = Path(task.labels_dir) / f"{task.case}{ending}"
        if not reference_path.is_file():
            raise _CaseError(
                f"no reference segmentation {reference_path}; the labels must be named like nnU-Net's "
                f"predictions (CASE{ending})"
            )
        reference = _read_label_map(reader, reference_path, "reference")
        if reference.shape != probabilities.shape[1:]:
            raise _CaseError(
                f"reference {reference_path} has shape {reference.shape}, but the probabilities have "
                f"spatial shape {probabilities.shape[1:]}"
            )
        own_path = pred_dir / f"{task.case}{ending}"
        if own_path.is_file():
            own = _read_label_map(reader, own_path, "nnU-Net's segmentation")
        else:
            own = np.asarray(manager.convert_probabilities_to_segmentation(probabilities))
        if own.shape != reference.shape:
            raise _CaseError(
                f"nnU-Net's segmentation {own_path} has shape {own.shape}, not {reference.shape}"
            )
        result.counts[BASELINE] = _region_counts(reference, own, keys, manager.ignore_label)
        for name, options in task.methods:
            npz = pred_dir / f"{task.case}.npz"
            segmentation, result.seconds[name] = _timed_segment(probabilities, manager, options, npz)
            result.counts[name] = _region_counts(reference, segmentation, keys, manager.ignore_label)
    except Exception as exc:  # reported with the case; the other cases go on
        result.counts, result.seconds = {}, {}
        result.error = _case_error(task.case, exc)
    return result


@dataclass
class NnunetEvaluation:
    """nnU-Net's own segmentations against RankSEG, with nnU-Net's conventions.

    ``K`` labels or regions (``keys``, nnU-Net's foreground labels or regions, in its order; a
    region is a tuple of labels), ``N`` evaluated cases. Per method (``methods[0]`` is
    :data:`BASELINE`, nnU-Net's own segmentation):

    * ``counts[m]``: int64 ``(N, K, 4)`` TP, FP, FN, TN (ignore label left out);
    * ``dice[m]``, ``iou[m]``: float64 ``(N, K)``, NaN where the label or region is absent from
      both reference and prediction (``compute_metrics_on_folder``'s ``metric_per_case``);
    * ``mean_dice[m]``, ``mean_iou[m]``: ``(K,)`` means over the cases, NaNs left out (its ``mean``;
      NaN when every case is NaN);
    * ``foreground_mean_dice[m]``, ``foreground_mean_iou[m]``: the mean of those over the ``K``
      keys (its ``foreground_mean``: NaN if any key is NaN in every case);
    * ``seconds[m]``: ``(N,)`` time in RankSEG per case (RankSEG methods only).

    ``present[k]``: cases whose reference holds key ``k``; ``failed``: ``{case: "case: reason"}``.
    """

    keys: tuple[LabelOrRegion, ...]
    methods: tuple[str, ...]
    cases: tuple[str, ...]
    counts: dict[str, np.ndarray]
    dice: dict[str, np.ndarray]
    iou: dict[str, np.ndarray]
    mean_dice: dict[str, np.ndarray]
    mean_iou: dict[str, np.ndarray]
    foreground_mean_dice: dict[str, float]
    foreground_mean_iou: dict[str, float]
    seconds: dict[str, np.ndarray]
    present: np.ndarray
    failed: dict[str, str]


def _nan_mean(values: np.ndarray) -> np.ndarray:
    """Mean over axis 0 leaving NaNs out; NaN where every value is NaN (no warning)."""
    defined = ~np.isnan(values)
    total = np.where(defined, values, 0.0).sum(axis=0)
    count = defined.sum(axis=0)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def summarise_evaluation(results: Sequence[CaseCounts]) -> NnunetEvaluation:
    """Aggregate :func:`evaluate_case` results as nnU-Net's ``compute_metrics_on_folder`` does.

    Raises:
        ValueError: no case could be evaluated (the message lists why each failed).
    """
    good = [r for r in results if r.error is None]
    failed = {r.case: r.error for r in results if r.error is not None}
    if not good:
        reasons = "\n  ".join(failed.values()) if failed else "there were no cases"
        raise ValueError(f"no case could be evaluated:\n  {reasons}")
    keys, methods = good[0].keys, tuple(good[0].counts)
    counts = {m: np.stack([r.counts[m] for r in good]) for m in methods}
    dice, iou, mean_dice, mean_iou, fg_dice, fg_iou = {}, {}, {}, {}, {}, {}
    for m in methods:
        tp, fp, fn = (counts[m][..., i].astype(np.float64) for i in range(3))
        denominator = tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            dice[m] = np.where(denominator > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
            iou[m] = np.where(denominator > 0, tp / denominator, np.nan)
        mean_dice[m], mean_iou[m] = _nan_mean(dice[m]), _nan_mean(iou[m])
        fg_dice[m], fg_iou[m] = float(np.mean(mean_dice[m])), float(np.mean(mean_iou[m]))
    reference_voxels = counts[methods[0]][..., 0] + counts[methods[0]][..., 2]  # TP + FN
    return NnunetEvaluation(
        keys=keys,
        methods=methods,
        cases=tuple(r.case for r in good),
        counts=counts,
        dice=dice,
        iou=iou,
        mean_dice=mean_dice,
        mean_iou=mean_iou,
        foreground_mean_dice=fg_dice,
        foreground_mean_iou=fg_iou,
        seconds={m: np.array([r.seconds[m] for r in good]) for m in methods if m != BASELINE},
        present=(reference_voxels > 0).sum(axis=0),
        failed=failed,
    )


def evaluate_folder(
    pred_dir: str | os.PathLike,
    labels_dir: str | os.PathLike,
    rankseg_kwargs: Mapping[str, Any] | None = None,
    *,
    solvers: Sequence[str] | None = None,
) -> NnunetEvaluation:
    """Compare nnU-Net's own segmentations with RankSEG's on reference labels, per label or region.

    Every case of ``pred_dir`` with probabilities is compared with ``labels_dir/CASE<file_ending>``
    (read with the plans' reader/writer), with nnU-Net's Dice convention: the labels or regions
    ``nnUNetv2_evaluate_folder`` uses, the ignore label left out, NaN for a label absent from both
    and left out of the means. A case that fails is listed in ``.failed``; the others are evaluated.

    Args:
        pred_dir: the ``nnUNetv2_predict --save_probabilities`` output folder.
        labels_dir: the reference segmentations (e.g. ``labelsTs``).
        rankseg_kwargs: RankSEG's options (as for :func:`postprocess_folder`).
        solvers: several RankSEG solvers to compare, e.g. ``["RMA", "exact"]``.

    Returns:
        An :class:`NnunetEvaluation`; :func:`format_table` prints it.

    Raises:
        NnunetFolderError / ValueError / TypeError: unusable folders or options, or no case could
            be evaluated.
    """
    tasks = prepare_evaluation(pred_dir, labels_dir, rankseg_kwargs, solvers=solvers)
    return summarise_evaluation([evaluate_case(task) for task in tasks])


def _number(value: float, sign: bool = False) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:+.4f}" if sign else f"{value:.4f}"


def format_table(evaluation: NnunetEvaluation) -> str:
    """A text table: per label or region, the cases that hold it, nnU-Net's mean Dice and each
    RankSEG method's mean Dice with its gain; then the foreground mean."""
    others = [m for m in evaluation.methods if m != BASELINE]
    header = ["label/region", "cases", f"{BASELINE} Dice"]
    for m in others:
        header += [f"{m} Dice", "gain"]
    rows = [header]

    def row(name: str, cases: str, values: dict[str, float]) -> list[str]:
        cells = [name, cases, _number(values[BASELINE])]
        for m in others:
            cells += [_number(values[m]), _number(values[m] - values[BASELINE], sign=True)]
        return cells

    for k, key in enumerate(evaluation.keys):
        per_method = {m: float(evaluation.mean_dice[m][k]) for m in evaluation.methods}
        rows.append(row(str(key), str(int(evaluation.present[k])), per_method))
    rows.append(row("mean", str(len(evaluation.cases)), evaluation.foreground_mean_dice))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        ).rstrip()
        for r in rows
    )
