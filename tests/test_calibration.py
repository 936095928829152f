"""Temperature scaling (rankseg.calibration) and calibration_error (rankseg.metrics), issue 10.

Synthetic truth: smooth true logits ``z`` (the recipe of ``rankseg.data.synthetic_probs``), labels
drawn from ``softmax(z)`` / ``sigmoid(z)``, and a miscalibrated "model" that outputs ``k * z``;
the right temperature is then exactly ``k``.
"""

from __future__ import annotations

import functools
import itertools
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import rankseg.calibration as calibration
from rankseg import RankSEG
from rankseg.calibration import NotFittedError, TemperatureScaling, resolve_calibration
from rankseg.data import sample_labels
from rankseg.metrics import CalibrationError, calibration_error, dice_score

ROOT = Path(__file__).resolve().parents[1]
KS = (0.3, 0.5, 2.0, 4.0)
CLASS_KS = torch.tensor([0.3, 0.5, 2.0, 4.0, 0.7, 3.0], dtype=torch.float64)


def true_logits(batch: int, classes: int, size: int, seed: int, bias: float = 0.0) -> torch.Tensor:
    """Smooth float64 logits: a coarse field (std 6) upsampled to 1/8 size, cell noise, bilinear to full."""
    gen = torch.Generator().manual_seed(seed)
    low, coarse = (max(2, size // 8),) * 2, (max(2, size // 32),) * 2
    field = torch.randn(batch, classes, *coarse, generator=gen, dtype=torch.float64) * 6.0
    field = F.interpolate(field, size=low, mode="bilinear", align_corners=False)
    field += torch.randn(batch, classes, *low, generator=gen, dtype=torch.float64)
    return F.interpolate(field, size=(size, size), mode="bilinear", align_corners=False) + bias


@pytest.fixture(scope="module")
def softmax_data():
    """16 validation and 16 test images of 64 x 64, six classes, labels drawn from softmax(z)."""
    fit_z, test_z = true_logits(16, 6, 64, seed=1), true_logits(16, 6, 64, seed=2)
    fit_y = sample_labels(torch.softmax(fit_z, 1), seed=3)
    test_y = sample_labels(torch.softmax(test_z, 1), seed=4)
    return fit_z, fit_y, test_z, test_y


@pytest.fixture(scope="module")
def sigmoid_data():
    """The same for three independent sigmoid classes (foreground ~15%), labels (B, 3, 64, 64) bool."""
    fit_z, test_z = true_logits(16, 3, 64, seed=5, bias=-2.0), true_logits(16, 3, 64, seed=6, bias=-2.0)
    fit_y = sample_labels(torch.sigmoid(fit_z), seed=7, output_mode="multilabel")
    test_y = sample_labels(torch.sigmoid(test_z), seed=8, output_mode="multilabel")
    return fit_z, fit_y, test_z, test_y


def relative(a, b) -> float:
    return float(((torch.as_tensor(a) - torch.as_tensor(b)).abs() / torch.as_tensor(b).abs()).max())


# ---------------------------------------------------------------------- synthetic truth


@pytest.mark.parametrize("k", KS)
def test_global_temperature_recovers_the_miscalibration_factor(softmax_data, sigmoid_data, k):
    for activation, (fit_z, fit_y, _, _) in (("softmax", softmax_data), ("sigmoid", sigmoid_data)):
        scaler = TemperatureScaling(activation).fit(k * fit_z, fit_y)
        assert scaler.temperature_.shape == ()
        assert relative(scaler.temperature_, k) < 0.05, (activation, float(scaler.temperature_))
        assert scaler.nll_after_ < scaler.nll_before_


@pytest.mark.parametrize("seed", range(6))
def test_the_newton_iteration_converges_in_a_few_passes(seed):
    """Regression: a last Newton step below one ulp of 1/T used to count as leaving the bracket,
    so the solver bisected away from the root and crawled back (~40 passes instead of ~6)."""
    logits = true_logits(4, 6, 32, seed=100 + seed)
    labels = sample_labels(torch.softmax(logits, 1), seed=seed)
    for activation, target in (("softmax", labels), ("sigmoid", F.one_hot(labels, 6).movedim(-1, 1))):
        for k in KS:
            scaler = TemperatureScaling(activation).fit(k * logits, target)
            assert scaler.n_passes_ <= 10, (activation, k, scaler.n_passes_)


def test_per_class_temperature_recovers_each_class_factor(softmax_data, sigmoid_data):
    for activation, (fit_z, fit_y, _, _) in (("softmax", softmax_data), ("sigmoid", sigmoid_data)):
        ks = CLASS_KS[: fit_z.shape[1]]
        scaler = TemperatureScaling(activation, per_class=True).fit(fit_z * ks[:, None, None], fit_y)
        assert scaler.temperature_.shape == (fit_z.shape[1],)
        assert relative(scaler.temperature_, ks) < 0.05, (activation, scaler.temperature_)


@pytest.mark.parametrize("k", KS)
def test_rankseg_after_calibration_matches_rankseg_on_the_true_probabilities(softmax_data, sigmoid_data, k):
    fit_z, fit_y, test_z, test_y = softmax_data
    predictor = RankSEG(metric="dice")
    truth = float(dice_score(predictor(torch.softmax(test_z, 1)), test_y, 6))
    scaler = TemperatureScaling().fit(k * fit_z, fit_y)
    calibrated = float(dice_score(predictor(scaler.transform(k * test_z)), test_y, 6))
    assert abs(calibrated - truth) <= 0.003, (calibrated, truth)
    if k < 1:  # the check has teeth: uncalibrated, RankSEG is far from its optimum here
        raw = float(dice_score(predictor(torch.softmax(k * test_z, 1)), test_y, 6))
        assert truth - raw > 0.02, (raw, truth)

    fit_z, fit_y, test_z, test_y = sigmoid_data
    predictor = RankSEG(metric="dice", output_mode="multilabel")
    truth = float(dice_score(predictor(torch.sigmoid(test_z)), test_y, input_format="mask"))
    scaler = TemperatureScaling("sigmoid").fit(k * fit_z, fit_y)
    calibrated = float(dice_score(predictor(scaler.transform(k * test_z)), test_y, input_format="mask"))
    assert abs(calibrated - truth) <= 0.003, (calibrated, truth)
    raw = float(dice_score(predictor(torch.sigmoid(k * test_z)), test_y, input_format="mask"))
    assert truth - raw > 0.005, (raw, truth)


@pytest.mark.parametrize("k", KS)
def test_calibration_error_falls_after_calibration(softmax_data, sigmoid_data, k):
    fit_z, fit_y, test_z, test_y = softmax_data
    scaler = TemperatureScaling().fit(k * fit_z, fit_y)
    before = calibration_error(torch.softmax(k * test_z, 1), test_y).ece
    after = calibration_error(scaler.transform(k * test_z), test_y).ece
    assert float(after) < 0.5 * float(before) and float(after) < 0.01, (before, after)

    fit_z, fit_y, test_z, test_y = sigmoid_data
    scaler = TemperatureScaling("sigmoid").fit(k * fit_z, fit_y)
    before = calibration_error(torch.sigmoid(k * test_z), test_y).ece
    after = calibration_error(scaler.transform(k * test_z), test_y).ece
    assert before.shape == after.shape == (3,)
    assert bool((after < 0.5 * before).all()) and float(after.max()) < 0.01, (before, after)


# ---------------------------------------------------------------------- streaming, subsampling, determinism


def test_streaming_batches_give_the_concatenated_fit(softmax_data, sigmoid_data):
    for activation, per_class, (fit_z, fit_y, _, _) in (
        ("softmax", False, softmax_data),
        ("softmax", True, softmax_data),
        ("sigmoid", False, sigmoid_data),
        ("sigmoid", True, sigmoid_data),
    ):
        ks = CLASS_KS[: fit_z.shape[1], None, None] if per_class else 2.0
        logits = (fit_z * ks).float()
        whole = TemperatureScaling(activation, per_class).fit(logits, fit_y).temperature_
        cuts = [0, 3, 8, 9, 16]
        pairs = [(logits[a:b], fit_y[a:b]) for a, b in itertools.pairwise(cuts)]
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(logits, fit_y),
            batch_size=5,
            shuffle=True,  # another order on every pass: the same data all the same
            generator=torch.Generator().manual_seed(0),
        )
        for batches in (pairs, tuple(pairs), loader, functools.partial(iter, pairs)):
            streamed = TemperatureScaling(activation, per_class).fit(batches).temperature_
            assert relative(streamed, whole) < 1e-6, (activation, per_class, type(batches).__name__)
        two_lists = TemperatureScaling(activation, per_class).fit(
            [x for x, _ in pairs], [y for _, y in pairs]
        )
        assert relative(two_lists.temperature_, whole) < 1e-6


def test_chunking_of_large_images_gives_the_same_fit(softmax_data, sigmoid_data, monkeypatch):
    """Images larger than one work chunk are split along the pixels; ignore_index and the
    subsample's positions must stay aligned with their pixels."""
    fit_z, fit_y, _, _ = softmax_data
    labels = fit_y.clone()
    labels[:, :10] = 255
    sig_z, sig_y, _, _ = sigmoid_data
    sig_labels = sig_y.to(torch.uint8)
    sig_labels[:, 1, 20:30] = 255
    cases = [("softmax", 2 * fit_z, labels), ("sigmoid", 0.5 * sig_z, sig_labels)]
    for activation, logits, target in cases:
        for per_class in (False, True):
            scaler = TemperatureScaling(activation, per_class, ignore_index=255, subsample=0.5, seed=3)
            expected = scaler.fit(logits, target).temperature_
            with monkeypatch.context() as patch:
                patch.setattr(calibration, "_CHUNK_ELEMENTS", 1000)
                chunked = scaler.fit(logits, target).temperature_
            assert relative(chunked, expected) < 1e-9, (activation, per_class)


def test_subsample_is_seeded_and_independent_of_batching(softmax_data):
    fit_z, fit_y, _, _ = softmax_data
    logits = 2 * fit_z
    make = lambda seed: TemperatureScaling(subsample=0.25, seed=seed)  # noqa: E731
    first = make(0).fit(logits, fit_y)
    assert torch.equal(first.temperature_, make(0).fit(logits, fit_y).temperature_)
    assert not torch.equal(first.temperature_, make(1).fit(logits, fit_y).temperature_)
    assert 0.24 < first.n_pixels_ / fit_y.numel() < 0.26
    streamed = make(0).fit([(logits[i : i + 3], fit_y[i : i + 3]) for i in range(0, 16, 3)])
    assert relative(streamed.temperature_, first.temperature_) < 1e-6
    assert relative(first.temperature_, 2.0) < 0.05


def test_fit_is_deterministic_and_leaves_its_inputs_alone(softmax_data):
    fit_z, fit_y, _, _ = softmax_data
    logits = np.asarray(3 * fit_z[:4], dtype=np.float32)
    labels = fit_y[:4].numpy().astype(np.uint8)
    logits.flags.writeable = False
    labels.flags.writeable = False
    saved = logits.copy(), labels.copy()
    runs = [TemperatureScaling(per_class=True).fit(logits, labels).temperature_ for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    np.testing.assert_array_equal(logits, saved[0])
    np.testing.assert_array_equal(labels, saved[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_every_float_dtype_fits_and_transforms(softmax_data, dtype):
    fit_z, fit_y, _, _ = softmax_data
    logits = (2 * fit_z[:4]).to(dtype)
    scaler = TemperatureScaling().fit(logits, fit_y[:4])
    exact = TemperatureScaling().fit(logits.double(), fit_y[:4])  # the same values, in float64
    assert relative(scaler.temperature_, exact.temperature_) < 1e-9
    probs = scaler.transform(logits)
    assert probs.dtype == dtype and probs.shape == logits.shape
    reference = torch.softmax(logits.double() / exact.temperature_, dim=1)
    assert float((probs.double() - reference).abs().max()) < (1e-2 if dtype.itemsize == 2 else 1e-6)


def test_fit_and_transform_on_the_device(device, softmax_data, sigmoid_data):
    fit_z, fit_y, _, _ = softmax_data
    cpu = TemperatureScaling(per_class=True).fit(2 * fit_z[:4], fit_y[:4]).temperature_
    scaler = TemperatureScaling(per_class=True).fit((2 * fit_z[:4]).to(device), fit_y[:4].to(device))
    assert scaler.temperature_.device.type == "cpu"
    assert relative(scaler.temperature_, cpu) < 1e-9
    probs = scaler.transform((2 * fit_z[:4]).float().to(device))
    assert probs.device.type == device.type and probs.dtype == torch.float32
    sig_z, sig_y, _, _ = sigmoid_data
    cpu = TemperatureScaling("sigmoid").fit(sig_z[:4], sig_y[:4]).temperature_
    on_device = TemperatureScaling("sigmoid").fit(sig_z[:4].to(device), sig_y[:4].to(device)).temperature_
    assert relative(on_device, cpu) < 1e-9


# ---------------------------------------------------------------------- the fit is the NLL minimiser


@st.composite
def small_problems(draw):
    """Integer-valued logits (ties) at three scales (0.01: nearly flat; 30: saturated), labels that
    mostly follow the logits (informative) with some drawn freely, and ignored pixels (9)."""
    activation = draw(st.sampled_from(["softmax", "sigmoid"]))
    per_class = draw(st.booleans())
    batch, classes, pixels = draw(st.integers(1, 2)), draw(st.integers(2, 3)), draw(st.integers(1, 16))
    scale = draw(st.sampled_from([1.0, 0.01, 30.0]))
    size = batch * classes * pixels
    values = draw(st.lists(st.integers(-3, 3), min_size=size, max_size=size))
    logits = torch.tensor(values, dtype=torch.float64).reshape(batch, classes, pixels) * scale
    followed = logits.argmax(dim=1) if activation == "softmax" else (logits > 0).long()
    free_values = [*range(classes), 9] if activation == "softmax" else [0, 1, 9]
    size = followed.numel()
    free = torch.tensor(draw(st.lists(st.sampled_from(free_values), min_size=size, max_size=size)))
    agree = torch.tensor(draw(st.lists(st.booleans(), min_size=size, max_size=size)))
    labels = torch.where(agree.reshape(followed.shape), followed, free.reshape(followed.shape))
    return activation, per_class, logits, labels


def _reference_nll(activation: str, logits: torch.Tensor, labels: torch.Tensor, beta: torch.Tensor) -> float:
    shape = [1, -1, 1]
    scaled = logits * beta.reshape(shape)
    if activation == "softmax":
        return float(F.cross_entropy(scaled, labels, ignore_index=9, reduction="sum"))
    valid = labels != 9
    losses = F.binary_cross_entropy_with_logits(scaled, (labels == 1).double(), reduction="none")
    return float(losses[valid].sum())


@given(small_problems())
def test_the_fit_minimises_the_nll_or_says_why_none_exists(problem):
    """Either the fit is a stationary point of the NLL (checked against PyTorch's cross-entropy
    at nearby temperatures), or it raises one of the named errors of a problem without a positive,
    finite minimiser."""
    activation, per_class, logits, labels = problem
    scaler = TemperatureScaling(activation, per_class, ignore_index=9)
    try:
        scaler.fit(logits, labels)
    except ValueError as error:
        if "look like probabilities" in str(error):  # the documented rule
            assert 0 <= float(logits.min()) < float(logits.max()) <= 1
            assert activation == "sigmoid" or float((logits.sum(1) - 1).abs().max()) <= 1e-3
            return
        assert re.search(
            "no labelled|per_class=True needs|no better than chance|separate|did not converge", str(error)
        ), str(error)
        return
    beta = 1.0 / scaler.temperature_.reshape(-1)
    assert bool((beta > 0).all())
    best = _reference_nll(activation, logits, labels, beta)
    for k in range(beta.numel()):
        for factor in (1 - 1e-3, 1 + 1e-3):
            moved = beta.clone()
            moved[k] *= factor
            assert best <= _reference_nll(activation, logits, labels, moved) + 1e-9 * (1 + abs(best))


def test_no_information_and_perfect_separation_are_refused_by_name(softmax_data):
    fit_z, _, _, _ = softmax_data
    logits = fit_z[:2]
    with pytest.raises(ValueError, match="no better than chance"):
        TemperatureScaling().fit(logits, logits.argmin(dim=1))  # every label on its lowest logit
    with pytest.raises(ValueError, match="separate the labels perfectly"):
        TemperatureScaling().fit(logits, logits.argmax(dim=1))
    with pytest.raises(ValueError, match=r"separate the labels of classes \[0\] perfectly"):
        TemperatureScaling("sigmoid", per_class=True).fit(
            logits[:, :2], torch.stack([logits[:, 0] > 0] * 2, 1)
        )


def test_per_class_scaling_that_separates_the_labels_is_refused_by_name():
    """The raw logits misrank pixel 0 (1 < 2), so a global temperature exists; but 1/T = (4, 1)
    ranks every label first, so the per-class NLL has no finite minimiser."""
    logits = torch.tensor([[[1.0, -1.0, 3.0, 5.0], [2.0, -3.0, 1.0, 0.0]]], dtype=torch.float64)
    labels = torch.tensor([[0, 1, 0, 0]])
    assert TemperatureScaling().fit(logits, labels).temperature_ > 0
    with pytest.raises(ValueError, match=r"scaled logits separate the labels perfectly.*per_class=False"):
        TemperatureScaling(per_class=True).fit(logits, labels)


# ---------------------------------------------------------------------- applying it


def test_transform_and_scale_logits_divide_along_the_class_axis(softmax_data):
    fit_z, fit_y, _, _ = softmax_data
    logits = (2 * fit_z[:2]).float()
    scaler = TemperatureScaling(per_class=True).fit(logits, fit_y[:2])
    temperature = scaler.temperature_.float()
    assert torch.equal(scaler.scale_logits(logits), logits / temperature[:, None, None])
    assert torch.allclose(scaler.transform(logits), torch.softmax(logits / temperature[:, None, None], 1))
    sam_like = logits[:, None].repeat(1, 2, 1, 1, 1)  # (B, P, C, H, W), classes on dim 2
    assert torch.equal(scaler.scale_logits(sam_like, dim=2), sam_like / temperature[:, None, None])
    as_array = scaler.transform(logits.numpy())
    assert isinstance(as_array, np.ndarray) and as_array.dtype == np.float32
    with pytest.raises(ValueError, match=r"6 classes but logits of shape .* have 5 along dim=1"):
        scaler.scale_logits(logits[:, :5])
    glob = TemperatureScaling().fit(logits, fit_y[:2])
    assert glob.scale_logits(logits[:, :5]).shape == (2, 5, 64, 64)  # a global T fits any channel count


def test_unfitted_use_is_refused():
    scaler = TemperatureScaling()
    assert not hasattr(scaler, "temperature_")
    for call in (lambda: scaler.temperature_, lambda: scaler.transform(torch.zeros(1, 2, 3))):
        with pytest.raises(NotFittedError, match=r"not fitted yet: call \.fit"):
            call()
    with pytest.raises(NotFittedError):
        resolve_calibration(scaler)
    assert scaler.state_dict()["temperature"] is None


# ---------------------------------------------------------------------- state, files


def test_state_dict_save_and_load_round_trip(softmax_data, tmp_path):
    fit_z, fit_y, _, _ = softmax_data
    for per_class in (False, True):
        scaler = TemperatureScaling(per_class=per_class, ignore_index=255, subsample=0.5, seed=4)
        scaler.fit(2 * fit_z[:4], fit_y[:4])
        copy = TemperatureScaling().load_state_dict(json.loads(json.dumps(scaler.state_dict())))
        assert torch.equal(copy.temperature_, scaler.temperature_)
        assert (copy.per_class, copy.ignore_index, copy.subsample, copy.seed) == (per_class, 255, 0.5, 4)
        path = tmp_path / "calibration.json"
        path.write_text("an older file")
        assert scaler.save(path) == path
        loaded = TemperatureScaling.load(str(path))
        assert torch.equal(loaded.temperature_, scaler.temperature_)
        assert loaded.n_pixels_ == scaler.n_pixels_ and loaded.num_classes_ == 6
        assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.json"]  # no temporary left
        assert torch.equal(pickle.loads(pickle.dumps(scaler)).temperature_, scaler.temperature_)
        assert torch.equal(resolve_calibration(path, activation="softmax").temperature_, scaler.temperature_)
        assert resolve_calibration(scaler.state_dict()).per_class is per_class
    assert "temperature_=" in repr(scaler)


def test_save_failures_leave_the_old_file(tmp_path, softmax_data):
    fit_z, fit_y, _, _ = softmax_data
    scaler = TemperatureScaling().fit(2 * fit_z[:2], fit_y[:2])
    with pytest.raises(FileNotFoundError):
        scaler.save(tmp_path / "missing-dir" / "calibration.json")
    path = tmp_path / "calibration.json"
    path.write_text("keep me")
    broken = TemperatureScaling().fit(2 * fit_z[:2], fit_y[:2])
    broken._fitted["nll_after"] = object()  # not JSON serialisable: the write fails midway
    with pytest.raises(TypeError):
        broken.save(path)
    assert path.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.json"]


@pytest.mark.parametrize(
    ("state", "error", "message"),
    [
        ([1.0], TypeError, "state must be a mapping"),
        ({"format": "other", "version": 1, "temperature": 1.0}, ValueError, "'format' is 'other'"),
        ({"format": "rankseg.TemperatureScaling", "version": 9, "temperature": 1.0}, ValueError, "version 9"),
        (
            {"format": "rankseg.TemperatureScaling", "version": 1, "temp": 1.0},
            ValueError,
            r"unknown keys \['temp'\]",
        ),
        (
            {"format": "rankseg.TemperatureScaling", "version": 1, "temperature": -2.0},
            ValueError,
            "positive finite",
        ),
        (
            {"format": "rankseg.TemperatureScaling", "version": 1, "temperature": [1.0]},
            ValueError,
            "per_class=False",
        ),
        (
            {
                "format": "rankseg.TemperatureScaling",
                "version": 1,
                "per_class": True,
                "temperature": [1.0, 2.0],
            },
            ValueError,
            "needs num_classes=2",
        ),
        (
            {"format": "rankseg.TemperatureScaling", "version": 1, "activation": "relu", "temperature": 1.0},
            ValueError,
            "activation must be one of 'softmax', 'sigmoid'; got 'relu'",
        ),
    ],
)
def test_bad_states_are_refused_by_name(state, error, message):
    with pytest.raises(error, match=message):
        TemperatureScaling().load_state_dict(state)


def test_load_names_a_bad_file(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"calibration.json is not a TemperatureScaling JSON file"):
        TemperatureScaling.load(path)
    path.write_text(json.dumps({"format": "rankseg.TemperatureScaling", "version": 1, "temperature": 0}))
    with pytest.raises(ValueError, match=r"calibration.json: temperature must be a positive"):
        TemperatureScaling.load(path)


def test_resolve_calibration_refuses_the_other_activation_and_other_types(softmax_data):
    fit_z, fit_y, _, _ = softmax_data
    scaler = TemperatureScaling().fit(2 * fit_z[:2], fit_y[:2])
    assert resolve_calibration(scaler, activation="softmax") is scaler
    with pytest.raises(
        ValueError, match="fitted with activation='softmax', but these outputs need activation='sigmoid'"
    ):
        resolve_calibration(scaler, activation="sigmoid")
    with pytest.raises(TypeError, match=r"calibration must be a fitted TemperatureScaling.*got float"):
        resolve_calibration(2.0)


# ---------------------------------------------------------------------- bad input


def _one_shot():
    yield torch.zeros(1, 2, 4), torch.zeros(1, 4, dtype=torch.long)


class _ExhaustedAfterOnePass:
    """Re-iterable in appearance, but its second pass yields nothing."""

    def __init__(self, pairs):
        self._iterator = iter(pairs)

    def __iter__(self):
        return self._iterator


@pytest.fixture(scope="module")
def small():
    logits = true_logits(2, 3, 16, seed=9)
    return logits, sample_labels(torch.softmax(logits, 1), seed=0)


@pytest.mark.parametrize(
    ("make_call", "error", "message"),
    [
        (
            lambda z, y: ((z, y[:, :8]), {}),
            ValueError,
            r"class indices of shape .* = \(2, 16, 16\).*got \(2, 8, 16\)",
        ),
        (lambda z, y: ((z, F.one_hot(y, 3).movedim(-1, 1)), {}), ValueError, "go with activation='sigmoid'"),
        (
            lambda z, y: ((z, y), {"activation": "sigmoid"}),
            ValueError,
            "class-index labels go with activation='softmax'",
        ),
        (
            lambda z, y: ((z.index_fill(2, torch.tensor([3]), float("nan")), y), {}),
            ValueError,
            "logits must be finite; they contain NaN",
        ),
        (lambda z, y: ((z.clone().fill_(float("inf")), y), {}), ValueError, "NaN or infinite"),
        (
            lambda z, y: ((torch.softmax(z, 1), y), {}),
            ValueError,
            "look like probabilities.*before the softmax",
        ),
        (
            lambda z, y: ((torch.sigmoid(z), F.one_hot(y, 3).movedim(-1, 1)), {"activation": "sigmoid"}),
            ValueError,
            "before the sigmoid",
        ),
        (
            lambda z, y: ((z, y + 1), {}),
            ValueError,
            r"labels must be class indices in \[0, 2\]; found the label 3",
        ),
        (
            lambda z, y: ((z, y - 1), {"ignore_index": 255}),
            ValueError,
            r"\[0, 2\] or ignore_index=255; .* label -1",
        ),
        (
            lambda z, y: ((z, 2 * (y == 1).long()[:, None].expand_as(z)), {"activation": "sigmoid"}),
            ValueError,
            "0 or 1",
        ),
        (lambda z, y: ((z, torch.full_like(y, 255)), {"ignore_index": 255}), ValueError, "no labelled pixel"),
        (
            lambda z, y: ((z, torch.where(y == 2, 0, y)), {"per_class": True}),
            ValueError,
            r"classes \[2\] have none",
        ),
        (
            lambda z, y: ((z[:, :1], y.clamp(max=0)), {}),
            ValueError,
            "one channel is a sigmoid model|at least two class",
        ),
        (lambda z, y: ((z, y.double()), {}), TypeError, "labels must hold integer class indices.*float64"),
        (
            lambda z, y: ((z, y == 1), {}),
            TypeError,
            "integer class indices for activation='softmax'; got dtype torch.bool",
        ),
        (lambda z, y: ((z.long(), y), {}), TypeError, "floating dtype .* got torch.int64"),
        (
            lambda z, y: ((z.numpy().astype(np.int32), y), {}),
            TypeError,
            "floating-point logits; got a numpy array of dtype int32",
        ),
        (lambda z, y: ((z,), {}), TypeError, r"labels is required .*fit\(logits, labels\)"),
        (
            lambda z, y: ((z, y.tolist()), {}),
            TypeError,
            "labels must be a torch.Tensor or numpy.ndarray when logits is one",
        ),
        (
            lambda z, y: ((_one_shot(),), {}),
            TypeError,
            r"batches is a one-shot iterator \(generator\).*fit\(lambda",
        ),
        (lambda z, y: ((iter([z]), [y]), {}), TypeError, "logits is a one-shot iterator"),
        (lambda z, y: (([(z, y, y)],), {}), TypeError, "batch 0 is a tuple of length 3"),
        (
            lambda z, y: (([(z, y), (z[:, :2], y)],), {}),
            ValueError,
            r"the first had 3, but logits \(batch 1\) have 2",
        ),
        (
            lambda z, y: (([z, z], [y]), {}),
            ValueError,
            "different numbers of batches: logits has more than 1",
        ),
        (
            lambda z, y: ((_ExhaustedAfterOnePass([(z, y)]),), {}),
            ValueError,
            "the batches changed between passes",
        ),
        (lambda z, y: (([],), {}), ValueError, "no batches"),
        (
            lambda z, y: ((z[:, :, 0, 0], y[:, 0, 0]), {}),
            ValueError,
            r"shape \(batch, classes, \*spatial\); got shape \(2, 3\)",
        ),
        (
            lambda z, y: ((z, y), {"activation": "softmx"}),
            ValueError,
            "activation must be one of 'softmax', 'sigmoid'; got 'softmx'",
        ),
        (
            lambda z, y: ((z, y), {"per_class": "yes"}),
            TypeError,
            "per_class must be True or False; got 'yes'",
        ),
        (
            lambda z, y: ((z, y), {"ignore_index": 1.5}),
            TypeError,
            "ignore_index must be an integer or None; got 1.5",
        ),
        (
            lambda z, y: ((z, y), {"subsample": 0}),
            ValueError,
            r"subsample must be a fraction in \(0, 1\] or None; got 0",
        ),
        (lambda z, y: ((z, y), {"seed": -1}), TypeError, "seed must be a non-negative integer; got -1"),
    ],
)
def test_bad_fit_input_is_refused_by_name(small, make_call, error, message):
    logits, labels = small
    args, options = make_call(logits, labels)
    with pytest.raises(error, match=message):
        TemperatureScaling(**options).fit(*args)
    assert torch.isfinite(logits).all()  # nothing of the user's was modified


def test_bad_transform_input_is_refused_by_name(small):
    logits, labels = small
    scaler = TemperatureScaling().fit(logits, labels)
    with pytest.raises(ValueError, match=r"needs at least two class channels.*activation='sigmoid'"):
        scaler.transform(logits[:, :1])
    with pytest.raises(TypeError, match="floating dtype"):
        scaler.transform(logits.long())
    with pytest.raises(ValueError, match=r"dim must be an integer in \[-4, 3\] for 4-d logits; got 4"):
        scaler.scale_logits(logits, dim=4)
    with pytest.raises(TypeError, match=r"torch.Tensor or numpy.ndarray; got list"):
        scaler.transform(logits.tolist())


# ---------------------------------------------------------------------- calibration_error


def numpy_calibration_error(probs, labels, n_bins, ignore_index=None, multilabel=False):
    """Direct statement: bins by confidence (edges b / n_bins, right-closed), sum |acc - conf| n_b / N."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    edges = np.arange(n_bins + 1) / n_bins

    def ece_of(confidence, correct):
        if confidence.size == 0:
            return np.nan
        bins = np.clip(np.digitize(confidence, edges, right=True) - 1, 0, n_bins - 1)
        total = 0.0
        for b in range(n_bins):
            inside = bins == b
            if inside.any():
                total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
        return total / confidence.size

    if not multilabel:
        valid = labels != ignore_index if ignore_index is not None else np.ones(labels.shape, bool)
        confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
        return ece_of(confidence[valid], (predicted == labels)[valid].astype(np.float64))
    out = []
    for c in range(probs.shape[1]):
        target = labels[:, c]
        valid = target != ignore_index if ignore_index is not None else np.ones(target.shape, bool)
        out.append(ece_of(probs[:, c][valid], (target[valid] == 1).astype(np.float64)))
    return np.array(out)


@st.composite
def calibration_inputs(draw):
    multilabel = draw(st.booleans())
    batch, classes, pixels = (
        draw(st.integers(1, 3)),
        draw(st.integers(1 if multilabel else 2, 4)),
        draw(st.integers(0, 20)),
    )
    # exact 0 and 1, bin edges (k / 10), ties
    values = st.sampled_from([0.0, 1.0, 0.1, 0.2, 0.5, 0.7, 0.3333]) | st.floats(0, 1, width=32)
    probs = np.array(
        draw(st.lists(values, min_size=batch * classes * pixels, max_size=batch * classes * pixels)),
        np.float32,
    )
    probs = probs.reshape(batch, classes, pixels)
    label_values = [0, 1, 255] if multilabel else [*range(classes), 255]
    size = probs.size if multilabel else batch * pixels
    labels = np.array(draw(st.lists(st.sampled_from(label_values), min_size=size, max_size=size)), np.int64)
    labels = labels.reshape(probs.shape if multilabel else (batch, pixels))
    return probs, labels, draw(st.sampled_from([1, 5, 10, 15])), multilabel


@given(calibration_inputs())
def test_calibration_error_equals_a_direct_numpy_computation(case):
    probs, labels, n_bins, multilabel = case
    expected = numpy_calibration_error(probs, labels, n_bins, ignore_index=255, multilabel=multilabel)
    result = calibration_error(probs, labels, n_bins, ignore_index=255)
    assert isinstance(result.ece, np.ndarray)
    np.testing.assert_allclose(result.ece, expected, rtol=1e-12, atol=1e-12)
    tensor_result = calibration_error(
        torch.from_numpy(probs), torch.from_numpy(labels), n_bins, ignore_index=255
    )
    np.testing.assert_allclose(tensor_result.ece.numpy(), expected, rtol=1e-12, atol=1e-12)
    counts = result.counts
    valid = labels != 255
    assert counts.sum() == valid.sum() and counts.shape[-1] == n_bins
    filled = counts > 0
    assert np.isnan(result.confidence[~filled]).all() and np.isfinite(result.accuracy[filled]).all()
    assert (result.confidence[filled] >= result.bin_edges[:-1][np.nonzero(filled)[-1]] - 1e-12).all()


def test_calibration_error_of_no_pixels_is_nan_with_empty_bins():
    """Regression: bincount of an empty input returns int64 sums, which broke the NaN fill."""
    result = calibration_error(torch.zeros(2, 3, 0), torch.zeros(2, 0, dtype=torch.long), 4)
    assert torch.isnan(result.ece) and result.counts.tolist() == [0, 0, 0, 0]
    assert result.confidence.dtype == torch.float64 and torch.isnan(result.confidence).all()
    multilabel = calibration_error(np.zeros((1, 2, 3), np.float32), np.full((1, 2, 3), 255), ignore_index=255)
    assert multilabel.ece.shape == (2,) and np.isnan(multilabel.ece).all()


def test_calibration_error_merge_equals_one_call(softmax_data):
    _, _, test_z, test_y = softmax_data
    probs = torch.softmax(0.5 * test_z, 1)
    whole = calibration_error(probs, test_y, 10)
    merged = CalibrationError.merge(
        [calibration_error(probs[i : i + 4], test_y[i : i + 4], 10) for i in range(0, 16, 4)]
    )
    assert torch.equal(merged.counts, whole.counts)
    assert torch.allclose(merged.ece, whole.ece, rtol=1e-12) and torch.allclose(
        merged.confidence, whole.confidence, rtol=1e-12, equal_nan=True
    )
    with pytest.raises(ValueError, match="same bins"):
        CalibrationError.merge([whole, calibration_error(probs, test_y, 5)])


def test_calibration_error_on_the_device(device, softmax_data):
    _, _, test_z, test_y = softmax_data
    probs = torch.softmax(test_z[:2], 1).float()
    cpu = calibration_error(probs, test_y[:2])
    moved = calibration_error(probs.to(device), test_y[:2].to(device))
    assert moved.ece.device.type == "cpu"
    assert torch.allclose(moved.ece, cpu.ece, rtol=1e-9) and torch.equal(moved.counts, cpu.counts)


@pytest.mark.parametrize(
    ("probs", "labels", "options", "error", "message"),
    [
        (
            torch.rand(1, 3, 4),
            torch.zeros(1, 5, dtype=torch.long),
            {},
            ValueError,
            r"labels must have shape \(1, 4\)",
        ),
        (
            torch.rand(1, 3, 4) * 2,
            torch.zeros(1, 4, dtype=torch.long),
            {},
            ValueError,
            r"probabilities in \[0, 1\]",
        ),
        (
            torch.rand(1, 3, 4),
            torch.full((1, 4), 3),
            {},
            ValueError,
            r"class indices in \[0, 2\]; found the label 3",
        ),
        (
            torch.rand(1, 2, 4),
            torch.full((1, 2, 4), 2),
            {},
            ValueError,
            "labels must be 0 or 1; found the label 2",
        ),
        (
            torch.rand(1, 3, 4),
            torch.zeros(1, 4),
            {},
            TypeError,
            "integer class indices or 0/1 masks; got dtype torch.float32",
        ),
        (
            torch.rand(1, 3, 4),
            torch.zeros(1, 4, dtype=torch.long),
            {"n_bins": 0},
            ValueError,
            "n_bins must be a positive integer; got 0",
        ),
        (
            torch.rand(1, 3, 4),
            torch.zeros(1, 4, dtype=torch.long),
            {"ignore_index": "x"},
            TypeError,
            "ignore_index must be an integer",
        ),
    ],
)
def test_bad_calibration_error_input_is_refused_by_name(probs, labels, options, error, message):
    with pytest.raises(error, match=message):
        calibration_error(probs, labels, **options)


# ---------------------------------------------------------------------- the documentation


def test_the_documentation_examples_run(tmp_path, monkeypatch):
    """Every Python block of docs/calibration.md runs as shown (those marked ``# needs:`` use the
    reader's own data and are skipped), in a scratch directory (the example saves a file)."""
    text = (ROOT / "docs" / "calibration.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    runnable = [block for block in blocks if "# needs:" not in block]
    assert runnable, "docs/calibration.md shows the Python workflow"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in runnable:
        exec(compile(block, "docs/calibration.md", "exec"), namespace)
    assert (tmp_path / "calibration.json").exists()
    assert abs(float(namespace["scaler"].temperature_) - 0.4) < 0.02
    assert float(dice_score(namespace["preds"], namespace["labels_test"], 5)) > 0.52
