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

import contextlib
import itertools
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Tiles",
    "cpu_workers",
    "descending_runs",
    "map_tiles",
    "plan_tiles",
    "round_down",
    "row_pass",
    "row_stats",
    "row_sums",
    "sorted_descending",
    "threshold_stats",
    "tile_grid",
    "work_dtype",
    "workers_active",
]

T = TypeVar("T")

_MIN_TILE = 1 << 16
_MAX_TILE = 1 << 24
_CPU_TILE = 1 << 18
_POOL_MIN_ELEMENTS = 1 << 20  # smaller inputs keep their passes in the calling thread
_FIXED_WORK = 8 << 20  # bytes of working memory allowed to any call, however small
_SUM_BLOCK = 1024
_SUM_PIECE = 1 << 18  # elements read at once by row_sums (a multiple of _SUM_BLOCK)


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class Tiles:
    """How much memory one step of a call may hold.

    ``memory``: the largest float32 work buffer (in elements) that, with the ``reserved`` output,
    keeps the extra peak memory of a call under 90% of the input's size. ``cache``: the tile (in
    elements) of passes that make several ops per tile; on the CPU it is capped near the L2 cache
    size, where serial ops run fastest (:func:`map_tiles`). Both are at least 64 Ki elements.
    ``budget``: the bytes of working memory a solver may hold beyond the input and the output:
    90% of the input's size, and at least a fixed 8 MiB so that small inputs are not cut into
    needlessly small steps.
    """

    cache: int
    memory: int
    budget: int = 8 << 20


def plan_tiles(numel: int, itemsize: int, device: torch.device, reserved: int = 0) -> Tiles:
    """The :class:`Tiles` of an input of ``numel`` elements of ``itemsize`` bytes."""
    memory = max(int(numel * itemsize * 0.9) - reserved, 0) // 4
    memory = int(min(max(memory, _MIN_TILE), _MAX_TILE))
    cache = min(memory, _CPU_TILE) if device.type == "cpu" else memory
    return Tiles(cache=cache, memory=memory, budget=max(int(numel * itemsize * 0.9), _FIXED_WORK))


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


def sorted_descending(x: Tensor) -> Tensor:
    """The values of ``x`` sorted in decreasing order along the last dim, as float64.

    On the CPU this is NumPy's sort (vectorised: 15-25x faster than ``torch.sort`` on this
    project's CPU, 7 ms against 174 ms for a million float32 values) and needs no index tensor;
    float16 and bfloat16 are sorted as float32 (exact).
    """
    if x.device.type != "cpu":
        return x.to(torch.float64).sort(dim=-1, descending=True).values
    values = x.numpy() if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32).numpy()
    return torch.from_numpy(np.sort(values, axis=-1)[..., ::-1].astype(np.float64))


