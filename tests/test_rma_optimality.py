"""RMA masks attain the maximum of the RMA objective (design note sections 4-5), checked by brute force."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rankseg.data import synthetic_probs
from rankseg.functional import rankseg

from reference import mask_objective, rma_scan, rma_threshold_masks

GRID = [0.0, 1.0, 0.5, 0.25, 0.75, 0.1, 0.9, 1e-9, 1 - 1e-9]


@st.composite
def prob_maps(draw):
    """(B, C, *spatial) float64 maps: continuous values, exact 0 and 1, and many exact ties."""
    ndim = draw(st.integers(1, 3))
    spatial = draw(st.lists(st.integers(1, 7 if ndim > 1 else 40), min_size=ndim, max_size=ndim))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 5)), *spatial)
    values = st.one_of(
        st.floats(0.0, 1.0, allow_nan=False, allow_infinity=False),
        st.sampled_from(GRID),
    )
    return draw(hnp.arrays(np.float64, shape, elements=values))


def _check_rows(metric, probs, masks, gamma, pruning_prob):
    flat_p = probs.reshape(probs.shape[0], probs.shape[1], -1)
    flat_m = masks.reshape(flat_p.shape)
    for b in range(flat_p.shape[0]):
        for c in range(flat_p.shape[1]):
            p, m = flat_p[b, c], flat_m[b, c]
            if p.max() <= pruning_prob:
                assert not m.any(), "a pruned class must get an empty mask"
                continue
            _, best = rma_scan(metric, p, gamma)
            got = mask_objective(metric, p, m, gamma)
            assert got >= best - 1e-12 * max(1.0, abs(best)), (metric, gamma, p, m, got, best)
            if m.any() and (~m).any():  # a threshold set: every kept pixel above every dropped one
                assert p[m].min() > p[~m].max()


@settings(max_examples=1500)
@given(probs=prob_maps(), metric=st.sampled_from(["dice", "iou"]), gamma=st.sampled_from([0.0, 0.5, 1.0]))
def test_multilabel_masks_attain_the_rma_maximum(probs, metric, gamma):
    masks = rankseg(probs, metric=metric, smooth=gamma, output_mode="multilabel", pruning_prob=0.0)
    assert masks.dtype == np.bool_ and masks.shape == probs.shape
    _check_rows(metric, probs, masks, gamma, 0.0)


@settings(max_examples=1500)
@given(probs=prob_maps(), metric=st.sampled_from(["dice", "iou"]), gamma=st.sampled_from([0.0, 0.5, 1.0]))
def test_masks_are_the_smallest_optimal_threshold_sets(probs, metric, gamma):
    """Ties at the optimal threshold are left out, whatever the pixel order: the documented rule."""
    masks = rankseg(probs, metric=metric, smooth=gamma, output_mode="multilabel", pruning_prob=0.5)
    flat = probs.reshape(probs.shape[0], probs.shape[1], -1)
    expected = rma_threshold_masks(metric, flat, gamma, 0.5)
    got = masks.reshape(flat.shape)
    for b in range(flat.shape[0]):
        for c in range(flat.shape[1]):
            if not np.array_equal(got[b, c], expected[b, c]):
                # only acceptable if both are optimal to rounding and differ by a tie group
                v_got = mask_objective(metric, flat[b, c], got[b, c], gamma)
                v_exp = mask_objective(metric, flat[b, c], expected[b, c], gamma)
                assert abs(v_got - v_exp) <= 1e-12 * max(1.0, abs(v_exp))
                assert got[b, c].sum() <= expected[b, c].sum()


@pytest.fixture(params=["default_tiles", "small_tiles"])
def tiles(request, monkeypatch):
    """Default tiles, and 64 Ki-element tiles so that every row below takes the row-by-row path
    with several tiles per pass (the default takes it only for rows of 512 Ki pixels or more)."""
    if request.param == "small_tiles":
        monkeypatch.setattr("rankseg._passes._CPU_TILE", 1 << 16)
    return request.param


@pytest.mark.parametrize("metric", ["dice", "iou"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
@pytest.mark.parametrize(
    "kind", ["smooth_map", "uniform_noise", "coarse_grid_ties", "cubed_map", "two_images_two_classes"]
)
def test_long_rows_attain_the_rma_maximum(metric, gamma, kind, tiles):
    """Rows long enough for the streaming paths (several tiles per pass)."""
    gen = torch.Generator().manual_seed(7)
    if kind == "smooth_map":
        probs = synthetic_probs(1, 1, (512, 480), seed=3, bias=-2.0).double()
    elif kind == "uniform_noise":
        probs = torch.rand(1, 1, 300_000, generator=gen, dtype=torch.float64)
    elif kind == "coarse_grid_ties":
        probs = torch.round(torch.rand(1, 1, 250_000, generator=gen, dtype=torch.float64), decimals=2)
    elif kind == "cubed_map":
        probs = synthetic_probs(1, 1, (64, 64, 64), seed=5).double() ** 3
    else:
        probs = synthetic_probs(2, 2, (400, 400), seed=9).double()
    masks = rankseg(probs, metric=metric, smooth=gamma, output_mode="multilabel", pruning_prob=0.0)
    _check_rows(metric, probs.numpy(), masks.numpy(), gamma, 0.0)


@pytest.mark.parametrize("shape", [(3, 7, 300), (2, 4, 90, 90), (1, 2, 40, 40, 40)])
def test_float32_input_is_optimal_to_float32_accuracy(shape):
    probs = synthetic_probs(shape[0], shape[1], shape[2:], seed=11)
    masks = rankseg(probs, metric="dice", output_mode="multilabel", pruning_prob=0.0).numpy()
    p64 = probs.double().numpy().reshape(shape[0], shape[1], -1)
    m = masks.reshape(p64.shape)
    for b in range(shape[0]):
        for c in range(shape[1]):
            _, best = rma_scan("dice", p64[b, c], 0.0)
            assert mask_objective("dice", p64[b, c], m[b, c], 0.0) >= best * (1 - 1e-7)


def test_jmlr_example_one_threshold_is_optimal():
    """JMLR simulation example 1 map (design note section 7): RMA on p = beta^-(i+k)."""
    w, beta = 64, 1.05
    idx = np.arange(w)
    p = beta ** -(idx[:, None] + idx[None, :])
    masks = rankseg(p[None, None], metric="dice", output_mode="multilabel")
    _, best = rma_scan("dice", p, 0.0)
    assert mask_objective("dice", p, masks[0, 0], 0.0) == pytest.approx(best, rel=1e-12)
    # the optimal mask is larger than the 0.5 threshold on this map (the point of the example)
    assert masks.sum() > (p > 0.5).sum()
