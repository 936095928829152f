"""Checking and viewing the user's arrays; never modifies them.

:func:`as_dense` is the one check every public entry point applies to a tensor or array argument
(``rankseg``, ``RankSEG``, the metrics, the integrations): it names the argument in every error.
:func:`as_tensor` adds the checks for a probability map.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor

from ._passes import row_stats

__all__ = ["as_dense", "as_tensor", "check_values", "to_caller"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# NumPy dtypes torch can hold (torch.from_numpy); float128 (longdouble), object, strings and dates cannot
_NUMPY_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_NUMPY_DTYPES = tuple(
    np.dtype(t)
    for t in (
        np.bool_,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.float16,
        np.float32,
        np.float64,
        np.complex64,
        np.complex128,
    )
)


def as_dense(value: object, name: str) -> tuple[Tensor, bool]:
    """``(tensor, came_from_numpy)`` for a ``torch.Tensor`` or ``numpy.ndarray`` argument.

    The tensor is a dense (strided) tensor that holds values: sparse, nested and quantized tensors
    raise ``TypeError``, tensors on the ``meta`` device (which hold no values) ``ValueError``; NumPy
    arrays of a dtype torch cannot hold (``float128``, ``object``, strings, dates) raise
    ``TypeError``. Every message names the argument. NumPy arrays are viewed without copying where
    possible (read-only ones too: nothing is ever written to an input); non-native byte order and
    negative strides are copied. Tensors are detached (no gradient is ever tracked).

    >>> as_dense(torch.zeros(2, 3).to_sparse(), "probs")
    Traceback (most recent call last):
    ...
    TypeError: probs must be a dense tensor; got a torch.sparse_coo tensor (call .to_dense() first)
    """
    if isinstance(value, np.ndarray):
        if value.dtype.newbyteorder("=") not in _NUMPY_DTYPES:
            raise TypeError(
                f"{name} must be a numeric array (bool, integers, or floats of at most 64 bits); "
                f"got a numpy array of dtype {value.dtype}"
            )
        arr = value
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        if any(s < 0 for s in arr.strides):
            arr = np.ascontiguousarray(arr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "array is not writable": we only read it
            return torch.from_numpy(arr), True
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray; got {type(value).__name__}")
    if value.is_nested or value.layout != torch.strided:
        kind = "nested" if value.is_nested else str(value.layout)
        raise TypeError(f"{name} must be a dense tensor; got a {kind} tensor (call .to_dense() first)")
    if value.is_quantized:
        raise TypeError(f"{name} must not be quantized; got dtype {value.dtype} (call .dequantize() first)")
    if value.device.type == "meta":
        raise ValueError(
            f"{name} is on the 'meta' device, which holds no values; move it to a real device first"
        )
    return value.detach(), False  # a decision, not a differentiable function


def as_tensor(probs: object, name: str = "probs") -> tuple[Tensor, bool]:
    """Return ``(tensor, came_from_numpy)`` for a probability map after checking type, dtype and rank.

    Everything :func:`as_dense` checks, then: a floating dtype (float16, bfloat16, float32,
    float64) and shape ``(batch, classes, *spatial)`` with at least one class and one spatial dim.
    """
    if isinstance(probs, np.ndarray) and probs.dtype.newbyteorder("=") not in _NUMPY_FLOATS:
        raise TypeError(
            f"{name} must hold floating-point probabilities (float16, float32 or float64); "
            f"got a numpy array of dtype {probs.dtype}"
        )
    if not isinstance(probs, (np.ndarray, Tensor)):
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy.ndarray of shape (batch, classes, *spatial); "
            f"got {type(probs).__name__}"
        )
    tensor, from_numpy = as_dense(probs, name)
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
