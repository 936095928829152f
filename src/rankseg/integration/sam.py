"""Adapters for the SAM family: restore mask probabilities in image space, then apply RankSEG.

SAM outputs are low-resolution mask *logits* in model space, not semantic class logits. Each
adapter reproduces the official ``transformers`` post-processing geometry of its family exactly
(design note ``hf-postprocess.md`` section 5), in float64 for float64 outputs and float32 otherwise,
stops before the final binarisation and returns probabilities; ``postprocess`` then hands them to
:class:`rankseg.RankSEG` instead of the official ``logit > 0`` (SAM/SAM2) or ``prob > 0.5`` (SAM3)
threshold.

Adapters, the model outputs they take (by ``type(outputs).__name__``) and the official code they follow:

* ``Sam1``: ``SamImageSegmentationOutput``, ``SamHQImageSegmentationOutput``;
  ``SamImageProcessor.post_process_masks``.
* ``Sam2``: ``Sam2ImageSegmentationOutput``, ``Sam3TrackerImageSegmentationOutput``,
  ``EdgeTamImageSegmentationOutput``; ``Sam2ImageProcessor.post_process_masks`` (its twin in
  ``Sam3ImageProcessor`` for Sam3Tracker).
* ``Sam3``: ``Sam3ImageSegmentationOutput``, ``Sam3LiteTextImageSegmentationOutput``;
  ``Sam3ImageProcessor.post_process_instance_segmentation`` and ``post_process_semantic_segmentation``.

Shapes (``P``: prompts per image, the point batch; ``M``: masks per prompt, 3 with
``multimask_output=True``; ``K``: SAM3 queries kept; ``(H, W)``: the image's original/target size):

* ``Sam1`` / ``Sam2`` ``restore_mask_probs``: one ``(P, M, H, W)`` tensor per image;
  ``postprocess``: ``RankSEG(probs)`` with the tensor read as ``(batch=P, classes=M, H, W)``, so
  the default multilabel output is a bool ``(P, M, H, W)`` tensor, one binary map per mask.
* ``Sam3`` instance: ``{"scores": (K,), "boxes": (K, 4), "mask_probs": (K, H, W)}`` per image;
  ``postprocess_instance`` reads ``mask_probs`` as ``(batch=K, classes=1, H, W)`` and gives
  ``"masks"`` as bool ``(K, H, W)``.
* ``Sam3`` semantic: one ``(1, H, W)`` probability map per image; ``postprocess_semantic`` reads it
  as ``(batch=1, classes=1, H, W)`` and gives a bool ``(H, W)`` mask.

Video tracking, one frame at a time (logic in ``_sam_video.py``; ``docs/integration-sam.md``):
``Sam2.restore_mask_probs`` / ``postprocess`` / ``propagate`` take ``Sam2VideoSegmentationOutput``,
``Sam3TrackerVideoSegmentationOutput`` and ``EdgeTamVideoSegmentationOutput`` frames
(``Sam2VideoProcessor.post_process_masks``) and return ``{"frame_idx", "object_ids", ...}`` dicts;
``Sam3.restore_video_mask_probs`` / ``postprocess_video`` / ``propagate`` take
``Sam3VideoSegmentationOutput`` frames (``Sam3VideoProcessor.postprocess_outputs``).

Calibration: every adapter takes ``calibration=`` (a sigmoid
:class:`rankseg.calibration.TemperatureScaling` fitted on mask logits, the path of its JSON file, or
its ``state_dict()``; a global temperature only, since mask channels are prompts or objects, not
classes). ``T`` divides the mask logits before anything else, so the probabilities are those of the
official post-processing run on ``pred_masks / T`` (``obj_id_to_mask / T``, ``semantic_seg / T``);
SAM3's query and presence scores are left alone.

This module never imports ``transformers``: it dispatches on the output's field names and on
``type(outputs).__name__``, so any object with the right fields (a ``types.SimpleNamespace``, a
dict) works too.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._predictor import RankSEG
from . import _sam_video
from ._common import (
    bilinear,
    divide_logits,
    field,
    float_field,
    make_predictor,
    mask_calibration,
    parse_sizes,
    predict,
    resize_probabilities,
    restoration_dtype,
)
from .transformers import restore_semantic_probs

__all__ = ["Sam1", "Sam2", "Sam3"]

#: One ``(height, width)`` per image: a ``(B, 2)`` tensor/array, a list of pairs, or one pair for ``B == 1``.
Sizes = Tensor | np.ndarray | Sequence[Sequence[int]] | Sequence[int]
#: SAM1 pad size: the processor's ``pad_size`` (``height``/``width``), a dict, ``(h, w)``, an int, or None.
PadSize = Any
#: A fitted sigmoid ``TemperatureScaling``, the path of its JSON file, its ``state_dict()``, or None.
Calibration = Any

# Output classes of each family, by name (transformers 5.x); the adapter that restores them.
_FAMILY_BY_CLASS = {
    "SamImageSegmentationOutput": "sam1",
    "SamHQImageSegmentationOutput": "sam1",
    "Sam2ImageSegmentationOutput": "sam2",
    "Sam3TrackerImageSegmentationOutput": "sam2",
    "EdgeTamImageSegmentationOutput": "sam2",
    "Sam3ImageSegmentationOutput": "sam3",
    "Sam3LiteTextImageSegmentationOutput": "sam3",
}
_ADAPTER_BY_FAMILY = {"sam1": "Sam1", "sam2": "Sam2", "sam3": "Sam3"}
_FAMILY_TEXT = {
    "sam1": "a SAM / SAM-HQ prompt-mask output",
    "sam2": "a SAM2 / Sam3Tracker / EdgeTAM prompt-mask output",
    "sam3": "a SAM3 instance/semantic output",
    "prompt": "a prompt-mask output (pred_masks of shape (batch, point_batch, masks, h, w))",
}
# Which inferred families each adapter accepts ("prompt": 5-D pred_masks of unknown origin).
_ACCEPTS = {"Sam1": ("sam1", "prompt"), "Sam2": ("sam2", "prompt"), "Sam3": ("sam3",)}
_EXPECTED = {
    "Sam1": "SamImageSegmentationOutput or SamHQImageSegmentationOutput (fields pred_masks, iou_scores)",
    "Sam2": (
        "Sam2ImageSegmentationOutput, Sam3TrackerImageSegmentationOutput or EdgeTamImageSegmentationOutput "
        "(fields pred_masks, iou_scores, object_score_logits)"
    ),
    "Sam3": (
        "Sam3ImageSegmentationOutput or Sam3LiteTextImageSegmentationOutput "
        "(fields pred_masks, pred_boxes, pred_logits, presence_logits, semantic_seg)"
    ),
}
_SEMANTIC_FIELDS = ("class_queries_logits", "masks_queries_logits", "segmentation_logits", "logits")
_SAM3_FIELDS = ("pred_logits", "presence_logits", "pred_boxes", "semantic_seg")
_SAM1_PAD_SIZE = (1024, 1024)  # SamImageProcessor's default pad_size
_NON_OVERLAP_LOGIT = -10.0  # Sam2ImageProcessor._apply_non_overlapping_constraints: sigmoid(-10) ~ 4.5e-5


# --------------------------------------------------------------------------------------------------
# Dispatch and field checks


def _field_names(outputs: Any) -> list[str]:
    if isinstance(outputs, Mapping):
        names = list(outputs.keys())
    else:
        names = [name for name in getattr(outputs, "__dict__", {}) if not name.startswith("_")]
    return [str(name) for name in names if field(outputs, str(name)) is not None]


def _family(outputs: Any) -> str | None:
    """``"sam1"``, ``"sam2"``, ``"sam3"``, ``"prompt"`` (5-D ``pred_masks``, origin unknown),
    ``"semantic"``, or ``None``; raises for tensors, tuples and video-tracker objects."""
    name = type(outputs).__name__
    if isinstance(outputs, Tensor):
        raise TypeError(
            "outputs must be the model's output object (e.g. outputs = model(**inputs)), not a tensor; "
            f"got a Tensor of shape {tuple(outputs.shape)}. Pass `outputs`, not `outputs.pred_masks`."
        )
    if isinstance(outputs, (tuple, list)):
        raise TypeError(
            f"outputs must be the model's output object with named fields; got a {name}. "
            "Call the model with return_dict=True (the default)."
        )
    video_hint = _sam_video.video_adapter_hint(outputs)
    if video_hint is not None:
        raise ValueError(video_hint)
    if name in _FAMILY_BY_CLASS:
        return _FAMILY_BY_CLASS[name]
    if any(field(outputs, f) is not None for f in _SAM3_FIELDS):
        return "sam3"
    pred_masks = field(outputs, "pred_masks")
    if isinstance(pred_masks, Tensor) and pred_masks.dim() == 5:
        return "sam2" if field(outputs, "object_score_logits") is not None else "prompt"
    if any(field(outputs, f) is not None for f in _SEMANTIC_FIELDS):
        return "semantic"
    return None


def _check_family(outputs: Any, adapter: str) -> None:
    family = _family(outputs)
    if family in _ACCEPTS[adapter]:
        return
    name = type(outputs).__name__
    if family == "semantic":
        present = [f for f in _SEMANTIC_FIELDS if field(outputs, f) is not None]
        shapes = ", ".join(f"{f} {tuple(getattr(field(outputs, f), 'shape', ()))}" for f in present)
        raise ValueError(
            f"{adapter} restores SAM masks, but outputs ({name}; {shapes}) look like a semantic/universal "
            "segmentation output; use rankseg.integration.transformers for it."
        )
    if family == "prompt":
        raise ValueError(
            f"{adapter} got {name}, {_FAMILY_TEXT[family]}; use rankseg.integration.sam.Sam1 "
            "(SAM, SAM-HQ) or rankseg.integration.sam.Sam2 (SAM2, Sam3Tracker, EdgeTAM)."
        )
    if family is not None:
        raise ValueError(
            f"{adapter} got {name}, {_FAMILY_TEXT[family]}; use rankseg.integration.sam."
            f"{_ADAPTER_BY_FAMILY[family]} for it."
        )
    raise ValueError(
        f"{adapter} needs a {_EXPECTED[adapter]}; got {name} with fields {_field_names(outputs)}."
    )


_PROMPT_MASKS = ("batch", "point_batch", "masks_per_prompt", "height", "width")
_NO_MASK = "outputs.pred_masks has no mask per prompt"


def _prompt_mask_logits(outputs: Any, adapter: str, calibration: Calibration) -> Tensor:
    """``pred_masks`` in the restoration dtype, divided by the calibration's temperature."""
    _check_family(outputs, adapter)
    logits = float_field(outputs, "pred_masks", _PROMPT_MASKS)
    scaler = mask_calibration(calibration, adapter)
    return divide_logits(logits.to(restoration_dtype(logits)), scaler, "outputs.pred_masks")


