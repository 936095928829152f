"""Empirical Dice / IoU (issue: evaluation, the command line and the demo)."""

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchmetrics.functional.segmentation import dice_score as tm_dice_score
from torchmetrics.functional.segmentation import mean_iou as tm_mean_iou

from rankseg.metrics import SegmentationCounts, dice_score, iou_score, score_from_counts, segmentation_counts


def slow_scores(preds, target, classes, metric, smooth=0.0, ignore_index=None):
    """Pixel-by-pixel float64 re-statement of the definitions: {(image, class): score or None}."""
    out = {}
    for b in range(preds.shape[0]):
        p_img, t_img = preds[b].reshape(-1).tolist(), target[b].reshape(-1).tolist()
        pairs = [(p, t) for p, t in zip(p_img, t_img, strict=True) if t != ignore_index]
        for c in range(classes):
            inter = sum(1 for p, t in pairs if p == c and t == c)
            n_pred = sum(1 for p, _ in pairs if p == c)
            n_true = sum(1 for _, t in pairs if t == c)
            union = n_pred + n_true - inter
            if union == 0:
                out[b, c] = None
            elif metric == "dice":
                out[b, c] = (2 * inter + smooth) / (n_pred + n_true + smooth)
            else:
                out[b, c] = (inter + smooth) / (union + smooth)
    return out


def random_labels(seed, batch=3, classes=4, shape=(6, 5), ignore=None):
    gen = torch.Generator().manual_seed(seed)
    preds = torch.randint(0, classes, (batch, *shape), generator=gen)
    target = torch.randint(0, classes, (batch, *shape), generator=gen)
    # a class missing from both in some image, so the NaN paths are exercised
    preds[0][preds[0] == classes - 1] = 0
    target[0][target[0] == classes - 1] = 0
    if ignore is not None:
        target[torch.rand(target.shape, generator=gen) < 0.2] = ignore
    return preds, target


@given(
    seed=st.integers(0, 10_000),
    metric=st.sampled_from(["dice", "iou"]),
    smooth=st.sampled_from([0.0, 0.5, 1.0]),
    ignore=st.sampled_from([None, 255, -1]),
)
def test_every_aggregation_equals_the_definition_computed_pixel_by_pixel(seed, metric, smooth, ignore):
    classes = 4
    preds, target = random_labels(seed, classes=classes, ignore=ignore)
    slow = slow_scores(preds, target, classes, metric, smooth, ignore)
    counts = segmentation_counts(preds, target, classes, ignore_index=ignore)
    per = score_from_counts(counts, metric, average="none", smooth=smooth)
    for (b, c), value in slow.items():
        if value is None:
            assert math.isnan(per[b, c])
        else:
            assert per[b, c].item() == pytest.approx(value, abs=1e-12)

    per_image = [np.mean([v for (b, _), v in slow.items() if b == i and v is not None]) for i in range(3)]
    per_class = [
        np.mean([v for (_, c), v in slow.items() if c == k and v is not None]) for k in range(classes)
    ]
    image = score_from_counts(counts, metric, average="image", smooth=smooth)
    assert image.item() == pytest.approx(np.mean(per_image), abs=1e-12)
    assert score_from_counts(counts, metric, average="class", smooth=smooth).item() == pytest.approx(
        np.nanmean(per_class), abs=1e-12
    )

    # dataset level: the definition on the pixels of all images pooled
    pooled = slow_scores(
        preds.reshape(1, -1), target.reshape(1, -1), classes, metric, smooth, ignore_index=ignore
    )
    dataset = score_from_counts(counts, metric, average="dataset", reduction="none", smooth=smooth)
    for (_, c), value in pooled.items():
        assert (value is None and math.isnan(dataset[c])) or dataset[c].item() == pytest.approx(value)


def test_per_image_and_global_dice_agree_with_torchmetrics_dice_score():
    classes = 5
    preds, target = random_labels(7, batch=4, classes=classes, shape=(16, 16))
    ours = dice_score(preds, target, classes, average="none")
    theirs = tm_dice_score(preds, target, classes, average="none", input_format="index")
    torch.testing.assert_close(ours, theirs.double(), equal_nan=True)
    # mDice^I is the mean over images of torchmetrics' per-sample macro average
    macro = tm_dice_score(preds, target, classes, average="macro", input_format="index")
    assert dice_score(preds, target, classes).item() == pytest.approx(macro.double().mean().item(), abs=1e-6)
    # the data-set level per-class Dice is torchmetrics' aggregation_level="global"
    glob = tm_dice_score(
        preds, target, classes, average="none", input_format="index", aggregation_level="global"
    )
    torch.testing.assert_close(
        dice_score(preds, target, classes, average="dataset", reduction="none"), glob[0].double()
    )
    glob_macro = tm_dice_score(
        preds, target, classes, average="macro", input_format="index", aggregation_level="global"
    )
    assert dice_score(preds, target, classes, average="dataset").item() == pytest.approx(glob_macro.item())


