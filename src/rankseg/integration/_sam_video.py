"""SAM video tracking: RankSEG masks for every tracked frame.

The public entry points are methods of the adapters in :mod:`rankseg.integration.sam`; this module
holds their video logic. Two kinds of per-frame outputs exist in transformers 5.x:

* **Tracker outputs** (``Sam2VideoModel``, ``Sam3TrackerVideoModel``, ``EdgeTamVideoModel``):
  ``Sam2VideoSegmentationOutput`` and its twins, with ``pred_masks`` ``(N, 1, h, w)`` logits for
  the ``N`` tracked objects ``object_ids`` on frame ``frame_idx``. The transformers docs
  post-process them with ``Sam2VideoProcessor.post_process_masks([pred_masks], [(H, W)])``: one
  "image" whose prompts are the objects, so restoration is exactly the SAM2 image restoration
  (bilinear resize to the frame size, optional non-overlap step, sigmoid) on a batch of one.
* **Concept outputs** (``Sam3VideoModel``): ``Sam3VideoSegmentationOutput`` with
  ``obj_id_to_mask`` (one ``(1, h, w)`` logit map per object), ``obj_id_to_score``,
  ``obj_id_to_tracker_score`` and ``suppressed_obj_ids``, post-processed by
  ``Sam3VideoProcessor.postprocess_outputs(inference_session, outputs)``; :func:`restore_concept_frame`
  and :func:`postprocess_concept_frame` mirror it step by step.

Nothing here imports ``transformers``: outputs and sessions are read by field name.
"""

from __future__ import annotations

import numbers
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..calibration import TemperatureScaling
from ._common import (
    bilinear,
    check_magnitude,
    check_readable,
    divide_logits,
    field,
    parse_sizes,
    restoration_dtype,
)

TRACKER_OUTPUTS = (
    "Sam2VideoSegmentationOutput",
    "Sam3TrackerVideoSegmentationOutput",
    "EdgeTamVideoSegmentationOutput",
)
CONCEPT_OUTPUTS = ("Sam3VideoSegmentationOutput",)
_TRACKER_USE = "rankseg.integration.sam.Sam2(...).postprocess(outputs, inference_session=inference_session)"
_CONCEPT_USE = "rankseg.integration.sam.Sam3(...).postprocess_video(inference_session, outputs)"
_TRACKER_MODELS = "Sam2VideoModel, Sam3TrackerVideoModel or EdgeTamVideoModel"

# A tracker frame: (logits (N, M, h, w), object ids, frame index).
TrackerFrame = tuple[Tensor, list[int], int]


# --------------------------------------------------------------------------------------------------
# Recognising video objects


def video_kind(outputs: Any) -> str | None:
    """``"tracker"`` (per-object ``pred_masks`` of one frame), ``"concept"`` (SAM3 video's
    ``obj_id_to_mask``), ``"session"`` (an inference session passed where outputs belong), or
    ``None`` for anything that is not a video object."""
    name = type(outputs).__name__
    if "InferenceSession" in name:
        return "session"
    if name in CONCEPT_OUTPUTS or field(outputs, "obj_id_to_mask") is not None:
        return "concept"
    if (
        name in TRACKER_OUTPUTS
        or (name.startswith(("Sam", "EdgeTam")) and "Video" in name)
        or field(outputs, "object_ids") is not None
        or field(outputs, "frame_idx") is not None
    ):
        return "tracker"
    return None


def video_adapter_hint(outputs: Any) -> str | None:
    """The message for a video object given to a helper that does not take it (``None`` if
    ``outputs`` is not a video object): which adapter method restores it."""
    kind = video_kind(outputs)
    name = type(outputs).__name__
    if kind == "tracker":
        return (
            f"outputs ({name}) are one frame of SAM video tracking ({_TRACKER_MODELS}): one mask per "
            f"tracked object, not class scores or image prompt masks; use {_TRACKER_USE}"
        )
    if kind == "concept":
        return (
            f"outputs ({name}) are one frame of SAM3 video concept tracking (Sam3VideoModel, "
            f"obj_id_to_mask); use {_CONCEPT_USE}"
        )
    if kind == "session":
        return (
            f"got a video inference session ({name}) where the model's output for one frame belongs; "
            "pass outputs = model(inference_session=inference_session, frame_idx=i) (or each output of "
            f"model.propagate_in_video_iterator), e.g. to {_TRACKER_USE} or {_CONCEPT_USE}"
        )
    return None


