"""``rankseg.integration.sam``: restoration equals the official transformers post-processing.

Tiny SAM, SAM-HQ, SAM2, Sam3Tracker and SAM3 models with random weights (``tests/sam_models.py``)
give real outputs for batches of two images of different sizes with three prompts each. The
restored probabilities are compared with the official post-processors called directly (the
torchvision-only SAM2/SAM3 processors through a stub import confined to ``sam_models``) and with
an in-test re-statement of the official formula (design note ``hf-postprocess.md`` section 5),
which also runs where the direct call is unavailable.

Tiny SAM logits are about 1e-4, where float32 sigmoid rounds to exactly 0.5 and ``sigmoid(x) > 0.5``
differs from the official ``x > 0``; those pixels are compared in logit space, and every model
test is repeated with the mask logits scaled by 1e4, where the binarisation is meaningful.
"""

from __future__ import annotations

import copy
import types

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from rankseg import RankSEG  # noqa: E402
from rankseg.integration import sam  # noqa: E402
from rankseg.integration.sam import Sam1, Sam2, Sam3  # noqa: E402

import sam_models  # noqa: E402

TARGETS = [tuple(s) for s in sam_models.IMAGE_SIZES]
RANKSEG_KWARGS = [None, {"metric": "iou"}, {"metric": "dice", "output_mode": "multiclass"}]


# --------------------------------------------------------------------------------------------------
# Fixtures: each tiny model is built and run once per module


@pytest.fixture(scope="module")
def sam_case():
    return sam_models.build_sam(hq=False)


@pytest.fixture(scope="module")
def sam_hq_case():
    return sam_models.build_sam(hq=True)


@pytest.fixture(scope="module")
def sam2_case():
    return sam_models.build_sam2()


@pytest.fixture(scope="module")
def sam3_tracker_case():
    return sam_models.build_sam3_tracker()


@pytest.fixture(scope="module")
def sam3_case():
    return sam_models.build_sam3()


@pytest.fixture(scope="module")
def sam2_processor():
    return sam_models.official_processor(
        "transformers.models.sam2.image_processing_sam2", "Sam2ImageProcessor"
    )


@pytest.fixture(params=["sam", "sam_hq"])
def sam1_case(request):
    return request.getfixturevalue(f"{request.param}_case")


@pytest.fixture(params=["sam2", "sam3_tracker"])
def sam2_family_case(request):
    return request.getfixturevalue(f"{request.param}_case")


def _with(outputs, **fields):
    """A copy of a model output (same class) with some fields replaced; the original is untouched."""
    if isinstance(outputs, types.SimpleNamespace):
        return types.SimpleNamespace(**{**vars(outputs), **fields})
    return type(outputs)(**{**dict(outputs), **fields})


def _require(processor):
    if processor is None:
        pytest.skip("the official processor could not be imported even with torchvision stubs")
    return processor


# --------------------------------------------------------------------------------------------------
# In-test re-statements of the official formulas (design note section 5), written independently


def reference_sam1_logits(pred_masks, original, reshaped, pad):
    """Per prompt: upsample to the pad size, keep the top-left reshaped block, resize to original."""
    out = []
    for prompt in pred_masks.float():  # (M, h, w)
        padded = F.interpolate(prompt[None], size=pad, mode="bilinear", align_corners=False)
        cropped = padded[:, :, : reshaped[0], : reshaped[1]]
        out.append(F.interpolate(cropped, size=original, mode="bilinear", align_corners=False)[0])
    return torch.stack(out)


def reference_sam2_logits(pred_masks, original, non_overlap):
    """Per prompt: resize to the original size; then, optionally, every prompt that is not the
    pixel's largest logit is clamped to at most -10."""
    resized = torch.stack(
        [
            F.interpolate(p[None], size=original, mode="bilinear", align_corners=False)[0]
            for p in pred_masks.float()
        ]
    )
    if non_overlap and resized.shape[0] > 1:
        best = resized.max(dim=0).indices
        for p in range(resized.shape[0]):
            loser = best != p
            resized[p][loser] = torch.minimum(resized[p][loser], torch.tensor(-10.0))
    return resized


def reference_sam3_instances(outputs, threshold, targets):
    pred_logits, boxes = outputs.pred_logits.float(), outputs.pred_boxes.float()
    results = []
    for i in range(pred_logits.shape[0]):
        scores = torch.sigmoid(pred_logits[i])
        if outputs.presence_logits is not None:
            scores = scores * torch.sigmoid(outputs.presence_logits[i].float())
        keep = scores > threshold
        image_boxes = boxes[i]
        probs = torch.sigmoid(outputs.pred_masks[i].float())[keep]
        if targets is not None:
            h, w = targets[i]
            image_boxes = image_boxes * torch.tensor([w, h, w, h], dtype=torch.float32)
            probs = F.interpolate(probs[None], size=targets[i], mode="bilinear", align_corners=False)[0]
        results.append({"scores": scores[keep], "boxes": image_boxes[keep], "mask_probs": probs})
    return results


