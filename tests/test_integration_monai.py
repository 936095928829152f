"""rankseg.integration.monai through the real MONAI: RankSEG / RankSEGd against the functional core,
against AsDiscrete, in a sliding-window pipeline that saves NIfTI files, and without MONAI."""

from __future__ import annotations

import math
import pickle
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st
from monai.data import MetaTensor, decollate_batch, list_data_collate
from monai.data.meta_obj import get_track_meta, set_track_meta
from monai.inferers import sliding_window_inference
from monai.metrics import DiceMetric
from monai.networks.nets import UNet
from monai.transforms import (
    Activations,
    Activationsd,
    AsDiscrete,
    AsDiscreted,
    Compose,
    Flip,
    Invertd,
    Orientationd,
    SaveImaged,
    Spacingd,
)
from torch import Tensor

from rankseg.functional import rankseg
from rankseg.integration import monai as rankseg_monai
from rankseg.integration.monai import RankSEG, RankSEGd
from rankseg.metrics import dice_score

ROOT = Path(__file__).resolve().parents[1]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
# Values that make the hard cases likely: exact 0 and 1, ties, and 0.5 (AsDiscrete's `>=` threshold).
PALETTE = [0.0, 0.25, 0.5, 0.75, 1.0]


@st.composite
def items(draw, min_classes: int = 1, max_side: int = 5, logits: bool = False) -> Tensor:
    """One channel-first item ``(C, *spatial)`` with 1 to 3 spatial dims (possibly empty)."""
    classes = draw(st.integers(min_classes, 4))
    spatial = draw(st.lists(st.integers(0, max_side), min_size=1, max_size=3))
    dtype = draw(st.sampled_from(DTYPES))
    count = classes * math.prod(spatial)
    if logits:
        value = st.one_of(st.sampled_from([-30.0, -1.0, 0.0, 1.0, 30.0]), st.floats(-20, 20, width=32))
    else:
        value = st.one_of(st.sampled_from(PALETTE), st.floats(0, 1, width=32))
    values = draw(st.lists(value, min_size=count, max_size=count))
    return torch.tensor(values, dtype=torch.float64).reshape(classes, *spatial).to(dtype)


def as_kind(item: Tensor, kind: str):
    """The item as the caller would hold it: a plain tensor, a NumPy array or a MetaTensor."""
    if kind == "numpy":
        return item.numpy()
    if kind == "meta":
        return MetaTensor(
            item.clone(), affine=torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0], dtype=torch.float64))
        )
    return item


def same_output(ours, theirs) -> None:
    """Same type, dtype, shape, device and values: what AsDiscrete's users rely on."""
    assert type(ours) is type(theirs)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape and ours.device == theirs.device
    assert torch.equal(torch.as_tensor(ours), torch.as_tensor(theirs))


def rotation_affine(angle: float, spacing: tuple[float, float, float], origin: tuple[float, float, float]):
    """Anisotropic spacing then a rotation about the third axis (MONAI 1.6.1's SaveImage fails on
    affines whose top-left 2x2 block is singular, such as axis swaps: see the integration notes)."""
    cos, sin = math.cos(angle), math.sin(angle)
    affine = torch.eye(4, dtype=torch.float64)
    rotation = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    affine[:3, :3] = rotation @ torch.diag(torch.tensor(spacing, dtype=torch.float64))
    affine[:3, 3] = torch.tensor(origin, dtype=torch.float64)
    return affine


def softmax_item(
    seed: int, classes: int = 3, spatial: tuple[int, ...] = (6, 5, 4), scale: float = 1.5
) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(scale * torch.randn(classes, *spatial, generator=generator), dim=0)


def void_item() -> Tensor:
    """(4, 4, 4): class 2 owns the top half; in the uniform bottom half no class claims a pixel."""
    probs = torch.full((4, 4, 4), 0.25)
    probs[:, :2] = 0.1 / 3
    probs[2, :2] = 0.9
    return probs


# --------------------------------------------------------------------------------------------
# The pipeline of the issue: UNet -> sliding_window_inference -> decollate_batch -> post transforms.


