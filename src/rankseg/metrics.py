r"""Segmentation metrics: Dice and IoU per image and class, their usual aggregations, and the
exact expected Dice and IoU of any masks under the model's probabilities.

For image ``i`` and class ``c``, with ``P`` the predicted mask, ``Y`` the ground truth (pixels whose
label is ``ignore_index`` removed from both) and ``gamma`` the smoothing constant ``smooth``:

    Dice_ic = (2 |P ∩ Y| + gamma) / (|P| + |Y| + gamma)
    IoU_ic  = (|P ∩ Y| + gamma) / (|P ∪ Y| + gamma)

A class is *present* in an image when it is in the ground truth or in the prediction
(``|P ∪ Y| > 0``); where it is not, the per-image score is undefined (NaN) and left out of every
average, whatever ``smooth`` is. The aggregations (``average``) are those of the literature
(Dai & Li, JMLR 2023; Wang & Dai, NeurIPS 2025):

- ``"image"`` (mDice^I, mIoU^I): per image, the mean over its present classes; then the mean over images.
- ``"class"`` (mDice^C, mIoU^C): per class, the mean over the images where it is present; then the
  mean over classes.
- ``"dataset"`` (mDice^D, mIoU^D): per class, the score of the counts summed over all images
  (``2 Σ|P∩Y| / (Σ|P| + Σ|Y|)``); then the mean over the classes present somewhere.
- ``"none"``: the ``(batch, classes)`` per-image scores.

``reduction="none"`` stops before the last mean: per-image values ``(batch,)`` for ``"image"``,
per-class values ``(classes,)`` for ``"class"`` and ``"dataset"``.

These agree with ``torchmetrics.functional.segmentation``: ``dice_score(..., average="none")`` is
``average="none"`` here, the mean of its ``average="macro"`` values over images is mDice^I, its
``aggregation_level="global"`` per-class values are ``average="dataset", reduction="none"``; the
mean of ``mean_iou(...)`` over images is mIoU^I (``tests/test_metrics.py`` compares them).

Every function takes ``torch.Tensor`` or ``numpy.ndarray`` inputs (never modified) and returns
float64 results of the same kind. The per-(image, class) counts
(:func:`segmentation_counts`) are the only thing the aggregations need, so a large data set can be
evaluated image by image and the counts concatenated (:meth:`SegmentationCounts.cat`).

:func:`expected_dice` and :func:`expected_iou` score masks without labels: the expectation is over
labels drawn independently per pixel from ``probs`` (the model's own uncertainty). Use them to
compare argmax, thresholding and RankSEG masks on data you have no ground truth for.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ._expected import expected_scores
from ._inputs import as_dense, as_tensor, check_values, to_caller
from ._options import check_integer, check_real

__all__ = [
    "CalibrationError",
    "SegmentationCounts",
    "calibration_error",
    "dice_score",
    "expected_dice",
    "expected_iou",
    "iou_score",
    "score_from_counts",
    "segmentation_counts",
]

Metric = Literal["dice", "iou"]
Average = Literal["image", "class", "dataset", "none"]
Reduction = Literal["mean", "none"]
InputFormat = Literal["index", "mask"]

_METRICS = ("dice", "iou")
_AVERAGES = ("image", "class", "dataset", "none")
_REDUCTIONS = ("mean", "none")
_INPUT_FORMATS = ("index", "mask")


class SegmentationCounts(NamedTuple):
    """Pixel counts per (image, class), each of shape ``(batch, classes)``, int64.

    ``intersection = |P ∩ Y|``, ``pred = |P|``, ``target = |Y|`` (ignored pixels excluded).
    Tensors, or NumPy arrays when the masks were NumPy arrays.
    """

    intersection: Tensor | np.ndarray
    pred: Tensor | np.ndarray
    target: Tensor | np.ndarray

    @classmethod
    def cat(cls, parts: Sequence[SegmentationCounts]) -> SegmentationCounts:
        """Concatenate counts along the image axis (e.g. one part per file).

        >>> a = SegmentationCounts(*(torch.ones(1, 3, dtype=torch.int64) for _ in range(3)))
        >>> SegmentationCounts.cat([a, a]).pred.shape
        torch.Size([2, 3])
        """
        if not parts:
            raise ValueError("SegmentationCounts.cat needs at least one part; got an empty sequence")
        if isinstance(parts[0].pred, np.ndarray):
            return cls(
                *(np.concatenate([np.asarray(x) for x in field]) for field in zip(*parts, strict=True))
            )
        return cls(*(torch.cat([torch.as_tensor(x) for x in field]) for field in zip(*parts, strict=True)))


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value  # type: ignore[return-value]


_MAX_CLASSES = 2**24  # (batch, classes) counts beyond this would take gigabytes per image


def _check_smooth(smooth: object) -> float:
    """The same check as ``rankseg``'s ``smooth`` (:func:`rankseg._options.check_real`)."""
    value = check_real("smooth", smooth)
    if value < 0:
        raise ValueError(f"smooth must be >= 0; got {smooth!r}")
    return value