def assert_binarisation_matches(probs, official_masks, official_logits):
    """``probs > 0.5`` equals the official ``logit > 0`` except where float32 sigmoid rounds the
    logit to exactly 0.5; there, the official logit must be that tiny (compared in logit space)."""
    assert probs.shape == official_masks.shape
    ours = probs > 0.5
    tie = probs == 0.5
    assert torch.equal(ours[~tie], official_masks[~tie])
    # 1 / (1 + exp(-x)) is exactly 0.5 in float32 once |x| is a few float32 epsilons
    assert torch.all(official_logits[tie].abs() < 4 * torch.finfo(torch.float32).eps)
    assert torch.equal(official_masks, official_logits > 0)


# --------------------------------------------------------------------------------------------------
# SAM / SAM-HQ


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_sam1_restoration_equals_official_post_process_masks(sam1_case, scale):
    outputs = _with(sam1_case.outputs, pred_masks=sam1_case.outputs.pred_masks * scale)
    processor = sam1_case.processor
    adapter = Sam1(pad_size=processor.pad_size)
    probs = adapter.restore_mask_probs(outputs, sam1_case.original_sizes, sam1_case.reshaped_input_sizes)

    official = processor.post_process_masks(
        outputs.pred_masks, sam1_case.original_sizes, sam1_case.reshaped_input_sizes
    )
    official_logits = processor.post_process_masks(
        outputs.pred_masks, sam1_case.original_sizes, sam1_case.reshaped_input_sizes, binarize=False
    )
    for i, (h, w) in enumerate(TARGETS):
        assert probs[i].shape == (3, 3, h, w) and probs[i].dtype == torch.float32
        torch.testing.assert_close(probs[i], torch.sigmoid(official_logits[i]), rtol=0, atol=0)
        assert_binarisation_matches(probs[i], official[i], official_logits[i])
        reshaped = tuple(sam1_case.reshaped_input_sizes[i].tolist())
        reference = reference_sam1_logits(outputs.pred_masks[i], (h, w), reshaped, (128, 128))
        torch.testing.assert_close(probs[i], torch.sigmoid(reference), rtol=0, atol=1e-6)
    if scale > 1:  # the scaled logits make the masks non-trivial
        assert 0.05 < torch.cat([p.flatten() for p in probs]).gt(0.5).float().mean() < 0.95


def test_sam1_accepts_sizes_as_tensors_lists_or_one_pair(sam_case):
    adapter = Sam1(pad_size={"height": 128, "width": 128})
    from_tensors = adapter.restore_mask_probs(
        sam_case.outputs, sam_case.original_sizes, sam_case.reshaped_input_sizes
    )
    from_lists = adapter.restore_mask_probs(
        sam_case.outputs,
        original_sizes=sam_case.original_sizes.tolist(),
        reshaped_input_sizes=[tuple(s) for s in sam_case.reshaped_input_sizes.tolist()],
    )
    for a, b in zip(from_tensors, from_lists, strict=True):
        assert torch.equal(a, b)
    # one image, one pair (tuple, or a (2,) tensor); pad_size as a pair or an int means the same
    single = _with(sam_case.outputs, pred_masks=sam_case.outputs.pred_masks[1:])
    one = Sam1(pad_size=(128, 128)).restore_mask_probs(
        single, original_sizes=(70, 50), reshaped_input_sizes=sam_case.reshaped_input_sizes[1]
    )
    also = Sam1(pad_size=128).restore_mask_probs(single, [(70, 50)], [[128, 91]])
    assert len(one) == 1 and torch.equal(one[0], from_tensors[1]) and torch.equal(also[0], one[0])


def test_sam1_removes_the_padding_before_resizing():
    """Large synthetic logits: the un-padded restoration equals the official one and differs
    clearly from a naive resize of the whole padded map."""
    from transformers.models.sam.modeling_sam import SamImageSegmentationOutput

    torch.manual_seed(10)
    pred_masks = torch.randn(2, 2, 3, 16, 16) * 20
    outputs = SamImageSegmentationOutput(iou_scores=torch.rand(2, 2, 3), pred_masks=pred_masks)
    originals, reshaped = [(30, 48), (50, 31)], [(40, 64), (64, 40)]
    processor = transformers.SamImageProcessor(pad_size={"height": 64, "width": 64})

    probs = Sam1(pad_size=64).restore_mask_probs(outputs, originals, reshaped)
    official = processor.post_process_masks(pred_masks, originals, reshaped)
    official_logits = processor.post_process_masks(pred_masks, originals, reshaped, binarize=False)
    for i in range(2):
        assert_binarisation_matches(probs[i], official[i], official_logits[i])
        reference = reference_sam1_logits(pred_masks[i], originals[i], reshaped[i], (64, 64))
        torch.testing.assert_close(probs[i], torch.sigmoid(reference), rtol=0, atol=1e-6)
        naive = F.interpolate(pred_masks[i], size=originals[i], mode="bilinear", align_corners=False) > 0
        assert (naive != official[i]).float().mean() > 0.1  # the crop matters


