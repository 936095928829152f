"""RankSEG as MONAI post-processing transforms, in place of ``AsDiscrete`` / ``AsDiscreted``.

Switching a MONAI pipeline from argmax (or a 0.5 threshold) to RankSEG is a one-line change::

    from monai.transforms import Activationsd, Compose, SaveImaged
    from rankseg.integration.monai import RankSEGd

    post = Compose([Activationsd(keys="pred", softmax=True), RankSEGd(keys="pred", metric="dice"),
                    SaveImaged(keys="pred", output_dir=out)])
    items = [post(item) for item in decollate_batch(batch)]

:class:`RankSEG` takes one channel-first item ``(C, *spatial)`` (MONAI's layout after
``decollate_batch``; 1 to 3 spatial dims), reads it as a batch of one and calls
:func:`rankseg.functional.rankseg` on it. The result follows ``AsDiscrete``'s conventions, so code
written for ``AsDiscrete`` (``DiceMetric``, one-hot handling, ``SaveImaged``) keeps working:

=====================================  ========================================  ===========================
RankSEG                                AsDiscrete it replaces                    output
=====================================  ========================================  ===========================
multiclass (default when C > 1)        ``AsDiscrete(argmax=True)``               ``(1, *spatial)`` labels
multiclass, ``to_onehot=N``            ``AsDiscrete(argmax=True, to_onehot=N)``  ``(N, *spatial)`` one-hot
multilabel (default when C == 1)       ``AsDiscrete(threshold=0.5)``             ``(C, *spatial)`` 0/1 masks
=====================================  ========================================  ===========================

Every output is a float32 ``MetaTensor`` carrying the input's meta dictionary
(affine included) and ``applied_operations``, on the input's device; a plain tensor or NumPy array
comes back as a ``MetaTensor`` too, and ``monai.data.set_track_meta(False)`` gives plain tensors,
exactly as ``AsDiscrete`` does. ``metric="acc"`` gives exactly ``AsDiscrete``'s values, a
probability of exactly 0.5 counting as foreground (``>=``) in multilabel mode.

Batches are refused: an item that is a batch (a ``MetaTensor`` with ``is_batch=True``, as
``sliding_window_inference`` returns for a collated batch, or any tensor with more than four
dimensions) raises a ``ValueError`` that says to ``decollate_batch`` first. A plain 4-D tensor is
read as one 3-D item ``(C, H, W, D)``; a batch of 2-D images ``(B, C, H, W)`` cannot be told apart
from it, so always decollate.

Needs the ``monai`` extra (``pip install "rankseg[monai]"``); ``import rankseg`` never imports MONAI.
Guide: ``docs/integration-monai.md``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from .._inputs import as_tensor
from .._options import DEFAULT_SOLVER, resolve_options
from ..functional import rankseg_resolved

try:
    from monai.config import KeysCollection
    from monai.data import MetaTensor
    from monai.data.meta_obj import get_track_meta
    from monai.transforms import MapTransform, Transform
    from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor
except ImportError as error:  # pragma: no cover - exercised in a subprocess that hides MONAI
    raise ImportError(
        'rankseg.integration.monai needs MONAI: pip install "rankseg[monai]" '
        f"(importing it failed with: {error})"
    ) from error

__all__ = ["RankSEG", "RankSEGd"]

_ACTIVATIONS = ("softmax", "sigmoid")
_MAX_SPATIAL_DIMS = 3


class RankSEG(Transform):
    r"""RankSEG masks of one channel-first item ``(C, *spatial)``, with ``AsDiscrete``'s conventions.

    The constructor stores its arguments exactly as given; they are checked when the transform
    runs. Each may be overridden for one call (``t(img, metric="iou")``); ``None`` in a call keeps
    the stored value. Options as in :func:`rankseg.functional.rankseg`.

    Args:
        metric: ``"dice"``, ``"iou"`` or ``"acc"``.
        solver: ``"RMA"`` (default), ``"exact"``, ``"BA"``, ``"TRNA"``, ``"BA+TRNA"``, ``"argmax"``, ``"TR"``.
        output_mode: ``"multiclass"``, ``"multilabel"``, or ``None``: multiclass when ``C > 1``,
            multilabel when ``C == 1``.
        smooth: smoothing constant of the metric (``>= 0``).
        pruning_prob: a class whose largest probability is not above this gets an empty mask.
        activation: ``None`` (the item holds probabilities), ``"softmax"`` (over channels) or
            ``"sigmoid"`` for logits; computed in float32 and cast back, as MONAI's
            ``Activations(softmax=True)`` / ``Activations(sigmoid=True)`` do.
        to_onehot: ``N >= C`` to give the multiclass labels as ``(N, *spatial)`` one-hot channels
            (``AsDiscrete(argmax=True, to_onehot=N)``); a void label outside ``[0, N)`` (see
            ``unassigned_policy``) is a pixel with every channel 0.
        **solver_params: ``unassigned_policy``, ``void_index``, ``eps``.

    Returns (from a call):
        float32 ``MetaTensor``: ``(1, *spatial)`` class labels (multiclass), ``(N, *spatial)``
        one-hot channels (``to_onehot=N``) or ``(C, *spatial)`` 0/1 masks (multilabel).

    Raises (from a call):
        TypeError: ``img`` is not a floating-point tensor or array, or an option has the wrong type.
        ValueError: ``img`` is not one item ``(C, *spatial)`` with 1 to 3 spatial dims (a batch:
            ``decollate_batch`` first), holds values outside [0, 1] without an ``activation``, or
            an option has a value that is not allowed.

    Example:
        >>> import torch
        >>> from rankseg.integration.monai import RankSEG
        >>> probs = torch.tensor([[[0.9, 0.6, 0.3, 0.2]], [[0.1, 0.4, 0.7, 0.8]]])  # (C=2, 1, 4)
        >>> RankSEG(metric="dice")(probs)
        metatensor([[[0., 0., 1., 1.]]])
        >>> RankSEG(metric="dice", to_onehot=3)(probs).shape
        torch.Size([3, 1, 4])
        >>> RankSEG(activation="sigmoid")(torch.tensor([[[-2.0, 0.0, 3.0]]]))  # one channel: multilabel
        metatensor([[[0., 1., 1.]]])
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.TORCH]

    def __init__(
        self,
        metric: str = "dice",
        solver: str = DEFAULT_SOLVER,
        output_mode: str | None = None,
        smooth: float = 0.0,
        pruning_prob: float = 0.5,
        activation: str | None = None,
        to_onehot: int | None = None,
        **solver_params: object,
    ) -> None:
        self.metric = metric
        self.solver = solver
        self.output_mode = output_mode
        self.smooth = smooth
        self.pruning_prob = pruning_prob
        self.activation = activation
        self.to_onehot = to_onehot
        self.solver_params = dict(solver_params)

    def __call__(
        self,
        img: Tensor | np.ndarray,
        metric: str | None = None,
        solver: str | None = None,
        output_mode: str | None = None,
        smooth: float | None = None,
        pruning_prob: float | None = None,
        activation: str | None = None,
        to_onehot: int | None = None,
        **solver_params: object,
    ) -> Tensor:
        """Masks of one item ``img`` of shape ``(C, *spatial)``; keyword arguments override stored options."""
        item = _check_item(img)
        classes = item.shape[0]
        output_mode = _pick(output_mode, self.output_mode)
        if output_mode is None:
            output_mode = "multiclass" if classes > 1 else "multilabel"
        options = resolve_options(
            metric=_pick(metric, self.metric),
            smooth=_pick(smooth, self.smooth),
            output_mode=output_mode,
            solver=_pick(solver, self.solver),
            pruning_prob=_pick(pruning_prob, self.pruning_prob),
            **{**self.solver_params, **solver_params},
        )
        if options.output_mode == "multiclass" and classes == 1:
            raise ValueError(
                "output_mode='multiclass' needs at least two channels; got img of shape "
                f"{tuple(item.shape)}. Use output_mode='multilabel' (or None) for one foreground channel."
            )
        onehot = _check_onehot(_pick(to_onehot, self.to_onehot), options.output_mode, classes)
        probs = _probabilities(item, _check_activation(_pick(activation, self.activation)))

        masks = rankseg_resolved(probs[None], options)[0]
        if options.output_mode == "multilabel":
            if options.metric == "acc":  # AsDiscrete(threshold=0.5) is `>=`; the core's 0.5 threshold is `>`
                masks = masks | (probs == 0.5)
            out = masks
        elif onehot is None:
            out = masks[None]  # (1, *spatial), as AsDiscrete(argmax=True) keeps the channel dim
        else:
            channels = torch.arange(onehot, device=masks.device).view(onehot, *([1] * masks.dim()))
            out = masks[None] == channels
        out = out.to(torch.float32)
        converted = convert_to_tensor(img, track_meta=get_track_meta())
        return convert_to_dst_type(out, converted, dtype=torch.float32)[0]

    def __repr__(self) -> str:
        args = [
            f"metric={self.metric!r}",
            f"solver={self.solver!r}",
            f"output_mode={self.output_mode!r}",
            f"smooth={self.smooth!r}",
            f"pruning_prob={self.pruning_prob!r}",
            f"activation={self.activation!r}",
            f"to_onehot={self.to_onehot!r}",
        ] + [f"{key}={value!r}" for key, value in self.solver_params.items()]
        return f"RankSEG({', '.join(args)})"


