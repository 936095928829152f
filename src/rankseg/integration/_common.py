"""Shared by the integrations: output-field access and checks, size parsing, the restoration dtype,
resizing, temperature scaling of the logits (``calibration=``), and RankSEG on restored maps."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._inputs import as_dense
from .._options import resolve_options
from .._predictor import RankSEG
from ..calibration import TemperatureScaling, resolve_calibration

__all__ = [
    "MAX_PIXELS",
    "bilinear",
    "check_magnitude",
    "check_pixels",
    "check_readable",
    "divide_logits",
    "field",
    "float_field",
    "make_predictor",
    "mask_calibration",
    "parse_sizes",
    "predict",
    "resize_probabilities",
    "restoration_dtype",
]

#: Most pixels one ``(height, width)`` may hold: torch's CUDA bilinear resize indexes the output
#: pixels of a map with a 32-bit ``int`` (``upsample_bilinear2d_out_frame``), so 2**31 - 1.
MAX_PIXELS = 2**31 - 1


def field(outputs: Any, name: str) -> Any:
    """``outputs.name`` for ModelOutput / dataclass / namespace objects, ``outputs[name]`` for mappings;
    ``None`` when absent."""
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return getattr(outputs, name, None)


def check_readable(tensor: Tensor, name: str) -> Tensor:
    """Refuse tensors whose values cannot be read as a dense array (the core's one check,
    :func:`rankseg._inputs.as_dense`): sparse, nested or quantized layouts (``TypeError``) and the
    ``meta`` device, which holds shapes but no values (``ValueError``), naming ``name``."""
    return as_dense(tensor, name)[0]


def float_field(outputs: Any, name: str, dims: tuple[str, ...], required: bool = True) -> Tensor | None:
    """The floating-point tensor ``outputs.name`` with the named ``dims``, checked before use.

    Raises, naming ``outputs.name``: ``ValueError`` when it is missing (and ``required``), on the
    meta device, of the wrong rank, with an empty ``(height, width)``, holding NaN/inf (such
    values give no probabilities) or values beyond a quarter of the restoration dtype's largest
    float (a bilinear resize of such values can round to inf, and softmax then gives NaN);
    ``TypeError`` when it is not a floating tensor or is sparse. Returns ``None`` for a missing
    optional field.
    """
    layout = f"({', '.join(dims)})"
    value = field(outputs, name)
    if value is None:
        if required:
            raise ValueError(
                f"outputs.{name} is required, of shape {layout}; got outputs ({type(outputs).__name__}) "
                "without it"
            )
        return None
    if not isinstance(value, Tensor) or not value.is_floating_point():
        kind = f"a {value.dtype} tensor" if isinstance(value, Tensor) else type(value).__name__
        raise TypeError(f"outputs.{name} must be a floating-point torch.Tensor of shape {layout}; got {kind}")
    check_readable(value, f"outputs.{name}")
    if value.dim() != len(dims):
        raise ValueError(f"outputs.{name} must have shape {layout}; got shape {tuple(value.shape)}")
    if dims[-2:] == ("height", "width") and 0 in value.shape[-2:]:
        raise ValueError(
            f"outputs.{name} has shape {tuple(value.shape)}: its (height, width) is empty, there is no map "
            "to resize"
        )
    if value.numel() > 0:
        check_magnitude(value, f"outputs.{name}")
    return value


def check_magnitude(value: Tensor, name: str) -> None:
    """One reduction: the largest magnitude, NaN if any value is NaN."""
    peak = float(torch.linalg.vector_norm(value, ord=float("inf")))
    if not math.isfinite(peak):
        bad = int(value.numel() - torch.isfinite(value).sum())
        raise ValueError(
            f"{name} holds {bad} NaN or infinite value(s) among {value.numel()}; they give no "
            "probabilities. Check the model (e.g. float16 overflow) or replace them, e.g. with "
            "torch.nan_to_num"
        )
    dtype = restoration_dtype(value)
    limit = torch.finfo(dtype).max / 4
    if peak > limit:
        raise ValueError(
            f"{name} holds values up to {peak:.3g}, too close to the largest {dtype} to be resized "
            f"without overflow (at most {limit:.3g}); such logits are overflow artefacts: check the model"
        )


def restoration_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 when any input is float64 (the official post-processing keeps the model's float64,
    so near-ties decide as there), float32 otherwise (half-precision resizes are less exact)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _pair(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, Tensor):
        value = check_readable(value, name).tolist()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, Sequence) and any(isinstance(v, (bool, np.bool_)) for v in value):
        raise ValueError(f"{name} must hold (height, width) pairs of integers, not bool; got {value!r}")
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
    check_pixels((height, width), name)
    return height, width


def check_pixels(size: tuple[int, int], name: str) -> None:
    """Refuse a ``(height, width)`` of more than :data:`MAX_PIXELS` pixels, before any allocation."""
    height, width = size
    if height * width > MAX_PIXELS:
        raise ValueError(
            f"{name} holds ({height}, {width}), {height * width} pixels; at most 2**31 - 1 = {MAX_PIXELS} "
            "pixels per image are supported (torch's bilinear resize on CUDA indexes pixels with 32-bit "
            "integers)"
        )


def parse_sizes(sizes: Any, batch: int, name: str) -> list[tuple[int, int]]:
    """Normalise one ``(height, width)`` per image: a ``(B, 2)`` tensor/array, a list of pairs, or,
    for a batch of one, a single pair. Raises ``ValueError`` naming ``name`` on any other form, on
    bool entries, on sizes over :data:`MAX_PIXELS` pixels or when the number of pairs is not
    ``batch``; ``TypeError`` / ``ValueError`` for sparse / meta tensors.
    """
    if isinstance(sizes, (Tensor, np.ndarray)):
        if isinstance(sizes, Tensor):
            array = check_readable(sizes, name).detach().cpu().numpy()
        else:
            array = sizes
        if array.ndim == 1 and array.shape[0] == 2:
            pairs = [array.tolist()]
        elif array.ndim == 2 and array.shape[1] == 2:
            pairs = array.tolist()
        else:
            raise ValueError(f"{name} must have shape (batch, 2) or (2,); got shape {tuple(array.shape)}")
    elif isinstance(sizes, Sequence) and not isinstance(sizes, str):
        if len(sizes) == 2 and all(isinstance(v, (numbers.Integral, np.bool_)) for v in sizes):
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


def kwargs_dict(rankseg_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of the user's ``rankseg_kwargs`` (``None`` is no arguments); ``TypeError`` if not a mapping."""
    if rankseg_kwargs is None:
        return {}
    if not isinstance(rankseg_kwargs, Mapping):
        raise TypeError(
            f"rankseg_kwargs must be a dict of RankSEG arguments; got {type(rankseg_kwargs).__name__}"
        )
    return dict(rankseg_kwargs)


