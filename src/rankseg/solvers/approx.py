r"""The JMLR approximations of the expected Dice: BA, TRNA and BA+TRNA (design note section 4).

``Gamma = sum_j Y_j`` (Poisson-binomial, mean ``mu``, variance ``sigma^2``, skewness ``eta``) is
replaced by the refined normal approximation (Volkova 1996)::

    P(Gamma <= k) ~ G((k + 0.5 - mu) / sigma),  G(x) = Phi(x) + eta (1 - x^2) phi(x) / 6  (clipped to [0, 1])

whose differences give a pmf on the integers. The support is cut to ``[lq, uq]`` with
``P(lq <= Gamma <= uq) >= 1 - eps`` (``lq`` the first ``k`` with ``G > eps/2``, ``uq`` the first
with ``G >= 1 - eps/2``) and renormalised; negative differences (a non-monotone ``G`` under strong
skew) are clipped to 0 first.

* **BA** (blind approximation) replaces every ``Gamma_-j`` by ``Gamma``:
  ``pi(tau) = 2 s_tau sum_l P(l) / (tau + l + gamma + 1) + gamma sum_l P(l) / (tau + l + gamma)``,
  both sums expectations ``E[1 / (tau + L + c)]``, evaluated for any ``tau`` by a moment series
  (:class:`_Expectation`, derived; no FFT, no buffer of the row's length).
* **TRNA** keeps ``Gamma_-(tau)``: its mean, variance and third central moment drop pixel
  ``tau``'s terms, its pmf is evaluated on the same support, and with
  ``w_tau(l) = w_{tau-1}(l) + p_(tau) P(Gamma_-(tau) = l)``,
  ``pi(tau) = sum_l 2 w_tau(l) / (tau + l + gamma + 1) + gamma sum_l P(l) / (tau + l + gamma)``.
  (The +1 follows the formula; the 0.0.5 reference release used +2.) Every ``tau`` is computed
  from its own moments, so ``tau`` is processed in chunks (:class:`_Scores`).
* **BA+TRNA** uses BA where ``sigma > 5`` (Cohen's ``d = 1 / sigma < 0.2``, the published rule)
  and TRNA elsewhere.

The volume is searched over ``tau <= d0``, the JMLR bound ``d0 = min{tau : s_tau >=
(tau + gamma + d) p_(tau+1)}`` (``d`` when no ``tau`` qualifies). Like the exact solver, only cuts
between distinct probabilities are volumes (a run of equal values is taken whole or not at all).

Memory (issue 14): short rows are sorted (several at once) within the call's budget; long rows are
streamed through their distinct values from the top, in slices, and stop at ``d0``
(:func:`_streamed_row`), so the extra memory stays below the input's size plus a fixed working
set whatever the shape. Design note ``docs/algorithms.md``, "BA, TRNA, BA+TRNA".

Where they are weak: both replace a discrete law by a normal one, so they are accurate when
``sigma`` is large (many uncertain pixels) and can miss by several pixels -- and by more than
1e-3 of expected Dice -- when ``sigma`` is small (few uncertain pixels, small objects). BA also
ignores that a selected pixel is not in its own ``Gamma_-j``, an O(1/mu) error that matters for
small objects. Use ``solver="exact"`` where that matters; RMA is the fast default.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._passes import Tiles, cpu_workers, descending_runs, map_tiles, sorted_descending

__all__ = ["approx_thresholds"]

_SQRT_2PI = math.sqrt(2 * math.pi)
_BA_SIGMA = 5.0  # BA+TRNA: BA where sigma > 5 (Cohen's d < 0.2)
_CHUNK_ELEMENTS = 1 << 20  # float64 temporaries of one scoring chunk (8 MB)
_TRNA_NODES = 16  # Chebyshev points of the pixel probability (interpolated TRNA)
_TRNA_DIRECT_WIDTH = 64  # supports up to this width are summed term by term
_SERIES_TERMS = 58  # moments kept for the series of E[1 / (tau + L + c)] (rho <= 1/2 needs 56)
_SERIES_RHO = 0.5  # beyond this ratio the expectation is summed over the support instead
_PIXEL_BYTES = 64  # working memory per pixel of a sorted row (values, sort, scores, masks)
_STREAM_LENGTH = 1 << 18  # rows at least this long are streamed: only pixels above d0 are sorted


def _moments(p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, variance and third central moment of the Poisson-binomial count, per row."""
    q = p * (1 - p)
    return p.sum(dim=-1), q.sum(dim=-1), (q * (1 - 2 * p)).sum(dim=-1)


