"""The exact solver and the exact expected metrics against an independent reference (issue 9).

The reference is a Poisson-binomial dynamic programme (``tests/reference.py``): the exact expected
Dice / IoU of every prefix set of a row in O(d^2), itself checked against exact rational
arithmetic and enumeration of all label vectors. Hypothesis generates the hard cases: saturated
probabilities (exactly 0 and 1) mixed with others, ties, probabilities within 1e-6 of 0 and 1,
``smooth`` from 1e-6 to 10, 1-3 spatial dims, batches, every floating dtype, many rows per example.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankseg import RankSEG
from rankseg.functional import rankseg
from rankseg.metrics import expected_dice, expected_iou

from reference import brute_expected, dp_curve, dp_mask_value, dp_prefix_values, fraction_prefix_values

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
SMOOTH = st.one_of(
    st.sampled_from([0.0, 1e-6, 1e-4, 1e-3, 0.01, 0.02, 0.05, 0.1, 1.0, 10.0]),
    st.floats(1e-6, 10.0),
)
TOLERANCE = 1e-9


@st.composite
def map_recipes(draw, max_pixels: int = 200, max_rows: int = 32):
    """A shape ``(batch, classes, *spatial)`` with 1-3 spatial dims, a dtype and a value recipe."""
    dims = draw(st.integers(1, 3))
    if dims == 1:
        spatial = (draw(st.integers(1, max_pixels)),)
    elif dims == 2:
        side = int(max_pixels**0.5)
        spatial = (draw(st.integers(1, side)), draw(st.integers(1, side)))
    else:
        side = max(1, round(max_pixels ** (1 / 3)))
        spatial = tuple(draw(st.integers(1, side)) for _ in range(3))
    batch = draw(st.integers(1, 4))
    classes = max(1, draw(st.integers(max_rows // 4, max_rows)) // batch)  # many rows per example
    recipe = {
        "seed": draw(st.integers(0, 2**32 - 1)),
        "ones": draw(st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0])),
        "zeros": draw(st.sampled_from([0.0, 0.1, 0.5, 0.9])),
        "near": draw(st.sampled_from([0.0, 0.1])),  # within 1e-6 of 0 or 1, not equal
        "levels": draw(st.sampled_from([0, 0, 1, 2, 3, 10])),  # ties: values rounded to a grid
        "power": draw(st.sampled_from([1.0, 1.0, 4.0, 30.0])),  # small probabilities
    }
    return (batch, classes, *spatial), draw(st.sampled_from(DTYPES)), recipe


def make_probs(shape, dtype, recipe) -> torch.Tensor:
    rng = np.random.default_rng(recipe["seed"])
    x = rng.random(shape) ** recipe["power"]
    if recipe["levels"]:
        x = np.round(x * recipe["levels"]) / recipe["levels"]
    u = rng.random(shape)
    ones, zeros, near = recipe["ones"], recipe["zeros"], recipe["near"]
    x[u < ones] = 1.0
    x[(u >= ones) & (u < ones + zeros)] = 0.0
    v = rng.random(shape)
    tiny = rng.random(shape) * 1e-6
    x = np.where(v < near / 2, 1.0 - tiny, np.where(v < near, tiny, x))
    return torch.from_numpy(x).to(dtype)


def rows_of(probs: torch.Tensor) -> np.ndarray:
    """The ``(rows, pixels)`` float64 values exactly as the library sees them."""
    return probs.to(torch.float64).reshape(probs.shape[0] * probs.shape[1], -1).numpy()


# ------------------------------------------------------------------- the reference itself


@settings(max_examples=60)
@given(
    p=st.lists(
        st.one_of(st.sampled_from([0.0, 1.0, 0.5, 1e-6, 1 - 1e-6]), st.floats(0.0, 1.0)),
        min_size=1,
        max_size=7,
    ),
    gamma=st.sampled_from([0.0, 1e-6, 0.01, 1.0, 10.0]),
    metric=st.sampled_from(["dice", "iou"]),
)
def test_dynamic_programme_equals_exact_rational_arithmetic_and_enumeration(p, gamma, metric):
    values = dp_prefix_values(metric, np.array(p), gamma)
    exact = fraction_prefix_values(metric, p, Fraction(gamma))
    np.testing.assert_allclose(values, [float(v) for v in exact], atol=1e-14, rtol=0)
    for tau in range(len(p) + 1):
        mask = np.arange(len(p)) < tau
        assert brute_expected(metric, np.array(p), mask, gamma) == pytest.approx(float(exact[tau]), abs=1e-14)


# ------------------------------------------------------------------- the exact solver


def assert_exact_optimum(probs: torch.Tensor, metric: str, smooth: float) -> None:
    """Each row's mask is a top-tau set whose DP value is the DP optimum over all top-tau sets."""
    masks = rankseg(
        probs, metric=metric, smooth=smooth, solver="exact", output_mode="multilabel", pruning_prob=0.0
    )
    assert masks.shape == probs.shape and masks.dtype == torch.bool
    rows = rows_of(probs)
    flat_masks = masks.reshape(rows.shape).numpy()
    for p, mask in zip(rows, flat_masks, strict=True):
        curve, _ = dp_curve(metric, p, smooth)
        tau = int(mask.sum())
        if tau:  # a threshold set: every pixel in the mask is above every pixel outside it
            assert p[mask].min() > (p[~mask].max() if tau < p.size else -1.0)
        assert curve[tau] >= curve.max() - TOLERANCE, (tau, int(curve.argmax()), curve[tau], curve.max())


