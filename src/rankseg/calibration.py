r"""Temperature scaling: recalibrate a model's logits on labelled validation data.

RankSEG chooses the masks that maximise the expected Dice or IoU *under the model's
probabilities*. That choice is optimal for the real labels only when the probabilities are
calibrated (the labels behave as if drawn from them); trained networks rarely are, and RankSEG on
miscalibrated probabilities can fall below argmax (``docs/calibration.md``). Temperature scaling
(Guo et al., ICML 2017) divides the logits by a temperature ``T`` fitted on validation data by
minimising the negative log-likelihood (NLL) of the labels. With ``beta = 1 / T`` (one value, or
one per class with ``per_class=True``), logits ``z`` and labels ``y``:

    softmax:  p_ic = softmax_c(beta_c z_ic),  NLL(beta) = sum_i [logsumexp_c(beta_c z_ic) - beta_y z_iy]
    sigmoid:  p_ic = sigmoid(beta_c z_ic),    NLL(beta) = sum_(i,c) softplus(-beta_c s_ic),
              s_ic = (2 y_ic - 1) z_ic  (the signed logit)

over the labelled pixels ``i`` (``y != ignore_index``). Both are log-sum-exps of linear functions
of ``beta``, hence convex in ``beta``; the fit is the root of the gradient

    softmax:  dNLL/dbeta_c = sum_i z_ic (p_ic - [y_i = c])      (global: sum_i (E_p[z_i] - z_iy))
    sigmoid:  dNLL/dbeta_c = -sum_i s_ic sigmoid(-beta_c s_ic)

found in float64 by a safeguarded Newton iteration (bracketed, with bisection fallback, for one
value or independent per-class values; damped Newton with a line search for the coupled per-class
softmax). It is deterministic and exact to ~1e-10 relative; the same data in one tensor or in any
batching gives the same temperature up to float64 summation order.

Each Newton step needs one pass over the validation data, so :meth:`TemperatureScaling.fit`
reads its input several times (typically 5 to 10). A tensor or array is simply re-read; batches
come from a *re-iterable* (a list, a tuple, a ``torch.utils.data.DataLoader``, any object whose
``__iter__`` starts afresh) or from a function that returns a new iterable on each call; a one-shot
iterator (a generator) is refused, since it cannot be read twice.

The minimiser is finite and positive when the logits predict the labels better than chance
(``dNLL/dbeta < 0`` at ``beta = 0``) and do not separate them perfectly (``dNLL/dbeta > 0`` as
``beta -> inf``); both are checked in the first pass, and a failure is reported by name.
"""

from __future__ import annotations

import collections.abc
import json
import math
import numbers
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["NotFittedError", "TemperatureScaling", "resolve_calibration"]

Activation = Literal["softmax", "sigmoid"]

_ACTIVATIONS = ("softmax", "sigmoid")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_CHUNK_ELEMENTS = 1 << 21  # float64 work arrays of (images, classes, pixels) stay ~16 MiB each
_MAX_PASSES = 100
_STEP_TOL = 1e-10  # relative Newton step at which beta has converged
_FORMAT = "rankseg.TemperatureScaling"
_VERSION = 1


class NotFittedError(ValueError, AttributeError):
    """A :class:`TemperatureScaling` was used before :meth:`~TemperatureScaling.fit` or loading."""


class _Config(NamedTuple):
    activation: str
    per_class: bool
    ignore_index: int | None
    subsample: float | None
    seed: int


class _PassStats(NamedTuple):
    """Sums over the labelled pixels of one pass at ``beta`` (float64, CPU).

    ``nll``: the NLL; ``grad``: ``(K,)``; ``curv``: ``(K,)`` second derivatives, or the ``(C, C)``
    Hessian for the per-class softmax; ``labelled``: labelled pixels (softmax) or (pixel, class)
    elements (sigmoid); ``batches``: batches read. First pass only: ``count``, ``labelled`` per
    class; ``grad_zero`` / ``grad_inf``: the gradient at ``beta = 0`` and its limit as ``beta ->
    inf``. Per-class softmax only: ``misranked``, the labelled pixels where another class's scaled
    logit is above the label's.
    """

    nll: float
    grad: Tensor
    curv: Tensor
    labelled: int
    batches: int
    count: Tensor | None
    grad_zero: Tensor | None
    grad_inf: Tensor | None
    misranked: int | None