@pytest.fixture(scope="module")
def pipeline_case():
    """Two synthetic volumes as MetaTensors with rotated, anisotropic affines, collated, run through
    a tiny random 3-D UNet with sliding_window_inference and decollated."""
    torch.manual_seed(0)
    net = UNet(
        spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=0
    ).eval()
    shape = (24, 20, 16)
    labels = torch.zeros((1, *shape), dtype=torch.int64)
    labels[:, 8:16], labels[:, 16:] = 1, 2  # every class in every volume: DiceMetric and rankseg agree on NaN
    affines = [
        rotation_affine(0.3, (1.5, 1.0, 2.0), (10.0, -5.0, 3.0)),
        rotation_affine(-0.7, (0.8, 0.9, 1.2), (0, 2, 1)),
    ]
    generator = torch.Generator().manual_seed(1)
    cases = [
        {
            "image": MetaTensor(
                labels.float() + torch.randn((1, *shape), generator=generator),
                affine=affine,
                meta={"filename_or_obj": f"case{index}.nii.gz"},
            ),
            "label": MetaTensor(labels.clone(), affine=affine),
        }
        for index, affine in enumerate(affines)
    ]
    batch = list_data_collate(cases)
    with torch.no_grad():
        batch["pred"] = sliding_window_inference(
            batch["image"], roi_size=(16, 16, 16), sw_batch_size=4, predictor=net
        )
    assert batch["pred"].is_batch and batch["pred"].shape == (2, 3, *shape)
    return decollate_batch(batch), affines


def test_pipeline_saves_the_rankseg_mask_of_each_volume_in_its_own_geometry(pipeline_case, tmp_path):
    items_, affines = pipeline_case
    post = Compose(
        [
            Activationsd(keys="pred", softmax=True),
            RankSEGd(keys="pred", metric="dice"),
            SaveImaged(
                keys="pred",
                output_dir=tmp_path,
                output_postfix="rankseg",
                separate_folder=False,
                print_log=False,
            ),
        ]
    )
    outputs = [post(item) for item in items_]

    probs = torch.stack([torch.softmax(item["pred"].as_tensor(), dim=0) for item in items_])
    expected = rankseg(probs, metric="dice")  # (2, H, W, D): the core on the whole batch
    assert (expected != probs.argmax(dim=1)).any(), "RankSEG differs from argmax here, so the check can fail"
    for index, (output, affine) in enumerate(zip(outputs, affines, strict=True)):
        pred = output["pred"]
        assert isinstance(pred, MetaTensor) and pred.dtype == torch.float32 and pred.shape == (1, 24, 20, 16)
        assert torch.equal(pred.as_tensor(), expected[index][None].float())
        assert torch.allclose(pred.affine, affine)
        saved = nib.load(tmp_path / f"case{index}_rankseg.nii.gz")
        assert np.allclose(saved.affine, affine.numpy(), atol=1e-6)
        assert np.array_equal(np.asarray(saved.dataobj), expected[index].numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case0_rankseg.nii.gz", "case1_rankseg.nii.gz"]


def test_dicemetric_on_onehot_outputs_equals_rankseg_dice_score(pipeline_case):
    items_, _ = pipeline_case
    post = Compose(
        [Activationsd(keys="pred", softmax=True), RankSEGd(keys="pred", metric="dice", to_onehot=3)]
    )
    y_pred = [post(item)["pred"] for item in items_]
    y = [AsDiscrete(to_onehot=3)(item["label"]) for item in items_]
    per_class = DiceMetric(include_background=True, reduction="none")
    mean = DiceMetric(include_background=True, reduction="mean")
    per_class(y_pred=y_pred, y=y)
    mean(y_pred=y_pred, y=y)

    masks = torch.stack([pred.as_tensor().argmax(dim=0) for pred in y_pred])  # one-hot -> labels
    assert torch.equal(torch.stack(y_pred).sum(dim=1), torch.ones_like(masks, dtype=torch.float32))
    labels = torch.stack([item["label"].as_tensor()[0] for item in items_])
    ours = dice_score(masks, labels, 3, average="none")
    assert torch.allclose(per_class.aggregate().double(), ours, atol=1e-6)
    assert math.isclose(mean.aggregate().item(), float(dice_score(masks, labels, 3)), abs_tol=1e-6)


@pytest.fixture(scope="module")
def resampled_case():
    """One volume reoriented and resampled by pre transforms, predicted at the resampled grid."""
    torch.manual_seed(0)
    net = UNet(
        spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=0
    ).eval()
    affine = rotation_affine(0.3, (1.5, 1.0, 2.0), (10.0, -5.0, 3.0))
    image = MetaTensor(
        torch.randn((1, 20, 18, 14), generator=torch.Generator().manual_seed(2)), affine=affine
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Orientationd's changed default for labels
        pre = Compose(
            [Orientationd(keys="image", axcodes="LPS"), Spacingd(keys="image", pixdim=(1.2, 1.2, 1.2))]
        )
        item = pre({"image": image})
    assert item["image"].shape[1:] != image.shape[1:] and len(item["image"].applied_operations) == 2
    batch = list_data_collate([item])
    with torch.no_grad():
        batch["pred"] = sliding_window_inference(
            batch["image"], roi_size=(16, 16, 16), sw_batch_size=4, predictor=net
        )
    return pre, decollate_batch(batch)[0], image


def test_after_invertd_the_mask_is_in_the_original_grid_and_equals_rankseg_of_the_inverted_probs(
    resampled_case,
):
    pre, item, image = resampled_case
    invert = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False)
    probs = Compose([Activationsd(keys="pred", softmax=True), invert])(dict(item))["pred"]
    assert probs.shape == (3, *image.shape[1:])
    output = Compose([Activationsd(keys="pred", softmax=True), invert, RankSEGd(keys="pred", metric="dice")])(
        dict(item)
    )["pred"]
    expected = rankseg(probs.as_tensor()[None], metric="dice")[0]
    assert (expected != probs.as_tensor().argmax(dim=0)).any(), "RankSEG differs from argmax here"
    assert isinstance(output, MetaTensor) and output.shape == (1, *image.shape[1:])
    assert torch.equal(output.as_tensor(), expected[None].float())
    assert torch.allclose(output.affine.double(), image.affine.double(), atol=1e-5)


def test_invertd_after_rankseg_d_inverts_its_mask_as_it_inverts_asdiscreted_s(resampled_case):
    pre, item, image = resampled_case
    invert = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True)
    ours = Compose([Activationsd(keys="pred", softmax=True), RankSEGd(keys="pred", metric="acc"), invert])
    monai_s = Compose(
        [Activationsd(keys="pred", softmax=True), AsDiscreted(keys="pred", argmax=True), invert]
    )
    a, b = ours(dict(item))["pred"], monai_s(dict(item))["pred"]
    assert a.shape == b.shape == (1, *image.shape[1:])
    assert torch.equal(a.as_tensor(), b.as_tensor()) and torch.allclose(a.affine, b.affine)
    dice = Compose([Activationsd(keys="pred", softmax=True), RankSEGd(keys="pred", metric="dice"), invert])(
        dict(item)
    )["pred"]
    assert dice.shape == a.shape and set(dice.unique().tolist()) <= {0.0, 1.0, 2.0}


