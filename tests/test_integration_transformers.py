"""rankseg.integration.transformers against the official Transformers post-processing.

Every output family is checked on a tiny real model (random weights, built from a config, see
``hf_models.py``) run on two images of different sizes: the restored probabilities must reproduce
the official scores (softmax of them, or their normalisation over classes), hence the official
argmax, and ``postprocess`` with accuracy/argmax must be the official segmentation.
"""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("transformers")

from rankseg import RankSEG
from rankseg.integration import transformers as hf

import hf_models  # needs transformers
from hf_models import IMAGE_SIZES, NUM_LABELS

SINGLE_CHANNEL = {"sam3"}  # semantic_seg: one sigmoid channel, multilabel by default
NEEDS_TARGET_SIZES = {"eomt_split", "eomt_pad"}
QUERY_CASES = {"maskformer", "mask2former", "oneformer", "eomt_split", "eomt_pad", "detr", "conditional_detr"}


@pytest.fixture(scope="module")
def cases():
    """``cases(name)``: the tiny model case ``name``, built once for this module."""
    built: dict[str, hf_models.Case] = {}

    def get(name: str) -> hf_models.Case:
        if name not in built:
            built[name] = hf_models.BUILDERS[name]()
        return built[name]

    return get


@pytest.fixture(params=list(hf_models.BUILDERS))
def case(request, cases) -> hf_models.Case:
    return cases(request.param)


@pytest.fixture
def segformer(cases) -> hf_models.Case:
    return cases("segformer")


@pytest.fixture
def oneformer(cases) -> hf_models.Case:
    return cases("oneformer")


def official(case: hf_models.Case, target_sizes=IMAGE_SIZES) -> list:
    return case.official(case.outputs, target_sizes=target_sizes, return_segmentation_scores=True)


def expected_probs(case: hf_models.Case, scores: torch.Tensor) -> torch.Tensor:
    """The official scores turned into probabilities the documented way, per family."""
    if case.name in SINGLE_CHANNEL:
        return scores  # already sigmoid probabilities
    if case.name in QUERY_CASES:
        return scores / scores.sum(dim=0, keepdim=True)
    return scores.softmax(dim=0)


def rankseg_labels(case: hf_models.Case, pred: torch.Tensor) -> torch.Tensor:
    """A prediction in the official form: labels (H, W), or the 0/1 map of the single channel."""
    return pred[0].long() if case.name in SINGLE_CHANNEL else pred


# --------------------------------------------------------------------------------------------
# Parity with the official post-processing, per family.


def test_restored_probs_reproduce_official_scores_and_argmax(case):
    probs = hf.restore_semantic_probs(case.outputs, target_sizes=case.target_sizes, **case.kwargs)
    items = official(case)
    assert len(probs) == len(items) == len(IMAGE_SIZES)
    for p, item, size in zip(probs, items, IMAGE_SIZES, strict=True):
        channels = 1 if case.name in SINGLE_CHANNEL else NUM_LABELS
        assert p.shape == (channels, *size) and p.dtype == torch.float32
        torch.testing.assert_close(p, expected_probs(case, item.segmentation_scores), rtol=1e-6, atol=1e-7)
        if case.name in SINGLE_CHANNEL:
            assert torch.equal((p[0] > 0.5).long(), item.segmentation)
        else:
            assert torch.equal(p.argmax(dim=0), item.segmentation)
            torch.testing.assert_close(p.sum(dim=0), torch.ones(size), rtol=0, atol=1e-6)


def test_postprocess_with_accuracy_is_the_official_segmentation(case):
    kwargs = {"metric": "acc", "solver": "TR" if case.name in SINGLE_CHANNEL else "argmax"}
    preds = hf.postprocess(case.outputs, target_sizes=case.target_sizes, rankseg_kwargs=kwargs, **case.kwargs)
    for pred, item in zip(preds, official(case), strict=True):
        assert torch.equal(rankseg_labels(case, pred), item.segmentation)


def test_without_target_sizes_probs_keep_the_official_resolution(case):
    if case.name in NEEDS_TARGET_SIZES:
        with pytest.raises(ValueError, match="target_sizes is required for EoMT"):
            hf.restore_semantic_probs(case.outputs, **case.kwargs)
        return
    probs = hf.restore_semantic_probs(case.outputs, **case.kwargs)
    for p, item in zip(probs, official(case, target_sizes=None), strict=True):
        assert p.shape == item.segmentation_scores.shape
        torch.testing.assert_close(p, expected_probs(case, item.segmentation_scores), rtol=1e-6, atol=1e-7)
    if case.name == "mask2former":
        assert probs[0].shape[-2:] == (384, 384)  # the fixed step, not the mask resolution


@pytest.mark.parametrize("metric", ["dice", "iou"])
def test_postprocess_is_rankseg_on_the_restored_probs(case, metric):
    kwargs = {"metric": metric, "solver": "RMA"}
    preds = hf.postprocess(case.outputs, target_sizes=case.target_sizes, rankseg_kwargs=kwargs, **case.kwargs)
    probs = hf.restore_semantic_probs(case.outputs, target_sizes=case.target_sizes, **case.kwargs)
    mode = "multilabel" if case.name in SINGLE_CHANNEL else "multiclass"
    for pred, p, size in zip(preds, probs, IMAGE_SIZES, strict=True):
        if mode == "multiclass":
            assert pred.shape == size and pred.dtype == torch.int64
        else:
            assert pred.shape == (1, *size) and pred.dtype == torch.bool
        assert torch.equal(pred, RankSEG(output_mode=mode, **kwargs)(p[None])[0])


