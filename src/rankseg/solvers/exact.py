r"""The exact solver: the volume that maximises the exact expected Dice or IoU.

Design note sections 2-3. The optimal mask is a top-``tau`` set; the expected metric ``pi(tau)`` of
each candidate is computed exactly by the generating-function integrals of :mod:`rankseg._expected`
(errors ~1e-13 against enumeration of all label vectors and against a Poisson-binomial dynamic
programme, saturated probabilities and ``smooth`` from 0 to 10 included). Cuts inside a run of
equal probabilities are skipped: a run is taken whole or not at all (checked against the dynamic
programme over every cut on thousands of tie-heavy rows).

``pi(tau)`` is *not* unimodal in general (one p = 1 pixel followed by many small ones gives two
local maxima), so the search must not stop at a local maximum. Short rows (at most 2048 pixels)
are sorted and every cut is evaluated, a few rows at a time. Long rows use branch and bound
around the RMA threshold of a strided sample of the row, in bounded memory:

* the row's pixels are split into saturated ones (``p = 1``, counted), direct ones (``0.2 < p <
  1``, only in rows with little mass, where there are at most ``5 mu`` of them; evaluated pixel
  by pixel and every cut among them is scored) and series ones (the rest, which enter through
  power sums, :mod:`rankseg._expected`);
* the series pixels are searched in *slices* of pixel values, each holding at most
  :func:`_slice_cap` pixels: the first slice lies around the sample's RMA threshold (the sample
  also gives its width), and every cut inside a slice gets an upper bound on ``pi`` (derived, see
  :func:`_upper_bound`); cuts are evaluated exactly in decreasing order of their bound until no
  unevaluated cut's bound exceeds the best exact value found;
* the cuts above and below the slices searched so far are bounded too (using that pixels above
  hold more than the upper edge and pixels below at most the lower edge); while a side could
  still win, a further slice is searched on that side (twice as wide in value, or narrower if it
  would hold too many pixels). Pixels of probability 0 never improve a mask.

The result is therefore the global optimum over all top-``tau`` sets, up to the integration error,
and the extra memory is a few MiB whatever the row's length.

Upper bound (derived). For ``c > 0`` and a count ``X`` with mean ``m`` and variance ``v``,
``1/(c+x) = 1/(c+m) - (x-m)/(c+m)^2 + (x-m)^2 / ((c+m)^2 (c+x))`` gives
``E[1/(c+X)] <= 1/(c+m) + v / ((c+m)^2 c)``. With ``p_j <= 1`` and ``var(Gamma_-j) <= sigma^2``:

    Dice: pi(tau) <= 2 s [1/(tau+gamma+mu) + sigma^2 / ((tau+gamma+mu)^2 (tau+1+gamma))]
                     + gamma [1/(tau+gamma+mu) + sigma^2 / ((tau+gamma+mu)^2 (tau+gamma))]
    IoU:  pi(tau) <= (s+gamma) [1/D + sigma^2 / (D^2 (tau+gamma))],  D = tau + gamma + mu - s

Both increase with ``s`` and decrease with ``tau``. The bound exceeds the RMA objective (a lower
bound) by O(1/(tau + mu)), so only cuts whose RMA value is within that of the best are evaluated.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from .._expected import (
    WORK,
    dice_value,
    direct_terms,
    iou_value,
    log_series,
    make_grid,
    powers,
    ratio_series,
    split_threshold,
)
from .._passes import Tiles

__all__ = ["exact_thresholds", "objective_curve"]

_SHORT = 2048  # rows up to this length: every cut is evaluated pixel by pixel
_SAMPLE = 4096
_CUT_CHUNK = 512
_BELOW_ONE = 1.0 - 2.0**-53  # the largest float64 below 1: {p > it} holds every p = 1 pixel


def _checked_argmax(values: Tensor, dim: int = -1) -> Tensor:
    """``values.argmax(dim)``, refusing NaN: an objective curve must never silently pick one."""
    if bool(torch.isnan(values).any()):
        raise FloatingPointError(
            "the exact expected metric evaluated to NaN; this is a bug in rankseg, please report it "
            "with the input that caused it"
        )
    return values.argmax(dim=dim)


# --------------------------------------------------------------------------------------------
# Short rows: sort, then evaluate every cut.
# --------------------------------------------------------------------------------------------


def objective_curve(probs: Tensor, metric: str, gamma: float) -> tuple[Tensor, Tensor]:
    """Exact ``pi(tau)`` for every ``tau = 0..N`` of each row (direct evaluation).

    Args:
        probs: ``(R, N)`` probabilities.
        metric: ``"dice"`` or ``"iou"``; ``gamma``: the smoothing constant.

    Returns:
        ``(values, ordered)``: ``(R, N + 1)`` float64 expected metric of the top-``tau`` sets, and the
        ``(R, N)`` float64 probabilities sorted in decreasing order.

    Costs ``O(N Q)`` time per row (``Q`` ~ 200 nodes) and a working set of a few MiB.
    """
    rows, n = probs.shape
    ordered = probs.to(torch.float64).sort(dim=1, descending=True).values
    grid = make_grid(n, gamma, probs.device)
    values = torch.empty(rows, n + 1, dtype=torch.float64, device=probs.device)
    chunk = _curve_chunk(n, len(grid))
    for r0 in range(0, rows, chunk):
        values[r0 : r0 + chunk] = _curve(ordered[r0 : r0 + chunk], metric, gamma, grid)
    return values, ordered


def _curve_chunk(n: int, nodes: int) -> int:
    """Rows per step so that each ``(rows, n + 1, nodes)`` work array holds about WORK elements."""
    return max(1, WORK // max((n + 1) * nodes, 1))


def _curve(ordered: Tensor, metric: str, gamma: float, grid) -> Tensor:
    """``pi`` of every top-``tau`` set of rows already sorted in decreasing order, ``(r, n + 1)``.

    Saturated pixels (``p = 1``) come first; the top ``tau`` hold ``min(tau, k)`` of the ``k``.
    """
    r, n = ordered.shape
    saturated = (ordered == 1).sum(dim=1, dtype=torch.float64)[:, None]  # (r, 1)
    taus = torch.arange(n + 1, dtype=torch.float64, device=ordered.device).expand(r, -1)
    sat_in = torch.minimum(taus, saturated)
    log_f, ratio = direct_terms(ordered, grid)  # (r, n, Q); saturated pixels give 0
    cumulative = ordered.new_zeros(r, n + 1, len(grid))  # over the top tau pixels
    if metric == "dice":
        torch.cumsum(ratio, dim=1, out=cumulative[:, 1:])
        del ratio
        log_g = log_f.sum(dim=1, keepdim=True)
        del log_f
        return dice_value(grid, gamma, taus, sat_in, saturated.expand_as(taus), log_g, cumulative)
    del ratio
    torch.cumsum(log_f, dim=1, out=cumulative[:, 1:])
    del log_f
    log_out = cumulative.neg_().add_(cumulative[:, -1:].neg())  # the pixels after the top tau
    mass = torch.cat([ordered.new_zeros(r, 1), ordered.cumsum(dim=1)], dim=1)
    return iou_value(grid, gamma, taus, mass, saturated - sat_in, log_out)


def _cut_thresholds(values: Tensor, ordered: Tensor) -> tuple[Tensor, Tensor]:
    """Best cut per row among cuts between distinct values (smallest on exact ties): threshold, volume."""
    rows, n = ordered.shape
    valid = torch.ones(rows, n + 1, dtype=torch.bool, device=ordered.device)
    if n > 1:
        valid[:, 1:n] = ordered[:, :-1] > ordered[:, 1:]
    scores = values.masked_fill(~valid, -float("inf"))
    tau = _checked_argmax(scores, dim=1)
    # mask {p > theta} = top tau: theta is the next value down (or -1 below everything)
    below = torch.cat(
        [ordered, torch.full((rows, 1), -1.0, dtype=ordered.dtype, device=ordered.device)], dim=1
    )
    theta = below.gather(1, tau[:, None])[:, 0]
    return theta, tau.to(torch.float64)


def _short_rows(probs: Tensor, rows: Tensor | None, metric: str, gamma: float) -> tuple[Tensor, Tensor]:
    """Thresholds and volumes of short rows, a few rows at a time (bounded memory)."""
    k = probs.shape[0] if rows is None else rows.numel()
    n = probs.shape[1]
    grid = make_grid(n, gamma, probs.device)
    thresholds = torch.empty(k, dtype=torch.float64, device=probs.device)
    volumes = torch.empty_like(thresholds)
    chunk = _curve_chunk(n, len(grid))
    for r0 in range(0, k, chunk):
        picked = probs[r0 : r0 + chunk] if rows is None else probs.index_select(0, rows[r0 : r0 + chunk])
        ordered = picked.to(torch.float64).sort(dim=1, descending=True).values
        values = _curve(ordered, metric, gamma, grid)
        thresholds[r0 : r0 + chunk], volumes[r0 : r0 + chunk] = _cut_thresholds(values, ordered)
    return thresholds, volumes


# --------------------------------------------------------------------------------------------
# Long rows: slices around the RMA volume, branch and bound.
# --------------------------------------------------------------------------------------------


def _upper_bound(metric: str, gamma: float, tau: Tensor, s: Tensor, mu: float, var: float) -> Tensor:
    """Upper bound on ``pi`` of any mask of ``tau`` pixels and mass at most ``s`` (module docstring)."""
    if metric == "dice":
        d = tau + gamma + mu
        first = 2 * s * (1 / d + var / (d * d * (tau + 1 + gamma)))
        if gamma == 0:
            return first
        return first + gamma * (1 / d + var / (d * d * (tau + gamma).clamp_min(1e-300)))
    d = tau + gamma + mu - s
    bound = (s + gamma) * (1 / d + var / (d * d * (tau + gamma).clamp_min(1e-300)))
    return torch.where(tau + gamma > 0, bound, torch.zeros_like(bound))


def _lf_value(metric: str, gamma: float, tau: float, s: float, mu: float) -> float:
    """The linear-fractional part ``g`` of the upper bound: ``2 s / (tau + gamma + mu)`` (Dice) or
    ``(s + gamma) / (tau + gamma + mu - s)`` (IoU)."""
    if metric == "dice":
        return 2 * s / (tau + gamma + mu) if tau + gamma + mu > 0 else 0.0
    d = tau + gamma + mu - s
    return (s + gamma) / d if d > 0 else 0.0


def _lf_threshold(metric: str, value: float) -> float:
    """Adding a pixel raises the linear-fractional ``g`` exactly when its probability exceeds this."""
    return value / 2 if metric == "dice" else value / (1 + value)


def _side_bound(
    metric: str,
    gamma: float,
    start: float,
    stop: float,
    g_side: float,
    anchor: tuple[float, float, float],
    mu: float,
    var: float,
) -> float:
    """Upper bound on ``pi`` over the cuts of ``start <= tau <= stop`` whose linear-fractional part
    ``g`` is at most ``g_side`` and whose mass is at most ``s_anchor + (tau - tau_anchor) slope``.

    ``anchor = (tau_anchor, s_anchor, slope)``: a searched cut and the edge value of the searched
    range beside it. Cuts above the range lack pixels that exceed its upper edge ``high``, cuts below
    it add pixels of at most its lower edge ``low``; either way ``s(tau) <= s_anchor + (tau -
    tau_anchor) edge`` (also ``s <= tau``, ``s <= mu``).

    The bound of :func:`_upper_bound` is ``g(tau) (1 + e(tau)) + gamma-term`` with ``g`` increasing in
    the mass and decreasing in ``tau``; the factors ``e`` and the gamma-term fall with ``tau``. On
    pieces ``[a, b]`` that grow by 1% of ``tau + mu``, everything is taken at its worst end.
    """
    if stop < start:
        return -math.inf
    points = [start]
    while points[-1] <= stop:
        points.append(points[-1] + max(1.0, math.floor(0.01 * (points[-1] + mu + 1))))
    pts = torch.tensor(points, dtype=torch.float64)
    a, b = pts[:-1], torch.clamp(pts[1:] - 1, max=stop)  # [a, b] integer intervals covering start..stop
    tau_anchor, s_anchor, slope = anchor
    s_max = torch.clamp(s_anchor + (b - tau_anchor) * slope, min=0.0)
    s_max = torch.minimum(torch.clamp(s_max, max=mu), b)
    if metric == "dice":
        g = torch.clamp(2 * s_max / (a + gamma + mu), max=g_side)
        value = g * (1 + var / ((a + gamma + mu) * (a + 1 + gamma)))
        if gamma > 0:
            value = value + gamma / (a + gamma + mu) * (1 + var / ((a + gamma + mu) * (a + gamma)))
    else:
        g = torch.clamp((s_max + gamma) / (a + gamma + mu - s_max), max=g_side)
        value = g * (1 + var / ((gamma + torch.clamp(a, min=mu)) * (a + gamma)))
    return float(value.max())


def _sample(row: Tensor) -> Tensor:
    """A strided sample of a long row, float64, sorted in decreasing order: 4096 pixels, or one in
    256 for rows up to 16 Mi pixels (a finer start on long rows), at most 64 Ki pixels."""
    n = row.numel()
    size = min(max(_SAMPLE, n // 256), 1 << 16)
    step = max(1, n // size) | 1  # odd: no aliasing with power-of-two image widths
    return row[::step].to(torch.float64).sort(descending=True).values


def _start_threshold(sample: Tensor, n: int, metric: str, gamma: float, mu: float) -> float:
    """The RMA threshold (design note section 4) of the sample, its sums scaled to the whole row:
    where the first slice is centred (the exact optimum is usually within a few pixels of RMA's)."""
    ns = sample.numel()
    scale = n / ns
    zero = sample.new_zeros(1)
    s = torch.cat([zero, sample.cumsum(dim=0)]) * scale
    tau = torch.arange(ns + 1, dtype=torch.float64, device=sample.device) * scale
    if metric == "dice":
        den = tau + mu + gamma
        value = 2 * s / (den + 1) + gamma / den.clamp_min(1e-300)
    else:
        den = tau + mu - s + gamma
        value = (s + gamma) / den.clamp_min(1e-300)
    k = int(torch.where(den > 0, value, torch.zeros_like(value)).argmax())
    return float(sample[k]) if k < ns else 0.0


def _band_half_width(sample: Tensor, n: int, theta: float, max_ranks: float) -> float:
    """Half-width in probability of the first slice around ``theta``, from the local density of
    pixels ``rho`` (pixels per unit probability) estimated from the sorted (decreasing) sample.

    The slice should hold the ranks within ``W = 4 sqrt(2 rho)`` of the RMA volume: the upper bound
    exceeds the exact objective by about ``2 / (tau + mu)``, and moving ``k`` ranks away from the
    optimum lowers the objective by about ``k^2 / (rho (tau + mu))``; plus four sample steps, the
    resolution of the sample's RMA threshold; at most ``max_ranks``.
    """
    ns = sample.numel()
    scale = n / ns
    i = int((sample > theta).sum())
    lo, hi = max(0, i - 32), min(ns - 1, i + 32)
    spread = float(sample[lo] - sample[hi]) if hi > lo else 0.0
    rho = (hi - lo) * scale / spread if spread > 0 else float(n)
    width = max(512.0, 4.0 * math.sqrt(2.0 * rho + 1.0)) + 4.0 * scale
    return min(width, max_ranks) / rho


def _slice_cap(order: int) -> int:
    """Most series pixels one slice holds: its cut arrays take about ``order + 8`` float64 each."""
    return max(4096, (1 << 20) // (order + 8))


@functools.lru_cache(maxsize=16)
def _grid_and_powers(n: int, gamma: float, order: int, device: torch.device):
    """The quadrature grid of rows of ``n`` pixels and its powers ``x^k``, shared by the rows of a call."""
    grid = make_grid(n, gamma, device)
    return grid, powers(grid.x, order)


class _Slice:
    """The series pixels ``lo < p <= hi`` of a row: distinct values (decreasing) and their counts,
    with the count and power sums of the series pixels above ``hi``."""

    def __init__(
        self, lo: float, hi: float, values: Tensor, counts: Tensor, n_above: float, sums_above: Tensor
    ):
        self.lo, self.hi = lo, hi
        self.values, self.counts = values, counts
        self.n_above, self.sums_above = n_above, sums_above

    def threshold(self, cut: int) -> float:
        """The ``theta`` with ``{p > theta}`` = the mask of ``cut`` (cut 0: nothing of the slice)."""
        if cut == 0:
            return self.hi
        return float(self.values[cut]) if cut < self.values.numel() else self.lo


class _LongRow:
    """One long row and everything the exact value of its cuts needs.

    Pixels: ``saturated`` (``p = 1``), ``direct`` (``p_bar < p < 1``; only when the row's scale is
    too small for the series to converge at every ``p``, see :func:`rankseg._expected.split_threshold`)
    and series (``p <= p_bar``, ``p < 1``). Every mask searched holds all saturated pixels (or is
    empty); every series cut holds all direct pixels too.
    """

    def __init__(self, row: Tensor, metric: str, gamma: float, mu: float) -> None:
        self.row, self.metric, self.gamma, self.mu = row, metric, gamma, mu
        self.n = row.numel()
        self.p_bar, order = split_threshold(gamma + mu, mu)
        self.order = order + 1
        self.split = self.p_bar < 1.0
        self.top = self.p_bar if self.split else _BELOW_ONE  # highest threshold of a series cut
        self.grid, self.x_pow = _grid_and_powers(self.n, gamma, self.order, row.device)
        self.tile = max(4096, (1 << 19) // self.order)
        self.cap = _slice_cap(self.order)

    # ---------------------------------------------------------------- streaming pass

    def scan(self, lo: float, hi: float, mode: str) -> _Slice | tuple[float, float, float]:
        """One pass over the row: the slice ``(lo, hi]`` of series pixels, or, if it holds more than
        :attr:`cap` pixels of several values, ``(count, smallest, largest)`` of its values.

        ``mode``: ``"first"`` also takes the row's totals (saturated count, direct pixels, power sums)
        and the count and power sums of the series pixels above ``hi``; ``"above"`` takes the latter
        only; ``"slice"`` takes nothing else (the caller knows them: the slice's ``n_above`` and
        ``sums_above`` are then left at 0).
        """
        order, device = self.order, self.row.device
        first = mode == "first"
        sums = torch.zeros(2 if first else 1, order, dtype=torch.float64, device=device)  # above, all
        n_above = count = 0
        pieces: list[Tensor] = []
        smallest, largest = math.inf, -math.inf
        saturated, direct = 0, []
        # work buffers reused by every tile: a float64 copy of the tile and the power-sum terms
        buffer = torch.empty(self.tile, dtype=torch.float64, device=device)
        if mode != "slice":
            base = torch.empty(sums.shape[0], self.tile, dtype=torch.float64, device=device)
            term = torch.empty_like(base)
        for c0 in range(0, self.n, self.tile):
            y = buffer[: min(self.tile, self.n - c0)]
            y.copy_(self.row[c0 : c0 + y.numel()])
            # Without a split, pixels at 1 stay in: they are above every slice and add exactly 1
            # to each power sum, which is taken off below. With a split, direct pixels go out.
            series = y.masked_fill(y > self.p_bar, 0.0) if self.split else y
            above = series > hi
            in_slice = (series > lo) ^ above  # lo <= hi: (lo, hi]
            cnt = int(in_slice.sum())
            if cnt:
                inside = series[in_slice]
                if count + cnt <= self.cap:
                    pieces.append(inside)
                else:  # too many: keep only the range of the values (pieces kept so far included)
                    for piece in [*pieces, inside]:
                        smallest = min(smallest, float(piece.min()))
                        largest = max(largest, float(piece.max()))
                    pieces = []
                count += cnt
            if mode != "slice":
                n_above += int(above.sum())
                b, t = base[:, : y.numel()], term[:, : y.numel()]
                torch.mul(series, above, out=b[0])
                if first:
                    saturated += int((y == 1).sum())
                    if self.split:
                        direct.append(y[(y > self.p_bar) & (y < 1)])
                    b[1].copy_(series)
                t.copy_(b)
                for k in range(order):
                    sums[:, k] += t.sum(dim=1)
                    if k + 1 < order:
                        t.mul_(b)
            del series, above, in_slice
        if not self.split and mode != "slice":  # take the pixels at 1 off (module docstring)
            known = saturated if first else self.saturated
            sums -= known
            n_above -= known
        if first:
            self._totals(saturated, direct, sums[1])
        if count > self.cap:
            if smallest < largest:
                return float(count), smallest, largest
            values = torch.tensor([smallest], dtype=torch.float64, device=device)
            counts = torch.tensor([float(count)], dtype=torch.float64, device=device)
        else:
            band = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.float64, device=device)
            values, counts = torch.unique_consecutive(band.sort(descending=True).values, return_counts=True)
            counts = counts.to(torch.float64)
        return _Slice(lo, hi, values, counts, float(n_above), sums[0])

    def _totals(self, saturated: int, direct: list[Tensor], sums_all: Tensor) -> None:
        """Row totals from the first pass, and the node-wise sums of the direct pixels."""
        grid = self.grid
        self.saturated = float(saturated)
        self.sums_all = sums_all
        band = torch.cat(direct) if direct else torch.zeros(0, dtype=torch.float64, device=self.row.device)
        values, counts = torch.unique_consecutive(band.sort(descending=True).values, return_counts=True)
        counts = counts.to(torch.float64)
        self.direct_values = values
        log_d, ratio_d = direct_terms(values, grid)
        zero = log_d.new_zeros(1, len(grid))
        self.cum_log_d = torch.cat([zero, (log_d * counts[:, None]).cumsum(dim=0)])
        self.cum_ratio_d = torch.cat([zero, (ratio_d * counts[:, None]).cumsum(dim=0)])
        self.cum_count_d = torch.cat([counts.new_zeros(1), counts.cumsum(dim=0)])
        self.cum_mass_d = torch.cat([counts.new_zeros(1), (values * counts).cumsum(dim=0)])
        self.log_all = log_series(self.x_pow, sums_all) + self.cum_log_d[-1]  # sum log(1 - p x), p < 1
        direct_var = float(((values - values * values) * counts).sum())
        self.var = max(float(sums_all[0] - sums_all[1]) + direct_var, 0.0)  # sum p (1 - p)
        self.base_tau = self.saturated + float(self.cum_count_d[-1])  # in every series cut
        self.base_mass = self.saturated + float(self.cum_mass_d[-1])

    # ---------------------------------------------------------------- exact values

    def _dice(self, tau: Tensor, ratio_in: Tensor) -> Tensor:
        sat = torch.full_like(tau, self.saturated)
        return dice_value(self.grid, self.gamma, tau, sat, sat, self.log_all, ratio_in)

    def empty_value(self) -> float:
        """``pi`` of the empty mask, ``gamma E[1 / (gamma + Gamma)]`` (Dice and IoU alike)."""
        tau = torch.zeros(1, dtype=torch.float64, device=self.row.device)
        sat = torch.full_like(tau, self.saturated)
        value = iou_value(self.grid, self.gamma, tau, tau, sat, self.log_all[None])
        return _finite(float(value[0]))

    def direct_cuts(self) -> tuple[Tensor, Tensor]:
        """Exact values and sizes of the cuts among the saturated and direct pixels (all of them)."""
        tau = self.saturated + self.cum_count_d
        if self.metric == "dice":
            return self._dice(tau, self.cum_ratio_d), tau
        mass = self.saturated + self.cum_mass_d
        log_out = self.log_all - self.cum_log_d
        return iou_value(self.grid, self.gamma, tau, mass, torch.zeros_like(tau), log_out), tau

    def direct_threshold(self, cut: int) -> float:
        """The ``theta`` of a direct cut; the last one (every direct pixel) is :attr:`top`, which
        every series pixel is at most and every saturated and direct pixel exceeds."""
        values = self.direct_values
        return float(values[cut]) if cut < values.numel() else self.top

    def slice_cuts(self, part: _Slice) -> tuple[Tensor, Tensor, Tensor]:
        """Sizes, masses and upper bounds of every cut of a slice (cut ``j``: the ``j`` largest values)."""
        counts = part.counts
        zero = counts.new_zeros(1)
        tau = self.base_tau + part.n_above + torch.cat([zero, counts.cumsum(dim=0)])
        mass = (
            self.base_mass
            + float(part.sums_above[0])
            + torch.cat([zero, (part.values * counts).cumsum(dim=0)])
        )
        return tau, mass, _upper_bound(self.metric, self.gamma, tau, mass, self.mu, self.var)

    def slice_powers(self, part: _Slice) -> Tensor:
        """``(m + 1, order)`` power sums of the series pixels above each cut of a slice."""
        values, counts = part.values, part.counts
        term = values * counts
        columns = [term]
        for _ in range(self.order - 1):
            term = term * values
            columns.append(term)
        terms = torch.stack(columns, dim=1)
        return part.sums_above + torch.cat([terms.new_zeros(1, self.order), terms.cumsum(dim=0)])

    def slice_totals(self, part: _Slice) -> tuple[float, Tensor]:
        """Count and power sums of the series pixels above the slice's lowest cut (``p > lo``)."""
        values, counts = part.values, part.counts
        powers_ = values[:, None] ** torch.arange(
            1, self.order + 1, dtype=torch.float64, device=values.device
        )
        return part.n_above + float(counts.sum()), part.sums_above + (powers_ * counts[:, None]).sum(dim=0)

    def slice_values(self, cuts: Tensor, tau: Tensor, mass: Tensor, top: Tensor) -> Tensor:
        """Exact values of the given cuts of a slice; ``top``: their power sums (slice_powers)."""
        if self.metric == "dice":
            ratio_in = ratio_series(self.x_pow, top) + self.cum_ratio_d[-1]
            return self._dice(tau[cuts], ratio_in)
        log_out = log_series(self.x_pow, self.sums_all - top)
        return iou_value(self.grid, self.gamma, tau[cuts], mass[cuts], torch.zeros_like(tau[cuts]), log_out)

    # ---------------------------------------------------------------- search

    def search_slice(self, part: _Slice, best: tuple[float, float, float]) -> tuple[float, float, float]:
        """Branch and bound over a slice's cuts; ``best`` and the result are (value, volume, threshold)."""
        best_value, best_tau, best_theta = best
        tau, mass, bound = self.slice_cuts(part)
        ranked = bound.argsort(descending=True)
        powers_above = None
        for start in range(0, ranked.numel(), _CUT_CHUNK):
            cuts = ranked[start : start + _CUT_CHUNK]
            cuts = cuts[bound[cuts] >= best_value]
            if cuts.numel() == 0:
                break
            if powers_above is None:
                powers_above = self.slice_powers(part)
            values = self.slice_values(cuts, tau, mass, powers_above[cuts])
            k = int(_checked_argmax(values))
            value, vol = float(values[k]), float(tau[cuts[k]])
            if value > best_value or (value == best_value and vol < best_tau):
                best_value, best_tau, best_theta = value, vol, part.threshold(int(cuts[k]))
        return best_value, best_tau, best_theta

    def upper_side(self, high: float, tau_high: float, mass_high: float, series_above: float) -> float:
        """Bound on the series cuts with thresholds above ``high`` (fewer series pixels)."""
        if series_above == 0:
            return -math.inf
        g_side = _lf_value(self.metric, self.gamma, tau_high, mass_high, self.mu)
        if high < _lf_threshold(self.metric, g_side):
            return math.inf
        start = max(1.0, self.base_tau)
        anchor = (tau_high, mass_high, high)
        return _side_bound(self.metric, self.gamma, start, tau_high - 1, g_side, anchor, self.mu, self.var)

    def lower_side(self, low: float, tau_low: float, mass_low: float) -> float:
        """Bound on the series cuts with thresholds below ``low`` (more series pixels)."""
        if low <= 0:
            return -math.inf
        g_side = _lf_value(self.metric, self.gamma, tau_low, mass_low, self.mu)
        if low > _lf_threshold(self.metric, g_side):
            return math.inf
        anchor = (tau_low, mass_low, low)
        return _side_bound(
            self.metric, self.gamma, tau_low + 1, float(self.n), g_side, anchor, self.mu, self.var
        )


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise FloatingPointError(
            "the exact expected metric evaluated to a non-finite number; this is a bug in rankseg, "
            "please report it with the input that caused it"
        )
    return value


def _long_row(row: Tensor, metric: str, gamma: float, mu: float) -> tuple[float, float]:
    """Exact optimum of one long row: ``(threshold, volume)``.

    The first slice lies around the RMA threshold of a sample of the row; further slices extend
    the searched range of thresholds on each side whose cuts are not yet certified worse than the
    best one found.
    """
    state = _LongRow(row, metric, gamma, mu)
    n = row.numel()
    sample = _sample(row)
    theta_start = _start_threshold(sample, n, metric, gamma, mu)
    delta = _band_half_width(sample, n, theta_start, max_ranks=state.cap / 2)
    del sample
    while True:  # the first slice, with the row's totals; narrower if it holds too many pixels
        high = max(min(theta_start + delta, state.top), 0.0)  # >= 0: pixels at 0 are never in a slice
        low = max(min(theta_start, high) - delta, 0.0)
        part = state.scan(low, high, "first")
        if isinstance(part, _Slice):
            break
        delta /= max(4.0, 2.0 * part[0] / state.cap)
    best = (state.empty_value(), 0.0, 1.0)
    values, taus = state.direct_cuts()
    for cut in range(values.numel()):
        value, vol = _finite(float(values[cut])), float(taus[cut])
        if value > best[0] or (value == best[0] and vol < best[1]):
            best = (value, vol, state.direct_threshold(cut))
    best = state.search_slice(part, best)

    # searched: the thresholds in [low, high]; count and power sums of the series pixels above each
    n_high, sums_high = part.n_above, part.sums_above
    n_low, sums_low = state.slice_totals(part)
    width_up = width_down = delta
    while True:
        up = state.upper_side(high, state.base_tau + n_high, state.base_mass + float(sums_high[0]), n_high)
        down = state.lower_side(low, state.base_tau + n_low, state.base_mass + float(sums_low[0]))
        if up < best[0] and down < best[0]:
            break
        if up >= best[0]:
            part = _extend(state, high, min(high + width_up, state.top), "above")
            best = state.search_slice(part, best)
            width_up = _next_width(part.hi - high, float(part.counts.sum()), state.cap)
            high, n_high, sums_high = part.hi, part.n_above, part.sums_above  # n_high = 0 at the top
        if down >= best[0]:
            part = _extend(state, max(low - width_down, 0.0), low, "slice")
            part.n_above, part.sums_above = n_low, sums_low
            best = state.search_slice(part, best)
            width_down = _next_width(low - part.lo, float(part.counts.sum()), state.cap)
            low = part.lo
            n_low, sums_low = state.slice_totals(part)
    value, vol, theta = best
    return theta, vol


def _next_width(width: float, count: float, cap: int) -> float:
    """Width in probability of the next slice on a side: aiming at half the cap, at most 4x wider."""
    return max(width * min(4.0, 0.5 * cap / max(count, 1.0)), 1e-12)


def _extend(state: _LongRow, low: float, high: float, mode: str) -> _Slice:
    """The slice ``(low, high]`` next to the searched range, moving its far end towards the
    searched range (bisecting the values it holds) while it holds too many pixels. ``mode``:
    ``"above"`` for a slice above the range (its far end is ``high``), ``"slice"`` below it."""
    while True:
        part = state.scan(low, high, mode)
        if isinstance(part, _Slice):
            return part
        _, smallest, largest = part
        middle = 0.5 * (smallest + largest)
        if mode == "above":
            high = middle if middle < largest else smallest
        else:
            low = middle if middle > smallest else smallest


def exact_thresholds(
    probs: Tensor, rows: Tensor | None, mu: Tensor, metric: str, smooth: float, tiles: Tiles | None = None
) -> tuple[Tensor, Tensor]:
    """Per-row thresholds of the exact expected-metric optimum (``probs[row] > threshold``).

    Args:
        probs: ``(R, N)`` probabilities; rows: ``(K,)`` indices or ``None``; mu: ``(K,)`` masses.
        tiles: not used (the solver's own work arrays are a few MiB whatever the input); kept so
            that every solver has the signature of :data:`rankseg.solvers.SOLVERS`.

    Returns:
        ``(thresholds, volumes)``, float64 ``(K,)`` each.
    """
    n = probs.shape[1]
    if n <= _SHORT:
        return _short_rows(probs, rows, metric, smooth)
    row_ids = range(mu.numel()) if rows is None else rows.tolist()
    out = [  # one row at a time: each pass is a bounded tile loop
        _long_row(probs[r], metric, smooth, float(mu[i])) for i, r in enumerate(row_ids)
    ]
    result = torch.tensor(out, dtype=torch.float64, device=probs.device).reshape(-1, 2)
    return result[:, 0], result[:, 1]