def test_a_collated_batch_is_refused_with_a_pointer_to_decollate_batch(pipeline_case):
    items_, _ = pipeline_case
    batch = list_data_collate([{"pred": item["pred"]} for item in items_])["pred"]
    with pytest.raises(ValueError, match=r"got a batch of shape \(2, 3, 24, 20, 16\).*decollate_batch"):
        RankSEG()(batch)
    with pytest.raises(ValueError, match="decollate_batch"):
        RankSEG()(batch.as_tensor())  # a plain 5-D tensor has more than 3 spatial dims: a batch
    batch_2d = list_data_collate([{"p": MetaTensor(softmax_item(s, spatial=(5, 4)))} for s in (0, 1)])["p"]
    assert batch_2d.is_batch and batch_2d.dim() == 4  # (B, C, H, W): the MetaTensor says it is a batch
    with pytest.raises(ValueError, match="decollate_batch"):
        RankSEG()(batch_2d)
    # Decollated, every item is transformed as the core transforms the batch.
    probs = torch.softmax(batch.as_tensor(), dim=1)
    per_item = [RankSEG(activation="softmax")(item) for item in decollate_batch(batch)]
    assert torch.equal(torch.cat([p.as_tensor() for p in per_item]), rankseg(probs).float())


def test_a_plain_4d_tensor_is_one_3d_item():
    probs = softmax_item(2, classes=3, spatial=(6, 5, 4))
    assert torch.equal(RankSEG()(probs).as_tensor(), rankseg(probs[None])[0][None].float())