def _check_num_classes(num_classes: object) -> int | None:
    if num_classes is None:
        return None
    return check_integer("num_classes", num_classes, 1, _MAX_CLASSES)


def _as_labels(x: Tensor, name: str) -> Tensor:
    """int64 labels; uint64 values beyond int64 are refused with their true value."""
    if x.dtype == torch.uint64:
        signed = x.view(torch.int64)  # values of 2**63 and above read as negative
        wrapped = signed < 0
        if bool(wrapped.any()):
            value = int(signed[wrapped][0]) + 2**64
            raise ValueError(f"{name} holds the label {value}, which does not fit in int64")
        return signed
    return x.long()


def segmentation_counts(
    preds: Tensor | np.ndarray,
    target: Tensor | np.ndarray,
    num_classes: int | None = None,
    *,
    ignore_index: int | None = None,
    input_format: InputFormat = "index",
) -> SegmentationCounts:
    """Per-(image, class) intersection, predicted and true pixel counts.

    Args:
        preds: ``"index"``: integer class labels ``(batch, *spatial)``; a value outside
            ``[0, num_classes)`` (e.g. a void label) predicts no class. ``"mask"``: bool (or 0/1)
            masks ``(batch, classes, *spatial)``.
        target: ground truth of the same shape: integer labels in ``[0, num_classes)`` or
            ``ignore_index`` (``"index"``); 0/1 or bool masks, or ``ignore_index`` per class and
            pixel (``"mask"``).
        num_classes: number of classes; ``"index"`` infers ``max(label) + 1`` when it is None,
            ``"mask"`` takes it from the class axis.
        ignore_index: target value whose pixels are left out of every count.
        input_format: ``"index"`` or ``"mask"``.

    Returns:
        :class:`SegmentationCounts` of three int64 ``(batch, classes)`` tensors (arrays for NumPy input).

    Example:
        >>> import torch
        >>> preds = torch.tensor([[0, 0, 1, 1]])           # (1, 4): one 1-D image
        >>> target = torch.tensor([[0, 1, 1, 255]])
        >>> segmentation_counts(preds, target, 2, ignore_index=255)
        SegmentationCounts(intersection=tensor([[1, 1]]), pred=tensor([[2, 1]]), target=tensor([[1, 2]]))
    """
    input_format = _check_choice("input_format", input_format, _INPUT_FORMATS)
    p, from_numpy = as_dense(preds, "preds")
    t, _ = as_dense(target, "target")
    if p.shape != t.shape:
        raise ValueError(
            "preds and target must have the same shape; "
            f"got preds {tuple(p.shape)} and target {tuple(t.shape)}"
        )
    if p.device != t.device:
        raise ValueError(f"preds and target must be on the same device; got {p.device} and {t.device}")
    num_classes = _check_num_classes(num_classes)
    if ignore_index is not None:
        ignore_index = check_integer("ignore_index", ignore_index)
    if input_format == "index":
        counts = _index_counts(p, t, num_classes, ignore_index)
    else:
        counts = _mask_counts(p, t, num_classes, ignore_index)
    if from_numpy:
        return SegmentationCounts(*(x.numpy() for x in counts))
    return counts


