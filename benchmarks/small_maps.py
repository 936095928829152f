"""Where the approximations are weak: every solver against the exact one on small maps.

Small maps have few uncertain pixels (sigma = sqrt(sum p (1 - p)) of 1-4), where BA and TRNA
replace a discrete count by a normal law. For each kind of map, 200 random draws: how often each
solver's volume differs from the exact optimum, its largest volume difference, and its largest
and mean gap in exact expected Dice below the optimum.

    python benchmarks/small_maps.py
"""

from __future__ import annotations

import torch

from rankseg.functional import rankseg
from rankseg.metrics import expected_dice

SOLVERS = ("RMA", "BA", "TRNA", "BA+TRNA")
DRAWS = 200


def kinds(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """(DRAWS, 1, d) float64 maps of each kind."""
    uniform10 = torch.rand(DRAWS, 1, 10, generator=gen, dtype=torch.float64)
    uniform30 = torch.rand(DRAWS, 1, 30, generator=gen, dtype=torch.float64)
    squared40 = torch.rand(DRAWS, 1, 40, generator=gen, dtype=torch.float64) ** 2
    small_object = torch.rand(DRAWS, 1, 300, generator=gen, dtype=torch.float64) * 0.02
    small_object[:, :, :8] = 0.2 + 0.7 * torch.rand(DRAWS, 1, 8, generator=gen, dtype=torch.float64)
    return {
        "10 pixels, p ~ U(0,1)": uniform10,
        "30 pixels, p ~ U(0,1)": uniform30,
        "40 pixels, p ~ U(0,1)^2": squared40,
        "8-pixel object in 300": small_object,
    }


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    print(f"{DRAWS} maps per row; gap = exact expected Dice of the exact solver's mask minus this solver's")
    print("| maps | median sigma | solver | volume differs | max volume diff | max gap | mean gap |")
    print("|---|---|---|---|---|---|---|")
    for name, probs in kinds(gen).items():
        sigma = float((probs * (1 - probs)).sum(-1).sqrt().median())
        exact = rankseg(probs, solver="exact", output_mode="multilabel", pruning_prob=0.0)
        best = expected_dice(probs, exact)[:, 0]
        for solver in SOLVERS:
            masks = rankseg(probs, solver=solver, output_mode="multilabel", pruning_prob=0.0)
            gap = best - expected_dice(probs, masks)[:, 0]
            diff = (masks.sum((1, 2)) - exact.sum((1, 2))).abs()
            print(
                f"| {name} | {sigma:.2f} | {solver} | {int((diff > 0).sum())}/{DRAWS} | {int(diff.max())} "
                f"| {float(gap.max()):.1e} | {float(gap.mean()):.1e} |"
            )


if __name__ == "__main__":
    main()
