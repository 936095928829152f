"""Solvers: each maps probabilities to one threshold per (image, class) row.

Every solver has the signature ``solve(probs, rows, mu, *, metric, smooth, eps, tiles)`` with
``probs`` the ``(R, N)`` probability rows, ``rows`` the ``(K,)`` indices to solve (``None``: all
``R`` rows) and ``mu`` their probability mass, and returns ``(thresholds, volumes)``: float64
``(K,)`` tensors such that the mask ``probs[row] > threshold`` is the solver's choice and holds
``volume`` pixels.

:data:`SOLVERS` is the table keyed by ``(metric, solver)``; adding a solver is one module and one row.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .._passes import Tiles
from .approx import approx_thresholds
from .exact import exact_thresholds
from .rma import rma_thresholds

__all__ = ["SOLVERS"]


def _rma(
    probs: Tensor, rows: Tensor | None, mu: Tensor, *, metric: str, smooth: float, eps: float, tiles: Tiles
):
    return rma_thresholds(probs, rows, mu, metric, smooth, tiles)


def _exact(
    probs: Tensor, rows: Tensor | None, mu: Tensor, *, metric: str, smooth: float, eps: float, tiles: Tiles
):
    return exact_thresholds(probs, rows, mu, metric, smooth, tiles)


def _approx(solver: str):
    def solve(
        probs: Tensor,
        rows: Tensor | None,
        mu: Tensor,
        *,
        metric: str,
        smooth: float,
        eps: float,
        tiles: Tiles,
    ):
        return approx_thresholds(probs, rows, mu, solver, smooth, eps, tiles)

    return solve


SOLVERS: dict[tuple[str, str], Callable[..., tuple[Tensor, Tensor]]] = {
    ("dice", "RMA"): _rma,
    ("iou", "RMA"): _rma,
    ("dice", "exact"): _exact,
    ("iou", "exact"): _exact,
    ("dice", "BA"): _approx("BA"),
    ("dice", "TRNA"): _approx("TRNA"),
    ("dice", "BA+TRNA"): _approx("BA+TRNA"),
}
