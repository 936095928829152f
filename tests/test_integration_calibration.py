"""``calibration=`` in the transformers and SAM integrations (issue 10): the restored probabilities
equal the official transformers post-processing run on the logits divided by ``T``.

Tiny random-weight models (``tests/hf_models.py``, ``tests/sam_models.py``,
``tests/sam_video_models.py``) give real outputs; the official post-processors are called on a
copy of the outputs whose logits are divided by ``T`` with plain torch division. Temperatures are
exactly representable in float32 (0.375, 2.5, ...), so the division is the same in both, and ``T =
1`` must change no bit. Query and DETR families refuse a calibration, naming why; the SAM adapters
refuse per-class and softmax calibrations.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
pytest.importorskip("torchvision.ops")  # the SAM2 / SAM3 processors are torchvision-only

import sam_video_models  # noqa: E402
from rankseg.calibration import NotFittedError, TemperatureScaling  # noqa: E402
from rankseg.data import sample_labels  # noqa: E402
from rankseg.integration import _sam_video  # noqa: E402
from rankseg.integration import transformers as hf  # noqa: E402
from rankseg.integration.sam import Sam1, Sam2, Sam3  # noqa: E402

import hf_models  # noqa: E402
import sam_models  # noqa: E402

SIZES = hf_models.IMAGE_SIZES


def state(temperature, activation="softmax", num_classes=None):
    """A fitted TemperatureScaling state: a float is global, a list per class."""
    per_class = isinstance(temperature, list)
    result = {
        "format": "rankseg.TemperatureScaling",
        "version": 1,
        "activation": activation,
        "per_class": per_class,
        "temperature": temperature,
    }
    if per_class or num_classes is not None:
        result["num_classes"] = num_classes or len(temperature)
    return result


def divided(logits, temperature, dim=1):
    """``logits / T`` by plain torch division (a per-class T along ``dim``)."""
    t = torch.tensor(temperature, dtype=logits.dtype)
    if t.dim() == 1:
        shape = [1] * logits.dim()
        shape[dim] = -1
        t = t.reshape(shape)
    return logits / t


def _with(outputs, **fields):
    return type(outputs)(**{**dict(outputs), **fields})


def _same_list(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and torch.equal(x, y)


# --------------------------------------------------------------------------------------------------
# Fixtures: each tiny model is built and run once per module


@pytest.fixture(scope="module")
def segformer():
    return hf_models.PLAIN_BUILDERS["segformer"]()


@pytest.fixture(scope="module")
def sam3_hf():
    return hf_models.sam3()


@pytest.fixture(scope="module")
def sam_case():
    case = sam_models.build_sam()
    # tiny SAM logits are ~1e-4: scaled so that the sigmoid is not 0.5 everywhere
    case.outputs = _with(case.outputs, pred_masks=case.outputs.pred_masks * 1e4)
    return case


@pytest.fixture(scope="module")
def sam2_case():
    case = sam_models.build_sam2()
    case.outputs = _with(case.outputs, pred_masks=case.outputs.pred_masks * 1e4)
    return case


@pytest.fixture(scope="module")
def sam3_case():
    case = sam_models.build_sam3()
    case.outputs = _with(
        case.outputs,
        pred_masks=case.outputs.pred_masks * 1e3,
        semantic_seg=case.outputs.semantic_seg * 1e3,
    )
    return case


@pytest.fixture(scope="module")
def sam2_video_case():
    return sam_video_models.run_case("sam2_video")


@pytest.fixture(scope="module")
def sam3_video_case():
    return sam_video_models.run_case("sam3_video")


# --------------------------------------------------------------------------------------------------
# transformers: dense logits (SegFormer) and SAM3 semantic_seg


@pytest.mark.parametrize("temperature", [0.375, 2.5, [0.5, 2.0, 0.25, 1.5]])
def test_calibrated_logits_equal_the_official_post_processing_of_logits_over_t(segformer, temperature):
    original = segformer.outputs.logits.clone()
    calibration = state(temperature)
    probs = hf.restore_semantic_probs(segformer.outputs, target_sizes=SIZES, calibration=calibration)
    scaled = _with(segformer.outputs, logits=divided(segformer.outputs.logits, temperature))
    official = segformer.official(scaled, target_sizes=SIZES, return_segmentation_scores=True)
    for p, item, size in zip(probs, official, SIZES, strict=True):
        assert p.shape == (hf_models.NUM_LABELS, *size) and p.dtype == torch.float32
        torch.testing.assert_close(p, item.segmentation_scores.softmax(dim=0), rtol=1e-6, atol=1e-7)
    # bit for bit the restoration of the divided logits: T divides before the resize
    _same_list(probs, hf.restore_semantic_probs(scaled, target_sizes=SIZES))
    argmax = hf.postprocess(
        segformer.outputs,
        target_sizes=SIZES,
        calibration=calibration,
        rankseg_kwargs={"metric": "acc", "solver": "argmax"},
    )
    _same_list(argmax, [item.segmentation for item in official])
    uncalibrated = hf.restore_semantic_probs(segformer.outputs, target_sizes=SIZES)
    assert not torch.allclose(probs[0], uncalibrated[0], atol=1e-3)  # the temperature does something
    assert torch.equal(segformer.outputs.logits, original)  # the outputs are not modified


@pytest.mark.parametrize("temperature", [1.0, [1.0, 1.0, 1.0, 1.0]])
def test_a_unit_temperature_changes_no_bit(segformer, sam3_hf, temperature):
    for sizes in (SIZES, None):
        plain = hf.restore_semantic_probs(segformer.outputs, target_sizes=sizes)
        _same_list(
            hf.restore_semantic_probs(segformer.outputs, target_sizes=sizes, calibration=state(temperature)),
            plain,
        )
        preds = hf.postprocess(segformer.outputs, target_sizes=sizes, calibration=state(temperature))
        _same_list(preds, hf.postprocess(segformer.outputs, target_sizes=sizes))
    one = 1.0 if not isinstance(temperature, list) else [1.0]
    sigmoid_state = state(one, "sigmoid", num_classes=1)
    plain = hf.restore_semantic_probs(sam3_hf.outputs, target_sizes=SIZES)
    _same_list(
        hf.restore_semantic_probs(sam3_hf.outputs, target_sizes=SIZES, calibration=sigmoid_state), plain
    )


def test_a_calibration_fitted_on_the_model_is_accepted_as_object_path_or_state(segformer, tmp_path):
    """Fit on the model's own logits (labels drawn from a sharper softmax: under-confident model)."""
    logits = segformer.outputs.logits
    labels = sample_labels(torch.softmax(3 * logits.double(), 1), seed=0)
    scaler = TemperatureScaling().fit(logits, labels)
    assert 0.2 < float(scaler.temperature_) < 0.5
    path = scaler.save(tmp_path / "calibration.json")
    expected = hf.restore_semantic_probs(
        _with(segformer.outputs, logits=logits / scaler.temperature_.float()), target_sizes=SIZES
    )
    for calibration in (scaler, path, str(path), scaler.state_dict()):
        _same_list(
            hf.restore_semantic_probs(segformer.outputs, target_sizes=SIZES, calibration=calibration),
            expected,
        )
    assert isinstance(str(path), str)