def test_per_image_iou_agrees_with_torchmetrics_mean_iou():
    classes = 5
    preds, target = random_labels(11, batch=4, classes=classes, shape=(16, 16))
    per_class = tm_mean_iou(preds, target, classes, per_class=True, input_format="index")
    ours = iou_score(preds, target, classes, average="none")
    torch.testing.assert_close(ours.nan_to_num(-1.0), per_class.double())  # torchmetrics: -1 if absent
    per_sample = tm_mean_iou(preds, target, classes, input_format="index")
    torch.testing.assert_close(iou_score(preds, target, classes, reduction="none"), per_sample.double())
    assert iou_score(preds, target, classes).item() == pytest.approx(per_sample.double().mean().item())


def test_mask_input_agrees_with_torchmetrics_one_hot_input():
    gen = torch.Generator().manual_seed(3)
    preds = torch.rand(3, 4, 9, 7, generator=gen) > 0.6  # overlapping (multilabel) masks
    target = torch.rand(3, 4, 9, 7, generator=gen) > 0.5
    preds[1, 2] = False
    target[1, 2] = False
    theirs = tm_dice_score(preds.long(), target.long(), 4, average="none", input_format="one-hot")
    ours = dice_score(preds, target, average="none", input_format="mask")
    torch.testing.assert_close(ours, theirs.double(), equal_nan=True)
    assert math.isnan(ours[1, 2])
    iou = tm_mean_iou(preds.long(), target.long(), 4, per_class=True, input_format="one-hot")
    torch.testing.assert_close(
        iou_score(preds, target, average="none", input_format="mask").nan_to_num(-1.0), iou.double()
    )


def test_numpy_in_gives_numpy_out_with_the_same_values():
    preds, target = random_labels(5, ignore=255)
    for average in ("none", "image", "class", "dataset"):
        for reduction in ("mean", "none"):
            t = iou_score(preds, target, 4, average=average, reduction=reduction, ignore_index=255)
            n = iou_score(
                preds.numpy(), target.numpy(), 4, average=average, reduction=reduction, ignore_index=255
            )
            assert isinstance(n, np.ndarray) and isinstance(t, torch.Tensor)
            assert n.dtype == np.float64 and n.shape == tuple(t.shape)
            np.testing.assert_allclose(n, t.numpy(), equal_nan=True)
    counts = segmentation_counts(preds.numpy(), target.numpy(), 4, ignore_index=255)
    assert all(isinstance(x, np.ndarray) and x.dtype == np.int64 for x in counts)


def test_ignored_pixels_count_as_if_they_were_removed():
    preds = torch.tensor([[0, 1, 1, 2, 2, 0]])
    target = torch.tensor([[0, 9, 1, 9, 2, 1]])
    kept = target[0] != 9
    ignored = dice_score(preds, target, 3, average="none", ignore_index=9)
    removed = dice_score(preds[:, kept], target[:, kept], 3, average="none")
    torch.testing.assert_close(ignored, removed)
    assert segmentation_counts(preds, target, 3, ignore_index=9).pred.tolist() == [[2, 1, 1]]


def test_ignore_index_in_mask_targets_removes_the_pixel_for_that_class_only():
    preds = torch.tensor([[[1, 1, 0, 0], [0, 1, 1, 1]]], dtype=torch.bool)
    target = torch.tensor([[[1, 255, 0, 1], [0, 1, 1, 0]]])
    counts = segmentation_counts(preds, target, input_format="mask", ignore_index=255)
    assert counts.intersection.tolist() == [[1, 2]]
    assert counts.pred.tolist() == [[1, 3]]
    assert counts.target.tolist() == [[2, 2]]


def test_predicted_labels_outside_the_classes_predict_no_class():
    preds = torch.tensor([[0, 255, 1, 1]])  # 255: a void pixel (unassigned_policy="void")
    target = torch.tensor([[0, 0, 1, 1]])
    counts = segmentation_counts(preds, target, 2)
    assert counts.pred.tolist() == [[1, 2]] and counts.target.tolist() == [[2, 2]]
    assert dice_score(preds, target, 2, average="none").tolist() == [[2 / 3, 1.0]]


