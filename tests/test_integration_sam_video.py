"""SAM video tracking through ``rankseg.integration.sam``: every frame equals the official
transformers post-processing.

Tiny random-weight ``Sam2VideoModel``, ``Sam3TrackerVideoModel``, ``EdgeTamVideoModel`` and
``Sam3VideoModel`` (``tests/sam_video_models.py``) track objects through two synthetic clips of
different frame sizes, one inference session per clip: point prompts on the first clip and box
prompts on the second for the trackers, two text prompts for SAM3 video. For every frame the
restored probabilities, thresholded as the official code thresholds, equal the official
post-processing (``Sam2VideoProcessor.post_process_masks`` and its Sam3Tracker twin;
``Sam3VideoProcessor.postprocess_outputs``), object ids and frame indices agree, and
``postprocess`` is RankSEG on the restored probabilities. Where float32 sigmoid rounds a tiny
logit to exactly 0.5, the official decision is checked in logit space.
"""

from __future__ import annotations

import copy
import types

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")
torchvision_ops = pytest.importorskip("torchvision.ops")

import sam_video_models  # noqa: E402
from rankseg import RankSEG  # noqa: E402
from rankseg.integration import _sam_video  # noqa: E402
from rankseg.integration import transformers as hf  # noqa: E402
from rankseg.integration.sam import Sam1, Sam2, Sam3  # noqa: E402

RANKSEG_KWARGS = [None, {"metric": "iou"}, {"metric": "dice", "solver": "TRNA"}]


# --------------------------------------------------------------------------------------------------
# Fixtures: each tiny model is built and tracks its two clips once per module


@pytest.fixture(scope="module", params=sam_video_models.TRACKERS)
def tracker_case(request):
    return sam_video_models.run_case(request.param)


@pytest.fixture(scope="module")
def sam2_video_case():
    return sam_video_models.run_case("sam2_video")


@pytest.fixture(scope="module")
def sam3_video_case():
    return sam_video_models.run_case("sam3_video")


def _frames(case):
    for clip in case.clips:
        for position, outputs in enumerate(clip.outputs):
            yield clip, position, outputs


def _with(outputs, **fields):
    """A copy of a model output (same class) with some fields replaced; the original is untouched."""
    return type(outputs)(**{**dict(outputs), **fields})


def _predictor(rankseg_kwargs):
    return RankSEG(**{"output_mode": "multilabel", **(rankseg_kwargs or {})})


def threshold_like_official(probs, official_logits):
    """``probs > 0.5``, the official ``logit > 0``, except where float32 sigmoid rounds a tiny logit
    to exactly 0.5: there the official logit decides, and it must be that tiny."""
    ties = probs == 0.5
    assert torch.all(official_logits[ties].abs() < 4 * torch.finfo(torch.float32).eps)
    return torch.where(ties, official_logits > 0, probs > 0.5)


# --------------------------------------------------------------------------------------------------
# Tracker outputs: SAM2 video, Sam3Tracker video, EdgeTAM video


def test_the_tiny_trackers_give_real_frames(tracker_case):
    """The fixtures exercise what they claim: every frame of both clips, two objects, logits of
    both signs at each clip's size."""
    expected_class = {
        "sam2_video": "Sam2VideoSegmentationOutput",
        "sam3_tracker_video": "Sam3TrackerVideoSegmentationOutput",
        "edgetam_video": "EdgeTamVideoSegmentationOutput",
    }[tracker_case.name]
    for index, clip in enumerate(tracker_case.clips):
        assert [o.frame_idx for o in clip.outputs] == list(range(sam_video_models.NUM_FRAMES))
        for outputs in clip.outputs:
            assert type(outputs).__name__ == expected_class
            assert outputs.object_ids == [[1, 2], [4, 9]][index]
            assert (outputs.pred_masks > 1).any() and (outputs.pred_masks < -1).any()
        assert (int(clip.session.video_height), int(clip.session.video_width)) == clip.size