@pytest.mark.parametrize("targets", [SIZES, None])
def test_sam3_semantic_seg_is_calibrated_before_the_sigmoid(sam3_hf, sam3_case, targets):
    """transformers' semantic_seg family and Sam3.restore_semantic_mask_probs both equal the
    official post_process_semantic_segmentation on semantic_seg / T."""
    for outputs, official_pp in (
        (sam3_hf.outputs, sam3_hf.official),
        (sam3_case.outputs, sam3_case.processor.post_process_semantic_segmentation),
    ):
        scaled = _with(outputs, semantic_seg=divided(outputs.semantic_seg, 2.5))
        official = official_pp(scaled, target_sizes=targets, return_segmentation_scores=True)
        calibration = state(2.5, "sigmoid")
        via_hf = hf.restore_semantic_probs(outputs, target_sizes=targets, calibration=calibration)
        via_sam = Sam3(calibration=calibration).restore_semantic_mask_probs(outputs, target_sizes=targets)
        for a, b, item in zip(via_hf, via_sam, official, strict=True):
            torch.testing.assert_close(a, item.segmentation_scores, rtol=0, atol=0)
            torch.testing.assert_close(b, item.segmentation_scores, rtol=0, atol=0)


@pytest.mark.parametrize(
    "builder, name",
    [
        ("maskformer", "MaskFormer"),
        ("mask2former", "Mask2Former"),
        ("oneformer", "OneFormer"),
        ("eomt_pad", "EoMT"),
        ("detr", "DETR"),
        ("conditional_detr", "ConditionalDETR"),
    ],
)
def test_query_and_detr_families_refuse_a_calibration_saying_why(builder, name):
    case = getattr(hf_models, builder)()
    kwargs = {"target_sizes": SIZES, **case.kwargs}
    hf.restore_semantic_probs(case.outputs, **kwargs)  # works without one
    for call in (hf.restore_semantic_probs, hf.postprocess):
        with pytest.raises(
            ValueError, match=rf"no defined place in {name} post-processing.*softmax over each query"
        ):
            call(case.outputs, calibration=state(2.0), **kwargs)