def _calibration_repr(calibration: Calibration) -> str:
    return "" if calibration is None else f", calibration={calibration!r}"


def _pad_size(pad_size: PadSize) -> tuple[int, int]:
    """``None`` (SamImageProcessor's 1024x1024), an int, a ``{"height", "width"}`` dict, an object
    with ``height`` and ``width`` (``processor.image_processor.pad_size``) or a ``(height, width)`` pair."""
    if pad_size is None:
        return _SAM1_PAD_SIZE
    if isinstance(pad_size, Mapping):
        if not {"height", "width"} <= set(pad_size):
            raise ValueError(f"pad_size as a dict needs 'height' and 'width' keys; got {dict(pad_size)!r}")
        pad_size = (pad_size["height"], pad_size["width"])
    elif hasattr(pad_size, "height") and hasattr(pad_size, "width"):  # transformers' SizeDict
        pad_size = (pad_size.height, pad_size.width)
    elif isinstance(pad_size, numbers.Integral) and not isinstance(pad_size, bool):
        pad_size = (pad_size, pad_size)
    return parse_sizes([pad_size], 1, "pad_size")[0]


def _check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False; got {value!r} ({type(value).__name__})")
    return value


def _check_threshold(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"threshold must be a real number (scores above it are kept); got {value!r}")
    if math.isnan(value):
        raise ValueError("threshold must be a real number (scores above it are kept); got nan")
    return float(value)