@pytest.mark.parametrize("non_overlap", [False, True])
def test_tracker_frames_equal_official_post_process_masks(tracker_case, non_overlap):
    adapter = Sam2(apply_non_overlapping_constraints=non_overlap)
    kwargs = dict(apply_non_overlapping_constraints=non_overlap)
    for clip, position, outputs in _frames(tracker_case):
        frame = adapter.restore_mask_probs(outputs, inference_session=clip.session)
        assert frame["frame_idx"] == outputs.frame_idx == position
        assert frame["object_ids"] == outputs.object_ids
        probs = frame["mask_probs"]
        assert probs.shape == (2, 1, *clip.size) and probs.dtype == torch.float32

        processor = tracker_case.processor
        official = processor.post_process_masks([outputs.pred_masks], [clip.size], **kwargs)[0]
        official_logits = processor.post_process_masks(
            [outputs.pred_masks], [clip.size], binarize=False, **kwargs
        )[0]
        torch.testing.assert_close(probs, torch.sigmoid(official_logits), rtol=0, atol=0)
        assert torch.equal(threshold_like_official(probs, official_logits), official)
        if non_overlap:
            assert (torch.sigmoid(official_logits) > 0.5).sum(dim=0).max() <= 1

        by_size = adapter.restore_mask_probs(outputs, original_sizes=clip.size)
        assert torch.equal(by_size["mask_probs"], probs)


@pytest.mark.parametrize("rankseg_kwargs", RANKSEG_KWARGS)
def test_tracker_postprocess_is_rankseg_on_the_restored_probabilities(tracker_case, rankseg_kwargs):
    adapter = Sam2(rankseg_kwargs)
    changed = 0
    for clip, _, outputs in _frames(tracker_case):
        frame = adapter.postprocess(outputs, inference_session=clip.session)
        restored = adapter.restore_mask_probs(outputs, inference_session=clip.session)
        assert set(frame) == {"frame_idx", "object_ids", "masks"}
        assert frame["frame_idx"] == outputs.frame_idx and frame["object_ids"] == outputs.object_ids
        expected = _predictor(rankseg_kwargs)(restored["mask_probs"])
        assert frame["masks"].dtype == torch.bool and torch.equal(frame["masks"], expected)
        changed += int((frame["masks"] != (restored["mask_probs"] > 0.5)).sum())
    assert changed > 0  # RankSEG is not the 0.5 threshold on these frames


def test_propagate_yields_the_postprocessed_frames(sam2_video_case):
    """``Sam2.propagate`` on a fresh session of the same clip gives, frame by frame, what
    ``postprocess`` gives for the outputs of ``model.propagate_in_video_iterator``."""
    case = sam2_video_case
    session = sam_video_models.start_session(case.name, case.processor, 1)
    adapter = Sam2({"metric": "iou"})
    frames = list(adapter.propagate(case.model, session, start_frame_idx=0))
    clip = case.clips[1]
    assert [f["frame_idx"] for f in frames] == [o.frame_idx for o in clip.outputs]
    for frame, outputs in zip(frames, clip.outputs, strict=True):
        expected = adapter.postprocess(outputs, inference_session=clip.session)
        assert frame["object_ids"] == expected["object_ids"]
        assert torch.equal(frame["masks"], expected["masks"])
    limited = list(adapter.propagate(case.model, session, start_frame_idx=1, max_frame_num_to_track=1))
    assert [f["frame_idx"] for f in limited] == [1, 2]