def row_sums(x: Tensor) -> Tensor:
    """Float64 sums over the last dim of a 2-D tensor, accumulated in float32 blocks of 1024.

    Float32 partial sums over short blocks followed by float64 totals keep the relative error near
    1e-9 for rows of millions of values, at the speed of a float32 reduction. The input is read
    in pieces of at most 256 Ki elements (spread over the CPU workers): a reduction to another
    dtype converts its whole input first, which would otherwise copy the input once more.
    """
    rows, cols = x.shape
    piece = _piece_size(x.device)
    if rows <= max(1, piece // max(cols, 1)) and cols <= piece:
        return _piece_sums(x)
    return _row_pieces(x, extrema=False)[2]


def row_stats(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per row of a 2-D tensor: ``(min, max, sum)``, the sums as in :func:`row_sums`, in one
    pass over pieces of at most 256 Ki elements on the CPU workers (the input check of a call)."""
    with cpu_workers(x.device, x.numel()):
        return _row_pieces(x, extrema=True)


def _piece_size(device: torch.device) -> int:
    """Elements read at once by :func:`row_sums`: cache-sized on the CPU, larger (fewer kernel
    launches) elsewhere; a multiple of the float32 block."""
    return _SUM_PIECE if device.type == "cpu" else 64 * _SUM_PIECE


def _row_pieces(x: Tensor, extrema: bool) -> tuple[Tensor | None, Tensor | None, Tensor]:
    rows, cols = x.shape
    piece = _piece_size(x.device)
    if not workers_active() and x.dtype in (torch.float32, torch.float64):
        piece = max(piece, x.numel())  # no conversion to copy: whole-input ops, fewer of them
    width = max(1, min(cols, piece))
    height = max(1, piece // width)
    pieces = [(r0, c0) for r0 in range(0, rows, height) for c0 in range(0, cols, width)]
    partial = torch.zeros(len(pieces), height, dtype=torch.float64, device=x.device)
    if extrema:
        lows = torch.empty(len(pieces), height, dtype=x.dtype, device=x.device)
        highs = torch.empty_like(lows)

    def work(i: int) -> None:
        r0, c0 = pieces[i]
        part = x[r0 : r0 + height, c0 : c0 + width]
        partial[i, : part.shape[0]] = _piece_sums(part)
        if extrema:
            torch.amin(part, dim=1, out=lows[i, : part.shape[0]])
            torch.amax(part, dim=1, out=highs[i, : part.shape[0]])

    map_tiles(work, len(pieces), x.device)
    total = torch.zeros(rows, dtype=torch.float64, device=x.device)
    low = high = None
    if extrema:
        low = torch.full((rows,), math.inf, dtype=x.dtype, device=x.device)
        high = torch.full((rows,), -math.inf, dtype=x.dtype, device=x.device)
    for i, (r0, _) in enumerate(pieces):  # in piece order: deterministic sums
        r1 = min(rows, r0 + height)
        total[r0:r1] += partial[i, : r1 - r0]
        if extrema:  # fmin/fmax would drop NaN; minimum/maximum keep it, so the check sees it
            torch.minimum(low[r0:r1], lows[i, : r1 - r0], out=low[r0:r1])
            torch.maximum(high[r0:r1], highs[i, : r1 - r0], out=high[r0:r1])
    return low, high, total


def _piece_sums(x: Tensor) -> Tensor:
    """:func:`row_sums` of one piece."""
    if x.dtype == torch.float64 or x.shape[-1] < 2 * _SUM_BLOCK:
        return x.sum(-1, dtype=torch.float64)
    rows, cols = x.shape
    blocks = cols // _SUM_BLOCK
    head = x[:, : blocks * _SUM_BLOCK].reshape(rows, blocks, _SUM_BLOCK).sum(-1, dtype=torch.float32)
    total = head.sum(-1, dtype=torch.float64)
    if cols > blocks * _SUM_BLOCK:
        total += x[:, blocks * _SUM_BLOCK :].sum(-1, dtype=torch.float64)
    return total


# ----------------------------------------------------------------------------------------------
# Work split over CPU threads without a barrier per tile.
# ----------------------------------------------------------------------------------------------


class _SerialWorkers:
    """Daemon threads whose torch ops each run on one thread, fed from one queue.

    A pass over many tiles made of small ops is slow on a busy machine when every op is its own
    OpenMP parallel region: each region waits at a barrier for any thread the OS has descheduled.
    Here each worker takes the next tile when it is free (no barrier per tile: a descheduled
    worker delays only its own tile) and runs its ops serially. ``torch.set_num_threads(1)`` sets
    the calling thread's OpenMP team size, and also the process-wide default, which the thread
    that starts workers restores at once (:func:`_workers`).
    """

    def __init__(self) -> None:
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.serial: list[bool] = []

    def grow(self, count: int) -> None:
        """Start workers until there are ``count``; returns once they are all ready."""
        new = count - len(self.serial)
        if new <= 0:
            return
        started = threading.Barrier(new + 1)
        for _ in range(new):
            threading.Thread(target=self._serve, args=(started,), daemon=True, name="rankseg-tiles").start()
        started.wait()

    def _serve(self, started: threading.Barrier) -> None:
        _IN_WORKER.active = True  # a pass started from a worker runs inline (no waiting on itself)
        torch.get_num_threads()  # initialise this thread's OpenMP settings before overriding them
        torch.set_num_threads(1)
        self.serial.append(torch.get_num_threads() == 1)
        started.wait()
        while True:
            self.tasks.get()()


class _ThreadState(threading.local):
    active = False  # this thread is one of the workers
    threads = 0  # inside cpu_workers(): the parallelism the caller had asked for


_IN_WORKER = _ThreadState()
_POOL: _SerialWorkers | None = None
_POOL_LOCK = threading.Lock()


def _forget_workers() -> None:
    """In a forked child: the workers were not copied (only the forking thread is), and the lock
    may have been held by another thread at the fork."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers)


def _workers(count: int) -> _SerialWorkers | None:
    """The process's worker threads, at least ``count`` of them; ``None`` if their ops are not
    serial (then the caller's own loop is the better choice)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = _SerialWorkers()
        if len(_POOL.serial) < count:
            caller = torch.get_num_threads()
            _POOL.grow(count)
            torch.set_num_threads(caller)  # undo the process-wide side effect of the workers' setting
        return _POOL if all(_POOL.serial) else None


def map_tiles(work: Callable[[int], T], count: int, device: torch.device, min_count: int = 4) -> list[T]:
    """``[work(0), ..., work(count - 1)]``, spread over the CPU workers inside :func:`cpu_workers`.

    The calling thread and ``N - 1`` workers (``N``: the caller's ``torch.get_num_threads()`` on
    entering :func:`cpu_workers`) share the tiles: each takes the next index when it is free and
    runs its torch ops serially, so a pass has no barrier per tile and a descheduled thread
    delays only its own tile. Results come back
    in index order whatever the schedule, so reductions over them are deterministic. Outside
    :func:`cpu_workers`, on other devices, with one thread or with fewer than ``min_count``
    tiles, the loop runs in the calling thread.

    Work functions write their results into tensors allocated before the pass rather than
    return new small tensors: small allocations that outlive their tile fragment the C heap
    between the tiles' larger temporaries (measured: a pass over a 64 MB row that kept one
    3-value tensor per tile held 125 MB of freed memory resident).
    """
    threads = min(_IN_WORKER.threads, count)  # 0 outside cpu_workers(): the caller's own loop
    pool = None
    if device.type == "cpu" and threads > 1 and count >= min_count and not _IN_WORKER.active:
        pool = _workers(threads - 1)
    if pool is None:
        return [work(i) for i in range(count)]
    results: list = [None] * count
    errors: list[BaseException] = []
    indices = itertools.count()  # next() is atomic: each index is taken once
    finished = threading.Semaphore(0)

    def run() -> None:
        try:
            for i in indices:
                if i >= count or errors:
                    break
                results[i] = work(i)
        except BaseException as error:  # re-raised in the calling thread
            errors.append(error)
        finally:
            finished.release()

    for _ in range(threads - 1):
        pool.tasks.put(run)
    run()  # the caller takes tiles too (its ops run on one thread inside cpu_workers())
    for _ in range(threads):
        finished.acquire()
    if errors:
        raise errors[0]
    return results


@contextlib.contextmanager
def cpu_workers(device: torch.device, numel: int) -> Iterator[int]:
    """For the duration of a call on the CPU: parallel work on the workers, none in the caller.

    Yields the number of tiles that may be in work at once: the caller's
    ``torch.get_num_threads()`` when the workers take them, else 1.
    Inside, :func:`map_tiles` spreads tiles over the workers and the calling thread's own torch
    ops run on one thread (``torch.set_num_threads(1)``, restored on exit), because an OpenMP
    parallel region in the caller leaves its helper threads spinning for ~20 ms afterwards,
    competing with the workers for the cores: on 1x21x256x256 RMA took 153 ms instead of 11 ms
    with both active. Inputs of fewer than 2^20 elements keep the plain path (passes in the
    calling thread, with its own threads): their passes are too short for the split to pay for
    the switch between the two. Re-entrant; does nothing on other devices, in a worker, or with
    one thread.
    """
    threads = _IN_WORKER.threads or torch.get_num_threads()
    plain = device.type != "cpu" or threads < 2 or numel < _POOL_MIN_ELEMENTS
    if _IN_WORKER.threads:  # nested in an active call
        yield threads
        return
    if plain or _IN_WORKER.active or _workers(threads - 1) is None:
        yield 1
        return
    _IN_WORKER.threads = threads
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)
        _IN_WORKER.threads = 0


def workers_active() -> bool:
    """Whether :func:`map_tiles` hands tiles to the workers here (inside an active
    :func:`cpu_workers`); otherwise passes are loops of the caller's own, parallel ops, which
    prefer fewer, larger tiles."""
    return bool(_IN_WORKER.threads) and not _IN_WORKER.active


def tile_grid(rows: int, cols: int, tile: int) -> list[tuple[int, int, int, int]]:
    """(row_start, row_stop, col_start, col_stop) tiles covering a rows x cols matrix."""
    if cols == 0 or rows == 0:
        return []
    if cols <= tile:
        step = max(1, tile // cols)
        return [(r0, min(rows, r0 + step), 0, cols) for r0 in range(0, rows, step)]
    return [(r, r + 1, c0, min(cols, c0 + tile)) for r in range(rows) for c0 in range(0, cols, tile)]


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
    (float ops only: a boolean mask would cost more than the arithmetic; and the float32 block
    sums of the excess ``y`` are more accurate than sums of ``p`` above ``t``, which matters
    where a pixel lies within ~1e-7 of the optimal threshold). Tiles are spread over the CPU
    workers (:func:`map_tiles`).
    """
    wdt = work_dtype(probs.dtype)
    k = probs.shape[0] if rows is None else rows.numel()
    t_work = round_down(thresholds, wdt)
    t_exact = t_work.to(torch.float64)
    sums = torch.zeros(k, dtype=torch.float64, device=probs.device)
    counts = torch.zeros(k, dtype=torch.float64, device=probs.device)
    tiles = tile_grid(k, probs.shape[1], tile)

    height = max((r1 - r0 for r0, r1, _, _ in tiles), default=0)
    partial = torch.zeros(2, len(tiles), height, dtype=torch.float64, device=probs.device)

    def work(i: int) -> None:
        r0, r1, c0, c1 = tiles[i]
        if rows is None:
            y = torch.sub(probs[r0:r1, c0:c1], t_work[r0:r1, None])
        else:
            y = probs[:, c0:c1].index_select(0, rows[r0:r1]).to(wdt).sub_(t_work[r0:r1, None])
        y.clamp_(min=0)
        partial[0, i, : r1 - r0] = row_sums(y)
        partial[1, i, : r1 - r0] = row_sums(y.sign_())

    map_tiles(work, len(tiles), probs.device)
    for i, (r0, r1, _, _) in enumerate(tiles):  # in tile order: deterministic sums
        sums[r0:r1] += partial[0, i, : r1 - r0]
        counts[r0:r1] += partial[1, i, : r1 - r0]
    return sums + t_exact * counts, counts


def row_pass(
    row: Tensor, threshold: float, tile: int, block_minima: bool, excess: bool = True
) -> tuple[float, float, Tensor | None]:
    """Sum and count of ``p > threshold`` over one long CPU row, in four to seven ops per tile.

    ``threshold`` must be exactly representable in ``row.dtype`` (see :func:`round_down`) and
    non-negative, so the comparison is exact. With ``block_minima``, also returns, for each block
    of 1024 consecutive pixels, the smallest excess ``p - threshold`` of its pixels above the
    threshold (2.0 where there is none; rounded to the work dtype), which lets the caller find the
    few pixels just above the threshold without another pass.

    Each tile computes the excess ``y = max(p - t, 0)`` in the work dtype (exactly signed: the
    difference of two distinct floats is never rounded to 0); its block sums plus ``t`` per pixel
    give the sum above ``t`` and its sign counts them. For the minima, ``F.threshold(y, 0, 2)``
    (block minimum: the smallest excess), then ``ceil`` (1 above ``t``, as ``0 < y <= 1``; 2
    elsewhere) counts them. Block sums of the excess are far more accurate than sums of ``p``
    (or of a fill value): they decide pixels within ~1e-7 of the optimal threshold. Tiles are
    spread over the CPU workers (:func:`map_tiles`). With ``excess=False`` (no minima), a
    cheaper pass sums ``p`` itself (``F.threshold(p, t, 0)``, four ops; ~1e-9 relative error):
    enough for a starting point.
    """
    n_all = row.numel()
    tile = max(_SUM_BLOCK, tile - tile % _SUM_BLOCK)
    wdt = work_dtype(row.dtype)
    # A Python float keeps float32/float64 tiles in their dtype (the faster scalar kernel); a 1-d
    # tensor promotes float16/bfloat16 tiles to float32.
    shift = threshold if row.dtype == wdt else torch.full((1,), threshold, dtype=wdt)
    starts = range(0, n_all, tile)
    blocks_total = -(-n_all // _SUM_BLOCK)
    sums = torch.empty(2, blocks_total, dtype=wdt)  # per block: excess above t, count above t
    minima = torch.empty(blocks_total, dtype=wdt) if block_minima else None

    plain = not excess and minima is None

    def work(i: int) -> None:
        if plain:
            y = F.threshold(row[starts[i] : starts[i] + tile], threshold, 0.0)
        else:
            y = torch.sub(row[starts[i] : starts[i] + tile], shift).clamp_(min=0)  # the excess
        full = y.numel() - y.numel() % _SUM_BLOCK
        b0 = starts[i] // _SUM_BLOCK
        parts = [(y[:full].view(-1, _SUM_BLOCK), b0, b0 + full // _SUM_BLOCK)]
        if full < y.numel():
            parts.append((y[full:][None], b0 + full // _SUM_BLOCK, b0 + full // _SUM_BLOCK + 1))
        for part, lo, hi in parts:
            torch.sum(part, dim=1, dtype=wdt, out=sums[0, lo:hi])
        if minima is not None:
            F.threshold(y, 0.0, 2.0, inplace=True)  # 0 < y <= 1 above t, 2 elsewhere
            for part, lo, hi in parts:
                torch.amin(part, dim=1, out=minima[lo:hi])
            y.ceil_()  # 1 above t, 2 elsewhere
        else:
            y.sign_()
        for part, lo, hi in parts:
            torch.sum(part, dim=1, dtype=wdt, out=sums[1, lo:hi])

    map_tiles(work, len(starts), row.device)
    total, count = sums.sum(dim=1, dtype=torch.float64).tolist()
    if plain:
        return total, count, None
    if minima is not None:
        count = 2.0 * n_all - count  # the sum of ceil(y) is count + 2 (n_all - count)
    return total + threshold * count, count, minima


# ----------------------------------------------------------------------------------------------
# The distinct values of a long row in decreasing order, in slices of bounded size.
# ----------------------------------------------------------------------------------------------

_KEY_TYPES = {
    torch.float16: (torch.int16, 0x7FFF),
    torch.bfloat16: (torch.int16, 0x7FFF),
    torch.float32: (torch.int32, 0x7FFF_FFFF),
    torch.float64: (torch.int64, 0x7FFF_FFFF_FFFF_FFFF),
}
_HISTOGRAM_BITS = 15  # at most 2^15 bins per histogram pass (float16, bfloat16: exact)
_HISTOGRAM_ITEMS = 8  # partial histograms held by one pass


def _keys(x: Tensor) -> Tensor:
    """Integer keys that order non-negative floats like their values (``-0.0`` keys as ``0.0``).

    The bit pattern of an IEEE float with the sign bit clear is an increasing function of its
    value, so a histogram over high bits of the key is a histogram over value ranges.
    """
    int_type, magnitude = _KEY_TYPES[x.dtype]
    keys = x.view(int_type)
    if int_type == torch.int16:
        keys = keys.to(torch.int32)
    return keys & magnitude


def _key_at_most(value: float, dtype: torch.dtype) -> int:
    """The key of the largest ``dtype`` value not above ``value``; -1 if that value is negative."""
    rounded = round_down(torch.tensor([value], dtype=torch.float64), dtype).to(dtype)
    return -1 if float(rounded[0]) < 0 else int(_keys(rounded)[0])


def _values_of(keys: Tensor, dtype: torch.dtype) -> Tensor:
    return keys.to(_KEY_TYPES[dtype][0]).view(dtype).to(torch.float64)


def _key_histogram(
    row: Tensor, first: int, last: int, shift: int, tile: int, with_mass: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Counts (int64) of the pixels whose key lies in ``[first, last]``, in bins
    ``(key - first) >> shift``; with ``with_mass``, also the float64 sum of their values.

    Each work item adds up the histograms of up to 1/8 of the row's tiles, so at most 8 partial
    histograms (a few MB) are held, whatever the row's length.
    """
    bins = ((last - first) >> shift) + 1
    starts = range(0, row.numel(), tile)
    group = -(-len(starts) // _HISTOGRAM_ITEMS)
    items = -(-len(starts) // group)
    counts = torch.zeros(items, bins + 1, dtype=torch.int64, device=row.device)
    mass = torch.zeros(items, bins + 1, dtype=torch.float64, device=row.device) if with_mass else None

    def work(item: int) -> None:
        for start in starts[item * group : (item + 1) * group]:
            part = row[start : start + tile]
            keys = _keys(part)
            outside = (keys < first) | (keys > last)
            index = keys.sub_(first).bitwise_right_shift_(shift).masked_fill_(outside, bins)
            counts[item] += torch.bincount(index, minlength=bins + 1)
            if mass is not None:
                mass[item] += torch.bincount(index, weights=part.to(torch.float64), minlength=bins + 1)

    map_tiles(work, items, row.device)
    return counts.sum(0)[:bins], mass.sum(0)[:bins] if mass is not None else None


def _gather_runs(row: Tensor, first: int, last: int, total: int, tile: int) -> tuple[Tensor, Tensor]:
    """Distinct values with keys in ``[first, last]`` (float64, decreasing) and their counts;
    ``total`` is the number of such pixels (from a histogram)."""
    starts = range(0, row.numel(), tile)
    gathered = torch.empty(total, dtype=row.dtype, device=row.device)
    filled = [0]
    lock = threading.Lock()

    def work(i: int) -> None:
        part = row[starts[i] : starts[i] + tile]
        keys = _keys(part)
        inside = (keys >= first) & (keys <= last)
        size = int(inside.sum())
        with lock:  # a slot for this tile (order does not matter: the values are sorted next)
            offset = filled[0]
            filled[0] += size
        torch.masked_select(part, inside, out=gathered[offset : offset + size])

    map_tiles(work, len(starts), row.device)
    return torch.unique_consecutive(sorted_descending(gathered), return_counts=True)


def descending_runs(
    row: Tensor,
    lo: float,
    hi: float,
    max_pixels: int,
    tile: int,
    until: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """The distinct values ``v`` of one row with ``lo < v <= hi``, from the largest down.

    Yields ``(values, counts)``: float64 values in decreasing order and their int64 multiplicities,
    slice after slice, each of at most ``max_pixels`` values. Slices are gathered from at most
    ``max_pixels`` pixels (about 50 bytes each) or read off a histogram, so the extra memory is
    bounded whatever the row's length.

    A histogram of the high bits of the values' keys (:func:`_keys`) splits the range into
    groups of at most ``max_pixels`` pixels; each group is gathered in one pass and sorted; a bin
    too full for one group is split by a finer histogram of its own range. Keys of 16 bits
    (float16, bfloat16) are counted exactly in one pass, so those rows are never sorted.

    ``until(count, mass, next_value)``, if given, lets the caller stop early without gathering
    what it will not read: it is evaluated on the first histogram at each boundary between bins
    (``count``, ``mass``: number and sum of the pixels above the boundary; ``next_value``: an upper
    bound of the largest value below it) and runs stop at the first boundary where it is true.
    """
    first = _key_at_most(lo, row.dtype) + 1
    last = _key_at_most(hi, row.dtype)
    yield from _runs_between(row, first, last, max(1, max_pixels), tile, until)


def _runs_between(
    row: Tensor,
    first: int,
    last: int,
    capacity: int,
    tile: int,
    until: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    if first > last:
        return
    shift = max(0, (last - first).bit_length() - _HISTOGRAM_BITS)
    counts, mass = _key_histogram(row, first, last, shift, tile, with_mass=until is not None)
    occupied = counts.nonzero()[:, 0].flip(0)  # from the largest values down
    if until is not None and occupied.numel() > 1:
        # Bin i's boundary below it: pixels above, and the top key of the next occupied bin.
        next_top = (first + ((occupied[1:] + 1) << shift) - 1).clamp(max=last)
        stop = until(
            counts[occupied].cumsum(0)[:-1], mass[occupied].cumsum(0)[:-1], _values_of(next_top, row.dtype)
        )
        if bool(stop.any()):
            occupied = occupied[: int(stop.to(torch.int64).argmax()) + 1]
    if shift == 0:  # one bin per key: the runs themselves
        values, counts = _values_of(occupied + first, row.dtype), counts[occupied]
        for start in range(0, occupied.numel(), capacity):
            yield values[start : start + capacity], counts[start : start + capacity]
        return
    sizes = counts[occupied].tolist()
    bins = occupied.tolist()
    i = 0
    while i < len(bins):
        j, total = i, sizes[i]
        while j + 1 < len(bins) and total + sizes[j + 1] <= capacity:
            j += 1
            total += sizes[j]
        top = min(last, first + ((bins[i] + 1) << shift) - 1)
        bottom = first + (bins[j] << shift)
        if total <= capacity:
            yield _gather_runs(row, bottom, top, total, tile)
        else:  # one bin holds more than a slice: split it with a finer histogram
            yield from _runs_between(row, bottom, top, capacity, tile)
        i = j + 1