def test_a_class_absent_everywhere_is_left_out_of_every_mean():
    preds = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 1]])
    target = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    with_absent = [dice_score(preds, target, 3, average=a).item() for a in ("image", "class", "dataset")]
    without = [dice_score(preds, target, 2, average=a).item() for a in ("image", "class", "dataset")]
    assert with_absent == pytest.approx(without)
    assert torch.isnan(dice_score(preds, target, 3, average="class", reduction="none")[2])


def test_smooth_is_added_to_numerator_and_denominator():
    preds = torch.tensor([[1, 1, 0, 0]])
    target = torch.tensor([[1, 0, 0, 0]])
    assert dice_score(preds, target, 2, average="none", smooth=1.0)[0, 1].item() == pytest.approx(
        (2 * 1 + 1) / (2 + 1 + 1)
    )
    assert iou_score(preds, target, 2, average="none", smooth=2.0)[0, 1].item() == pytest.approx(3 / 4)


def test_counts_of_parts_concatenate_to_the_counts_of_the_whole():
    preds, target = random_labels(9, batch=5, ignore=255)
    whole = segmentation_counts(preds, target, 4, ignore_index=255)
    parts = [segmentation_counts(preds[i : i + 2], target[i : i + 2], 4, ignore_index=255) for i in (0, 2, 4)]
    joined = SegmentationCounts.cat(parts)
    for a, b in zip(whole, joined, strict=True):
        assert torch.equal(a, b)
    np_joined = SegmentationCounts.cat([SegmentationCounts(*(x.numpy() for x in p)) for p in parts])
    assert all(isinstance(x, np.ndarray) for x in np_joined)
    np.testing.assert_array_equal(np_joined.pred, whole.pred.numpy())


def test_num_classes_is_inferred_from_the_largest_label():
    preds = torch.tensor([[0, 2, 2]])
    target = torch.tensor([[0, 1, 255]])
    assert segmentation_counts(preds, target, ignore_index=255).pred.shape == (1, 3)


def test_inputs_are_not_modified():
    preds, target = random_labels(2, ignore=255)
    p0, t0 = preds.clone(), target.clone()
    arr_p, arr_t = preds.numpy().copy(), target.numpy().copy()
    arr_p.flags.writeable = False
    arr_t.flags.writeable = False
    dice_score(preds, target, 4, ignore_index=255)
    iou_score(arr_p, arr_t, 4, ignore_index=255, average="dataset")
    assert torch.equal(preds, p0) and torch.equal(target, t0)
    np.testing.assert_array_equal(arr_t, t0.numpy())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: dice_score(
                torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 5, dtype=torch.long)
            ),
            "got preds (2, 4, 4) and target (2, 4, 5)",
        ),
        (
            lambda: dice_score(torch.zeros(1, 4, dtype=torch.long), torch.tensor([[0, 1, 7, 1]]), 3),
            "target holds the label 7; labels must lie in [0, 2]",
        ),
        (
            lambda: dice_score(
                torch.zeros(1, 4, dtype=torch.long), torch.tensor([[0, -1, 0, 1]]), 3, ignore_index=9
            ),
            "target holds the label -1; labels must lie in [0, 2] or ignore_index=9",
        ),
        (
            lambda: dice_score(torch.rand(1, 4), torch.zeros(1, 4, dtype=torch.long)),
            "preds must hold integer class labels for input_format='index'; got dtype torch.float32",
        ),
        (
            lambda: dice_score(
                torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long), average="mean"
            ),
            "average must be one of 'image', 'class', 'dataset', 'none'; got 'mean'",
        ),
        (
            lambda: iou_score(
                torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long), smooth=-1
            ),
            "smooth must be >= 0; got -1",
        ),
        (
            lambda: dice_score(
                torch.zeros(1, 2, 4, dtype=torch.long), torch.full((1, 2, 4), 2), input_format="mask"
            ),
            "target masks must hold 0 or 1; found the value 2",
        ),
        (
            lambda: dice_score([[0, 1]], torch.zeros(1, 2, dtype=torch.long)),
            "preds must be a torch.Tensor or numpy.ndarray; got list",
        ),
    ],
)
def test_errors_name_the_argument_the_value_and_what_is_allowed(call, message):
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        call()


# ----------------------------------------------------------------- issue 9, items 3 and 5