def _rna_cdf(k: Tensor, mu: Tensor, var: Tensor, m3: Tensor) -> Tensor:
    """Refined normal approximation of ``P(Gamma <= k)``; broadcasts its arguments."""
    sigma = var.clamp_min(1e-300).sqrt()
    skew = m3 / sigma**3
    x = (k + 0.5 - mu) / sigma
    g = torch.special.ndtr(x) + skew * (1 - x * x) * torch.exp(-0.5 * x * x) / (6 * _SQRT_2PI)
    # degenerate counts (no uncertain pixel): a step at mu
    step = (k + 0.5 >= mu).to(g.dtype)
    return torch.where(var > 1e-12, g.clamp(0.0, 1.0), step)


def _support(mu: Tensor, var: Tensor, m3: Tensor, eps: float, d: int) -> tuple[Tensor, Tensor]:
    """Per row, ``lq`` = first ``k`` with ``G(k) > eps/2`` and ``uq`` = first ``k`` with
    ``G(k) >= 1 - eps/2`` (integers in ``[0, d]``), by bisection on all rows at once."""

    def first(condition_level: float, strict: bool) -> Tensor:
        lo = torch.zeros_like(mu)
        hi = torch.full_like(mu, float(d))
        for _ in range(max(1, math.ceil(math.log2(d + 1))) + 1):
            mid = torch.floor((lo + hi) / 2)
            cdf = _rna_cdf(mid, mu, var, m3)
            ok = cdf > condition_level if strict else cdf >= condition_level
            hi = torch.where(ok, mid, hi)
            lo = torch.where(ok, lo, mid + 1)
        return torch.minimum(lo, hi)

    lq = first(eps / 2, strict=True)
    uq = torch.maximum(first(1 - eps / 2, strict=False), lq)
    return lq, uq


def _pmf(lq: Tensor, uq: Tensor, width: int, mu: Tensor, var: Tensor, m3: Tensor) -> Tensor:
    """Truncated, renormalised pmf on ``lq + (0..width-1)``; zero beyond each row's ``uq``.

    ``mu``, ``var``, ``m3`` may carry extra leading dims (TRNA: one set of moments per ``tau``); the
    support is the row's, broadcast along them.
    """
    offsets = torch.arange(width, dtype=torch.float64, device=lq.device)
    k = lq[..., None] + offsets  # (..., width)
    pmf = _rna_cdf(k, mu[..., None], var[..., None], m3[..., None]) - _rna_cdf(
        k - 1, mu[..., None], var[..., None], m3[..., None]
    )
    pmf = pmf.clamp_min(0.0).masked_fill(k > uq[..., None], 0.0)
    total = pmf.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, pmf / total.clamp_min(1e-300), torch.zeros_like(pmf))


def _search_bound(ordered: Tensor, cumulative: Tensor, gamma: float) -> Tensor:
    """JMLR ``d0``: the first ``tau`` with ``s_tau >= (tau + gamma + d) p_(tau+1)``, else ``d``."""
    rows, d = ordered.shape
    if d == 1:
        return torch.ones(rows, dtype=torch.int64, device=ordered.device)
    tau = torch.arange(1, d, dtype=torch.float64, device=ordered.device)
    stop = cumulative[:, :-1] >= (tau + gamma + d) * ordered[:, 1:]
    first = stop.to(torch.int64).argmax(dim=1) + 1
    return torch.where(stop.any(dim=1), first, torch.full_like(first, d))