class TemperatureScaling:
    r"""Temperature scaling of a segmentation model's logits, fitted on labelled validation data.

    ``p = softmax(z / T)`` over the class axis (``activation="softmax"``), or
    ``p = sigmoid(z / T)`` per class (``activation="sigmoid"``: multilabel and one-channel
    models); ``T`` is one positive number, or one per class with ``per_class=True``. :meth:`fit`
    minimises the NLL of the labels, which is convex in ``1 / T``, exactly and deterministically
    (see the module docstring). Like scikit-learn estimators, the constructor stores its arguments
    as given; they are checked when :meth:`fit` runs.

    Args:
        activation: ``"softmax"`` (labels are class indices) or ``"sigmoid"`` (labels are 0/1 per class).
        per_class: one temperature per class channel instead of one for all (softmax: each pass
            then also builds the ``C x C`` Hessian, ``O(C^2)`` work per pixel).
        ignore_index: label value of unlabelled pixels (e.g. 255), left out of the fit.
        subsample: fraction in ``(0, 1]`` of pixel positions used by :meth:`fit` (``None``: all).
            The kept positions are drawn once per spatial shape from ``seed`` and are the same in
            every image, so the fit does not depend on batch sizes or order.
        seed: seed of the subsample.

    Attributes:
        temperature_: set by :meth:`fit` or :meth:`load`, like the others below: a float64 CPU
            tensor, a scalar or ``(C,)`` with ``per_class=True``.
        num_classes_: the number of class channels of the fitted logits (``None`` for a state
            loaded without it).
        n_pixels_: labelled pixels used (sigmoid: labelled (pixel, class) elements).
        nll_before_: mean NLL per labelled pixel (element) at ``T = 1``.
        nll_after_: mean NLL per labelled pixel (element) at the fitted temperature.
        n_passes_: passes over the data the fit made.

    Example:
        >>> import torch
        >>> from rankseg.calibration import TemperatureScaling
        >>> from rankseg.data import sample_labels
        >>> true_logits = 4 * torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        >>> labels = sample_labels(torch.softmax(true_logits, dim=1), seed=0)   # (8, 32, 32)
        >>> logits = 2.5 * true_logits                                         # an over-confident model
        >>> scaler = TemperatureScaling().fit(logits, labels)
        >>> round(float(scaler.temperature_), 1)
        2.5
        >>> probs = scaler.transform(logits)            # (8, 3, 32, 32), ready for RankSEG
        >>> probs.shape, probs.dtype
        (torch.Size([8, 3, 32, 32]), torch.float32)
    """

    def __init__(
        self,
        activation: Activation = "softmax",
        per_class: bool = False,
        ignore_index: int | None = None,
        *,
        subsample: float | None = None,
        seed: int = 0,
    ) -> None:
        self.activation = activation
        self.per_class = per_class
        self.ignore_index = ignore_index
        self.subsample = subsample
        self.seed = seed
        self._fitted: dict[str, Any] | None = None

    # ------------------------------------------------------------------ fitted state

    @property
    def temperature_(self) -> Tensor:
        """The fitted temperature: a float64 CPU scalar tensor, or ``(C,)`` per class."""
        return self._require_fitted()["temperature"].clone()

    @property
    def num_classes_(self) -> int | None:
        """Class channels of the fitted logits (``None`` for a state loaded without it)."""
        return self._require_fitted()["num_classes"]

    @property
    def n_pixels_(self) -> int:
        """Labelled pixels the fit used (sigmoid: labelled (pixel, class) elements)."""
        return self._require_fitted()["n_pixels"]

    @property
    def nll_before_(self) -> float:
        """Mean NLL per labelled pixel (element) of the validation data at ``T = 1``."""
        return self._require_fitted()["nll_before"]

    @property
    def nll_after_(self) -> float:
        """Mean NLL per labelled pixel (element) at the fitted temperature."""
        return self._require_fitted()["nll_after"]

    @property
    def n_passes_(self) -> int:
        """Passes over the validation data the fit made."""
        return self._require_fitted()["n_passes"]

    def _require_fitted(self) -> dict[str, Any]:
        if self._fitted is None:
            raise NotFittedError(
                "this TemperatureScaling is not fitted yet: call .fit(logits, labels) on validation data, "
                "or TemperatureScaling.load(path) / .load_state_dict(state) first"
            )
        return self._fitted

    # ------------------------------------------------------------------ fit

    def fit(
        self,
        logits: Tensor | np.ndarray | Iterable[Any] | Callable[[], Iterable[Any]],
        labels: Tensor | np.ndarray | Iterable[Any] | None = None,
    ) -> TemperatureScaling:
        """Fit the temperature that minimises the NLL of ``labels`` under ``logits / T``.

        Args:
            logits: ``(B, C, *spatial)`` logits (before softmax / sigmoid), a tensor on any device
                or an array, float16 / bfloat16 / float32 / float64; or, with ``labels=None``,
                the batches: a re-iterable of ``(logits, labels)`` pairs (a list, a DataLoader...)
                or a function returning a fresh iterable of them; or a re-iterable of logits
                batches matched with a re-iterable ``labels``. Never modified.
            labels: softmax: class indices ``(B, *spatial)`` (any integer dtype), values in
                ``[0, C)`` or ``ignore_index``. sigmoid: ``(B, C, *spatial)`` bool or 0/1 integers
                (or ``ignore_index``); ``(B, *spatial)`` is accepted for one channel.

        Returns:
            ``self``, with :attr:`temperature_` and the other fitted attributes set.

        Raises:
            TypeError: a wrong type (non-float logits, float labels, a one-shot generator of batches...).
            ValueError: shape mismatch, NaN / infinite logits, probabilities passed as logits, labels
                outside the classes, no labelled pixel, one channel with ``activation="softmax"``,
                logits that carry no information about the labels or separate them perfectly.
        """
        config = _check_config(self.activation, self.per_class, self.ignore_index, self.subsample, self.seed)
        data = _ValidationData(_batch_source(logits, labels), config)
        beta, first, last, passes = _solve(data)
        temperature = 1.0 / beta
        self._fitted = {
            "activation": config.activation,
            "temperature": temperature if config.per_class else temperature.reshape(()),
            "num_classes": data.num_classes,
            "n_pixels": first.labelled,
            "nll_before": first.nll / first.labelled,
            "nll_after": last.nll / first.labelled,
            "n_passes": passes,
        }
        return self

    # ------------------------------------------------------------------ apply

    def scale_logits(self, logits: Tensor | np.ndarray, dim: int = 1) -> Tensor | np.ndarray:
        """``logits / T``, with a per-class ``T`` broadcast along the class axis ``dim``.

        Same shape, dtype and device as ``logits`` (float16 / bfloat16 are divided in float32 and
        rounded once); a NumPy array for an array. Any rank: e.g. SAM's ``(B, P, M, H, W)`` mask
        logits with ``dim=2``. A global ``T`` applies to any number of channels; a per-class ``T``
        needs ``num_classes_`` channels on ``dim``. The values are not inspected (no device sync).

        Example:
            >>> import torch
            >>> state = {"format": "rankseg.TemperatureScaling", "version": 1, "temperature": 2.0}
            >>> scaler = TemperatureScaling().load_state_dict(state)
            >>> scaler.scale_logits(torch.tensor([[[4.0], [2.0], [-1.0]]]))
            tensor([[[ 2.0000],
                     [ 1.0000],
                     [-0.5000]]])
        """
        tensor, from_numpy = _float_tensor(logits, "logits")
        scaled = self._divided(tensor, dim).to(tensor.dtype)
        return scaled.cpu().numpy() if from_numpy else scaled

    def _divided(self, tensor: Tensor, dim: int) -> Tensor:
        """``tensor / T`` along ``dim``, in float32 for half-precision input (not rounded back)."""
        temperature = self._require_fitted()["temperature"]
        if tensor.dim() == 0:
            raise ValueError("logits must have a class axis; got a 0-d tensor")
        axis = _class_axis(dim, tensor.dim())
        if temperature.dim() == 1 and tensor.shape[axis] != temperature.numel():
            raise ValueError(
                f"the per-class temperature has {temperature.numel()} classes but logits of shape "
                f"{tuple(tensor.shape)} have {tensor.shape[axis]} along dim={dim}"
            )
        work = tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()
        shape = [1] * tensor.dim()
        shape[axis] = temperature.numel()
        return work / temperature.to(device=tensor.device, dtype=work.dtype).reshape(shape)

    def transform(self, logits: Tensor | np.ndarray, dim: int = 1) -> Tensor | np.ndarray:
        """Calibrated probabilities ``softmax(logits / T)`` over ``dim`` (or ``sigmoid(logits / T)``).

        ``logits``: ``(B, C, *spatial)`` (class axis ``dim``); returns probabilities of the same
        shape, dtype, device and array type, ready for :class:`rankseg.RankSEG`.

        Example:
            >>> import torch
            >>> scaler = TemperatureScaling("sigmoid").load_state_dict(
            ...     {"format": "rankseg.TemperatureScaling", "version": 1, "activation": "sigmoid",
            ...      "temperature": 2.0, "num_classes": 1})
            >>> scaler.transform(torch.tensor([[[0.0, 4.0]]]))   # sigmoid(0 / 2), sigmoid(4 / 2)
            tensor([[[0.5000, 0.8808]]])
        """
        activation = self._require_fitted()["activation"]
        tensor, from_numpy = _float_tensor(logits, "logits")
        axis = _class_axis(dim, tensor.dim()) if tensor.dim() else 0
        if activation == "softmax" and (tensor.dim() == 0 or tensor.shape[axis] < 2):
            raise ValueError(_one_channel_message(tuple(tensor.shape)))
        scaled = self._divided(tensor, dim)
        probs = scaled.softmax(dim=axis) if activation == "softmax" else scaled.sigmoid()
        probs = probs.to(tensor.dtype)
        return probs.cpu().numpy() if from_numpy else probs

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict of the arguments and the fitted temperature (``None`` when unfitted).

        Example:
            >>> TemperatureScaling(per_class=True).state_dict()["temperature"] is None
            True
        """
        state: dict[str, Any] = {
            "format": _FORMAT,
            "version": _VERSION,
            "activation": self.activation,
            "per_class": self.per_class,
            "ignore_index": self.ignore_index,
            "subsample": self.subsample,
            "seed": self.seed,
            "temperature": None,
        }
        if self._fitted is not None:  # the arguments the temperature was fitted with
            state["activation"] = self._fitted["activation"]
            state["per_class"] = self._fitted["temperature"].dim() == 1
            state["temperature"] = self._fitted["temperature"].tolist()
            for key in ("num_classes", "n_pixels", "nll_before", "nll_after", "n_passes"):
                state[key] = self._fitted[key]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> TemperatureScaling:
        """Restore the arguments and temperature of :meth:`state_dict`; returns ``self``.

        Only ``format``, ``version`` and ``temperature`` are required (``num_classes`` as well for
        a per-class temperature); missing arguments take their defaults. A float is a global
        temperature, a list one per class.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping (from state_dict()); got {type(state).__name__}")
        if state.get("format") != _FORMAT:
            raise ValueError(f"state is not a {_FORMAT} state: its 'format' is {state.get('format')!r}")
        if state.get("version") != _VERSION:
            raise ValueError(
                f"state has version {state.get('version')!r}; this rankseg reads version {_VERSION}"
            )
        known = {"format", "version", "activation", "per_class", "ignore_index", "subsample", "seed"}
        known |= {"temperature", "num_classes", "n_pixels", "nll_before", "nll_after", "n_passes"}
        unknown = sorted(set(state) - known)
        if unknown:
            raise ValueError(f"state has unknown keys {unknown}; allowed: {sorted(known)}")
        config = _check_config(
            state.get("activation", "softmax"),
            state.get("per_class", False),
            state.get("ignore_index"),
            state.get("subsample"),
            state.get("seed", 0),
        )
        fitted = None if state.get("temperature") is None else _check_fitted_state(state, config)
        self.activation, self.per_class, self.ignore_index, self.subsample, self.seed = config
        self._fitted = fitted
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`state_dict` as JSON to ``path``, atomically (a temporary file, then a rename).

        An existing file at ``path`` is replaced only once the new one is complete.
        """
        path = Path(path)
        text = json.dumps(self.state_dict(), indent=2) + "\n"
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_name, path)
        finally:
            Path(tmp_name).unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TemperatureScaling:
        """Read a file written by :meth:`save`.

        Example:
            >>> import pathlib, tempfile
            >>> state = {"format": "rankseg.TemperatureScaling", "version": 1, "temperature": 1.5}
            >>> scaler = TemperatureScaling().load_state_dict(state)
            >>> path = scaler.save(pathlib.Path(tempfile.mkdtemp()) / "calibration.json")
            >>> float(TemperatureScaling.load(path).temperature_)
            1.5
        """
        path = Path(path)
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not a TemperatureScaling JSON file: {error}") from None
        try:
            return cls().load_state_dict(state)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{path}: {error}") from None

    def __repr__(self) -> str:
        args = [f"activation={self.activation!r}", f"per_class={self.per_class!r}"]
        args.append(f"ignore_index={self.ignore_index!r}")
        if self.subsample is not None:
            args += [f"subsample={self.subsample!r}", f"seed={self.seed!r}"]
        text = f"TemperatureScaling({', '.join(args)})"
        if self._fitted is not None:
            text += f"  # temperature_={self._fitted['temperature'].tolist()}"
        return text


def resolve_calibration(
    calibration: TemperatureScaling | str | os.PathLike | Mapping[str, Any] | None,
    *,
    activation: Activation | None = None,
    name: str = "calibration",
) -> TemperatureScaling | None:
    """The fitted :class:`TemperatureScaling` a ``calibration=`` argument names, or ``None``.

    Accepts ``None``, a fitted :class:`TemperatureScaling`, the path of a file written by
    :meth:`~TemperatureScaling.save`, or a :meth:`~TemperatureScaling.state_dict`. With
    ``activation``, a calibration fitted for the other activation is refused (a softmax temperature
    has no defined meaning on sigmoid mask logits, and the reverse).

    Example:
        >>> resolve_calibration(None) is None
        True
    """
    if calibration is None:
        return None
    if isinstance(calibration, TemperatureScaling):
        scaler = calibration
        scaler._require_fitted()
    elif isinstance(calibration, (str, os.PathLike)):
        scaler = TemperatureScaling.load(calibration)
    elif isinstance(calibration, Mapping):
        scaler = TemperatureScaling().load_state_dict(calibration)
    else:
        raise TypeError(
            f"{name} must be a fitted TemperatureScaling, the path of its JSON file, a state_dict or None; "
            f"got {type(calibration).__name__}"
        )
    fitted = scaler._require_fitted()
    if activation is not None and fitted["activation"] != activation:
        raise ValueError(
            f"{name} was fitted with activation={fitted['activation']!r}, but these outputs need "
            f"activation={activation!r}: fit a TemperatureScaling({activation!r}) on this model's logits"
        )
    return scaler


# ---------------------------------------------------------------------- arguments


def _check_config(activation, per_class, ignore_index, subsample, seed) -> _Config:
    if not isinstance(activation, str) or activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of 'softmax', 'sigmoid'; got {activation!r}")
    if not isinstance(per_class, bool):
        raise TypeError(f"per_class must be True or False; got {per_class!r}")
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral)
    ):
        raise TypeError(f"ignore_index must be an integer or None; got {ignore_index!r}")
    if subsample is not None:
        if isinstance(subsample, bool) or not isinstance(subsample, numbers.Real):
            raise TypeError(f"subsample must be a fraction in (0, 1] or None; got {subsample!r}")
        if not 0 < subsample <= 1:
            raise ValueError(f"subsample must be a fraction in (0, 1] or None; got {subsample!r}")
        subsample = float(subsample)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TypeError(f"seed must be a non-negative integer; got {seed!r}")
    index = None if ignore_index is None else int(ignore_index)
    return _Config(activation, per_class, index, subsample, int(seed))


def _check_fitted_state(state: Mapping[str, Any], config: _Config) -> dict[str, Any]:
    raw = state["temperature"]
    values = raw if isinstance(raw, list) else [raw]
    if not values or any(
        isinstance(v, bool) or not isinstance(v, numbers.Real) or not (math.isfinite(v) and v > 0)
        for v in values
    ):
        raise ValueError(f"temperature must be a positive finite number or a list of them; got {raw!r}")
    temperature = torch.tensor(values, dtype=torch.float64)
    if not isinstance(raw, list):
        temperature = temperature.reshape(())
    num_classes = state.get("num_classes")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}")
    if config.per_class != isinstance(raw, list):
        raise ValueError(
            f"per_class={config.per_class} but the temperature is {raw!r} "
            "(a list for per_class=True, a number otherwise)"
        )
    if isinstance(raw, list) and num_classes != len(values):
        raise ValueError(f"a per-class temperature of {len(values)} values needs num_classes={len(values)}")
    return {
        "activation": config.activation,
        "temperature": temperature,
        "num_classes": num_classes,
        "n_pixels": state.get("n_pixels"),
        "nll_before": state.get("nll_before"),
        "nll_after": state.get("nll_after"),
        "n_passes": state.get("n_passes"),
    }


def _float_tensor(x: object, name: str) -> tuple[Tensor, bool]:
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise TypeError(f"{name} must hold floating-point logits; got a numpy array of dtype {x.dtype}")
        if not x.dtype.isnative:
            x = x.astype(x.dtype.newbyteorder("="))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "array is not writable": it is only read
            return torch.from_numpy(np.ascontiguousarray(x)), True
    if isinstance(x, Tensor):
        if x.dtype not in _FLOAT_DTYPES:
            raise TypeError(
                f"{name} must have a floating dtype (float16, bfloat16, float32 or float64); got {x.dtype}"
            )
        return x.detach(), False
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray; got {type(x).__name__}")


def _label_tensor(x: object, device: torch.device) -> Tensor:
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biu":
            raise TypeError(
                f"labels must hold integer (or bool) labels; got a numpy array of dtype {x.dtype}"
            )
        if (x.dtype.kind == "u" and x.dtype != np.uint8) or not x.dtype.isnative:
            x = x.astype(np.int64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, Tensor):
        raise TypeError(f"labels must be a torch.Tensor or numpy.ndarray; got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex():
        raise TypeError(
            "labels must hold integer class indices (softmax) or bool / 0/1 integers (sigmoid); "
            f"got dtype {x.dtype}"
        )
    return x.detach().to(device)


def _class_axis(dim: int, ndim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or not -ndim <= dim < ndim:
        raise ValueError(f"dim must be an integer in [{-ndim}, {ndim - 1}] for {ndim}-d logits; got {dim!r}")
    return dim % ndim


def _one_channel_message(shape: tuple[int, ...]) -> str:
    return (
        f"activation='softmax' needs at least two class channels; got logits of shape {shape}. "
        "A one-channel model is a sigmoid model: use TemperatureScaling(activation='sigmoid')."
    )


# ---------------------------------------------------------------------- the data, pass by pass


def _batch_source(logits: object, labels: object) -> Callable[[], Iterator[tuple[str, object, object]]]:
    """A function returning a fresh iterator of ``(where, logits, labels)`` for each pass.

    ``where`` names the batch in error messages: ``" (batch 3)"``, or ``""`` for one tensor.
    """
    if isinstance(logits, (Tensor, np.ndarray)):
        if labels is None:
            raise TypeError("labels is required with a logits tensor or array: fit(logits, labels)")
        if not isinstance(labels, (Tensor, np.ndarray)):
            raise TypeError(
                "labels must be a torch.Tensor or numpy.ndarray when logits is one; "
                f"got {type(labels).__name__}"
            )
        return lambda: iter([("", logits, labels)])
    if labels is None:
        if callable(logits):
            factory = logits
        else:
            _require_reiterable("batches", logits)
            factory = lambda: logits  # noqa: E731
        return lambda: _pairs(factory)
    _require_reiterable("logits", logits)
    _require_reiterable("labels", labels)
    return lambda: _zipped(logits, labels)


def _require_reiterable(name: str, obj: object) -> None:
    if isinstance(obj, (str, bytes, Mapping)) or not isinstance(obj, collections.abc.Iterable):
        raise TypeError(
            f"{name} must be a tensor or array, or a re-iterable of batches (list, tuple, DataLoader); "
            f"got {type(obj).__name__}"
        )
    if isinstance(obj, collections.abc.Iterator):
        raise TypeError(
            f"{name} is a one-shot iterator ({type(obj).__name__}), but fit reads the data several times "
            "(one pass per Newton step): pass a list, a tuple, a DataLoader, or a function that returns "
            "a new generator on each call, e.g. fit(lambda: my_batches())"
        )


def _pairs(factory: Callable[[], Iterable[Any]]) -> Iterator[tuple[str, object, object]]:
    batches = factory()
    if isinstance(batches, (str, bytes, Mapping)) or not isinstance(batches, collections.abc.Iterable):
        raise TypeError(f"the batches function must return an iterable; it returned {type(batches).__name__}")
    for k, item in enumerate(batches):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(
                f"each batch must be a (logits, labels) pair; batch {k} is a {type(item).__name__}"
                + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else "")
            )
        yield f" (batch {k})", item[0], item[1]


def _zipped(logits: Iterable[Any], labels: Iterable[Any]) -> Iterator[tuple[str, object, object]]:
    done = object()
    logit_batches, label_batches = iter(logits), iter(labels)
    k = 0
    while True:
        x, y = next(logit_batches, done), next(label_batches, done)
        if x is done or y is done:
            if x is not y:
                longer = "logits" if y is done else "labels"
                raise ValueError(
                    f"logits and labels hold different numbers of batches: {longer} has more than {k}"
                )
            return
        yield f" (batch {k})", x, y
        k += 1


class _ValidationData:
    """The validation set as the solver sees it: one pass at a time, at a given ``beta``."""

    def __init__(self, source: Callable[[], Iterator[tuple[str, object, object]]], config: _Config) -> None:
        self.source = source
        self.config = config
        self.num_classes: int | None = None
        self._kept: dict[tuple, Tensor] = {}
        self._first: _PassStats | None = None

    @property
    def problems(self) -> int:
        """Independent 1-D problems (K): one, or one per class for the per-class sigmoid."""
        return self.num_classes if self.config.per_class else 1

    def run(self, beta: Tensor) -> _PassStats:
        """One pass: NLL, gradient and curvature at ``beta`` (``(K,)``, or ``(C,)`` per-class softmax)."""
        first = self._first is None
        totals: dict[str, Tensor] = {}
        extremes = [math.inf, -math.inf, 0.0]  # min, max of the logits; max |sum_c logits - 1|
        batches = 0
        for where, raw_logits, raw_labels in self.source():
            logits, labels = self._checked(where, raw_logits, raw_labels, first, extremes)
            batches += 1
            for part in self._chunks(logits, labels):
                for key, value in _terms(part, beta.to(logits.device), self.config, first).items():
                    totals[key] = totals.get(key, 0) + value.cpu()
        if self.num_classes is None:
            raise ValueError("no batches: the validation data yielded nothing to fit on")
        stats = self._stats(totals, batches, first)
        if first:
            self._check_first(stats, extremes)
            self._first = stats
        elif (stats.batches, stats.labelled) != (self._first.batches, self._first.labelled):
            raise ValueError(
                f"the batches changed between passes ({self._first.batches} batches with "
                f"{self._first.labelled} labelled pixels, then {stats.batches} with {stats.labelled}): "
                "fit reads the data once per Newton step, and every pass must yield the same data "
                "(a list, a DataLoader, or a function returning a fresh generator)"
            )
        return stats

    def _stats(self, totals: dict[str, Tensor], batches: int, first: bool) -> _PassStats:
        """Shape the pass's sums: ``(K,)`` gradients and curvatures, the ``(C, C)`` coupled Hessian."""
        classes, per_class = self.num_classes, self.config.per_class

        def total(key: str, shape: tuple[int, ...]) -> Tensor:
            return totals[key] if key in totals else torch.zeros(shape, dtype=torch.float64)

        if self.config.activation == "softmax":  # gradient terms per class only with per_class
            grad = total("grad", (classes,) if per_class else ())
            curv = total("curv", (classes, classes) if per_class else ())
            grad_zero, grad_inf = total("grad_zero", ()), total("grad_inf", ())
        else:  # per-class sums; the global problem adds them up
            grad, curv, grad_zero, grad_inf = (
                total(k, (classes,)) for k in ("grad", "curv", "grad_zero", "grad_inf")
            )
            if not per_class:
                grad, curv, grad_zero, grad_inf = (x.sum() for x in (grad, curv, grad_zero, grad_inf))
        return _PassStats(
            nll=float(total("nll", ())),
            grad=grad.reshape(-1),
            curv=curv if curv.dim() == 2 else curv.reshape(-1),
            labelled=int(total("labelled", ())),
            batches=batches,
            count=total("count", (classes,)).long() if first else None,
            grad_zero=grad_zero.reshape(-1) if first else None,
            grad_inf=grad_inf.reshape(-1) if first else None,
            misranked=int(totals["misranked"]) if "misranked" in totals else None,
        )

    def _checked(
        self, where: str, raw_logits: object, raw_labels: object, first: bool, extremes: list[float]
    ) -> tuple[Tensor, Tensor]:
        config = self.config
        logits, _ = _float_tensor(raw_logits, f"logits{where}")
        if logits.dim() < 3:
            raise ValueError(
                f"logits must have shape (batch, classes, *spatial); got shape {tuple(logits.shape)}{where}"
            )
        classes = logits.shape[1]
        if self.num_classes is None:
            if classes == 0:
                raise ValueError(
                    f"logits must have at least one class channel; got shape {tuple(logits.shape)}"
                )
            if config.activation == "softmax" and classes == 1:
                raise ValueError(_one_channel_message(tuple(logits.shape)))
            self.num_classes = classes
        elif classes != self.num_classes:
            raise ValueError(
                f"every batch must have the same number of classes: the first had {self.num_classes}, "
                f"but logits{where} have {classes} (shape {tuple(logits.shape)})"
            )
        labels = _label_tensor(raw_labels, logits.device)
        labels = self._shaped_labels(where, logits, labels)
        if first and logits.numel():
            _check_batch_values(where, logits, labels, config, classes, extremes)
        return logits, labels

    def _shaped_labels(self, where: str, logits: Tensor, labels: Tensor) -> Tensor:
        batch, classes, *spatial = logits.shape
        if self.config.activation == "softmax":
            expected = (batch, *spatial)
            if tuple(labels.shape) != expected:
                hint = ""
                if tuple(labels.shape) == tuple(logits.shape):
                    hint = " (0/1 labels per class go with activation='sigmoid')"
                raise ValueError(
                    f"labels must be class indices of shape (batch, *spatial) = {expected} for logits of "
                    f"shape {tuple(logits.shape)}; got {tuple(labels.shape)}{where}{hint}"
                )
            if labels.dtype == torch.bool:
                raise TypeError(
                    "labels must hold integer class indices for activation='softmax'; got dtype torch.bool"
                )
            return labels
        if classes == 1 and tuple(labels.shape) == (batch, *spatial):
            labels = labels.unsqueeze(1)
        if tuple(labels.shape) != tuple(logits.shape):
            hint = ""
            if tuple(labels.shape) == (batch, *spatial):
                hint = " (class-index labels go with activation='softmax')"
            raise ValueError(
                f"labels must be 0/1 per class, of the logits' shape {tuple(logits.shape)} for "
                f"activation='sigmoid'; got {tuple(labels.shape)}{where}{hint}"
            )
        return labels

    def _kept_positions(self, spatial: tuple[int, ...], device: torch.device) -> Tensor | None:
        fraction = self.config.subsample
        if fraction is None or fraction >= 1:
            return None
        key = (spatial, device)
        if key not in self._kept:
            generator = torch.Generator().manual_seed(self.config.seed)
            draw = torch.rand(math.prod(spatial), generator=generator, dtype=torch.float64)
            self._kept[key] = (draw < fraction).to(device)
        return self._kept[key]

    def _chunks(self, logits: Tensor, labels: Tensor) -> Iterator[tuple[Tensor, ...]]:
        """The batch in float64 ``(images, classes, pixels)`` chunks of at most ``_CHUNK_ELEMENTS``.

        The layout of the logits is kept, so the sums over classes are vectorised along the pixels.
        softmax: ``(z, y, w)``: logits, labels clamped into ``[0, C)`` and the float 0/1 weight of
        each pixel (0: ignored or not in the subsample). sigmoid: ``(s, valid)``: the signed logits
        ``(2 y - 1) z``, 0 where not ``valid`` (ignored or not in the subsample).
        """
        batch, classes, *spatial = logits.shape
        n = math.prod(spatial)
        if batch == 0 or n == 0:
            return
        flat = logits.reshape(batch, classes, n)
        kept = self._kept_positions(tuple(spatial), logits.device)
        softmax = self.config.activation == "softmax"
        flat_labels = labels.reshape(batch, n) if softmax else labels.reshape(batch, classes, n)
        images = max(1, _CHUNK_ELEMENTS // (classes * n))
        step = n if classes * n <= _CHUNK_ELEMENTS else max(1, _CHUNK_ELEMENTS // classes)
        ignore = self.config.ignore_index
        for b0 in range(0, batch, images):
            for s0 in range(0, n, step):
                z = flat[b0 : b0 + images, :, s0 : s0 + step].to(torch.float64)
                y = flat_labels[b0 : b0 + images, ..., s0 : s0 + step]
                valid = y != ignore if ignore is not None else torch.ones_like(y, dtype=torch.bool)
                if kept is not None:
                    valid &= kept[s0 : s0 + step]
                if softmax:
                    yield z, y.long().clamp(0, classes - 1), valid.to(torch.float64)
                else:
                    positive = y == 1 if y.dtype != torch.bool else y
                    yield torch.where(valid, torch.where(positive, z, -z), torch.zeros_like(z)), valid

    def _check_first(self, stats: _PassStats, extremes: list[float]) -> None:
        config = self.config
        lo, hi, sum_error = extremes
        # A constant map is not recognisably anything (and is refused below as uninformative).
        if 0 <= lo < hi <= 1 and (config.activation == "sigmoid" or sum_error <= 1e-3):
            if config.activation == "softmax":
                raise ValueError(
                    "logits look like probabilities: every value is in [0, 1] and the classes sum to 1 at "
                    "every pixel. TemperatureScaling needs the logits before the softmax (for a global "
                    "temperature, torch.log(probs) is equivalent)"
                )
            raise ValueError(
                f"logits look like probabilities: every value is in [{lo:.4g}, {hi:.4g}] within [0, 1]. "
                "TemperatureScaling needs the logits before the sigmoid (torch.logit(probs) recovers them)"
            )
        unit = "pixel" if config.activation == "softmax" else "(pixel, class) element"
        if stats.labelled == 0:  # after the probability check: its message says more
            why = [f"ignore_index={config.ignore_index}"] if config.ignore_index is not None else []
            why += [f"outside the subsample={config.subsample}"] if config.subsample is not None else []
            detail = f": every one is {' or '.join(why)}" if why else " (the data hold no pixels)"
            raise ValueError(f"no labelled {unit} to fit on{detail}")
        if config.per_class:
            missing = (stats.count == 0).nonzero()[:, 0].tolist()
            if missing:
                raise ValueError(
                    f"per_class=True needs labelled {unit}s of every class; classes {missing} have none "
                    "(fit a global temperature with per_class=False, or use more validation data)"
                )
        # One value per 1-D problem: per class for the per-class sigmoid, else for all classes.
        per_class_checks = config.per_class and config.activation == "sigmoid"
        useless = (stats.grad_zero >= 0).nonzero()[:, 0].tolist()
        if useless:
            what = f"the labels of classes {useless}" if per_class_checks else "the labels"
            raise ValueError(
                f"the logits predict {what} no better than chance (the NLL does not fall as 1/T grows "
                "from 0), so no positive temperature fits; are the labels those of these logits?"
            )
        separated = (stats.grad_inf <= 0).nonzero()[:, 0].tolist()
        if separated:
            what = f"the labels of classes {separated}" if per_class_checks else "the labels"
            raise ValueError(
                f"the logits separate {what} perfectly (every labelled {unit} is on the side of its label), "
                "so the NLL keeps falling as T -> 0 and no temperature minimises it; fit on more data"
            )


def _check_batch_values(
    where: str, logits: Tensor, labels: Tensor, config: _Config, classes: int, extremes: list[float]
) -> None:
    lo, hi = (float(v) for v in torch.aminmax(logits))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"logits{where} must be finite; they contain NaN or infinite values")
    extremes[0], extremes[1] = min(extremes[0], lo), max(extremes[1], hi)
    if config.activation == "softmax" and lo >= 0 and hi <= 1:
        extremes[2] = max(extremes[2], float((logits.float().sum(dim=1) - 1).abs().max()))
    ignore = config.ignore_index
    valid = labels != ignore if ignore is not None else None
    if config.activation == "softmax":
        bad = (labels < 0) | (labels >= classes)
        allowed = f"class indices in [0, {classes - 1}]"
    else:
        if labels.dtype == torch.bool:
            return
        bad = (labels != 0) & (labels != 1)
        allowed = "0 or 1"
    if valid is not None:
        bad &= valid
        allowed += f" or ignore_index={ignore}"
    if bad.any():
        raise ValueError(f"labels{where} must be {allowed}; found the label {int(labels[bad][0])}")


# ---------------------------------------------------------------------- the NLL and its derivatives


def _terms(part: tuple[Tensor, ...], beta: Tensor, config: _Config, first: bool) -> dict[str, Tensor]:
    if config.activation == "sigmoid":
        return _sigmoid_terms(*part, beta, config.per_class, first)
    return _softmax_terms(*part, beta, config.per_class, first)


def _softmax_terms(
    z: Tensor, y: Tensor, w: Tensor, beta: Tensor, per_class: bool, first: bool
) -> dict[str, Tensor]:
    """Weighted sums over the pixels of ``z`` ``(b, C, n)``, labels ``y`` and weights ``w`` ``(b, n)``.

    At ``beta`` (``(1,)`` or ``(C,)``), with ``p = softmax(beta * z)`` over the classes:
    ``nll = sum_i w_i [logsumexp(beta z_i) - beta_y z_iy]``. Global: ``grad = sum_i w_i (E_p[z_i]
    - z_iy)``, ``curv = sum_i w_i Var_p(z_i)``. Per class: ``grad_c = sum_i w_i z_ic (p_ic -
    [y_i = c])`` and the Hessian ``diag(sum_i w_i p_ic z_ic^2) - sum_i w_i (p_i z_i)(p_i z_i)^T``.
    """
    classes = z.shape[1]
    index = y[:, None]
    z_y = z.gather(1, index)[:, 0]
    scaled_y = z_y * (beta[y] if beta.numel() > 1 else beta)
    shifted = z * beta.reshape(1, -1, 1)
    top = shifted.amax(dim=1, keepdim=True)
    shifted -= top
    out: dict[str, Tensor] = {"labelled": w.sum()}
    if per_class:  # another class scores above the label (scaled_y is exactly one of the maximised values)
        out["misranked"] = (w * (top[:, 0] > scaled_y)).sum()
    weights = shifted.exp_()  # softmax numerators, in place
    total = weights.sum(dim=1)
    out["nll"] = (w * (top[:, 0] + total.log() - scaled_y)).sum()
    if per_class:
        pz = weights.div_(total[:, None]).mul_(z)
        weighted = pz * w[:, None]
        is_label = y[:, None] == torch.arange(classes, device=y.device)[:, None]
        label_sums = (is_label * (w * z_y)[:, None]).sum(dim=(0, 2))
        out["grad"] = weighted.sum(dim=(0, 2)) - label_sums
        out["curv"] = torch.diag((weighted * z).sum(dim=(0, 2))) - torch.bmm(
            weighted, pz.transpose(1, 2)
        ).sum(dim=0)
    else:
        # E_p[z] and E_p[z^2]; Var = E[z^2] - E[z]^2 loses ~1e-16 z^2 per pixel, harmless in the
        # curvature (it only steers the Newton steps; the root is that of the exact gradient).
        weighted = weights.mul_(z)
        mean = weighted.sum(dim=1) / total
        second = weighted.mul_(z).sum(dim=1) / total
        out["grad"] = (w * (mean - z_y)).sum()
        out["curv"] = (w * (second - mean.square()).clamp_(min=0)).sum()
    if first:
        out["count"] = torch.bincount(y.reshape(-1), weights=w.reshape(-1), minlength=classes)
        out["grad_zero"] = (w * (z.mean(dim=1) - z_y)).sum()
        out["grad_inf"] = (w * (z.amax(dim=1) - z_y)).sum()
    return out


def _sigmoid_terms(s: Tensor, valid: Tensor, beta: Tensor, per_class: bool, first: bool) -> dict[str, Tensor]:
    """Per-class sums over the signed logits ``s`` ``(b, C, n)`` (0 where not ``valid``) at ``beta``.

    ``nll = sum softplus(-beta s)``, ``grad = -sum s sigmoid(-beta s)``,
    ``curv = sum s^2 sigmoid(beta s) sigmoid(-beta s)``; the global problem sums them over classes.
    """
    u = -s * beta.reshape(1, -1, 1)
    sig = torch.sigmoid(u)
    out = {
        "nll": torch.where(valid, F.softplus(u), torch.zeros_like(u)).sum(),
        "labelled": valid.sum(),
        "grad": -(s * sig).sum(dim=(0, 2)),
        "curv": (s.square() * sig * torch.sigmoid(-u)).sum(dim=(0, 2)),
    }
    if first:
        out["count"] = valid.sum(dim=(0, 2))
        out["grad_zero"] = -0.5 * s.sum(dim=(0, 2))
        out["grad_inf"] = torch.relu(-s).sum(dim=(0, 2))
    return out


# ---------------------------------------------------------------------- the solvers


def _solve(data: _ValidationData) -> tuple[Tensor, _PassStats, _PassStats, int]:
    """Minimise the NLL in ``beta``; returns ``(beta, first pass, last pass, passes)``."""
    config = data.config
    if config.per_class and config.activation == "softmax":
        return _solve_coupled(data)
    return _solve_bracketed(data)


def _solve_bracketed(data: _ValidationData) -> tuple[Tensor, _PassStats, _PassStats, int]:
    """Safeguarded Newton on the increasing gradient of K independent convex 1-D problems.

    Each problem keeps a bracket ``[lo, hi]`` of its root (``lo = 0`` since the gradient is
    negative there); a Newton step that leaves the bracket, or fails to halve the previous step,
    is replaced by bisection (doubling while ``hi`` is infinite).
    """
    stats = data.run(torch.ones(1, dtype=torch.float64))
    first = stats
    k = data.problems
    beta = torch.ones(k, dtype=torch.float64)
    lo = torch.zeros(k, dtype=torch.float64)
    hi = torch.full((k,), math.inf, dtype=torch.float64)
    previous_step = torch.full((k,), math.inf, dtype=torch.float64)
    done = torch.zeros(k, dtype=torch.bool)
    passes = 1
    while True:
        grad, curv = stats.grad, stats.curv
        lo = torch.where(grad < 0, beta, lo)
        hi = torch.where(grad > 0, beta, hi)
        done |= grad == 0
        newton_step = -grad / curv
        newton = beta + newton_step
        finite = torch.isfinite(newton_step)
        # A step below the tolerance ends the problem (it may even round to nothing in beta).
        tiny = finite & (newton_step.abs() <= _STEP_TOL * beta)
        good = finite & (newton >= lo) & (newton <= hi)
        good &= torch.isinf(hi) | (newton_step.abs() <= 0.5 * previous_step)
        fallback = torch.where(torch.isinf(hi), 2 * beta, 0.5 * (lo + hi))
        proposal = torch.where(good | tiny, newton, fallback)
        step = (proposal - beta).abs()
        converged = tiny | (hi - lo <= _STEP_TOL * lo)
        beta = torch.where(done, beta, proposal)
        done |= converged
        previous_step = step
        if bool(done.all()):
            return beta, first, stats, passes
        if passes >= _MAX_PASSES or bool((beta > 1e300).any()):
            raise ValueError(
                f"the temperature fit did not converge in {passes} passes (1/T = {beta.tolist()}); "
                "the NLL may have no finite minimiser for these logits and labels"
            )
        stats = data.run(beta)
        passes += 1


def _solve_coupled(data: _ValidationData) -> tuple[Tensor, _PassStats, _PassStats, int]:
    """Damped Newton with an Armijo line search for the per-class softmax (beta coupled by the softmax).

    Each pass evaluates NLL, gradient and Hessian at the trial point, so an accepted step costs
    one pass and each halving one more. Iterates stay positive (a step may at most halve any
    ``beta_c``): far from the optimum the full Newton step from ``beta = 1`` overshoots below 0,
    and only a positive minimiser is a temperature.
    """
    stats = data.run(torch.ones(1, dtype=torch.float64))  # beta = 1 broadcast over every class
    first = stats
    classes = data.num_classes
    beta = torch.ones(classes, dtype=torch.float64)
    passes = 1
    while True:
        hessian = stats.curv + torch.eye(classes, dtype=torch.float64) * (
            1e-12 * float(stats.curv.diagonal().abs().max()) + 1e-300
        )
        direction = -torch.linalg.lstsq(hessian, stats.grad[:, None]).solution[:, 0]
        if bool((direction.abs() <= _STEP_TOL * beta).all()):
            return beta + direction, first, stats, passes
        slope = float(stats.grad @ direction)
        shrinking = direction < 0
        t = min(1.0, 0.5 * float((beta[shrinking] / -direction[shrinking]).min())) if shrinking.any() else 1.0
        while True:
            trial = beta + t * direction
            if not bool(torch.isfinite(trial).all()) or float(trial.max()) > 1e12:
                raise ValueError(
                    f"the per-class temperature fit diverged (1/T = {trial.tolist()}): the logits nearly "
                    "separate the labels and no finite temperature minimises the NLL; fit on more data"
                )
            vanishing = (trial < 1e-9 * float(trial.max())).nonzero()[:, 0].tolist()
            if vanishing:
                raise ValueError(
                    f"with per-class temperatures, the logits of classes {vanishing} predict the labels no "
                    "better than chance: the NLL falls as their 1/T goes to 0 (or below); fit a global "
                    "temperature with per_class=False"
                )
            if passes >= _MAX_PASSES:
                raise ValueError(
                    f"the per-class temperature fit did not converge in {passes} passes (1/T = "
                    f"{beta.tolist()}): the NLL still falls as 1/T grows, so it likely has no finite "
                    "minimiser (the per-class scaled logits nearly separate the labels); fit a global "
                    "temperature (per_class=False) or on more data"
                )
            trial_stats = data.run(trial)
            passes += 1
            if trial_stats.misranked == 0:
                # Then NLL(s * trial) falls for ever as s grows (a direction of recession with zero
                # slope at infinity), so no finite beta minimises it.
                raise ValueError(
                    f"at the per-class 1/T = {trial.tolist()} the scaled logits separate the labels "
                    "perfectly (no labelled pixel has a class scored above its label), so the NLL keeps "
                    "falling as these temperatures shrink together and none minimises it; fit a global "
                    "temperature (per_class=False) or on more data"
                )
            if trial_stats.nll <= stats.nll + 1e-4 * t * slope + 1e-13 * abs(stats.nll):
                break
            t *= 0.5
        beta, stats = trial, trial_stats
