"""Built-in example data: probability maps shaped like a segmentation network's output.

Real networks predict logits at a fraction of the input resolution (1/4 to 1/32) and the
post-processing upsamples them bilinearly, so their probability maps are smooth at the pixel scale
with structure (objects, boundaries, uncertain regions) at coarser scales. :func:`synthetic_probs`
imitates that: a smooth random logit field at ``1/(4 * stride)`` of the size, plus pixel-independent
noise at ``1/stride``, upsampled to full size and passed through softmax (several classes) or a
sigmoid (one class). Everything is generated deterministically from ``seed``, on the CPU.

Labels drawn from such maps (:func:`sample_labels`) make the maps calibrated by construction,
which is the setting where RankSEG's expected-metric optimality is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sample_labels", "synthetic_probs"]

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def synthetic_probs(
    batch: int,
    classes: int,
    spatial: Sequence[int],
    *,
    seed: int = 0,
    stride: int = 8,
    scale: float = 6.0,
    noise: float = 1.0,
    bias: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Random probability maps of shape ``(batch, classes, *spatial)``.

    Args:
        batch, classes: leading dims; one class gives sigmoid maps, several give softmax maps.
        spatial: 1 to 3 spatial sizes, e.g. ``(512, 512)`` or ``(128, 128, 128)``.
        seed: the maps are a deterministic function of all arguments.
        stride: the "network output" resolution is ``size / stride``.
        scale: standard deviation of the smooth logit field (larger: more confident maps).
        noise: standard deviation of the per-cell logit noise at the output resolution.
        bias: added to every logit of a single-class map (negative: smaller foreground).
        dtype: dtype of the result.

    Example:
        >>> from rankseg.data import synthetic_probs
        >>> probs = synthetic_probs(2, 3, (64, 64), seed=1)
        >>> probs.shape, bool(torch.allclose(probs.sum(1), torch.ones(2, 64, 64)))
        (torch.Size([2, 3, 64, 64]), True)
    """
    spatial = tuple(int(s) for s in spatial)
    if not 1 <= len(spatial) <= 3 or min(spatial) < 1:
        raise ValueError(f"spatial must hold 1 to 3 positive sizes; got {spatial}")
    if batch < 0 or classes < 1:
        raise ValueError(f"batch must be >= 0 and classes >= 1; got batch={batch}, classes={classes}")
    gen = torch.Generator().manual_seed(int(seed))
    mode = _MODES[len(spatial)]
    low = tuple(max(2, s // stride) for s in spatial)
    coarse = tuple(max(2, s // (4 * stride)) for s in spatial)
    field = torch.randn(batch, classes, *coarse, generator=gen) * scale
    field = F.interpolate(field, size=low, mode=mode, align_corners=False)
    field += noise * torch.randn(batch, classes, *low, generator=gen)
    logits = F.interpolate(field, size=spatial, mode=mode, align_corners=False)
    probs = torch.sigmoid(logits + bias) if classes == 1 else torch.softmax(logits, dim=1)
    return probs.to(dtype)


def sample_labels(probs: Tensor, *, seed: int = 0, output_mode: str = "multiclass") -> Tensor:
    """Draw ground-truth labels from the probabilities, independently per pixel.

    ``multiclass``: one class per pixel from the categorical distribution over the class axis,
    int64 of shape ``(batch, *spatial)``. ``multilabel``: one Bernoulli draw per class and pixel,
    bool of shape ``probs.shape``.

    Example:
        >>> from rankseg.data import sample_labels, synthetic_probs
        >>> probs = synthetic_probs(1, 4, (32, 32))
        >>> sample_labels(probs, seed=0).shape
        torch.Size([1, 32, 32])
    """
    gen = torch.Generator(device=probs.device).manual_seed(int(seed))
    p = probs.to(torch.float64)
    if output_mode == "multilabel":
        return torch.rand(p.shape, generator=gen, device=p.device, dtype=torch.float64) < p
    if output_mode != "multiclass":
        raise ValueError(f"output_mode must be 'multiclass' or 'multilabel'; got {output_mode!r}")
    cdf = p.cumsum(dim=1)
    u = torch.rand((p.shape[0], 1, *p.shape[2:]), generator=gen, device=p.device, dtype=torch.float64)
    u = u * cdf[:, -1:]  # guards against sums slightly below 1
    return (cdf <= u).sum(dim=1).clamp_(max=p.shape[1] - 1)