def _index_counts(
    p: Tensor, t: Tensor, num_classes: int | None, ignore_index: int | None
) -> SegmentationCounts:
    for name, x in (("preds", p), ("target", t)):
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise TypeError(
                f"{name} must hold integer class labels for input_format='index'; got dtype {x.dtype} "
                "(use input_format='mask' for (batch, classes, *spatial) masks)"
            )
    if t.dim() < 2:
        raise ValueError(f"labels must have shape (batch, *spatial); got shape {tuple(t.shape)}")
    batch, pixels = t.shape[0], math.prod(t.shape[1:])
    p = _as_labels(p, "preds").reshape(batch, pixels)
    t = _as_labels(t, "target").reshape(batch, pixels)
    valid = t != ignore_index if ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
    if num_classes is None:
        top = max(int(t[valid].max()) if valid.any() else -1, int(p.max()) if p.numel() else -1)
        if top >= _MAX_CLASSES:
            raise ValueError(
                f"the largest label is {top}: inferring num_classes={top + 1} exceeds the limit of "
                f"{_MAX_CLASSES} classes; pass num_classes (labels at or above it then count as no class "
                "in preds and are refused in target), or map the labels to a smaller range"
            )
        num_classes = max(top + 1, 1)
    bad = valid & ((t < 0) | (t >= num_classes))
    if bad.any():
        allowed = f"[0, {num_classes - 1}]"
        if ignore_index is not None:
            allowed += f" or ignore_index={ignore_index}"
        raise ValueError(f"target holds the label {int(t[bad][0])}; labels must lie in {allowed}")
    c = num_classes
    offsets = torch.arange(batch, device=t.device)[:, None] * c
    pred_valid = valid & (p >= 0) & (p < c)
    size = batch * c

    def count(index: Tensor) -> Tensor:
        return torch.bincount(index, minlength=size).reshape(batch, c)

    return SegmentationCounts(
        intersection=count((offsets + t)[pred_valid & (p == t)]),
        pred=count((offsets + p)[pred_valid]),
        target=count((offsets + t)[valid]),
    )


def _mask_counts(
    p: Tensor, t: Tensor, num_classes: int | None, ignore_index: int | None
) -> SegmentationCounts:
    if p.dim() < 3:
        raise ValueError(f"masks must have shape (batch, classes, *spatial); got shape {tuple(p.shape)}")
    if num_classes is not None and p.shape[1] != num_classes:
        raise ValueError(
            f"num_classes={num_classes} but the masks have {p.shape[1]} classes (shape {tuple(p.shape)})"
        )
    for name, x in (("preds", p), ("target", t)):
        if x.is_floating_point() or x.is_complex():
            raise TypeError(
                f"{name} must be bool or 0/1 integer masks for input_format='mask'; got dtype {x.dtype}"
            )
    batch, classes = p.shape[:2]
    pixels = math.prod(p.shape[2:])
    p = p.reshape(batch, classes, pixels)
    t = t.reshape(batch, classes, pixels)
    if p.dtype == torch.uint64 or t.dtype == torch.uint64:  # compare as int64 (0/1 and ignore_index)
        p, t = _as_labels(p, "preds"), _as_labels(t, "target")
    valid = t != ignore_index if ignore_index is not None and t.dtype != torch.bool else None
    for name, x, keep in (("preds", p, None), ("target", t, valid)):
        if x.dtype != torch.bool:
            odd = (x != 0) & (x != 1)
            if keep is not None:
                odd &= keep
            if odd.any():
                extra = ""
                if name == "target" and ignore_index is not None:
                    extra = f" or ignore_index={ignore_index}"
                raise ValueError(f"{name} masks must hold 0 or 1{extra}; found the value {int(x[odd][0])}")
    pm = p != 0
    tm = t == 1 if t.dtype != torch.bool else t
    if valid is not None:
        pm = pm & valid
        tm = tm & valid
    return SegmentationCounts(
        intersection=(pm & tm).sum(dim=-1),
        pred=pm.sum(dim=-1),
        target=tm.sum(dim=-1),
    )


