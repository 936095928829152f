"""Shared by the integrations: output-field access, size parsing, and the RankSEG defaults."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._predictor import RankSEG

__all__ = ["as_float32", "bilinear", "field", "make_predictor", "parse_sizes", "resize_probabilities"]


def field(outputs: Any, name: str) -> Any:
    """``outputs.name`` for ModelOutput / dataclass / namespace objects, ``outputs[name]`` for mappings;
    ``None`` when absent."""
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return getattr(outputs, name, None)


def _pair(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, Tensor):
        value = value.tolist()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or not all(
            isinstance(v, numbers.Integral) or (isinstance(v, float) and v.is_integer()) for v in value
        )
    ):
        raise ValueError(f"{name} must hold (height, width) pairs of integers; got {value!r}")
    height, width = (int(v) for v in value)
    if height <= 0 or width <= 0:
        raise ValueError(f"{name} must hold positive (height, width) pairs; got {value!r}")
    return height, width


def parse_sizes(sizes: Any, batch: int, name: str) -> list[tuple[int, int]]:
    """Normalise one ``(height, width)`` per image: a ``(B, 2)`` tensor/array, a list of pairs, or,
    for a batch of one, a single pair. Raises ``ValueError`` naming ``name`` on any other form or
    when the number of pairs is not ``batch``.
    """
    if isinstance(sizes, (Tensor, np.ndarray)):
        array = sizes.detach().cpu().numpy() if isinstance(sizes, Tensor) else sizes
        if array.ndim == 1 and array.shape[0] == 2:
            pairs = [array.tolist()]
        elif array.ndim == 2 and array.shape[1] == 2:
            pairs = array.tolist()
        else:
            raise ValueError(f"{name} must have shape (batch, 2) or (2,); got shape {tuple(array.shape)}")
    elif isinstance(sizes, Sequence) and not isinstance(sizes, str):
        if len(sizes) == 2 and all(isinstance(v, numbers.Integral) for v in sizes):
            pairs = [list(sizes)]
        else:
            pairs = list(sizes)
    else:
        raise ValueError(
            f"{name} must be a (batch, 2) tensor or a list of (height, width) pairs; "
            f"got {type(sizes).__name__}"
        )
    parsed = [_pair(pair, name) for pair in pairs]
    if len(parsed) != batch:
        raise ValueError(
            f"{name} must give one (height, width) per image: {batch} expected, got {len(parsed)}"
        )
    return parsed


def make_predictor(rankseg_kwargs: Mapping[str, Any] | None, default_output_mode: str) -> RankSEG:
    """A RankSEG from the user's keyword arguments, with ``output_mode`` defaulted when absent."""
    if rankseg_kwargs is None:
        rankseg_kwargs = {}
    if not isinstance(rankseg_kwargs, Mapping):
        raise TypeError(
            f"rankseg_kwargs must be a dict of RankSEG arguments; got {type(rankseg_kwargs).__name__}"
        )
    kwargs = dict(rankseg_kwargs)
    kwargs.setdefault("output_mode", default_output_mode)
    return RankSEG(**kwargs)


def as_float32(tensor: Tensor) -> Tensor:
    """Restoration runs in float32 whatever the model's dtype (half logits resize less exactly)."""
    return tensor.to(torch.float32) if tensor.dtype != torch.float32 else tensor


def bilinear(maps: Tensor, size: tuple[int, int], antialias: bool = False) -> Tensor:
    """Bilinear resize of ``(N, C, h, w)`` maps with ``align_corners=False``, as every official
    transformers post-processor resizes."""
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False, antialias=antialias)


def resize_probabilities(probs: Tensor, size: tuple[int, int]) -> Tensor:
    """:func:`bilinear` in probability space (SAM3's order: sigmoid first, then resize), clamped
    to [0, 1]: interpolation weights can round a value of 1 a few ulps above it."""
    return bilinear(probs, size).clamp_(0.0, 1.0)
