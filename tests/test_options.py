"""Option spelling, solver fallbacks and parameter checks (issue: core API)."""

import pickle
import warnings

import pytest
import torch

from rankseg import RankSEG
from rankseg._options import resolve_options
from rankseg.functional import rankseg

PROBS = torch.softmax(torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)), dim=1)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"metric": " DICE "}, ("dice", "multiclass", "RMA")),
        ({"metric": "IoU", "solver": " rma"}, ("iou", "multiclass", "RMA")),
        ({"metric": "Accuracy"}, ("acc", "multiclass", "argmax")),
        ({"metric": "acc", "output_mode": "multilabel"}, ("acc", "multilabel", "TR")),
        ({"metric": "acc", "output_mode": "MultiLabel", "solver": "tr"}, ("acc", "multilabel", "TR")),
        ({"output_mode": " multilabel\t"}, ("dice", "multilabel", "RMA")),
    ],
)
def test_options_are_matched_case_insensitively_after_stripping_spaces(kwargs, expected):
    options = resolve_options(**kwargs)
    assert (options.metric, options.output_mode, options.solver) == expected


@pytest.mark.parametrize(
    ("kwargs", "used"),
    [
        ({"metric": "dice", "solver": "argmax"}, "RMA"),
        ({"metric": "dice", "solver": "TR"}, "RMA"),
        ({"metric": "iou", "solver": "BA"}, "RMA"),
        ({"metric": "iou", "solver": "BA+TRNA"}, "RMA"),
        ({"metric": "acc", "solver": "RMA"}, "argmax"),
        ({"metric": "acc", "solver": "exact", "output_mode": "multilabel"}, "TR"),
        ({"metric": "acc", "solver": "TR"}, "argmax"),
        ({"metric": "acc", "solver": "argmax", "output_mode": "multilabel"}, "TR"),
    ],
)
def test_unfit_solver_falls_back_with_a_warning_naming_the_solver_used(kwargs, used):
    with pytest.warns(UserWarning, match=f"using solver '{used}'"):
        options = resolve_options(**kwargs)
    assert options.solver == used


def test_fallback_results_equal_the_solver_used():
    with pytest.warns(UserWarning):
        fallen_back = rankseg(PROBS, metric="iou", solver="TRNA")
    assert torch.equal(fallen_back, rankseg(PROBS, metric="iou", solver="RMA"))
    with pytest.warns(UserWarning):
        acc_ml = rankseg(PROBS, metric="acc", solver="argmax", output_mode="multilabel")
    assert torch.equal(acc_ml, PROBS > 0.5)
    assert torch.equal(rankseg(PROBS, metric="acc"), PROBS.argmax(1))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"metric": "f1"}, ValueError, r"metric must be one of 'dice', 'iou', 'acc'.*got 'f1'"),
        ({"metric": 3}, TypeError, r"metric must be a string.*got 3 \(int\)"),
        (
            {"output_mode": "binary"},
            ValueError,
            r"output_mode must be one of 'multiclass', 'multilabel'; got 'binary'",
        ),
        ({"solver": "greedy"}, ValueError, r"solver must be one of .*got 'greedy'"),
        ({"solver": None}, TypeError, r"solver must be a string"),
        ({"smooth": -1}, ValueError, r"smooth must be >= 0; got -1"),
        ({"smooth": float("nan")}, ValueError, r"smooth must be finite; got nan"),
        ({"smooth": "1"}, TypeError, r"smooth must be a real number; got '1' \(str\)"),
        ({"smooth": True}, TypeError, r"smooth must be a real number; got True"),
        ({"pruning_prob": 1.5}, ValueError, r"pruning_prob must lie in \[0, 1\]; got 1\.5"),
        ({"pruning_prob": None}, TypeError, r"pruning_prob must be a real number; got None"),
        ({"eps": 0}, ValueError, r"eps must lie strictly between 0 and 1; got 0"),
        ({"eps": 1.0}, ValueError, r"eps must lie strictly between 0 and 1"),
        (
            {"unassigned_policy": "argmax"},
            ValueError,
            r"unassigned_policy must be one of 'max_score', 'void'; got 'argmax'",
        ),
        ({"void_index": 2.5}, TypeError, r"void_index must be an integer; got 2\.5 \(float\)"),
        ({"void_index": True}, TypeError, r"void_index must be an integer; got True"),
        ({"void_index": 2**70}, ValueError, r"void_index must fit in int64"),
        (
            {"max_iter": 3},
            TypeError,
            r"unexpected solver parameter\(s\) 'max_iter'; allowed: eps, unassigned_policy, void_index",
        ),
    ],
)
def test_bad_options_name_the_argument_value_and_allowed(kwargs, error, match):
    with pytest.raises(error, match=match):
        rankseg(PROBS, **kwargs)
    with pytest.raises(error, match=match):
        RankSEG(**kwargs)(PROBS)


@pytest.mark.parametrize(
    ("metric", "solver"),
    [("dice", "exact"), ("iou", "exact"), ("dice", "BA"), ("dice", "TRNA"), ("dice", "BA+TRNA")],
)
def test_every_documented_solver_runs_without_warning(metric, solver):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels = rankseg(PROBS, metric=metric, solver=solver)
    assert labels.shape == (2, 8, 8)