def score_from_counts(
    counts: SegmentationCounts,
    metric: Metric = "dice",
    *,
    average: Average = "image",
    reduction: Reduction = "mean",
    smooth: float = 0.0,
) -> Tensor | np.ndarray:
    """Dice or IoU from per-(image, class) counts, aggregated as ``average`` says (see the module doc).

    Args:
        counts: from :func:`segmentation_counts`, or several joined by :meth:`SegmentationCounts.cat`.
        metric: ``"dice"`` or ``"iou"``.
        average: ``"image"``, ``"class"``, ``"dataset"`` or ``"none"``.
        reduction: ``"mean"`` (a scalar) or ``"none"`` (``(batch,)`` for ``"image"``, ``(classes,)``
            for ``"class"`` / ``"dataset"``); ignored for ``average="none"``.
        smooth: smoothing constant ``gamma >= 0``.

    Returns:
        float64: ``(batch, classes)`` for ``average="none"``, else as ``reduction`` says. NaN where
        nothing is present (no class in an image, an image set without the class).

    Example:
        >>> counts = segmentation_counts(torch.tensor([[0, 0, 1, 1]]), torch.tensor([[0, 1, 1, 1]]), 2)
        >>> score_from_counts(counts, "dice", average="none")
        tensor([[0.6667, 0.8000]], dtype=torch.float64)
        >>> score_from_counts(counts, "iou", average="dataset", reduction="none")
        tensor([0.5000, 0.6667], dtype=torch.float64)
    """
    metric = _check_choice("metric", metric, _METRICS)
    average = _check_choice("average", average, _AVERAGES)
    reduction = _check_choice("reduction", reduction, _REDUCTIONS)
    smooth = _check_smooth(smooth)
    from_numpy = isinstance(counts.pred, np.ndarray)
    inter, pred, target = (torch.as_tensor(x).to(torch.float64) for x in counts)
    if average == "dataset":
        inter, pred, target = inter.sum(0), pred.sum(0), target.sum(0)
    scores = _scores(inter, pred, target, metric, smooth)
    if average == "image":
        scores = scores.nanmean(dim=1)
    elif average == "class":
        scores = scores.nanmean(dim=0)
    if average != "none" and reduction == "mean":
        scores = scores.nanmean()
    return scores.numpy() if from_numpy else scores


def _scores(inter: Tensor, pred: Tensor, target: Tensor, metric: str, smooth: float) -> Tensor:
    """Dice or IoU elementwise, NaN where the class is in neither mask."""
    union = pred + target - inter
    if metric == "dice":
        scores = (2 * inter + smooth) / (pred + target + smooth)
    else:
        scores = (inter + smooth) / (union + smooth)
    return torch.where(union > 0, scores, torch.full_like(scores, float("nan")))


def _score(
    metric: Metric,
    preds: Tensor | np.ndarray,
    target: Tensor | np.ndarray,
    num_classes: int | None,
    average: Average,
    reduction: Reduction,
    smooth: float,
    ignore_index: int | None,
    input_format: InputFormat,
) -> Tensor | np.ndarray:
    counts = segmentation_counts(
        preds, target, num_classes, ignore_index=ignore_index, input_format=input_format
    )
    return score_from_counts(counts, metric, average=average, reduction=reduction, smooth=smooth)