def _suppress_overlaps(logits: Tensor) -> Tensor:
    """SAM2's non-overlapping constraint on ``(P, M, H, W)`` logits: where prompt ``p`` is not the
    arg-max over prompts, its logit becomes ``min(logit, -10)``. A single prompt (or none) is unchanged."""
    if logits.shape[0] <= 1:
        return logits
    winner = logits.argmax(dim=0, keepdim=True)
    prompt = torch.arange(logits.shape[0], device=logits.device).view(-1, 1, 1, 1)
    return torch.where(winner == prompt, logits, logits.clamp(max=_NON_OVERLAP_LOGIT))


def _masks_per_image(predictor: RankSEG, probs: list[Tensor]) -> list[Tensor]:
    return [predict(predictor, p, _NO_MASK) for p in probs]


# --------------------------------------------------------------------------------------------------
# Adapters


class Sam1:
    r"""SAM and SAM-HQ prompt masks (``SamModel`` / ``SamHQModel`` outputs).

    Restoration, per image ``i`` (``SamImageProcessor.post_process_masks`` without ``> 0``)::

        logits = bilinear(pred_masks[i], pad_size)                 # (P, M, pad_h, pad_w)
        logits = logits[..., :reshaped_h, :reshaped_w]             # remove the bottom/right padding
        probs  = sigmoid(bilinear(logits, original_size))          # (P, M, H, W)

    Args:
        rankseg_kwargs: keyword arguments of :class:`rankseg.RankSEG`; ``output_mode`` defaults
            to ``"multilabel"`` (one binary map per mask).
        pad_size: the size the processor padded to: ``processor.image_processor.pad_size`` (an
            object with ``height`` and ``width``), a ``{"height", "width"}`` dict, a
            ``(height, width)`` pair or an int. ``None``:
            1024x1024, the ``SamImageProcessor`` default.
        calibration: a global sigmoid temperature fitted on the mask logits (see the module
            docstring); ``pred_masks`` is divided by it before the first resize. ``None``: none.

    Example:
        >>> import types, torch
        >>> from rankseg.integration.sam import Sam1
        >>> outputs = types.SimpleNamespace(pred_masks=torch.randn(1, 2, 3, 8, 8) * 5,
        ...                                 iou_scores=torch.rand(1, 2, 3))   # (B, P, M, h, w)
        >>> adapter = Sam1(pad_size=32)
        >>> sizes = dict(original_sizes=(20, 30), reshaped_input_sizes=(21, 32))  # one image
        >>> probs = adapter.restore_mask_probs(outputs, **sizes)
        >>> probs[0].shape, probs[0].dtype
        (torch.Size([2, 3, 20, 30]), torch.float32)
        >>> adapter.postprocess(outputs, **sizes)[0].shape
        torch.Size([2, 3, 20, 30])
    """

    def __init__(
        self,
        rankseg_kwargs: Mapping[str, Any] | None = None,
        pad_size: PadSize = None,
        *,
        calibration: Calibration = None,
    ) -> None:
        self.rankseg_kwargs = rankseg_kwargs
        self.pad_size = pad_size
        self.calibration = calibration

    def restore_mask_probs(
        self, outputs: Any, original_sizes: Sizes, reshaped_input_sizes: Sizes
    ) -> list[Tensor]:
        """Mask probabilities in each image's original geometry.

        Args:
            outputs: ``SamImageSegmentationOutput`` / ``SamHQImageSegmentationOutput`` or any object
                with ``pred_masks`` of shape ``(B, P, M, h, w)`` (logits).
            original_sizes: one ``(height, width)`` per image: the processor's ``(B, 2)`` tensor,
                a list of pairs, or one pair when ``B == 1``.
            reshaped_input_sizes: the processor's resized (unpadded) input sizes, same forms.

        Returns:
            ``B`` tensors of shape ``(P, M, H_i, W_i)`` on the device of ``pred_masks``, float64
            for float64 outputs and float32 otherwise; ``P`` or ``M`` may be 0.

        Raises:
            TypeError, ValueError: naming the output field (another family, wrong shape, NaN/inf,
                sparse or meta tensors) or the size argument (form, length, bools, more than
                2**31 - 1 pixels); a ``calibration`` that is per class, for softmax, or unfitted.
        """
        logits = _prompt_mask_logits(outputs, "Sam1", self.calibration)
        batch = logits.shape[0]
        originals = parse_sizes(original_sizes, batch, "original_sizes")
        reshaped = parse_sizes(reshaped_input_sizes, batch, "reshaped_input_sizes")
        pad = _pad_size(self.pad_size)
        for height, width in reshaped:
            if height > pad[0] or width > pad[1]:
                raise ValueError(
                    f"reshaped_input_sizes must fit inside pad_size {pad}; got ({height}, {width}). "
                    "Pass pad_size=processor.image_processor.pad_size."
                )
        probs = []
        for i, (height, width) in enumerate(reshaped):
            padded = bilinear(logits[i], pad)
            probs.append(torch.sigmoid(bilinear(padded[..., :height, :width], originals[i])))
        return probs

    def postprocess(self, outputs: Any, original_sizes: Sizes, reshaped_input_sizes: Sizes) -> list[Tensor]:
        """RankSEG masks: ``RankSEG(**rankseg_kwargs)(probs)`` for each restored ``(P, M, H, W)``
        tensor read as ``(batch=P, classes=M, H, W)``.

        Returns:
            Per image: bool ``(P, M, H, W)`` (multilabel, the default), or int64 ``(P, H, W)``
            indices into the ``M`` masks of each prompt (multiclass, which needs ``M >= 2``). With
            ``M == 0`` the multilabel result is empty and multiclass is refused.
        """
        predictor = make_predictor(self.rankseg_kwargs, "multilabel")
        return _masks_per_image(
            predictor, self.restore_mask_probs(outputs, original_sizes, reshaped_input_sizes)
        )

    def __repr__(self) -> str:
        return (
            f"Sam1(rankseg_kwargs={self.rankseg_kwargs!r}, pad_size={self.pad_size!r}"
            f"{_calibration_repr(self.calibration)})"
        )


