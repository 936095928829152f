r"""The exact solver: the volume that maximises the exact expected Dice or IoU.

Design note sections 2-3. The optimal mask is a top-``tau`` set; the expected metric ``pi(tau)`` of
each candidate is computed exactly by the generating-function integrals of :mod:`rankseg._expected`
(errors ~1e-13 against enumeration of all label vectors). Cuts inside a run of equal probabilities
are skipped: a run is taken whole or not at all (on 24,000 tie-heavy inputs a split run never
scored higher than its ends).

``pi(tau)`` is *not* unimodal in general (one p = 1 pixel followed by many small ones gives two
local maxima), so the search must not stop at a local maximum. Short rows (at most 2048 pixels)
are sorted and every cut is evaluated. Long rows use branch and bound around the RMA volume:

* a band of pixel values around the RMA threshold is extracted and sorted (a strided sample gives
  the band's value limits; the pixels above it and the total enter only through power sums);
* every cut in the band gets an upper bound on ``pi`` (derived, see :func:`_upper_bound`), and cuts
  are evaluated exactly in decreasing order of their bound until no unevaluated cut's bound
  exceeds the best exact value found;
* the cuts outside the band are bounded too (using that pixels above the band exceed its upper
  value and pixels below it do not exceed its lower value); if any of them could still win, the
  band is widened (four times wider, up to the whole row) and the search repeats.

The result is therefore the global optimum over all top-``tau`` sets, up to the integration error.

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

import math

import torch
from torch import Tensor

from .._expected import (
    direct_terms,
    integrate,
    log_series,
    make_grid,
    powers,
    ratio_series,
    series_order,
)
from .._passes import Tiles
from .rma import rma_thresholds

__all__ = ["exact_thresholds", "objective_curve"]

_SHORT = 2048  # rows up to this length: every cut is evaluated pixel by pixel
_SAMPLE = 4096
_LARGE_SCALE = 64.0  # rows with mu + gamma below this take their band pixels directly
_CUT_CHUNK = 512


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

    Costs ``O(N Q)`` memory and time per row (``Q`` ~ 200 nodes): meant for short rows and tests.
    """
    rows, n = probs.shape
    ordered = probs.to(torch.float64).sort(dim=1, descending=True).values
    grid = make_grid(n, gamma if gamma > 0 else 1.0, probs.device)
    values = torch.empty(rows, n + 1, dtype=torch.float64, device=probs.device)
    tau = torch.arange(n + 1, dtype=torch.float64, device=probs.device)
    chunk = max(1, (1 << 21) // max((n + 1) * len(grid), 1))
    for r0 in range(0, rows, chunk):
        p = ordered[r0 : r0 + chunk]
        log_f, ratio = direct_terms(p.reshape(-1), grid)
        log_f = log_f.view(p.shape[0], n, -1)
        ratio = ratio.view(p.shape[0], n, -1)
        zero = torch.zeros(p.shape[0], 1, len(grid), dtype=torch.float64, device=p.device)
        cum_log = torch.cat([zero, log_f.cumsum(dim=1)], dim=1)  # (r, n+1, Q): top-tau log terms
        log_g = cum_log[:, -1:, :]
        mass = torch.cat([zero[:, :, 0], p.cumsum(dim=1)], dim=1)
        taus = tau.expand(p.shape[0], -1)
        if metric == "dice":
            ratio_in = torch.cat([zero, ratio.cumsum(dim=1)], dim=1)
            value = 2.0 * integrate(grid, taus + gamma + 1.0, log_g.expand_as(ratio_in), ratio_in)
            if gamma > 0:
                value = value + gamma * integrate(grid, taus + gamma, log_g.expand_as(ratio_in))
        else:
            value = (mass + gamma) * integrate(grid, taus + gamma, log_g - cum_log)
        values[r0 : r0 + chunk] = value
    return values, ordered


def _cut_thresholds(values: Tensor, ordered: Tensor) -> tuple[Tensor, Tensor]:
    """Best cut per row among cuts between distinct values (smallest on exact ties): threshold, volume."""
    rows, n = ordered.shape
    valid = torch.ones(rows, n + 1, dtype=torch.bool, device=ordered.device)
    if n > 1:
        valid[:, 1:n] = ordered[:, :-1] > ordered[:, 1:]
    scores = values.masked_fill(~valid, -float("inf"))
    tau = scores.argmax(dim=1)
    # mask {p > theta} = top tau: theta is the next value down (or -1 below everything)
    below = torch.cat(
        [ordered, torch.full((rows, 1), -1.0, dtype=ordered.dtype, device=ordered.device)], dim=1
    )
    theta = below.gather(1, tau[:, None])[:, 0]
    return theta, tau.to(torch.float64)


# --------------------------------------------------------------------------------------------
# Long rows: band around the RMA volume, branch and bound.
# --------------------------------------------------------------------------------------------


def _upper_bound(metric: str, gamma: float, tau: Tensor, s: Tensor, mu: Tensor, var: Tensor) -> Tensor:
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


def _outside_bound(
    metric: str,
    gamma: float,
    n: int,
    n_above: float,
    s_above: float,
    edge: float,
    s_edge: float,
    theta_high: float,
    theta_low: float,
    mu: float,
    var: float,
) -> float:
    """Upper bound on ``pi`` over the cuts outside the band (``1 <= tau < n_above``, ``tau > edge``).

    The bound of :func:`_upper_bound` is ``g(tau) (1 + e(tau)) + gamma-term`` where ``g`` is
    linear-fractional in the top-``tau`` set, hence unimodal along the sorted pixels (it rises
    while the next probability exceeds ``_lf_threshold(g)``). Every pixel above the band exceeds
    ``theta_high`` and none below exceeds ``theta_low``; if ``theta_high`` is at least the rise
    threshold at ``n_above``, ``g`` still rises there, so ``g <= g(n_above)`` on the left; if
    ``theta_low`` is at most the rise threshold at the lower edge, ``g <= g(edge)`` on the right.
    ``g <= 2 tau / (tau + gamma + mu)`` (Dice), ``(tau + gamma) / (gamma + mu)`` (IoU) also holds
    (``s <= tau``). The factors ``e`` and the gamma-term fall with ``tau`` and are taken at the
    start of pieces that grow by 1% of ``tau + mu``. Returns ``inf`` when a side cannot be bounded
    (the caller widens the band).
    """
    g_left = _lf_value(metric, gamma, n_above, s_above, mu)
    g_right = _lf_value(metric, gamma, edge, s_edge, mu)
    if n_above >= 1 and theta_high < _lf_threshold(metric, g_left):
        return math.inf
    if edge < n and theta_low > _lf_threshold(metric, g_right):
        return math.inf

    def pieces(start: float, stop: float) -> tuple[Tensor, Tensor]:
        points = [start]
        while points[-1] < stop:
            points.append(min(points[-1] + max(1.0, math.floor(0.01 * (points[-1] + mu + 1))), stop + 1))
        pts = torch.tensor(points, dtype=torch.float64)
        return pts[:-1], pts[1:] - 1  # [a, b] integer intervals covering start..stop

    bounds = []
    for start, stop, g_side in ((1.0, n_above - 1, g_left), (edge + 1, float(n), g_right)):
        if stop < start:
            continue
        a, b = pieces(start, stop)
        if metric == "dice":
            g = torch.clamp(2 * b / (b + gamma + mu), max=g_side)
            factor = 1 + var / ((a + gamma + mu) * (a + 1 + gamma))
            value = g * factor
            if gamma > 0:
                value = value + gamma / (a + gamma + mu) * (1 + var / ((a + gamma + mu) * (a + gamma)))
        else:
            g = torch.clamp((b + gamma) / (gamma + mu), max=g_side)
            value = g * (1 + var / ((gamma + torch.clamp(a, min=mu)) * (a + gamma)))
        bounds.append(value.max())
    return float(torch.stack(bounds).max()) if bounds else -math.inf


def _band_half_width(sample: Tensor, n: int, theta: float) -> float:
    """Half-width in probability of the first band around ``theta``, from the local density of
    pixels ``rho`` (pixels per unit probability) estimated from the sorted (decreasing) sample.

    The band should hold the ranks within ``W = 4 sqrt(2 rho)`` of the RMA volume: the upper bound
    exceeds the exact objective by about ``2 / (tau + mu)``, and moving ``k`` ranks away from the
    optimum lowers the objective by about ``k^2 / (rho (tau + mu))``.
    """
    ns = sample.numel()
    scale = n / ns
    i = int((sample > theta).sum())
    lo, hi = max(0, i - 32), min(ns - 1, i + 32)
    spread = float(sample[lo] - sample[hi]) if hi > lo else 0.0
    rho = (hi - lo) * scale / spread if spread > 0 else float(n)
    width = max(512.0, 4.0 * math.sqrt(2.0 * rho + 1.0))
    return width / rho


def _scan(probs: Tensor, row: int, theta_high: float, theta_low: float, direct_all: bool, order: int):
    """One streaming pass over a row: power sums ``k = 1..order`` of the series pixels (all of
    them, and those above the band), the band's values sorted in decreasing order, and the count
    and mass above the band. Float64 throughout: the first power sums enter the integrands at
    full weight and must be exact to ~1e-14."""
    n = probs.shape[1]
    sums = torch.zeros(2, order, dtype=torch.float64, device=probs.device)  # rows: all, above
    n_above = 0.0
    band = []
    cols = max(1, (1 << 19) // max(order, 1))
    for c0 in range(0, n, cols):
        y = probs[row, c0 : c0 + cols].to(torch.float64)
        above = y > theta_high
        in_band = (y > theta_low) & ~above
        n_above += float(above.sum())
        band.append(y[in_band])
        series = y.masked_fill(in_band, 0.0) if direct_all else y
        base = torch.stack([series, series.masked_fill(~above, 0.0)])
        term = base.clone()
        for k in range(order):
            sums[:, k] += term.sum(dim=1)
            if k + 1 < order:
                term.mul_(base)
        del y, above, in_band, series, base, term
    values = torch.cat(band).sort(descending=True).values
    s_above = float(sums[1, 0])
    return sums[0], sums[1], n_above, s_above, values


class _Band:
    """The cuts of one long row inside a band of pixel values, with what evaluating them needs.

    Cut ``j`` takes the ``n_above`` pixels above the band and the ``j`` largest band pixels.
    ``direct``: band pixels enter node-wise sums one by one (rows with little mass); otherwise
    every pixel enters through power sums (:mod:`rankseg._expected`).
    """

    def __init__(
        self,
        probs: Tensor,
        row: int,
        metric: str,
        gamma: float,
        mu: float,
        high: float,
        low: float,
        direct: bool,
    ) -> None:
        n = probs.shape[1]
        self.metric, self.gamma, self.mu, self.high, self.low = metric, gamma, mu, high, low
        if direct:
            order = (series_order(gamma + 1e-300, mu, max(low, 1e-300)) or 40) + 1
        else:
            order = series_order(mu + gamma, mu, 1.0) + 1
        self.grid = grid = make_grid(n, gamma if gamma > 0 else 1.0, probs.device)
        self.sums_all, self.sums_above, self.n_above, self.s_above, band = _scan(
            probs, row, high, low, direct, order
        )
        self.values = band
        m = band.numel()
        self.x_pow = powers(grid.x, order)
        self.log_g = log_series(self.x_pow, self.sums_all)  # sum over all pixels of log(1 - p x)
        self.direct = direct
        if direct:
            band_log, band_ratio = direct_terms(band, grid)
            self.log_g = self.log_g + band_log.sum(dim=0)
            zero = band_log.new_zeros(1, len(grid))
            self.cum_log = torch.cat([zero, band_log.cumsum(dim=0)])
            self.cum_ratio = torch.cat([zero, band_ratio.cumsum(dim=0)])
            mass_all = float(self.sums_all[0] + band.sum())
            square_all = float(self.sums_all[1] + (band * band).sum())
        else:
            powers_of_band = torch.stack([band**k for k in range(1, order + 1)], dim=1)
            self.cum_pow = torch.cat([band.new_zeros(1, order), powers_of_band.cumsum(dim=0)])
            mass_all, square_all = float(self.sums_all[0]), float(self.sums_all[1])
        self.var = max(mass_all - square_all, 0.0)  # sum p (1 - p)
        self.tau = self.n_above + torch.arange(m + 1, dtype=torch.float64, device=band.device)
        self.mass = self.s_above + torch.cat([band.new_zeros(1), band.cumsum(dim=0)])
        valid = torch.ones(m + 1, dtype=torch.bool, device=band.device)
        if m > 1:
            valid[1:m] = band[:-1] > band[1:]  # a run of equal values is taken whole
        bound = _upper_bound(
            metric,
            gamma,
            self.tau,
            self.mass,
            torch.full_like(self.tau, mu),
            torch.full_like(self.tau, self.var),
        )
        self.bound = bound.masked_fill(~valid, -math.inf)

    def evaluate(self, cuts: Tensor) -> Tensor:
        """Exact expected metric of the given cuts."""
        grid, gamma = self.grid, self.gamma
        tau, mass = self.tau[cuts], self.mass[cuts]
        log_g = self.log_g.expand(cuts.numel(), -1)
        if self.direct:
            ratio_in = self.cum_ratio[cuts]
            log_out = self.log_g - self.cum_log[cuts]
        else:
            top = self.sums_above + self.cum_pow[cuts]
            ratio_in = ratio_series(self.x_pow, top)
            log_out = log_series(self.x_pow, self.sums_all - top)
        if self.metric == "dice":
            value = 2.0 * integrate(grid, tau + gamma + 1.0, log_g, ratio_in)
            return value + gamma * integrate(grid, tau + gamma, log_g) if gamma > 0 else value
        return (mass + gamma) * integrate(grid, tau + gamma, log_out)

    def empty_value(self) -> float:
        """``pi`` of the empty mask, ``gamma E[1 / (gamma + Gamma)]`` (Dice and IoU alike)."""
        exponent = torch.tensor([self.gamma], dtype=torch.float64, device=self.log_g.device)
        return self.gamma * float(integrate(self.grid, exponent, self.log_g[None]))

    def threshold(self, cut: int) -> float:
        """The ``theta`` with ``{p > theta}`` = the mask of ``cut``."""
        m = self.values.numel()
        if cut == 0:
            return self.high
        return float(self.values[cut]) if cut < m else self.low

    def search(self) -> tuple[float, float, float]:
        """Branch and bound over the band's cuts: ``(best value, its volume, its threshold)``.

        Cuts are evaluated in decreasing order of their upper bound until no unevaluated cut's
        bound exceeds the best exact value; the empty mask is always a candidate.
        """
        best_value, best_tau, best_theta = self.empty_value(), 0.0, 1.0
        ranked = self.bound.argsort(descending=True)
        ranked = ranked[torch.isfinite(self.bound[ranked])]
        for start in range(0, ranked.numel(), _CUT_CHUNK):
            cuts = ranked[start : start + _CUT_CHUNK]
            cuts = cuts[self.bound[cuts] >= best_value]
            if cuts.numel() == 0:
                break
            values = self.evaluate(cuts)
            k = int(values.argmax())
            value, tau = float(values[k]), float(self.tau[cuts[k]])
            if value > best_value or (value == best_value and tau < best_tau):
                best_value, best_tau, best_theta = value, tau, self.threshold(int(cuts[k]))
        return best_value, best_tau, best_theta

    def outside_bound(self, n: int) -> float:
        """Upper bound on every cut outside the band (:func:`_outside_bound`)."""
        edge = self.n_above + self.values.numel()
        return _outside_bound(
            self.metric,
            self.gamma,
            n,
            self.n_above,
            self.s_above,
            edge,
            float(self.mass[-1]),
            self.high,
            self.low,
            self.mu,
            self.var,
        )


def _long_row(
    probs: Tensor, row: int, metric: str, gamma: float, mu: float, theta_rma: float, sample: Tensor
) -> tuple[float, float]:
    """Exact optimum of one long row: ``(threshold, volume)``.

    The band starts around the RMA threshold and widens fourfold until the cuts outside it are
    certified worse than the best inside; the last resort is the whole row.
    """
    n = probs.shape[1]
    large = mu + gamma >= _LARGE_SCALE
    delta = _band_half_width(sample, n, theta_rma)
    while True:
        if large:
            high, low = (theta_rma + delta, theta_rma - delta) if delta < 1.0 else (math.inf, -math.inf)
        else:  # little mass: the band is every pixel above low, each taken directly
            high, low = math.inf, min(max(theta_rma - delta, 0.0), 0.2) if delta < 1.0 else 0.0
        band = _Band(probs, row, metric, gamma, mu, high, low, direct=not large)
        value, tau, theta = band.search()
        # Final: the band is the whole row, or (little mass) every pixel with p > 0 -- adding a
        # pixel of probability 0 lowers Dice and IoU, so no cut beyond such a band can win.
        final = math.isinf(low) or (not large and low == 0.0)
        if final or band.outside_bound(n) < value:
            if math.isinf(theta):
                theta = 1.0 if tau == 0 else -1.0  # nothing / everything
            return theta, tau
        delta *= 4


def exact_thresholds(
    probs: Tensor, rows: Tensor | None, mu: Tensor, metric: str, smooth: float, tiles: Tiles
) -> tuple[Tensor, Tensor]:
    """Per-row thresholds of the exact expected-metric optimum (``probs[row] > threshold``).

    Args:
        probs: ``(R, N)`` probabilities; rows: ``(K,)`` indices or ``None``; mu: ``(K,)`` masses.

    Returns:
        ``(thresholds, volumes)``, float64 ``(K,)`` each.
    """
    n = probs.shape[1]
    selected = probs if rows is None else probs.index_select(0, rows)
    if n <= _SHORT:
        values, ordered = objective_curve(selected, metric, smooth)
        return _cut_thresholds(values, ordered)
    theta_rma, _ = rma_thresholds(probs, rows, mu, metric, smooth, tiles)
    step = max(1, n // _SAMPLE) | 1
    row_ids = range(mu.numel()) if rows is None else rows.tolist()
    samples = probs[:, ::step]
    thresholds, volumes = [], []
    for i, r in enumerate(row_ids):  # one row at a time: each pass is a bounded tile loop
        sample = samples[r].to(torch.float64).sort(descending=True).values
        theta, vol = _long_row(probs, r, metric, smooth, float(mu[i]), float(theta_rma[i]), sample)
        thresholds.append(theta)
        volumes.append(vol)
    device = probs.device
    return torch.tensor(thresholds, dtype=torch.float64, device=device), torch.tensor(
        volumes, dtype=torch.float64, device=device
    )
