"""Brute-force references for the tests: slow, obvious, float64, written from the design note."""

from __future__ import annotations

import numpy as np


def rma_objective(metric: str, s: np.ndarray, tau: np.ndarray, mu: float, gamma: float) -> np.ndarray:
    """RMA objective (design note section 4) of masks with probability sum ``s`` and size ``tau``."""
    s = np.asarray(s, dtype=np.float64)
    tau = np.asarray(tau, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "dice":
            value = 2 * s / (tau + mu + 1 + gamma)
            if gamma > 0:
                value = value + gamma / (tau + mu + gamma)
        else:
            value = (s + gamma) / (tau + mu - s + gamma)
    return np.nan_to_num(value, nan=0.0)  # 0/0 (empty mask, no mass, gamma = 0) scores 0


def rma_scan(metric: str, p: np.ndarray, gamma: float) -> tuple[np.ndarray, float]:
    """Objective of every top-tau set (tau = 0..d) of one row, and its maximum."""
    p = np.sort(np.asarray(p, dtype=np.float64).ravel())[::-1]
    s = np.concatenate([[0.0], np.cumsum(p)])
    tau = np.arange(p.size + 1)
    values = rma_objective(metric, s, tau, float(p.sum()), gamma)
    return values, float(values.max())


def mask_objective(metric: str, p: np.ndarray, mask: np.ndarray, gamma: float) -> float:
    p = np.asarray(p, dtype=np.float64).ravel()
    mask = np.asarray(mask, dtype=bool).ravel()
    return float(rma_objective(metric, p[mask].sum(), mask.sum(), float(p.sum()), gamma))


def rma_threshold_masks(metric: str, probs: np.ndarray, gamma: float, pruning_prob: float) -> np.ndarray:
    """Multilabel RMA masks by brute force: per row, the smallest optimal top-tau set.

    ``probs``: (B, C, N). Rows whose maximum is not above ``pruning_prob`` get empty masks.
    Cuts inside a run of equal probabilities are not masks of the form ``p > t``; they are skipped.
    """
    b, c, n = probs.shape
    out = np.zeros((b, c, n), dtype=bool)
    for i in range(b):
        for k in range(c):
            p = probs[i, k].astype(np.float64)
            if p.max() <= pruning_prob:
                continue
            order = np.argsort(-p, kind="stable")
            ps = p[order]
            values, _ = rma_scan(metric, p, gamma)
            valid = np.ones(n + 1, dtype=bool)
            valid[1:n] = ps[:-1] > ps[1:]
            values = np.where(valid, values, -np.inf)
            best = values.max()
            # smallest optimal mask among values within rounding of the best
            tau = int(np.nonzero(values >= best - 1e-12 * max(1.0, abs(best)))[0][0])
            out[i, k, order[:tau]] = True
    return out


def class_objective(metric: str, m, t, mu, gamma):
    """F(m, t) of the multiclass rule (design note section 6)."""
    if metric == "dice":
        value = 2 * m / (t + mu + 1 + gamma)
        return value + gamma / (t + mu + gamma) if gamma > 0 else value
    return (m + gamma) / (t + mu - m + gamma)


def resolve_multiclass(
    metric: str,
    probs: np.ndarray,
    masks: np.ndarray,
    pruned: np.ndarray,
    gamma: float,
    policy: str = "max_score",
    void_index: int = 255,
) -> np.ndarray:
    """Design note section 6, pixel by pixel: single owners, incremental scores, fallbacks."""
    b, c, n = probs.shape
    labels = np.zeros((b, n), dtype=np.int64)
    for i in range(b):
        p = probs[i].astype(np.float64)
        mu = p.sum(axis=1)
        owners = masks[i].sum(axis=0)
        single = owners == 1
        m = np.array([p[k, single & masks[i, k]].sum() for k in range(c)])
        t = np.array([(single & masks[i, k]).sum() for k in range(c)], dtype=np.float64)
        base = np.array([class_objective(metric, m[k], t[k], mu[k], gamma) for k in range(c)])
        for j in range(n):
            if owners[j] == 1:
                labels[i, j] = int(np.nonzero(masks[i, :, j])[0][0])
                continue
            if pruned[i].all():
                labels[i, j] = void_index if (policy == "void") else int(np.argmax(p[:, j]))
                continue
            if owners[j] == 0 and policy == "void":
                labels[i, j] = void_index
                continue
            eligible = masks[i, :, j] if owners[j] > 1 else ~pruned[i]
            best, best_k = -np.inf, -1
            for k in range(c):
                if not eligible[k]:
                    continue
                gain = class_objective(metric, m[k] + p[k, j], t[k] + 1, mu[k], gamma) - base[k]
                if gain > best:
                    best, best_k = gain, k
            labels[i, j] = best_k
    return labels


def brute_expected(metric: str, p: np.ndarray, mask: np.ndarray, gamma: float) -> float:
    """Expected Dice/IoU of ``mask`` by enumerating all 2^d label vectors (d <= ~16)."""
    p = np.asarray(p, dtype=np.float64).ravel()
    mask = np.asarray(mask, dtype=bool).ravel()
    d = p.size
    labels = ((np.arange(2**d)[:, None] >> np.arange(d)[None, :]) & 1).astype(bool)  # (2^d, d)
    weights = np.prod(np.where(labels, p, 1 - p), axis=1)
    inter = (labels & mask).sum(axis=1)
    size_y = labels.sum(axis=1)
    tau = mask.sum()
    if metric == "dice":
        num, den = 2 * inter + gamma, tau + size_y + gamma
    else:
        num, den = inter + gamma, tau + size_y - inter + gamma
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)
    return float((weights * values).sum())