@settings(max_examples=200)
@given(recipe=map_recipes(), metric=st.sampled_from(["dice", "iou"]), smooth=SMOOTH)
def test_exact_solver_reaches_the_dynamic_programming_optimum(recipe, metric, smooth):
    shape, dtype, values = recipe
    assert_exact_optimum(make_probs(shape, dtype, values), metric, smooth)


LONG = st.one_of(st.integers(201, 2048), st.integers(2049, 3000))  # direct path, then power sums


@settings(max_examples=12)
@given(
    n=LONG,
    rows=st.integers(1, 2),
    recipe=map_recipes(),
    metric=st.sampled_from(["dice", "iou"]),
    smooth=SMOOTH,
)
def test_exact_solver_on_long_rows_reaches_the_dynamic_programming_optimum(n, rows, recipe, metric, smooth):
    """Rows up to 3000 pixels; above 2048 the sliced branch and bound with power sums."""
    _, dtype, values = recipe
    assert_exact_optimum(make_probs((1, rows, n), dtype, values), metric, smooth)


# ------------------------------------------------------------------- expected metrics of any mask


def assert_expected_equal_dp(probs: torch.Tensor, masks: torch.Tensor, smooth: float) -> None:
    rows, flat_masks = rows_of(probs), masks.reshape(probs.shape[0] * probs.shape[1], -1).numpy()
    for metric, fn in (("dice", expected_dice), ("iou", expected_iou)):
        got = fn(probs, masks, smooth=smooth)
        assert got.shape == probs.shape[:2] and got.dtype == torch.float64
        expected = [dp_mask_value(metric, p, m, smooth) for p, m in zip(rows, flat_masks, strict=True)]
        np.testing.assert_allclose(got.reshape(-1).numpy(), expected, atol=TOLERANCE, rtol=0)


