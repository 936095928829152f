"""``rankseg.integration.sam``: restoration equals the official transformers post-processing.

Tiny SAM, SAM-HQ, SAM2, EdgeTAM, Sam3Tracker and SAM3 models with random weights
(``tests/sam_models.py``) give real outputs for batches of two images of different sizes with three
prompts each, prepared by the official processors. The restored probabilities are compared with
the official post-processors called directly (``SamImageProcessor``, and the torchvision-only
``Sam2ImageProcessor`` and ``Sam3ImageProcessor``).

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
from hypothesis import given
from hypothesis import strategies as st

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
def edgetam_case():
    pytest.importorskip("timm")  # EdgeTAM's backbone is a timm model
    return sam_models.build_edgetam()


@pytest.fixture(scope="module")
def sam3_tracker_case():
    return sam_models.build_sam3_tracker()


@pytest.fixture(scope="module")
def sam3_case():
    return sam_models.build_sam3()


@pytest.fixture(scope="module")
def sam2_processor():
    return transformers.Sam2ImageProcessor()


@pytest.fixture(params=["sam", "sam_hq"])
def sam1_case(request):
    return request.getfixturevalue(f"{request.param}_case")


@pytest.fixture(params=["sam2", "edgetam", "sam3_tracker"])
def sam2_family_case(request):
    return request.getfixturevalue(f"{request.param}_case")


def _with(outputs, **fields):
    """A copy of a model output (same class) with some fields replaced; the original is untouched."""
    if isinstance(outputs, types.SimpleNamespace):
        return types.SimpleNamespace(**{**vars(outputs), **fields})
    return type(outputs)(**{**dict(outputs), **fields})


# --------------------------------------------------------------------------------------------------
# Comparison helper


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
        torch.testing.assert_close(probs[i], torch.sigmoid(official_logits[i]), rtol=0, atol=0)
        assert_binarisation_matches(probs[i], official[i], official_logits[i])
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
    """Sam2Model and EdgeTamModel (Sam2ImageProcessor), Sam3TrackerModel (Sam3ImageProcessor)."""
    outputs = _with(sam2_family_case.outputs, pred_masks=sam2_family_case.outputs.pred_masks * scale)
    probs = Sam2(apply_non_overlapping_constraints=non_overlap).restore_mask_probs(
        outputs, original_sizes=sam2_family_case.original_sizes
    )
    processor = sam2_family_case.processor
    kwargs = dict(apply_non_overlapping_constraints=non_overlap)
    official = processor.post_process_masks(outputs.pred_masks, sam2_family_case.original_sizes, **kwargs)
    official_logits = processor.post_process_masks(
        outputs.pred_masks, sam2_family_case.original_sizes, binarize=False, **kwargs
    )
    for i, size in enumerate(TARGETS):
        assert probs[i].shape == (3, 3, *size) and probs[i].dtype == torch.float32
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

    official = sam2_processor.post_process_masks(pred_masks, sizes, apply_non_overlapping_constraints=True)
    official_logits = sam2_processor.post_process_masks(
        pred_masks, sizes, binarize=False, apply_non_overlapping_constraints=True
    )
    for i in range(2):
        torch.testing.assert_close(constrained[i], torch.sigmoid(official_logits[i]), rtol=0, atol=0)
        assert_binarisation_matches(constrained[i], official[i], official_logits[i])


def test_a_real_edgetam_output_goes_through_sam2_only(edgetam_case):
    """EdgeTamModel's own output class (its real backbone, random weights) is a Sam2 output."""
    assert type(edgetam_case.outputs).__name__ == "EdgeTamImageSegmentationOutput"
    assert len(Sam2().postprocess(edgetam_case.outputs, edgetam_case.original_sizes)) == 2
    with pytest.raises(
        ValueError, match=r"Sam1 got EdgeTamImageSegmentationOutput.*use rankseg\.integration\.sam\.Sam2"
    ):
        Sam1().restore_mask_probs(edgetam_case.outputs, TARGETS, TARGETS)


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
    """Scores and boxes equal the official ones; the official code returns only binary masks, so
    the mask probabilities are compared with official masks at thresholds spread over their range."""
    outputs = _with(sam3_case.outputs, pred_masks=sam3_case.outputs.pred_masks * scale)
    if isinstance(targets, str):
        targets = sam3_case.original_sizes
    threshold = _mixed_threshold(outputs)
    restored = Sam3(threshold=threshold).restore_instance_mask_probs(outputs, target_sizes=targets)
    as_list = None if targets is None else [tuple(t) for t in torch.as_tensor(targets).tolist()]
    all_probs = torch.cat([r["mask_probs"].flatten() for r in restored])
    levels = [0.5, *all_probs.quantile(torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])).tolist()]
    for level in levels:
        official = sam3_case.processor.post_process_instance_segmentation(
            outputs, threshold=threshold, mask_threshold=level, target_sizes=as_list
        )
        for i, (ours, off) in enumerate(zip(restored, official, strict=True)):
            assert set(ours) == {"scores", "boxes", "mask_probs"}
            k = off["scores"].shape[0]
            size = (32, 32) if targets is None else as_list[i]  # model resolution without targets
            assert ours["mask_probs"].shape == (k, *size) and ours["boxes"].shape == (k, 4)
            torch.testing.assert_close(ours["scores"], off["scores"], rtol=0, atol=0)
            torch.testing.assert_close(ours["boxes"], off["boxes"], rtol=0, atol=0)
            assert torch.equal((ours["mask_probs"] > level).long(), off["masks"])


