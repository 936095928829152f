"""Quick start on built-in example data: RankSEG in place of argmax.

Probability maps shaped like a segmentation network's output are generated deterministically,
ground-truth labels are drawn from those probabilities (so the maps are calibrated), and the
per-image, per-class Dice of argmax and of RankSEG are compared on them.

    python examples/quickstart.py
"""

import time

import torch

from rankseg import RankSEG
from rankseg.data import sample_labels, synthetic_probs
from rankseg.metrics import dice_score


def main() -> None:
    torch.manual_seed(0)
    classes = 6
    probs = synthetic_probs(8, classes, (256, 256), seed=0, scale=3.0)  # (batch, classes, H, W)
    labels = sample_labels(probs, seed=1)  # (batch, H, W), drawn from the probabilities

    start = time.perf_counter()
    baseline = probs.argmax(dim=1)
    t_argmax = time.perf_counter() - start

    rankseg = RankSEG(metric="dice", solver="RMA", output_mode="multiclass")
    start = time.perf_counter()
    preds = rankseg(probs)
    t_rankseg = time.perf_counter() - start

    print(f"probabilities: {tuple(probs.shape)}  ->  predictions: {tuple(preds.shape)} {preds.dtype}")
    # mDice^I: per image, mean over the classes present in the labels or the prediction
    print(f"argmax   mDice {float(dice_score(baseline, labels, classes)):.4f}   ({t_argmax * 1e3:.1f} ms)")
    print(f"RankSEG  mDice {float(dice_score(preds, labels, classes)):.4f}   ({t_rankseg * 1e3:.1f} ms)")
    changed = (preds != baseline).float().mean().item()
    print(f"RankSEG changed {100 * changed:.1f}% of the pixels")


if __name__ == "__main__":
    main()
