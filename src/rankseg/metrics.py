"""Segmentation metrics: exact expected Dice and IoU of any masks under the model's probabilities.

:func:`expected_dice` and :func:`expected_iou` score masks without labels: the expectation is over
labels drawn independently per pixel from ``probs`` (the model's own uncertainty). Use them to
compare argmax, thresholding and RankSEG masks on data you have no ground truth for.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ._expected import expected_scores
from ._inputs import as_tensor, check_values, to_caller
from ._options import resolve_options

__all__ = ["expected_dice", "expected_iou"]


def _expected(probs, masks, smooth, metric: str):
    options = resolve_options(metric=metric, smooth=smooth)
    tensor, from_numpy = as_tensor(probs)
    mask_tensor = torch.as_tensor(masks)
    if mask_tensor.dtype != torch.bool:
        raise TypeError(f"masks must be boolean, of the shape of probs; got dtype {mask_tensor.dtype}")
    if tuple(mask_tensor.shape) != tuple(tensor.shape):
        raise ValueError(
            f"masks must have the shape of probs {tuple(tensor.shape)} (one mask per image and class); "
            f"got {tuple(mask_tensor.shape)}"
        )
    batch, classes = tensor.shape[:2]
    if tensor.numel() == 0:
        return to_caller(torch.zeros(batch, classes, dtype=torch.float64, device=tensor.device), from_numpy)
    rows = tensor.reshape(batch * classes, -1)
    check_values(rows)
    scores = expected_scores(
        rows, mask_tensor.to(tensor.device).reshape(batch * classes, -1), metric, options.smooth
    )
    return to_caller(scores.reshape(batch, classes), from_numpy)


def expected_dice(
    probs: Tensor | np.ndarray, masks: Tensor | np.ndarray, smooth: float = 0.0
) -> Tensor | np.ndarray:
    r"""Exact expected Dice of each mask under independent labels ``Y ~ Bernoulli(probs)``.

    ``E[(2 |M ∩ Y| + smooth) / (|M| + |Y| + smooth)]`` per image and class, computed exactly (to
    ~1e-12) by the generating-function integral of ``docs/algorithms.md``; an empty mask and an
    empty truth with ``smooth = 0`` score 0.

    Args:
        probs: ``(batch, classes, *spatial)`` probabilities (tensor or array, any float dtype).
        masks: bool masks of the same shape (e.g. ``RankSEG(output_mode="multilabel")`` output,
            or one-hot argmax masks).
        smooth: the smoothing constant, ``>= 0``.

    Returns:
        ``(batch, classes)`` float64 tensor (NumPy array for NumPy ``probs``).

    Example:
        >>> import torch
        >>> from rankseg.metrics import expected_dice
        >>> probs = torch.tensor([[[0.9, 0.6, 0.2]]])
        >>> float(expected_dice(probs, probs > 0.5)[0, 0])  # doctest: +ELLIPSIS
        0.7...
    """
    return _expected(probs, masks, smooth, "dice")


def expected_iou(
    probs: Tensor | np.ndarray, masks: Tensor | np.ndarray, smooth: float = 0.0
) -> Tensor | np.ndarray:
    r"""Exact expected IoU ``E[(|M ∩ Y| + smooth) / (|M ∪ Y| + smooth)]``; see :func:`expected_dice`.

    Example:
        >>> import torch
        >>> from rankseg.metrics import expected_iou
        >>> probs = torch.tensor([[[0.9, 0.6, 0.2]]])
        >>> round(float(expected_iou(probs, probs > 0.5)[0, 0]), 4)
        0.7
    """
    return _expected(probs, masks, smooth, "iou")
