"""RankSEG before and after temperature scaling, on synthetic data whose true probabilities are known.

The experiment of issue 10 (the table of ``docs/calibration.md``): true logits ``z`` (the smooth
field of :func:`rankseg.data.synthetic_probs`: a coarse random field, upsampled, plus cell noise),
labels drawn pixel by pixel from ``softmax(z)`` (multiclass) or ``sigmoid(z)`` (multilabel), and a
miscalibrated "model" that outputs ``k * z`` (``k < 1``: under-confident, ``k > 1``:
over-confident). A :class:`rankseg.calibration.TemperatureScaling` is fitted on ``--images``
validation images and every method is scored on ``--images`` other images:

- ``argmax`` (multilabel: ``p > 0.5``), which no temperature changes;
- RankSEG on the model's probabilities (``raw``), on the calibrated ones (``calibrated``), and on
  the true probabilities (``true p``: the best RankSEG can do);

for Dice (RankSEG with ``metric="dice"``, scored by mDice^I) and IoU (``metric="iou"``, mIoU^I), with
the expected calibration error (``rankseg.metrics.calibration_error``; multilabel: the mean over
classes) before and after, and the fit's time per megapixel of validation data (best of
``--repeats`` fits, ``--threads`` CPU threads) with its number of passes over the data. ``mixed``
rows give each class its own ``k`` and compare a global with a per-class temperature.

    python benchmarks/calibration.py                       # the docs table (CPU, 2 threads)
    python benchmarks/calibration.py --size 128 --images 8 # quicker
    python benchmarks/calibration.py --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

KS = (0.3, 0.5, 2.0, 4.0)
MIXED_KS = (0.3, 0.5, 2.0, 4.0, 0.7, 3.0)


def true_logits(batch: int, classes: int, size: int, seed: int, bias: float = 0.0) -> torch.Tensor:
    """Float64 logits ``(batch, classes, size, size)``: the recipe of ``rankseg.data.synthetic_probs``
    (std-6 field at 1/32 size, bilinear to 1/8, unit cell noise, bilinear to full size)."""
    gen = torch.Generator().manual_seed(seed)
    low, coarse = (max(2, size // 8),) * 2, (max(2, size // 32),) * 2
    field = torch.randn(batch, classes, *coarse, generator=gen, dtype=torch.float64) * 6.0
    field = F.interpolate(field, size=low, mode="bilinear", align_corners=False)
    field += torch.randn(batch, classes, *low, generator=gen, dtype=torch.float64)
    return F.interpolate(field, size=(size, size), mode="bilinear", align_corners=False) + bias


def make_data(multilabel: bool, classes: int, images: int, size: int, device: str):
    from rankseg.data import sample_labels

    bias, mode = (-2.0, "multilabel") if multilabel else (0.0, "multiclass")
    activate = torch.sigmoid if multilabel else (lambda z: torch.softmax(z, 1))
    fit_z, test_z = (true_logits(images, classes, size, seed=s, bias=bias) for s in (10, 20))
    fit_y = sample_labels(activate(fit_z), seed=11, output_mode=mode)
    test_y = sample_labels(activate(test_z), seed=21, output_mode=mode)
    return [x.to(device) for x in (fit_z, fit_y, test_z, test_y)], activate


def scores(probs: torch.Tensor, labels: torch.Tensor, multilabel: bool) -> dict[str, float]:
    """mDice^I of RankSEG-Dice and mIoU^I of RankSEG-IoU on ``probs``."""
    from rankseg import RankSEG
    from rankseg.metrics import dice_score, iou_score

    mode = "multilabel" if multilabel else "multiclass"
    fmt = "mask" if multilabel else "index"
    probs = probs.float()
    out = {}
    for metric, score in (("dice", dice_score), ("iou", iou_score)):
        masks = RankSEG(metric=metric, output_mode=mode)(probs)
        out[metric] = float(score(masks, labels, probs.shape[1], input_format=fmt))
    return out


def baseline(probs: torch.Tensor, labels: torch.Tensor, multilabel: bool) -> dict[str, float]:
    from rankseg.metrics import dice_score, iou_score

    if multilabel:
        masks, fmt = probs > 0.5, "mask"
    else:
        masks, fmt = probs.argmax(1), "index"
    c = probs.shape[1]
    return {
        m: float(f(masks, labels, c, input_format=fmt)) for m, f in (("dice", dice_score), ("iou", iou_score))
    }


def ece(probs: torch.Tensor, labels: torch.Tensor) -> float:
    from rankseg.metrics import calibration_error

    return float(calibration_error(probs.float(), labels).ece.mean())


def _seconds(call) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    call()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def timed_fit(make, logits, labels, repeats: int):
    """The fit and its best time over ``repeats`` runs (on a loaded machine the best of several
    runs is the least disturbed estimate)."""
    times, fitted = [], []
    for _ in range(repeats):
        times.append(_seconds(lambda: fitted.append(make().fit(logits, labels))))
    return fitted[-1], min(times)


def run_section(multilabel: bool, classes: int, args) -> None:
    from rankseg.calibration import TemperatureScaling

    (fit_z, fit_y, test_z, test_y), activate = make_data(
        multilabel, classes, args.images, args.size, args.device
    )
    megapixels = fit_z.shape[0] * fit_z.shape[2] * fit_z.shape[3] / 1e6
    activation = "sigmoid" if multilabel else "softmax"
    truth = scores(activate(test_z), test_y, multilabel)
    base = baseline(activate(test_z), test_y, multilabel)  # the same for every k
    name = "argmax" if not multilabel else "p>0.5"
    kind = f"{classes} sigmoid classes (multilabel)" if multilabel else f"{classes} softmax classes"
    print(f"\n### {kind}: {args.images} + {args.images} images of {args.size}x{args.size}\n")
    print(
        f"| k | T fitted | {name} mDice^I | RankSEG raw | RankSEG calibrated | RankSEG true p "
        f"| {name} mIoU^I | RankSEG raw | RankSEG calibrated | RankSEG true p | ECE raw -> calibrated "
        f"| fit s/MP (passes) |"
    )
    print("|" + "---|" * 12)
    rows = [(str(k), torch.tensor(k, dtype=torch.float64), False) for k in KS]
    mixed = torch.tensor(MIXED_KS[:classes], dtype=torch.float64)
    rows += [("mixed", mixed, False), ("mixed", mixed, True)]
    for label, k, per_class in rows:
        scale = k.reshape(-1, 1, 1).to(args.device)
        model_fit, model_test = fit_z * scale, test_z * scale

        def make(per_class=per_class):
            return TemperatureScaling(activation, per_class=per_class)

        scaler, seconds = timed_fit(make, model_fit.float(), fit_y, args.repeats)
        raw_probs = activate(model_test)
        calibrated = scaler.transform(model_test.float())
        raw, cal = scores(raw_probs, test_y, multilabel), scores(calibrated, test_y, multilabel)
        temperature = scaler.temperature_
        t_text = (
            "[" + ", ".join(f"{t:.2f}" for t in temperature.tolist()) + "]"
            if per_class
            else f"{float(temperature):.3f}"
        )
        row_label = f"{label} ({'per-class' if per_class else 'global'} T)" if label == "mixed" else label
        print(
            f"| {row_label} | {t_text} | {base['dice']:.4f} | {raw['dice']:.4f} | {cal['dice']:.4f} "
            f"| {truth['dice']:.4f} | {base['iou']:.4f} | {raw['iou']:.4f} | {cal['iou']:.4f} "
            f"| {truth['iou']:.4f} | {ece(raw_probs, test_y):.4f} -> {ece(calibrated, test_y):.4f} "
            f"| {seconds / megapixels:.3f} ({scaler.n_passes_}) |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=16, help="validation images, and as many test images")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--classes", type=int, default=6, help="softmax classes (multilabel: half as many)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--repeats", type=int, default=5, help="fits timed per row (the best is printed)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    )
    print(f"rankseg calibration benchmark ({device}, torch {torch.__version__})")
    run_section(False, args.classes, args)
    run_section(True, max(1, args.classes // 2), args)


if __name__ == "__main__":
    main()
