"""Hugging Face Transformers segmentation outputs -> probability maps -> RankSEG.

Swap only the last step of ``processor -> model -> outputs -> post_process_semantic_segmentation``
(its argmax) for RankSEG:

    from rankseg.integration import transformers
    preds = transformers.postprocess(outputs, target_sizes=sizes, rankseg_kwargs={"metric": "dice"})
    probs = transformers.restore_semantic_probs(outputs, target_sizes=sizes)  # one (C, H, W) per image
    preds = transformers.postprocess(outputs, target_sizes=sizes, calibration="calibration.json")

:func:`restore_semantic_probs` repeats, for each output family, the geometry of the official
semantic post-processing of transformers 5.x (which resize, which non-linearity, in which order,
per image) and stops where the official code takes its argmax, so that the argmax of the restored
probabilities is the official segmentation. The recipes and the transformers source they mirror are
in ``docs/integration-transformers.md``.

This module never imports ``transformers`` when it is imported: it reads output fields by name,
checks tensor ranks, and only where the fields are ambiguous looks at the output class name or at
``model.config.model_type``. SAM-family outputs belong to :mod:`rankseg.integration.sam`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..calibration import TemperatureScaling, resolve_calibration
from ._common import (
    bilinear,
    check_pixels,
    check_readable,
    divide_logits,
    field,
    float_field,
    make_predictor,
    parse_sizes,
    predict,
    restoration_dtype,
)
from ._sam_video import video_adapter_hint

__all__ = ["postprocess", "restore_semantic_probs"]

# Mask2Former's post-processing resizes the mask logits to this fixed size first, "for all models".
_MASK2FORMER_MASK_SIZE = (384, 384)

# Output class names and config.model_type values -> family, for the field sets that several
# families share with different geometry (query models; DETR-style heads).
_QUERY_CLASSES = {
    "MaskFormerForInstanceSegmentationOutput": "maskformer",
    "Mask2FormerForUniversalSegmentationOutput": "mask2former",
    "OneFormerForUniversalSegmentationOutput": "oneformer",
    "EomtForUniversalSegmentationOutput": "eomt",
    "EomtDinov3ForUniversalSegmentationOutput": "eomt",
}
_QUERY_MODEL_TYPES = {
    "maskformer": "maskformer",
    "mask2former": "mask2former",
    "oneformer": "oneformer",
    "eomt": "eomt",
    "eomt_dinov3": "eomt",
}
_DETR_CLASSES = {
    "DetrSegmentationOutput": "detr",
    "ConditionalDetrSegmentationOutput": "conditional_detr",
}
_DETR_MODEL_TYPES = {"detr": "detr", "conditional_detr": "conditional_detr"}

# Display names of the families that refuse calibration= (their scores are no activation of dense logits).
_FAMILY_NAMES = {
    "maskformer": "MaskFormer",
    "mask2former": "Mask2Former",
    "oneformer": "OneFormer",
    "eomt": "EoMT",
    "detr": "DETR",
    "conditional_detr": "ConditionalDETR",
}

_SAM_PREFIXES = ("Sam", "EdgeTam")
_SAM_MODEL_TYPES = ("sam", "edgetam")

_GroupedMaps = list[tuple[list[int], Tensor]]  # (image indices, (G, C, H, W) maps of those images)


class _Restored(NamedTuple):
    groups: _GroupedMaps
    batch: int  # number of images
    class_field: str  # the output field whose channels are the classes (named in errors)


def restore_semantic_probs(
    outputs: Any,
    *,
    model: Any = None,
    target_sizes: Sequence[Sequence[int]] | Tensor | None = None,
    size: Any = None,
    antialias: bool | None = None,
    calibration: TemperatureScaling | str | os.PathLike | Mapping[str, Any] | None = None,
) -> list[Tensor]:
    r"""Per-image class probabilities restored from a Transformers segmentation output.

    Output families and how each is restored (official geometry of transformers 5.x):

    - ``logits`` ``(B, C, h, w)`` (SegFormer, UperNet, DPT, BEiT, Data2VecVision, MobileViT,
      MobileNetV2, Sapiens2; Tipsv2Dpt's ``segmentation_logits``): bilinear resize of the logits,
      then ``softmax`` over classes.
    - ``class_queries_logits`` ``(B, Q, K+1)`` + ``masks_queries_logits`` ``(B, Q, h, w)``
      (MaskFormer, Mask2Former, OneFormer, EoMT) and ``logits`` ``(B, Q, K[+1])`` +
      ``pred_masks`` ``(B, Q, h, w)`` (DETR, ConditionalDETR): the official score map
      ``S = einsum(softmax(class)[..., :K], sigmoid(masks))`` with each model's fixed steps
      (Mask2Former's 384x384 mask resize, EoMT's resize to ``size`` and patch merging), resized to
      the target, then divided by its sum over classes, ``P = S / max(sum_c S, tiny)``. Dividing
      every class by the same positive number keeps the official argmax; the null ("no object")
      class is dropped after the softmax as the official code does, so there is no void channel.
    - ``semantic_seg`` ``(B, 1, h, w)`` (SAM3): ``sigmoid`` first, then the bilinear resize, in
      probability space as the official code does.

    Args:
        outputs: the model's output object (a ``ModelOutput``, a dict or any object with the fields
            above). Never modified.
        model: the model that produced ``outputs``, or its config. Needed only when the fields
            alone do not tell the family (a dict or custom output class with query or DETR fields):
            its ``config.model_type`` decides, e.g. Mask2Former's 384 step or DETR's null class.
        target_sizes: one ``(height, width)`` per image, a list of pairs or a ``(B, 2)`` tensor, as
            for ``post_process_semantic_segmentation``. ``None`` keeps the model's output
            resolution (384x384 for Mask2Former). Required for EoMT.
        size: EoMT only: the image processor's ``size`` (``processor.size``), the resolution the
            official code resizes masks to before merging patches. Ignored for other families.
        antialias: OneFormer only: the official torchvision backend resizes with antialiasing, the
            PIL backend without. ``None`` follows the backend ``OneFormerImageProcessor`` resolves to
            in this environment (torchvision if installed); pass ``False`` if you use
            ``OneFormerImageProcessorPil`` (or ``backend="pil"``), ``True`` for the torchvision one.
            Ignored for other families.
        calibration: a temperature fitted on validation logits
            (:class:`rankseg.calibration.TemperatureScaling`, the path of its JSON file, or its
            ``state_dict()``), or ``None``. It divides the dense logits before the resize and the
            activation: ``softmax(bilinear(logits / T))`` (a softmax calibration, global or per
            class) and ``bilinear(sigmoid(semantic_seg / T))`` (a sigmoid one), i.e. the official
            post-processing of the outputs with their logits divided by ``T``; ``T = 1`` changes no
            bit. Query and DETR families refuse it: their scores mix a softmax over query classes with
            sigmoid masks, not one activation of dense logits, so a temperature has no defined place.

    Returns:
        A list with one ``(C, H, W)`` tensor per image (empty for an empty batch), on the outputs'
        device: ``(H, W)`` is ``target_sizes[i]`` or the model's output resolution. Multiclass
        families sum to 1 over ``C``, except where every official score is 0 (no query at all, or
        every query "no object" to the last float bit): all ``C`` probabilities are 0 there, and
        the official argmax is class 0. ``semantic_seg`` has ``C = 1`` independent sigmoid
        probabilities. The dtype is float64 when the score fields are float64 (as the official code
        keeps them; EoMT's patch merge accumulates in torch's default dtype, float32, as the
        official one does), float32 otherwise (float16/bfloat16 included).

    Raises:
        TypeError: ``outputs`` is a tuple (``return_dict=False``) or not an output object, a field
            is not a floating tensor or is sparse, or ``model`` / ``antialias`` has the wrong type.
        ValueError: SAM-family, SegGPT, RF-DETR, CLIPSeg or unrecognised outputs; fields of the wrong
            rank, with an empty map, inconsistent shapes, NaN/inf values or on the meta device; a
            family the fields cannot identify without ``model``; ``target_sizes`` of the wrong form
            or length, with bools or over 2**31 - 1 pixels; EoMT without ``target_sizes`` or ``size``;
            ``calibration`` for a query or DETR family, fitted for the other activation, unfitted, or
            per class with another number of classes.

    Example:
        >>> import torch
        >>> from rankseg.integration import transformers
        >>> outputs = {"logits": torch.randn(2, 3, 8, 8)}  # e.g. SegformerForSemanticSegmentation
        >>> probs = transformers.restore_semantic_probs(outputs, target_sizes=[(32, 32), (16, 24)])
        >>> [tuple(p.shape) for p in probs]
        [(3, 32, 32), (3, 16, 24)]
        >>> bool(torch.allclose(probs[1].sum(dim=0), torch.ones(16, 24)))
        True
        >>> state = {"format": "rankseg.TemperatureScaling", "version": 1, "temperature": 0.5}
        >>> sharper = transformers.restore_semantic_probs(outputs, calibration=state)  # softmax(logits / 0.5)
        >>> bool(torch.allclose(sharper[0], torch.softmax(outputs["logits"][0] / 0.5, dim=0)))
        True
    """
    restored = _restore(outputs, model, target_sizes, size, antialias, calibration)
    per_image: list[Tensor] = [torch.empty(0)] * restored.batch
    for index, maps in restored.groups:
        for i, probs in zip(index, maps.unbind(0), strict=True):
            per_image[i] = probs
    return per_image


def postprocess(
    outputs: Any,
    *,
    model: Any = None,
    target_sizes: Sequence[Sequence[int]] | Tensor | None = None,
    rankseg_kwargs: Mapping[str, Any] | None = None,
    size: Any = None,
    antialias: bool | None = None,
    calibration: TemperatureScaling | str | os.PathLike | Mapping[str, Any] | None = None,
) -> list[Tensor]:
    """RankSEG predictions in place of ``post_process_semantic_segmentation``'s argmax.

    Restores the probabilities with :func:`restore_semantic_probs` (same arguments) and applies
    ``RankSEG(**rankseg_kwargs)`` to them, one call per group of images that share a size. When
    ``rankseg_kwargs`` has no ``output_mode``, it is ``"multiclass"`` for more than one class
    channel and ``"multilabel"`` for one (``semantic_seg``).

    Args:
        outputs, model, target_sizes, size, antialias, calibration: as for
            :func:`restore_semantic_probs`.
        rankseg_kwargs: keyword arguments of :class:`rankseg.RankSEG` (``metric``, ``solver``,
            ``output_mode``, ...). ``None`` means Dice with the RMA solver.

    Returns:
        One prediction per image: int64 labels ``(H, W)`` for multiclass output, bool masks
        ``(C, H, W)`` for multilabel output; ``(H, W)`` as in :func:`restore_semantic_probs`.
        ``{"metric": "acc", "solver": "argmax"}`` reproduces the official segmentation. An empty
        batch gives an empty list; outputs with no class channel give empty ``(0, H, W)`` masks
        (multilabel; multiclass is refused).

    Raises:
        TypeError, ValueError: as :func:`restore_semantic_probs` (errors name the output field,
            e.g. ``outputs.logits``), and for invalid ``rankseg_kwargs``.

    Example:
        >>> import torch
        >>> from rankseg.integration import transformers
        >>> outputs = {"logits": torch.randn(2, 3, 8, 8)}  # e.g. SegformerForSemanticSegmentation
        >>> preds = transformers.postprocess(outputs, target_sizes=[(32, 32), (16, 24)])
        >>> [(tuple(p.shape), p.dtype) for p in preds]
        [((32, 32), torch.int64), ((16, 24), torch.int64)]
    """
    restored = _restore(outputs, model, target_sizes, size, antialias, calibration)
    classes = restored.groups[0][1].shape[1] if restored.groups else 0
    predictor = make_predictor(rankseg_kwargs, "multiclass" if classes > 1 else "multilabel")
    no_class = f"outputs.{restored.class_field} has no class channel"
    per_image: list[Tensor] = [torch.empty(0)] * restored.batch
    for index, maps in restored.groups:
        for i, pred in zip(index, predict(predictor, maps, no_class).unbind(0), strict=True):
            per_image[i] = pred
    return per_image


# --------------------------------------------------------------------------------------------
# Identification: which family produced ``outputs``.


def _restore(
    outputs: Any, model: Any, target_sizes: Any, size: Any, antialias: bool | None, calibration: Any
) -> _Restored:
    """Identify the family and restore its maps, grouped by output size."""
    family = _identify(outputs, model)
    if family in _PLAIN_RESTORERS:
        return _PLAIN_RESTORERS[family](outputs, target_sizes, calibration)
    if calibration is not None:
        raise ValueError(_no_calibration_message(family))
    if family in _QUERY_GEOMETRY:
        return _restore_queries(outputs, target_sizes, _QUERY_GEOMETRY[family], antialias)
    return _restore_eomt(outputs, target_sizes, size)


def _no_calibration_message(family: str) -> str:
    fields = (
        "logits + pred_masks"
        if family in _DETR_MODEL_TYPES
        else "class_queries_logits + masks_queries_logits"
    )
    return (
        f"calibration= has no defined place in {_FAMILY_NAMES[family]} post-processing: its class scores "
        f"({fields}) mix a softmax over each query's classes with sigmoid masks, "
        "S = einsum(softmax(class_logits)[..., :K], sigmoid(mask_logits)), so there are no dense class "
        "logits whose softmax or sigmoid gives the probabilities, and no single temperature to divide them "
        "by. Temperature scaling applies to dense-logit models (outputs.logits: SegFormer, UperNet, DPT, "
        "BEiT, ...; outputs.semantic_seg: SAM3); call without calibration"
    )


def _identify(outputs: Any, model: Any) -> str:
    """One of ``logits``, ``semantic_seg``, ``maskformer``, ``mask2former``, ``oneformer``, ``eomt``,
    ``detr``, ``conditional_detr``; raise a helpful error for everything else."""
    name = type(outputs).__name__
    if isinstance(outputs, Tensor):
        raise TypeError(
            "outputs must be the model's whole output object (e.g. SemanticSegmenterOutput), got a "
            f"tensor of shape {tuple(outputs.shape)}; for probabilities you already have, call "
            "rankseg.RankSEG on them directly"
        )
    if isinstance(outputs, (tuple, list)):
        raise TypeError(
            f"outputs is a {name} of {len(outputs)} items, as models return with return_dict=False; "
            "call the model with return_dict=True (the default) and pass its output object, whose "
            "fields (logits, class_queries_logits, ...) tell which post-processing applies"
        )
    if outputs is None or isinstance(outputs, (str, bytes, int, float)):
        raise TypeError(f"outputs must be a model output object or a dict of its fields; got {outputs!r}")
    video_hint = video_adapter_hint(outputs)
    if video_hint is not None:
        raise ValueError(video_hint)
    model_type = _model_type(model)
    class_names = [cls.__name__ for cls in type(outputs).__mro__]

    if field(outputs, "semantic_seg") is not None:
        return "semantic_seg"
    if (
        field(outputs, "iou_scores") is not None
        or name.startswith(_SAM_PREFIXES)
        or (model_type or "").startswith(_SAM_MODEL_TYPES)
    ):
        raise ValueError(
            f"outputs ({name}, fields {_field_names(outputs)}) look like a SAM-family prompt output: its "
            "pred_masks are one mask per prompt, not class scores, and are restored with "
            "post_process_masks geometry; use rankseg.integration.sam for them"
        )

    has_class_queries = field(outputs, "class_queries_logits") is not None
    has_mask_queries = field(outputs, "masks_queries_logits") is not None
    if has_class_queries or has_mask_queries:
        if not (has_class_queries and has_mask_queries):
            missing = "masks_queries_logits" if has_class_queries else "class_queries_logits"
            raise ValueError(
                f"outputs ({name}) has {'class' if has_class_queries else 'masks'}_queries_logits but no "
                f"{missing}; query models (MaskFormer, Mask2Former, OneFormer, EoMT) need both"
            )
        return _family_from(name, class_names, model_type, _QUERY_CLASSES, _QUERY_MODEL_TYPES, "query")

    if field(outputs, "pred_masks") is not None:
        if name.startswith("RfDetr") or model_type == "rf_detr":
            raise ValueError(
                f"outputs ({name}) come from RF-DETR, which has per-class sigmoid instance scores and no "
                "official semantic post-processing to mirror; threshold its instance masks with "
                "post_process_instance_segmentation instead"
            )
        if field(outputs, "logits") is None:
            raise ValueError(
                f"outputs ({name}, fields {_field_names(outputs)}) have pred_masks but no class logits: "
                "SegGPT-style pred_masks are RGB images matched to a palette, not probabilities, and "
                "SAM-style masks belong to rankseg.integration.sam; neither can be restored here"
            )
        return _family_from(name, class_names, model_type, _DETR_CLASSES, _DETR_MODEL_TYPES, "DETR")

    logits_name = "segmentation_logits" if field(outputs, "segmentation_logits") is not None else "logits"
    logits = field(outputs, logits_name)
    if logits is not None:
        if isinstance(logits, Tensor) and logits.ndim == 3:
            raise ValueError(
                f"outputs.{logits_name} has shape {tuple(logits.shape)}, one map per prompt with no class "
                f"dimension (CLIPSeg-style, {name}); transformers has no semantic post-processing for it. "
                "Resize it yourself, apply sigmoid and pass probs[:, None] to "
                "rankseg.RankSEG(output_mode='multilabel')"
            )
        return "logits"
    raise ValueError(
        f"outputs ({name}) has none of the fields this helper restores; got fields "
        f"{_field_names(outputs)}. Expected logits (batch, classes, height, width), "
        "class_queries_logits + masks_queries_logits, logits + pred_masks (DETR) or semantic_seg. "
        "For a custom model, compute its per-class probabilities and call rankseg.RankSEG on them"
    )


def _family_from(
    name: str,
    class_names: list[str],
    model_type: str | None,
    by_class: dict[str, str],
    by_model_type: dict[str, str],
    kind: str,
) -> str:
    """The family of a field set that several models share, from the model or the output class."""
    from_class = next((by_class[c] for c in class_names if c in by_class), None)
    from_model = by_model_type.get(model_type) if model_type is not None else None
    if from_class is not None and from_model is not None and from_class != from_model:
        raise ValueError(
            f"model has config.model_type={model_type!r} but outputs are {name} ({from_class}); pass the "
            "model that produced these outputs"
        )
    family = from_model or from_class
    if family is None:
        known = ", ".join(sorted(set(by_model_type)))
        raise ValueError(
            f"cannot tell which {kind} model produced outputs of type {name}"
            + (f" (model_type={model_type!r})" if model_type is not None else "")
            + f": their geometry differs between models; pass model= (the model or its config) with "
            f"config.model_type one of {known}"
        )
    return family


def _model_type(model: Any) -> str | None:
    if model is None:
        return None
    model_type = getattr(getattr(model, "config", model), "model_type", None)
    if not isinstance(model_type, str):
        raise TypeError(
            "model must be the transformers model that produced outputs, or its config (an object with "
            f"config.model_type); got {type(model).__name__}"
        )
    return model_type


def _field_names(outputs: Any) -> list[str]:
    if isinstance(outputs, Mapping):
        return [str(key) for key in outputs]
    return sorted(key for key in getattr(outputs, "__dict__", {}) if not key.startswith("_"))


def _query_fields(outputs: Any, class_name: str, mask_name: str) -> tuple[Tensor, Tensor]:
    class_logits = float_field(outputs, class_name, ("batch", "queries", "classes"))
    mask_logits = float_field(outputs, mask_name, ("batch", "queries", "height", "width"))
    if class_logits.shape[:2] != mask_logits.shape[:2]:
        raise ValueError(
            f"outputs.{class_name} {tuple(class_logits.shape)} and outputs.{mask_name} "
            f"{tuple(mask_logits.shape)} must agree on (batch, queries)"
        )
    return class_logits, mask_logits


def _oneformer_antialias(antialias: bool | None) -> bool:
    """Whether the official OneFormer resize antialiases: the torchvision backend does, PIL does not."""
    if antialias is not None:
        if not isinstance(antialias, bool):
            raise TypeError(f"antialias must be True, False or None; got {antialias!r}")
        return antialias
    try:
        from transformers.utils import is_torchvision_available
    except ImportError:  # no transformers: no torchvision-backend processor can have been used
        return False
    return bool(is_torchvision_available())


# --------------------------------------------------------------------------------------------
# Restoration per family (design note hf-postprocess.md, sections 1-4).


def _restore_logits(outputs: Any, target_sizes: Any, calibration: Any) -> _Restored:
    """Plain models: bilinear resize of the logits (divided by the calibration's ``T``), then
    softmax (section 1)."""
    name = "segmentation_logits" if field(outputs, "segmentation_logits") is not None else "logits"
    logits = float_field(outputs, name, ("batch", "classes", "height", "width"))
    scaler = resolve_calibration(calibration, activation="softmax")
    logits = divide_logits(logits.to(restoration_dtype(logits)), scaler, f"outputs.{name}")
    sizes = _sizes(target_sizes, logits.shape[0])
    return _Restored(_resize_groups(logits, sizes, lambda maps: maps.softmax(dim=1)), logits.shape[0], name)


def _restore_semantic_seg(outputs: Any, target_sizes: Any, calibration: Any) -> _Restored:
    """SAM3 ``semantic_seg``: sigmoid first (of the logits divided by the calibration's ``T``),
    then bilinear resize in probability space (section 4).

    The clamp only absorbs float rounding of the interpolation weights above 1.
    """
    logits = float_field(outputs, "semantic_seg", ("batch", "channels", "height", "width"))
    scaler = resolve_calibration(calibration, activation="sigmoid")
    probs = divide_logits(logits.to(restoration_dtype(logits)), scaler, "outputs.semantic_seg").sigmoid()
    sizes = _sizes(target_sizes, logits.shape[0])
    groups = _resize_groups(probs, sizes, lambda maps: maps.clamp_(0.0, 1.0))
    return _Restored(groups, logits.shape[0], "semantic_seg")


_PLAIN_RESTORERS: dict[str, Callable[[Any, Any, Any], _Restored]] = {
    "logits": _restore_logits,
    "semantic_seg": _restore_semantic_seg,
}


def _query_scores(class_logits: Tensor, mask_probs: Tensor, drop_null: bool) -> Tensor:
    """Official class x mask mixture ``S = einsum(softmax(class)[..., :K], mask_probs)``, (B, K, h, w),
    in the dtype of ``mask_probs``."""
    class_probs = class_logits.to(mask_probs.dtype).softmax(dim=-1)
    if drop_null:
        if class_probs.shape[-1] < 2:
            raise ValueError(
                f"class logits of shape {tuple(class_logits.shape)} must hold at least one class plus the "
                "null ('no object') class in the last position"
            )
        class_probs = class_probs[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", class_probs, mask_probs)


def _normalise(scores: Tensor) -> Tensor:
    """``S / sum_c S`` over dim 1; the same positive divisor for every class keeps the argmax."""
    tiny = torch.finfo(scores.dtype).tiny
    return scores / scores.sum(dim=1, keepdim=True).clamp_min(tiny)


@dataclass(frozen=True)
class _QueryGeometry:
    """Where a class x mask family reads its fields and which fixed steps its official code takes."""

    class_field: str
    mask_field: str
    drop_null: bool = True  # the last class column is "no object" (all but ConditionalDETR)
    mask_size: tuple[int, int] | None = None  # fixed resize of the mask logits (Mask2Former)
    backend_resize: bool = False  # final resize antialiased with the torchvision backend (OneFormer)


_QUERY_GEOMETRY = {
    "maskformer": _QueryGeometry("class_queries_logits", "masks_queries_logits"),
    "mask2former": _QueryGeometry(
        "class_queries_logits", "masks_queries_logits", mask_size=_MASK2FORMER_MASK_SIZE
    ),
    "oneformer": _QueryGeometry("class_queries_logits", "masks_queries_logits", backend_resize=True),
    "detr": _QueryGeometry("logits", "pred_masks"),
    "conditional_detr": _QueryGeometry("logits", "pred_masks", drop_null=False),
}


def _restore_queries(
    outputs: Any, target_sizes: Any, geometry: _QueryGeometry, antialias: bool | None
) -> _Restored:
    """MaskFormer, Mask2Former, OneFormer, DETR, ConditionalDETR (sections 2 and 3)."""
    class_logits, mask_logits = _query_fields(outputs, geometry.class_field, geometry.mask_field)
    sizes = _sizes(target_sizes, class_logits.shape[0])
    mask_logits = mask_logits.to(restoration_dtype(class_logits, mask_logits))
    if geometry.mask_size is not None:  # Mask2Former: fixed resize of the logits before the sigmoid
        mask_logits = bilinear(mask_logits, geometry.mask_size)
    scores = _query_scores(class_logits, mask_logits.sigmoid(), geometry.drop_null)
    antialias = _oneformer_antialias(antialias) if geometry.backend_resize else False
    groups = _resize_groups(scores, sizes, _normalise, antialias=antialias)
    return _Restored(groups, class_logits.shape[0], geometry.class_field)


def _restore_eomt(outputs: Any, target_sizes: Any, size: Any) -> _Restored:
    """EoMT: masks resized to the processor's ``size``, the mixture, then either patches merged
    per image (``patch_offsets``) or a per-image resize; finally normalised (section 2)."""
    class_logits, mask_logits = _query_fields(outputs, "class_queries_logits", "masks_queries_logits")
    if target_sizes is None:
        raise ValueError(
            "target_sizes is required for EoMT outputs, as in the official post-processing: pass the "
            "original (height, width) of each image"
        )
    shortest, longest = _eomt_size(size)
    offsets = _patch_offsets(field(outputs, "patch_offsets"), class_logits.shape[0])
    mask_logits = bilinear(
        mask_logits.to(restoration_dtype(class_logits, mask_logits)), (shortest, longest or shortest)
    )
    scores = _query_scores(class_logits, mask_logits.sigmoid(), drop_null=True)
    if not offsets:
        sizes = _sizes(target_sizes, scores.shape[0])
        return _Restored(_resize_groups(scores, sizes, _normalise), scores.shape[0], "class_queries_logits")

    images = max(image for image, _, _ in offsets) + 1
    sizes = _sizes(target_sizes, images)
    missing = sorted(set(range(images)) - {image for image, _, _ in offsets})
    if missing:
        raise ValueError(f"outputs.patch_offsets has no patch for image(s) {missing} of {images}")
    merged = _merge_patches(scores, offsets, sizes, shortest, longest)
    groups = [([i], _normalise(bilinear(canvas[None], sizes[i]))) for i, canvas in enumerate(merged)]
    return _Restored(groups, images, "class_queries_logits")


def _eomt_size(size: Any) -> tuple[int, int | None]:
    """``(shortest_edge, longest_edge or None)`` from the processor's ``size`` (a dict or SizeDict)."""
    if size is None:
        raise ValueError(
            "EoMT outputs need the image processor's size (the resolution its masks are resized to before "
            "merging): pass size=processor.size, e.g. {'shortest_edge': 640, 'longest_edge': 640}"
        )

    def entry(key: str) -> Any:
        try:
            return size[key]
        except (KeyError, TypeError, IndexError):
            return None

    shortest, longest = entry("shortest_edge"), entry("longest_edge")
    valid = isinstance(shortest, int) and shortest > 0 and (longest is None or isinstance(longest, int))
    if not valid or isinstance(shortest, bool) or (longest is not None and longest <= 0):
        raise ValueError(
            "size must be the EoMT image processor's size, with a positive int 'shortest_edge' and an int "
            f"or None 'longest_edge'; got {size!r}"
        )
    check_pixels((shortest, longest or shortest), "size")
    return shortest, longest


def _patch_offsets(offsets: Any, patches: int) -> list[tuple[int, int, int]]:
    """``patch_offsets`` as ``(image, start, end)`` triples; empty when the images were not split."""
    if offsets is None:
        return []
    if isinstance(offsets, Tensor):
        offsets = check_readable(offsets, "outputs.patch_offsets").tolist()
    if not isinstance(offsets, Sequence) or isinstance(offsets, str):
        raise TypeError(
            f"outputs.patch_offsets must be a list of [image_index, start, end]; got {type(offsets).__name__}"
        )
    triples = []
    for entry in offsets:
        if isinstance(entry, Tensor):
            check_readable(entry, "outputs.patch_offsets")
        values = entry.tolist() if hasattr(entry, "tolist") else entry
        if (
            not isinstance(values, Sequence)
            or len(values) != 3
            or not all(isinstance(v, int) for v in values)
        ):
            raise ValueError(
                f"outputs.patch_offsets entries must be [image_index, start, end]; got {entry!r}"
            )
        image, start, end = values
        if image < 0 or not 0 <= start < end:
            raise ValueError(f"outputs.patch_offsets entry {values} is not a valid [image_index, start, end]")
        triples.append((image, start, end))
    if triples and len(triples) != patches:
        raise ValueError(
            f"outputs.patch_offsets has {len(triples)} entries for {patches} patches in "
            "masks_queries_logits; pass the outputs of model(**processor(images)) unchanged"
        )
    return triples


def _eomt_canvas_size(image_size: tuple[int, int], shortest: int, longest: int | None) -> tuple[int, int]:
    """Size of an image resized to ``shortest`` on its short side, the long side capped at ``longest``:
    the merge canvas of the official code (``transformers.image_transforms.get_size_with_aspect_ratio``).
    """
    height, width = image_size
    short_side, long_side = min(height, width), max(height, width)
    target, exact = shortest, None
    if longest is not None and long_side / short_side * shortest > longest:
        exact = longest * short_side / long_side  # the capped short side, before rounding
        target = round(exact)
    if short_side == target:
        return height, width
    scale = exact if exact is not None else target
    if width < height:
        return int(scale * height / width), target
    return target, int(scale * width / height)


def _merge_patches(
    scores: Tensor,
    offsets: list[tuple[int, int, int]],
    sizes: list[tuple[int, int]],
    shortest: int,
    longest: int | None,
) -> list[Tensor]:
    """Average overlapping patch scores on each image's canvas (official ``merge_image_patches``).

    The canvases have torch's default dtype, as the official ``torch.zeros`` canvases do: float64
    scores are accumulated in float32 there unless the default dtype is float64.
    """
    classes = scores.shape[1]
    dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    canvases, counts = [], []
    for image_size in sizes:
        height, width = _eomt_canvas_size(image_size, shortest, longest)
        check_pixels((height, width), f"target_sizes with size {shortest, longest} (the merge canvas)")
        canvases.append(torch.zeros((classes, height, width), dtype=dtype, device=scores.device))
        counts.append(torch.zeros((1, height, width), dtype=dtype, device=scores.device))
    for patch, (image, start, end) in enumerate(offsets):
        tall = sizes[image][0] > sizes[image][1]  # the official code splits along the long side
        region = (
            (slice(None), slice(start, end), slice(None))
            if tall
            else (slice(None), slice(None), slice(start, end))
        )
        target = canvases[image][region]
        if target.shape != scores[patch].shape:
            raise ValueError(
                f"outputs.patch_offsets entry {[image, start, end]} selects a {tuple(target.shape[1:])} "
                f"region of image {image}'s {tuple(canvases[image].shape[1:])} canvas but the patch is "
                f"{tuple(scores.shape[2:])}: check that size is the processor's size and target_sizes the "
                "original image sizes"
            )
        target += scores[patch]
        counts[image][region] += 1
    return [canvas / count.clamp(min=1) for canvas, count in zip(canvases, counts, strict=True)]


# --------------------------------------------------------------------------------------------
# Shared geometry.


def _sizes(target_sizes: Any, batch: int) -> list[tuple[int, int]] | None:
    return None if target_sizes is None else parse_sizes(target_sizes, batch, "target_sizes")


def _resize_groups(
    maps: Tensor,
    sizes: list[tuple[int, int]] | None,
    finish: Callable[[Tensor], Tensor],
    antialias: bool = False,
) -> _GroupedMaps:
    """Official per-image bilinear resize (``align_corners=False``) of ``(B, C, h, w)`` maps, then
    ``finish``; one batched call per distinct target size (bilinear resizing is per image, so the
    result equals the official per-image loop). ``sizes=None`` keeps the resolution."""
    if sizes is None:
        return [(list(range(maps.shape[0])), finish(maps))]
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, target in enumerate(sizes):
        by_size.setdefault(target, []).append(i)
    groups = []
    for target, index in by_size.items():
        group = maps if len(index) == maps.shape[0] else maps[index]
        resized = bilinear(group, target, antialias=antialias)
        groups.append((index, finish(resized)))
    return groups