# --------------------------------------------------------------------------------------------------
# Frame sizes


def _session_size(inference_session: Any) -> tuple[int, int] | None:
    if not (hasattr(inference_session, "video_height") and hasattr(inference_session, "video_width")):
        raise TypeError(
            "inference_session must be the video inference session the outputs came from (with "
            f"video_height and video_width); got {type(inference_session).__name__}"
        )
    height, width = inference_session.video_height, inference_session.video_width
    if height is None or width is None:
        return None
    pairs = [[_as_int(height), _as_int(width)]]
    return parse_sizes(pairs, 1, "inference_session.video_height/video_width")[0]


def _as_int(value: Any) -> Any:
    """Sessions store the size as ints or as 0-d tensors (from the video processor)."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value.item())
    return value


def frame_size(original_sizes: Any, inference_session: Any) -> tuple[int, int]:
    """The frame's ``(height, width)``: from the session (``video_height``, ``video_width``), else
    from ``original_sizes`` (one pair, or a list/tensor holding one pair). Both given: they must agree."""
    from_session = None if inference_session is None else _session_size(inference_session)
    given = None
    if original_sizes is not None:
        given = parse_sizes(original_sizes, 1, "original_sizes")[0]
    if from_session is not None and given is not None and from_session != given:
        raise ValueError(
            f"original_sizes {given} disagrees with the inference session's frame size {from_session} "
            "(video_height, video_width); pass one of them"
        )
    size = from_session or given
    if size is None:
        if inference_session is not None:
            raise ValueError(
                "the inference session has no frame size yet (video_height/video_width are None, as in a "
                "streamed session before a frame with original_size); pass original_sizes=(height, width)"
            )
        raise ValueError(
            "a video frame needs its size: pass inference_session=inference_session (its video_height and "
            "video_width are read) or original_sizes=(height, width)"
        )
    return size


# --------------------------------------------------------------------------------------------------
# Tracker outputs (SAM2 / Sam3Tracker / EdgeTAM video)


def _frame_index(outputs: Any) -> int:
    frame_idx = field(outputs, "frame_idx")
    if isinstance(frame_idx, Tensor) and frame_idx.numel() == 1:
        frame_idx = frame_idx.item()
    if isinstance(frame_idx, bool) or not isinstance(frame_idx, numbers.Integral):
        raise ValueError(
            f"outputs.frame_idx must be the frame's index (an int); got {frame_idx!r} "
            f"({type(outputs).__name__})"
        )
    return int(frame_idx)


def _object_ids(value: Any, name: str) -> list[int]:
    if isinstance(value, Tensor):
        value = value.tolist()
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(f"{name} must be a list of integer object ids; got {type(value).__name__}")
    ids = []
    for obj_id in value:
        if isinstance(obj_id, bool) or not isinstance(obj_id, numbers.Integral):
            raise ValueError(f"{name} must be a list of integer object ids; got {list(value)!r}")
        ids.append(int(obj_id))
    return ids


def tracker_frame(outputs: Any) -> TrackerFrame:
    """Check one tracker output and read its ``(N, M, h, w)`` logits, object ids and frame index."""
    kind = video_kind(outputs)
    if kind != "tracker":
        hint = video_adapter_hint(outputs)
        if hint is None:
            raise ValueError(
                f"inference_session is only for video tracking outputs ({', '.join(TRACKER_OUTPUTS)}); "
                f"got {type(outputs).__name__}. For image outputs pass original_sizes only."
            )
        raise ValueError(f"Sam2 cannot restore these: {hint}")
    logits = field(outputs, "pred_masks")
    layout = "(objects, masks_per_object, height, width)"
    if logits is None:
        raise ValueError(
            f"outputs.pred_masks is required for a tracker frame ({type(outputs).__name__}), "
            f"of shape {layout}"
        )
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        kind_text = f"a {logits.dtype} tensor" if isinstance(logits, Tensor) else type(logits).__name__
        raise TypeError(
            f"outputs.pred_masks must be a floating-point torch.Tensor of shape {layout}; got {kind_text}"
        )
    if logits.dim() != 4:
        raise ValueError(
            f"outputs.pred_masks of a video frame must have shape {layout}; got shape {tuple(logits.shape)}"
        )
    object_ids = field(outputs, "object_ids")
    if object_ids is None:
        raise ValueError(f"outputs.object_ids is required for a tracker frame ({type(outputs).__name__})")
    ids = _object_ids(object_ids, "outputs.object_ids")
    if len(ids) != logits.shape[0]:
        raise ValueError(
            f"outputs.object_ids has {len(ids)} ids but outputs.pred_masks has {logits.shape[0]} objects "
            f"(shape {tuple(logits.shape)})"
        )
    return logits, ids, _frame_index(outputs)


def restore_tracker_frame(
    restore_image: Callable[[Any, list[tuple[int, int]]], list[Tensor]],
    outputs: Any,
    original_sizes: Any,
    inference_session: Any,
) -> dict[str, Any]:
    """``{"frame_idx", "object_ids", "mask_probs" (N, M, H, W)}`` for one tracker frame.

    ``restore_image`` is the SAM2 image restoration (``Sam2.restore_mask_probs``): the official video
    post-processing is the image one on ``[pred_masks]``, a batch of one image whose prompts are
    the ``N`` objects, so the frame goes through exactly that code.
    """
    logits, object_ids, frame_idx = tracker_frame(outputs)
    size = frame_size(original_sizes, inference_session)
    # pred_masks[None]: (1, N, M, h, w); object_score_logits marks the view as a SAM2-family output
    view = types.SimpleNamespace(
        pred_masks=logits[None], object_score_logits=logits.new_zeros(1, logits.shape[0], 1)
    )
    probs = restore_image(view, [size])[0]
    return {"frame_idx": frame_idx, "object_ids": object_ids, "mask_probs": probs}


def postprocess_tracker_frame(
    predictor: Callable[[Tensor], Tensor], frame: Mapping[str, Any]
) -> dict[str, Any]:
    """``{"frame_idx", "object_ids", "masks"}``: RankSEG on ``mask_probs`` read as
    ``(batch=N, classes=M, H, W)``."""
    return {
        "frame_idx": frame["frame_idx"],
        "object_ids": frame["object_ids"],
        "masks": predictor(frame["mask_probs"]),
    }


# --------------------------------------------------------------------------------------------------
# Concept outputs (SAM3 video)


_CONCEPT_SESSION_FIELDS = (
    "video_height",
    "video_width",
    "hotstart_removed_obj_ids",
    "obj_id_to_prompt_id",
    "prompts",
)


def _check_concept_call(inference_session: Any, outputs: Any) -> None:
    if video_kind(inference_session) == "concept" and video_kind(outputs) == "session":
        raise TypeError(
            "inference_session and outputs are swapped: call postprocess_video(inference_session, outputs), "
            "session first, as Sam3VideoProcessor.postprocess_outputs takes them"
        )
    kind = video_kind(outputs)
    if kind != "concept":
        name = type(outputs).__name__
        if kind == "tracker":
            raise ValueError(
                f"Sam3.postprocess_video takes Sam3VideoModel outputs (obj_id_to_mask); got {name}, "
                f"a SAM video tracker frame: use {_TRACKER_USE}"
            )
        if kind == "session":
            raise ValueError(video_adapter_hint(outputs))
        raise ValueError(
            "Sam3.postprocess_video takes one frame of Sam3VideoModel outputs (Sam3VideoSegmentationOutput "
            f"with obj_id_to_mask); got {name}. For Sam3Model image outputs use Sam3.postprocess_instance / "
            "postprocess_semantic."
        )
    missing = [name for name in _CONCEPT_SESSION_FIELDS if not hasattr(inference_session, name)]
    if missing:
        raise TypeError(
            "inference_session must be the Sam3VideoInferenceSession the outputs came from; got "
            f"{type(inference_session).__name__} without {', '.join(missing)}"
        )


def _mapping_field(outputs: Any, name: str) -> Mapping:
    value = field(outputs, name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"outputs.{name} must be a dict keyed by object id; got {type(value).__name__}")
    return value


def _score(value: Any) -> float:
    return float(value.item() if isinstance(value, Tensor) else value)


def restore_concept_frame(
    inference_session: Any, outputs: Any, original_sizes: Any, scaler: TemperatureScaling | None = None
) -> dict[str, Any]:
    """Mask probabilities of the objects ``Sam3VideoProcessor.postprocess_outputs`` may show.

    Objects in ascending id order; those in ``outputs.suppressed_obj_ids`` or the session's
    ``hotstart_removed_obj_ids`` are hidden, as in the official code. Per object::

        mask_probs = sigmoid(bilinear(obj_id_to_mask[id] / T, (H, W)))   # the official `> 0` is on the logits

    ``T`` is the global temperature of ``scaler`` (a checked sigmoid calibration), 1 without one.

    Returns ``{"frame_idx", "object_ids" int64 (N,), "scores" (N,), "tracker_scores" (N,),
    "mask_probs" (N, H, W)}``: scores from ``obj_id_to_score``, tracker scores from
    ``obj_id_to_tracker_score`` (0 when absent, as in the official code), float32 (the probabilities
    float64 for float64 masks, as the official code keeps their dtype); ids and
    scores on the CPU, probabilities on the masks' device.
    """
    _check_concept_call(inference_session, outputs)
    masks_by_id = _mapping_field(outputs, "obj_id_to_mask")
    scores_by_id = _mapping_field(outputs, "obj_id_to_score")
    tracker_by_id = _mapping_field(outputs, "obj_id_to_tracker_score")
    size = frame_size(original_sizes, inference_session)
    frame_idx = _frame_index(outputs)

    hidden = set(field(outputs, "suppressed_obj_ids") or ()) | set(inference_session.hotstart_removed_obj_ids)
    object_ids = [obj_id for obj_id in sorted(masks_by_id) if obj_id not in hidden]
    missing = [obj_id for obj_id in object_ids if obj_id not in scores_by_id]
    if missing:
        raise ValueError(f"outputs.obj_id_to_score has no score for object ids {missing}")
    logits = []
    for obj_id in object_ids:
        mask = masks_by_id[obj_id]
        if (
            not isinstance(mask, Tensor)
            or not mask.is_floating_point()
            or mask.dim() != 3
            or mask.shape[0] != 1
        ):
            shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(
                f"outputs.obj_id_to_mask[{obj_id}] must be a floating-point (1, height, width) logit map; "
                f"got {shape}"
            )
        check_readable(mask, f"outputs.obj_id_to_mask[{obj_id}]")
        if mask.numel():
            check_magnitude(mask, f"outputs.obj_id_to_mask[{obj_id}]")
        logits.append(mask)
    if logits:
        dtype = restoration_dtype(*logits)
        low = divide_logits(torch.cat(logits)[:, None].to(dtype), scaler, "outputs.obj_id_to_mask")
        probs = torch.sigmoid(bilinear(low, size))[:, 0]
    else:
        probs = torch.zeros(0, *size)
    return {
        "frame_idx": frame_idx,
        "object_ids": torch.tensor(object_ids, dtype=torch.int64),
        "scores": torch.tensor([_score(scores_by_id[i]) for i in object_ids], dtype=torch.float32),
        "tracker_scores": torch.tensor(
            [_score(tracker_by_id.get(i, 0.0)) for i in object_ids], dtype=torch.float32
        ),
        "mask_probs": probs,
    }


def masks_to_boxes(masks: Tensor) -> Tensor:
    """``(x1, y1, x2, y2)`` float32 boxes of ``(N, H, W)`` bool masks: first and last foreground
    column and row, inclusive (``torchvision.ops.masks_to_boxes``, which the official code calls;
    an empty mask gives ``[0, 0, 0, 0]``)."""
    if masks.shape[0] == 0:
        return torch.zeros(0, 4, dtype=torch.float32, device=masks.device)
    height, width = masks.shape[-2:]
    rows = masks.any(dim=2).float()  # (N, H)
    cols = masks.any(dim=1).float()  # (N, W)
    x1, y1 = cols.argmax(dim=1), rows.argmax(dim=1)  # argmax of a 0/1 row: the first 1
    x2 = (width - 1) - cols.flip(1).argmax(dim=1)
    y2 = (height - 1) - rows.flip(1).argmax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    return boxes.masked_fill(~masks.flatten(1).any(dim=1)[:, None], 0.0)


def suppress_overlaps_per_prompt(masks: Tensor, tracker_scores: Tensor, prompt_ids: list[int]) -> Tensor:
    """The official object-wise non-overlap step on ``(N, H, W)`` bool masks (``N > 1``).

    Within each prompt's group, pixel ``p`` of object ``k`` survives iff ``k`` is the first
    arg-max over the group of ``where(mask_j[p], tracker_score_j, 0)`` and that value is positive;
    ``Sam3VideoProcessor._apply_object_wise_non_overlapping_constraints`` with ``background_value=0``.
    The loop runs over prompts (a handful), each step on the whole group.
    """
    scores = tracker_scores.to(device=masks.device, dtype=torch.float32)[:, None, None]
    masked_scores = torch.where(masks, scores, torch.zeros((), device=masks.device))
    groups = torch.tensor(prompt_ids, dtype=torch.long, device=masks.device)
    kept = torch.zeros_like(masks)
    for prompt_id in groups.unique(sorted=True):
        members = torch.nonzero(groups == prompt_id, as_tuple=True)[0]
        group_scores = masked_scores[members]
        winner = group_scores.argmax(dim=0, keepdim=True)  # first maximum, as torch.argmax documents
        rank = torch.arange(members.numel(), device=masks.device)[:, None, None]
        kept[members] = (winner == rank) & (group_scores > 0)
    return kept


def postprocess_concept_frame(
    predictor: Callable[[Tensor], Tensor], inference_session: Any, frame: Mapping[str, Any]
) -> dict[str, Any]:
    """``Sam3VideoProcessor.postprocess_outputs`` after the binarisation, on RankSEG masks.

    ``masks = RankSEG(mask_probs[:, None])[:, 0]``; objects whose mask is empty are dropped; boxes
    are those of the remaining masks; then, with more than one object, the per-prompt non-overlap
    step (:func:`suppress_overlaps_per_prompt`, after the boxes, as in the official code);
    ``prompt_to_obj_ids`` maps each prompt's text to its shown object ids.
    """
    masks = predictor(frame["mask_probs"][:, None])[:, 0]
    keep = masks.flatten(1).any(dim=1).cpu()
    object_ids = frame["object_ids"][keep]
    masks = masks[keep.to(masks.device)]
    boxes = masks_to_boxes(masks)
    if masks.shape[0] > 1:
        prompt_ids = [inference_session.obj_id_to_prompt_id[obj_id] for obj_id in object_ids.tolist()]
        masks = suppress_overlaps_per_prompt(masks, frame["tracker_scores"][keep], prompt_ids)
    prompt_to_obj_ids: dict[str, list[int]] = {}
    for obj_id in object_ids.tolist():
        text = inference_session.prompts[inference_session.obj_id_to_prompt_id[obj_id]]
        prompt_to_obj_ids.setdefault(text, []).append(obj_id)
    return {
        "frame_idx": frame["frame_idx"],
        "object_ids": object_ids,
        "scores": frame["scores"][keep],
        "boxes": boxes,
        "masks": masks,
        "prompt_to_obj_ids": prompt_to_obj_ids,
    }


# --------------------------------------------------------------------------------------------------
# The propagation loop


def propagate(
    model: Any,
    inference_session: Any,
    postprocess_frame: Callable[[Any], dict[str, Any]],
    iterator_kwargs: Mapping[str, Any],
) -> Iterator[dict[str, Any]]:
    """``postprocess_frame(outputs)`` for every output of ``model.propagate_in_video_iterator``."""
    iterate = getattr(model, "propagate_in_video_iterator", None)
    if not callable(iterate):
        raise TypeError(
            "model must be a SAM video model with propagate_in_video_iterator (Sam2VideoModel, "
            f"Sam3TrackerVideoModel, EdgeTamVideoModel, Sam3VideoModel); got {type(model).__name__}"
        )
    if video_kind(inference_session) != "session" and not hasattr(inference_session, "video_height"):
        raise TypeError(
            "inference_session must be the model's video inference session; got "
            f"{type(inference_session).__name__}"
        )
    outputs_iterator = iterate(inference_session=inference_session, **iterator_kwargs)
    return (postprocess_frame(outputs) for outputs in outputs_iterator)
