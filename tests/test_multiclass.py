"""Multiclass output: the resolution rule of design note section 6, and its invariances."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankseg import RankSEG
from rankseg.data import synthetic_probs
from rankseg.functional import rankseg

from reference import resolve_multiclass, rma_threshold_masks


def _softmax_maps(seed, b, c, *spatial, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(scale * torch.randn(b, c, *spatial, generator=gen, dtype=torch.float64), dim=1)


@settings(max_examples=300)
@given(
    seed=st.integers(0, 10_000),
    b=st.integers(1, 3),
    c=st.integers(2, 6),
    n=st.integers(1, 60),
    metric=st.sampled_from(["dice", "iou"]),
    gamma=st.sampled_from([0.0, 0.5, 1.0]),
    policy=st.sampled_from(["max_score", "void"]),
    pruning=st.sampled_from([0.0, 0.3, 0.5, 0.9]),
    scale=st.sampled_from([0.5, 3.0, 8.0]),
)
def test_labels_follow_the_resolution_rule(seed, b, c, n, metric, gamma, policy, pruning, scale):
    """Same labels as a pixel-by-pixel re-statement of section 6 on brute-force RMA masks."""
    probs = _softmax_maps(seed, b, c, n, scale=scale).numpy()
    void = {"void_index": -1} if policy == "void" else {}  # elsewhere it has no effect (and warns)
    labels = rankseg(
        probs, metric=metric, smooth=gamma, pruning_prob=pruning, unassigned_policy=policy, **void
    )
    masks = rma_threshold_masks(metric, probs, gamma, pruning)
    pruned = probs.max(axis=2) <= pruning
    expected = resolve_multiclass(metric, probs, masks, pruned, gamma, policy=policy, void_index=-1)
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("metric", ["dice", "iou"])
@pytest.mark.parametrize("shape", [(2, 5, 64, 48), (1, 3, 16, 16, 16), (3, 4, 500)])
def test_labels_are_valid_class_indices_and_deterministic(metric, shape):
    probs = synthetic_probs(shape[0], shape[1], shape[2:], seed=1)
    first = rankseg(probs, metric=metric)
    assert first.dtype == torch.int64 and first.shape == (shape[0], *shape[2:])
    assert int(first.min()) >= 0 and int(first.max()) < shape[1]
    assert torch.equal(first, rankseg(probs, metric=metric))


def test_void_policy_writes_void_index_only_where_no_class_claims():
    probs = synthetic_probs(2, 6, (64, 64), seed=4, scale=2.0)
    labels = rankseg(probs, unassigned_policy="void", void_index=255)
    filled = rankseg(probs, unassigned_policy="max_score")
    void = labels == 255
    assert void.any(), "this input has unclaimed pixels"
    assert torch.equal(labels[~void], filled[~void])
    assert int(labels[~void].max()) < 6


def test_every_class_pruned_falls_back_to_the_most_probable_class():
    probs = torch.full((1, 4, 8, 8), 0.25)
    probs[0, 2, :4] = 0.4
    probs[0, 0, :4] = 0.2
    probs[0, 1, :4] = 0.2
    probs[0, 3, :4] = 0.2
    labels = rankseg(probs, pruning_prob=0.5)
    assert torch.equal(labels, probs.argmax(dim=1))
    # with 'void', an image where no class survives pruning is all void (nothing claims it)
    assert bool((rankseg(probs, pruning_prob=0.5, unassigned_policy="void") == 255).all())


def test_two_classes_are_ordinary_multiclass():
    p = torch.tensor([[[0.9, 0.6, 0.4, 0.2], [0.1, 0.4, 0.6, 0.8]]])
    assert rankseg(p).tolist() == [[0, 0, 1, 1]]


def test_predictor_and_functional_agree():
    probs = synthetic_probs(3, 5, (40, 40), seed=2)
    for kwargs in ({}, {"metric": "iou"}, {"smooth": 1.0}, {"unassigned_policy": "void", "void_index": 99}):
        assert torch.equal(RankSEG(**kwargs)(probs), rankseg(probs, **kwargs))
        assert torch.equal(RankSEG(**kwargs).predict(probs), rankseg(probs, **kwargs))


@pytest.mark.parametrize("metric", ["dice", "iou"])
@pytest.mark.parametrize("output_mode", ["multiclass", "multilabel"])
def test_float32_and_float64_inputs_agree(metric, output_mode):
    probs32 = synthetic_probs(2, 4, (96, 80), seed=6)
    a = rankseg(probs32, metric=metric, output_mode=output_mode)
    b = rankseg(probs32.double(), metric=metric, output_mode=output_mode)
    assert torch.equal(a, b)


@pytest.mark.parametrize("metric", ["dice", "iou"])
@pytest.mark.parametrize("output_mode", ["multiclass", "multilabel"])
def test_a_batch_equals_its_images_one_at_a_time(metric, output_mode):
    probs = synthetic_probs(4, 5, (64, 56), seed=8)
    batch = rankseg(probs, metric=metric, output_mode=output_mode)
    single = torch.cat([rankseg(probs[i : i + 1], metric=metric, output_mode=output_mode) for i in range(4)])
    assert torch.equal(batch, single)


def test_rankseg_beats_argmax_in_expected_rma_dice_on_uncertain_maps():
    """Per class, the RMA masks score at least as well as argmax masks under the RMA objective."""
    from reference import mask_objective

    probs = synthetic_probs(1, 3, (64, 64), seed=12, scale=2.0).double()
    masks = rankseg(probs, output_mode="multilabel", pruning_prob=0.0).numpy()[0]
    arg = probs.argmax(1)[0].numpy()
    p = probs.numpy()[0]
    for c in range(3):
        assert mask_objective("dice", p[c], masks[c], 0.0) >= mask_objective("dice", p[c], arg == c, 0.0)


@pytest.mark.parametrize("metric", ["dice", "iou"])
@pytest.mark.parametrize("policy", ["max_score", "void"])
@pytest.mark.parametrize("pruning", [0.5, 0.97])
def test_dense_scoring_equals_gathered_scoring(monkeypatch, metric, policy, pruning):
    """Non-CPU devices score whole tiles (no per-image synchronisation); same labels as the CPU's
    gathering of contested pixels. Forced here on the CPU."""
    from rankseg import _masks

    probs = synthetic_probs(3, 5, (48, 40), seed=2, scale=2.0)
    gathered = rankseg(probs, metric=metric, unassigned_policy=policy, pruning_prob=pruning)
    monkeypatch.setattr(_masks._Scorer, "gathered", _masks._Scorer.dense)
    dense = rankseg(probs, metric=metric, unassigned_policy=policy, pruning_prob=pruning)
    assert torch.equal(gathered, dense)