def test_predictor_keeps_arguments_as_given_and_pickles():
    predictor = RankSEG(metric=" Dice", solver="BA", smooth=0.5, pruning_prob=0.3, eps=1e-3, void_index=7)
    assert predictor.solver == "BA" and predictor.metric == " Dice"
    assert predictor.smooth == 0.5 and predictor.pruning_prob == 0.3
    assert predictor.solver_params == {"eps": 1e-3, "void_index": 7}
    clone = pickle.loads(pickle.dumps(predictor))
    assert vars(clone) == vars(predictor)
    assert "solver='BA'" in repr(predictor) and "eps=0.001" in repr(predictor)


def test_predictor_defaults_match_the_documented_signature():
    predictor = RankSEG()
    assert (
        predictor.metric,
        predictor.smooth,
        predictor.output_mode,
        predictor.solver,
        predictor.pruning_prob,
    ) == (
        "dice",
        0.0,
        "multiclass",
        "RMA",
        0.5,
    )
    assert predictor.solver_params == {}
    out = RankSEG(metric="dice", solver="RMA", output_mode="multiclass")(PROBS)
    assert torch.equal(out, RankSEG().predict(PROBS))


def test_accuracy_with_the_default_solver_does_not_warn():
    """The documented default solver='RMA' is not a choice the user made for accuracy."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert RankSEG(metric="acc").solver == "RMA"
        assert torch.equal(RankSEG(metric="acc")(PROBS), PROBS.argmax(1))
        assert torch.equal(rankseg(PROBS, metric="acc", output_mode="multilabel"), PROBS > 0.5)


# ----------------------------------------------------------------- issue 9, items 5, 6 and 10


def test_numpy_scalars_and_fractions_are_accepted_like_python_numbers():
    from fractions import Fraction

    import numpy as np

    base = rankseg(PROBS, smooth=0.5, pruning_prob=0.25, unassigned_policy="void", void_index=7)
    for smooth, prune, void in [
        (np.float32(0.5), np.float64(0.25), np.int64(7)),
        (Fraction(1, 2), Fraction(1, 4), np.uint8(7)),
    ]:
        got = rankseg(PROBS, smooth=smooth, pruning_prob=prune, unassigned_policy="void", void_index=void)
        assert torch.equal(got, base)
    with pytest.raises(TypeError, match=r"void_index must be an integer"):
        rankseg(PROBS, unassigned_policy="void", void_index=np.bool_(True))


@pytest.mark.parametrize("classes", [2, 255, 256, 257, 300])
def test_the_void_index_advice_never_proposes_a_class_index(classes):
    import re

    probs = torch.softmax(torch.randn(1, classes, 2, 2, generator=torch.Generator().manual_seed(0)), dim=1)
    for void_index in {0, classes - 1, min(255, classes - 1)}:
        with pytest.raises(ValueError, match=r"is a class index") as info:
            rankseg(probs, unassigned_policy="void", void_index=void_index)
        advice = re.search(r"\(e\.g\. (-?\d+) or (-?\d+)\)", str(info.value))
        assert advice is not None
        suggested = [int(x) for x in advice.groups()]
        assert all(not 0 <= value < classes for value in suggested), (classes, suggested)
        rankseg(probs, unassigned_policy="void", void_index=suggested[0])  # the advice works


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"eps": 1e-3},
            r"eps=0\.001 has no effect: it only tunes the solvers BA, TRNA and BA\+TRNA, not 'RMA'",
        ),
        ({"solver": "exact", "eps": 1e-3}, r"eps=0\.001 has no effect: .* not 'exact'"),
        (
            {"output_mode": "multilabel", "unassigned_policy": "void"},
            r"unassigned_policy='void' has no effect: output_mode='multilabel' assigns no labels",
        ),
        (
            {"output_mode": "multilabel", "void_index": 7},
            r"void_index=7 has no effect: output_mode='multilabel' assigns no labels",
        ),
        ({"void_index": 7}, r"void_index=7 has no effect: it is only written with unassigned_policy='void'"),
        (
            {"unassigned_policy": "max_score", "void_index": 7},
            r"void_index=7 has no effect: it is only written with unassigned_policy='void'",
        ),
        (
            {"metric": "acc", "unassigned_policy": "void"},
            r"unassigned_policy='void' has no effect: metric 'acc'",
        ),
        ({"metric": "acc", "smooth": 1.0}, r"smooth=1\.0 has no effect: metric 'acc' has no smoothing"),
        (
            {"metric": "acc", "pruning_prob": 0.2},
            r"pruning_prob=0\.2 has no effect: metric 'acc' prunes no class",
        ),
    ],
)
def test_options_without_effect_warn_naming_the_option_and_why(kwargs, message):
    with pytest.warns(UserWarning, match=message):
        out = rankseg(PROBS, **kwargs)
    with pytest.warns(UserWarning, match=message):
        RankSEG(**kwargs)(PROBS)
    ineffective = {"eps", "unassigned_policy", "void_index", "smooth", "pruning_prob"}
    plain = {k: v for k, v in kwargs.items() if k not in ineffective}
    assert torch.equal(out, rankseg(PROBS, **plain))  # and indeed they change nothing


@pytest.mark.parametrize(
    "kwargs",
    [
        {"solver": "BA", "eps": 1e-3},
        {"solver": "BA+TRNA", "eps": 1e-3},
        {"unassigned_policy": "void", "void_index": 7},
        {"unassigned_policy": "max_score"},
        {"metric": "acc", "smooth": 0.0, "pruning_prob": 0.5},
        {"output_mode": "multilabel", "smooth": 1.0, "pruning_prob": 0.2},
    ],
)
def test_options_with_an_effect_do_not_warn(kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rankseg(PROBS, **kwargs)
