"""Input checking: every bad input gets a clear TypeError / ValueError; inputs are never modified."""

import numpy as np
import pytest
import torch

from rankseg import RankSEG
from rankseg.data import synthetic_probs
from rankseg.functional import rankseg


@pytest.mark.parametrize(
    ("probs", "match"),
    [
        ([[[0.5, 0.5]]], r"probs must be a torch\.Tensor or numpy\.ndarray .* got list"),
        (0.5, r"got float"),
        ("probs", r"got str"),
        (torch.ones(1, 2, 3, dtype=torch.int64), r"floating dtype .* got torch\.int64"),
        (torch.ones(1, 2, 3, dtype=torch.bool), r"floating dtype .* got torch\.bool"),
        (torch.ones(1, 2, 3, dtype=torch.complex64), r"floating dtype .* got torch\.complex64"),
        (np.ones((1, 2, 3), dtype=np.int32), r"numpy array of dtype int32"),
        (np.ones((1, 2, 3), dtype=bool), r"numpy array of dtype bool"),
    ],
)
def test_wrong_type_or_dtype_is_a_type_error(probs, match):
    with pytest.raises(TypeError, match=match):
        rankseg(probs)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((4,), r"shape \(batch, classes, \*spatial\).* got shape \(4,\)"),
        ((2, 4), r"got shape \(2, 4\)"),
        ((2, 0, 4), r"at least one class channel; got shape \(2, 0, 4\)"),
    ],
)
def test_wrong_rank_is_a_value_error(shape, match):
    with pytest.raises(ValueError, match=match):
        rankseg(torch.full(shape, 0.5))


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (float("nan"), r"NaN or infinite"),
        (float("inf"), r"NaN or infinite"),
        (-float("inf"), r"NaN or infinite"),
        (1.5, r"probabilities in \[0, 1\]; got values from 0 to 1\.5"),
        (-0.25, r"got values from -0\.25 to"),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_values_must_be_finite_probabilities(bad, match, dtype):
    probs = torch.zeros(2, 3, 5, 5, dtype=dtype)
    probs[1, 2, 3, 4] = bad
    with pytest.raises(ValueError, match=match):
        rankseg(probs, output_mode="multilabel")


def test_single_channel_multiclass_is_refused_with_advice():
    with pytest.raises(ValueError, match=r"at least two class channels.*output_mode='multilabel'"):
        rankseg(torch.rand(2, 1, 8, 8))


def test_void_index_that_is_a_class_is_refused():
    with pytest.raises(ValueError, match=r"void_index=2 is a class index for 4 classes"):
        rankseg(torch.softmax(torch.randn(1, 4, 8, 8), 1), unassigned_policy="void", void_index=2)


@pytest.mark.parametrize("output_mode", ["multiclass", "multilabel"])
def test_input_is_never_modified(output_mode):
    probs = synthetic_probs(2, 3, (40, 40), seed=1)
    before = probs.clone()
    rankseg(probs, output_mode=output_mode)
    rankseg(probs, output_mode=output_mode, smooth=1.0, metric="iou")
    assert torch.equal(probs, before)
    arr = probs.numpy().copy()
    arr.setflags(write=False)  # read-only arrays are accepted too
    rankseg(arr, output_mode=output_mode)
    np.testing.assert_array_equal(arr, before.numpy())


def test_long_rows_are_never_modified():
    probs = synthetic_probs(1, 1, (1024, 1024), seed=2)
    before = probs.clone()
    rankseg(probs, output_mode="multilabel")
    assert torch.equal(probs, before)


@pytest.mark.parametrize("output_mode", ["multiclass", "multilabel"])
def test_numpy_in_numpy_out(output_mode):
    probs = synthetic_probs(2, 3, (16, 12), seed=3)
    out = rankseg(probs.numpy(), output_mode=output_mode)
    assert isinstance(out, np.ndarray)
    assert out.dtype == (np.int64 if output_mode == "multiclass" else np.bool_)
    np.testing.assert_array_equal(out, rankseg(probs, output_mode=output_mode).numpy())


def test_numpy_views_with_odd_layouts():
    probs = synthetic_probs(2, 3, (16, 12), seed=3).numpy()
    expected = rankseg(probs)
    np.testing.assert_array_equal(rankseg(probs[:, :, ::-1])[:, ::-1], expected)  # negative strides
    np.testing.assert_array_equal(rankseg(probs.astype(">f4")), expected)  # big-endian
    np.testing.assert_array_equal(rankseg(np.asfortranarray(probs)), expected)


def test_non_contiguous_tensors():
    probs = synthetic_probs(2, 3, (16, 12), seed=3)
    t = probs.transpose(2, 3)  # a non-contiguous view
    assert torch.equal(rankseg(t), rankseg(t.contiguous()))


@pytest.mark.parametrize("output_mode", ["multiclass", "multilabel"])
def test_empty_batch_gives_empty_output(output_mode):
    out = rankseg(torch.empty(0, 3, 8, 8), output_mode=output_mode)
    assert out.shape == ((0, 8, 8) if output_mode == "multiclass" else (0, 3, 8, 8))
    assert out.dtype == (torch.int64 if output_mode == "multiclass" else torch.bool)
    out_np = rankseg(np.empty((0, 3, 8, 8)), output_mode=output_mode)
    assert isinstance(out_np, np.ndarray) and out_np.shape == out.shape