def test_transformers_refuses_a_calibration_that_does_not_fit_the_outputs(segformer, sam3_hf):
    with pytest.raises(
        ValueError, match=r"fitted with activation='sigmoid', but these outputs need activation='softmax'"
    ):
        hf.restore_semantic_probs(segformer.outputs, calibration=state(2.0, "sigmoid"))
    with pytest.raises(
        ValueError, match=r"fitted with activation='softmax', but these outputs need activation='sigmoid'"
    ):
        hf.postprocess(sam3_hf.outputs, calibration=state(2.0))
    with pytest.raises(ValueError, match=r"per-class temperatures for 3 classes but outputs.logits has 4"):
        hf.restore_semantic_probs(segformer.outputs, calibration=state([1.0, 2.0, 3.0]))
    with pytest.raises(NotFittedError, match="not fitted yet"):
        hf.postprocess(segformer.outputs, calibration=TemperatureScaling())
    with pytest.raises(TypeError, match="calibration must be a fitted TemperatureScaling, the path"):
        hf.restore_semantic_probs(segformer.outputs, calibration=2.0)
    with pytest.raises(FileNotFoundError):
        hf.restore_semantic_probs(segformer.outputs, calibration="no-such-calibration.json")


# --------------------------------------------------------------------------------------------------
# SAM image adapters


def test_sam1_calibration_divides_pred_masks_before_the_official_geometry(sam_case):
    processor, outputs = sam_case.processor, sam_case.outputs
    args = (sam_case.original_sizes, sam_case.reshaped_input_sizes)
    adapter = Sam1(pad_size=processor.pad_size, calibration=state(2.5, "sigmoid"))
    probs = adapter.restore_mask_probs(outputs, *args)
    official = processor.post_process_masks(divided(outputs.pred_masks, 2.5), *args, binarize=False)
    for p, logits in zip(probs, official, strict=True):
        torch.testing.assert_close(p, torch.sigmoid(logits), rtol=0, atol=0)
    plain = Sam1(pad_size=processor.pad_size).restore_mask_probs(outputs, *args)
    _same_list(
        Sam1(pad_size=processor.pad_size, calibration=state(1.0, "sigmoid")).restore_mask_probs(
            outputs, *args
        ),
        plain,
    )
    masks = adapter.postprocess(outputs, *args)
    assert [m.shape for m in masks] == [p.shape for p in probs]


@pytest.mark.parametrize("non_overlap", [False, True])
def test_sam2_calibration_divides_pred_masks_before_the_resize_and_the_non_overlap_step(
    sam2_case, non_overlap
):
    processor, outputs = sam2_case.processor, sam2_case.outputs
    adapter = Sam2(apply_non_overlapping_constraints=non_overlap, calibration=state(0.375, "sigmoid"))
    probs = adapter.restore_mask_probs(outputs, sam2_case.original_sizes)
    official = processor.post_process_masks(
        divided(outputs.pred_masks, 0.375),
        sam2_case.original_sizes,
        binarize=False,
        apply_non_overlapping_constraints=non_overlap,
    )
    for p, logits in zip(probs, official, strict=True):
        torch.testing.assert_close(p, torch.sigmoid(logits), rtol=0, atol=0)
    plain = Sam2(apply_non_overlapping_constraints=non_overlap).restore_mask_probs(
        outputs, sam2_case.original_sizes
    )
    unit = Sam2(apply_non_overlapping_constraints=non_overlap, calibration=state(1.0, "sigmoid"))
    _same_list(unit.restore_mask_probs(outputs, sam2_case.original_sizes), plain)


