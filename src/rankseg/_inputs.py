"""Checking and viewing the user's probability maps; never modifies them."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor

from ._passes import row_stats

__all__ = ["as_tensor", "check_values", "to_caller"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_tensor(probs: object, name: str = "probs") -> tuple[Tensor, bool]:
    """Return ``(tensor, came_from_numpy)`` after checking type, dtype and rank.

    NumPy arrays are viewed without copying where possible (read-only arrays too: nothing is ever
    written to the input).
    """
    from_numpy = isinstance(probs, np.ndarray)
    if from_numpy:
        arr = probs
        if arr.dtype.kind != "f":
            raise TypeError(
                f"{name} must hold floating-point probabilities (float16, float32 or float64); "
                f"got a numpy array of dtype {arr.dtype}"
            )
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        if any(s < 0 for s in arr.strides):
            arr = np.ascontiguousarray(arr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "array is not writable": we only read it
            tensor = torch.from_numpy(arr)
    elif isinstance(probs, Tensor):
        tensor = probs.detach()  # a decision, not a differentiable function: never track gradients
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy.ndarray of shape (batch, classes, *spatial); "
            f"got {type(probs).__name__}"
        )
    if tensor.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32 or float64); got {tensor.dtype}"
        )
    if tensor.dim() < 3:
        raise ValueError(
            f"{name} must have shape (batch, classes, *spatial) with at least one spatial dim; "
            f"got shape {tuple(tensor.shape)}"
        )
    if tensor.shape[1] == 0:
        raise ValueError(f"{name} must have at least one class channel; got shape {tuple(tensor.shape)}")
    return tensor, from_numpy


def check_values(rows: Tensor, name: str = "probs") -> tuple[Tensor, Tensor]:
    """Check that a ``(R, N)`` view holds finite values in [0, 1]; return per-row (max, mass).

    ``mass`` is the float64 ``sum(p)`` of each row.
    """
    row_min, row_max, mass = row_stats(rows)  # one pass, on the CPU workers
    lo, hi = torch.stack([row_min.min(), row_max.max()]).tolist()  # one sync
    if not (lo >= 0 and hi <= 1):
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{name} must be finite probabilities; it contains NaN or infinite values")
        raise ValueError(
            f"{name} must be probabilities in [0, 1]; got values from {lo:.6g} to {hi:.6g} "
            "(apply softmax or sigmoid to logits first)"
        )
    return row_max, mass


def to_caller(result: Tensor, from_numpy: bool) -> Tensor | np.ndarray:
    """Give the result back in the caller's array type."""
    return result.cpu().numpy() if from_numpy else result
