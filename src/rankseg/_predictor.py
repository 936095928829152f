"""``RankSEG``: a thin, picklable predictor over :func:`rankseg.functional.rankseg`."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from ._options import DEFAULT_SOLVER
from .functional import rankseg

__all__ = ["RankSEG"]


class RankSEG:
    r"""Metric-optimal decoder of probability maps (Dai & Li, JMLR 2023; Wang & Dai, NeurIPS 2025).

    The constructor stores its arguments exactly as given (``RankSEG(solver="BA").solver == "BA"``);
    they are checked when :meth:`predict` runs, so an instance can be built, pickled and sent to a
    worker process before any data exists. Extra keyword arguments live in ``solver_params``.
    See :func:`rankseg.functional.rankseg` for every option.

    Args:
        metric: ``"dice"``, ``"iou"`` or ``"acc"``.
        smooth: smoothing constant of the metric (``>= 0``).
        output_mode: ``"multiclass"`` or ``"multilabel"``.
        solver: ``"RMA"`` (default), ``"exact"``, ``"BA"``, ``"TRNA"``, ``"BA+TRNA"``, ``"argmax"``, ``"TR"``.
        pruning_prob: classes whose largest probability is not above this get an empty mask.
        **solver_params: ``unassigned_policy``, ``void_index``, ``eps``.

    Example:
        >>> import torch
        >>> from rankseg import RankSEG
        >>> probs = torch.softmax(torch.randn(2, 3, 16, 16), dim=1)  # (batch, classes, H, W)
        >>> preds = RankSEG(metric="dice", solver="RMA", output_mode="multiclass")(probs)
        >>> preds.shape, preds.dtype
        (torch.Size([2, 16, 16]), torch.int64)
    """

    def __init__(
        self,
        metric: str = "dice",
        smooth: float = 0.0,
        output_mode: str = "multiclass",
        solver: str = DEFAULT_SOLVER,
        pruning_prob: float = 0.5,
        **solver_params: object,
    ) -> None:
        self.metric = metric
        self.smooth = smooth
        self.output_mode = output_mode
        self.solver = solver
        self.pruning_prob = pruning_prob
        self.solver_params = dict(solver_params)

    def predict(self, probs: Tensor | np.ndarray) -> Tensor | np.ndarray:
        """Masks for ``probs`` of shape ``(batch, classes, *spatial)``.

        See :func:`rankseg.functional.rankseg` for the options, shapes and dtypes.
        """
        return rankseg(
            probs,
            metric=self.metric,
            smooth=self.smooth,
            output_mode=self.output_mode,
            solver=self.solver,
            pruning_prob=self.pruning_prob,
            **self.solver_params,
        )

    def __call__(self, probs: Tensor | np.ndarray) -> Tensor | np.ndarray:
        """Same as :meth:`predict`."""
        return self.predict(probs)

    def __repr__(self) -> str:
        args = [
            f"metric={self.metric!r}",
            f"smooth={self.smooth!r}",
            f"output_mode={self.output_mode!r}",
            f"solver={self.solver!r}",
            f"pruning_prob={self.pruning_prob!r}",
        ] + [f"{key}={value!r}" for key, value in self.solver_params.items()]
        return f"RankSEG({', '.join(args)})"