def brute_curve(metric: str, p: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Expected metric of every top-tau set (tau = 0..d) by enumeration, and p sorted decreasingly."""
    ordered = np.sort(np.asarray(p, dtype=np.float64).ravel())[::-1]
    d = ordered.size
    curve = np.array([brute_expected(metric, ordered, np.arange(d) < tau, gamma) for tau in range(d + 1)])
    return curve, ordered


def trna_reference(p: np.ndarray, gamma: float, eps: float) -> np.ndarray:
    """TRNA scores pi(tau), tau = 0..d, straight from the JMLR definition (design note section 4).

    Loops over tau and evaluates each Gamma_-(tau) pmf from its own moments: slow and obvious.
    """
    from math import erf, exp, pi, sqrt

    ordered = np.sort(np.asarray(p, dtype=np.float64).ravel())[::-1]
    d = ordered.size
    q = ordered * (1 - ordered)
    mu, var, m3 = ordered.sum(), q.sum(), (q * (1 - 2 * ordered)).sum()

    def cdf(k, mean, variance, third):
        if variance <= 1e-12:
            return 1.0 if k + 0.5 >= mean else 0.0
        sigma = sqrt(variance)
        x = (k + 0.5 - mean) / sigma
        g = 0.5 * (1 + erf(x / sqrt(2))) + third / sigma**3 * (1 - x * x) * exp(-0.5 * x * x) / (
            6 * sqrt(2 * pi)
        )
        return min(max(g, 0.0), 1.0)

    lq = next(k for k in range(d + 1) if cdf(k, mu, var, m3) > eps / 2)
    uq = max(lq, next(k for k in range(d + 1) if cdf(k, mu, var, m3) >= 1 - eps / 2))
    support = np.arange(lq, uq + 1)

    def pmf(mean, variance, third):
        values = np.array(
            [cdf(k, mean, variance, third) - cdf(k - 1, mean, variance, third) for k in support]
        )
        values = np.clip(values, 0, None)
        return values / values.sum() if values.sum() > 0 else values

    full = pmf(mu, var, m3)
    scores = np.zeros(d + 1)
    scores[0] = gamma * np.sum(full / (support + gamma)) if gamma > 0 else 0.0
    w = np.zeros(support.size)
    for tau in range(1, d + 1):
        pj = ordered[tau - 1]
        qj = pj * (1 - pj)
        w = w + pj * pmf(mu - pj, var - qj, m3 - qj * (1 - 2 * pj))
        scores[tau] = np.sum(2 * w / (tau + support + gamma + 1))
        if gamma > 0:
            scores[tau] += gamma * np.sum(full / (tau + support + gamma))
    return scores


# --------------------------------------------------------------------------------------------
# Exact expected Dice / IoU by Poisson-binomial dynamic programming (issue 9: an independent
# reference for the generating-function integrals of rankseg._expected, over the whole range).
# --------------------------------------------------------------------------------------------


def poisson_binomial_pmf(p: np.ndarray) -> np.ndarray:
    """``P(sum_j Y_j = k)``, ``k = 0..d``, for independent ``Y_j ~ Bernoulli(p_j)``: one
    convolution with ``(1 - p_j, p_j)`` per pixel (float64, O(d^2))."""
    pmf = np.ones(1)
    for pj in np.asarray(p, dtype=np.float64).ravel():
        nxt = np.zeros(pmf.size + 1)
        nxt[:-1] += (1.0 - pj) * pmf
        nxt[1:] += pj * pmf
        pmf = nxt
    return pmf


def leave_one_out_pmfs(pmf: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Rows ``j``: the pmf of the count without pixel ``j`` (length ``d``), by dividing the factor
    ``(1 - p_j) + p_j t`` out of the generating function.

    ``pmf_k = (1 - p) r_k + p r_(k-1)`` is solved for ``r`` forwards when ``p <= 1/2`` and backwards
    otherwise, so that the recursion never amplifies rounding errors (factor ``min(p, 1-p) /
    max(p, 1-p) <= 1``); ``p`` of exactly 0 or 1 is exact.
    """
    d = pmf.size - 1
    p = np.asarray(p, dtype=np.float64).ravel()
    out = np.zeros((p.size, d))
    low = p <= 0.5
    if d == 0:
        return out
    if low.any():
        pl, ql = p[low], 1.0 - p[low]
        r = np.empty((pl.size, d))
        r[:, 0] = pmf[0] / ql
        for k in range(1, d):
            r[:, k] = (pmf[k] - pl * r[:, k - 1]) / ql
        out[low] = r
    if (~low).any():
        ph, qh = p[~low], 1.0 - p[~low]
        r = np.empty((ph.size, d))
        r[:, d - 1] = pmf[d] / ph
        for k in range(d - 1, 0, -1):
            r[:, k - 1] = (pmf[k] - qh * r[:, k]) / ph
        out[~low] = r
    return out


def dp_prefix_values(metric: str, p: np.ndarray, gamma: float) -> np.ndarray:
    """Exact expected metric of every prefix set ``{pixels 0..tau-1}``, ``tau = 0..d``, of ``p`` in
    the order given (O(d^2) time; float64).

    With ``A`` the true positives among the first ``tau`` pixels, ``B`` the true pixels after them and
    ``Gamma = A + B``:

    * IoU: ``(|M ∩ Y| + gamma) / (tau + B + gamma)`` with ``A``, ``B`` independent, so the value is
      ``(s_tau + gamma) E[1 / (tau + gamma + B)]``, ``B``'s pmf by a suffix DP.
    * Dice: ``E[(2 A + gamma) / (tau + gamma + Gamma)] = sum_k (2 E[A; Gamma = k] + gamma P(Gamma = k))
      / (tau + gamma + k)`` with ``E[A; Gamma = k] = sum_{j < tau} p_j P(Gamma_{-j} = k - 1)``.

    0/0 (empty mask and empty truth with ``gamma = 0``) counts 0.
    """
    p = np.asarray(p, dtype=np.float64).ravel()
    d = p.size
    out = np.zeros(d + 1)
    if metric == "iou":
        prefix_mass = np.concatenate([[0.0], np.cumsum(p)])
        suffix = np.ones(1)  # pmf of B for tau = d
        for tau in range(d, -1, -1):
            b = np.arange(suffix.size)
            den = tau + gamma + b
            if prefix_mass[tau] + gamma > 0:
                out[tau] = (prefix_mass[tau] + gamma) * np.sum(suffix / den)
            if tau > 0:
                pj = p[tau - 1]
                nxt = np.zeros(suffix.size + 1)
                nxt[:-1] += (1.0 - pj) * suffix
                nxt[1:] += pj * suffix
                suffix = nxt
        return out
    pmf = poisson_binomial_pmf(p)
    k = np.arange(d + 1)
    if gamma > 0:
        out[0] = gamma * np.sum(pmf / (gamma + k))
    joint = np.zeros(d + 1)  # E[A_tau; Gamma = k]
    block = max(256, (1 << 21) // max(d, 1))
    for j0 in range(0, d, block):
        pj = p[j0 : j0 + block]
        rows = leave_one_out_pmfs(pmf, pj) * pj[:, None]  # (b, d): p_j P(Gamma_-j = k - 1) at k - 1
        cumulative = joint[None, 1:] + np.cumsum(rows, axis=0)
        for i in range(pj.size):
            tau = j0 + i + 1
            numer = 2.0 * np.concatenate([[0.0], cumulative[i]]) + gamma * pmf
            out[tau] = np.sum(numer / (tau + gamma + k))
        joint[1:] = cumulative[-1]
    return out


def dp_curve(metric: str, p: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`dp_prefix_values` of ``p`` sorted decreasingly (every top-tau set), and that order."""
    ordered = np.sort(np.asarray(p, dtype=np.float64).ravel())[::-1]
    return dp_prefix_values(metric, ordered, gamma), ordered


def dp_mask_value(metric: str, p: np.ndarray, mask: np.ndarray, gamma: float) -> float:
    """Exact expected metric of any mask: the prefix value with the mask's pixels put first."""
    p = np.asarray(p, dtype=np.float64).ravel()
    mask = np.asarray(mask, dtype=bool).ravel()
    order = np.concatenate([p[mask], p[~mask]])
    return float(dp_prefix_values(metric, order, gamma)[int(mask.sum())])


def fraction_prefix_values(metric: str, p, gamma) -> list:
    """:func:`dp_prefix_values` in exact rational arithmetic (``fractions.Fraction``), by the
    obvious double sum over the independent counts ``A`` (first ``tau`` pixels) and ``B`` (the
    rest): O(d^3), for tiny rows. Floats are converted exactly."""
    from fractions import Fraction

    p = [Fraction(float(x)) for x in np.asarray(p, dtype=np.float64).ravel()]
    gamma = Fraction(float(gamma)) if not isinstance(gamma, Fraction) else gamma
    d = len(p)

    def pmf(values):
        out = [Fraction(1)]
        for pj in values:
            nxt = [Fraction(0)] * (len(out) + 1)
            for k, w in enumerate(out):
                nxt[k] += (1 - pj) * w
                nxt[k + 1] += pj * w
            out = nxt
        return out

    values = []
    for tau in range(d + 1):
        pa, pb = pmf(p[:tau]), pmf(p[tau:])
        total = Fraction(0)
        for a, wa in enumerate(pa):
            for b, wb in enumerate(pb):
                if metric == "dice":
                    num, den = 2 * a + gamma, tau + a + b + gamma
                else:
                    num, den = a + gamma, tau + b + gamma
                if den > 0:
                    total += wa * wb * num / den
        values.append(total)
    return values
