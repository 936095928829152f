r"""RMA: the reciprocal moment approximation, solved exactly and without sorting the pixels.

Design note ``algorithms.md`` sections 4-5. For one (image, class) row with probabilities
``p_1..p_d``, ``mu = sum p`` and smoothing ``gamma``, RMA scores a mask ``S`` with ``|S| = tau``
pixels and ``s = sum_S p`` as

    Dice: pi(S) = 2 s / (tau + mu + 1 + gamma) + gamma / (tau + mu + gamma)
    IoU:  pi(S) = (s + gamma) / (tau + mu - s + gamma)

and the solver returns, per row, a threshold ``theta`` such that the mask ``{p > theta}`` maximises
``pi`` over all masks (the optimum is a top-tau set, so over all top-tau sets too).

Threshold form (derived; design note section 5). For IoU (any gamma) and Dice with gamma = 0 the
objective is linear-fractional in the mask. Writing it as ``g(S) = (s + a) / (tau + b)`` with

    Dice, gamma = 0: a = 0,      b = mu + 1        (pi = 2 g)
    IoU:             a = gamma,  b = mu + 2 gamma  (pi = g / (1 - g))

``g`` is an increasing function of ``pi``, and adding a pixel raises ``g`` exactly when its
probability exceeds ``g``. So the optimum is ``{p > t*}`` where ``t* = max_S g(S)`` is the fixed
point of ``t <- g({p > t})`` (Dinkelbach's iteration, i.e. Newton's method on a convex piecewise-
linear function). Each iteration is one streaming pass that needs only the sum and the count of
the probabilities above ``t``; a start from a strided sample of each row makes it converge in two
or three passes. Every iterate after the first is a lower bound of ``t*`` and the iterates rise;
the row has converged when the count stops changing.

Dice with gamma > 0 is not linear-fractional. It is solved exactly by bounding: the linear-
fractional part ``2 s / (tau + mu + 1 + gamma)`` is solved as above, which brackets the optimal
threshold in ``(t_lo, t_hi]`` (see :func:`_dice_smooth_thresholds`); only the pixels inside that
narrow band are sorted and the exact objective is scanned over them.

Ties. Pixels whose probability equals the optimal threshold do not change the objective; they are
left out, so the mask is the *smallest* optimal one and does not depend on pixel order.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import Tensor

from .._passes import (
    Tiles,
    cpu_workers,
    descending_runs,
    map_tiles,
    round_down,
    row_pass,
    threshold_stats,
    tile_grid,
)

__all__ = ["rma_thresholds"]

_SAMPLE_SIZE = 4096  # per row, vectorised path
_ROW_SAMPLE_SIZE = 2048  # long-row path: its second pass absorbs a rougher start
_MAX_ITERATIONS = 10_000  # Dinkelbach strictly shrinks the mask each pass; never reached in practice
_BLOCK = 1024  # block length of row_pass's block minima
_RUN_BYTES = 64  # working memory per pixel of a gathered slice of distinct values


def _sample_start(probs: Tensor, rows: Tensor | None, a: Tensor, b: Tensor, tile: int) -> Tensor:
    """Estimate ``t* = max_S (s + a) / (tau + b)`` per row from a strided sample of its pixels.

    The sample (about 4096 pixels per row, every ``step``-th pixel, ``step`` odd so that it does
    not alias with power-of-two image widths) is sorted and every top-k cut scored with sums scaled
    to the full row. A row of at most 4096 pixels is its own sample.
    """
    n = probs.shape[1]
    step = max(1, n // _SAMPLE_SIZE) | 1  # odd: no aliasing with power-of-two image widths
    strided = probs[:, ::step]
    scale = n / strided.shape[1]
    counts = torch.arange(1, strided.shape[1] + 1, device=probs.device, dtype=torch.float64) * scale
    start = torch.where(b > 0, a / b.clamp_min(1e-300), torch.zeros_like(a))  # the empty mask
    k = a.numel()
    chunk = max(1, tile // (2 * strided.shape[1]))
    for r0 in range(0, k, chunk):
        r1 = min(k, r0 + chunk)
        picked = strided[r0:r1] if rows is None else strided.index_select(0, rows[r0:r1])
        ordered = picked.sort(dim=1, descending=True).values  # an estimate: input precision will do
        top_sums = ordered.cumsum(dim=1, dtype=torch.float64).mul_(scale)
        ratios = top_sums.add_(a[r0:r1, None]).div_(counts + b[r0:r1, None])
        start[r0:r1] = torch.maximum(ratios.amax(dim=1), start[r0:r1])
    return start


def _fixed_point(
    probs: Tensor, rows: Tensor | None, a: Tensor, b: Tensor, tiles: Tiles
) -> tuple[Tensor, Tensor, Tensor]:
    """Solve ``t* = max_S (s + a) / (tau + b)`` exactly for each of ``rows`` (``None``: all rows).

    Returns ``(values, thresholds, volumes)``, float64 ``(K,)`` each: the optimum ``t*``, a
    threshold whose mask ``{p > threshold}`` attains it (the smallest such mask), and its size.

    On the CPU, rows at least one cache tile long are solved one by one (:func:`_long_row_fixed_point`,
    two streaming passes); otherwise all rows are iterated together.
    """
    k = a.numel()
    values = torch.empty(k, dtype=torch.float64, device=probs.device)
    volumes = torch.empty(k, dtype=torch.float64, device=probs.device)
    if k == 0:
        return values, values.clone(), volumes
    n = probs.shape[1]
    tile = tiles.cache
    if probs.device.type == "cpu" and n >= tile:
        # One row per tile anyway: solve row by row (each pass spread over the CPU workers).
        row_ids = range(k) if rows is None else rows.tolist()
        out = [
            _long_row_fixed_point(probs[r], a_i, b_i, tile, tiles.budget // 2)
            for r, a_i, b_i in zip(row_ids, a.tolist(), b.tolist(), strict=True)
        ]
        out = torch.tensor(out, dtype=torch.float64)
        return out[:, 0], out[:, 1], out[:, 2]
    start = _sample_start(probs, rows, a, b, tile)

    active = torch.arange(k, device=probs.device)
    all_active = True
    t = start
    prev_counts = None
    for _ in range(_MAX_ITERATIONS):
        if all_active:
            scan, a_act, b_act = rows, a, b
        else:
            scan = active if rows is None else rows[active]
            a_act, b_act = a[active], b[active]
        sums, counts = threshold_stats(probs, scan, t, tile)
        denom = counts + b_act
        t_next = torch.where(denom > 0, (sums + a_act) / denom.clamp_min(1e-300), torch.zeros_like(t))
        if prev_counts is not None:
            # Iterates after the first rise (Newton from the left); max() guards float noise.
            t_next = torch.maximum(t_next, t)
            done = counts == prev_counts  # {p > t} did not change: t = g({p > t}) is optimal
            if bool(done.all()):
                values[active] = t
                volumes[active] = counts
                return values, values.clone(), volumes
            finished = active[done]
            values[finished] = t[done]
            volumes[finished] = counts[done]
            keep = ~done
            active, t_next, counts = active[keep], t_next[keep], counts[keep]
            all_active = False
        t, prev_counts = t_next, counts
    raise RuntimeError("RMA did not converge")  # pragma: no cover


def _long_row_fixed_point(
    row: Tensor, a: float, b: float, tile: int, budget: int
) -> tuple[float, float, float]:
    """:func:`_fixed_point` for one long CPU row, usually in two streaming passes.

    Pass 1 at the sample estimate ``t0`` gives ``t1 = g({p > t0}) <= t*`` (a set's value never
    exceeds the optimum), already within a few pixels of ``t*`` (Newton converges quadratically).
    Pass 2 at ``t1`` gives ``s1, n1`` and the block minima of the excesses ``p - t1`` above 0; with
    ``t2 = g({p > t1})`` and ``u = t2 + (t2 - t1)``, the few pixels in ``(t1, u]`` are gathered
    from the blocks whose minimum is at most ``u``, sorted, and every mask ``{p > t1}`` minus its
    ``j`` smallest pixels scored. If the mask without all of them scores at most ``u``, then
    ``t* <= u`` (for ``t < t*``, ``g({p > t}) > t``), so the best of these masks is the optimum;
    otherwise its score is a better lower bound and the step repeats from there. If the blocks to
    gather would take more than ``budget`` bytes, the band is narrowed first by another pass at
    ``t2`` (a lower bound of ``t*``, closer to it than ``t1``).
    """

    def g(s: float, n: float) -> float:
        return (s + a) / (n + b) if n + b > 0 else 0.0

    # Start: the best top-k cut of a sorted strided sample, sums scaled to the row (as in
    # _sample_start; NumPy, since this path is CPU-only and the sample is small).
    dtype = row.dtype
    step = max(1, row.numel() // _ROW_SAMPLE_SIZE) | 1
    sample = row[::step]
    sample = (sample if dtype != torch.bfloat16 else sample.float()).numpy()
    scale = row.numel() / sample.size
    top_sums = np.cumsum(np.sort(sample)[::-1], dtype=np.float64) * scale
    top_counts = np.arange(1, sample.size + 1, dtype=np.float64) * scale
    start = max(float(np.max((top_sums + a) / (top_counts + b))), a / b if b > 0 else 0.0)
    # Only a start: plain sums will do (the decisive second pass sums the excess).
    s0, n0, _ = row_pass(row, _exact_below(start, dtype), tile, block_minima=False, excess=False)
    t1 = _exact_below(g(s0, n0), dtype)
    full = row.numel() // _BLOCK
    blocks_view = row[: full * _BLOCK].view(full, _BLOCK)
    for _ in range(_MAX_ITERATIONS):
        s1, n1, minima = row_pass(row, t1, tile, block_minima=True)
        t2 = max(g(s1, n1), t1)
        u = t2 + (t2 - t1)
        # The band is small (a few pixels to a few thousand): NumPy beats torch's per-op cost.
        # Block minima are excesses over t1, rounded: the slack keeps every block with p <= u.
        near = (minima <= (u - t1) * (1 + 1e-6)).nonzero()[:, 0]
        if near.numel() * _BLOCK * (row.element_size() + 2) > budget:
            if _exact_below(t2, dtype) > t1:  # too many blocks to gather: one more Newton step
                t1 = _exact_below(t2, dtype)
                continue
            # No step left (ties: many pixels share a few values): scan the band's distinct values.
            found, start = _band_by_runs(row, a, b, t1, u, tile, budget)
            if found is None:  # t* > u: the mask without the band is a better start
                t1 = _exact_below(start, dtype)
                continue
            return found
        band = blocks_view.index_select(0, near[near < full]).reshape(-1)
        if row.numel() > full * _BLOCK and bool(minima[-1] <= (u - t1) * (1 + 1e-6)):
            band = torch.cat([band, row[full * _BLOCK :]])
        band = band.numpy() if dtype != torch.bfloat16 else band.float().numpy()
        band = np.sort(band[(band > t1) & (band <= u)].astype(np.float64))  # ascending
        m = band.size
        removed_sum = np.concatenate([[0.0], np.cumsum(band)])
        denom = (n1 + b) - np.arange(m + 1, dtype=np.float64)
        if denom[-1] <= 0 or (s1 + a - removed_sum[-1]) / denom[-1] > u:
            # t* > u: the mask without the band is a better start; step again from there.
            t1 = _exact_below(g(s1 - removed_sum[-1], n1 - m), dtype)
            continue
        # t* lies in [t1, u]: one of these masks is optimal. Only cuts between distinct values
        # are masks {p > theta}; among equal scores keep the smallest mask (the largest cut).
        scores = (s1 + a - removed_sum) / denom
        scores[1:-1][band[:-1] == band[1:]] = -np.inf
        j = m - int(np.argmax(scores[::-1]))
        return float(scores[j]), (float(band[j - 1]) if j > 0 else t1), n1 - j
    raise RuntimeError("RMA did not converge")  # pragma: no cover


def _band_by_runs(
    row: Tensor, a: float, b: float, t1: float, u: float, tile: int, budget: int
) -> tuple[tuple[float, float, float] | None, float]:
    """``((value, threshold, volume), _)`` of the best mask ``{p > theta}`` with ``t1 <= theta <= u``
    if ``t* <= u``; else ``(None, g({p > u}))``, a lower bound of ``t*`` above ``u``.

    Like the band step of :func:`_long_row_fixed_point`, but over the distinct values of the band,
    streamed from the top in slices of bounded size (:func:`descending_runs`), so any number of
    pixels (ties included) fits the memory ``budget``.
    """
    dtype = row.dtype
    u_below = _exact_below(u, dtype)
    s, n, _ = row_pass(row, u_below, tile, block_minima=False)
    best = (s + a) / (n + b) if n + b > 0 else 0.0
    if best > u:
        return None, best
    found = (best, u_below, n)  # ties keep the smallest mask: the first best from the top
    for values, counts in descending_runs(row, t1, u_below, budget // _RUN_BYTES, tile):
        sums = torch.cumsum(values * counts, 0).add_(s)
        sizes = torch.cumsum(counts, 0).to(torch.float64).add_(n)
        scores = (sums + a) / (sizes + b)
        j = int(scores.argmax())
        if float(scores[j]) > found[0]:
            found = (float(scores[j]), _value_below(values[j], dtype), float(sizes[j]))
        s, n = float(sums[-1]), float(sizes[-1])
    return found, found[0]


def _value_below(value: Tensor, dtype: torch.dtype) -> float:
    """The largest ``dtype`` value below ``value`` (a value of that dtype): ``p > it`` iff ``p >= value``."""
    exact = value.to(dtype)
    return float(torch.nextafter(exact, torch.full_like(exact, -float("inf"))))


def _exact_below(value: float, dtype: torch.dtype) -> float:
    """The largest value of ``dtype`` not above ``value``, as a Python float."""
    if dtype == torch.float64:
        return value
    np_type = {torch.float32: np.float32, torch.float16: np.float16}.get(dtype)
    if np_type is None:  # bfloat16 has no NumPy type
        return float(round_down(torch.tensor([value], dtype=torch.float64), dtype)[0])
    rounded = np_type(value)
    if float(rounded) > value:
        rounded = np.nextafter(rounded, np_type(-np.inf))
    return float(rounded)


def _band(
    probs: Tensor, rows: Tensor, lo: Tensor, hi: Tensor, total: int, tile: int
) -> tuple[Tensor, Tensor]:
    """Values ``p`` with ``lo < p <= hi`` of each of ``rows``, as flat (values float64, position
    in ``rows``), gathered tile by tile into buffers of the known ``total`` size (in no
    particular order: the caller sorts them)."""
    lo_w, hi_w = round_down(lo, probs.dtype), round_down(hi, probs.dtype)
    grid = tile_grid(rows.numel(), probs.shape[1], tile)
    values = torch.empty(total, dtype=torch.float64, device=probs.device)
    owners = torch.empty(total, dtype=torch.int64, device=probs.device)
    filled = [0]
    lock = threading.Lock()

    def work(i: int) -> None:
        r0, r1, c0, c1 = grid[i]
        block = probs[:, c0:c1].index_select(0, rows[r0:r1])
        inside = (block > lo_w[r0:r1, None]) & (block <= hi_w[r0:r1, None])
        r_idx, c_idx = inside.nonzero(as_tuple=True)
        with lock:
            offset = filled[0]
            filled[0] += r_idx.numel()
        values[offset : offset + r_idx.numel()] = block[r_idx, c_idx]
        owners[offset : offset + r_idx.numel()] = r_idx + r0

    map_tiles(work, len(grid), probs.device)
    return values, owners


def _smooth_dice(s: Tensor, tau: Tensor, mu: Tensor, gamma: float) -> Tensor:
    """The RMA Dice objective with ``gamma > 0`` of a mask of ``tau`` pixels and mass ``s``."""
    return 2 * s / (tau + mu + 1 + gamma) + gamma / (tau + mu + gamma)


def _dice_smooth_thresholds(
    probs: Tensor, rows: Tensor | None, mu: Tensor, gamma: float, tiles: Tiles
) -> tuple[Tensor, Tensor]:
    r"""Exact RMA-Dice thresholds for ``gamma > 0``.

    With ``A = mu + 1 + gamma`` write ``f(tau) = 2 s_tau / (tau + A) + gamma / (tau + A - 1)``.
    Let ``lambda0 = max 2 s / (tau + A)`` (linear-fractional, solved by :func:`_fixed_point`) at
    volume ``tau0``. Then ``f_lb = max(f(tau0), f(0)) <= f* <= lambda0 + gamma / (A - 1) = f_ub``,
    and every optimal volume ``T`` satisfies (derived from ``f(T+1) <= f(T)`` and
    ``f(T-1) <= f(T)``):

        p_(T+1) <= f_ub / 2 + gamma / (2 A (A - 1)) = t_hi    (pixels above t_hi are always in)
        p_(T)   >  (f_lb - gamma / A) / 2          = t_lo    (pixels at or below t_lo never are)

    so only the band ``t_lo < p <= t_hi`` is sorted and ``f`` is scanned over its cut points.
    Cuts inside a run of equal probabilities are skipped (the objective is quasi-convex along
    such a run, so a run is taken whole or not at all). The bands of several rows are sorted
    together while they fit half the memory budget; a band too large for it on its own is
    streamed through its distinct values (:func:`descending_runs`).
    """
    a_coef = mu + 1.0 + gamma
    tile = tiles.cache
    half_lam, _, tau0 = _fixed_point(probs, rows, torch.zeros_like(mu), a_coef, tiles)
    lam0 = 2.0 * half_lam
    f_empty = gamma / (mu + gamma)
    f_lb = torch.maximum(lam0 + gamma / (tau0 + mu + gamma), f_empty)
    f_ub = lam0 + f_empty
    t_hi = (f_ub / 2 + gamma / (2 * a_coef * (a_coef - 1.0))).clamp(max=1.0)
    t_lo = (f_lb - gamma / a_coef) / 2

    above_sum, above_cnt = threshold_stats(probs, rows, t_hi, tile)
    _, over_lo = threshold_stats(probs, rows, t_lo, tile)
    bands = _Bands(probs, rows, t_lo, t_hi, above_sum, above_cnt, mu, gamma, tile)
    capacity = max(1, tiles.budget // 2 // _RUN_BYTES)
    group: list[int] = []
    filled = 0
    for i, size in enumerate(int(x) for x in (over_lo - above_cnt).tolist()):
        if size > capacity:
            bands.stream(i, capacity)
            continue
        if size > 0 and filled + size > capacity:
            bands.sort(group, filled)
            group, filled = [], 0
        if size > 0:
            group.append(i)
            filled += size
    if group:
        bands.sort(group, filled)
    return bands.thresholds, bands.volumes


class _Bands:
    """The band step of :func:`_dice_smooth_thresholds`: every cut between distinct values of
    ``t_lo < p <= t_hi`` scored, per row. Starts from the cut "no band pixel" (``t_hi``)."""

    def __init__(
        self,
        probs: Tensor,
        rows: Tensor | None,
        t_lo: Tensor,
        t_hi: Tensor,
        above_sum: Tensor,
        above_cnt: Tensor,
        mu: Tensor,
        gamma: float,
        tile: int,
    ) -> None:
        self.probs, self.t_lo, self.t_hi, self.mu, self.gamma, self.tile = probs, t_lo, t_hi, mu, gamma, tile
        self.row_ids = torch.arange(mu.numel(), device=mu.device) if rows is None else rows
        self.above_sum, self.above_cnt = above_sum, above_cnt
        self.thresholds, self.volumes = t_hi.clone(), above_cnt.clone()

    def sort(self, group: list[int], total: int) -> None:
        """Gather and sort the bands (``total`` pixels) of the rows ``group`` together (flat, one
        segment per row)."""
        index = torch.tensor(group, device=self.mu.device)
        t_lo, mu = self.t_lo[index], self.mu[index]
        above_sum, above_cnt = self.above_sum[index], self.above_cnt[index]
        values, owner = _band(self.probs, self.row_ids[index], t_lo, self.t_hi[index], total, self.tile)
        m, k = values.numel(), index.numel()
        if m == 0:
            return
        # Flat layout sorted by row, then by decreasing probability (two stable sorts).
        order = values.sort(descending=True, stable=True).indices
        order = order[owner[order].sort(stable=True).indices]
        values, owner = values[order], owner[order]
        sizes = torch.bincount(owner, minlength=k)
        starts = torch.cumsum(sizes, 0) - sizes
        flat = torch.arange(m, device=values.device)
        rank = flat - starts[owner]  # 0-based position within the row's band
        cum = torch.cumsum(values, 0)
        before = torch.where(starts > 0, cum[(starts - 1).clamp(0, m - 1)], torch.zeros_like(mu))
        # Cut after position `rank`: take rank + 1 band values.
        s_cut = above_sum[owner] + cum - before[owner]
        f_cut = _smooth_dice(s_cut, above_cnt[owner] + rank + 1, mu[owner], self.gamma)
        last_in_row = rank + 1 == sizes[owner]
        next_value = values[(flat + 1).clamp(max=m - 1)]
        boundary = last_in_row | (next_value < values)
        f_cut = torch.where(boundary, f_cut, torch.full_like(f_cut, -float("inf")))

        f_none = _smooth_dice(above_sum, above_cnt, mu, self.gamma)
        best = f_none.clone().scatter_reduce_(0, owner, f_cut, reduce="amax")
        # Smallest optimal volume: no band pixel if that is optimal, else the first optimal cut.
        first = torch.full((k,), m, dtype=torch.long, device=values.device)
        hit = f_cut == best[owner]
        first.scatter_reduce_(0, owner[hit], rank[hit], reduce="amin")
        chosen = (f_none < best) & (first < m)
        taken = first[chosen] + 1
        is_whole_band = taken == sizes[chosen]
        next_idx = (starts[chosen] + taken).clamp(max=m - 1)
        self.thresholds[index[chosen]] = torch.where(is_whole_band, t_lo[chosen], values[next_idx])
        self.volumes[index[chosen]] = above_cnt[chosen] + taken.to(torch.float64)

    def stream(self, i: int, capacity: int) -> None:
        """Row ``i``'s band, too large to sort at once: its distinct values are streamed from the
        top (:func:`descending_runs`) and every cut between them scored."""
        row = self.probs[int(self.row_ids[i])]
        s, n, mu = self.above_sum[i], self.above_cnt[i], self.mu[i]
        best = float(_smooth_dice(s, n, mu, self.gamma))
        lo, hi = float(self.t_lo[i]), float(self.t_hi[i])
        for values, counts in descending_runs(row, lo, hi, capacity, self.tile):
            sums = torch.cumsum(values * counts, 0).add_(s)
            sizes = torch.cumsum(counts, 0).to(torch.float64).add_(n)
            scores = _smooth_dice(sums, sizes, mu, self.gamma)
            j = int(scores.argmax())  # the first best: ties keep the smallest mask
            if float(scores[j]) > best:
                best = float(scores[j])
                self.thresholds[i] = _value_below(values[j], row.dtype)
                self.volumes[i] = sizes[j]
            s, n = sums[-1], sizes[-1]


def rma_thresholds(
    probs: Tensor, rows: Tensor | None, mu: Tensor, metric: str, smooth: float, tiles: Tiles
) -> tuple[Tensor, Tensor]:
    """Per-row RMA thresholds: the mask ``probs[row] > threshold`` maximises the RMA objective.

    Args:
        probs: ``(R, N)`` probabilities (validated, any floating dtype, any device).
        rows: ``(K,)`` int64 indices of the rows to solve, or ``None`` for all of them.
        mu: ``(K,)`` float64 ``sum(p)`` of those rows.
        metric: ``"dice"`` or ``"iou"``.
        smooth: the smoothing constant ``gamma >= 0``.
        tiles: work-tile sizes (:class:`rankseg._passes.Tiles`).

    Returns:
        ``(thresholds, volumes)``, float64 ``(K,)`` each.
    """
    with cpu_workers(
        probs.device, probs.numel()
    ):  # the passes on the CPU workers, nothing parallel in the caller
        if metric == "iou":
            return _fixed_point(probs, rows, torch.full_like(mu, smooth), mu + 2 * smooth, tiles)[1:]
        if smooth == 0:
            return _fixed_point(probs, rows, torch.zeros_like(mu), mu + 1.0, tiles)[1:]
        return _dice_smooth_thresholds(probs, rows, mu, smooth, tiles)
