"""The functional form of RankSEG: ``rankseg(probs, metric=..., ...)``.

Data flows one way: options are checked, the probabilities are viewed as ``(B, C, N)``, a solver
gives one threshold per (image, class), masks are built from the thresholds and, for multiclass
output, overlaps and unclaimed pixels are resolved; the result takes the caller's spatial shape
and array type.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ._inputs import as_tensor, check_values, to_caller
from ._masks import multiclass_labels, multilabel_masks
from ._options import DEFAULT_SOLVER, Options, resolve_options
from ._passes import plan_tiles
from .solvers import SOLVERS

__all__ = ["rankseg"]


def rankseg(
    probs: Tensor | np.ndarray,
    metric: str = "dice",
    smooth: float = 0.0,
    output_mode: str = "multiclass",
    solver: str = DEFAULT_SOLVER,
    pruning_prob: float = 0.5,
    **solver_params: object,
) -> Tensor | np.ndarray:
    r"""Turn probability maps into the masks that maximise the expected Dice, IoU or accuracy.

    Args:
        probs: probabilities of shape ``(batch, classes, *spatial)`` (1-D signals, 2-D images,
            3-D volumes...), a ``torch.Tensor`` on any device or a ``numpy.ndarray``, of dtype
            float16, bfloat16, float32 or float64, with values in [0, 1]. Never modified.
        metric: ``"dice"``, ``"iou"`` or ``"acc"`` (``"accuracy"``); case and spaces are ignored.
        smooth: smoothing constant ``gamma >= 0`` of the metric:
            ``Dice = (2|S∩Y| + gamma) / (|S| + |Y| + gamma)``, ``IoU = (|S∩Y| + gamma) / (|S∪Y| + gamma)``.
        output_mode: ``"multiclass"`` (one label per pixel) or ``"multilabel"`` (one mask per class).
        solver: ``"RMA"`` (default, Dice and IoU), ``"exact"``, ``"BA"``, ``"TRNA"``, ``"BA+TRNA"``
            (Dice), ``"argmax"`` / ``"TR"`` (accuracy). A solver that does not fit the metric falls
            back (with a ``UserWarning`` naming the solver used): to RMA for Dice and IoU, to argmax
            (multiclass) or a 0.5 threshold (multilabel) for accuracy.
        pruning_prob: a class whose largest probability in an image is not above this gets an
            empty mask there and does not compete (Dice and IoU only).
        **solver_params: ``unassigned_policy`` (``"max_score"`` or ``"void"``) and ``void_index``
            (int, default 255) for multiclass output; ``eps`` for the approximate solvers.

    Returns:
        ``multiclass``: int64 class indices of shape ``(batch, *spatial)``.
        ``multilabel``: bool masks of shape ``(batch, classes, *spatial)``.
        Same device as the input; a NumPy array if the input was one.

    Raises:
        TypeError: ``probs`` is not a dense tensor/array of a floating dtype (sparse tensors and NumPy
            float128 or object arrays included), or an option has the wrong type.
        ValueError: ``probs`` on the ``meta`` device, wrong rank, NaN/inf or values outside [0, 1], an
            unknown option value, a single class channel with ``output_mode="multiclass"``, or a
            ``void_index`` that is a class index.

    Warns:
        UserWarning: the solver falls back (it does not fit the metric or output mode), or an option
            given has no effect in the chosen mode (``eps`` with RMA or exact, ``unassigned_policy``
            or ``void_index`` with multilabel output or accuracy, ``void_index`` without
            ``unassigned_policy="void"``, ``smooth`` or ``pruning_prob`` with accuracy).

    Example:
        >>> import torch
        >>> from rankseg.functional import rankseg
        >>> probs = torch.tensor([[[0.9, 0.6, 0.3, 0.2], [0.1, 0.4, 0.7, 0.8]]])  # (1, 2, 4)
        >>> rankseg(probs, metric="dice")
        tensor([[0, 0, 1, 1]])
        >>> rankseg(probs, metric="iou", output_mode="multilabel").shape
        torch.Size([1, 2, 4])
    """
    options = resolve_options(metric, smooth, output_mode, solver, pruning_prob, **solver_params)
    return rankseg_resolved(probs, options)


def rankseg_resolved(probs: Tensor | np.ndarray, options: Options) -> Tensor | np.ndarray:
    """:func:`rankseg` with options already checked by :func:`rankseg._options.resolve_options`.

    For the integrations, which check (and warn about) the user's options once and then decide
    many items: passing the canonical values back through :func:`rankseg` would repeat the check and
    warn about defaults the user never gave.
    """
    tensor, from_numpy = as_tensor(probs)
    return to_caller(_predict(tensor, options), from_numpy)


def _predict(probs: Tensor, options: Options) -> Tensor:
    batch, classes, *spatial = probs.shape
    multiclass = options.output_mode == "multiclass"
    if multiclass and classes == 1:
        raise ValueError(
            "output_mode='multiclass' needs at least two class channels; got probs of shape "
            f"{tuple(probs.shape)}. For a single foreground probability use output_mode='multilabel', "
            "or pass two channels (background, foreground)."
        )
    if multiclass and options.unassigned_policy == "void" and 0 <= options.void_index < classes:
        examples = "255 or -1" if classes <= 255 else f"-1 or {classes}"  # never a class index
        raise ValueError(
            f"void_index={options.void_index} is a class index for {classes} classes; "
            f"choose a value outside [0, {classes - 1}] (e.g. {examples})"
        )
    n = math.prod(spatial)
    out_shape = (batch, *spatial) if multiclass else (batch, classes, *spatial)
    out_dtype = torch.int64 if multiclass else torch.bool
    if batch == 0 or n == 0:
        return torch.empty(out_shape, dtype=out_dtype, device=probs.device)

    flat = probs.reshape(batch, classes, n)
    rows = flat.reshape(batch * classes, n)
    row_max, mass = check_values(rows)
    out_bytes = batch * n * (8 + 1) if multiclass else batch * classes * n
    tiles = plan_tiles(probs.numel(), probs.element_size(), probs.device, reserved=out_bytes)
    tile = tiles.cache

    if options.metric == "acc":
        if multiclass:
            return flat.argmax(dim=1).reshape(out_shape)
        half = torch.full((batch, classes), 0.5, dtype=torch.float64, device=probs.device)
        return multilabel_masks(flat, half, tile).reshape(out_shape)

    pruned = row_max <= options.pruning_prob
    thresholds = torch.ones(batch * classes, dtype=torch.float64, device=probs.device)
    solve = SOLVERS[(options.metric, options.solver)]
    live = (~pruned).nonzero()[:, 0]
    if live.numel() == rows.shape[0]:
        thresholds, _ = solve(
            rows, None, mass, metric=options.metric, smooth=options.smooth, eps=options.eps, tiles=tiles
        )
    elif live.numel() > 0:
        live_thresholds, _ = solve(
            rows, live, mass[live], metric=options.metric, smooth=options.smooth, eps=options.eps, tiles=tiles
        )
        thresholds[live] = live_thresholds
    thresholds = thresholds.reshape(batch, classes)
    if not multiclass:
        return multilabel_masks(flat, thresholds, tile).reshape(out_shape)
    labels = multiclass_labels(
        flat,
        thresholds,
        pruned.reshape(batch, classes),
        mass.reshape(batch, classes),
        metric=options.metric,
        smooth=options.smooth,
        unassigned_policy=options.unassigned_policy,
        void_index=options.void_index,
        tile=tile,
    )
    return labels.reshape(out_shape)