class RankSEGd(MapTransform):
    """Dictionary version of :class:`RankSEG`, as ``AsDiscreted`` is of ``AsDiscrete``.

    Every option (solver parameters included) is either one value for all ``keys`` or a sequence
    with one value per key. The input dictionary is not modified: a new one is returned with each
    key's item replaced by its masks.

    Args:
        keys: the keys of the items to transform (``monai.config.KeysCollection``).
        allow_missing_keys: skip a key that is absent instead of raising ``KeyError``.
        metric, solver, output_mode, smooth, pruning_prob, activation, to_onehot, **solver_params:
            as for :class:`RankSEG`, one value or one per key.

    Example:
        >>> import torch
        >>> from rankseg.integration.monai import RankSEGd
        >>> data = {"pred": torch.tensor([[[0.9, 0.6, 0.3]], [[0.1, 0.4, 0.7]]]),  # (C=2, 1, 3)
        ...         "mask": torch.tensor([[[0.2, 0.5, 0.7]]])}                      # (C=1, 1, 3)
        >>> out = RankSEGd(keys=["pred", "mask"], metric=["dice", "acc"])(data)
        >>> out["pred"].tolist(), out["mask"].tolist()
        ([[[0.0, 0.0, 1.0]]], [[[0.0, 1.0, 1.0]]])
    """

    backend = RankSEG.backend

    def __init__(
        self,
        keys: KeysCollection,
        metric: Sequence[str] | str = "dice",
        solver: Sequence[str] | str = DEFAULT_SOLVER,
        output_mode: Sequence[str | None] | str | None = None,
        smooth: Sequence[float] | float = 0.0,
        pruning_prob: Sequence[float] | float = 0.5,
        activation: Sequence[str | None] | str | None = None,
        to_onehot: Sequence[int | None] | int | None = None,
        allow_missing_keys: bool = False,
        **solver_params: object,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.metric = metric
        self.solver = solver
        self.output_mode = output_mode
        self.smooth = smooth
        self.pruning_prob = pruning_prob
        self.activation = activation
        self.to_onehot = to_onehot
        self.solver_params = dict(solver_params)
        self.transform = RankSEG()
        self._per_key_options()  # a sequence of the wrong length is a mistake in the pipeline: say so now

    def _per_key_options(self) -> list[dict[str, Any]]:
        names = ("metric", "solver", "output_mode", "smooth", "pruning_prob", "activation", "to_onehot")
        given = {name: getattr(self, name) for name in names} | self.solver_params
        columns = {name: _per_key(name, value, len(self.keys)) for name, value in given.items()}
        return [{name: column[k] for name, column in columns.items()} for k in range(len(self.keys))]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, options in self.key_iterator(d, self._per_key_options()):
            d[key] = self.transform(d[key], **options)
        return d


def _pick(value: Any, stored: Any) -> Any:
    """A per-call override: ``None`` keeps the stored option."""
    return stored if value is None else value


def _per_key(name: str, value: Any, count: int) -> tuple[Any, ...]:
    """One value per key: a scalar repeated, or a sequence (not a string) of exactly ``count`` values."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != count:
            raise ValueError(
                f"{name} must be one value or a sequence with one value per key ({count} keys); "
                f"got {value!r} ({len(value)} values)"
            )
        return tuple(value)
    return (value,) * count


def _check_item(img: object) -> Tensor:
    """The plain-tensor view of one channel-first item; refuses batches with a pointer to decollate."""
    if not isinstance(img, (Tensor, np.ndarray)):
        raise TypeError(
            f"img must be a torch.Tensor, MetaTensor or numpy.ndarray of shape (C, *spatial); "
            f"got {type(img).__name__}"
        )
    shape = tuple(img.shape)
    if (isinstance(img, MetaTensor) and img.is_batch) or len(shape) > _MAX_SPATIAL_DIMS + 1:
        raise ValueError(
            f"img must be one channel-first item (C, *spatial) with 1 to {_MAX_SPATIAL_DIMS} spatial dims; "
            f"got a batch of shape {shape}. Split it with monai.data.decollate_batch first and "
            "transform each item (as for AsDiscrete)."
        )
    if len(shape) < 2:
        raise ValueError(
            f"img must be one channel-first item (C, *spatial) with 1 to {_MAX_SPATIAL_DIMS} spatial dims; "
            f"got shape {shape}"
        )
    if shape[0] == 0:
        raise ValueError(f"img must have at least one channel; got shape {shape}")
    plain = img.as_tensor() if isinstance(img, MetaTensor) else img
    batch, _ = as_tensor(plain[None], name="img")  # the core's checks: dtype; views of NumPy arrays
    return batch[0]


def _check_activation(activation: object) -> str | None:
    if activation is None:
        return None
    if not isinstance(activation, str):
        raise TypeError(
            f"activation must be None, 'softmax' or 'sigmoid'; got {activation!r} "
            f"({type(activation).__name__})"
        )
    key = "".join(activation.split()).lower()
    if key not in _ACTIVATIONS:
        raise ValueError(f"activation must be None, 'softmax' or 'sigmoid'; got {activation!r}")
    return key


def _check_onehot(to_onehot: object, output_mode: str, classes: int) -> int | None:
    if to_onehot is None:
        return None
    if isinstance(to_onehot, bool) or not isinstance(to_onehot, numbers.Integral):
        raise TypeError(
            f"to_onehot must be None or a number of classes (int); got {to_onehot!r} "
            f"({type(to_onehot).__name__})"
        )
    if output_mode != "multiclass":
        raise ValueError(
            f"to_onehot={to_onehot!r} applies to multiclass output (a label map); output_mode="
            f"{output_mode!r} already gives one 0/1 channel per class. Use to_onehot=None, or "
            "output_mode='multiclass' with two or more channels."
        )
    if to_onehot < classes:
        raise ValueError(
            f"to_onehot must be at least the number of channels ({classes}) so that every label has "
            f"a channel; got {to_onehot!r}"
        )
    return int(to_onehot)


def _probabilities(item: Tensor, activation: str | None) -> Tensor:
    """Probabilities of the item: the activation in float32 cast back to the item's dtype (MONAI's
    ``Activations``), then checked to lie in [0, 1]."""
    if activation == "softmax":
        probs = torch.softmax(item.to(torch.float32), dim=0).to(item.dtype)
    elif activation == "sigmoid":
        probs = torch.sigmoid(item.to(torch.float32)).to(item.dtype)
    else:
        probs = item
    if probs.numel() > 0:
        lo, hi = torch.stack([probs.amin(), probs.amax()]).tolist()  # one sync; NaN propagates
        if not (lo >= 0 and hi <= 1):
            if not (math.isfinite(lo) and math.isfinite(hi)):
                after = f" after activation={activation!r}" if activation is not None else ""
                raise ValueError(f"img must be finite; it contains NaN or infinite values{after}")
            raise ValueError(
                f"img must hold probabilities in [0, 1]; got values from {lo:.6g} to {hi:.6g}. "
                "For logits pass activation='softmax' (several channels) or 'sigmoid'."
            )
    return probs