def dice_score(
    preds: Tensor | np.ndarray,
    target: Tensor | np.ndarray,
    num_classes: int | None = None,
    *,
    average: Average = "image",
    reduction: Reduction = "mean",
    smooth: float = 0.0,
    ignore_index: int | None = None,
    input_format: InputFormat = "index",
) -> Tensor | np.ndarray:
    """Dice of predicted masks against the ground truth (mDice^I by default).

    Shapes as in :func:`segmentation_counts`: labels ``(batch, *spatial)`` for
    ``input_format="index"``, masks ``(batch, classes, *spatial)`` for ``"mask"``. ``average``,
    ``reduction`` and ``smooth`` as in :func:`score_from_counts`.

    Example:
        >>> import numpy as np
        >>> preds = np.array([[0, 0, 1, 1], [1, 1, 1, 1]])      # (2, 4): two 1-D images
        >>> target = np.array([[0, 1, 1, 1], [1, 1, 1, 0]])
        >>> float(dice_score(preds, target, 2))                    # mDice^I
        0.580952380952381
        >>> dice_score(preds, target, 2, average="none").round(4)  # image 2, class 0: 2*0 / (0 + 1)
        array([[0.6667, 0.8   ],
               [0.    , 0.8571]])
        >>> float(dice_score(preds, target, 2, average="dataset"))
        0.6666666666666667
    """
    return _score("dice", preds, target, num_classes, average, reduction, smooth, ignore_index, input_format)


def iou_score(
    preds: Tensor | np.ndarray,
    target: Tensor | np.ndarray,
    num_classes: int | None = None,
    *,
    average: Average = "image",
    reduction: Reduction = "mean",
    smooth: float = 0.0,
    ignore_index: int | None = None,
    input_format: InputFormat = "index",
) -> Tensor | np.ndarray:
    """IoU (Jaccard index) of predicted masks against the ground truth (mIoU^I by default).

    Same arguments as :func:`dice_score`; ``average="dataset"`` gives the usual data-set mIoU^D.

    Example:
        >>> import torch
        >>> preds = torch.tensor([[[1, 1, 0, 0]], [[0, 0, 0, 0]]], dtype=torch.bool)  # (2, 1, 4) masks
        >>> target = torch.tensor([[[1, 0, 0, 0]], [[0, 0, 0, 0]]], dtype=torch.bool)
        >>> iou_score(preds, target, input_format="mask", average="none")  # image 2: class absent
        tensor([[0.5000],
                [   nan]], dtype=torch.float64)
        >>> iou_score(preds, target, input_format="mask", smooth=1.0, reduction="none")
        tensor([0.6667,    nan], dtype=torch.float64)
    """
    return _score("iou", preds, target, num_classes, average, reduction, smooth, ignore_index, input_format)


# ------------------------------------------------------- expected metrics under the probabilities


def _expected(probs: object, masks: object, smooth: object, metric: str) -> Tensor | np.ndarray:
    smooth = _check_smooth(smooth)
    tensor, from_numpy = as_tensor(probs)
    mask_tensor, _ = as_dense(masks, "masks")
    if mask_tensor.dtype != torch.bool:
        raise TypeError(f"masks must be boolean, of the shape of probs; got dtype {mask_tensor.dtype}")
    if tuple(mask_tensor.shape) != tuple(tensor.shape):
        raise ValueError(
            f"masks must have the shape of probs {tuple(tensor.shape)} (one mask per image and class); "
            f"got {tuple(mask_tensor.shape)}"
        )
    batch, classes = tensor.shape[:2]
    if batch * classes == 0:
        return to_caller(torch.zeros(batch, classes, dtype=torch.float64, device=tensor.device), from_numpy)
    pixels = math.prod(tensor.shape[2:])
    rows = tensor.reshape(batch * classes, pixels)
    if pixels:
        check_values(rows)
    flat_masks = mask_tensor.to(tensor.device).reshape(batch * classes, pixels)
    scores = expected_scores(rows, flat_masks, metric, smooth)
    return to_caller(scores.reshape(batch, classes), from_numpy)


