"""Streaming passes over a ``(rows, pixels)`` probability matrix, in bounded tiles.

A "row" is one (image, class) pair. The solvers never sort or copy a whole row; they read the
probabilities in tiles whose work buffer is a fraction of the input's size, so that the extra
peak memory of a call stays below the size of the input.

Exactness convention: a mask is ``p > threshold`` with a float64 threshold. Comparisons are made
in the *work dtype* (float64 for float64 input, float32 otherwise) after rounding the threshold
down to that dtype, which gives exactly the same set for every value representable in it
(:func:`round_down`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Tiles",
    "plan_tiles",
    "round_down",
    "row_pass",
    "row_sums",
    "threshold_stats",
    "work_dtype",
]

_MIN_TILE = 1 << 16
_MAX_TILE = 1 << 24
_CPU_TILE = 1 << 19
_SUM_BLOCK = 1024


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class Tiles:
    """How much of the ``(rows, pixels)`` matrix one step of a pass may hold, in elements.

    ``memory``: the largest float32 work buffer that, with the ``reserved`` output, keeps the
    extra peak memory of a call under 90% of the input's size. ``cache``: the tile of passes that
    make several in-place ops per tile; on the CPU it is also capped near the L2/L3 cache size
    (512 Ki elements), which measured 3x faster than memory-sized tiles on a 1x150x512x512 input.
    Both are at least 64 Ki elements.
    """

    cache: int
    memory: int


def plan_tiles(numel: int, itemsize: int, device: torch.device, reserved: int = 0) -> Tiles:
    """The :class:`Tiles` of an input of ``numel`` elements of ``itemsize`` bytes."""
    memory = max(int(numel * itemsize * 0.9) - reserved, 0) // 4
    memory = int(min(max(memory, _MIN_TILE), _MAX_TILE))
    cache = min(memory, _CPU_TILE) if device.type == "cpu" else memory
    return Tiles(cache=cache, memory=memory)


def round_down(thresholds: Tensor, dtype: torch.dtype) -> Tensor:
    """Largest values of ``dtype`` not above the float64 ``thresholds``.

    For any ``p`` representable in ``dtype``: ``p > thresholds`` (in float64) if and only if
    ``p > round_down(thresholds, dtype)``. Infinite thresholds are kept.
    """
    if dtype == torch.float64:
        return thresholds.to(torch.float64)
    rounded = thresholds.to(dtype)
    too_big = rounded.to(torch.float64) > thresholds
    if bool(too_big.any()):
        lower = torch.nextafter(rounded, torch.full_like(rounded, -float("inf")))
        rounded = torch.where(too_big, lower, rounded)
    return rounded


def row_sums(x: Tensor) -> Tensor:
    """Float64 sums over the last dim of a 2-D tensor, accumulated in float32 blocks of 1024.

    Float32 partial sums over short blocks followed by float64 totals keep the relative error near
    1e-9 for rows of millions of values, at the speed of a float32 reduction.
    """
    if x.dtype == torch.float64 or x.shape[-1] < 2 * _SUM_BLOCK:
        return x.sum(-1, dtype=torch.float64)
    rows, cols = x.shape
    blocks = cols // _SUM_BLOCK
    head = x[:, : blocks * _SUM_BLOCK].reshape(rows, blocks, _SUM_BLOCK).sum(-1, dtype=torch.float32)
    total = head.sum(-1, dtype=torch.float64)
    if cols > blocks * _SUM_BLOCK:
        total += x[:, blocks * _SUM_BLOCK :].sum(-1, dtype=torch.float64)
    return total


def _tiles(rows: int, cols: int, tile: int):
    """Yield (row_start, row_stop, col_start, col_stop) tiles covering a rows x cols matrix."""
    if cols == 0 or rows == 0:
        return
    if cols <= tile:
        step = max(1, tile // cols)
        for r0 in range(0, rows, step):
            yield r0, min(rows, r0 + step), 0, cols
    else:
        for r0 in range(rows):
            for c0 in range(0, cols, tile):
                yield r0, r0 + 1, c0, min(cols, c0 + tile)


def threshold_stats(
    probs: Tensor, rows: Tensor | None, thresholds: Tensor, tile: int
) -> tuple[Tensor, Tensor]:
    """Sum and count of the probabilities above each row's threshold, in one streaming pass.

    Args:
        probs: ``(R, N)`` probabilities, any floating dtype.
        rows: ``(K,)`` int64 indices of the rows to scan, or ``None`` for all rows (``K = R``).
        thresholds: ``(K,)`` float64 thresholds, one per scanned row.
        tile: elements per work tile (see :class:`Tiles`).

    Returns:
        ``(sums, counts)``, both ``(K,)`` float64: ``sum(p[p > t])`` and ``#{p > t}`` per row.

    The pass computes ``y = max(p - t, 0)``; ``sum(y) + t * #{y > 0}`` is the sum above ``t``
    (float ops only: a boolean mask would cost more than the arithmetic).
    """
    wdt = work_dtype(probs.dtype)
    k = probs.shape[0] if rows is None else rows.numel()
    t_work = round_down(thresholds, wdt)
    t_exact = t_work.to(torch.float64)
    sums = torch.zeros(k, dtype=torch.float64, device=probs.device)
    counts = torch.zeros(k, dtype=torch.float64, device=probs.device)
    for r0, r1, c0, c1 in _tiles(k, probs.shape[1], tile):
        t_tile = t_work[r0:r1, None]
        if rows is None:
            y = torch.sub(probs[r0:r1, c0:c1], t_tile)
        else:
            y = probs[:, c0:c1].index_select(0, rows[r0:r1]).to(wdt).sub_(t_tile)
        y.clamp_(min=0)
        excess = row_sums(y)
        cnt = row_sums(y.sign_())
        del y  # free the tile before the next one is allocated
        sums[r0:r1] += excess + t_exact[r0:r1] * cnt
        counts[r0:r1] += cnt
    return sums, counts


def row_pass(
    row: Tensor, threshold: float, tile: int, block_minima: bool
) -> tuple[float, float, Tensor | None]:
    """Sum and count of ``p > threshold`` over one long CPU row, in three or four ops per tile.

    ``threshold`` must be exactly representable in ``row.dtype`` (see :func:`round_down`), so the
    comparison is exact. With ``block_minima``, also returns the smallest probability above the
    threshold in each block of 1024 consecutive pixels (2.0 where there is none), which lets the
    caller find the few pixels just above the threshold without another pass.

    ``F.threshold(p, t, v)`` keeps ``p`` where ``p > t`` and writes ``v`` elsewhere: with ``v = 0``
    the sum is the sum above ``t`` and the sign counts it; with ``v = 2`` the minimum over a block
    is its smallest value above ``t``, ``sum(ceil(y)) = 2 n_all - count`` and
    ``sum(y) = sum_above + 2 (n_all - count)`` (float32 block sums keep the relative error ~1e-8).
    """
    n_all = row.numel()
    tile = max(_SUM_BLOCK, tile - tile % _SUM_BLOCK)
    fill = 2.0 if block_minima else 0.0
    values: list[Tensor] = []  # float32 block sums of y
    indicators: list[Tensor] = []  # float32 block sums of sign(y) or ceil(y)
    minima: list[Tensor] = []
    for c0 in range(0, n_all, tile):
        y = F.threshold(row[c0 : c0 + tile], threshold, fill)
        full = y.numel() - y.numel() % _SUM_BLOCK
        blocks, tail = y[:full].view(-1, _SUM_BLOCK), y[full:]
        if block_minima:
            minima.append(blocks.amin(dim=1))
            if tail.numel():
                minima.append(tail.amin(dim=0, keepdim=True))
        values.append(blocks.sum(dim=1, dtype=torch.float32))
        if tail.numel():
            values.append(tail.sum(dim=0, keepdim=True, dtype=torch.float32))
        y.ceil_() if block_minima else y.sign_()
        indicators.append(blocks.sum(dim=1, dtype=torch.float32))
        if tail.numel():
            indicators.append(tail.sum(dim=0, keepdim=True, dtype=torch.float32))
        del y, blocks, tail  # free the tile before the next one is allocated
    raw_sum = float(torch.cat(values).sum(dtype=torch.float64))
    raw_count = float(torch.cat(indicators).sum(dtype=torch.float64))
    if not block_minima:
        return raw_sum, raw_count, None
    count = 2.0 * n_all - raw_count
    return raw_sum - 2.0 * (n_all - count), count, torch.cat(minima)