def test_zero_size_spatial_gives_empty_output():
    assert rankseg(torch.empty(2, 3, 0, 5)).shape == (2, 0, 5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("output_mode", ["multiclass", "multilabel"])
def test_half_precision_inputs_equal_the_same_values_in_float32(dtype, output_mode):
    probs = synthetic_probs(2, 4, (48, 40), seed=5).to(dtype)
    out = rankseg(probs, output_mode=output_mode)
    assert torch.equal(out, rankseg(probs.float(), output_mode=output_mode))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_long_rows(dtype):
    probs = synthetic_probs(1, 1, (800, 800), seed=5, bias=-1.0).to(dtype)
    assert torch.equal(
        rankseg(probs, output_mode="multilabel"), rankseg(probs.float(), output_mode="multilabel")
    )


@pytest.mark.parametrize("spatial", [(30,), (12, 10), (6, 5, 4)])
def test_any_number_of_spatial_dims(spatial):
    probs = synthetic_probs(2, 3, spatial, seed=4)
    assert rankseg(probs).shape == (2, *spatial)
    assert rankseg(probs, output_mode="multilabel").shape == (2, 3, *spatial)


def test_predictor_validates_when_called_not_when_built():
    predictor = RankSEG(metric="nope")  # stored as given
    assert predictor.metric == "nope"
    with pytest.raises(ValueError, match="metric must be one of"):
        predictor(torch.rand(1, 2, 4))


@pytest.mark.parametrize("solver", ["RMA", "exact", "BA", "TRNA"])
def test_inputs_that_require_grad(solver):
    """Probabilities straight from a model outside torch.no_grad(): no autograd, same result."""
    logits = torch.randn(1, 1, 700, 700, requires_grad=True)
    probs = torch.sigmoid(logits)
    out = rankseg(probs, solver=solver, output_mode="multilabel")
    assert not out.requires_grad
    assert torch.equal(out, rankseg(probs.detach(), solver=solver, output_mode="multilabel"))
    multi = torch.softmax(torch.randn(2, 3, 20, 20, requires_grad=True), dim=1)
    assert torch.equal(rankseg(multi, solver=solver), rankseg(multi.detach(), solver=solver))


def test_expected_metrics_accept_inputs_that_require_grad():
    from rankseg.metrics import expected_dice

    probs = torch.sigmoid(torch.randn(1, 1, 60, 60, requires_grad=True))
    assert torch.equal(expected_dice(probs, probs > 0.5), expected_dice(probs.detach(), probs.detach() > 0.5))


# ----------------------------------------------------------------- issue 9, item 4: odd tensors and arrays

from rankseg.metrics import dice_score, expected_dice, expected_iou, iou_score  # noqa: E402

LABELS = torch.zeros(1, 4, dtype=torch.long)


def _entry_points(probs=None, masks=None, preds=None, target=None):
    """Every public call that takes the argument, with the others valid."""
    probs_ok, masks_ok = torch.rand(1, 2, 4), torch.zeros(1, 2, 4, dtype=torch.bool)
    calls = []
    if probs is not None:
        calls += [
            ("probs", lambda: rankseg(probs)),
            ("probs", lambda: RankSEG(output_mode="multilabel")(probs)),
            ("probs", lambda: expected_dice(probs, masks_ok)),
        ]
    if masks is not None:
        calls += [("masks", lambda: expected_iou(probs_ok, masks))]
    if preds is not None:
        calls += [
            ("preds", lambda: dice_score(preds, LABELS, 3)),
            ("preds", lambda: iou_score(preds, LABELS, 3)),
        ]
    if target is not None:
        calls += [("target", lambda: dice_score(LABELS, target, 3))]
    return calls


@pytest.mark.parametrize(
    "make",
    [
        lambda shape, dtype: torch.zeros(shape, dtype=dtype, device="meta"),
        lambda shape, dtype: torch.zeros(shape, dtype=dtype).to_sparse(),
        lambda shape, dtype: torch.zeros(shape, dtype=dtype).to_sparse_csr() if len(shape) == 2 else None,
    ],
    ids=["meta", "sparse_coo", "sparse_csr"],
)
def test_meta_and_sparse_tensors_get_an_error_naming_the_argument(make):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        arguments = {
            "probs": make((1, 2, 4), torch.float32),
            "masks": make((1, 2, 4), torch.bool),
            "preds": make((1, 4), torch.long),
            "target": make((1, 4), torch.long),
        }
    arguments = {k: v for k, v in arguments.items() if v is not None}
    calls = _entry_points(**arguments)
    assert calls
    for name, call in calls:
        with pytest.raises(
            (TypeError, ValueError), match=rf"^{name} (is on the 'meta' device|must be a dense tensor)"
        ):
            call()


@pytest.mark.parametrize("dtype", [np.longdouble, object, "U2", "datetime64[s]", np.clongdouble])
def test_numpy_arrays_torch_cannot_hold_get_an_error_naming_the_argument(dtype):
    def array(shape):
        return np.zeros(shape).astype(dtype)

    calls = _entry_points(
        probs=array((1, 2, 4)), masks=array((1, 2, 4)), preds=array((1, 4)), target=array((1, 4))
    )
    for name, call in calls:
        with pytest.raises(TypeError, match=rf"^{name} must .*got a numpy array of dtype"):
            call()


def test_meta_and_sparse_inputs_are_left_untouched():
    sparse = torch.rand(1, 2, 4).to_sparse()
    before = sparse.to_dense().clone()
    with pytest.raises(TypeError):
        rankseg(sparse)
    assert sparse.is_sparse and torch.equal(sparse.to_dense(), before)
