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