def test_sam3_scores_without_presence_logits_are_the_query_sigmoid(sam3_case):
    outputs = _with(sam3_case.outputs, presence_logits=None, pred_logits=sam3_case.outputs.pred_logits * 50)
    restored = Sam3(threshold=0.5).restore_instance_mask_probs(outputs, TARGETS)
    official = sam3_case.processor.post_process_instance_segmentation(
        outputs, threshold=0.5, target_sizes=TARGETS
    )
    for ours, off in zip(restored, official, strict=True):
        torch.testing.assert_close(ours["scores"], off["scores"], rtol=0, atol=0)
        torch.testing.assert_close(ours["boxes"], off["boxes"], rtol=0, atol=0)
    assert sum(r["scores"].numel() for r in restored) > 0


@pytest.mark.parametrize("targets", [TARGETS, None])
def test_sam3_semantic_equals_official_post_process_semantic_segmentation(sam3_case, targets):
    outputs = _with(sam3_case.outputs, semantic_seg=sam3_case.outputs.semantic_seg * 1e3)
    probs = Sam3().restore_semantic_mask_probs(outputs, target_sizes=targets)
    official = sam3_case.processor.post_process_semantic_segmentation(
        outputs, target_sizes=targets, return_segmentation_scores=True
    )
    for i, (p, off) in enumerate(zip(probs, official, strict=True)):
        size = (32, 32) if targets is None else targets[i]
        assert p.shape == (1, *size) and p.dtype == torch.float32
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
# Robustness: empty outputs, non-finite values, float64, sizes, unreadable tensors (issue 9)


def test_sam1_zero_masks_per_prompt_give_empty_masks_of_the_image_size(sam_case):
    outputs = _with(sam_case.outputs, pred_masks=sam_case.outputs.pred_masks[:, :, :0])
    args = (sam_case.original_sizes, sam_case.reshaped_input_sizes)
    adapter = Sam1(pad_size=sam_case.processor.pad_size)
    probs, masks = adapter.restore_mask_probs(outputs, *args), adapter.postprocess(outputs, *args)
    for p, m, size in zip(probs, masks, TARGETS, strict=True):
        assert p.shape == (3, 0, *size) and p.dtype == torch.float32
        assert m.shape == (3, 0, *size) and m.dtype == torch.bool
    with pytest.raises(RuntimeError):  # the official code cannot resize a map without channels
        sam_case.processor.post_process_masks(outputs.pred_masks, *args)
    with pytest.raises(ValueError, match=r"outputs\.pred_masks has no mask per prompt.*multiclass"):
        Sam1({"output_mode": "multiclass"}, pad_size=128).postprocess(outputs, *args)


def test_sam1_zero_prompts_give_empty_masks_as_the_official_code(sam_case):
    outputs = _with(sam_case.outputs, pred_masks=sam_case.outputs.pred_masks[:, :0])
    args = (sam_case.original_sizes, sam_case.reshaped_input_sizes)
    masks = Sam1(pad_size=sam_case.processor.pad_size).postprocess(outputs, *args)
    official = sam_case.processor.post_process_masks(outputs.pred_masks, *args)
    for m, off, size in zip(masks, official, TARGETS, strict=True):
        assert m.shape == off.shape == (0, 3, *size) and m.dtype == off.dtype == torch.bool