class _Expectation:
    r"""``E_m[1 / (tau + L + c)]`` for counts ``L`` with pmfs on ``lq + (0..W-1)``, at any ``tau``.

    Moment series (derived): with ``centre`` the midpoint of a row's support, ``radius`` its
    half-width and ``u = (L - centre) / radius`` in ``[-1, 1]``,

        1 / (tau + L + c) = (1 / x) sum_k (-rho u)^k,   x = tau + centre + c,  rho = radius / x,

    so ``E[1 / (tau + L + c)] = (1 / x) sum_k (-rho)^k E[u^k]``: one set of moments per pmf serves
    every ``tau``. Where ``rho <= 1/2`` the series is cut after ``K`` terms with
    ``rho^K / (1 - rho) <= 2^-55`` (as ``|E[u^k]| <= 1``, a relative error below 3e-17); the few
    ``tau`` with ``rho > 1/2`` (supports reaching down towards 0, ``tau`` below their half-width)
    are summed term by term. This replaces an FFT correlation over every ``tau`` up to ``d``: it
    needs no buffer of the row's length and costs ~10 terms per ``tau`` on typical rows.

    Args:
        pmf: ``(R, M, W)`` pmfs (``M = 1`` for BA; one per interpolation node for TRNA).
        lq, uq: ``(R,)`` first and last support point of each row; ``c``: the shift.
    """

    def __init__(self, pmf: Tensor, lq: Tensor, uq: Tensor, c: float) -> None:
        rows, nodes, width = pmf.shape
        device = pmf.device
        self.pmf, self.lq, self.c = pmf, lq, c
        self.centre = (lq + uq) / 2
        self.radius = ((uq - lq) / 2).clamp_min(0.5)
        self.moments = torch.zeros(rows, nodes, _SERIES_TERMS, dtype=torch.float64, device=device)
        step = max(1, _CHUNK_ELEMENTS // max(4 * rows * _SERIES_TERMS, 1))
        for w0 in range(0, width, step):  # powers u^k chunk by chunk: bounded memory for wide supports
            offsets = torch.arange(w0, min(width, w0 + step), dtype=torch.float64, device=device)
            u = (lq[:, None] + offsets - self.centre[:, None]) / self.radius[:, None]
            powers = u[..., None].expand(*u.shape, _SERIES_TERMS - 1).cumprod(-1)
            powers = torch.cat([torch.ones_like(u)[..., None], powers], -1)  # (R, w, K)
            self.moments += torch.bmm(pmf[..., w0 : w0 + offsets.numel()], powers)

    def __call__(self, tau: Tensor, weights: Tensor | None = None) -> Tensor:
        """``sum_m weights[..., m] E_m[1 / (tau + L + c)]`` (or ``E_0`` without weights).

        Args:
            tau: ``(R, T)`` float64; weights: ``(R, T, M)`` or ``None``.

        Returns:
            ``(R, T)`` float64.
        """
        x = tau + (self.centre + self.c)[:, None]
        rho = self.radius[:, None] / x
        series = rho <= _SERIES_RHO
        rho_max = float(torch.where(series, rho, torch.zeros_like(rho)).max()) if rho.numel() else 0.0
        terms = _SERIES_TERMS
        if 0 < rho_max < _SERIES_RHO:
            terms = min(terms, math.ceil(55 * math.log(2) / -math.log(rho_max)) + 1)
        elif rho_max == 0:
            terms = 1
        if weights is None:
            coef = self.moments[:, :1, :terms]  # (R, 1, K): broadcast over tau
        else:
            coef = torch.bmm(weights, self.moments[:, :, :terms])  # (R, T, K)
        neg_rho = rho.neg()
        value = coef[..., terms - 1].expand_as(rho).clone()
        for k in range(terms - 2, -1, -1):  # Horner in -rho
            value.mul_(neg_rho).add_(coef[..., k])
        value.div_(x)
        if not bool(series.all()):
            r_idx, t_idx = (~series).nonzero(as_tuple=True)
            value[r_idx, t_idx] = self._direct(
                tau[r_idx, t_idx], r_idx, None if weights is None else weights[r_idx, t_idx]
            )
        return value

    def _direct(self, tau: Tensor, r_idx: Tensor, weights: Tensor | None) -> Tensor:
        """The same expectation summed over the support, for the points ``(r_idx, tau)``."""
        width = self.pmf.shape[-1]
        offsets = torch.arange(width, dtype=torch.float64, device=tau.device)
        out = torch.empty_like(tau)
        step = max(1, _CHUNK_ELEMENTS // (self.pmf.shape[1] * width))
        for p0 in range(0, tau.numel(), step):
            rows, t = r_idx[p0 : p0 + step], tau[p0 : p0 + step]
            denominators = t[:, None] + self.lq[rows, None] + offsets + self.c  # (P, W)
            values = (self.pmf[rows] / denominators[:, None, :]).sum(-1)  # (P, M)
            out[p0 : p0 + step] = (
                values[:, 0] if weights is None else (weights[p0 : p0 + step] * values).sum(-1)
            )
        return out


class _Scores:
    r"""``pi(tau)`` of BA or TRNA at the cuts of a batch of rows, fed sorted slice after slice.

    ``method``: ``"BA"``; ``"direct"`` (TRNA summed term by term: ``w_tau(l) = w_{tau-1}(l) +
    p_(tau) P_{-(tau)}(l)``, for supports of at most 64 values) or ``"interpolated"`` (TRNA through
    16 Chebyshev nodes in ``p``, derived: ``sum_{j <= tau} p_j F(tau, p_j) = sum_m F(tau, node_m)
    B_m(tau)`` with ``B_m`` the prefix sums of ``p_j ell_m(p_j)``, ``ell_m`` the Lagrange basis).
    A slice is given as distinct values with their counts (or single pixels with counts 1); every
    quantity is a prefix sum over the sorted pixels of a function of ``p``, so a run of ``c`` equal
    values adds ``c`` times one pixel's term and the carries let the next slice continue.
    """

    def __init__(
        self, method: str, mu: Tensor, var: Tensor, m3: Tensor, lq: Tensor, uq: Tensor, gamma: float
    ) -> None:
        rows = mu.numel()
        device = mu.device
        self.method, self.gamma, self.mu, self.var, self.m3, self.lq, self.uq = (
            method,
            gamma,
            mu,
            var,
            m3,
            lq,
            uq,
        )
        self.width = int((uq - lq).max()) + 1 if rows else 1
        full = _pmf(lq, uq, self.width, mu, var, m3)[:, None]  # (R, 1, W)
        self.rest = _Expectation(full, lq, uq, gamma) if gamma > 0 else None
        self.tau = torch.zeros(rows, dtype=torch.float64, device=device)
        self.s = torch.zeros(rows, dtype=torch.float64, device=device)
        if method == "BA":
            self.first = _Expectation(full, lq, uq, gamma + 1)
        elif method == "interpolated":
            k = torch.arange(_TRNA_NODES, dtype=torch.float64, device=device)
            self.nodes = 0.5 - 0.5 * torch.cos(math.pi * k / (_TRNA_NODES - 1))  # Chebyshev, 2nd kind
            self.bary = torch.where(k % 2 == 0, 1.0, -1.0)
            self.bary[0] *= 0.5
            self.bary[-1] *= 0.5
            q = self.nodes * (1 - self.nodes)
            node_pmf = _pmf(
                lq[:, None].expand(rows, _TRNA_NODES),
                uq[:, None].expand(rows, _TRNA_NODES),
                self.width,
                mu[:, None] - self.nodes,
                var[:, None] - q,
                m3[:, None] - q * (1 - 2 * self.nodes),
            )  # (R, M, W)
            self.first = _Expectation(node_pmf, lq, uq, gamma + 1)
            self.carry = torch.zeros(rows, _TRNA_NODES, dtype=torch.float64, device=device)
        else:
            self.support = lq[:, None] + torch.arange(self.width, dtype=torch.float64, device=device)
            self.carry = torch.zeros(rows, self.width, dtype=torch.float64, device=device)

    def empty(self) -> Tensor:
        """``pi(0)``: ``gamma E[1 / (Gamma + gamma)]`` (0 when ``gamma = 0``), ``(R,)``."""
        if self.rest is None:
            return torch.zeros_like(self.mu)
        return self.gamma * self.rest(torch.zeros_like(self.mu)[:, None])[:, 0]

    def cuts(self, values: Tensor, counts: Tensor) -> Tensor:
        """Scores of the cuts after each entry of the next slice.

        Args:
            values: ``(R, T)`` float64, decreasing along each row and below the previous slice.
            counts: ``(R, T)`` float64 multiplicities.

        Returns:
            ``(R, T)`` float64: ``pi(tau)`` with ``tau`` the count of pixels up to each entry.
        """
        rows, total = values.shape
        # float64 temporaries per tau: the series (BA), the basis and coefficients (interpolated),
        # two refined-normal CDFs over the support (direct)
        per_tau = {"BA": 16, "interpolated": 8 * _TRNA_NODES + 2 * _SERIES_TERMS}.get(
            self.method, 24 * self.width
        )
        step = max(1, _CHUNK_ELEMENTS // max(rows * per_tau, 1))
        out = torch.empty_like(values)
        for t0 in range(0, total, step):
            p, c = values[:, t0 : t0 + step], counts[:, t0 : t0 + step]
            mass = p * c
            tau = self.tau[:, None] + c.cumsum(1)
            if self.method == "BA":
                s = self.s[:, None] + mass.cumsum(1)
                score = 2 * s * self.first(tau)
            elif self.method == "interpolated":
                diff = p[..., None] - self.nodes  # (R, t, M)
                hit = diff == 0
                terms = torch.where(hit.any(dim=-1, keepdim=True), hit.to(torch.float64), self.bary / diff)
                basis = terms / terms.sum(dim=-1, keepdim=True)
                prefix = self.carry[:, None, :] + (mass[..., None] * basis).cumsum(1)  # B_m(tau)
                score = 2 * self.first(tau, prefix)
                self.carry = prefix[:, -1].clone()
            else:
                q = p * (1 - p)
                pmf = _pmf(
                    self.lq[:, None].expand_as(p),
                    self.uq[:, None].expand_as(p),
                    self.width,
                    self.mu[:, None] - p,
                    self.var[:, None] - q,
                    self.m3[:, None] - q * (1 - 2 * p),
                )  # (R, t, W): the pmf of Gamma without one pixel of each entry's value
                w = self.carry[:, None, :] + (mass[..., None] * pmf).cumsum(1)
                score = 2 * (w / (tau[..., None] + self.support[:, None, :] + (self.gamma + 1))).sum(-1)
                self.carry = w[:, -1].clone()
            if self.rest is not None:
                score += self.gamma * self.rest(tau)
            self.tau = tau[:, -1].clone()
            self.s = self.s + mass.sum(1)
            out[:, t0 : t0 + step] = score
        return out


def _methods(solver: str, var: Tensor, lq: Tensor, uq: Tensor) -> list[str]:
    """Per row: ``"BA"``, or TRNA ``"direct"`` / ``"interpolated"`` (BA+TRNA: BA where sigma > 5)."""
    use_ba = (
        var.sqrt() > _BA_SIGMA
        if solver == "BA+TRNA"
        else torch.full_like(var, solver == "BA", dtype=torch.bool)
    )
    narrow = (uq - lq + 1) <= _TRNA_DIRECT_WIDTH
    return [
        "BA" if ba else ("direct" if nr else "interpolated")
        for ba, nr in zip(use_ba.tolist(), narrow.tolist(), strict=True)
    ]


def _scores(ordered: Tensor, gamma: float, eps: float, solver: str) -> Tensor:
    """``pi(tau)``, ``tau = 0..d``, of every row of ``ordered`` (sorted, float64), ``(R, d + 1)``."""
    rows, d = ordered.shape
    mu, var, m3 = _moments(ordered)
    lq, uq = _support(mu, var, m3, eps, d)
    methods = _methods(solver, var, lq, uq)
    scores = torch.empty(rows, d + 1, dtype=torch.float64, device=ordered.device)
    for method in sorted(set(methods)):
        sel = torch.tensor([m == method for m in methods], device=ordered.device)
        scorer = _Scores(method, mu[sel], var[sel], m3[sel], lq[sel], uq[sel], gamma)
        scores[sel, 0] = scorer.empty()
        scores[sel, 1:] = scorer.cuts(ordered[sel], torch.ones_like(ordered[sel]))
    return scores


def _ba_scores(ordered: Tensor, cumulative: Tensor, d0: Tensor, gamma: float, eps: float) -> Tensor:
    """``pi_BA(tau)`` for ``tau = 0..d``, shape ``(R, d + 1)`` (``cumulative``, ``d0``: unused)."""
    return _scores(ordered, gamma, eps, "BA")


def _trna_scores(ordered: Tensor, cumulative: Tensor, d0: Tensor, gamma: float, eps: float) -> Tensor:
    """``pi_TRNA(tau)`` for ``tau = 0..d``, shape ``(R, d + 1)`` (``cumulative``, ``d0``: unused).

    Narrow supports (at most 64 values: few uncertain pixels, where ``F`` is least smooth in
    ``p``) are summed term by term; wider ones through the interpolation in ``p``.
    """
    return _scores(ordered, gamma, eps, "TRNA")


def _sorted_rows(
    block: Tensor, solver: str, gamma: float, eps: float, thresholds: Tensor, volumes: Tensor
) -> None:
    """Solve rows that fit the memory budget: sort them, score every cut up to ``d0`` at once."""
    ordered = sorted_descending(block)
    rows, d = ordered.shape
    d0 = _search_bound(ordered, ordered.cumsum(dim=1), gamma)
    last = int(d0.max())  # no cut beyond d0 is a candidate
    mu, var, m3 = _moments(ordered)
    lq, uq = _support(mu, var, m3, eps, d)
    methods = _methods(solver, var, lq, uq)
    scores = torch.full((rows, last + 1), -math.inf, dtype=torch.float64, device=ordered.device)
    for method in sorted(set(methods)):
        sel = torch.tensor([m == method for m in methods], device=ordered.device)
        scorer = _Scores(method, mu[sel], var[sel], m3[sel], lq[sel], uq[sel], gamma)
        scores[sel, 0] = scorer.empty()
        scores[sel, 1:] = scorer.cuts(ordered[sel, :last], torch.ones_like(ordered[sel, :last]))
    # Candidates: tau <= d0, at boundaries between distinct values (tau = 0 and tau = d always).
    tau = torch.arange(last + 1, device=ordered.device)
    valid = tau[None, :] <= d0[:, None]
    inner = min(last, d - 1)
    valid[:, 1 : inner + 1] &= ordered[:, :inner] > ordered[:, 1 : inner + 1]
    best = scores.masked_fill_(~valid, -math.inf).argmax(dim=1)  # the first best: the smallest volume
    below = torch.cat([ordered, torch.full((rows, 1), -1.0, dtype=torch.float64, device=ordered.device)], 1)
    thresholds[:], volumes[:] = below.gather(1, best[:, None])[:, 0], best.to(torch.float64)


def _row_moments(row: Tensor, tile: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_moments` of one long row in one streaming pass, ``(1,)`` float64 each."""
    tile = max(1, tile // 4)  # five float64 temporaries per element
    starts = range(0, row.numel(), tile)
    partial = torch.empty(len(starts), 3, dtype=torch.float64, device=row.device)

    def work(i: int) -> None:
        p = row[starts[i] : starts[i] + tile].to(torch.float64)
        q = p * (1 - p)
        partial[i, 0], partial[i, 1], partial[i, 2] = p.sum(), q.sum(), (q * (1 - 2 * p)).sum()

    map_tiles(work, len(starts), row.device)
    totals = partial.sum(0)
    return totals[:1], totals[1:2], totals[2:]


def _streamed_row(row: Tensor, solver: str, gamma: float, eps: float, tiles: Tiles) -> tuple[float, float]:
    """Solve one row too long to sort within the memory budget: its distinct values stream from
    the top (:func:`rankseg._passes.descending_runs`), each slice scored at its cuts, until ``d0``.

    The search bound ``d0`` is the start of the first run of value ``v`` with
    ``s >= (tau + gamma + d) v`` (``s``, ``tau``: mass and count above the run): inside a run that
    condition does not depend on ``tau``, so it holds at the run's first cut or nowhere in it.
    ``s - (tau + gamma + d) p_(tau+1)`` never decreases with ``tau``, so the first histogram
    already bounds ``d0`` (with the largest value a bin may hold) and nothing below that bound is
    gathered. Returns ``(threshold, volume)``.
    """
    d = row.numel()
    mu, var, m3 = _row_moments(row, tiles.cache)
    lq, uq = _support(mu, var, m3, eps, d)
    scorer = _Scores(_methods(solver, var, lq, uq)[0], mu, var, m3, lq, uq, gamma)
    best, threshold, volume = float(scorer.empty()[0]), None, 0.0
    tau, s = 0.0, 0.0

    def beyond_d0(count: Tensor, mass: Tensor, next_value: Tensor) -> Tensor:
        return mass >= (count + gamma + d) * next_value  # the search bound holds there: d0 <= count

    runs = descending_runs(row, -1.0, 1.0, tiles.budget // _PIXEL_BYTES, tiles.cache, until=beyond_d0)
    for values, counts in runs:
        if threshold is None:
            threshold = float(values[0])  # tau = 0: nothing above the largest value
        counts = counts.to(torch.float64)
        end = _first_stop(values, counts, tau, s, gamma, d)
        if end > 0:
            scores = scorer.cuts(values[None, :end], counts[None, :end])[0]
            j = int(scores.argmax())
            if float(scores[j]) > best:  # ties keep the first: the smallest volume
                best, threshold = float(scores[j]), _value_below(values[j], row.dtype)
                volume = tau + float(counts[: j + 1].sum())
            del scores
        if end < values.numel():
            break
        tau, s = tau + float(counts.sum()), s + float((values * counts).sum())
        del values, counts  # before the next slice is gathered
    return threshold, volume


def _first_stop(values: Tensor, counts: Tensor, tau: float, s: float, gamma: float, d: int) -> int:
    """Index of the first run at whose start ``s >= (tau + gamma + d) v`` holds (``tau``, ``s``:
    count and mass above the run; for the first run, at ``tau = 1`` inside it), else the number
    of runs. In chunks: a few float64 temporaries of bounded size."""
    step = _CHUNK_ELEMENTS // 8
    for c0 in range(0, values.numel(), step):
        v, c = values[c0 : c0 + step], counts[c0 : c0 + step]
        mass = v * c
        tau_before = c.cumsum(0).sub_(c).add_(tau)
        s_before = mass.cumsum(0).sub_(mass).add_(s)
        stop = torch.where(
            tau_before >= 1,
            s_before >= (tau_before + gamma + d) * v,
            (c >= 2) & (v == 0),  # the first run: tau = 1 inside it
        )
        if bool(stop.any()):
            return c0 + int(stop.to(torch.int64).argmax())
        tau, s = tau + float(c.sum()), s + float(mass.sum())
    return values.numel()


def _value_below(value: Tensor, dtype: torch.dtype) -> float:
    """The largest ``dtype`` value below ``value`` (of that dtype): ``p > it`` iff ``p >= value``."""
    exact = value.to(dtype)
    return float(torch.nextafter(exact, torch.full_like(exact, -math.inf)))


def approx_thresholds(
    probs: Tensor,
    rows: Tensor | None,
    mu: Tensor,
    solver: str,
    smooth: float,
    eps: float,
    tiles: Tiles,
) -> tuple[Tensor, Tensor]:
    """Per-row thresholds of the BA, TRNA or BA+TRNA volume (Dice only).

    Args:
        probs: ``(R, N)`` probabilities; rows: ``(K,)`` indices or ``None``; mu: their masses.
        solver: ``"BA"``, ``"TRNA"`` or ``"BA+TRNA"``; smooth: ``gamma``; eps: the pmf truncation.
        tiles: ``tiles.budget`` bounds the working memory.

    Returns:
        ``(thresholds, volumes)``, float64 ``(K,)``.

    Short rows whose sorted copies and scores (~64 bytes per pixel) fit the budget are sorted and
    scored several at once; long rows are streamed (:func:`_streamed_row`), which sorts only the
    pixels above the search bound ``d0``. Rows (or groups of rows) are spread over the CPU
    workers, each with its share of the budget, so the extra memory stays within
    ``tiles.budget`` plus a few work tiles per worker, whatever the shape.
    """
    n = probs.shape[1]
    k = mu.numel()
    thresholds = torch.empty(k, dtype=torch.float64, device=probs.device)
    volumes = torch.empty_like(thresholds)
    with cpu_workers(probs.device, probs.numel()) as threads:
        parallel = max(1, min(threads, k))  # rows (or groups of rows) solved at once, by the workers
        share = Tiles(cache=tiles.cache, memory=tiles.memory, budget=max(1, tiles.budget // parallel))
        if n * _PIXEL_BYTES > share.budget or n >= _STREAM_LENGTH:

            def streamed(i: int) -> None:
                row = probs[i if rows is None else int(rows[i])]
                thresholds[i], volumes[i] = _streamed_row(row, solver, smooth, eps, share)

            map_tiles(streamed, k, probs.device, min_count=2)
            return thresholds, volumes
        step = max(1, min(share.budget // (n * _PIXEL_BYTES), -(-k // parallel)))
        starts = range(0, k, step)

        def sorted_group(i: int) -> None:
            r0, r1 = starts[i], min(k, starts[i] + step)
            block = probs[r0:r1] if rows is None else probs.index_select(0, rows[r0:r1])
            _sorted_rows(block, solver, smooth, eps, thresholds[r0:r1], volumes[r0:r1])

        map_tiles(sorted_group, len(starts), probs.device, min_count=2)
    return thresholds, volumes