# --------------------------------------------------------------------------------------------
# Equal to the functional core on the item as a batch of one.


@given(
    item=items(),
    metric=st.sampled_from(["dice", "iou"]),
    mode=st.sampled_from([None, "multiclass", "multilabel"]),
    smooth=st.sampled_from([0.0, 1e-6, 0.5, 1e3]),
    pruning_prob=st.sampled_from([0.0, 0.5, 0.9]),
    extra=st.integers(0, 2),
    kind=st.sampled_from(["tensor", "numpy", "meta"]),
)
def test_rankseg_equals_the_functional_call_on_a_batch_of_one(
    item, metric, mode, smooth, pruning_prob, extra, kind
):
    classes = item.shape[0]
    assume(not (mode == "multiclass" and classes == 1))
    assume(not (kind == "numpy" and item.dtype == torch.bfloat16))  # NumPy has no bfloat16
    resolved = mode or ("multiclass" if classes > 1 else "multilabel")
    options = {"metric": metric, "smooth": smooth, "pruning_prob": pruning_prob}
    expected = rankseg(item[None], output_mode=resolved, **options)[0]
    before = item.clone()

    out = RankSEG(output_mode=mode, **options)(as_kind(item, kind))
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    if resolved == "multilabel":
        assert torch.equal(out.as_tensor(), expected.float())
    else:
        assert torch.equal(out.as_tensor(), expected[None].float())
        onehot = RankSEG(output_mode=mode, to_onehot=classes + extra, **options)(as_kind(item, kind))
        assert torch.equal(onehot.as_tensor(), F.one_hot(expected, classes + extra).movedim(-1, 0).float())
    assert torch.equal(item, before)  # the input is never modified


@given(
    item=items(logits=True), kind=st.sampled_from(["tensor", "meta"]), metric=st.sampled_from(["dice", "iou"])
)
def test_logits_with_an_activation_equal_monai_activations_then_rankseg(item, kind, metric):
    activation = "softmax" if item.shape[0] > 1 else "sigmoid"
    probs = Activations(**{activation: True})(as_kind(item, kind))
    expected = RankSEG(metric=metric)(probs)
    same_output(RankSEG(metric=metric, activation=activation)(as_kind(item, kind)), expected)
    mode = "multiclass" if item.shape[0] > 1 else "multilabel"
    core = rankseg(probs.as_tensor()[None], metric=metric, output_mode=mode)[0]
    assert torch.equal(expected.as_tensor(), (core[None] if mode == "multiclass" else core).float())


def test_sigmoid_applies_to_every_channel_in_multilabel_mode():
    logits = torch.tensor([[[-3.0, 0.0, 2.0, 4.0]], [[1.0, -1.0, 0.5, -4.0]]])  # (2, 1, 4)
    out = RankSEG(activation=" Sigmoid ", output_mode="multilabel")(logits)
    expected = rankseg(torch.sigmoid(logits)[None], output_mode="multilabel")[0]
    assert torch.equal(out.as_tensor(), expected.float())


def test_void_pixels_are_void_index_in_the_label_map_and_all_zero_in_one_hot():
    probs = void_item()
    labels = RankSEG(unassigned_policy="void")(probs)
    assert labels[0, 2:].eq(255).all() and labels[0, :2].eq(2).all()
    onehot = RankSEG(unassigned_policy="void", to_onehot=4)(probs)
    assert onehot[:, 2:].eq(0).all() and onehot[2, :2].eq(1).all() and onehot.sum(dim=0)[:2].eq(1).all()
    assert RankSEG(unassigned_policy="void", void_index=-1)(probs)[0, 2:].eq(-1).all()


# --------------------------------------------------------------------------------------------
# metric="acc" is AsDiscrete: values, dtype and output type.


@given(item=items(min_classes=2), kind=st.sampled_from(["tensor", "numpy", "meta"]), extra=st.integers(0, 2))
def test_acc_multiclass_is_asdiscrete_argmax(item, kind, extra):
    assume(not (kind == "numpy" and item.dtype == torch.bfloat16))
    classes = item.shape[0]
    same_output(RankSEG(metric="acc")(as_kind(item, kind)), AsDiscrete(argmax=True)(as_kind(item, kind)))
    n = classes + extra
    same_output(
        RankSEG(metric="acc", to_onehot=n)(as_kind(item, kind)),
        AsDiscrete(argmax=True, to_onehot=n)(as_kind(item, kind)),
    )