@pytest.mark.parametrize("non_overlap", [False, True])
def test_sam2_zero_prompts_give_empty_masks_of_the_image_size(sam2_case, non_overlap):
    outputs = _with(sam2_case.outputs, pred_masks=sam2_case.outputs.pred_masks[:, :0])
    adapter = Sam2(apply_non_overlapping_constraints=non_overlap)
    probs = adapter.restore_mask_probs(outputs, sam2_case.original_sizes)
    masks = adapter.postprocess(outputs, sam2_case.original_sizes)
    for p, m, size in zip(probs, masks, TARGETS, strict=True):
        assert p.shape == (0, 3, *size) and m.shape == (0, 3, *size) and m.dtype == torch.bool
    if non_overlap:  # the official constraint takes an argmax over no prompt
        with pytest.raises(IndexError):
            sam2_case.processor.post_process_masks(
                outputs.pred_masks, sam2_case.original_sizes, apply_non_overlapping_constraints=True
            )
    else:
        official = sam2_case.processor.post_process_masks(outputs.pred_masks, sam2_case.original_sizes)
        assert [m.shape for m in masks] == [o.shape for o in official]


def test_sam2_zero_masks_per_prompt_give_empty_masks(sam2_case):
    outputs = _with(sam2_case.outputs, pred_masks=sam2_case.outputs.pred_masks[:, :, :0])
    masks = Sam2(apply_non_overlapping_constraints=True).postprocess(outputs, sam2_case.original_sizes)
    assert [tuple(m.shape) for m in masks] == [(3, 0, *size) for size in TARGETS]


def test_sam3_an_empty_batch_gives_empty_lists(sam3_case):
    empty = _with(sam3_case.outputs, **{k: v[:0] for k, v in sam3_case.outputs.items() if torch.is_tensor(v)})
    official = sam3_case.processor.post_process_instance_segmentation(empty, target_sizes=[])
    for targets in ([], torch.zeros(0, 2, dtype=torch.long), None):
        assert Sam3().restore_instance_mask_probs(empty, targets) == official == []
        assert Sam3().postprocess_instance(empty, targets) == []
        assert Sam3().postprocess_semantic(empty, targets) == []
    with pytest.raises(ValueError, match="metric must be one of"):  # nothing to decide, still checked
        Sam3({"metric": "f1"}).postprocess_instance(empty, [])


def test_sam3_nothing_above_the_threshold_gives_masks_of_the_target_size(sam3_case):
    """The official code leaves the (0, h, w) masks at model resolution in that case; rankseg
    returns (0, H, W) at the target size, the size every non-empty result has."""
    official = sam3_case.processor.post_process_instance_segmentation(
        sam3_case.outputs, threshold=1.0, target_sizes=TARGETS
    )
    results = Sam3(threshold=1.0).postprocess_instance(sam3_case.outputs, TARGETS)
    for ours, off, size in zip(results, official, TARGETS, strict=True):
        assert off["masks"].shape == (0, 32, 32)
        assert ours["masks"].shape == (0, *size) and ours["masks"].dtype == torch.bool
        assert torch.equal(ours["scores"], off["scores"]) and torch.equal(ours["boxes"], off["boxes"])


def _adapters_reading(field_name):
    """Calls of every adapter method that reads ``field_name``, on the case outputs ``o``."""
    sizes = TARGETS
    sam1 = [lambda o: Sam1(pad_size=128).postprocess(o, sizes, [(77, 128), (128, 91)])]
    sam2 = [lambda o: Sam2().restore_mask_probs(o, sizes), lambda o: Sam2().postprocess(o, sizes)]
    sam3_instances = [
        lambda o: Sam3(threshold=0.0).restore_instance_mask_probs(o, sizes),
        lambda o: Sam3(threshold=0.0).postprocess_instance(o, sizes),
    ]
    sam3_semantic = [
        lambda o: Sam3().restore_semantic_mask_probs(o, sizes),
        lambda o: Sam3().postprocess_semantic(o, sizes),
    ]
    return {
        ("sam", "pred_masks"): sam1,
        ("sam2", "pred_masks"): sam2,
        ("sam3", "pred_masks"): sam3_instances,
        ("sam3", "pred_logits"): sam3_instances,
        ("sam3", "presence_logits"): sam3_instances,
        ("sam3", "pred_boxes"): sam3_instances,
        ("sam3", "semantic_seg"): sam3_semantic,
    }[field_name]


