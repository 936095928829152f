"""Streaming passes in bounded memory and the work split over CPU threads (issue 14).

The streamed paths (a row's distinct values in slices, bands too large to sort at once, long
BA/TRNA rows) must give exactly what the in-memory paths give; the CPU workers must give the
same results as one thread, in the same order, and leave the caller's thread setting as it was.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rankseg._passes as passes
import rankseg.solvers.approx as approx
from rankseg import rankseg
from rankseg._passes import (
    Tiles,
    cpu_workers,
    descending_runs,
    map_tiles,
    plan_tiles,
    round_down,
    row_pass,
    row_stats,
    row_sums,
)
from rankseg.data import synthetic_probs
from rankseg.solvers.rma import rma_thresholds

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
GRID = [0.0, 1.0, 0.5, 0.25, 0.75, 1e-3]
TINY = Tiles(cache=1 << 12, memory=1 << 16, budget=1 << 12)  # forces every streamed path


@st.composite
def rows(draw, max_pixels=3000):
    """(R, N) float64 probabilities with exact 0 and 1, ties and clusters of close values."""
    r = draw(st.integers(1, 3))
    n = draw(st.integers(1, max_pixels))
    kind = draw(st.sampled_from(["uniform", "grid", "peaked", "mixed"]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = np.random.default_rng(seed)
    if kind == "uniform":
        p = gen.random((r, n))
    elif kind == "grid":
        p = gen.choice(GRID, size=(r, n))
    elif kind == "peaked":
        p = gen.random((r, n)) ** 8
    else:
        p = np.where(gen.random((r, n)) < 0.3, gen.choice(GRID, size=(r, n)), gen.random((r, n)))
    return p


def _masks(probs, thresholds):
    return probs > round_down(thresholds, probs.dtype)[:, None]


@settings(max_examples=60)
@given(p=rows(max_pixels=5000), dtype=st.sampled_from(DTYPES), data=st.data())
def test_descending_runs_are_the_distinct_values_in_order(p, dtype, data):
    row = torch.from_numpy(p[0]).to(dtype)
    if data.draw(st.booleans()):
        row = torch.where(row == 0, -torch.zeros_like(row), row)  # -0.0 is a legal probability
    lo = data.draw(st.sampled_from([-1.0, -0.0, 0.0, 1e-3, 0.3]))
    hi = data.draw(st.sampled_from([1.0, 0.75, 0.3000001]))
    capacity = data.draw(st.sampled_from([1, 7, 100, 10**9]))
    got = list(descending_runs(row, lo, hi, capacity, 1 << 10))
    values = torch.cat([v for v, _ in got]) if got else torch.empty(0, dtype=torch.float64)
    counts = torch.cat([c for _, c in got]) if got else torch.empty(0, dtype=torch.int64)
    x = row.to(torch.float64)
    expected, expected_counts = torch.unique(x[(x > lo) & (x <= hi)], return_counts=True)
    assert torch.equal(values, expected.flip(0)) and torch.equal(counts, expected_counts.flip(0))
    assert all(v.numel() <= capacity for v, _ in got)


def test_descending_runs_stop_where_the_caller_says():
    """``until`` is evaluated on the first histogram: every value above the first boundary where
    it holds is yielded (here: ``count >= 1000``), and the bins below are not gathered."""
    row = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    runs = descending_runs(row, -1.0, 1.0, 10**9, 1 << 14, until=lambda count, mass, nxt: count >= 1000)
    values = torch.cat([v for v, _ in runs])
    assert values.numel() >= 1000 and bool((values[:-1] > values[1:]).all())
    assert values.numel() < 200_000 // 8  # far fewer than all of them
    distinct = torch.unique(row.to(torch.float64)).flip(0)
    assert torch.equal(values, distinct[: values.numel()])


def test_row_pass_sums_are_accurate_on_sparse_rows():
    """Regression: the block sums of the old minima pass added a fill value of 2 per pixel below
    the threshold, and float32 blocks of such sums lost ~2e-7 of the mass above it (a 21-class
    softmax row, 1 Mi pixels): enough to misplace the RMA optimum by a pixel. Sums of the
    excess ``p - t`` are exact to ~1e-9 in float32 and exact in float64."""
    base = synthetic_probs(1, 21, (512, 512), seed=0)[0, 0].reshape(-1).repeat(4)
    for dtype, tolerance in ((torch.float32, 2e-9), (torch.float64, 1e-15), (torch.float16, 2e-9)):
        row = base.to(dtype)
        t = float(round_down(torch.tensor([0.3259], dtype=torch.float64), dtype)[0])
        above = row.to(torch.float64)[row.to(torch.float64) > t]
        for minima in (False, True):
            total, count, _ = row_pass(row, t, 1 << 18, minima)
            assert count == above.numel()
            assert abs(total - float(above.sum())) <= tolerance * float(above.sum()), (dtype, minima)


@settings(max_examples=40)
@given(p=rows(), dtype=st.sampled_from(DTYPES))
def test_row_stats_and_sums_match_torch(p, dtype):
    x = torch.from_numpy(p).to(dtype)
    low, high, total = row_stats(x)
    assert torch.equal(low, x.amin(dim=1)) and torch.equal(high, x.amax(dim=1))
    reference = x.to(torch.float64).sum(dim=1)
    # float32 block sums of 1024 values, then float64: ~1e-9 typical, 1e-7 at worst
    np.testing.assert_allclose(total.numpy(), reference.numpy(), rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(row_sums(x).numpy(), total.numpy(), rtol=1e-15, atol=1e-300)


def test_row_stats_read_wide_inputs_in_pieces_and_keep_nan():
    x = torch.rand(3, 700_000, generator=torch.Generator().manual_seed(1)).half()
    low, high, total = row_stats(x)
    assert torch.equal(low, x.amin(dim=1)) and torch.equal(high, x.amax(dim=1))
    np.testing.assert_allclose(total.numpy(), x.double().sum(dim=1).numpy(), rtol=1e-7)
    x[1, 650_000] = float("nan")
    low, high, _ = row_stats(x)
    assert math.isnan(float(low[1])) and math.isnan(float(high[1])) and not math.isnan(float(low[0]))


@settings(max_examples=60)
@given(
    p=rows(),
    dtype=st.sampled_from(DTYPES),
    metric=st.sampled_from(["dice", "iou"]),
    gamma=st.sampled_from([0.0, 0.5, 1.0, 30.0]),
)
def test_rma_in_a_tiny_memory_budget_gives_the_same_masks(p, dtype, metric, gamma):
    """A budget of 4 KiB sends long-row bands and smooth-Dice bands through the streamed paths
    (a Newton step, then the band's distinct values in slices)."""
    probs = torch.from_numpy(p).to(dtype)
    mu = probs.to(torch.float64).sum(1)
    ample = plan_tiles(probs.numel(), probs.element_size(), probs.device)
    t_ample, v_ample = rma_thresholds(probs, None, mu, metric, gamma, ample)
    t_tiny, v_tiny = rma_thresholds(probs, None, mu, metric, gamma, TINY)
    assert torch.equal(v_ample, v_tiny)
    assert torch.equal(_masks(probs, t_ample), _masks(probs, t_tiny))
    assert torch.equal(_masks(probs, t_tiny).sum(1).to(torch.float64), v_tiny)


@settings(max_examples=40)
@given(
    p=rows(max_pixels=2000),
    dtype=st.sampled_from(DTYPES),
    solver=st.sampled_from(["BA", "TRNA", "BA+TRNA"]),
    gamma=st.sampled_from([0.0, 1.0]),
)
def test_streamed_approximation_rows_equal_sorted_rows(p, dtype, solver, gamma):
    """BA/TRNA rows streamed through their distinct values (tiny budget) pick the same volumes
    as rows sorted whole."""
    probs = torch.from_numpy(p).to(dtype)
    mu = probs.to(torch.float64).sum(1)
    ample = plan_tiles(probs.numel(), probs.element_size(), probs.device)
    t_sorted, v_sorted = approx.approx_thresholds(probs, None, mu, solver, gamma, 1e-4, ample)
    t_streamed, v_streamed = approx.approx_thresholds(probs, None, mu, solver, gamma, 1e-4, TINY)
    assert torch.equal(v_sorted, v_streamed)
    assert torch.equal(_masks(probs, t_sorted), _masks(probs, t_streamed))
    assert torch.equal(_masks(probs, t_streamed).sum(1).to(torch.float64), v_streamed)


@settings(max_examples=40)
@given(
    mu=st.floats(0.0, 5e4),
    sigma=st.floats(0.0, 300.0),
    skew=st.floats(-0.5, 0.5),
    c=st.sampled_from([1e-6, 0.5, 1.0, 2.0, 11.0]),
)
def test_moment_series_of_the_reciprocal_expectation_matches_the_sum(mu, sigma, skew, c):
    """E[1/(tau + L + c)] from the moment series (and, near 0, the term-by-term fallback)
    equals the sum over the support to ~1e-14, for every tau from 0 to far beyond the support."""
    mu_t = torch.tensor([mu], dtype=torch.float64)
    var = torch.tensor([min(sigma**2, mu)], dtype=torch.float64)
    m3 = skew * var.clamp_min(1e-300) ** 1.5
    lq, uq = approx._support(mu_t, var, m3, 1e-4, int(mu + 10 * sigma + 10))
    width = int(uq - lq) + 1
    pmf = approx._pmf(lq, uq, width, mu_t, var, m3)
    tau = torch.cat([torch.arange(0, 200.0), torch.logspace(2.5, 7, 50)]).to(torch.float64)[None]
    got = approx._Expectation(pmf[:, None], lq, uq, c)(tau)[0]
    support = lq + torch.arange(width, dtype=torch.float64)
    expected = (pmf[0] / (tau[0, :, None] + support + c)).sum(-1)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=2e-14, atol=1e-300)