def expected_dice(
    probs: Tensor | np.ndarray, masks: Tensor | np.ndarray, smooth: float = 0.0
) -> Tensor | np.ndarray:
    r"""Exact expected Dice of each mask under independent labels ``Y ~ Bernoulli(probs)``.

    ``E[(2 |M ∩ Y| + smooth) / (|M| + |Y| + smooth)]`` per image and class, computed exactly (to
    ~1e-12) by the generating-function integral of ``docs/algorithms.md``; an empty mask and an
    empty truth with ``smooth = 0`` score 0.

    Args:
        probs: ``(batch, classes, *spatial)`` probabilities (tensor or array, any float dtype).
        masks: bool masks of the same shape (e.g. ``RankSEG(output_mode="multilabel")`` output,
            or one-hot argmax masks).
        smooth: the smoothing constant, ``>= 0``.

    Returns:
        ``(batch, classes)`` float64 tensor (NumPy array for NumPy ``probs``).

    Example:
        >>> import torch
        >>> from rankseg.metrics import expected_dice
        >>> probs = torch.tensor([[[0.9, 0.6, 0.2]]])
        >>> float(expected_dice(probs, probs > 0.5)[0, 0])  # doctest: +ELLIPSIS
        0.7...
    """
    return _expected(probs, masks, smooth, "dice")


def expected_iou(
    probs: Tensor | np.ndarray, masks: Tensor | np.ndarray, smooth: float = 0.0
) -> Tensor | np.ndarray:
    r"""Exact expected IoU ``E[(|M ∩ Y| + smooth) / (|M ∪ Y| + smooth)]``; see :func:`expected_dice`.

    Example:
        >>> import torch
        >>> from rankseg.metrics import expected_iou
        >>> probs = torch.tensor([[[0.9, 0.6, 0.2]]])
        >>> round(float(expected_iou(probs, probs > 0.5)[0, 0]), 4)
        0.7
    """
    return _expected(probs, masks, smooth, "iou")


# ------------------------------------------------------- calibration of the probabilities


class CalibrationError(NamedTuple):
    r"""Expected calibration error and the reliability-diagram data of :func:`calibration_error`.

    With ``B_b`` the labelled pixels (multilabel: of one class) whose confidence falls in bin ``b``
    (``(b / n_bins, (b + 1) / n_bins]``, the first bin closed at 0) and ``N`` all of them:

        ECE = sum_b |B_b| / N * |accuracy_b - confidence_b|

    Multiclass (top-label): the confidence of a pixel is its largest probability and it is correct
    when that class (the first one on ties) is its label. Multilabel: per class, the confidence is
    the class's probability and the outcome its 0/1 label.

    Fields (float64, int64 for ``counts``; CPU tensors, or NumPy arrays for NumPy input):
        ece: ``()`` multiclass, ``(C,)`` multilabel (NaN for a class with no labelled pixel).
        counts: pixels per bin, ``(n_bins,)`` or ``(C, n_bins)``.
        confidence: mean confidence per bin (NaN where a bin is empty), shaped like ``counts``.
        accuracy: fraction correct (multilabel: positive) per bin (NaN where empty).
        bin_edges: ``(n_bins + 1,)``, ``b / n_bins``.
    """

    ece: Tensor | np.ndarray
    counts: Tensor | np.ndarray
    confidence: Tensor | np.ndarray
    accuracy: Tensor | np.ndarray
    bin_edges: Tensor | np.ndarray

    @classmethod
    def merge(cls, parts: Sequence[CalibrationError]) -> CalibrationError:
        """Combine the results of disjoint pixel sets (e.g. one per file) into that of their union.

        >>> probs = torch.tensor([[[0.9], [0.1]], [[0.2], [0.8]]])  # (2, 2, 1): two one-pixel images
        >>> labels = torch.tensor([[0], [0]])
        >>> whole = calibration_error(probs, labels, n_bins=5)
        >>> parts = [calibration_error(probs[i : i + 1], labels[i : i + 1], n_bins=5) for i in range(2)]
        >>> bool(torch.allclose(CalibrationError.merge(parts).ece, whole.ece))
        True
        """
        if not parts:
            raise ValueError("CalibrationError.merge needs at least one part; got an empty sequence")
        from_numpy = isinstance(parts[0].counts, np.ndarray)
        edges = torch.as_tensor(parts[0].bin_edges)
        counts = torch.zeros_like(torch.as_tensor(parts[0].counts))
        confidence_sum = torch.zeros(counts.shape, dtype=torch.float64)
        correct_sum = torch.zeros(counts.shape, dtype=torch.float64)
        for part in parts:
            part_counts = torch.as_tensor(part.counts)
            if part_counts.shape != counts.shape or not torch.equal(torch.as_tensor(part.bin_edges), edges):
                raise ValueError(
                    "CalibrationError.merge needs parts with the same bins and classes; got counts of "
                    f"shapes {tuple(counts.shape)} and {tuple(part_counts.shape)}"
                )
            counts += part_counts
            confidence_sum += torch.as_tensor(part.confidence).nan_to_num(0.0) * part_counts
            correct_sum += torch.as_tensor(part.accuracy).nan_to_num(0.0) * part_counts
        result = _calibration_result(counts, confidence_sum, correct_sum, edges)
        return CalibrationError(*(x.numpy() for x in result)) if from_numpy else result