FIELDS_READ = [
    ("sam", "pred_masks"),
    ("sam2", "pred_masks"),
    ("sam3", "pred_masks"),
    ("sam3", "pred_logits"),
    ("sam3", "presence_logits"),
    ("sam3", "pred_boxes"),
    ("sam3", "semantic_seg"),
]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(("model", "name"), FIELDS_READ)
def test_non_finite_model_outputs_are_refused_naming_the_field(request, model, name, value):
    case = request.getfixturevalue(f"{model}_case")
    field = case.outputs[name].clone(memory_format=torch.contiguous_format)
    field.view(-1)[0] = value
    bad = _with(case.outputs, **{name: field})
    for call in _adapters_reading((model, name)):
        with pytest.raises(ValueError, match=rf"outputs\.{name} holds 1 NaN or infinite value") as error:
            call(bad)
        assert "probs" not in str(error.value)


@pytest.mark.parametrize("kind", ["meta", "sparse"])
@pytest.mark.parametrize(("model", "name"), FIELDS_READ)
def test_meta_and_sparse_fields_are_refused_naming_the_field(request, model, name, kind):
    case = request.getfixturevalue(f"{model}_case")
    field = case.outputs[name]
    bad = _with(case.outputs, **{name: field.to("meta") if kind == "meta" else field.to_sparse()})
    for call in _adapters_reading((model, name)):
        with pytest.raises(ValueError if kind == "meta" else TypeError, match=rf"outputs\.{name} .*{kind}"):
            call(bad)


@pytest.mark.parametrize("kind", ["meta", "sparse"])
def test_meta_and_sparse_sizes_are_refused_naming_the_argument(sam_case, sam2_case, sam3_case, kind):
    def unreadable(tensor):
        return tensor.to("meta") if kind == "meta" else tensor.to_sparse()

    error = ValueError if kind == "meta" else TypeError
    sizes, reshaped = sam_case.original_sizes, sam_case.reshaped_input_sizes
    with pytest.raises(error, match=rf"original_sizes .*{kind}"):
        Sam1(pad_size=128).restore_mask_probs(sam_case.outputs, unreadable(sizes), reshaped)
    with pytest.raises(error, match=rf"reshaped_input_sizes .*{kind}"):
        Sam1(pad_size=128).postprocess(sam_case.outputs, sizes, unreadable(reshaped))
    with pytest.raises(error, match=rf"pad_size .*{kind}"):
        Sam1(pad_size=unreadable(torch.tensor([128, 128]))).postprocess(sam_case.outputs, sizes, reshaped)
    with pytest.raises(error, match=rf"original_sizes .*{kind}"):
        Sam2().postprocess(sam2_case.outputs, unreadable(sizes))
    with pytest.raises(error, match=rf"target_sizes .*{kind}"):
        Sam3().postprocess_instance(sam3_case.outputs, unreadable(sizes))


@pytest.mark.parametrize(
    ("sizes", "match"),
    [
        pytest.param((True, True), "bool", id="bool-pair"),
        pytest.param(torch.tensor([[True, True]]), "bool", id="bool-tensor"),
        pytest.param([(2**31, 2**31)], r"2\*\*31 - 1", id="huge"),
    ],
)
def test_sizes_that_are_not_image_sizes_are_refused(sizes, match):
    prompt = types.SimpleNamespace(pred_masks=torch.zeros(1, 1, 1, 4, 4), iou_scores=torch.zeros(1, 1, 1))
    sam3 = types.SimpleNamespace(
        pred_masks=torch.zeros(1, 2, 4, 4),
        pred_boxes=torch.zeros(1, 2, 4),
        pred_logits=torch.zeros(1, 2),
        semantic_seg=torch.zeros(1, 1, 4, 4),
    )
    with pytest.raises(ValueError, match=r"original_sizes .*" + match):
        Sam1(pad_size=8).restore_mask_probs(prompt, sizes, [(8, 8)])
    with pytest.raises(ValueError, match=r"reshaped_input_sizes .*" + match):
        Sam1(pad_size=8).restore_mask_probs(prompt, [(8, 8)], sizes)
    with pytest.raises(ValueError, match=r"original_sizes .*" + match):
        Sam2().postprocess(prompt, sizes)
    with pytest.raises(ValueError, match=r"target_sizes .*" + match):
        Sam3().postprocess_instance(sam3, sizes)
    with pytest.raises(ValueError, match=r"target_sizes .*" + match):
        Sam3().postprocess_semantic(sam3, sizes)
    pad_pair = torch.as_tensor(sizes).reshape(-1)[:2]  # one (height, width) pair
    with pytest.raises(ValueError, match=r"pad_size .*" + match):
        Sam1(pad_size=pad_pair).restore_mask_probs(prompt, [(8, 8)], [(8, 8)])


