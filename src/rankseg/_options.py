"""The one place where RankSEG's string options and parameters are normalised and checked.

Every public entry point (the functional ``rankseg``, the ``RankSEG`` predictor, the integrations)
goes through :func:`resolve_options`, so a spelling accepted or refused in one place is accepted or
refused everywhere, with the same message.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_SOLVER", "Options", "check_integer", "check_real", "resolve_options"]


class _DefaultSolver(str):
    """The default ``solver="RMA"``: equal to ``"RMA"``, but marks that the caller did not choose it,
    so that ``metric="acc"`` moves to its own solver without a warning."""

    __slots__ = ()


DEFAULT_SOLVER = _DefaultSolver("RMA")

# Accepted spellings (after removing whitespace and lower-casing) -> canonical name.
_METRICS = {"dice": "dice", "iou": "iou", "acc": "acc", "accuracy": "acc"}
_OUTPUT_MODES = {"multiclass": "multiclass", "multilabel": "multilabel"}
_SOLVERS = {
    "rma": "RMA",
    "exact": "exact",
    "ba": "BA",
    "trna": "TRNA",
    "ba+trna": "BA+TRNA",
    "argmax": "argmax",
    "tr": "TR",
}

# Which solvers each metric has, in the order the documentation lists them.
SOLVERS_BY_METRIC = {
    "dice": ("RMA", "exact", "BA", "TRNA", "BA+TRNA"),
    "iou": ("RMA", "exact"),
    "acc": ("argmax", "TR"),
}

_UNASSIGNED_POLICIES = ("max_score", "void")
_SOLVER_PARAMS = ("eps", "unassigned_policy", "void_index")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class Options:
    """Validated, canonical options of one RankSEG call."""

    metric: str  # "dice" | "iou" | "acc"
    output_mode: str  # "multiclass" | "multilabel"
    solver: str  # the solver actually used, e.g. "RMA"
    smooth: float
    pruning_prob: float
    unassigned_policy: str
    void_index: int
    eps: float


def _normalise(name: str, value: object, table: dict[str, str], allowed: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {allowed}; got {value!r} ({type(value).__name__})")
    key = "".join(value.split()).lower()
    if key not in table:
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}")
    return table[key]


def check_real(name: str, value: object) -> float:
    """A finite real number as a float: Python and NumPy numbers and ``Fraction``, never ``bool``.

    The one check of every real option (``smooth``, ``pruning_prob``, ``eps``) in ``rankseg``, the
    metrics and the integrations. Range checks are the caller's.

    >>> from fractions import Fraction
    >>> check_real("smooth", np.float32(0.5)), check_real("smooth", Fraction(1, 4))
    (0.5, 0.25)
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {value!r} ({type(value).__name__})")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{name} must be finite; got {value!r}")
    return result