def calibration_error(
    probs: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    n_bins: int = 15,
    *,
    ignore_index: int | None = None,
) -> CalibrationError:
    r"""Expected calibration error (ECE) of probability maps, with the reliability-diagram data.

    Top-label ECE for multiclass labels, one ECE per class for multilabel labels (see
    :class:`CalibrationError` for the formula and the bins). RankSEG maximises the expected Dice /
    IoU under the probabilities, so the smaller the ECE, the closer that is to the realised score;
    :class:`rankseg.calibration.TemperatureScaling` lowers it.

    Args:
        probs: ``(batch, classes, *spatial)`` probabilities in [0, 1] (any float dtype, any device).
        labels: multiclass: class indices ``(batch, *spatial)`` (with at least two classes);
            multilabel: 0/1 (or bool) ``(batch, classes, *spatial)``; for one class ``(batch, *spatial)``
            0/1 labels are multilabel. Values equal to ``ignore_index`` are left out.
        n_bins: number of equal-width confidence bins on [0, 1].
        ignore_index: label value of unlabelled pixels.

    Returns:
        :class:`CalibrationError`; per-bin sums over disjoint data combine with
        :meth:`CalibrationError.merge`.

    Example:
        >>> import torch
        >>> probs = torch.tensor([[[0.95, 0.65, 0.25, 0.15], [0.05, 0.35, 0.75, 0.85]]])  # (1, 2, 4)
        >>> labels = torch.tensor([[0, 1, 1, 1]])         # the second pixel is predicted wrong
        >>> result = calibration_error(probs, labels, n_bins=5)
        >>> result.counts                                 # (0.6, 0.8]: 0.65, 0.75; (0.8, 1]: 0.85, 0.95
        tensor([0, 0, 0, 2, 2])
        >>> result.accuracy[3:], result.confidence[3:]
        (tensor([0.5000, 1.0000], dtype=torch.float64), tensor([0.7000, 0.9000], dtype=torch.float64))
        >>> round(float(result.ece), 4)                   # (2 * |0.5 - 0.7| + 2 * |1 - 0.9|) / 4
        0.15
    """
    tensor, from_numpy = as_tensor(probs)
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer; got {n_bins!r}")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise TypeError(f"ignore_index must be an integer or None; got {ignore_index!r}")
    target = _calibration_labels(labels, tensor)
    batch, classes = tensor.shape[:2]
    multilabel = target.dim() == tensor.dim() or classes == 1
    if multilabel and target.dim() != tensor.dim():
        target = target.unsqueeze(1)
    expected = tuple(tensor.shape) if multilabel else (batch, *tensor.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"labels must have shape {expected} (multiclass: (batch, *spatial) class indices; multilabel: "
            f"(batch, classes, *spatial) 0/1) for probs of shape {tuple(tensor.shape)}; "
            f"got {tuple(target.shape)}"
        )
    if tensor.numel():
        check_values(tensor.reshape(batch * classes, -1))
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    if multilabel:
        allowed, bad = "0 or 1", valid & (target != 0) & (target != 1)
    else:
        allowed, bad = f"class indices in [0, {classes - 1}]", valid & ((target < 0) | (target >= classes))
    if bad.any():
        extra = f" or ignore_index={ignore_index}" if ignore_index is not None else ""
        raise ValueError(f"labels must be {allowed}{extra}; found the label {int(target[bad][0])}")
    edges = torch.arange(n_bins + 1, dtype=torch.float64) / n_bins
    if multilabel:
        confidence = tensor.to(torch.float64)
        correct = target == 1
        groups = torch.arange(classes, device=tensor.device).reshape(1, classes, *[1] * (tensor.dim() - 2))
        groups = groups.expand(tensor.shape)
    else:
        top, predicted = tensor.max(dim=1)
        confidence = top.to(torch.float64)
        correct = predicted == target
        groups = torch.zeros_like(target)
    bins = (torch.bucketize(confidence, edges.to(tensor.device)) - 1).clamp_(0, n_bins - 1)
    flat = (groups * n_bins + bins)[valid]
    size = (classes if multilabel else 1) * n_bins

    def binned(weights: Tensor | None, dtype: torch.dtype) -> Tensor:
        # .to(dtype): bincount of an empty input returns int64 even with float weights
        return torch.bincount(flat, weights=weights, minlength=size).reshape(-1, n_bins).cpu().to(dtype)

    counts = binned(None, torch.int64)
    confidence_sum = binned(confidence[valid], torch.float64)
    correct_sum = binned(correct[valid].to(torch.float64), torch.float64)
    if not multilabel:
        counts, confidence_sum, correct_sum = counts[0], confidence_sum[0], correct_sum[0]
    result = _calibration_result(counts, confidence_sum, correct_sum, edges)
    return CalibrationError(*(x.numpy() for x in result)) if from_numpy else result