def test_outputs_are_not_modified(case):
    before = {key: value.clone() for key, value in case.outputs.items() if isinstance(value, torch.Tensor)}
    hf.postprocess(case.outputs, target_sizes=torch.tensor(IMAGE_SIZES), **case.kwargs)
    for key, value in before.items():
        assert torch.equal(case.outputs[key], value), key


# --------------------------------------------------------------------------------------------
# Sizes, grouping, dtypes, output modes.


def test_target_sizes_as_a_tensor_equal_a_list_of_pairs(segformer):
    from_list = hf.restore_semantic_probs(segformer.outputs, target_sizes=IMAGE_SIZES)
    from_tensor = hf.restore_semantic_probs(segformer.outputs, target_sizes=torch.tensor(IMAGE_SIZES))
    for a, b in zip(from_list, from_tensor, strict=True):
        assert torch.equal(a, b)


def test_images_sharing_a_size_are_resized_together_exactly_as_one_by_one():
    logits = torch.randn(3, 5, 9, 11, generator=torch.Generator().manual_seed(1)) * 3
    sizes = [(20, 30), (17, 13), (20, 30)]
    probs = hf.restore_semantic_probs({"logits": logits}, target_sizes=sizes)
    for i, size in enumerate(sizes):
        one = F.interpolate(logits[i : i + 1], size=size, mode="bilinear", align_corners=False)[0]
        assert torch.equal(probs[i], one.softmax(dim=0))
    preds = hf.postprocess({"logits": logits}, target_sizes=sizes)
    for i in range(3):
        assert torch.equal(preds[i], RankSEG()(probs[i][None])[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_outputs_are_restored_in_float32(case, dtype):
    half = {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in case.outputs.items()}
    upcast = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in half.items()}
    model = {"model": case.model}  # a dict of fields: the model tells the family
    probs = hf.restore_semantic_probs(half, target_sizes=IMAGE_SIZES, **model, **case.kwargs)
    reference = hf.restore_semantic_probs(upcast, target_sizes=IMAGE_SIZES, **model, **case.kwargs)
    for p, r in zip(probs, reference, strict=True):
        assert p.dtype == torch.float32
        assert torch.equal(p, r)


@pytest.mark.parametrize("name", ["segformer", "mask2former", "eomt_split", "sam3"])
def test_restoration_runs_on_the_outputs_device(cases, device, name):
    case = cases(name)
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in case.outputs.items()}
    sizes = torch.tensor(IMAGE_SIZES, device=device)
    probs = hf.restore_semantic_probs(moved, model=case.model, target_sizes=sizes, **case.kwargs)
    reference = hf.restore_semantic_probs(case.outputs, target_sizes=IMAGE_SIZES, **case.kwargs)
    for p, r in zip(probs, reference, strict=True):
        assert p.device.type == device.type
        torch.testing.assert_close(p.cpu(), r, rtol=1e-5, atol=1e-6)
    preds = hf.postprocess(moved, model=case.model, target_sizes=sizes, **case.kwargs)
    assert all(pred.device.type == device.type for pred in preds)


def test_default_output_mode_and_explicit_override(segformer):
    labels = hf.postprocess(segformer.outputs, target_sizes=IMAGE_SIZES)
    assert [(p.shape, p.dtype) for p in labels] == [(size, torch.int64) for size in IMAGE_SIZES]
    masks = hf.postprocess(segformer.outputs, rankseg_kwargs={"output_mode": "multilabel", "metric": "iou"})
    assert [(p.shape, p.dtype) for p in masks] == [((NUM_LABELS, 16, 16), torch.bool)] * 2
    single = hf.postprocess({"semantic_seg": torch.randn(2, 1, 6, 6)}, target_sizes=[(8, 8), (5, 9)])
    assert [(p.shape, p.dtype) for p in single] == [((1, 8, 8), torch.bool), ((1, 5, 9), torch.bool)]