@given(item=items(), kind=st.sampled_from(["tensor", "numpy", "meta"]))
def test_acc_multilabel_is_asdiscrete_threshold_half_including_exactly_half(item, kind):
    assume(not (kind == "numpy" and item.dtype == torch.bfloat16))
    ours = RankSEG(metric="acc", output_mode="multilabel")(as_kind(item, kind))
    same_output(ours, AsDiscrete(threshold=0.5)(as_kind(item, kind)))


def test_acc_counts_exactly_half_as_foreground_where_the_core_does_not():
    probs = torch.tensor([[[0.5, 0.25, 0.75, 0.5]]], dtype=torch.float16)
    assert RankSEG(metric="acc")(probs).tolist() == [[[1.0, 0.0, 1.0, 1.0]]]
    assert rankseg(probs[None], metric="acc", output_mode="multilabel").tolist() == [
        [[[False, False, True, False]]]
    ]


@given(item=items(logits=True), kind=st.sampled_from(["tensor", "meta"]))
def test_acc_on_logits_is_activations_then_asdiscrete(item, kind):
    if item.shape[0] > 1:
        reference = AsDiscrete(argmax=True)(Activations(softmax=True)(as_kind(item, kind)))
        same_output(RankSEG(metric="acc", activation="softmax")(as_kind(item, kind)), reference)
    reference = AsDiscrete(threshold=0.5)(Activations(sigmoid=True)(as_kind(item, kind)))
    ours = RankSEG(metric="acc", activation="sigmoid", output_mode="multilabel")(as_kind(item, kind))
    same_output(ours, reference)