def test_float64_prompt_masks_are_restored_in_float64_and_binarise_as_the_official_code(sam_case, sam2_case):
    """Tiny logits (|x| ~ 1e-4 and below) that float32 sigmoid rounds to exactly 0.5: in float64
    ``probs > 0.5`` is the official ``logit > 0`` at every pixel."""
    for case, adapter, args in (
        (sam_case, Sam1(pad_size=128), (sam_case.original_sizes, sam_case.reshaped_input_sizes)),
        (sam2_case, Sam2(apply_non_overlapping_constraints=True), (sam2_case.original_sizes,)),
    ):
        pred_masks = case.outputs.pred_masks.double() * 1e-4
        outputs = _with(case.outputs, pred_masks=pred_masks)
        probs = adapter.restore_mask_probs(outputs, *args)
        kwargs = {"apply_non_overlapping_constraints": True} if isinstance(adapter, Sam2) else {}
        official_logits = case.processor.post_process_masks(pred_masks, *args, binarize=False, **kwargs)
        official = case.processor.post_process_masks(pred_masks, *args, **kwargs)
        for p, logits, masks in zip(probs, official_logits, official, strict=True):
            assert p.dtype == logits.dtype == torch.float64
            torch.testing.assert_close(p, torch.sigmoid(logits), rtol=0, atol=0)
            assert torch.equal(p > 0.5, masks)


def test_float64_sam3_outputs_are_restored_in_float64(sam3_case):
    outputs = _with(
        sam3_case.outputs, **{k: v.double() for k, v in sam3_case.outputs.items() if torch.is_tensor(v)}
    )
    threshold = _mixed_threshold(outputs)
    restored = Sam3(threshold=threshold).restore_instance_mask_probs(outputs, TARGETS)
    official = sam3_case.processor.post_process_instance_segmentation(
        outputs, threshold=threshold, target_sizes=TARGETS
    )
    for ours, off in zip(restored, official, strict=True):
        assert all(v.dtype == torch.float64 for v in ours.values())
        torch.testing.assert_close(ours["scores"], off["scores"], rtol=0, atol=0)
        torch.testing.assert_close(ours["boxes"], off["boxes"], rtol=0, atol=0)
        assert torch.equal((ours["mask_probs"] > 0.5).long(), off["masks"])
    semantic = Sam3().restore_semantic_mask_probs(outputs, TARGETS)
    official = sam3_case.processor.post_process_semantic_segmentation(
        outputs, target_sizes=TARGETS, return_segmentation_scores=True
    )
    for p, off in zip(semantic, official, strict=True):
        assert p.dtype == off.segmentation_scores.dtype == torch.float64
        torch.testing.assert_close(p, off.segmentation_scores, rtol=0, atol=0)


# Generated outputs: empty batches, prompts and masks; saturated logits (probabilities of exactly 0
# and 1) and exact ties; every dtype. Checked against the official post-processing.

_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _generated(seed, shape, dtype, scale, ties):
    """Normal logits times ``scale`` (3000 saturates the sigmoid to exact 0 and 1); with ``ties``
    rounded to integers, so that many entries are exactly equal (and many are exactly 0)."""
    values = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    return (values.round() if ties else values).to(dtype)


def _draw_sizes(data, batch):
    pair = st.tuples(st.integers(1, 9), st.integers(1, 9))
    return data.draw(st.lists(pair, min_size=batch, max_size=batch))