def make_predictor(rankseg_kwargs: Mapping[str, Any] | None, default_output_mode: str) -> RankSEG:
    """A RankSEG from the user's keyword arguments, with ``output_mode`` defaulted when absent.

    The arguments are checked here, so that invalid ones are refused even when there is nothing to
    decide (an empty batch); warnings (a solver that falls back) are left to the call that decides.
    """
    kwargs = kwargs_dict(rankseg_kwargs)
    kwargs.setdefault("output_mode", default_output_mode)
    predictor = RankSEG(**kwargs)
    _options(predictor)
    return predictor


def _options(predictor: RankSEG) -> Any:
    """The predictor's checked options (``TypeError`` / ``ValueError`` naming a bad one), quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return resolve_options(
            predictor.metric,
            predictor.smooth,
            predictor.output_mode,
            predictor.solver,
            predictor.pruning_prob,
            **predictor.solver_params,
        )


def predict(predictor: RankSEG, probs: Tensor, channels: str) -> Tensor:
    """``predictor(probs)`` for restored ``(N, C, H, W)`` probabilities.

    With no channel (``C == 0``: no class, no mask per prompt) the result is empty: multilabel
    output gives bool ``(N, 0, H, W)``; multiclass output, which labels every pixel with a channel,
    is refused with a ``ValueError`` that says which ``channels`` (an output field) are missing.
    """
    if probs.shape[1] > 0:
        return predictor(probs)
    if _options(predictor).output_mode == "multiclass":
        raise ValueError(
            f"{channels}: output_mode='multiclass' labels every pixel with one of them, and there is none. "
            "Use output_mode='multilabel' (an empty mask set)"
        )
    return torch.zeros(probs.shape, dtype=torch.bool, device=probs.device)


def bilinear(maps: Tensor, size: tuple[int, int], antialias: bool = False) -> Tensor:
    """Bilinear resize of ``(N, C, h, w)`` maps with ``align_corners=False``, as every official
    transformers post-processor resizes. Maps with ``N == 0`` or ``C == 0`` give the empty
    ``(N, C, *size)`` (torch's resize refuses them)."""
    if maps.shape[0] == 0 or maps.shape[1] == 0:
        return maps.new_zeros((*maps.shape[:2], *size))
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False, antialias=antialias)


def resize_probabilities(probs: Tensor, size: tuple[int, int]) -> Tensor:
    """:func:`bilinear` in probability space (SAM3's order: sigmoid first, then resize), clamped
    to [0, 1]: interpolation weights can round a value of 1 a few ulps above it."""
    return bilinear(probs, size).clamp_(0.0, 1.0)


def mask_calibration(calibration: Any, adapter: str) -> TemperatureScaling | None:
    """The fitted sigmoid :class:`~rankseg.calibration.TemperatureScaling` of a SAM adapter's
    ``calibration=`` (``None`` for none), refusing a per-class one by name: mask logits have one
    channel per prompt or object, not per class, so only a global temperature has a meaning there."""
    scaler = resolve_calibration(calibration, activation="sigmoid", name=f"{adapter} calibration")
    if scaler is not None and scaler.temperature_.dim() == 1:
        raise ValueError(
            f"{adapter} calibration must be a global temperature: SAM mask logits have one channel per "
            f"prompt or object, not per class, but this calibration holds {scaler.temperature_.numel()} "
            "per-class temperatures (per_class=True); fit TemperatureScaling('sigmoid') with "
            "per_class=False on the mask logits"
        )
    return scaler


def divide_logits(logits: Tensor, scaler: TemperatureScaling | None, name: str, dim: int = 1) -> Tensor:
    """``logits / T`` (``scaler.scale_logits``) for float32/float64 ``logits``; unchanged without a
    scaler. Division by ``T = 1`` is exact, so a unit temperature changes no bit. A per-class ``T``
    must have one value per channel along ``dim`` (``ValueError`` naming ``name`` otherwise)."""
    if scaler is None:
        return logits
    temperature = scaler.temperature_
    if temperature.dim() == 1 and logits.shape[dim] != temperature.numel():
        raise ValueError(
            f"calibration holds per-class temperatures for {temperature.numel()} classes but {name} has "
            f"{logits.shape[dim]} class channels (shape {tuple(logits.shape)}); fit the calibration on "
            "this model's logits"
        )
    return scaler.scale_logits(logits, dim=dim)