def test_acc_without_a_solver_does_not_warn_and_an_unfitting_solver_warns_at_the_callers_line():
    probs = softmax_item(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RankSEG(metric="acc")(probs)
        RankSEG()(probs, metric="acc")
    with pytest.warns(UserWarning, match="using solver 'argmax'") as record:
        RankSEG(metric="acc", solver="RMA")(probs)
    assert record[0].filename == __file__


# --------------------------------------------------------------------------------------------
# Options: per call, stored untouched, per key.


def test_per_call_options_override_the_stored_ones_for_that_call_only():
    probs = softmax_item(4)
    transform = RankSEG(metric="dice")
    acc, dice = transform(probs, metric="acc"), transform(probs)
    assert not torch.equal(acc.as_tensor(), dice.as_tensor()), "the override changes the result here"
    same_output(acc, RankSEG(metric="acc")(probs))
    same_output(dice, RankSEG(metric="dice")(probs))
    same_output(transform(probs, to_onehot=5), RankSEG(to_onehot=5)(probs))
    same_output(transform(probs, output_mode="multilabel"), RankSEG(output_mode="multilabel")(probs))
    same_output(transform(probs, smooth=2.0, pruning_prob=0.1), RankSEG(smooth=2.0, pruning_prob=0.1)(probs))
    logits = torch.log(probs)
    same_output(transform(logits, activation="softmax"), dice)
    voided = transform(void_item(), unassigned_policy="void")
    assert voided.eq(255).any() and not transform(void_item()).eq(255).any()
    assert transform.metric == "dice" and transform.to_onehot is None and transform.solver_params == {}


def test_constructor_stores_arguments_untouched_and_pickles():
    transform = RankSEG(metric="IoU", solver="exact", to_onehot=4, unassigned_policy="void")
    assert (transform.metric, transform.solver, transform.to_onehot) == ("IoU", "exact", 4)
    assert transform.output_mode is None and transform.activation is None
    assert transform.solver_params == {"unassigned_policy": "void"}
    assert repr(transform) == (
        "RankSEG(metric='IoU', solver='exact', output_mode=None, smooth=0.0, pruning_prob=0.5, "
        "activation=None, to_onehot=4, unassigned_policy='void')"
    )
    probs = softmax_item(5)
    clone = pickle.loads(pickle.dumps(transform))
    same_output(clone(probs), transform(probs))
    mapping = RankSEGd(keys=["a", "b"], metric=["dice", "iou"])
    assert mapping.metric == ["dice", "iou"]
    assert torch.equal(
        pickle.loads(pickle.dumps(mapping))({"a": probs, "b": probs})["b"],
        mapping({"a": probs, "b": probs})["b"],
    )
    assert rankseg_monai.__all__ == ["RankSEG", "RankSEGd"]


def test_rankseg_d_takes_every_option_per_key_and_leaves_the_input_dict_alone():
    three, one = softmax_item(6), softmax_item(7, classes=1, scale=1.0)
    logits = torch.log(softmax_item(8))
    data = {"a": three, "b": one, "c": logits, "d": void_item(), "note": "kept"}
    snapshot = {key: value.clone() for key, value in data.items() if isinstance(value, torch.Tensor)}
    transform = RankSEGd(
        keys=["a", "b", "c", "d"],
        metric=["dice", "iou", "acc", "dice"],
        smooth=(0.0, 1.0, 0.0, 0.0),
        to_onehot=[4, None, 3, None],
        activation=[None, None, "softmax", None],
        unassigned_policy=["max_score", "max_score", "max_score", "void"],
        void_index=7,
    )
    with pytest.warns(UserWarning, match="has no effect") as caught:
        out = transform(data)
    # void_index for a (max_score), both unassigned options for b (multilabel) and c (acc)
    assert sorted(str(w.message).split("=")[0] for w in caught) == [
        "unassigned_policy",
        "unassigned_policy",
        "void_index",
        "void_index",
        "void_index",
    ]
    same_output(out["a"], RankSEG(metric="dice", to_onehot=4)(three))
    same_output(out["b"], RankSEG(metric="iou", smooth=1.0)(one))
    same_output(out["c"], AsDiscrete(argmax=True, to_onehot=3)(Activations(softmax=True)(logits)))
    same_output(out["d"], RankSEG(unassigned_policy="void", void_index=7)(void_item()))
    assert out["d"].eq(7).any()
    assert out["note"] == "kept" and out is not data
    assert all(torch.equal(data[key], value) for key, value in snapshot.items())
    assert data["a"] is three


def test_rankseg_d_equals_asdiscreted_for_acc_with_a_key_list():
    data = {"x": softmax_item(9), "y": softmax_item(10, classes=1, scale=1.0)}
    ours = RankSEGd(keys=["x", "y"], metric="acc", to_onehot=[3, None])(data)
    theirs = AsDiscreted(keys=["x", "y"], argmax=[True, False], to_onehot=[3, None], threshold=[None, 0.5])(
        data
    )
    for key in data:
        same_output(ours[key], theirs[key])


def test_allow_missing_keys():
    data = {"pred": softmax_item(11)}
    out = RankSEGd(keys=["pred", "absent"], allow_missing_keys=True)(data)
    assert set(out) == {"pred"}
    same_output(out["pred"], RankSEG()(data["pred"]))
    with pytest.raises(KeyError, match="absent"):
        RankSEGd(keys=["pred", "absent"])(data)


def test_a_per_key_sequence_of_the_wrong_length_is_named():
    with pytest.raises(
        ValueError, match=r"metric must be one value or a sequence with one value per key \(2 keys\)"
    ):
        RankSEGd(keys=["a", "b"], metric=["dice", "iou", "acc"])
    with pytest.raises(ValueError, match=r"void_index must be one value .* got \[1\]"):
        RankSEGd(keys=["a", "b"], void_index=[1])


# --------------------------------------------------------------------------------------------
# Meta data, types and devices.


def test_metatensor_meta_affine_and_applied_operations_are_kept_as_asdiscrete_keeps_them():
    affine = rotation_affine(0.4, (1.2, 0.7, 3.0), (4.0, 5.0, 6.0))
    img = MetaTensor(
        softmax_item(12), affine=affine, meta={"filename_or_obj": "case.nii.gz", "spacing": [1, 2, 3]}
    )
    flip = Flip(spatial_axis=0)
    img = flip(img)  # a transform MONAI can invert later: it is recorded
    assert len(img.applied_operations) == 1
    meta_before, affine_before = dict(img.meta), img.affine.clone()

    ours, theirs = RankSEG()(img), AsDiscrete(argmax=True)(img)
    assert isinstance(ours, MetaTensor) and not ours.is_batch
    assert ours.meta.keys() == theirs.meta.keys() == img.meta.keys()
    assert ours.meta["filename_or_obj"] == "case.nii.gz" and ours.meta["spacing"] == [1, 2, 3]
    assert torch.equal(ours.affine, img.affine)
    assert ours.applied_operations == theirs.applied_operations == img.applied_operations
    assert flip.inverse(ours).applied_operations == []  # invertible as AsDiscrete's output is

    ours.meta["filename_or_obj"] = "changed.nii.gz"
    assert img.meta["filename_or_obj"] == "case.nii.gz" and img.meta.keys() == meta_before.keys()
    assert torch.equal(img.affine, affine_before)


def test_without_meta_tracking_the_output_is_a_plain_tensor_as_with_asdiscrete():
    img = MetaTensor(softmax_item(13))
    assert get_track_meta()
    set_track_meta(False)
    try:
        ours, theirs = RankSEG(metric="acc")(img), AsDiscrete(argmax=True)(img)
        same_output(ours, theirs)
        assert type(ours) is torch.Tensor
    finally:
        set_track_meta(True)


def test_read_only_and_negatively_strided_numpy_items():
    array = softmax_item(14).numpy()
    array.flags.writeable = False
    expected = rankseg(array[None])[0]
    assert np.array_equal(RankSEG()(array).numpy()[0], expected)
    flipped = array[:, ::-1]
    assert np.array_equal(RankSEG()(flipped).numpy()[0], rankseg(np.ascontiguousarray(flipped)[None])[0])


def test_empty_spatial_dims_give_empty_outputs_of_the_asdiscrete_shape():
    for shape in [(3, 0, 4), (3, 0)]:
        same_output(RankSEG()(torch.rand(shape)), AsDiscrete(argmax=True)(torch.rand(shape)))
        same_output(
            RankSEG(to_onehot=4)(torch.rand(shape)), AsDiscrete(argmax=True, to_onehot=4)(torch.rand(shape))
        )
    assert RankSEG()(torch.rand(1, 0, 5)).shape == (1, 0, 5)


def test_the_device_is_kept(device):
    probs = softmax_item(15).to(device)
    img = MetaTensor(probs, affine=rotation_affine(0.2, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)))
    for out in (RankSEG()(img), RankSEG(to_onehot=3)(img), RankSEG(output_mode="multilabel")(probs)):
        assert out.device == probs.device and out.dtype == torch.float32
    assert torch.equal(RankSEG()(img).as_tensor(), rankseg(probs[None])[0][None].float())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_items_of_every_dtype_through_rankseg_d(dtype):
    logits = torch.randn(3, 24, 20, 16, generator=torch.Generator().manual_seed(16)).to(dtype)
    img = MetaTensor(logits.cuda(), affine=rotation_affine(0.5, (1.0, 2.0, 3.0), (1.0, 1.0, 1.0)))
    out = RankSEGd(keys=["pred", "onehot"], activation="softmax", to_onehot=[None, 3])(
        {"pred": img, "onehot": img}
    )
    probs = torch.softmax(img.as_tensor().float(), dim=0).to(dtype)
    labels = rankseg(probs[None])[0]
    assert out["pred"].device.type == "cuda" and out["pred"].dtype == torch.float32
    assert torch.equal(out["pred"].as_tensor(), labels[None].float())
    assert torch.equal(out["onehot"].as_tensor(), F.one_hot(labels, 3).movedim(-1, 0).float())
    assert torch.equal(out["pred"].affine, img.affine)
    acc = RankSEG(metric="acc", activation="softmax")(img)
    same_output(acc, AsDiscrete(argmax=True)(Activations(softmax=True)(img)))


