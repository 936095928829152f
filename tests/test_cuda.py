"""The same behaviour on CUDA as on the CPU (skipped without a GPU; CI has none)."""

import pytest
import torch

from rankseg import RankSEG
from rankseg.data import synthetic_probs
from rankseg.functional import rankseg

from reference import mask_objective, rma_scan

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("metric", ["dice", "iou"])
@pytest.mark.parametrize("smooth", [0.0, 1.0])
@pytest.mark.parametrize("output_mode", ["multiclass", "multilabel"])
@pytest.mark.parametrize("shape", [(2, 5, 64, 48), (1, 1, 700, 700), (1, 3, 32, 32, 32), (3, 2, 900)])
def test_cuda_equals_cpu(metric, smooth, output_mode, shape):
    if output_mode == "multiclass" and shape[1] == 1:
        pytest.skip("one channel is multilabel only")
    probs = synthetic_probs(shape[0], shape[1], shape[2:], seed=3).double()
    cpu = rankseg(probs, metric=metric, smooth=smooth, output_mode=output_mode)
    gpu = rankseg(probs.cuda(), metric=metric, smooth=smooth, output_mode=output_mode)
    assert gpu.device.type == "cuda"
    assert torch.equal(gpu.cpu(), cpu)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cuda_dtypes_and_no_modification(dtype):
    probs = synthetic_probs(2, 4, (64, 64), seed=1).to(dtype).cuda()
    before = probs.clone()
    out = RankSEG()(probs)
    assert out.device == probs.device and out.dtype == torch.int64
    assert torch.equal(probs, before)
    assert torch.equal(out.cpu(), RankSEG()(probs.cpu()))


def test_cuda_masks_attain_the_rma_maximum():
    probs = synthetic_probs(1, 3, (128, 128), seed=2).double().cuda()
    masks = rankseg(probs, output_mode="multilabel", pruning_prob=0.0).cpu().numpy()
    p = probs.cpu().numpy()
    for c in range(3):
        _, best = rma_scan("dice", p[0, c], 0.0)
        assert mask_objective("dice", p[0, c], masks[0, c], 0.0) >= best - 1e-12


@pytest.mark.parametrize(
    ("metric", "solver"),
    [("dice", "exact"), ("iou", "exact"), ("dice", "BA"), ("dice", "TRNA"), ("dice", "BA+TRNA")],
)
@pytest.mark.parametrize("shape", [(2, 3, 40, 40), (1, 1, 300, 300)])
def test_cuda_solvers_equal_cpu(metric, solver, shape):
    probs = synthetic_probs(shape[0], shape[1], shape[2:], seed=5).double()
    cpu = rankseg(probs, metric=metric, solver=solver, output_mode="multilabel")
    gpu = rankseg(probs.cuda(), metric=metric, solver=solver, output_mode="multilabel")
    assert torch.equal(gpu.cpu(), cpu)


def test_cuda_expected_metrics_equal_cpu():
    from rankseg.metrics import expected_dice, expected_iou

    probs = synthetic_probs(2, 3, (70, 70), seed=6).double()
    masks = probs > 0.4
    for fn in (expected_dice, expected_iou):
        torch.testing.assert_close(fn(probs.cuda(), masks.cuda()).cpu(), fn(probs, masks), atol=1e-12, rtol=0)