def test_a_streamed_frame_reads_its_size_from_the_session(sam2_video_case):
    """Streaming (no video given to the session): the size comes from ``original_size`` of the
    first prompt, stored as plain ints; the frame is passed to the model directly."""
    case = sam2_video_case
    processor, model = case.processor, case.model
    image = sam_video_models.synthetic_clip((36, 52), num_frames=1)[0]
    session = processor.init_video_session(inference_device="cpu")
    inputs = processor(images=image, return_tensors="pt")
    processor.add_inputs_to_inference_session(
        session,
        frame_idx=0,
        obj_ids=[5],
        input_points=[[[[10, 12]]]],
        input_labels=[[[1]]],
        original_size=inputs.original_sizes[0],
    )
    with torch.inference_mode():
        outputs = model(inference_session=session, frame=inputs.pixel_values[0])
    frame = Sam2().restore_mask_probs(outputs, inference_session=session)
    official_logits = processor.post_process_masks([outputs.pred_masks], [(36, 52)], binarize=False)[0]
    assert frame["object_ids"] == [5] and frame["mask_probs"].shape == (1, 1, 36, 52)
    torch.testing.assert_close(frame["mask_probs"], torch.sigmoid(official_logits), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# SAM3 video (concept tracking with text prompts)


def test_the_tiny_sam3_video_run_exercises_hiding_and_empty_masks(sam3_video_case):
    """Clip 0 loses objects at hot start (hidden by the official code); clip 1 keeps them, has
    masks that the official code drops as empty, and several objects per prompt."""
    case = sam3_video_case
    first, second = case.clips
    removed = first.session.hotstart_removed_obj_ids
    assert any(set(outputs.obj_id_to_mask) & removed for outputs in first.outputs)
    official = [case.processor.postprocess_outputs(second.session, o) for o in second.outputs]
    dropped = [
        len(o.obj_id_to_mask) - len(r["object_ids"]) for r, o in zip(official, second.outputs, strict=True)
    ]
    assert max(dropped) > 0
    assert max(len(ids) for r in official for ids in r["prompt_to_obj_ids"].values()) > 1
    last = case.processor.postprocess_outputs(second.session, second.outputs[-1])
    assert sorted(last["prompt_to_obj_ids"]) == ["a dog", "cat"]


def _official_logits(outputs, object_ids, size):
    """In-test re-statement: each object's low-resolution logits resized to the frame size."""
    if not object_ids:
        return torch.zeros(0, *size)
    low = torch.cat([outputs.obj_id_to_mask[i] for i in object_ids])[:, None].float()
    return F.interpolate(low, size=size, mode="bilinear", align_corners=False)[:, 0]


def _assert_same_frame(ours, official):
    assert torch.equal(ours["object_ids"], official["object_ids"])
    assert torch.equal(ours["scores"], official["scores"].float())
    assert torch.equal(ours["boxes"], official["boxes"])
    assert torch.equal(ours["masks"].cpu(), official["masks"].cpu())
    assert ours["prompt_to_obj_ids"] == official["prompt_to_obj_ids"]


def test_sam3_video_frames_equal_official_postprocess_outputs(sam3_video_case):
    """The restored probabilities, thresholded as the official code thresholds and taken through
    the rest of the adapter's pipeline, give the official ids, scores, boxes and masks."""
    case = sam3_video_case
    for clip, position, outputs in _frames(case):
        restored = Sam3().restore_video_mask_probs(clip.session, outputs)
        assert restored["frame_idx"] == outputs.frame_idx == position
        official = case.processor.postprocess_outputs(clip.session, outputs)
        hidden = set(outputs.suppressed_obj_ids or ()) | clip.session.hotstart_removed_obj_ids
        visible = [i for i in sorted(outputs.obj_id_to_mask) if i not in hidden]
        assert restored["object_ids"].tolist() == visible
        logits = _official_logits(outputs, visible, clip.size)
        torch.testing.assert_close(restored["mask_probs"], torch.sigmoid(logits), rtol=0, atol=0)
        assert restored["mask_probs"].shape == (len(visible), *clip.size)

        def threshold(probs, logits=logits):
            return threshold_like_official(probs[:, 0], logits)[:, None]

        ours = _sam_video.postprocess_concept_frame(threshold, clip.session, restored)
        _assert_same_frame(ours, official)
        assert ours["frame_idx"] == position


def _rankseg_pipeline(processor, session, restored, rankseg_kwargs):
    """The official steps after the binarisation, applied to RankSEG masks with the official
    code's own helpers (torchvision's masks_to_boxes, the processor's non-overlap step)."""
    masks = _predictor(rankseg_kwargs)(restored["mask_probs"][:, None])[:, 0]
    keep = masks.flatten(1).any(dim=1)
    ids = restored["object_ids"][keep]
    masks = masks[keep]
    boxes = torchvision_ops.masks_to_boxes(masks)
    if masks.shape[0] > 1:
        prompt_ids = [session.obj_id_to_prompt_id[i] for i in ids.tolist()]
        masks = (
            processor._apply_object_wise_non_overlapping_constraints(
                masks.unsqueeze(1),
                restored["tracker_scores"][keep].unsqueeze(1),
                background_value=0,
                prompt_ids=prompt_ids,
            ).squeeze(1)
            > 0
        )
    return ids, restored["scores"][keep], boxes, masks


@pytest.mark.parametrize("rankseg_kwargs", RANKSEG_KWARGS[:2])
def test_sam3_postprocess_video_is_rankseg_on_the_restored_probabilities(sam3_video_case, rankseg_kwargs):
    case = sam3_video_case
    adapter = Sam3(rankseg_kwargs)
    shown = 0
    for clip, _, outputs in _frames(case):
        frame = adapter.postprocess_video(clip.session, outputs)
        restored = adapter.restore_video_mask_probs(clip.session, outputs)
        ids, scores, boxes, masks = _rankseg_pipeline(case.processor, clip.session, restored, rankseg_kwargs)
        assert torch.equal(frame["object_ids"], ids) and torch.equal(frame["scores"], scores)
        assert torch.equal(frame["boxes"], boxes) and torch.equal(frame["masks"], masks)
        assert frame["masks"].dtype == torch.bool and frame["masks"].shape == (len(ids), *clip.size)
        assert all(frame["prompt_to_obj_ids"].values())
        assert sorted(i for v in frame["prompt_to_obj_ids"].values() for i in v) == ids.tolist()
        shown += len(ids)
    assert shown > 0


def test_sam3_suppressed_objects_are_hidden_as_officially(sam3_video_case):
    case = sam3_video_case
    clip = case.clips[1]
    outputs = clip.outputs[-1]
    suppressed = _with(outputs, suppressed_obj_ids={0, 5})
    official = case.processor.postprocess_outputs(clip.session, suppressed)
    restored = Sam3().restore_video_mask_probs(clip.session, suppressed)
    assert {0, 5}.isdisjoint(restored["object_ids"].tolist()) and len(restored["object_ids"]) > 0
    logits = _official_logits(suppressed, restored["object_ids"].tolist(), clip.size)

    def threshold(probs):
        return threshold_like_official(probs[:, 0], logits)[:, None]

    _assert_same_frame(_sam_video.postprocess_concept_frame(threshold, clip.session, restored), official)


def test_sam3_missing_tracker_scores_and_lone_objects_follow_the_official_rules(sam3_video_case):
    """A tracker score absent from ``obj_id_to_tracker_score`` counts as 0, and the non-overlap
    step (which keeps a pixel only for a positive score) runs only with more than one object."""
    case = sam3_video_case
    clip = case.clips[1]
    outputs = clip.outputs[-1]
    lone_id = Sam3().postprocess_video(clip.session, outputs)["object_ids"][0].item()
    cases = {
        "no tracker scores": _with(outputs, obj_id_to_tracker_score={}),
        "one object": _with(
            outputs, obj_id_to_mask={lone_id: outputs.obj_id_to_mask[lone_id]}, obj_id_to_tracker_score={}
        ),
    }
    for name, modified in cases.items():
        official = case.processor.postprocess_outputs(clip.session, modified)
        restored = Sam3().restore_video_mask_probs(clip.session, modified)
        logits = _official_logits(modified, restored["object_ids"].tolist(), clip.size)

        def threshold(probs, logits=logits):
            return threshold_like_official(probs[:, 0], logits)[:, None]

        _assert_same_frame(_sam_video.postprocess_concept_frame(threshold, clip.session, restored), official)
        frame = Sam3().postprocess_video(clip.session, modified)
        if name == "one object":
            assert frame["object_ids"].tolist() == [lone_id] and frame["masks"].any()
        else:
            assert len(frame["object_ids"]) > 1 and not frame["masks"].any()


def test_sam3_objects_whose_rankseg_mask_is_empty_are_dropped(sam3_video_case):
    """An object with logits far below 0 everywhere gets an empty RankSEG mask and disappears, as
    an empty thresholded mask does officially."""
    case = sam3_video_case
    clip = case.clips[1]
    outputs = clip.outputs[0]
    masks = dict(outputs.obj_id_to_mask)
    target = max(masks)
    masks[target] = torch.full_like(masks[target], -30.0)
    modified = _with(outputs, obj_id_to_mask=masks)
    frame = Sam3().postprocess_video(clip.session, modified)
    assert target not in frame["object_ids"].tolist()
    assert target not in case.processor.postprocess_outputs(clip.session, modified)["object_ids"].tolist()
    assert target in Sam3().restore_video_mask_probs(clip.session, modified)["object_ids"].tolist()


def test_sam3_propagate_yields_the_postprocessed_frames(sam3_video_case):
    case = sam3_video_case
    clip = case.clips[1]
    session = sam_video_models.start_session(case.name, case.processor, 1)
    frames = list(Sam3().propagate(case.model, session))
    assert [f["frame_idx"] for f in frames] == [o.frame_idx for o in clip.outputs]
    for frame, outputs in zip(frames, clip.outputs, strict=True):
        expected = Sam3().postprocess_video(clip.session, outputs)
        assert torch.equal(frame["object_ids"], expected["object_ids"])
        assert torch.equal(frame["masks"], expected["masks"])


def test_sam3_streamed_session_needs_original_sizes(sam3_video_case):
    case = sam3_video_case
    clip = case.clips[1]
    outputs = clip.outputs[-1]
    streamed = copy.copy(clip.session)
    streamed.video_height = streamed.video_width = None
    with pytest.raises(ValueError, match=r"no frame size yet .* pass original_sizes=\(height, width\)"):
        Sam3().postprocess_video(streamed, outputs)
    frame = Sam3().postprocess_video(streamed, outputs, original_sizes=[list(clip.size)])
    expected = Sam3().postprocess_video(clip.session, outputs)
    for key in ("object_ids", "scores", "boxes", "masks"):
        assert torch.equal(frame[key], expected[key])
    official = case.processor.postprocess_outputs(streamed, outputs, original_sizes=[list(clip.size)])
    assert official["masks"].shape[1:] == frame["masks"].shape[1:] == clip.size


def test_sam3_empty_frame_gives_empty_tensors(sam3_video_case):
    clip = sam3_video_case.clips[1]
    empty = _with(clip.outputs[0], obj_id_to_mask={}, obj_id_to_score={}, obj_id_to_tracker_score={})
    frame = Sam3().postprocess_video(clip.session, empty)
    official = sam3_video_case.processor.postprocess_outputs(clip.session, empty)
    for key in ("object_ids", "scores", "boxes", "masks"):
        assert frame[key].shape == official[key].shape and frame[key].dtype == official[key].dtype
    assert frame["prompt_to_obj_ids"] == {}


# --------------------------------------------------------------------------------------------------
# The helpers the official code calls, against the official implementations


@given(
    st.integers(1, 5),
    st.integers(1, 7),
    st.integers(1, 7),
    st.integers(0, 2**31 - 1),
)
def test_masks_to_boxes_equals_torchvision(count, height, width, seed):
    generator = torch.Generator().manual_seed(seed)
    density = torch.rand(count, 1, 1, generator=generator)
    masks = torch.rand(count, height, width, generator=generator) < density
    assert torch.equal(_sam_video.masks_to_boxes(masks), torchvision_ops.masks_to_boxes(masks))


@given(
    st.integers(2, 6),
    st.integers(0, 2**31 - 1),
    st.lists(st.sampled_from([-1.0, 0.0, 0.25, 1.0]), min_size=6, max_size=6),
    st.lists(st.integers(0, 2), min_size=6, max_size=6),
)
def test_per_prompt_non_overlap_equals_the_official_step(count, seed, scores, prompts):
    """Ties (equal tracker scores), zero and negative scores, groups of one."""
    from transformers.models.sam3_video.processing_sam3_video import Sam3VideoProcessor

    processor = object.__new__(Sam3VideoProcessor)  # the method uses no processor state
    generator = torch.Generator().manual_seed(seed)
    masks = torch.rand(count, 5, 6, generator=generator) < 0.6
    tracker_scores = torch.tensor(scores[:count])
    official = (
        processor._apply_object_wise_non_overlapping_constraints(
            masks.unsqueeze(1), tracker_scores.unsqueeze(1), background_value=0, prompt_ids=prompts[:count]
        ).squeeze(1)
        > 0
    )
    ours = _sam_video.suppress_overlaps_per_prompt(masks, tracker_scores, prompts[:count])
    assert torch.equal(ours, official)


# --------------------------------------------------------------------------------------------------
# dtype, device, inputs untouched


def test_half_precision_frames_are_restored_in_float32(sam2_video_case):
    clip = sam2_video_case.clips[0]
    outputs = clip.outputs[1]
    half = _with(outputs, pred_masks=outputs.pred_masks.half())
    frame = Sam2().restore_mask_probs(half, inference_session=clip.session)
    expected = Sam2().restore_mask_probs(_with(half, pred_masks=half.pred_masks.float()), clip.size)
    assert frame["mask_probs"].dtype == torch.float32
    assert torch.equal(frame["mask_probs"], expected["mask_probs"])


def test_video_restoration_stays_on_the_outputs_device(device):
    torch.manual_seed(3)
    logits = torch.randn(2, 1, 8, 8) * 5
    frame = types.SimpleNamespace(object_ids=[1, 2], frame_idx=4, pred_masks=logits.to(device))
    masks = Sam2().postprocess(frame, original_sizes=(20, 30))["masks"]
    assert masks.device.type == device.type
    expected = Sam2().postprocess(
        types.SimpleNamespace(object_ids=[1, 2], frame_idx=4, pred_masks=logits), (20, 30)
    )
    assert torch.equal(masks.cpu(), expected["masks"])
    session = types.SimpleNamespace(
        video_height=20,
        video_width=30,
        prompts={0: "x"},
        obj_id_to_prompt_id={1: 0, 2: 0},
        hotstart_removed_obj_ids=set(),
    )
    concept = types.SimpleNamespace(
        frame_idx=0,
        obj_id_to_mask={1: logits[0].to(device), 2: logits[1].to(device)},
        obj_id_to_score={1: 0.5, 2: 0.5},
        obj_id_to_tracker_score={1: 0.9, 2: 0.8},
        suppressed_obj_ids=set(),
    )
    result = Sam3().postprocess_video(session, concept)
    assert result["masks"].device.type == device.type and result["boxes"].device.type == device.type
    assert result["object_ids"].device.type == "cpu"


def test_a_tracker_frame_without_objects_gives_empty_masks():
    frame = types.SimpleNamespace(object_ids=[], frame_idx=3, pred_masks=torch.zeros(0, 1, 8, 8))
    result = Sam2().postprocess(frame, original_sizes=(20, 30))
    assert result["object_ids"] == [] and result["frame_idx"] == 3
    assert result["masks"].shape == (0, 1, 20, 30) and result["masks"].dtype == torch.bool


def test_inputs_are_not_modified_and_ids_are_copies(sam2_video_case, sam3_video_case):
    clip = sam2_video_case.clips[0]
    outputs = clip.outputs[0]
    before = (outputs.pred_masks.clone(), list(outputs.object_ids))
    frame = Sam2(apply_non_overlapping_constraints=True).postprocess(outputs, inference_session=clip.session)
    assert torch.equal(outputs.pred_masks, before[0]) and outputs.object_ids == before[1]
    assert frame["object_ids"] is not outputs.object_ids

    clip3 = sam3_video_case.clips[1]
    outputs3 = clip3.outputs[-1]
    masks_before = {k: v.clone() for k, v in outputs3.obj_id_to_mask.items()}
    hidden_before = set(clip3.session.hotstart_removed_obj_ids)
    Sam3().postprocess_video(clip3.session, outputs3)
    assert all(torch.equal(outputs3.obj_id_to_mask[k], v) for k, v in masks_before.items())
    assert clip3.session.hotstart_removed_obj_ids == hidden_before


# --------------------------------------------------------------------------------------------------
# Errors: wrong adapter, missing size, outputs of another family


def test_video_outputs_name_the_adapter_that_restores_them(sam2_video_case, sam3_video_case):
    clip = sam2_video_case.clips[0]
    tracker = clip.outputs[0]
    clip3 = sam3_video_case.clips[1]
    concept = clip3.outputs[-1]
    tracker_hint = (
        r"one frame of SAM video tracking.*Sam2\(\.\.\.\)\.postprocess\(outputs, inference_session="
    )
    concept_hint = (
        r"SAM3 video concept tracking.*Sam3\(\.\.\.\)\.postprocess_video\(inference_session, outputs\)"
    )
    with pytest.raises(ValueError, match=tracker_hint):
        Sam1().restore_mask_probs(tracker, clip.size, clip.size)
    with pytest.raises(ValueError, match=tracker_hint):
        Sam3().postprocess_instance(tracker)
    with pytest.raises(ValueError, match=r"Sam2 cannot restore these: .*" + concept_hint):
        Sam2().postprocess(concept, inference_session=clip3.session)
    with pytest.raises(ValueError, match=concept_hint):
        Sam3().postprocess_semantic(concept)
    with pytest.raises(
        ValueError, match=r"postprocess_video takes Sam3VideoModel outputs.*tracker frame.*Sam2"
    ):
        Sam3().postprocess_video(clip3.session, tracker)
    for session in (clip.session, clip3.session):
        with pytest.raises(
            ValueError, match=r"video inference session .* where the model's output for one frame"
        ):
            Sam2().restore_mask_probs(session, clip.size)
    with pytest.raises(TypeError, match=r"swapped: call postprocess_video\(inference_session, outputs\)"):
        Sam3().postprocess_video(concept, clip3.session)
    with pytest.raises(
        TypeError, match=r"must be the Sam3VideoInferenceSession .* Sam2VideoInferenceSession without"
    ):
        Sam3().postprocess_video(clip.session, concept)


def test_image_outputs_and_video_arguments_do_not_mix(sam2_video_case):
    session = sam2_video_case.clips[0].session
    image = transformers.models.sam2.modeling_sam2.Sam2ImageSegmentationOutput(
        pred_masks=torch.zeros(1, 2, 1, 8, 8), iou_scores=torch.zeros(1, 2, 1)
    )
    with pytest.raises(
        ValueError, match=r"inference_session is only for video tracking outputs .*got Sam2Image"
    ):
        Sam2().restore_mask_probs(image, inference_session=session)
    with pytest.raises(ValueError, match=r"takes one frame of Sam3VideoModel outputs.*postprocess_instance"):
        Sam3().postprocess_video(session, image)


def test_a_video_frame_needs_its_size(sam2_video_case):
    clip = sam2_video_case.clips[0]
    outputs = clip.outputs[0]
    with pytest.raises(ValueError, match=r"a video frame needs its size: pass inference_session="):
        Sam2().restore_mask_probs(outputs)
    streamed = copy.copy(clip.session)
    streamed.video_height = streamed.video_width = None
    with pytest.raises(ValueError, match=r"no frame size yet"):
        Sam2().postprocess(outputs, inference_session=streamed)
    assert Sam2().restore_mask_probs(outputs, (30, 40), inference_session=streamed)["mask_probs"].shape[
        -2:
    ] == (
        30,
        40,
    )
    with pytest.raises(
        ValueError, match=r"original_sizes \(30, 40\) disagrees with the inference session's frame"
    ):
        Sam2().restore_mask_probs(outputs, (30, 40), inference_session=clip.session)
    with pytest.raises(TypeError, match=r"inference_session must be the video inference session .* got dict"):
        Sam2().restore_mask_probs(outputs, inference_session={"video_height": 3})
    with pytest.raises(ValueError, match=r"original_sizes must hold positive"):
        Sam2().restore_mask_probs(outputs, (0, 40))


def test_malformed_tracker_frames_name_the_field(sam2_video_case):
    outputs = sam2_video_case.clips[0].outputs[0]
    size = (20, 30)
    with pytest.raises(ValueError, match=r"object_ids has 1 ids but outputs\.pred_masks has 2 objects"):
        Sam2().restore_mask_probs(_with(outputs, object_ids=[1]), size)
    with pytest.raises(
        ValueError, match=r"pred_masks of a video frame must have shape \(objects, masks_per_object"
    ):
        Sam2().restore_mask_probs(_with(outputs, pred_masks=outputs.pred_masks[None]), size)
    with pytest.raises(ValueError, match=r"frame_idx must be the frame's index \(an int\); got None"):
        Sam2().restore_mask_probs(_with(outputs, frame_idx=None), size)
    with pytest.raises(
        ValueError, match=r"object_ids must be a list of integer object ids; got \['a', 'b'\]"
    ):
        Sam2().restore_mask_probs(_with(outputs, object_ids=["a", "b"]), size)
    with pytest.raises(
        TypeError, match=r"pred_masks must be a floating-point torch\.Tensor .* got a torch\.int64"
    ):
        Sam2().restore_mask_probs(_with(outputs, pred_masks=outputs.pred_masks.long()), size)


def test_propagate_needs_a_video_model(sam2_video_case):
    session = sam2_video_case.clips[0].session
    with pytest.raises(TypeError, match=r"model must be a SAM video model with propagate_in_video_iterator"):
        Sam2().propagate(object(), session)
    with pytest.raises(
        TypeError, match=r"inference_session must be the model's video inference session; got int"
    ):
        Sam3().propagate(sam2_video_case.model, 3)


@pytest.mark.parametrize("which", ["tracker", "concept", "session"])
def test_the_semantic_helper_names_the_sam_adapter(sam2_video_case, sam3_video_case, which):
    objects = {
        "tracker": (
            sam2_video_case.clips[0].outputs[0],
            r"Sam2\(\.\.\.\)\.postprocess\(outputs, inference_session",
        ),
        "concept": (
            sam3_video_case.clips[1].outputs[0],
            r"Sam3\(\.\.\.\)\.postprocess_video\(inference_session",
        ),
        "session": (sam2_video_case.clips[0].session, r"video inference session"),
    }
    outputs, hint = objects[which]
    with pytest.raises(ValueError, match=hint):
        hf.restore_semantic_probs(outputs, target_sizes=[(8, 8)])
    with pytest.raises(ValueError, match=hint):
        hf.postprocess(outputs, target_sizes=[(8, 8)])


def test_the_example_runs(monkeypatch, capsys):
    import runpy
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "sam_video.py"
    monkeypatch.setattr("sys.argv", [str(example)])
    runpy.run_path(str(example), run_name="__main__")
    out = capsys.readouterr().out
    assert out.count("RankSEG areas") == 2 * 4  # SAM2 via propagate, SAM3: four frames each
    assert "probabilities (2, 1, 60, 90), areas official" in out
    assert "(official [" in out and "by prompt {'cat':" in out


def test_the_docs_video_examples_run(sam2_video_case, sam3_video_case, capsys):
    """The Python blocks of the docs' video section run as written, with the tiny models and
    processors in place of the ``from_pretrained`` lines and a synthetic clip as ``video``."""
    import re
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "integration-sam.md").read_text()
    section = docs[docs.index("## Video tracking") :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2
    for block, case in zip(blocks, (sam2_video_case, sam3_video_case), strict=True):
        source = re.sub(r"^model = .*from_pretrained.*$", "model = MODEL", block, flags=re.M)
        source = re.sub(r"^processor = .*from_pretrained.*$", "processor = PROCESSOR", source, flags=re.M)
        assert source.count("= MODEL") == 1 and source.count("= PROCESSOR") == 1
        video = sam_video_models.synthetic_clip(sam_video_models.CLIP_SIZES[0])
        exec(
            compile(source, "docs/integration-sam.md", "exec"),
            {"MODEL": case.model, "PROCESSOR": case.processor, "video": video},
        )
    printed = capsys.readouterr().out
    frames = range(sam_video_models.NUM_FRAMES)
    assert re.findall(r"^(\d) \[1, 2\] \[\d+, \d+\]$", printed, flags=re.M) == [str(i) for i in frames]
    assert re.findall(r"^(\d) tensor\(\[", printed, flags=re.M) == [str(i) for i in frames]