def test_tipsv2_segmentation_logits_are_read_like_logits():
    from transformers.models.tipsv2_dpt.modeling_tipsv2_dpt import Tipsv2DptDensePredictorOutput

    logits = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    outputs = Tipsv2DptDensePredictorOutput(
        predicted_depth=torch.rand(2, 1, 8, 8), segmentation_logits=logits
    )
    ours = hf.restore_semantic_probs(outputs, target_sizes=[(12, 16), (8, 8)])
    plain = hf.restore_semantic_probs({"logits": logits}, target_sizes=[(12, 16), (8, 8)])
    for a, b in zip(ours, plain, strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# Families told apart by the model: Mask2Former's 384 step, DETR's null class.


@pytest.mark.parametrize("name", ["mask2former", "detr", "conditional_detr", "eomt_split"])
def test_a_dict_of_fields_with_the_model_or_its_config_matches_the_official_output(cases, name):
    case = cases(name)
    fields = dict(case.outputs)
    for model in (case.model, case.model.config):
        probs = hf.restore_semantic_probs(fields, model=model, target_sizes=IMAGE_SIZES, **case.kwargs)
        for p, item in zip(probs, official(case), strict=True):
            assert torch.equal(p.argmax(dim=0), item.segmentation)
    with pytest.raises(
        ValueError, match=r"cannot tell which .* model produced outputs of type dict.*pass model="
    ):
        hf.restore_semantic_probs(fields, target_sizes=IMAGE_SIZES, **case.kwargs)


@pytest.mark.parametrize("name", ["mask2former", "conditional_detr"])
def test_mask2former_step_and_null_class_change_the_result(cases, name):
    """The family-specific steps matter: without the 384 step, or dropping ConditionalDETR's last
    (real) class as if it were DETR's null class, the tiny models' argmax would differ."""
    case = cases(name)
    fields = dict(case.outputs)
    wrong = {"mask2former": "maskformer", "conditional_detr": "detr"}[case.name]
    probs = hf.restore_semantic_probs(
        fields, model=SimpleNamespace(model_type=wrong), target_sizes=IMAGE_SIZES
    )
    mismatched = sum(
        int((p.argmax(0) != item.segmentation).sum()) for p, item in zip(probs, official(case), strict=True)
    )
    assert mismatched > 0


def test_a_model_of_another_family_is_refused(cases):
    case = cases("mask2former")
    with pytest.raises(ValueError, match="model_type='maskformer' but outputs are Mask2Former"):
        hf.restore_semantic_probs(case.outputs, model=SimpleNamespace(model_type="maskformer"))


# --------------------------------------------------------------------------------------------
# EoMT: processor size and patch_offsets.


@pytest.mark.parametrize("name", ["eomt_split", "eomt_pad"])
def test_eomt_size_may_be_a_plain_dict(cases, name):
    case = cases(name)
    size = case.kwargs["size"]
    plain = {"shortest_edge": size.shortest_edge, "longest_edge": size.longest_edge}
    a = hf.restore_semantic_probs(case.outputs, target_sizes=IMAGE_SIZES, size=plain)
    b = hf.restore_semantic_probs(case.outputs, target_sizes=IMAGE_SIZES, **case.kwargs)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def test_eomt_patch_offsets_may_be_plain_lists(cases):
    case = cases("eomt_split")
    fields = dict(case.outputs)
    as_lists = {**fields, "patch_offsets": [offset.tolist() for offset in fields["patch_offsets"]]}
    a = hf.restore_semantic_probs(as_lists, model=case.model, target_sizes=IMAGE_SIZES, **case.kwargs)
    b = hf.restore_semantic_probs(case.outputs, target_sizes=IMAGE_SIZES, **case.kwargs)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def test_eomt_without_size_or_with_inconsistent_patches_is_refused(cases):
    case = cases("eomt_split")
    with pytest.raises(ValueError, match=r"size=processor\.size"):
        hf.restore_semantic_probs(case.outputs, target_sizes=IMAGE_SIZES)
    with pytest.raises(ValueError, match="size must be the EoMT image processor's size"):
        hf.restore_semantic_probs(case.outputs, target_sizes=IMAGE_SIZES, size={"height": 64})
    with pytest.raises(ValueError, match="target_sizes must give one"):
        hf.restore_semantic_probs(case.outputs, target_sizes=IMAGE_SIZES[:1], **case.kwargs)
    fields = dict(case.outputs)
    with pytest.raises(ValueError, match="patch_offsets has 3 entries for 4 patches"):
        three = {**fields, "patch_offsets": fields["patch_offsets"][:3]}
        hf.restore_semantic_probs(three, model=case.model, target_sizes=IMAGE_SIZES, **case.kwargs)
    only_first = [torch.tensor([0, 0, 64])] * 4
    with pytest.raises(ValueError, match="target_sizes must give one"):
        hf.restore_semantic_probs(
            {**fields, "patch_offsets": only_first}, model=case.model, target_sizes=IMAGE_SIZES, **case.kwargs
        )
    with pytest.raises(ValueError, match=r"entry \[0, 0, 64\] selects a \(32, 53\) region"):
        hf.restore_semantic_probs(case.outputs, target_sizes=IMAGE_SIZES, size={"shortest_edge": 32})
    with pytest.raises(ValueError, match=r"patch_offsets entries must be \[image_index, start, end\]"):
        bad = [[0, 0], [0, 42, 106], [1, 0, 64], [1, 25, 89]]
        hf.restore_semantic_probs(
            {**fields, "patch_offsets": bad}, model=case.model, target_sizes=IMAGE_SIZES, **case.kwargs
        )


@pytest.mark.parametrize(
    ("offsets", "error", "match"),
    [
        pytest.param([[1, 0, 64]] * 4, ValueError, r"no patch for image\(s\) \[0\] of 2", id="image-missing"),
        pytest.param([[0, 64, 0]] * 4, ValueError, r"\[0, 64, 0\] is not a valid", id="empty-range"),
        pytest.param({"a": 1}, TypeError, "must be a list of .*; got dict", id="not-a-list"),
    ],
)
def test_eomt_malformed_patch_offsets_are_refused(cases, offsets, error, match):
    case = cases("eomt_split")
    fields = {**dict(case.outputs), "patch_offsets": offsets}
    with pytest.raises(error, match=match):
        hf.restore_semantic_probs(fields, model=case.model, target_sizes=IMAGE_SIZES, **case.kwargs)


def test_eomt_merge_canvas_matches_transformers_size_rule():
    from transformers.image_transforms import get_size_with_aspect_ratio

    from rankseg.integration.transformers import _eomt_canvas_size

    for shortest, longest in [(64, None), (64, 64), (640, 640), (512, 1333), (30, 100)]:
        for height in (1, 7, 48, 64, 70, 333, 640, 1000):
            for width in (1, 5, 50, 64, 80, 481, 1024):
                expected = get_size_with_aspect_ratio((height, width), shortest, longest)
                assert _eomt_canvas_size((height, width), shortest, longest) == tuple(expected)


# --------------------------------------------------------------------------------------------
# OneFormer's backend-dependent final resize.


def test_oneformer_antialias_follows_the_backend_and_can_be_chosen(oneformer, monkeypatch):
    import transformers as T

    small = [(10, 12), (9, 7)]  # smaller than the 23x27 mask map: antialiasing matters
    pil_processor = T.OneFormerImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 128})
    tv_processor = T.OneFormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128})
    pil = pil_processor.post_process_semantic_segmentation(
        oneformer.outputs, target_sizes=small, return_segmentation_scores=True
    )
    tv = tv_processor.post_process_semantic_segmentation(
        oneformer.outputs, target_sizes=small, return_segmentation_scores=True
    )
    default = hf.restore_semantic_probs(oneformer.outputs, target_sizes=small)
    chosen_false = hf.restore_semantic_probs(oneformer.outputs, target_sizes=small, antialias=False)
    chosen_true = hf.restore_semantic_probs(oneformer.outputs, target_sizes=small, antialias=True)
    for i in range(len(small)):
        # torchvision is installed: the default processor is the torchvision backend (antialiased).
        torch.testing.assert_close(default[i], expected_probs(oneformer, tv[i].segmentation_scores))
        assert torch.equal(default[i], chosen_true[i])
        torch.testing.assert_close(chosen_false[i], expected_probs(oneformer, pil[i].segmentation_scores))
        assert not torch.allclose(chosen_true[i], chosen_false[i], atol=1e-3)

    monkeypatch.setattr("transformers.utils.is_torchvision_available", lambda: False)
    without_torchvision = hf.restore_semantic_probs(oneformer.outputs, target_sizes=small)
    for a, b in zip(without_torchvision, chosen_false, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(TypeError, match="antialias must be True, False or None; got 'yes'"):
        hf.restore_semantic_probs(oneformer.outputs, target_sizes=small, antialias="yes")


# --------------------------------------------------------------------------------------------
# Robustness: empty outputs, non-finite values, float64, sizes, unreadable tensors (issue 9).

# The score fields each family restores (class field, mask field), from the real model outputs.
SCORE_FIELDS = {
    **{name: ("logits",) for name in hf_models.PLAIN_BUILDERS},
    **{name: ("class_queries_logits", "masks_queries_logits") for name in QUERY_CASES if "detr" not in name},
    "detr": ("logits", "pred_masks"),
    "conditional_detr": ("logits", "pred_masks"),
    "sam3": ("semantic_seg",),
}
# Official post-processors that fail on zero queries (they resize a map with no channel).
OFFICIAL_FAILS_WITHOUT_QUERIES = {"mask2former", "eomt_split", "eomt_pad"}


def _replaced(case: hf_models.Case, **fields) -> object:
    """The case's outputs (same output class) with some fields replaced."""
    return type(case.outputs)(**{**dict(case.outputs), **fields})


def _with_outputs(case: hf_models.Case, outputs) -> hf_models.Case:
    """The same case with other outputs (for :func:`official`)."""
    return hf_models.Case(case.name, case.model, outputs, case.target_sizes, case.official, case.kwargs)


@pytest.mark.parametrize("name", sorted(QUERY_CASES))
def test_zero_queries_give_zero_scores_at_the_target_size(cases, name):
    """No query claims any pixel: every class score is 0, the official argmax (and RankSEG's
    fallback) is class 0 everywhere, and the maps have the target size."""
    case = cases(name)
    class_field, mask_field = SCORE_FIELDS[name]
    empty = _replaced(
        case, **{class_field: case.outputs[class_field][:, :0], mask_field: case.outputs[mask_field][:, :0]}
    )
    probs = hf.restore_semantic_probs(empty, target_sizes=IMAGE_SIZES, **case.kwargs)
    preds = hf.postprocess(empty, target_sizes=IMAGE_SIZES, **case.kwargs)
    for p, pred, size in zip(probs, preds, IMAGE_SIZES, strict=True):
        assert p.shape == (NUM_LABELS, *size) and p.dtype == torch.float32
        assert not p.any()
        assert pred.shape == size and pred.dtype == torch.int64 and not pred.any()
    if name in OFFICIAL_FAILS_WITHOUT_QUERIES:
        with pytest.raises(RuntimeError):
            case.official(empty, target_sizes=IMAGE_SIZES)
        return
    for p, item in zip(probs, official(_with_outputs(case, empty)), strict=True):
        assert not item.segmentation_scores.any() and torch.equal(p, item.segmentation_scores)
        assert not item.segmentation.any()


@pytest.mark.parametrize("name", ["segformer", "maskformer", "eomt_pad", "detr", "sam3"])
def test_an_empty_batch_gives_an_empty_list(cases, name):
    case = cases(name)
    empty = _replaced(case, **{f: case.outputs[f][:0] for f in SCORE_FIELDS[name]})
    assert hf.restore_semantic_probs(empty, target_sizes=[], **case.kwargs) == []
    assert hf.postprocess(empty, target_sizes=torch.zeros(0, 2, dtype=torch.long), **case.kwargs) == []
    with pytest.raises(ValueError, match="metric must be one of"):  # nothing to decide, still checked
        hf.postprocess(empty, target_sizes=[], rankseg_kwargs={"metric": "f1"}, **case.kwargs)


def test_zero_class_channels_give_empty_multilabel_masks():
    outputs = {"logits": torch.zeros(2, 0, 8, 8)}
    probs = hf.restore_semantic_probs(outputs, target_sizes=[(5, 6), (7, 3)])
    masks = hf.postprocess(outputs, target_sizes=[(5, 6), (7, 3)])  # one channel or fewer: multilabel
    assert [(tuple(p.shape), p.dtype) for p in probs] == [
        ((0, 5, 6), torch.float32),
        ((0, 7, 3), torch.float32),
    ]
    assert [(tuple(m.shape), m.dtype) for m in masks] == [((0, 5, 6), torch.bool), ((0, 7, 3), torch.bool)]
    with pytest.raises(ValueError, match=r"outputs\.logits has no class channel.*multiclass"):
        hf.postprocess(outputs, target_sizes=[(5, 6), (7, 3)], rankseg_kwargs={"output_mode": "multiclass"})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_model_outputs_are_refused_naming_the_field(case, value):
    for name in SCORE_FIELDS[case.name]:
        field = case.outputs[name].clone(memory_format=torch.contiguous_format)
        field.view(-1)[field.numel() // 3] = value
        bad = _replaced(case, **{name: field})
        with pytest.raises(ValueError, match=rf"outputs\.{name} holds 1 NaN or infinite value") as error:
            hf.restore_semantic_probs(bad, target_sizes=IMAGE_SIZES, **case.kwargs)
        assert "probs" not in str(error.value)
        with pytest.raises(ValueError, match=rf"outputs\.{name} holds 1 NaN or infinite value"):
            hf.postprocess(bad, target_sizes=IMAGE_SIZES, **case.kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_finite_logits_too_large_to_resize_are_refused(dtype):
    """Logits at the float limit are finite but their bilinear resize rounds to inf (and softmax
    to NaN): refused, naming the field, instead of returning NaN probabilities."""
    largest = torch.finfo(dtype).max
    logits = torch.full((1, 3, 4, 4), largest, dtype=dtype)
    logits[0, 1] = -largest
    with pytest.raises(ValueError, match=r"outputs\.logits holds values up to .* too close to the largest"):
        hf.restore_semantic_probs({"logits": logits}, target_sizes=[(7, 9)])
    fine = hf.restore_semantic_probs({"logits": logits / 8}, target_sizes=[(7, 9)])[0]
    assert bool(torch.isfinite(fine).all())


def test_float64_outputs_are_restored_in_the_official_dtype(case):
    """The official code keeps float64 outputs in float64 (EoMT's patch merge excepted: it
    accumulates in torch's default dtype); the restored probabilities have the official dtype and
    equal its normalised scores to float64 precision."""
    as_float64 = _replaced(
        case, **{k: v.double() for k, v in case.outputs.items() if isinstance(v, torch.Tensor)}
    )
    probs = hf.restore_semantic_probs(as_float64, target_sizes=IMAGE_SIZES, **case.kwargs)
    items = official(_with_outputs(case, as_float64))
    expected_dtype = torch.get_default_dtype() if case.name == "eomt_split" else torch.float64
    for p, item in zip(probs, items, strict=True):
        assert p.dtype == item.segmentation_scores.dtype == expected_dtype
        expected = expected_probs(case, item.segmentation_scores)
        tolerance = 1e-6 if expected_dtype == torch.float32 else 1e-13
        torch.testing.assert_close(p, expected, rtol=tolerance, atol=tolerance)
        if case.name not in SINGLE_CHANNEL:
            assert torch.equal(p.argmax(dim=0), item.segmentation)


def test_float64_near_ties_decide_as_the_official_argmax(segformer):
    """Two classes 1e-12 apart: float64 tells them apart, float32 would round them to a tie."""
    from transformers.modeling_outputs import SemanticSegmenterOutput

    base = torch.randn(2, 1, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    outputs = SemanticSegmenterOutput(logits=torch.cat([base, base + 1e-12, base - 1.0], dim=1))
    official_labels = segformer.official(outputs, target_sizes=IMAGE_SIZES)
    assert all(bool((labels == 1).all()) for labels in official_labels)
    preds = hf.postprocess(outputs, target_sizes=IMAGE_SIZES, rankseg_kwargs={"metric": "acc"})
    for pred, labels in zip(preds, official_labels, strict=True):
        assert torch.equal(pred, labels)


@pytest.mark.parametrize(
    ("target_sizes", "match"),
    [
        pytest.param((True, True), "bool", id="bool-pair"),
        pytest.param([(True, 5)], "bool", id="bool-in-list"),
        pytest.param(torch.tensor([[True, True]]), "bool", id="bool-tensor"),
        pytest.param([(2**31, 2**31)], r"2\*\*31 - 1", id="huge"),
        pytest.param([(65536, 32768)], r"2\*\*31 - 1", id="just-over-the-limit"),
    ],
)
def test_sizes_that_are_not_image_sizes_are_refused(target_sizes, match):
    outputs = {"logits": torch.randn(1, 3, 8, 8)}
    with pytest.raises(ValueError, match=r"target_sizes .*" + match):
        hf.restore_semantic_probs(outputs, target_sizes=target_sizes)


def test_the_size_limit_is_what_a_bilinear_resize_can_address():
    from rankseg.integration._common import MAX_PIXELS, parse_sizes

    assert MAX_PIXELS == 2**31 - 1  # torch's CUDA bilinear kernel indexes output pixels with an int
    assert parse_sizes([(MAX_PIXELS, 1)], 1, "target_sizes") == [(MAX_PIXELS, 1)]
    with pytest.raises(ValueError, match="target_sizes"):
        parse_sizes([(MAX_PIXELS + 1, 1)], 1, "target_sizes")


def test_eomt_sizes_over_the_limit_are_refused_before_any_allocation(cases):
    case = cases("eomt_split")
    with pytest.raises(ValueError, match=r"size holds \(65536, 65536\)"):
        hf.restore_semantic_probs(
            case.outputs, target_sizes=IMAGE_SIZES, size={"shortest_edge": 2**16, "longest_edge": None}
        )
    with pytest.raises(ValueError, match=r"target_sizes .*merge canvas.* holds \(64, 68719476736\)"):
        hf.restore_semantic_probs(case.outputs, target_sizes=[(1, 2**30), (70, 50)], **case.kwargs)


@pytest.mark.parametrize("kind", ["meta", "sparse"])
def test_meta_and_sparse_tensors_are_refused_naming_the_field(case, kind):
    def unreadable(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to("meta") if kind == "meta" else tensor.to_sparse()

    error = ValueError if kind == "meta" else TypeError
    for name in SCORE_FIELDS[case.name]:
        bad = _replaced(case, **{name: unreadable(case.outputs[name])})
        with pytest.raises(error, match=rf"outputs\.{name} .*{kind}"):
            hf.postprocess(bad, target_sizes=IMAGE_SIZES, **case.kwargs)
    with pytest.raises(error, match=rf"target_sizes .*{kind}"):
        hf.restore_semantic_probs(
            case.outputs, target_sizes=unreadable(torch.tensor(IMAGE_SIZES)), **case.kwargs
        )


def test_eomt_patch_offsets_on_the_meta_device_are_refused(cases):
    case = cases("eomt_split")
    offsets = [offset.to("meta") for offset in case.outputs["patch_offsets"]]
    with pytest.raises(ValueError, match=r"outputs\.patch_offsets .*meta"):
        hf.restore_semantic_probs(
            _replaced(case, patch_offsets=offsets), target_sizes=IMAGE_SIZES, **case.kwargs
        )


# Generated outputs: empty batches, classes and queries; saturated scores (probabilities of exactly
# 0 and 1) and exact ties; every dtype. Checked against the official post-processing.

_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _generated(
    seed: int, shape: tuple[int, ...], dtype: torch.dtype, scale: float, ties: bool
) -> torch.Tensor:
    """Normal logits times ``scale`` (3000 saturates softmax and sigmoid to exact 0 and 1); with
    ``ties`` rounded to integers, so that many entries are exactly equal."""
    values = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    return (values.round() if ties else values).to(dtype)


def _draw_sizes(data, batch: int) -> list[tuple[int, int]] | None:
    """``None`` (model resolution) or one drawn (height, width) per image."""
    pair = st.tuples(st.integers(1, 9), st.integers(1, 9))
    return data.draw(st.one_of(st.none(), st.lists(pair, min_size=batch, max_size=batch)))


def _check_restored(probs, batch, classes, sizes, model_size, dtype, simplex):
    assert len(probs) == batch
    expected_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    for i, p in enumerate(probs):
        size = model_size if sizes is None else sizes[i]
        assert p.shape == (classes, *size) and p.dtype == expected_dtype
        assert bool(torch.isfinite(p).all()) and bool((p >= 0).all()) and bool((p <= 1).all())
        if simplex and classes > 0:
            total = p.sum(dim=0)
            assert bool((((total - 1).abs() < 1e-5) | (total == 0)).all())


def _official_tolerance(dtype: torch.dtype) -> dict:
    return {"rtol": 1e-12, "atol": 1e-14} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}


@given(
    seed=st.integers(0, 2**16),
    batch=st.integers(0, 2),
    classes=st.integers(0, 4),
    height=st.integers(1, 5),
    width=st.integers(1, 5),
    dtype=st.sampled_from(_DTYPES),
    scale=st.sampled_from([1.0, 30.0, 3000.0]),
    ties=st.booleans(),
    metric=st.sampled_from(["dice", "iou"]),
    data=st.data(),
)
def test_generated_plain_logits_match_the_official_scores(
    cases, seed, batch, classes, height, width, dtype, scale, ties, metric, data
):
    from transformers.modeling_outputs import SemanticSegmenterOutput

    outputs = SemanticSegmenterOutput(
        logits=_generated(seed, (batch, classes, height, width), dtype, scale, ties)
    )
    sizes = _draw_sizes(data, batch)
    probs = hf.restore_semantic_probs(outputs, target_sizes=sizes)
    _check_restored(probs, batch, classes, sizes, (height, width), dtype, simplex=True)
    preds = hf.postprocess(outputs, target_sizes=sizes, rankseg_kwargs={"metric": metric})
    mode = "multiclass" if classes > 1 else "multilabel"
    for p, pred in zip(probs, preds, strict=True):
        if classes == 0:
            assert pred.shape == p.shape and pred.dtype == torch.bool
        else:
            assert torch.equal(pred, RankSEG(metric=metric, output_mode=mode)(p[None])[0])
    if classes > 0 and dtype in (torch.float32, torch.float64):
        items = cases("segformer").official(outputs, target_sizes=sizes, return_segmentation_scores=True)
        for p, item in zip(probs, items, strict=True):
            torch.testing.assert_close(
                p, item.segmentation_scores.softmax(dim=0), **_official_tolerance(dtype)
            )


@given(
    seed=st.integers(0, 2**16),
    batch=st.integers(0, 2),
    queries=st.integers(0, 3),
    classes=st.integers(1, 3),
    height=st.integers(1, 5),
    width=st.integers(1, 5),
    dtype=st.sampled_from(_DTYPES),
    scale=st.sampled_from([1.0, 30.0, 3000.0]),
    ties=st.booleans(),
    data=st.data(),
)
def test_generated_query_outputs_match_the_official_scores(
    cases, seed, batch, queries, classes, height, width, dtype, scale, ties, data
):
    from transformers.models.maskformer.modeling_maskformer import MaskFormerForInstanceSegmentationOutput

    outputs = MaskFormerForInstanceSegmentationOutput(
        class_queries_logits=_generated(seed, (batch, queries, classes + 1), dtype, scale, ties),
        masks_queries_logits=_generated(seed + 1, (batch, queries, height, width), dtype, scale, ties),
    )
    sizes = _draw_sizes(data, batch)
    probs = hf.restore_semantic_probs(outputs, target_sizes=sizes)
    _check_restored(probs, batch, classes, sizes, (height, width), dtype, simplex=True)
    if dtype in (torch.float32, torch.float64):
        items = cases("maskformer").official(outputs, target_sizes=sizes, return_segmentation_scores=True)
        for p, item in zip(probs, items, strict=True):
            scores = item.segmentation_scores
            expected = scores / scores.sum(dim=0, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)
            torch.testing.assert_close(p, expected, **_official_tolerance(dtype))


# --------------------------------------------------------------------------------------------
# Rejected inputs: each error names what was received and what to do.


def _sam_outputs():
    from transformers.models.edgetam.modeling_edgetam import EdgeTamImageSegmentationOutput
    from transformers.models.sam.modeling_sam import SamImageSegmentationOutput
    from transformers.models.sam2.modeling_sam2 import Sam2ImageSegmentationOutput
    from transformers.models.sam3.modeling_sam3 import Sam3ImageSegmentationOutput
    from transformers.models.sam3_tracker.modeling_sam3_tracker import Sam3TrackerImageSegmentationOutput

    iou, masks = torch.rand(1, 1, 3), torch.randn(1, 1, 3, 16, 16)
    return [
        SamImageSegmentationOutput(iou_scores=iou, pred_masks=masks),
        Sam2ImageSegmentationOutput(
            iou_scores=iou, pred_masks=masks, object_score_logits=torch.randn(1, 1, 1)
        ),
        EdgeTamImageSegmentationOutput(iou_scores=iou, pred_masks=masks),
        Sam3TrackerImageSegmentationOutput(iou_scores=iou, pred_masks=masks),
        Sam3ImageSegmentationOutput(pred_masks=torch.randn(1, 5, 16, 16), pred_logits=torch.randn(1, 5)),
        {"iou_scores": iou, "pred_masks": masks},
    ]


@pytest.mark.parametrize("index", range(6))
def test_sam_family_outputs_point_to_the_sam_integration(index):
    outputs = _sam_outputs()[index]
    with pytest.raises(ValueError, match=r"SAM-family .* use rankseg\.integration\.sam"):
        hf.restore_semantic_probs(outputs)
    with pytest.raises(ValueError, match=r"rankseg\.integration\.sam"):
        hf.postprocess(outputs, target_sizes=[(16, 16)])


def test_tuple_outputs_from_return_dict_false_are_refused(segformer):
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        outputs = segformer.model(pixel_values, return_dict=False)
    assert isinstance(outputs, tuple)
    with pytest.raises(TypeError, match=r"tuple of 1 items, as models return with return_dict=False"):
        hf.postprocess(outputs)


@pytest.mark.parametrize(
    ("outputs", "error", "match"),
    [
        pytest.param(torch.randn(1, 3, 4, 4), TypeError, "whole output object", id="tensor"),
        pytest.param(None, TypeError, "model output object or a dict", id="none"),
        pytest.param(
            SimpleNamespace(features=torch.randn(1, 8, 4, 4)),
            ValueError,
            r"has none of the fields .*\['features'\].*call rankseg\.RankSEG",
            id="unknown-custom",
        ),
        pytest.param(
            {"logits": torch.randn(2, 10)},
            ValueError,
            r"outputs\.logits must have shape \(batch, classes, height, width\); got shape \(2, 10\)",
            id="classification-logits",
        ),
        pytest.param(
            {"logits": torch.randint(0, 3, (1, 3, 4, 4))},
            TypeError,
            r"outputs\.logits must be a floating-point torch\.Tensor of shape .*; got a torch\.int64 tensor",
            id="integer-logits",
        ),
        pytest.param(
            {"class_queries_logits": torch.randn(1, 5, 5)},
            ValueError,
            "has class_queries_logits but no masks_queries_logits",
            id="half-query",
        ),
        pytest.param(
            {"class_queries_logits": torch.randn(1, 5, 5), "masks_queries_logits": torch.randn(1, 4, 8, 8)},
            ValueError,
            r"must agree on \(batch, queries\)",
            id="query-shapes",
        ),
    ],
)
def test_unusable_outputs_are_refused(outputs, error, match):
    with pytest.raises(error, match=match):
        hf.restore_semantic_probs(outputs, model=SimpleNamespace(model_type="maskformer"))


def test_query_shapes_are_checked_with_a_known_model():
    fields = {"class_queries_logits": torch.randn(1, 5), "masks_queries_logits": torch.randn(1, 5, 8, 8)}
    with pytest.raises(ValueError, match=r"class_queries_logits must have shape \(batch, queries, classes\)"):
        hf.restore_semantic_probs(fields, model=SimpleNamespace(model_type="mask2former"))


def test_class_logits_without_room_for_the_null_class_are_refused():
    fields = {"logits": torch.randn(1, 5, 1), "pred_masks": torch.randn(1, 5, 8, 8)}
    with pytest.raises(ValueError, match=r"shape \(1, 5, 1\) must hold at least one class plus the null"):
        hf.restore_semantic_probs(fields, model=SimpleNamespace(model_type="detr"))


def test_seggpt_rfdetr_and_clipseg_outputs_are_refused():
    from transformers.models.clipseg.modeling_clipseg import CLIPSegImageSegmentationOutput
    from transformers.models.rf_detr.modeling_rf_detr import RfDetrInstanceSegmentationOutput
    from transformers.models.seggpt.modeling_seggpt import SegGptImageSegmentationOutput

    with pytest.raises(ValueError, match="SegGPT-style pred_masks are RGB images"):
        hf.restore_semantic_probs(SegGptImageSegmentationOutput(pred_masks=torch.randn(1, 3, 64, 32)))
    rf_detr = RfDetrInstanceSegmentationOutput(
        logits=torch.randn(1, 10, 4), pred_masks=torch.randn(1, 10, 8, 8)
    )
    with pytest.raises(ValueError, match=r"RF-DETR.*no official semantic post-processing"):
        hf.postprocess(rf_detr, target_sizes=[(16, 16)])
    with pytest.raises(ValueError, match=r"shape \(2, 32, 32\), one map per prompt .*CLIPSeg"):
        hf.restore_semantic_probs(CLIPSegImageSegmentationOutput(logits=torch.randn(2, 32, 32)))
    with pytest.raises(ValueError, match="cannot tell which DETR model"):
        hf.restore_semantic_probs({"logits": torch.randn(1, 5, 5), "pred_masks": torch.randn(1, 5, 8, 8)})


@pytest.mark.parametrize(
    ("target_sizes", "match"),
    [
        pytest.param([(48, 80), (70, 50), (10, 10)], "2 expected, got 3", id="too-many"),
        pytest.param([(48, 80)], "2 expected, got 1", id="too-few"),
        pytest.param((48, 80), "2 expected, got 1", id="one-pair-for-two-images"),
        pytest.param(
            torch.tensor([[48, 80, 1], [70, 50, 1]]), r"shape \(batch, 2\) or \(2,\); got shape \(2, 3\)"
        ),
        pytest.param([(48, 80), (70,)], r"\(height, width\) pairs of integers; got \(70,\)", id="short-pair"),
        pytest.param([(48, 80), (70.5, 50)], "pairs of integers", id="fraction"),
        pytest.param([(48, 80), (0, 50)], "positive", id="zero"),
        pytest.param("48x80", "list of \\(height, width\\) pairs; got str", id="string"),
    ],
)
def test_wrong_target_sizes_are_refused(segformer, target_sizes, match):
    with pytest.raises(ValueError, match=r"target_sizes .*" + match):
        hf.restore_semantic_probs(segformer.outputs, target_sizes=target_sizes)


def test_wrong_model_and_rankseg_kwargs_are_refused(segformer):
    with pytest.raises(TypeError, match=r"model must be the transformers model .*; got int"):
        hf.restore_semantic_probs(segformer.outputs, model=42)
    with pytest.raises(TypeError, match="rankseg_kwargs must be a dict of RankSEG arguments; got list"):
        hf.postprocess(segformer.outputs, rankseg_kwargs=["dice"])
    with pytest.raises(ValueError, match="metric must be one of"):
        hf.postprocess(segformer.outputs, rankseg_kwargs={"metric": "f1"})


# --------------------------------------------------------------------------------------------
# Packaging.


def test_importing_the_module_does_not_import_transformers():
    code = "import sys, rankseg.integration.transformers; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_segformer_example_runs_and_its_acc_decoding_is_the_official_output(capsys):
    example = Path(__file__).resolve().parents[1] / "examples" / "transformers_segformer.py"
    runpy.run_path(str(example), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert all("-> RankSEG" in line and line.endswith("equals the official output: True") for line in lines)