# --------------------------------------------------------------------------------------------
# Bad input is named.


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: RankSEG()([[0.5, 0.5]]),
            TypeError,
            r"img must be a torch\.Tensor, MetaTensor or numpy\.ndarray .* got list",
        ),
        (
            lambda: RankSEG()(torch.rand(5)),
            ValueError,
            r"img must be one channel-first item .* got shape \(5,\)",
        ),
        (
            lambda: RankSEG()(torch.rand(0, 4)),
            ValueError,
            r"img must have at least one channel; got shape \(0, 4\)",
        ),
        (
            lambda: RankSEG()(torch.ones(2, 4, dtype=torch.int64)),
            TypeError,
            r"img must have a floating dtype .* torch\.int64",
        ),
        (
            lambda: RankSEG()(np.ones((2, 4), dtype=bool)),
            TypeError,
            r"img must hold floating-point .* dtype bool",
        ),
        (
            lambda: RankSEG()(torch.tensor([[0.2, 1.5], [0.8, -0.5]])),
            ValueError,
            r"img must hold probabilities in \[0, 1\]; got values from -0\.5 to 1\.5.*activation=",
        ),
        (
            lambda: RankSEG()(torch.tensor([[0.2, math.nan], [0.8, 0.5]])),
            ValueError,
            r"img must be finite; it contains NaN",
        ),
        (
            lambda: RankSEG(activation="softmax")(torch.tensor([[0.2, math.inf], [0.8, math.inf]])),
            ValueError,
            r"NaN or infinite values after activation='softmax'",
        ),
        (
            lambda: RankSEG(activation="relu")(softmax_item(0)),
            ValueError,
            r"activation must be None, 'softmax' or 'sigmoid'; got 'relu'",
        ),
        (
            lambda: RankSEG(activation=True)(softmax_item(0)),
            TypeError,
            r"activation must be None, 'softmax' or 'sigmoid'; got True \(bool\)",
        ),
        (
            lambda: RankSEG(to_onehot=True)(softmax_item(0)),
            TypeError,
            r"to_onehot must be None or a number of classes \(int\); got True",
        ),
        (
            lambda: RankSEG(to_onehot=3.0)(softmax_item(0)),
            TypeError,
            r"to_onehot must be None or a number of classes \(int\); got 3\.0",
        ),
        (
            lambda: RankSEG(to_onehot=2)(softmax_item(0)),
            ValueError,
            r"to_onehot must be at least the number of channels \(3\).* got 2",
        ),
        (
            lambda: RankSEG(to_onehot=2)(softmax_item(0, classes=1)),
            ValueError,
            r"to_onehot=2 applies to multiclass output .* output_mode='multilabel'",
        ),
        (
            lambda: RankSEG(output_mode="multiclass")(softmax_item(0, classes=1)),
            ValueError,
            r"output_mode='multiclass' needs at least two channels; got img of shape \(1, 6, 5, 4\)",
        ),
        (
            lambda: RankSEG(output_mode="labels")(softmax_item(0)),
            ValueError,
            r"output_mode must be one of 'multiclass', 'multilabel'; got 'labels'",
        ),
        (
            lambda: RankSEG(metric="hausdorff")(softmax_item(0)),
            ValueError,
            r"metric must be one of .* got 'hausdorff'",
        ),
        (lambda: RankSEG()(softmax_item(0), smooth=-1.0), ValueError, r"smooth must be >= 0; got -1\.0"),
        (
            lambda: RankSEG(spacing=2)(softmax_item(0)),
            TypeError,
            r"unexpected solver parameter\(s\) 'spacing'",
        ),
        (
            lambda: RankSEG(unassigned_policy="void", void_index=1)(softmax_item(0)),
            ValueError,
            r"void_index=1 is a class index for 3 classes",
        ),
    ],
)
def test_bad_input_is_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --------------------------------------------------------------------------------------------
# Packaging and the example.