def check_integer(name: str, value: object, low: int = _INT64_MIN, high: int = _INT64_MAX) -> int:
    """An integer in ``[low, high]`` (by default: that fits in int64) as an ``int``: Python and
    NumPy integers, never ``bool``.

    The one check of every integer option (``void_index``, ``ignore_index``, ``num_classes``).

    >>> check_integer("ignore_index", np.int64(255))
    255
    >>> check_integer("ignore_index", 2**64)
    Traceback (most recent call last):
    ...
    ValueError: ignore_index must fit in int64 (-2**63 to 2**63 - 1); got 18446744073709551616
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {value!r} ({type(value).__name__})")
    result = int(value)
    if not low <= result <= high:
        if (low, high) == (_INT64_MIN, _INT64_MAX):
            raise ValueError(f"{name} must fit in int64 (-2**63 to 2**63 - 1); got {value!r}")
        raise ValueError(f"{name} must lie in [{low}, {high}]; got {value!r}")
    return result


def _resolve_solver(metric: str, output_mode: str, requested: str, chosen: bool) -> str:
    """Map a requested (canonical) solver to the one used, warning when it does not fit.

    ``chosen`` is False for the untouched default (RMA), which accuracy replaces silently.
    """
    if metric == "acc":
        used = "argmax" if output_mode == "multiclass" else "TR"
        if requested != used and chosen:
            if requested in SOLVERS_BY_METRIC["acc"]:
                reason = f"solver {requested!r} does not fit output_mode={output_mode!r} for accuracy"
            else:
                reason = f"solver {requested!r} does not apply to metric 'acc'"
            warnings.warn(f"{reason}; using solver {used!r} instead", UserWarning, stacklevel=4)
        return used
    if requested not in SOLVERS_BY_METRIC[metric]:
        warnings.warn(
            f"solver {requested!r} does not apply to metric {metric!r} (its solvers are "
            f"{', '.join(SOLVERS_BY_METRIC[metric])}); using solver 'RMA' instead",
            UserWarning,
            stacklevel=4,
        )
        return "RMA"
    return requested


def _warn_ineffective(
    metric: str,
    output_mode: str,
    solver: str,
    policy: str,
    smooth: float,
    pruning_prob: float,
    solver_params: dict[str, object],
) -> None:
    """Warn (``UserWarning``) about each option the user gave that the chosen mode ignores."""
    ignored = []
    if "eps" in solver_params and solver not in ("BA", "TRNA", "BA+TRNA"):
        ignored.append(
            ("eps", solver_params["eps"], f"it only tunes the solvers BA, TRNA and BA+TRNA, not {solver!r}")
        )
    if output_mode == "multilabel" or metric == "acc":
        why = (
            "output_mode='multilabel' assigns no labels"
            if output_mode == "multilabel"
            else "metric 'acc' labels each pixel by argmax"
        )
        ignored += [
            (key, solver_params[key], why)
            for key in ("unassigned_policy", "void_index")
            if key in solver_params
        ]
    elif "void_index" in solver_params and policy != "void":
        ignored.append(
            ("void_index", solver_params["void_index"], "it is only written with unassigned_policy='void'")
        )
    if metric == "acc":
        if smooth != 0:
            ignored.append(("smooth", smooth, "metric 'acc' has no smoothing constant"))
        if pruning_prob != 0.5:
            ignored.append(("pruning_prob", pruning_prob, "metric 'acc' prunes no class"))
    for key, value, why in ignored:
        warnings.warn(f"{key}={value!r} has no effect: {why}", UserWarning, stacklevel=4)


def resolve_options(
    metric: object = "dice",
    smooth: object = 0.0,
    output_mode: object = "multiclass",
    solver: object = DEFAULT_SOLVER,
    pruning_prob: object = 0.5,
    **solver_params: object,
) -> Options:
    """Check and normalise RankSEG's options; return the canonical :class:`Options`.

    Raises ``TypeError`` / ``ValueError`` naming the argument, the value received and what is
    allowed; warns (``UserWarning``) when the requested solver does not fit the metric or output mode
    and names the solver used instead, and when an option given has no effect in the chosen mode
    (``eps`` with RMA or exact, ``unassigned_policy`` / ``void_index`` with multilabel output or
    accuracy, ``void_index`` without ``unassigned_policy='void'``, ``smooth`` / ``pruning_prob``
    with accuracy), naming the option and why.

    >>> resolve_options(metric=" IoU ", solver="rma").metric
    'iou'
    """
    metric_c = _normalise("metric", metric, _METRICS, "'dice', 'iou', 'acc' ('accuracy')")
    mode_c = _normalise("output_mode", output_mode, _OUTPUT_MODES, "'multiclass', 'multilabel'")
    solver_req = _normalise(
        "solver", solver, _SOLVERS, "'RMA', 'exact', 'BA', 'TRNA', 'BA+TRNA' (dice), 'argmax', 'TR' (acc)"
    )

    smooth_f = check_real("smooth", smooth)
    if smooth_f < 0:
        raise ValueError(f"smooth must be >= 0; got {smooth!r}")
    prune_f = check_real("pruning_prob", pruning_prob)
    if not 0.0 <= prune_f <= 1.0:
        raise ValueError(f"pruning_prob must lie in [0, 1]; got {pruning_prob!r}")

    unknown = sorted(set(solver_params) - set(_SOLVER_PARAMS))
    if unknown:
        raise TypeError(
            f"unexpected solver parameter(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(_SOLVER_PARAMS)}"
        )
    policy = solver_params.get("unassigned_policy", "max_score")
    if not isinstance(policy, str) or "".join(policy.split()).lower() not in _UNASSIGNED_POLICIES:
        raise ValueError(f"unassigned_policy must be one of 'max_score', 'void'; got {policy!r}")
    policy = "".join(policy.split()).lower()
    void_index = check_integer("void_index", solver_params.get("void_index", 255))
    eps = check_real("eps", solver_params.get("eps", 1e-4))
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must lie strictly between 0 and 1; got {solver_params.get('eps')!r}")

    solver_c = _resolve_solver(metric_c, mode_c, solver_req, chosen=not isinstance(solver, _DefaultSolver))
    _warn_ineffective(metric_c, mode_c, solver_c, policy, smooth_f, prune_f, solver_params)
    return Options(
        metric=metric_c,
        output_mode=mode_c,
        solver=solver_c,
        smooth=smooth_f,
        pruning_prob=prune_f,
        unassigned_policy=policy,
        void_index=void_index,
        eps=eps,
    )
