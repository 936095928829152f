"""RankSEG against argmax / a 0.5 threshold, and its solvers against each other, in one run.

``--suite rma`` (default): RMA Dice and IoU against ``probs.argmax(1)`` (``probs > 0.5`` for one
class) on the core issue's six shapes. ``--suite solvers``: RMA, exact, BA, TRNA and BA+TRNA (Dice)
and RMA, exact (IoU) on three shapes, multilabel output, with the exact expected metric each
solver's masks reach and its gap to the exact optimum (``rankseg.metrics``).

Every method runs on the same input, in interleaved rounds (argmax, RMA-Dice, RMA-IoU, argmax,
...), so that the ratios are measured under the same machine load; the printed ratio is the
median over rounds of (method time / baseline time in the same round). Extra peak memory is the
largest amount of tensor memory a call holds beyond its input, output included
(:func:`extra_peak_bytes`). Inputs are :func:`rankseg.data.synthetic_probs` maps (smooth logits
upsampled from 1/8 resolution, softmax over classes; sigmoid with bias -2 for one class).

    python benchmarks/bench_rma.py                   # the README's first table (CPU, 2 threads)
    python benchmarks/bench_rma.py --suite solvers   # the README's solver table
    python benchmarks/bench_rma.py --device cuda     # on a GPU
    python benchmarks/bench_rma.py --shapes 1,1,1024,1024 --rounds 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

SHAPES = [
    (1, 21, 512, 512),
    (1, 150, 512, 512),
    (8, 21, 256, 256),
    (1, 19, 1024, 2048),
    (1, 3, 128, 128, 128),
    (1, 1, 1024, 1024),
]
SOLVER_SHAPES = [(1, 1, 512, 512), (1, 1, 1024, 1024), (1, 21, 512, 512)]


def make_input(shape: tuple[int, ...], device: str) -> torch.Tensor:
    from rankseg.data import synthetic_probs

    bias = -2.0 if shape[1] == 1 else 0.0
    return synthetic_probs(shape[0], shape[1], shape[2:], seed=0, bias=bias).to(device)


def solver_methods(shape: tuple[int, ...]) -> dict:
    """name -> callable(probs) for the solver suite; the first entry (RMA Dice) is the baseline."""
    from rankseg import RankSEG

    table = {}
    for metric, solvers in (("dice", ("RMA", "exact", "BA", "TRNA", "BA+TRNA")), ("iou", ("RMA", "exact"))):
        for solver in solvers:
            name = f"{solver} {'Dice' if metric == 'dice' else 'IoU'}"
            table[name] = RankSEG(metric=metric, solver=solver, output_mode="multilabel", pruning_prob=0.0)
    return table


def expected_gaps(shape, probs, table) -> dict:
    """Mean exact expected metric of each method's masks, and its largest gap (over images and
    classes) below the exact solver's masks."""
    from rankseg.metrics import expected_dice, expected_iou

    reached = {}
    for name, fn in table.items():
        metric_fn = expected_dice if name.endswith("Dice") else expected_iou
        reached[name] = metric_fn(probs, fn(probs))
    out = {}
    for name, value in reached.items():
        best = reached["exact Dice" if name.endswith("Dice") else "exact IoU"]
        out[name] = (float(value.mean()), float((best - value).max()))
    return out


def methods(shape: tuple[int, ...]) -> dict:
    """name -> callable(probs). The first entry is the baseline."""
    from rankseg import RankSEG

    single = shape[1] == 1
    mode = "multilabel" if single else "multiclass"
    return {
        ("probs > 0.5" if single else "argmax"): (lambda p: p > 0.5) if single else (lambda p: p.argmax(1)),
        "RMA Dice": RankSEG(metric="dice", solver="RMA", output_mode=mode),
        "RMA IoU": RankSEG(metric="iou", solver="RMA", output_mode=mode),
    }


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_methods(shape, device, rounds, table):
    probs = make_input(shape, device)
    for fn in table.values():  # warm up
        fn(probs)
    times = {name: [] for name in table}
    for _ in range(rounds):
        for name, fn in table.items():
            sync(device)
            start = time.perf_counter()
            fn(probs)
            sync(device)
            times[name].append(time.perf_counter() - start)
    base = next(iter(table))
    ratios = {
        name: statistics.median(t / b for t, b in zip(times[name], times[base], strict=True))
        for name in table
    }
    return {name: statistics.median(v) for name, v in times.items()}, ratios


def extra_peak_bytes(fn, probs, device: str) -> int:
    """Peak bytes allocated by one call ``fn(probs)`` beyond what was live before, output included.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: replay of the profiler's memory events (every
    tensor allocation and free, in time order), which, unlike the process RSS, does not depend on
    what the C allocator keeps cached; NumPy scratch arrays (a few KiB here) are not seen.
    """
    fn(probs)  # warm up lazy initialisation
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn(probs)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - before
        del out
        return extra
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn(probs)
    del out
    changes = sorted(
        (
            event.time_range.start,
            event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage,
        )
        for event in prof.events()
    )
    live = peak = 0
    for _, delta in changes:
        live += delta
        peak = max(peak, live)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    parser.add_argument("--rounds", type=int, default=21, help="interleaved timing rounds")
    parser.add_argument("--suite", default="rma", choices=["rma", "solvers"])
    parser.add_argument("--shapes", nargs="*", help="shapes like 1,21,512,512 (default: the suite's)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    default_shapes = SHAPES if args.suite == "rma" else SOLVER_SHAPES
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes] if args.shapes else default_shapes
    make_table = methods if args.suite == "rma" else solver_methods
    print(f"# torch {torch.__version__}, device {args.device}, {args.threads} threads, {args.rounds} rounds")
    if args.suite == "rma":
        print("| shape | input MB | method | median ms | x baseline | extra peak MB | x input |")
        print("|---|---|---|---|---|---|---|")
    else:
        print(
            "| shape | method | median ms | x RMA Dice | extra peak MB | x input "
            "| mean expected | gap to exact |"
        )
        print("|---|---|---|---|---|---|---|---|")
    for shape in shapes:
        table = make_table(shape)
        medians, ratios = time_methods(shape, args.device, args.rounds, table)
        input_bytes = torch.Size(shape).numel() * 4
        probs = make_input(shape, args.device)
        gaps = expected_gaps(shape, probs, table) if args.suite == "solvers" else {}
        for name, fn in table.items():
            extra = None if args.no_memory else extra_peak_bytes(fn, probs, args.device)
            mem = "- | -" if extra is None else f"{extra / 2**20:.1f} | {extra / input_bytes:.2f}"
            label = "x".join(map(str, shape))
            if args.suite == "rma":
                row = (
                    f"| {label} | {input_bytes / 2**20:.0f} | {name} | {medians[name] * 1e3:.2f} "
                    f"| {ratios[name]:.2f} | {mem} |"
                )
            else:
                mean, gap = gaps[name]
                row = (
                    f"| {label} | {name} | {medians[name] * 1e3:.1f} | {ratios[name]:.1f} | {mem} "
                    f"| {mean:.6f} | {gap:.1e} |"
                )
            print(row, flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