def test_monai_is_an_optional_extra_named_when_missing():
    code = """
import sys
import rankseg, rankseg.functional, rankseg.integration
from rankseg.integration import *
print("monai imported:", "monai" in sys.modules)

class HideMonai:
    def find_spec(self, name, path=None, target=None):
        if name == "monai" or name.startswith("monai."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, HideMonai())
for attempt in ("import rankseg.integration.monai", "rankseg.integration.monai"):
    try:
        exec(attempt)
    except ImportError as error:
        print("ImportError:", error)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "monai imported: False"
    assert len(lines) == 3
    for line in lines[1:]:
        assert line.startswith(
            'ImportError: rankseg.integration.monai needs MONAI: pip install "rankseg[monai]"'
        )


def test_the_example_runs(monkeypatch, capsys, tmp_path):
    example = ROOT / "examples" / "monai_pipeline.py"
    monkeypatch.setattr("sys.argv", [str(example), "--output-dir", str(tmp_path)])
    runpy.run_path(str(example), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("trained a tiny 3-D UNet")
    assert lines[1].startswith("argmax   mean Dice") and lines[2].startswith("RankSEG  mean Dice")
    assert lines[3:] == [
        f"saved {tmp_path / name} (48, 40, 32), affine equals the input's: True"
        for name in ("case0_rankseg.nii.gz", "case1_rankseg.nii.gz")
    ]