@settings(max_examples=200)
@given(recipe=map_recipes(), smooth=SMOOTH, density=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
def test_expected_metrics_equal_the_dynamic_programme(recipe, smooth, density):
    shape, dtype, values = recipe
    probs = make_probs(shape, dtype, values)
    gen = torch.Generator().manual_seed(values["seed"] % 2**63)
    masks = torch.rand(shape, generator=gen, dtype=torch.float64) < density
    masks |= probs == 1 if values["seed"] % 3 == 0 else torch.zeros_like(masks)  # saturated inside, or not
    assert_expected_equal_dp(probs, masks, smooth)


@settings(max_examples=10)
@given(n=LONG, recipe=map_recipes(), smooth=SMOOTH, density=st.sampled_from([0.05, 0.5]))
def test_expected_metrics_of_long_rows_equal_the_dynamic_programme(n, recipe, smooth, density):
    _, dtype, values = recipe
    probs = make_probs((1, 2, n), dtype, values)
    gen = torch.Generator().manual_seed(values["seed"] % 2**63)
    masks = torch.rand(probs.shape, generator=gen, dtype=torch.float64) < density
    assert_expected_equal_dp(probs, masks, smooth)


@settings(max_examples=40)
@given(recipe=map_recipes(max_rows=8), smooth=SMOOTH)
def test_expected_metrics_of_a_row_do_not_depend_on_the_other_rows(recipe, smooth):
    shape, dtype, values = recipe
    probs = make_probs(shape, dtype, values)
    masks = probs > 0.5
    masks[0, 0] = False  # an empty mask beside the others
    for fn in (expected_dice, expected_iou):
        together = fn(probs, masks, smooth=smooth)
        for b in range(shape[0]):
            for c in range(shape[1]):
                alone = fn(probs[b : b + 1, c : c + 1], masks[b : b + 1, c : c + 1], smooth=smooth)
                assert float(alone[0, 0]) == pytest.approx(float(together[b, c]), abs=1e-13)


# ------------------------------------------------------------------- regressions (issue 9, items 1-2)


def test_exact_solver_with_a_saturated_pixel_and_small_smooth():
    """Item 1: a p = 1 pixel and smooth 0.01 made the objective NaN and the mask [1, 0, 0, 0, 0]."""
    probs = torch.tensor([[[1.0, 0.9, 0.9, 0.9, 0.1]]])
    masks = rankseg(probs, solver="exact", smooth=0.01, output_mode="multilabel", pruning_prob=0)
    assert masks.tolist() == [[[True, True, True, True, False]]]
    assert float(expected_dice(probs, masks, smooth=0.01)[0, 0]) == pytest.approx(0.9448, abs=1e-4)


@pytest.mark.parametrize("metric", ["dice", "iou"])
@pytest.mark.parametrize("smooth", [1e-6, 0.02, 0.05])
def test_exact_solver_on_a_600_pixel_row_with_three_saturated_pixels(metric, smooth):
    """Item 1: the exact mask was worth 0.038 where RMA's was worth 0.693."""
    probs = torch.from_numpy(np.random.default_rng(0).random((1, 1, 600)) ** 2)
    probs[0, 0, :3] = 1.0
    assert_exact_optimum(probs, metric, smooth)
    exact = RankSEG(metric=metric, smooth=smooth, solver="exact", output_mode="multilabel", pruning_prob=0)(
        probs
    )
    rma = RankSEG(metric=metric, smooth=smooth, output_mode="multilabel", pruning_prob=0)(probs)
    score = expected_dice if metric == "dice" else expected_iou
    assert (
        float(score(probs, exact, smooth=smooth)[0, 0])
        >= float(score(probs, rma, smooth=smooth)[0, 0]) - 1e-12
    )


def test_expected_dice_is_finite_and_rows_are_independent():
    """Item 2: [[nan, 0.504]], and the first row alone gave 0.330."""
    probs = torch.tensor([[[1.0, 0.5, 0.2], [0.3, 0.2, 0.1]]])
    masks = torch.tensor([[[0, 1, 1], [0, 0, 0]]]).bool()
    both = expected_dice(probs, masks, smooth=1e-3)
    first = expected_dice(probs[:, :1], masks[:, :1], smooth=1e-3)
    assert torch.isfinite(both).all()
    assert float(both[0, 0]) == pytest.approx(float(first[0, 0]), abs=1e-13)
    reference = dp_mask_value("dice", probs[0, 0].double().numpy(), [0, 1, 1], 1e-3)
    assert float(both[0, 0]) == pytest.approx(reference, abs=1e-12)


@pytest.mark.parametrize("n", [40, 5000])
@pytest.mark.parametrize("smooth", [0.0, 1e-6, 1e-3, 10.0, 1e4])
def test_expected_metrics_are_finite_for_saturated_rows_and_any_smooth(n, smooth):
    """All pixels at 1 (or 0) with empty, full and partial masks: the closed forms."""
    ones = torch.ones(1, 1, n, dtype=torch.float64)
    full, empty = torch.ones_like(ones, dtype=torch.bool), torch.zeros_like(ones, dtype=torch.bool)
    half = full.clone()
    half[..., n // 2 :] = False
    k = n // 2
    assert float(expected_dice(ones, full, smooth=smooth)[0, 0]) == pytest.approx(1.0, abs=1e-12)
    assert float(expected_dice(ones, half, smooth=smooth)[0, 0]) == pytest.approx(
        (2 * k + smooth) / (k + n + smooth), abs=1e-12
    )
    assert float(expected_iou(ones, half, smooth=smooth)[0, 0]) == pytest.approx(
        (k + smooth) / (n + smooth), abs=1e-12
    )
    assert float(expected_dice(ones, empty, smooth=smooth)[0, 0]) == pytest.approx(
        smooth / (n + smooth), abs=1e-12
    )
    zeros = torch.zeros_like(ones)
    expected_empty = 1.0 if smooth > 0 else 0.0
    assert float(expected_iou(zeros, empty, smooth=smooth)[0, 0]) == pytest.approx(expected_empty, abs=1e-12)
    assert float(expected_iou(zeros, full, smooth=smooth)[0, 0]) == pytest.approx(
        smooth / (n + smooth), abs=1e-12
    )


def test_an_argmax_over_a_curve_never_picks_nan():
    """Item 1's last part: the guard refuses a NaN objective instead of choosing it."""
    import rankseg.solvers.exact as exact

    values = torch.tensor([[0.1, float("nan"), 0.3]], dtype=torch.float64)
    ordered = torch.tensor([[0.9, 0.5]], dtype=torch.float64)
    with pytest.raises(FloatingPointError, match="NaN"):
        exact._cut_thresholds(values, ordered)


# ------------------------------------------------------------------- empty dimensions


@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 3, 0), (0, 1, 5, 5), (2, 1, 0, 4, 4)])
@pytest.mark.parametrize("metric", ["dice", "iou"])
def test_empty_dimensions(shape, metric):
    probs = torch.rand(shape)
    masks = rankseg(probs, metric=metric, solver="exact", output_mode="multilabel")
    assert masks.shape == shape and masks.dtype == torch.bool
    if shape[1] > 1:
        labels = rankseg(probs, metric=metric, solver="exact")
        assert labels.shape == (shape[0], *shape[2:])
    score = (expected_dice if metric == "dice" else expected_iou)(probs, probs > 0.5)
    assert score.shape == shape[:2] and score.dtype == torch.float64