def _calibration_labels(labels: object, probs: Tensor) -> Tensor:
    if isinstance(labels, np.ndarray):
        if labels.dtype.kind not in "biu":
            raise TypeError(
                f"labels must hold integer or bool labels; got a numpy array of dtype {labels.dtype}"
            )
        array = labels.astype(np.int64) if labels.dtype.kind == "u" or not labels.dtype.isnative else labels
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "array is not writable": it is only read
            labels = torch.from_numpy(np.ascontiguousarray(array))
    elif not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor or numpy.ndarray; got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must hold integer class indices or 0/1 masks; got dtype {labels.dtype}")
    return labels.to(probs.device)


def _calibration_result(
    counts: Tensor, confidence_sum: Tensor, correct_sum: Tensor, edges: Tensor
) -> CalibrationError:
    """Per-bin means and the ECE ``sum_b |correct_b - confidence_b| / N`` from per-bin sums."""
    nan = torch.full_like(confidence_sum, float("nan"))
    filled = counts > 0
    total = counts.sum(dim=-1).to(torch.float64)
    gap = (correct_sum - confidence_sum).abs().sum(dim=-1)
    ece = torch.where(total > 0, gap / total.clamp(min=1), torch.full_like(total, float("nan")))
    return CalibrationError(
        ece=ece,
        counts=counts,
        confidence=torch.where(filled, confidence_sum / counts.clamp(min=1), nan),
        accuracy=torch.where(filled, correct_sum / counts.clamp(min=1), nan),
        bin_edges=edges,
    )