@pytest.mark.parametrize("fn", [dice_score, iou_score])
def test_empty_batches_classes_and_images_give_empty_or_nan_results(fn):
    empty_index = torch.zeros(0, 5, 5, dtype=torch.long)
    assert fn(empty_index, empty_index, 3, average="none").shape == (0, 3)
    assert fn(empty_index, empty_index, 3, reduction="none").shape == (0,)
    assert math.isnan(fn(empty_index, empty_index, 3))
    assert math.isnan(fn(empty_index, empty_index))  # num_classes inferred from no labels
    no_classes = torch.zeros(2, 0, 5, dtype=torch.bool)
    assert fn(no_classes, no_classes, input_format="mask", average="none").shape == (2, 0)
    assert math.isnan(fn(no_classes, no_classes, input_format="mask"))
    no_images = torch.zeros(0, 3, 4, 4, dtype=torch.bool)
    assert fn(no_images, no_images, input_format="mask", average="class", reduction="none").shape == (3,)
    no_pixels = torch.zeros(2, 0, dtype=torch.long)
    assert torch.isnan(fn(no_pixels, no_pixels, 3, average="none")).all()
    counts = segmentation_counts(np.zeros((0, 7), dtype=np.int64), np.zeros((0, 7), dtype=np.int64), 4)
    assert all(isinstance(x, np.ndarray) and x.shape == (0, 4) for x in counts)


def test_metrics_accept_numpy_scalars_and_fractions_as_rankseg_does():
    from fractions import Fraction

    preds, target = random_labels(4, ignore=255)
    base = dice_score(preds, target, 4, smooth=0.5, ignore_index=255, average="none")
    for smooth, ignore, classes in [
        (np.float32(0.5), np.int64(255), np.int64(4)),
        (Fraction(1, 2), np.uint8(255), np.int32(4)),
        (np.float64(0.5), 255, np.int16(4)),
    ]:
        got = dice_score(preds, target, classes, smooth=smooth, ignore_index=ignore, average="none")
        torch.testing.assert_close(got, base, equal_nan=True)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"ignore_index": 2**64}, ValueError, "ignore_index must fit in int64"),
        ({"ignore_index": -(2**63) - 1}, ValueError, "ignore_index must fit in int64"),
        ({"ignore_index": True}, TypeError, "ignore_index must be an integer; got True"),
        ({"ignore_index": np.bool_(True)}, TypeError, "ignore_index must be an integer; got"),
        ({"ignore_index": 2.0}, TypeError, "ignore_index must be an integer; got 2.0"),
        ({"num_classes": 10**12}, ValueError, "num_classes must lie in [1, 16777216]; got 1000000000000"),
        ({"num_classes": 0}, ValueError, "num_classes must lie in [1, 16777216]; got 0"),
        ({"num_classes": True}, TypeError, "num_classes must be an integer; got True"),
        ({"num_classes": 3.0}, TypeError, "num_classes must be an integer; got 3.0"),
        ({"smooth": True}, TypeError, "smooth must be a real number; got True"),
        ({"smooth": "1"}, TypeError, "smooth must be a real number; got '1'"),
        ({"smooth": float("inf")}, ValueError, "smooth must be finite; got inf"),
    ],
)
def test_metric_options_are_checked_as_rankseg_checks_them(kwargs, error, message):
    labels = torch.zeros(1, 4, dtype=torch.long)
    kwargs = {"num_classes": 3, **kwargs}
    with pytest.raises(error, match=re.escape(message)):
        dice_score(labels, labels, kwargs.pop("num_classes"), **kwargs)


def test_a_huge_label_is_refused_before_anything_is_allocated():
    preds = torch.zeros(1, 4, dtype=torch.long)
    target = torch.tensor([[0, 1, 10**12, 1]])
    with pytest.raises(ValueError, match=r"the largest label is 1000000000000: inferring num_classes"):
        dice_score(preds, target)
    with pytest.raises(
        ValueError, match=r"target holds the label 1000000000000; labels must lie in \[0, 2\]"
    ):
        dice_score(preds, target, 3)


def test_uint64_labels_beyond_int64_are_reported_with_their_value():
    target = np.array([[0, 1, 2**63 + 5]], dtype=np.uint64)
    with pytest.raises(ValueError, match=r"target holds the label 9223372036854775813"):
        dice_score(np.zeros((1, 3), dtype=np.int64), target, 3)
    ok = np.array([[0, 1, 2]], dtype=np.uint64)
    assert dice_score(ok, ok, 3).item() == 1.0