def test_sam3_instance_calibration_divides_the_mask_logits_not_the_scores(sam3_case):
    outputs = sam3_case.outputs
    scores = (torch.sigmoid(outputs.pred_logits) * torch.sigmoid(outputs.presence_logits)).flatten()
    threshold = scores.median().item()
    restored = Sam3(threshold=threshold, calibration=state(2.5, "sigmoid")).restore_instance_mask_probs(
        outputs, target_sizes=SIZES
    )
    plain = Sam3(threshold=threshold).restore_instance_mask_probs(outputs, target_sizes=SIZES)
    scaled = _with(outputs, pred_masks=divided(outputs.pred_masks, 2.5))
    all_probs = torch.cat([r["mask_probs"].flatten() for r in restored])
    levels = [0.5, *all_probs.quantile(torch.tensor([0.1, 0.5, 0.9])).tolist()]
    for level in levels:
        official = sam3_case.processor.post_process_instance_segmentation(
            scaled, threshold=threshold, mask_threshold=level, target_sizes=SIZES
        )
        for ours, off, base in zip(restored, official, plain, strict=True):
            assert torch.equal(ours["scores"], base["scores"]) and torch.equal(ours["boxes"], base["boxes"])
            torch.testing.assert_close(ours["scores"], off["scores"], rtol=0, atol=0)
            assert torch.equal((ours["mask_probs"] > level).long(), off["masks"])
    unit = Sam3(threshold=threshold, calibration=state(1.0, "sigmoid")).restore_instance_mask_probs(
        outputs, SIZES
    )
    for a, b in zip(unit, plain, strict=True):
        assert torch.equal(a["mask_probs"], b["mask_probs"])


@pytest.mark.parametrize("adapter", ["Sam1", "Sam2", "Sam3"])
def test_sam_adapters_refuse_per_class_and_softmax_calibrations(sam_case, sam2_case, sam3_case, adapter):
    calls = {
        "Sam1": lambda c: Sam1(pad_size=128, calibration=c).restore_mask_probs(
            sam_case.outputs, sam_case.original_sizes, sam_case.reshaped_input_sizes
        ),
        "Sam2": lambda c: Sam2(calibration=c).postprocess(sam2_case.outputs, sam2_case.original_sizes),
        "Sam3": lambda c: Sam3(calibration=c).postprocess_semantic(sam3_case.outputs, SIZES),
    }
    with pytest.raises(ValueError, match=rf"{adapter} calibration must be a global temperature.*3 per-class"):
        calls[adapter](state([0.5, 1.0, 2.0], "sigmoid"))
    with pytest.raises(ValueError, match=rf"{adapter} calibration was fitted with activation='softmax'"):
        calls[adapter](state(2.0))
    if adapter == "Sam3":
        with pytest.raises(ValueError, match="Sam3 calibration must be a global temperature"):
            Sam3(calibration=state([0.5, 1.0], "sigmoid")).postprocess_instance(sam3_case.outputs, SIZES)


def test_the_adapters_store_the_calibration_as_given(tmp_path):
    path = tmp_path / "calibration.json"
    adapter = Sam2(calibration=path)
    assert adapter.calibration is path
    assert repr(adapter).endswith(f"calibration={path!r})")
    assert "calibration" not in repr(Sam1())


# --------------------------------------------------------------------------------------------------
# SAM video


def test_tracker_video_frames_are_calibrated_as_the_official_video_post_processing(sam2_video_case):
    case = sam2_video_case
    adapter = Sam2(calibration=state(0.375, "sigmoid"))
    unit = Sam2(calibration=state(1.0, "sigmoid"))
    for clip in case.clips:
        for outputs in clip.outputs:
            frame = adapter.restore_mask_probs(outputs, inference_session=clip.session)
            official = case.processor.post_process_masks(
                [divided(outputs.pred_masks, 0.375)], [clip.size], binarize=False
            )[0]
            torch.testing.assert_close(frame["mask_probs"], torch.sigmoid(official), rtol=0, atol=0)
            plain = Sam2().restore_mask_probs(outputs, inference_session=clip.session)["mask_probs"]
            assert torch.equal(
                unit.restore_mask_probs(outputs, inference_session=clip.session)["mask_probs"], plain
            )
    frames = list(adapter.propagate(case.model, case.clips[0].session, start_frame_idx=0))
    assert [f["frame_idx"] for f in frames] == list(range(sam_video_models.NUM_FRAMES))


