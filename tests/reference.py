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