def _restoration_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@given(
    seed=st.integers(0, 2**16),
    batch=st.integers(0, 2),
    prompts=st.integers(0, 3),
    masks=st.integers(0, 3),
    dtype=st.sampled_from(_DTYPES),
    scale=st.sampled_from([1.0, 30.0, 3000.0]),
    ties=st.booleans(),
    non_overlap=st.booleans(),
    data=st.data(),
)
def test_generated_prompt_masks_match_official_post_process_masks(
    sam2_processor, seed, batch, prompts, masks, dtype, scale, ties, non_overlap, data
):
    pred_masks = _generated(seed, (batch, prompts, masks, 4, 5), dtype, scale, ties)
    outputs = types.SimpleNamespace(pred_masks=pred_masks, object_score_logits=torch.zeros(batch, prompts, 1))
    sizes = _draw_sizes(data, batch)
    adapter = Sam2(apply_non_overlapping_constraints=non_overlap)
    probs = adapter.restore_mask_probs(outputs, sizes)
    decided = adapter.postprocess(outputs, sizes)
    assert len(probs) == len(decided) == batch
    for p, d, size in zip(probs, decided, sizes, strict=True):
        assert p.shape == d.shape == (prompts, masks, *size) and d.dtype == torch.bool
        assert p.dtype == _restoration_dtype(dtype)
        assert bool(torch.isfinite(p).all()) and bool((p >= 0).all()) and bool((p <= 1).all())
        if masks > 0:
            assert torch.equal(d, RankSEG(output_mode="multilabel")(p))
    if prompts > 0 and masks > 0 and dtype in (torch.float32, torch.float64):
        official_logits = sam2_processor.post_process_masks(
            pred_masks, sizes, binarize=False, apply_non_overlapping_constraints=non_overlap
        )
        for p, logits in zip(probs, official_logits, strict=True):
            torch.testing.assert_close(p, torch.sigmoid(logits), rtol=0, atol=0)


@given(
    seed=st.integers(0, 2**16),
    batch=st.integers(0, 2),
    queries=st.integers(0, 4),
    dtype=st.sampled_from(_DTYPES),
    scale=st.sampled_from([1.0, 30.0, 3000.0]),
    ties=st.booleans(),
    presence=st.booleans(),
    threshold=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
    resize=st.booleans(),
    data=st.data(),
)
def test_generated_sam3_instances_match_official_post_process_instance_segmentation(
    sam3_case, seed, batch, queries, dtype, scale, ties, presence, threshold, resize, data
):
    outputs = types.SimpleNamespace(
        pred_masks=_generated(seed, (batch, queries, 4, 5), dtype, scale, ties),
        pred_boxes=torch.rand(batch, queries, 4, generator=torch.Generator().manual_seed(seed)).to(dtype),
        pred_logits=_generated(seed + 1, (batch, queries), dtype, scale, ties),
        presence_logits=_generated(seed + 2, (batch, 1), dtype, scale, ties) if presence else None,
        semantic_seg=_generated(seed + 3, (batch, 1, 4, 5), dtype, scale, ties),
    )
    sizes = _draw_sizes(data, batch) if resize else None
    adapter = Sam3(threshold=threshold)
    restored = adapter.restore_instance_mask_probs(outputs, sizes)
    results = adapter.postprocess_instance(outputs, sizes)
    semantic = adapter.restore_semantic_mask_probs(outputs, sizes)
    assert len(restored) == len(results) == len(semantic) == batch
    for i, (ours, result, p) in enumerate(zip(restored, results, semantic, strict=True)):
        size = (4, 5) if sizes is None else sizes[i]
        kept = ours["scores"].shape[0]
        assert ours["mask_probs"].shape == result["masks"].shape == (kept, *size)
        assert ours["boxes"].shape == (kept, 4) and p.shape == (1, *size)
        for value in (*ours.values(), p):
            assert value.dtype == _restoration_dtype(dtype) and bool(torch.isfinite(value).all())
        assert bool((ours["mask_probs"] >= 0).all()) and bool((ours["mask_probs"] <= 1).all())
    if dtype in (torch.float32, torch.float64):
        official = sam3_case.processor.post_process_instance_segmentation(
            outputs, threshold=threshold, target_sizes=sizes
        )
        for ours, off in zip(restored, official, strict=True):
            torch.testing.assert_close(ours["scores"], off["scores"], rtol=0, atol=0)
            torch.testing.assert_close(ours["boxes"], off["boxes"], rtol=0, atol=0)
            if ours["scores"].numel() > 0:  # the official code keeps empty masks at model resolution
                assert torch.equal((ours["mask_probs"] > 0.5).long(), off["masks"])


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