def test_concept_video_frames_equal_the_official_postprocess_outputs_of_logits_over_t(sam3_video_case):
    """Restored probabilities thresholded as the official ``> 0`` on ``obj_id_to_mask / T``, taken
    through the adapter's later steps, give the official frame of the divided outputs."""
    case = sam3_video_case
    adapter = Sam3(calibration=state(2.5, "sigmoid"))
    checked = 0
    for clip in case.clips:
        for outputs in clip.outputs:
            scaled = _with(
                outputs, obj_id_to_mask={k: divided(v, 2.5) for k, v in outputs.obj_id_to_mask.items()}
            )
            official = case.processor.postprocess_outputs(clip.session, copy.copy(scaled))
            restored = adapter.restore_video_mask_probs(clip.session, outputs)
            ids = restored["object_ids"].tolist()
            low = [scaled.obj_id_to_mask[i] for i in ids]
            logits = (
                F.interpolate(
                    torch.cat(low)[:, None].float(), size=clip.size, mode="bilinear", align_corners=False
                )[:, 0]
                if ids
                else torch.zeros(0, *clip.size)
            )
            torch.testing.assert_close(restored["mask_probs"], torch.sigmoid(logits), rtol=0, atol=0)

            def threshold(probs, logits=logits):
                ties = probs[:, 0] == 0.5
                return torch.where(ties, logits > 0, probs[:, 0] > 0.5)[:, None]

            ours = _sam_video.postprocess_concept_frame(threshold, clip.session, restored)
            assert torch.equal(ours["object_ids"], official["object_ids"])
            assert torch.equal(ours["masks"], official["masks"])
            plain = Sam3().restore_video_mask_probs(clip.session, outputs)
            unit = Sam3(calibration=state(1.0, "sigmoid")).restore_video_mask_probs(clip.session, outputs)
            assert torch.equal(unit["mask_probs"], plain["mask_probs"])
            checked += len(ids)
    assert checked > 0
    with pytest.raises(ValueError, match="Sam3 calibration must be a global temperature"):
        Sam3(calibration=state([1.0, 2.0], "sigmoid")).postprocess_video(
            case.clips[1].session, case.clips[1].outputs[-1]
        )


# --------------------------------------------------------------------------------------------------
# Devices and dtypes


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_the_temperature_follows_the_outputs_device_and_dtype(device, dtype):
    """Half precision is restored in float32 (divided there), float64 in float64; the per-class
    temperature moves to the outputs' device. Equal to restoring logits already divided in that dtype."""
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 3, 6, 7, generator=gen) * 3).to(device=device, dtype=dtype)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    per_class = [0.5, 2.0, 0.375]
    probs = hf.restore_semantic_probs(
        {"logits": logits}, target_sizes=[(9, 11)] * 2, calibration=state(per_class)
    )
    expected = hf.restore_semantic_probs(
        {"logits": divided(logits.to(work), per_class)}, target_sizes=[(9, 11)] * 2
    )
    for p, e in zip(probs, expected, strict=True):
        assert p.device == logits.device and p.dtype == work
        assert torch.equal(p, e)
    masks = (torch.randn(1, 2, 1, 5, 5, generator=gen) * 3).to(device=device, dtype=dtype)
    outputs = {"pred_masks": masks, "iou_scores": torch.rand(1, 2, 1).to(device), "object_score_logits": None}
    restored = Sam2(calibration=state(2.5, "sigmoid")).restore_mask_probs(outputs, [(8, 6)])[0]
    plain = Sam2().restore_mask_probs({**outputs, "pred_masks": divided(masks.to(work), 2.5)}, [(8, 6)])[0]
    assert restored.device == masks.device and restored.dtype == work
    assert torch.equal(restored, plain)