def test_map_tiles_returns_in_order_and_raises_in_the_caller():
    def fail(i: int) -> int:
        if i == 17:
            raise ValueError("tile 17")
        return i

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for size in (1000, 1 << 20):  # the caller's loop, then the workers
            with cpu_workers(torch.device("cpu"), size):
                assert map_tiles(lambda i: i * i, 50, torch.device("cpu")) == [i * i for i in range(50)]
                with pytest.raises(ValueError, match="tile 17"):
                    map_tiles(fail, 40, torch.device("cpu"))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [2, 3])
def test_workers_give_the_one_thread_results_and_restore_the_thread_setting(threads):
    """Every pass on 2-3 workers (dynamic schedule, nested passes inline) equals one thread."""
    probs = synthetic_probs(2, 5, (330, 330), seed=5)  # over 2^20 elements: the workers take the passes
    single = synthetic_probs(1, 1, (1100, 1100), seed=6, bias=-2.0).half()
    calls = [
        (probs, {}),
        (probs, {"metric": "iou", "unassigned_policy": "void"}),
        (probs, {"smooth": 1.0, "output_mode": "multilabel"}),
        (probs, {"solver": "BA"}),
        (probs, {"solver": "TRNA", "output_mode": "multilabel"}),
        (single, {"output_mode": "multilabel"}),
        (single, {"output_mode": "multilabel", "solver": "BA+TRNA"}),
    ]
    before = torch.get_num_threads()
    expected = [rankseg(x, **kwargs) for x, kwargs in calls]
    torch.set_num_threads(threads)
    try:
        for (x, kwargs), want in zip(calls, expected, strict=True):
            assert torch.equal(rankseg(x, **kwargs), want), kwargs
            assert torch.get_num_threads() == threads
        assert len(passes._POOL.serial) >= threads - 1 and all(passes._POOL.serial)  # the workers ran
    finally:
        torch.set_num_threads(before)


def test_cpu_workers_restore_the_thread_setting_after_an_error():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with (
            pytest.raises(RuntimeError, match="inside"),
            cpu_workers(torch.device("cpu"), 1 << 20) as threads,
        ):
            assert threads == 2 and torch.get_num_threads() == 1
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
