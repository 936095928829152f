"""Exact, BA, TRNA and BA+TRNA solvers, and the exact expected metrics (issue: solvers)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import rankseg.solvers.approx as approx
import rankseg.solvers.exact as exact
from rankseg import RankSEG
from rankseg._passes import plan_tiles
from rankseg.data import sample_labels, synthetic_probs
from rankseg.functional import rankseg
from rankseg.metrics import expected_dice, expected_iou

from reference import brute_curve, brute_expected, dp_mask_value, trna_reference

GRID = [0.0, 1.0, 0.5, 0.25, 0.9, 0.1]


@st.composite
def small_rows(draw):
    d = draw(st.integers(1, 14))
    values = st.one_of(st.floats(0.0, 1.0, allow_nan=False), st.sampled_from(GRID))
    return draw(hnp.arrays(np.float64, (d,), elements=values))


@settings(max_examples=120)
@given(p=small_rows(), metric=st.sampled_from(["dice", "iou"]), gamma=st.sampled_from([0.0, 0.1, 1.0]))
def test_exact_curve_and_volume_match_enumeration(p, metric, gamma):
    """For d <= 14: every top-tau set's expected metric to 1e-9, and the solver's volume exactly."""
    curve, ordered = brute_curve(metric, p, gamma)
    values, _ = exact.objective_curve(torch.tensor(p)[None], metric, gamma)
    np.testing.assert_allclose(values[0].numpy(), curve, atol=1e-9, rtol=0)
    # expected volume: the best cut between distinct values, smallest among ties
    valid = np.ones(p.size + 1, bool)
    valid[1:-1] = ordered[:-1] > ordered[1:]
    scores = np.where(valid, curve, -np.inf)
    best = scores.max()
    candidates = np.nonzero(scores >= best - 1e-12)[0]
    masks = rankseg(
        p[None, None], metric=metric, smooth=gamma, solver="exact", output_mode="multilabel", pruning_prob=0.0
    )
    volume = int(masks.sum())
    if p.max() > 0:
        assert volume in candidates, (volume, candidates, curve)
    assert brute_expected(metric, p, masks[0, 0], gamma) >= best - 1e-9


@settings(max_examples=120)
@given(p=small_rows(), data=st.data(), gamma=st.sampled_from([0.0, 0.1, 1.0]))
def test_expected_metrics_of_any_mask_match_enumeration(p, data, gamma):
    mask = data.draw(hnp.arrays(np.bool_, p.shape))
    probs, masks = p[None, None], mask[None, None]
    assert float(expected_dice(probs, masks, smooth=gamma)[0, 0]) == pytest.approx(
        brute_expected("dice", p, mask, gamma), abs=1e-9
    )
    assert float(expected_iou(probs, masks, smooth=gamma)[0, 0]) == pytest.approx(
        brute_expected("iou", p, mask, gamma), abs=1e-9
    )


def test_expected_metrics_of_long_rows_match_the_dynamic_programme():
    """Rows above 2048 pixels use power sums (and direct terms where the mass is small)."""
    gen = torch.Generator().manual_seed(0)
    cases = [
        synthetic_probs(2, 3, (60, 60), seed=1).double()[:1, 1:],  # holds pixels of exactly 1.0
        (torch.rand(1, 2, 2500, generator=gen, dtype=torch.float64) * 0.02),  # little mass
        torch.round(torch.rand(1, 2, 2500, generator=gen, dtype=torch.float64), decimals=1),
    ]
    for probs in cases:
        masks = torch.rand(probs.shape, generator=gen) < 0.3
        rows = probs.flatten(2).flatten(0, 1).numpy()
        flat_masks = masks.flatten(2).flatten(0, 1).numpy()
        for metric, fn in (("dice", expected_dice), ("iou", expected_iou)):
            for gamma in (0.0, 1.0):
                got = fn(probs, masks, smooth=gamma).reshape(-1).numpy()
                expected = [dp_mask_value(metric, p, m, gamma) for p, m in zip(rows, flat_masks, strict=True)]
                np.testing.assert_allclose(got, expected, atol=1e-10, rtol=0)


JMLR_TABLE = {  # w: [(beta, optimal, optimal volume or None, threshold 0.5)], design note section 7
    28: [(1.01, 0.8696, None, 0.8696), (1.05, 0.5490, 378, 0.4243), (1.10, 0.4677, 136, 0.3343)],
    64: [(1.01, 0.7141, None, 0.6685), (1.05, 0.4456, None, 0.2959), (1.10, 0.4393, None, 0.3009)],
    128: [(1.01, 0.5507, None, 0.4101), (1.05, 0.4288, None, 0.2767), (1.10, 0.4383, None, 0.2998)],
    256: [(1.01, 0.4504, None, 0.2860), (1.05, 0.4280, None, 0.2759), (1.10, 0.4383, None, 0.2998)],
}


@pytest.mark.parametrize("w", sorted(JMLR_TABLE))
def test_jmlr_simulation_example_one(w):
    """Exact expected Dice at the optimal volume and at the 0.5 threshold, to 4 decimals."""
    idx = torch.arange(w, dtype=torch.float64)
    for beta, optimal, volume, threshold in JMLR_TABLE[w]:
        p = (beta ** -(idx[:, None] + idx[None, :]))[None, None]
        masks = rankseg(p, solver="exact", output_mode="multilabel", pruning_prob=0.0)
        assert round(float(expected_dice(p, masks)[0, 0]), 4) == optimal
        assert round(float(expected_dice(p, p > 0.5)[0, 0]), 4) == threshold
        if volume is not None:
            assert int(masks.sum()) == volume


def test_monte_carlo_agrees_with_expected_dice():
    """Mean Dice over labels drawn from the map, within 4 standard errors of expected_dice."""
    probs = synthetic_probs(1, 1, (128, 128), seed=3, bias=-1.0).double()
    masks = rankseg(probs, solver="exact", output_mode="multilabel")
    draws = 400
    labels = sample_labels(probs.expand(draws, -1, -1, -1), seed=5, output_mode="multilabel")
    inter = (labels & masks).flatten(1).sum(1).double()
    dice = 2 * inter / (masks.sum() + labels.flatten(1).sum(1)).double()
    mean, se = dice.mean().item(), dice.std().item() / math.sqrt(draws)
    expected = float(expected_dice(probs, masks)[0, 0])
    assert abs(mean - expected) < 4 * se, (mean, expected, se)


@pytest.mark.parametrize("case", ["bimodal", "ties", "tiny_mass", "smooth_map", "all_zero", "all_one"])
@pytest.mark.parametrize("metric", ["dice", "iou"])
@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_long_row_search_finds_the_global_optimum(case, metric, gamma):
    """Branch and bound on long rows equals the evaluation of every cut, also where pi(tau) has
    two local maxima (one p = 1 pixel, then many small ones)."""
    gen = torch.Generator().manual_seed(1)
    if case == "bimodal":
        p = torch.zeros(1, 5000, dtype=torch.float64)
        p[0, 0] = 1.0
        p[0, 1:60] = torch.linspace(0.2, 0.18, 59, dtype=torch.float64)
    elif case == "ties":
        p = torch.round(torch.rand(2, 5000, generator=gen, dtype=torch.float64), decimals=1)
    elif case == "tiny_mass":
        p = torch.rand(2, 3000, generator=gen, dtype=torch.float64) * 0.01
        p[:, :5] = 0.9
    elif case == "smooth_map":
        p = synthetic_probs(1, 3, (64, 64), seed=2, scale=3).reshape(3, -1).double()
    elif case == "all_zero":
        p = torch.zeros(1, 3000, dtype=torch.float64)
    else:
        p = torch.ones(1, 3000, dtype=torch.float64)
    values, ordered = exact.objective_curve(p, metric, gamma)
    _, full_volume = exact._cut_thresholds(values, ordered)
    tiles = plan_tiles(p.numel(), p.element_size(), p.device)
    thresholds, volumes = exact.exact_thresholds(p, None, p.sum(1), metric, gamma, tiles)
    assert torch.equal(volumes, full_volume)
    assert torch.equal((p > thresholds[:, None]).sum(1).double(), volumes)


def test_trna_matches_its_definition():
    """Chunked, interpolated TRNA equals a tau-by-tau evaluation of the JMLR formula."""
    gen = torch.Generator().manual_seed(4)
    for scale, n in ((3.0, 300), (0.4, 400), (1.0, 150)):
        p = torch.sigmoid(scale * torch.randn(n, generator=gen, dtype=torch.float64))
        ordered = p.sort(descending=True).values[None]
        d0 = approx._search_bound(ordered, ordered.cumsum(1), 0.5)
        for gamma in (0.0, 0.5):
            got = approx._trna_scores(ordered, ordered.cumsum(1), torch.full_like(d0, n), gamma, 1e-4)[0]
            ref = trna_reference(p.numpy(), gamma, 1e-4)
            np.testing.assert_allclose(got.numpy(), ref, atol=1e-12)


def test_ba_matches_its_definition():
    gen = torch.Generator().manual_seed(5)
    p = torch.sigmoid(2 * torch.randn(500, generator=gen, dtype=torch.float64))
    ordered = p.sort(descending=True).values[None]
    cumulative = ordered.cumsum(1)
    for gamma in (0.0, 1.0):
        full_range = torch.tensor([500])
        got = approx._ba_scores(ordered, cumulative, full_range, gamma, 1e-4)[0].numpy()
        mu, var, m3 = approx._moments(ordered)
        lq, uq = approx._support(mu, var, m3, 1e-4, 500)
        width = int(uq - lq) + 1
        pmf = approx._pmf(lq, uq, width, mu, var, m3)[0].numpy()
        support = int(lq) + np.arange(width)
        tau = np.arange(1, 501)[:, None]
        ref = 2 * cumulative[0].numpy() * (pmf / (tau + support + gamma + 1)).sum(1)
        if gamma > 0:
            ref += gamma * (pmf / (tau + support + gamma)).sum(1)
        np.testing.assert_allclose(got[1:], ref, atol=1e-12)


@pytest.mark.parametrize("solver", ["BA", "TRNA", "BA+TRNA"])
def test_approximations_agree_with_exact_on_large_maps(solver):
    """sigma > 5 (hundreds of uncertain pixels): expected Dice within 1e-3 of the exact optimum."""
    probs = synthetic_probs(2, 3, (96, 96), seed=6, scale=3.0).double()
    exact_masks = rankseg(probs, solver="exact", output_mode="multilabel", pruning_prob=0.0)
    masks = rankseg(probs, solver=solver, output_mode="multilabel", pruning_prob=0.0)
    sigma = (probs * (1 - probs)).flatten(2).sum(-1).sqrt()
    assert bool((sigma > 5).all())
    gap = expected_dice(probs, exact_masks) - expected_dice(probs, masks)
    assert float(gap.max()) < 1e-3
    assert float(gap.min()) > -1e-12  # nothing beats the exact optimum


def test_approximation_volumes_on_small_maps_are_reported_and_near_exact():
    """Few uncertain pixels (sigma < 5): volumes of every solver against the exact one. The
    approximations may miss here; they stay within a few pixels on these examples."""
    gen = torch.Generator().manual_seed(7)
    probs = torch.zeros(4, 1, 40, dtype=torch.float64)
    probs[:, 0, :6] = torch.rand(4, 6, generator=gen, dtype=torch.float64) * 0.6 + 0.2
    probs[:, 0, 6:] = torch.rand(4, 34, generator=gen, dtype=torch.float64) * 0.05
    volumes = {
        solver: rankseg(probs, solver=solver, output_mode="multilabel", pruning_prob=0.0).sum((1, 2)).tolist()
        for solver in ("exact", "RMA", "BA", "TRNA", "BA+TRNA")
    }
    for vols in volumes.values():
        assert max(abs(a - b) for a, b in zip(vols, volumes["exact"], strict=True)) <= 3, volumes


@pytest.mark.parametrize("solver", ["exact", "BA", "TRNA", "BA+TRNA"])
def test_every_solver_gives_valid_multiclass_labels(solver):
    probs = synthetic_probs(2, 4, (40, 40), seed=8)
    metric = "iou" if solver == "exact" else "dice"
    labels = RankSEG(metric=metric, solver=solver)(probs)
    assert labels.shape == (2, 40, 40) and labels.dtype == torch.int64
    assert int(labels.min()) >= 0 and int(labels.max()) < 4
    assert torch.equal(labels, rankseg(probs, metric=metric, solver=solver))


def test_expected_metrics_check_their_inputs():
    probs = torch.rand(1, 2, 5)
    with pytest.raises(TypeError, match="masks must be boolean"):
        expected_dice(probs, probs)
    with pytest.raises(ValueError, match=r"masks must have the shape of probs \(1, 2, 5\) .*got \(1, 2, 4\)"):
        expected_dice(probs, torch.zeros(1, 2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="smooth must be >= 0"):
        expected_iou(probs, probs > 0.5, smooth=-1)
    out = expected_dice(probs.numpy(), (probs > 0.5).numpy())
    assert isinstance(out, np.ndarray) and out.shape == (1, 2)