class Sam2:
    r"""SAM2, Sam3Tracker and EdgeTAM prompt masks (``Sam2Model`` / ``Sam3TrackerModel`` /
    ``EdgeTamModel`` outputs).

    These models squash the image to a square without padding, so restoration, per image ``i``
    (``Sam2ImageProcessor.post_process_masks`` without ``> 0``), is::

        logits = bilinear(pred_masks[i], original_size)            # (P, M, H, W)
        logits = non_overlap(logits)                               # only if apply_non_overlapping_constraints
        probs  = sigmoid(logits)

    where ``non_overlap`` keeps, at each pixel, the logits of the prompt with the largest logit and
    clamps the others to at most -10 (the official step, on logits, before the threshold).

    Args:
        rankseg_kwargs: keyword arguments of :class:`rankseg.RankSEG`; ``output_mode`` defaults
            to ``"multilabel"``.
        apply_non_overlapping_constraints: the official option of the same name.
        calibration: a global sigmoid temperature fitted on the mask logits (see the module
            docstring); ``pred_masks`` is divided by it before the resize (and before the
            non-overlap step, which then works on ``pred_masks / T`` as the official code would).
            Video frames too. ``None``: none.

    Example:
        >>> import types, torch
        >>> from rankseg.integration.sam import Sam2
        >>> outputs = types.SimpleNamespace(pred_masks=torch.randn(2, 3, 1, 8, 8) * 5,
        ...                                 iou_scores=torch.rand(2, 3, 1),
        ...                                 object_score_logits=torch.randn(2, 3, 1))
        >>> sizes = [(20, 30), (12, 9)]  # (height, width) per image
        >>> probs = Sam2().restore_mask_probs(outputs, original_sizes=sizes)
        >>> [tuple(p.shape) for p in probs]
        [(3, 1, 20, 30), (3, 1, 12, 9)]
        >>> masks = Sam2(apply_non_overlapping_constraints=True).postprocess(outputs, original_sizes=sizes)
        >>> masks[1].dtype
        torch.bool
    """

    def __init__(
        self,
        rankseg_kwargs: Mapping[str, Any] | None = None,
        apply_non_overlapping_constraints: bool = False,
        *,
        calibration: Calibration = None,
    ) -> None:
        self.rankseg_kwargs = rankseg_kwargs
        self.apply_non_overlapping_constraints = apply_non_overlapping_constraints
        self.calibration = calibration

    def restore_mask_probs(
        self, outputs: Any, original_sizes: Sizes | None = None, *, inference_session: Any = None
    ) -> list[Tensor] | dict[str, Any]:
        """Mask probabilities in each image's original geometry.

        Args:
            outputs: ``Sam2ImageSegmentationOutput`` / ``Sam3TrackerImageSegmentationOutput`` /
                ``EdgeTamImageSegmentationOutput`` or any object with ``pred_masks`` of shape
                ``(B, P, M, h, w)`` (logits). Or one video frame: ``Sam2VideoSegmentationOutput`` /
                ``Sam3TrackerVideoSegmentationOutput`` / ``EdgeTamVideoSegmentationOutput`` (fields
                ``pred_masks`` ``(N, M, h, w)``, ``object_ids``, ``frame_idx``).
            original_sizes: one ``(height, width)`` per image: a ``(B, 2)`` tensor, a list of pairs,
                or one pair when ``B == 1``. For a video frame: the frame's size, optional when
                ``inference_session`` knows it.
            inference_session: video only: the session the frame came from; its ``video_height``
                and ``video_width`` give the frame size.

        Returns:
            Images: ``B`` tensors of shape ``(P, M, H_i, W_i)`` on the device of ``pred_masks``,
            float64 for float64 outputs and float32 otherwise; ``P`` or ``M`` may be 0. A video
            frame: ``{"frame_idx": int, "object_ids": list[int], "mask_probs": (N, M, H, W)}``
            (``Sam2VideoProcessor.post_process_masks`` on ``[pred_masks]`` without ``> 0``).

        Raises:
            TypeError, ValueError: as :meth:`Sam1.restore_mask_probs`.

        Example:
            >>> import types, torch
            >>> from rankseg.integration.sam import Sam2
            >>> frame = types.SimpleNamespace(object_ids=[3, 7], frame_idx=0,   # Sam2VideoSegmentationOutput
            ...                               pred_masks=torch.randn(2, 1, 8, 8) * 5)
            >>> probs = Sam2().restore_mask_probs(frame, original_sizes=(20, 30))
            >>> probs["frame_idx"], probs["object_ids"], tuple(probs["mask_probs"].shape)
            (0, [3, 7], (2, 1, 20, 30))
        """
        if inference_session is not None or _sam_video.video_kind(outputs) is not None:
            return _sam_video.restore_tracker_frame(
                self.restore_mask_probs, outputs, original_sizes, inference_session
            )
        non_overlap = _check_flag(self.apply_non_overlapping_constraints, "apply_non_overlapping_constraints")
        logits = _prompt_mask_logits(outputs, "Sam2", self.calibration)
        originals = parse_sizes(original_sizes, logits.shape[0], "original_sizes")
        probs = []
        for i, size in enumerate(originals):
            resized = bilinear(logits[i], size)
            if non_overlap:
                resized = _suppress_overlaps(resized)
            probs.append(torch.sigmoid(resized))
        return probs

    def postprocess(
        self, outputs: Any, original_sizes: Sizes | None = None, *, inference_session: Any = None
    ) -> list[Tensor] | dict[str, Any]:
        """RankSEG masks: ``RankSEG(**rankseg_kwargs)(probs)`` for each restored ``(P, M, H, W)``
        tensor read as ``(batch=P, classes=M, H, W)``; arguments as :meth:`restore_mask_probs`.

        Returns:
            Per image: bool ``(P, M, H, W)`` (multilabel, the default), or int64 ``(P, H, W)``
            (multiclass, which needs ``M >= 2``). With ``M == 0`` the multilabel result is empty
            and multiclass is refused. A video frame: ``{"frame_idx", "object_ids", "masks"}`` with
            ``masks`` bool ``(N, M, H, W)``, RankSEG on the ``(N, M, H, W)`` probabilities read as
            ``(batch=N, classes=M, H, W)``.
        """
        predictor = make_predictor(self.rankseg_kwargs, "multilabel")
        if inference_session is not None or _sam_video.video_kind(outputs) is not None:
            frame = self.restore_mask_probs(outputs, original_sizes, inference_session=inference_session)
            return _sam_video.postprocess_tracker_frame(predictor, frame)
        return _masks_per_image(predictor, self.restore_mask_probs(outputs, original_sizes))

    def propagate(self, model: Any, inference_session: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """RankSEG masks of every frame ``model.propagate_in_video_iterator(inference_session,
        **kwargs)`` yields (``Sam2VideoModel``, ``Sam3TrackerVideoModel``, ``EdgeTamVideoModel``):
        one :meth:`postprocess` dict ``{"frame_idx", "object_ids", "masks"}`` per frame, the size
        read from ``inference_session``. ``kwargs`` (``start_frame_idx``, ``max_frame_num_to_track``,
        ``reverse``) go to the iterator unchanged.
        """
        return _sam_video.propagate(
            model,
            inference_session,
            lambda outputs: self.postprocess(outputs, inference_session=inference_session),
            kwargs,
        )

    def __repr__(self) -> str:
        return (
            f"Sam2(rankseg_kwargs={self.rankseg_kwargs!r}, "
            f"apply_non_overlapping_constraints={self.apply_non_overlapping_constraints!r}"
            f"{_calibration_repr(self.calibration)})"
        )


class Sam3:
    r"""SAM3 instance and semantic masks (``Sam3Model`` outputs).

    Instances (``Sam3ImageProcessor.post_process_instance_segmentation`` without ``> 0.5``)::

        scores = sigmoid(pred_logits) * sigmoid(presence_logits)   # (B, Q); the second factor only if present
        keep   = scores[i] > threshold
        boxes  = pred_boxes[i][keep] * [W, H, W, H]                # xyxy; left in [0, 1] without target sizes
        mask_probs = bilinear(sigmoid(pred_masks[i][keep]), (H, W))   # sigmoid FIRST, then resize

    Semantic (``post_process_semantic_segmentation`` without ``> 0.5``)::

        probs = bilinear(sigmoid(semantic_seg[i]), (H, W))         # (1, H, W)

    With ``target_sizes=None`` nothing is resized (model resolution), as in the official code.

    Args:
        rankseg_kwargs: keyword arguments of :class:`rankseg.RankSEG`; ``output_mode`` defaults
            to ``"multilabel"``.
        threshold: queries with a score above it are kept (official default 0.3).
        calibration: a global sigmoid temperature fitted on the mask logits (see the module
            docstring): ``pred_masks``, ``semantic_seg`` and the video ``obj_id_to_mask`` logits
            are divided by it before the sigmoid; the query scores (``pred_logits``,
            ``presence_logits``) are not. ``None``: none.

    Example:
        >>> import types, torch
        >>> from rankseg.integration.sam import Sam3
        >>> outputs = types.SimpleNamespace(
        ...     pred_masks=torch.randn(1, 4, 8, 8) * 5, pred_boxes=torch.rand(1, 4, 4),
        ...     pred_logits=torch.tensor([[3.0, -3.0, 2.0, -1.0]]), presence_logits=torch.tensor([[4.0]]),
        ...     semantic_seg=torch.randn(1, 1, 8, 8) * 5)
        >>> result = Sam3().postprocess_instance(outputs, target_sizes=[(20, 30)])[0]
        >>> result["scores"].shape, result["boxes"].shape, result["masks"].shape
        (torch.Size([2]), torch.Size([2, 4]), torch.Size([2, 20, 30]))
        >>> Sam3().postprocess_semantic(outputs, target_sizes=[(20, 30)])[0].shape
        torch.Size([20, 30])
    """

    def __init__(
        self,
        rankseg_kwargs: Mapping[str, Any] | None = None,
        threshold: float = 0.3,
        *,
        calibration: Calibration = None,
    ) -> None:
        self.rankseg_kwargs = rankseg_kwargs
        self.threshold = threshold
        self.calibration = calibration

    def restore_instance_mask_probs(
        self, outputs: Any, target_sizes: Sizes | None = None
    ) -> list[dict[str, Tensor]]:
        """Scores, boxes and mask probabilities of the queries scoring above ``threshold``.

        Args:
            outputs: ``Sam3ImageSegmentationOutput`` or any object with ``pred_masks`` ``(B, Q, h, w)``,
                ``pred_boxes`` ``(B, Q, 4)`` (normalised xyxy), ``pred_logits`` ``(B, Q)`` and
                optionally ``presence_logits`` ``(B, 1)``.
            target_sizes: one ``(height, width)`` per image (tensor, list of pairs, or one pair when
                ``B == 1``), or ``None`` to keep model resolution and normalised boxes.

        Returns:
            Per image ``{"scores": (K,), "boxes": (K, 4), "mask_probs": (K, H, W)}``, each float64
            where its field is float64 and float32 otherwise; an empty list for an empty batch.
            ``K`` may be 0, giving shapes ``(0,)``, ``(0, 4)`` and ``(0, H, W)``: ``(H, W)`` is the
            target size, the size of a non-empty result (the official code keeps ``(0, h, w)`` at
            model resolution when nothing passes the threshold).

        Raises:
            TypeError, ValueError: naming the output field (another family, wrong shape, NaN/inf,
                sparse or meta tensors), ``target_sizes`` (form, length, bools, more than
                2**31 - 1 pixels) or ``threshold``.
        """
        threshold = _check_threshold(self.threshold)
        _check_family(outputs, "Sam3")
        mask_logits = float_field(outputs, "pred_masks", ("batch", "queries", "height", "width"))
        boxes = float_field(outputs, "pred_boxes", ("batch", "queries", "4"))
        query_logits = float_field(outputs, "pred_logits", ("batch", "queries"))
        presence = float_field(outputs, "presence_logits", ("batch", "1"), required=False)
        batch, queries = mask_logits.shape[:2]
        if tuple(boxes.shape) != (batch, queries, 4) or tuple(query_logits.shape) != (batch, queries):
            raise ValueError(
                "outputs.pred_boxes and outputs.pred_logits must match outputs.pred_masks "
                f"{tuple(mask_logits.shape)}: expected ({batch}, {queries}, 4) and ({batch}, {queries}); "
                f"got {tuple(boxes.shape)} and {tuple(query_logits.shape)}"
            )
        if presence is not None and tuple(presence.shape) != (batch, 1):
            raise ValueError(
                f"outputs.presence_logits must have shape ({batch}, 1); got {tuple(presence.shape)}"
            )
        sizes = None if target_sizes is None else parse_sizes(target_sizes, batch, "target_sizes")
        scaler = mask_calibration(self.calibration, "Sam3")

        scores = torch.sigmoid(query_logits.to(restoration_dtype(query_logits)))
        if presence is not None:
            scores = scores * torch.sigmoid(presence.to(restoration_dtype(presence)))
        boxes = boxes.to(restoration_dtype(boxes))
        if sizes is not None:
            scale = torch.tensor([[w, h, w, h] for h, w in sizes], dtype=boxes.dtype, device=boxes.device)
            boxes = boxes * scale.view(batch, 1, 4)
        mask_logits = divide_logits(
            mask_logits.to(restoration_dtype(mask_logits)), scaler, "outputs.pred_masks"
        )
        results = []
        for i in range(batch):
            keep = scores[i] > threshold
            probs = torch.sigmoid(mask_logits[i][keep])  # (K, h, w)
            if sizes is not None:
                if probs.shape[0] > 0:
                    probs = resize_probabilities(probs[None], sizes[i])[0]
                else:
                    probs = probs.new_zeros((0, *sizes[i]))
            results.append({"scores": scores[i][keep], "boxes": boxes[i][keep], "mask_probs": probs})
        return results

    def postprocess_instance(
        self, outputs: Any, target_sizes: Sizes | None = None
    ) -> list[dict[str, Tensor]]:
        """RankSEG instance masks: ``RankSEG(**rankseg_kwargs)(mask_probs[:, None])[:, 0]``, each
        instance read as its own binary map ``(batch=K, classes=1, H, W)``.

        Returns:
            Per image ``{"scores": (K,), "boxes": (K, 4), "masks": bool (K, H, W)}``; an empty list
            for an empty batch, ``(0, H, W)`` masks at the target size when no query is kept.
        """
        predictor = make_predictor(self.rankseg_kwargs, "multilabel")
        results = []
        for result in self.restore_instance_mask_probs(outputs, target_sizes):
            masks = predictor(result["mask_probs"][:, None])[:, 0]
            results.append({"scores": result["scores"], "boxes": result["boxes"], "masks": masks})
        return results

    def restore_semantic_mask_probs(self, outputs: Any, target_sizes: Sizes | None = None) -> list[Tensor]:
        """Semantic foreground probabilities.

        Args:
            outputs: ``Sam3ImageSegmentationOutput`` or any object with ``semantic_seg`` ``(B, 1, h, w)``.
            target_sizes: one ``(height, width)`` per image, or ``None`` for model resolution.

        Returns:
            ``B`` tensors of shape ``(1, H_i, W_i)``, float64 for float64 outputs, float32 otherwise.
        """
        _check_family(outputs, "Sam3")
        semantic = float_field(outputs, "semantic_seg", ("batch", "1", "height", "width"))
        if semantic.shape[1] != 1:
            raise ValueError(
                f"outputs.semantic_seg must have shape (batch, 1, height, width); got {tuple(semantic.shape)}"
            )
        scaler = mask_calibration(self.calibration, "Sam3")
        # the same map as any other semantic_seg output: one implementation, in transformers.py
        return restore_semantic_probs(
            {"semantic_seg": semantic}, target_sizes=target_sizes, calibration=scaler
        )

    def postprocess_semantic(self, outputs: Any, target_sizes: Sizes | None = None) -> list[Tensor]:
        """RankSEG semantic masks: ``RankSEG(**rankseg_kwargs)(probs[None])[0, 0]`` per image.

        Returns:
            ``B`` bool tensors of shape ``(H_i, W_i)`` (the layout of the official ``segmentation``).
        """
        predictor = make_predictor(self.rankseg_kwargs, "multilabel")
        return [predictor(p[None])[0, 0] for p in self.restore_semantic_mask_probs(outputs, target_sizes)]

    def restore_video_mask_probs(
        self, inference_session: Any, outputs: Any, original_sizes: Sizes | None = None
    ) -> dict[str, Any]:
        """Mask probabilities of one ``Sam3VideoModel`` frame, the objects
        ``Sam3VideoProcessor.postprocess_outputs`` may show (suppressed and hot-start-removed ids
        hidden), in ascending id order: ``sigmoid(bilinear(obj_id_to_mask[id], (H, W)))``.

        Args:
            inference_session: the ``Sam3VideoInferenceSession`` the frame came from.
            outputs: its ``Sam3VideoSegmentationOutput`` for one frame.
            original_sizes: the frame's ``(height, width)``, needed only when the session has none
                (streaming), as in the official code.

        Returns:
            ``{"frame_idx": int, "object_ids": int64 (N,), "scores": (N,), "tracker_scores": (N,),
            "mask_probs": (N, H, W)}``, float32; ``threshold`` does not apply to video.
        """
        scaler = mask_calibration(self.calibration, "Sam3")
        return _sam_video.restore_concept_frame(inference_session, outputs, original_sizes, scaler)

    def postprocess_video(
        self, inference_session: Any, outputs: Any, original_sizes: Sizes | None = None
    ) -> dict[str, Any]:
        """``Sam3VideoProcessor.postprocess_outputs`` with RankSEG in place of ``> 0``.

        ``masks = RankSEG(**rankseg_kwargs)(mask_probs[:, None])[:, 0]`` on
        :meth:`restore_video_mask_probs`; objects with an empty mask are dropped, ``boxes`` are
        those of the RankSEG masks (xyxy pixels, inclusive), then, with more than one object, the
        official per-prompt non-overlap step by tracker score.

        Returns:
            ``{"frame_idx": int, "object_ids": int64 (K,), "scores": (K,), "boxes": (K, 4),
            "masks": bool (K, H, W), "prompt_to_obj_ids": dict[str, list[int]]}``.

        Example:
            >>> import types, torch
            >>> from rankseg.integration.sam import Sam3
            >>> session = types.SimpleNamespace(   # a Sam3VideoInferenceSession
            ...     video_height=20, video_width=30, prompts={0: "cat"},
            ...     obj_id_to_prompt_id={4: 0, 9: 0}, hotstart_removed_obj_ids=set())
            >>> outputs = types.SimpleNamespace(   # a Sam3VideoSegmentationOutput
            ...     frame_idx=2, obj_id_to_mask={4: torch.randn(1, 8, 8) * 5, 9: torch.randn(1, 8, 8) * 5},
            ...     obj_id_to_score={4: 0.9, 9: 0.8}, obj_id_to_tracker_score={4: 0.9, 9: 0.7},
            ...     suppressed_obj_ids={9})
            >>> frame = Sam3().postprocess_video(session, outputs)
            >>> frame["object_ids"].tolist(), tuple(frame["masks"].shape), frame["prompt_to_obj_ids"]
            ([4], (1, 20, 30), {'cat': [4]})
        """
        predictor = make_predictor(self.rankseg_kwargs, "multilabel")
        frame = self.restore_video_mask_probs(inference_session, outputs, original_sizes)
        return _sam_video.postprocess_concept_frame(predictor, inference_session, frame)

    def propagate(self, model: Any, inference_session: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """:meth:`postprocess_video` of every frame ``Sam3VideoModel.propagate_in_video_iterator(
        inference_session, **kwargs)`` yields (after its hot-start delay), one dict per frame."""
        return _sam_video.propagate(
            model,
            inference_session,
            lambda outputs: self.postprocess_video(inference_session, outputs),
            kwargs,
        )

    def __repr__(self) -> str:
        return (
            f"Sam3(rankseg_kwargs={self.rankseg_kwargs!r}, threshold={self.threshold!r}"
            f"{_calibration_repr(self.calibration)})"
        )
