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
  both sums one cross-correlation of the pmf with ``1 / (k + c)``, computed for every ``tau`` by FFT.
* **TRNA** keeps ``Gamma_-(tau)``: its mean, variance and third central moment drop pixel
  ``tau``'s terms, its pmf is evaluated on the same support, and with
  ``w_tau(l) = w_{tau-1}(l) + p_(tau) P(Gamma_-(tau) = l)``,
  ``pi(tau) = sum_l 2 w_tau(l) / (tau + l + gamma + 1) + gamma sum_l P(l) / (tau + l + gamma)``.
  (The +1 follows the formula; the 0.0.5 reference release used +2.) Every ``tau`` is computed
  from its own moments, so ``tau`` is processed in chunks, all rows at once.
* **BA+TRNA** uses BA where ``sigma > 5`` (Cohen's ``d = 1 / sigma < 0.2``, the published rule)
  and TRNA elsewhere.

The volume is searched over ``tau <= d0``, the JMLR bound ``d0 = min{tau : s_tau >=
(tau + gamma + d) p_(tau+1)}`` (``d`` when no ``tau`` qualifies). Like the exact solver, only cuts
between distinct probabilities are volumes (a run of equal values is taken whole or not at all).

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

from .._passes import Tiles

__all__ = ["approx_thresholds"]

_SQRT_2PI = math.sqrt(2 * math.pi)
_BA_SIGMA = 5.0  # BA+TRNA: BA where sigma > 5 (Cohen's d < 0.2)
_TRNA_CHUNK_ELEMENTS = 1 << 19  # rows x taus x support (or nodes) entries per TRNA chunk
_TRNA_NODES = 16  # Chebyshev points of the pixel probability (interpolated TRNA)
_TRNA_DIRECT_WIDTH = 64  # supports up to this width are summed term by term


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


def _correlate(pmf: Tensor, lq: Tensor, gamma_shift: float, taus: int) -> Tensor:
    """``out[r, tau - 1] = sum_t pmf[r, t] / (tau + lq_r + t + gamma_shift)`` for ``tau = 1..taus``,
    by FFT (float64; the kernel's values differ per row by the shift ``lq_r``)."""
    width = pmf.shape[1]
    size = 1 << math.ceil(math.log2(taus + 2 * width + 1))
    m = torch.arange(size, dtype=torch.float64, device=pmf.device)
    kernel = (1.0 / (m + 1 + lq[:, None] + gamma_shift).clamp_min(1e-300)).masked_fill(m >= taus + width, 0.0)
    spectrum = torch.fft.rfft(kernel, n=size) * torch.conj(torch.fft.rfft(pmf, n=size))
    return torch.fft.irfft(spectrum, n=size)[:, :taus]


def _best_cut(scores: Tensor, ordered: Tensor, d0: Tensor) -> tuple[Tensor, Tensor]:
    """Best ``tau`` in ``[0, d0]`` at a boundary between distinct values: threshold and volume."""
    rows, d = ordered.shape
    tau = torch.arange(d + 1, device=ordered.device)
    valid = tau[None, :] <= d0[:, None]
    if d > 1:
        valid[:, 1:d] &= ordered[:, :-1] > ordered[:, 1:]
    best = scores.masked_fill(~valid, -math.inf).argmax(dim=1)
    below = torch.cat([ordered, torch.full((rows, 1), -1.0, dtype=ordered.dtype, device=ordered.device)], 1)
    return below.gather(1, best[:, None])[:, 0], best.to(torch.float64)


def _ba_scores(ordered: Tensor, cumulative: Tensor, d0: Tensor, gamma: float, eps: float) -> Tensor:
    """``pi_BA(tau)`` for ``tau = 0..d``, shape ``(R, d + 1)`` (computed for ``tau <= max d0``)."""
    rows, d = ordered.shape
    mu, var, m3 = _moments(ordered)
    lq, uq = _support(mu, var, m3, eps, d)
    width = int((uq - lq).max()) + 1
    pmf = _pmf(lq, uq, width, mu, var, m3)
    taus = int(d0.max())
    scores = torch.zeros(rows, d + 1, dtype=torch.float64, device=ordered.device)
    scores[:, 1 : taus + 1] = 2 * cumulative[:, :taus] * _correlate(pmf, lq, gamma + 1, taus)
    support = lq[:, None] + torch.arange(width, dtype=torch.float64, device=ordered.device)
    if gamma > 0:
        scores[:, 1 : taus + 1] += gamma * _correlate(pmf, lq, gamma, taus)
        scores[:, 0] = gamma * (pmf / (support + gamma)).sum(dim=1)
    else:
        scores[:, 0] = 0.0  # the 0/0 convention
    return scores


def _trna_direct(ordered: Tensor, d0: Tensor, lq: Tensor, uq: Tensor, width: int, moments: tuple) -> Tensor:
    """``sum_l 2 w_tau(l) / (tau + l + gamma + 1)`` term by term: each ``tau``'s pmf from its own
    moments, ``tau`` in chunks and all rows at once. ``O(d0 L)``: used for narrow supports."""
    rows, d = ordered.shape
    device = ordered.device
    mu, var, m3, gamma = moments
    support = lq[:, None] + torch.arange(width, dtype=torch.float64, device=device)  # (R, L)
    first = torch.zeros(rows, d, dtype=torch.float64, device=device)
    last = int(d0.max())
    w = torch.zeros(rows, width, dtype=torch.float64, device=device)
    chunk = max(1, _TRNA_CHUNK_ELEMENTS // (rows * width))
    for t0 in range(1, last + 1, chunk):
        t1 = min(last, t0 + chunk - 1)
        p = ordered[:, t0 - 1 : t1]  # pixel tau's probability, (R, C)
        q = p * (1 - p)
        lq_c, uq_c = lq[:, None].expand_as(p), uq[:, None].expand_as(p)
        pmf = _pmf(lq_c, uq_c, width, mu[:, None] - p, var[:, None] - q, m3[:, None] - q * (1 - 2 * p))
        w_chunk = w[:, None, :] + (p[..., None] * pmf).cumsum(dim=1)  # w_tau for tau in the chunk
        tau = torch.arange(t0, t1 + 1, dtype=torch.float64, device=device)[None, :, None]
        first[:, t0 - 1 : t1] = (2 * w_chunk / (tau + support[:, None, :] + gamma + 1)).sum(dim=-1)
        w = w_chunk[:, -1]
    return first


def _trna_interpolated(
    ordered: Tensor, d0: Tensor, lq: Tensor, uq: Tensor, width: int, moments: tuple
) -> Tensor:
    """The same sum, evaluated through the pixel probability (derived).

    ``w_tau(l) = sum_{j <= tau} p_j P_{p_j}(l)`` where ``P_p`` is the pmf with the moments of
    ``Gamma`` minus those of a pixel of probability ``p``. So the sum equals
    ``2 sum_{j <= tau} p_j F(tau, p_j)`` with ``F(tau, p) = sum_l P_p(l) / (tau + l + gamma + 1)``,
    which is smooth in ``p``: ``F`` is computed at 16 Chebyshev points of ``p`` (one FFT
    correlation over ``tau`` each) and interpolated (barycentric formula), so
    ``sum_{j <= tau} p_j F(tau, p_j) = sum_m F(tau, node_m) B_m(tau)`` with prefix sums
    ``B_m(tau) = sum_{j <= tau} p_j ell_m(p_j)`` of the Lagrange basis. Agrees with
    :func:`_trna_direct` to ~1e-12 (tests), at the cost of BA times 16.
    """
    rows, d = ordered.shape
    device = ordered.device
    mu, var, m3, gamma = moments
    count = _TRNA_NODES
    k = torch.arange(count, dtype=torch.float64, device=device)
    nodes = 0.5 - 0.5 * torch.cos(math.pi * k / (count - 1))  # Chebyshev points of the 2nd kind
    bary = torch.where(k % 2 == 0, 1.0, -1.0)
    bary[0] *= 0.5
    bary[-1] *= 0.5
    q = nodes * (1 - nodes)
    pmf = _pmf(
        lq[:, None].expand(rows, count),
        uq[:, None].expand(rows, count),
        width,
        mu[:, None] - nodes,
        var[:, None] - q,
        m3[:, None] - q * (1 - 2 * nodes),
    )  # (R, M, L)
    taus = int(d0.max())
    values = torch.empty(rows, count, taus, dtype=torch.float64, device=device)  # F(tau, node_m)
    for m0 in range(0, count, 4):  # four nodes per FFT batch bound the complex buffers
        nodes_m = pmf[:, m0 : m0 + 4]
        flat = _correlate(nodes_m.reshape(-1, width), lq.repeat_interleave(nodes_m.shape[1]), gamma + 1, taus)
        values[:, m0 : m0 + 4] = flat.reshape(rows, -1, taus)
    first = torch.zeros(rows, d, dtype=torch.float64, device=device)
    carry = torch.zeros(rows, count, dtype=torch.float64, device=device)
    chunk = max(1, _TRNA_CHUNK_ELEMENTS // (rows * count))
    for t0 in range(0, taus, chunk):
        p = ordered[:, t0 : min(taus, t0 + chunk)]  # (R, C)
        diff = p[..., None] - nodes  # (R, C, M)
        hit = diff == 0
        terms = torch.where(hit.any(dim=-1, keepdim=True), hit.to(torch.float64), bary / diff)
        basis = terms / terms.sum(dim=-1, keepdim=True)
        prefix = carry[:, None, :] + (p[..., None] * basis).cumsum(dim=1)  # B_m(tau)
        first[:, t0 : t0 + p.shape[1]] = 2 * (
            prefix * values[:, :, t0 : t0 + p.shape[1]].transpose(1, 2)
        ).sum(-1)
        carry = prefix[:, -1]
    return first


def _trna_scores(ordered: Tensor, cumulative: Tensor, d0: Tensor, gamma: float, eps: float) -> Tensor:
    """``pi_TRNA(tau)`` for ``tau = 0..d``, shape ``(R, d + 1)`` (only ``tau <= d0`` is used).

    Narrow supports (at most 64 values: few uncertain pixels, where ``F`` is least smooth in
    ``p``) are summed term by term; wider ones through the interpolation in ``p``.
    """
    rows, d = ordered.shape
    device = ordered.device
    mu, var, m3 = _moments(ordered)
    lq, uq = _support(mu, var, m3, eps, d)
    widths = uq - lq + 1
    scores = torch.zeros(rows, d + 1, dtype=torch.float64, device=device)
    for narrow in (True, False):
        chosen = (widths <= _TRNA_DIRECT_WIDTH) == narrow
        if not bool(chosen.any()):
            continue
        width = int(widths[chosen].max())
        moments = (mu[chosen], var[chosen], m3[chosen], gamma)
        method = _trna_direct if narrow else _trna_interpolated
        scores[chosen, 1:] = method(ordered[chosen], d0[chosen], lq[chosen], uq[chosen], width, moments)
    if gamma > 0:
        width = int(widths.max())
        full = _pmf(lq, uq, width, mu, var, m3)
        scores[:, 1:] += gamma * _correlate(full, lq, gamma, d)
        support = lq[:, None] + torch.arange(width, dtype=torch.float64, device=device)
        scores[:, 0] = gamma * (full / (support + gamma)).sum(dim=1)
    return scores


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
        tiles: bounds the rows sorted at once.

    Returns:
        ``(thresholds, volumes)``, float64 ``(K,)``.
    """
    n = probs.shape[1]
    k = mu.numel()
    thresholds = torch.empty(k, dtype=torch.float64, device=probs.device)
    volumes = torch.empty_like(thresholds)
    step = max(1, tiles.memory // max(8 * n, 1))  # rows per chunk: sort, cumsum, FFT buffers
    for r0 in range(0, k, step):
        r1 = min(k, r0 + step)
        block = probs[r0:r1] if rows is None else probs.index_select(0, rows[r0:r1])
        ordered = block.to(torch.float64).sort(dim=1, descending=True).values
        cumulative = ordered.cumsum(dim=1)
        d0 = _search_bound(ordered, cumulative, smooth)
        if solver == "BA+TRNA":
            use_ba = _moments(ordered)[1].sqrt() > _BA_SIGMA
        else:
            use_ba = torch.full((r1 - r0,), solver == "BA", device=probs.device)
        scores = torch.empty(r1 - r0, n + 1, dtype=torch.float64, device=probs.device)
        if bool(use_ba.any()):
            scores[use_ba] = _ba_scores(ordered[use_ba], cumulative[use_ba], d0[use_ba], smooth, eps)
        if bool((~use_ba).any()):
            scores[~use_ba] = _trna_scores(ordered[~use_ba], cumulative[~use_ba], d0[~use_ba], smooth, eps)
        thresholds[r0:r1], volumes[r0:r1] = _best_cut(scores, ordered, d0)
    return thresholds, volumes