def test_sam1_default_pad_size_is_the_processor_default_1024():
    torch.manual_seed(11)
    outputs = types.SimpleNamespace(
        pred_masks=torch.randn(1, 2, 1, 8, 8) * 10, iou_scores=torch.rand(1, 2, 1)
    )
    probs = Sam1().restore_mask_probs(outputs, original_sizes=(30, 40), reshaped_input_sizes=(768, 1024))
    official = transformers.SamImageProcessor().post_process_masks(
        outputs.pred_masks, [(30, 40)], [(768, 1024)], binarize=False
    )
    torch.testing.assert_close(probs[0], torch.sigmoid(official[0]), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# SAM2 / Sam3Tracker / EdgeTAM


@pytest.mark.parametrize("non_overlap", [False, True])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_sam2_family_restoration_equals_official_post_process_masks(sam2_family_case, non_overlap, scale):
    """Sam2Model (Sam2ImageProcessor) and Sam3TrackerModel (Sam3ImageProcessor)."""
    outputs = _with(sam2_family_case.outputs, pred_masks=sam2_family_case.outputs.pred_masks * scale)
    probs = Sam2(apply_non_overlapping_constraints=non_overlap).restore_mask_probs(
        outputs, original_sizes=sam2_family_case.original_sizes
    )
    for i, size in enumerate(TARGETS):
        assert probs[i].shape == (3, 3, *size) and probs[i].dtype == torch.float32
        reference = reference_sam2_logits(outputs.pred_masks[i], size, non_overlap)
        torch.testing.assert_close(probs[i], torch.sigmoid(reference), rtol=0, atol=1e-6)

    processor = _require(sam2_family_case.processor)
    kwargs = dict(apply_non_overlapping_constraints=non_overlap)
    official = processor.post_process_masks(outputs.pred_masks, sam2_family_case.original_sizes, **kwargs)
    official_logits = processor.post_process_masks(
        outputs.pred_masks, sam2_family_case.original_sizes, binarize=False, **kwargs
    )
    for i in range(2):
        torch.testing.assert_close(probs[i], torch.sigmoid(official_logits[i]), rtol=0, atol=0)
        assert_binarisation_matches(probs[i], official[i], official_logits[i])


def test_sam2_non_overlap_step_on_large_logits(sam2_processor):
    """Synthetic logits: with the constraint at most one prompt is above sigmoid(-10) per pixel,
    the result equals the official one, and the step changes the masks."""
    from transformers.models.sam2.modeling_sam2 import Sam2ImageSegmentationOutput

    torch.manual_seed(12)
    pred_masks = torch.randn(2, 4, 2, 16, 16) * 20
    outputs = Sam2ImageSegmentationOutput(
        iou_scores=torch.rand(2, 4, 2), pred_masks=pred_masks, object_score_logits=torch.randn(2, 4, 1)
    )
    sizes = [(30, 45), (41, 23)]
    plain = Sam2().restore_mask_probs(outputs, sizes)
    constrained = Sam2(apply_non_overlapping_constraints=True).restore_mask_probs(outputs, sizes)
    for i in range(2):
        above = constrained[i] > torch.sigmoid(torch.tensor(-10.0)) + 1e-7
        assert above.sum(dim=0).max() <= 1
        assert ((plain[i] > 0.5) != (constrained[i] > 0.5)).any()
        reference = reference_sam2_logits(pred_masks[i], sizes[i], non_overlap=True)
        torch.testing.assert_close(constrained[i], torch.sigmoid(reference), rtol=0, atol=1e-6)

    processor = _require(sam2_processor)
    official = processor.post_process_masks(pred_masks, sizes, apply_non_overlapping_constraints=True)
    official_logits = processor.post_process_masks(
        pred_masks, sizes, binarize=False, apply_non_overlapping_constraints=True
    )
    for i in range(2):
        assert_binarisation_matches(constrained[i], official[i], official_logits[i])


def test_edgetam_outputs_go_through_sam2(sam2_case, sam2_processor):
    """EdgeTamModel cannot be built here (its backbone needs timm, which needs torchvision), so an
    object of a class named ``EdgeTamImageSegmentationOutput`` carries a Sam2 output's fields; EdgeTAM
    uses Sam2Processor, so the official reference is ``Sam2ImageProcessor.post_process_masks``."""
    edgetam_output = type("EdgeTamImageSegmentationOutput", (), {})
    outputs = edgetam_output()
    for name in ("iou_scores", "pred_masks", "object_score_logits"):
        setattr(outputs, name, getattr(sam2_case.outputs, name))
    outputs.pred_masks = outputs.pred_masks * 1e4

    probs = Sam2().restore_mask_probs(outputs, TARGETS)
    for i, size in enumerate(TARGETS):
        torch.testing.assert_close(
            probs[i],
            torch.sigmoid(reference_sam2_logits(outputs.pred_masks[i], size, False)),
            rtol=0,
            atol=1e-6,
        )
    with pytest.raises(
        ValueError, match=r"Sam1 got EdgeTamImageSegmentationOutput.*use rankseg\.integration\.sam\.Sam2"
    ):
        Sam1().restore_mask_probs(outputs, TARGETS, TARGETS)

    official_logits = _require(sam2_processor).post_process_masks(outputs.pred_masks, TARGETS, binarize=False)
    for i in range(2):
        torch.testing.assert_close(probs[i], torch.sigmoid(official_logits[i]), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# SAM3


def _mixed_threshold(outputs):
    """A threshold that keeps some queries and drops others (tiny-model scores are all near 0.25)."""
    scores = (torch.sigmoid(outputs.pred_logits) * torch.sigmoid(outputs.presence_logits)).flatten()
    threshold = scores.median().item()
    kept = scores > threshold
    assert kept.any() and not kept.all()
    return threshold


@pytest.mark.parametrize("targets", [TARGETS, "tensor", None])
@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_sam3_instances_equal_official_post_process_instance_segmentation(sam3_case, targets, scale):
    outputs = _with(sam3_case.outputs, pred_masks=sam3_case.outputs.pred_masks * scale)
    if isinstance(targets, str):
        targets = sam3_case.original_sizes
    threshold = _mixed_threshold(outputs)
    restored = Sam3(threshold=threshold).restore_instance_mask_probs(outputs, target_sizes=targets)
    as_list = None if targets is None else [tuple(t) for t in torch.as_tensor(targets).tolist()]
    reference = reference_sam3_instances(outputs, threshold, as_list)
    for ours, ref in zip(restored, reference, strict=True):
        assert set(ours) == {"scores", "boxes", "mask_probs"}
        k = ref["scores"].shape[0]
        h, w = (32, 32) if targets is None else ref["mask_probs"].shape[-2:]
        assert ours["mask_probs"].shape == (k, h, w) and ours["boxes"].shape == (k, 4)
        for key in ours:
            torch.testing.assert_close(ours[key], ref[key], rtol=0, atol=1e-6)

    processor = _require(sam3_case.processor)
    official = processor.post_process_instance_segmentation(
        outputs, threshold=threshold, target_sizes=as_list
    )
    for ours, off in zip(restored, official, strict=True):
        torch.testing.assert_close(ours["scores"], off["scores"], rtol=0, atol=0)
        torch.testing.assert_close(ours["boxes"], off["boxes"], rtol=0, atol=0)
        assert torch.equal((ours["mask_probs"] > 0.5).long(), off["masks"])  # both threshold probabilities


def test_sam3_scores_without_presence_logits_are_the_query_sigmoid(sam3_case):
    outputs = _with(sam3_case.outputs, presence_logits=None, pred_logits=sam3_case.outputs.pred_logits * 50)
    restored = Sam3(threshold=0.5).restore_instance_mask_probs(outputs, TARGETS)
    for i, result in enumerate(restored):
        scores = torch.sigmoid(outputs.pred_logits[i])
        torch.testing.assert_close(result["scores"], scores[scores > 0.5], rtol=0, atol=0)
    assert sum(r["scores"].numel() for r in restored) > 0
    if sam3_case.processor is not None:
        official = sam3_case.processor.post_process_instance_segmentation(
            outputs, threshold=0.5, target_sizes=TARGETS
        )
        for ours, off in zip(restored, official, strict=True):
            torch.testing.assert_close(ours["scores"], off["scores"], rtol=0, atol=0)
            torch.testing.assert_close(ours["boxes"], off["boxes"], rtol=0, atol=0)


@pytest.mark.parametrize("targets", [TARGETS, None])
def test_sam3_semantic_equals_official_post_process_semantic_segmentation(sam3_case, targets):
    outputs = _with(sam3_case.outputs, semantic_seg=sam3_case.outputs.semantic_seg * 1e3)
    probs = Sam3().restore_semantic_mask_probs(outputs, target_sizes=targets)
    for i, p in enumerate(probs):
        size = (32, 32) if targets is None else targets[i]
        reference = torch.sigmoid(outputs.semantic_seg[i].float())
        if targets is not None:  # sigmoid first, then resize in probability space
            reference = F.interpolate(reference[None], size=size, mode="bilinear", align_corners=False)[0]
        assert p.shape == (1, *size) and p.dtype == torch.float32
        torch.testing.assert_close(p, reference, rtol=0, atol=1e-6)

    processor = _require(sam3_case.processor)
    official = processor.post_process_semantic_segmentation(
        outputs, target_sizes=targets, return_segmentation_scores=True
    )
    for p, off in zip(probs, official, strict=True):
        torch.testing.assert_close(p, off.segmentation_scores, rtol=0, atol=0)
        assert torch.equal((p[0] > 0.5).long(), off.segmentation)
        assert 0 < off.segmentation.sum() < off.segmentation.numel()


def test_sam3_empty_instance_selection_gives_empty_tensors(sam3_case):
    adapter = Sam3(threshold=1.0)  # scores are products of sigmoids: never above 1
    for targets in (TARGETS, None):
        restored = adapter.restore_instance_mask_probs(sam3_case.outputs, target_sizes=targets)
        masks = adapter.postprocess_instance(sam3_case.outputs, target_sizes=targets)
        for i, (ours, post) in enumerate(zip(restored, masks, strict=True)):
            size = (32, 32) if targets is None else targets[i]  # model resolution without targets
            assert ours["scores"].shape == (0,) and ours["boxes"].shape == (0, 4)
            assert ours["mask_probs"].shape == (0, *size) and ours["mask_probs"].dtype == torch.float32
            assert post["masks"].shape == (0, *size) and post["masks"].dtype == torch.bool
            assert post["scores"].shape == (0,) and post["boxes"].shape == (0, 4)


# --------------------------------------------------------------------------------------------------
# postprocess == RankSEG applied to the restored probabilities


def _synthetic_prompt_logits(seed, shape):
    """Smooth logits of moderate size, so that RankSEG and the 0.5 threshold disagree somewhere."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(*shape[:-2], 4, 4, generator=generator) * 3
    b, p, m = shape[:3]
    return F.interpolate(coarse.view(b * p, m, 4, 4), size=shape[-2:], mode="bilinear").view(shape)


@pytest.mark.parametrize("rankseg_kwargs", RANKSEG_KWARGS)
def test_sam1_and_sam2_postprocess_is_rankseg_on_restored_probs(rankseg_kwargs):
    from transformers.models.sam.modeling_sam import SamImageSegmentationOutput

    pred_masks = _synthetic_prompt_logits(20, (2, 2, 3, 16, 16))
    sam1_outputs = SamImageSegmentationOutput(iou_scores=torch.rand(2, 2, 3), pred_masks=pred_masks)
    sam2_outputs = types.SimpleNamespace(
        pred_masks=pred_masks, iou_scores=torch.rand(2, 2, 3), object_score_logits=torch.zeros(2, 2, 1)
    )
    sizes, reshaped = [(30, 48), (50, 31)], [(40, 64), (64, 40)]
    predictor = RankSEG(**{"output_mode": "multilabel", **(rankseg_kwargs or {})})
    multiclass = predictor.output_mode == "multiclass"
    cases = [
        (Sam1(rankseg_kwargs, pad_size=64), sam1_outputs, (sizes, reshaped)),
        (Sam2(rankseg_kwargs, apply_non_overlapping_constraints=True), sam2_outputs, (sizes,)),
    ]
    for adapter, outputs, args in cases:
        probs = adapter.restore_mask_probs(outputs, *args)
        masks = adapter.postprocess(outputs, *args)
        changed = False
        for i, (h, w) in enumerate(sizes):
            expected = predictor(probs[i])  # the (P, M, H, W) tensor read as (batch=P, classes=M)
            assert torch.equal(masks[i], expected)
            if multiclass:
                assert masks[i].shape == (2, h, w) and masks[i].dtype == torch.int64
                changed |= bool((masks[i] != probs[i].argmax(1)).any())
            else:
                assert masks[i].shape == (2, 3, h, w) and masks[i].dtype == torch.bool
                changed |= bool((masks[i] != (probs[i] > 0.5)).any())
        assert changed, "RankSEG should differ from the plain decision on these maps"


@pytest.mark.parametrize("rankseg_kwargs", RANKSEG_KWARGS[:2])
def test_sam3_postprocess_is_rankseg_on_restored_probs(sam3_case, rankseg_kwargs):
    outputs = _with(
        sam3_case.outputs,
        pred_masks=sam3_case.outputs.pred_masks * 2e4,
        semantic_seg=sam3_case.outputs.semantic_seg * 1e3,
    )
    adapter = Sam3(rankseg_kwargs, threshold=_mixed_threshold(outputs))
    predictor = RankSEG(**{"output_mode": "multilabel", **(rankseg_kwargs or {})})
    restored = adapter.restore_instance_mask_probs(outputs, TARGETS)
    results = adapter.postprocess_instance(outputs, TARGETS)
    for ours, post in zip(restored, results, strict=True):
        assert set(post) == {"scores", "boxes", "masks"}
        assert torch.equal(post["scores"], ours["scores"]) and torch.equal(post["boxes"], ours["boxes"])
        expected = predictor(ours["mask_probs"][:, None])[:, 0]  # each instance its own binary map
        assert torch.equal(post["masks"], expected) and post["masks"].dtype == torch.bool
    semantic = adapter.restore_semantic_mask_probs(outputs, TARGETS)
    for p, mask, size in zip(semantic, adapter.postprocess_semantic(outputs, TARGETS), TARGETS, strict=True):
        assert mask.shape == size and torch.equal(mask, predictor(p[None])[0, 0])


def test_sam3_multiclass_instances_are_refused_by_rankseg(sam3_case):
    """Instances are independent binary maps (one channel each): multiclass has nothing to choose."""
    with pytest.raises(ValueError, match="output_mode='multilabel'"):
        Sam3({"output_mode": "multiclass"}, threshold=0.0).postprocess_instance(sam3_case.outputs, TARGETS)


def test_tiny_model_postprocess_is_rankseg_on_restored_probs(sam_case, sam3_tracker_case):
    """The real output classes through the whole path (default multilabel)."""
    predictor = RankSEG(output_mode="multilabel")
    adapter = Sam1(pad_size=128)
    args = (sam_case.original_sizes, sam_case.reshaped_input_sizes)
    restored, masks = (
        adapter.restore_mask_probs(sam_case.outputs, *args),
        adapter.postprocess(sam_case.outputs, *args),
    )
    for p, m in zip(restored, masks, strict=True):
        assert torch.equal(m, predictor(p))
    outputs = _with(sam3_tracker_case.outputs, pred_masks=sam3_tracker_case.outputs.pred_masks * 1e4)
    restored, masks = Sam2().restore_mask_probs(outputs, TARGETS), Sam2().postprocess(outputs, TARGETS)
    for p, m in zip(restored, masks, strict=True):
        assert torch.equal(m, predictor(p)) and m.shape == p.shape


# --------------------------------------------------------------------------------------------------
# dtype, devices, inputs untouched


def test_half_precision_outputs_are_restored_in_float32(sam2_case):
    half = _with(sam2_case.outputs, pred_masks=(sam2_case.outputs.pred_masks * 1e4).half())
    as_float = _with(half, pred_masks=half.pred_masks.float())
    restored, expected = (
        Sam2().restore_mask_probs(half, TARGETS),
        Sam2().restore_mask_probs(as_float, TARGETS),
    )
    for a, b in zip(restored, expected, strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, b)
    sam3_half = types.SimpleNamespace(
        pred_masks=torch.randn(1, 3, 8, 8, dtype=torch.bfloat16),
        pred_boxes=torch.rand(1, 3, 4, dtype=torch.bfloat16),
        pred_logits=torch.randn(1, 3, dtype=torch.bfloat16),
        presence_logits=None,
    )
    result = Sam3(threshold=0.0).restore_instance_mask_probs(sam3_half, (16, 16))[0]
    assert all(v.dtype == torch.float32 for v in result.values())


def test_inputs_are_not_modified(sam3_case):
    torch.manual_seed(13)
    sam2_outputs = types.SimpleNamespace(
        pred_masks=torch.randn(2, 3, 1, 8, 8) * 20, iou_scores=torch.rand(2, 3, 1), object_score_logits=None
    )
    sizes = torch.tensor([[20, 30], [12, 9]])
    before = (copy.deepcopy(sam2_outputs), sizes.clone(), copy.deepcopy(dict(sam3_case.outputs)))
    Sam2(apply_non_overlapping_constraints=True).postprocess(sam2_outputs, sizes)
    Sam1(pad_size=32).postprocess(sam2_outputs, sizes, [(32, 32), (32, 24)])
    Sam3(threshold=0.0).postprocess_instance(sam3_case.outputs, sizes)
    Sam3().postprocess_semantic(sam3_case.outputs, sizes)
    assert torch.equal(sam2_outputs.pred_masks, before[0].pred_masks) and torch.equal(sizes, before[1])
    for key, value in before[2].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(sam3_case.outputs[key], value)


def test_restoration_stays_on_the_outputs_device(device):
    torch.manual_seed(14)
    cpu = types.SimpleNamespace(pred_masks=torch.randn(1, 2, 3, 8, 8) * 5, iou_scores=torch.rand(1, 2, 3))
    moved = types.SimpleNamespace(pred_masks=cpu.pred_masks.to(device), iou_scores=cpu.iou_scores.to(device))
    probs = Sam1(pad_size=32).restore_mask_probs(moved, (20, 30), (21, 32))[0]
    masks = Sam1(pad_size=32).postprocess(moved, (20, 30), (21, 32))[0]
    assert probs.device.type == device.type and masks.device.type == device.type
    expected = Sam1(pad_size=32).restore_mask_probs(cpu, (20, 30), (21, 32))[0]
    torch.testing.assert_close(probs.cpu(), expected, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Errors: wrong family, semantic outputs, video, malformed arguments


def test_an_output_of_another_family_names_the_adapter_to_use(sam_case, sam2_case, sam3_case):
    with pytest.raises(ValueError, match=r"Sam1 got Sam3ImageSegmentationOutput.*sam\.Sam3 for it"):
        Sam1().restore_mask_probs(sam3_case.outputs, TARGETS, TARGETS)
    with pytest.raises(ValueError, match=r"Sam2 got Sam3ImageSegmentationOutput.*sam\.Sam3"):
        Sam2().postprocess(sam3_case.outputs, TARGETS)
    with pytest.raises(ValueError, match=r"Sam2 got SamImageSegmentationOutput.*sam\.Sam1 for it"):
        Sam2().restore_mask_probs(sam_case.outputs, TARGETS)
    with pytest.raises(ValueError, match=r"Sam1 got Sam2ImageSegmentationOutput.*sam\.Sam2 for it"):
        Sam1().postprocess(sam2_case.outputs, TARGETS, TARGETS)
    with pytest.raises(ValueError, match=r"Sam3 got Sam2ImageSegmentationOutput.*sam\.Sam2 for it"):
        Sam3().restore_instance_mask_probs(sam2_case.outputs, TARGETS)
    anonymous = types.SimpleNamespace(pred_masks=torch.zeros(1, 1, 1, 4, 4), iou_scores=torch.zeros(1, 1, 1))
    with pytest.raises(ValueError, match=r"Sam3 got SimpleNamespace, a prompt-mask output.*Sam1.*Sam2"):
        Sam3().restore_semantic_mask_probs(anonymous)


@pytest.mark.parametrize(
    "outputs",
    [
        transformers.modeling_outputs.SemanticSegmenterOutput(logits=torch.zeros(2, 4, 8, 8)),
        types.SimpleNamespace(
            class_queries_logits=torch.zeros(2, 5, 5), masks_queries_logits=torch.zeros(2, 5, 8, 8)
        ),
        {"logits": torch.zeros(2, 8, 8)},  # CLIPSeg-like
    ],
    ids=["segformer", "maskformer", "clipseg-dict"],
)
def test_semantic_outputs_point_to_the_transformers_adapter(outputs):
    for call in (
        lambda: Sam1().restore_mask_probs(outputs, TARGETS, TARGETS),
        lambda: Sam2().postprocess(outputs, TARGETS),
        lambda: Sam3().postprocess_semantic(outputs, TARGETS),
    ):
        with pytest.raises(
            ValueError, match=r"semantic/universal segmentation.*rankseg\.integration\.transformers"
        ):
            call()


def test_tensors_and_tuples_are_refused_with_a_hint(sam2_case):
    with pytest.raises(
        TypeError, match=r"not a tensor; got a Tensor of shape \(2, 3, 3, 32, 32\).*outputs\.pred_masks"
    ):
        Sam2().restore_mask_probs(sam2_case.outputs.pred_masks, TARGETS)
    with pytest.raises(TypeError, match=r"got a tuple.*return_dict=True"):
        Sam2().restore_mask_probs(sam2_case.outputs.to_tuple(), TARGETS)


def test_unrecognised_outputs_list_what_is_expected():
    with pytest.raises(
        ValueError,
        match=r"Sam1 needs a SamImageSegmentationOutput.*got SimpleNamespace with fields \['masks'\]",
    ):
        Sam1().restore_mask_probs(types.SimpleNamespace(masks=torch.zeros(1, 4, 4)), [(4, 4)], [(4, 4)])


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda o: Sam2().restore_mask_probs(o, [(8, 8)]),
            ValueError,
            r"original_sizes .* 2 expected, got 1",
        ),
        (lambda o: Sam2().restore_mask_probs(o, [(8, 8), (0, 3)]), ValueError, r"original_sizes .*positive"),
        (lambda o: Sam2().restore_mask_probs(o, "8x8"), ValueError, r"original_sizes must be .* got str"),
        (
            lambda o: Sam1(pad_size=16).restore_mask_probs(o, [(8, 8)] * 2, [(16, 20)] * 2),
            ValueError,
            r"reshaped_input_sizes must fit inside pad_size \(16, 16\); got \(16, 20\)",
        ),
        (
            lambda o: Sam1(pad_size={"h": 16}).restore_mask_probs(o, [(8, 8)] * 2, [(8, 8)] * 2),
            ValueError,
            r"pad_size as a dict needs 'height' and 'width' keys; got \{'h': 16\}",
        ),
        (
            lambda o: Sam1(pad_size=(16, 16, 3)).restore_mask_probs(o, [(8, 8)] * 2, [(8, 8)] * 2),
            ValueError,
            r"pad_size must hold \(height, width\) pairs",
        ),
        (
            lambda o: Sam2(["metric", "iou"]).postprocess(o, [(8, 8)] * 2),
            TypeError,
            r"rankseg_kwargs must be a dict of RankSEG arguments; got list",
        ),
        (
            lambda o: Sam2(apply_non_overlapping_constraints="yes").restore_mask_probs(o, [(8, 8)] * 2),
            TypeError,
            r"apply_non_overlapping_constraints must be True or False; got 'yes'",
        ),
        (
            lambda o: Sam2({"metric": "hausdorff"}).postprocess(o, [(8, 8)] * 2),
            ValueError,
            r"metric must be one of",
        ),
    ],
)
def test_bad_arguments_name_the_argument_and_the_value(call, error, match):
    outputs = types.SimpleNamespace(pred_masks=torch.zeros(2, 1, 1, 4, 4), iou_scores=torch.zeros(2, 1, 1))
    with pytest.raises(error, match=match):
        call(outputs)


def test_bad_fields_name_the_field_and_the_shape(sam3_case):
    with pytest.raises(ValueError, match=r"outputs\.pred_masks must have shape \(batch, point_batch"):
        Sam2().restore_mask_probs(
            type("Sam2ImageSegmentationOutput", (), {"pred_masks": torch.zeros(2, 3, 8, 8)})(), TARGETS
        )
    with pytest.raises(
        TypeError, match=r"outputs\.pred_masks must be a floating-point torch\.Tensor .* got list"
    ):
        Sam2().restore_mask_probs(type("Sam2ImageSegmentationOutput", (), {"pred_masks": [[0.0]]})(), TARGETS)
    with pytest.raises(ValueError, match=r"outputs\.semantic_seg is required.*without it"):
        Sam3().restore_semantic_mask_probs(_with(sam3_case.outputs, semantic_seg=None), TARGETS)
    with pytest.raises(ValueError, match=r"outputs\.presence_logits must have shape \(2, 1\); got \(2, 5\)"):
        Sam3().restore_instance_mask_probs(
            _with(sam3_case.outputs, presence_logits=torch.zeros(2, 5)), TARGETS
        )
    with pytest.raises(ValueError, match=r"pred_boxes and outputs\.pred_logits must match"):
        Sam3().restore_instance_mask_probs(_with(sam3_case.outputs, pred_boxes=torch.zeros(2, 4, 4)), TARGETS)
    with pytest.raises(
        ValueError, match=r"target_sizes must give one \(height, width\) per image: 2 expected"
    ):
        Sam3().restore_instance_mask_probs(sam3_case.outputs, (48, 80))
    with pytest.raises(TypeError, match=r"threshold must be a real number .* got '0\.3'"):
        Sam3(threshold="0.3").restore_instance_mask_probs(sam3_case.outputs, TARGETS)
    with pytest.raises(ValueError, match=r"threshold must be a real number .* got nan"):
        Sam3(threshold=float("nan")).postprocess_instance(sam3_case.outputs, TARGETS)


def test_constructors_store_arguments_untouched_and_repr():
    kwargs = {"metric": "IoU"}
    adapter = Sam1(kwargs, pad_size={"height": 64, "width": 64})
    assert adapter.rankseg_kwargs is kwargs and adapter.pad_size == {"height": 64, "width": 64}
    assert repr(Sam2(apply_non_overlapping_constraints=True)) == (
        "Sam2(rankseg_kwargs=None, apply_non_overlapping_constraints=True)"
    )
    assert repr(Sam3(threshold=0.5)) == "Sam3(rankseg_kwargs=None, threshold=0.5)"
    assert sam.__all__ == ["Sam1", "Sam2", "Sam3"]


def test_the_example_runs(monkeypatch, capsys):
    import runpy
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "sam_prompt_masks.py"
    monkeypatch.setattr("sys.argv", [str(example)])
    runpy.run_path(str(example), run_name="__main__")
    out = capsys.readouterr().out
    assert "probabilities [(3, 3, 480, 640), (3, 3, 600, 400)]" in out
    assert "RankSEG changed" in out and "RankSEG changed 0 of" not in out


def test_importing_the_sam_adapters_does_not_import_transformers():
    import subprocess
    import sys

    code = "import sys; from rankseg.integration import sam; sam.Sam1; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
