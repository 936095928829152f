"""RankSEG against argmax / a 0.5 threshold, and its solvers against each other, in one run.

``--suite rma`` (default): RMA Dice and IoU against ``probs.argmax(1)`` (``probs > 0.5`` for one
class) on the core issue's six shapes. ``--suite solvers``: RMA, exact, BA, TRNA and BA+TRNA (Dice)
and RMA, exact (IoU) on three shapes, multilabel output, with the exact expected metric each
solver's masks reach and its gap to the exact optimum (``rankseg.metrics``). ``--suite large``:
whole volumes, (1, 3, 512, 512, 400) in float16 and float32 and (1, 14, 256, 256, 256), every
solver (Dice), multiclass and multilabel, each method once against the baseline.

Every method runs on the same input, in interleaved rounds (argmax, RMA-Dice, RMA-IoU, argmax,
...), so that the ratios are measured under the same machine load; the printed ratio is the
median over rounds of (method time / baseline time in the same round). ``--contended`` runs the
timing with one busy competing process (a subprocess spinning on the CPU, started and stopped by
this script): free and busy rounds alternate (the spinner is paused and resumed), and the table
shows each method's time and ratio in both, and its slowdown (busy / free).

Memory is measured by the operating system: each method runs once in a fresh subprocess that
loads the input, warms up on a small input, releases freed heap memory (``malloc_trim``) and
resets its peak resident set size (``/proc/self/clear_refs``); the extra peak is the peak RSS
during the call minus the RSS before it (minus code pages loaded during the call). "x input" is
that extra, output included, over the input's size; "working" leaves the output out. Inputs
are :func:`rankseg.data.synthetic_probs` maps (smooth logits upsampled from 1/8 resolution,
softmax over classes; sigmoid with bias -2 for one class); the large suite caches them as .npy
files (``--cache``).

    python benchmarks/bench_rma.py                     # the README's first table (CPU, 2 threads)
    python benchmarks/bench_rma.py --contended         # the same with one busy competing process
    python benchmarks/bench_rma.py --suite solvers     # the README's solver table
    nice python benchmarks/bench_rma.py --suite large  # the README's large-volume table (long)
    python benchmarks/bench_rma.py --device cuda       # on a GPU
    python benchmarks/bench_rma.py --shapes 1,1,1024,1024 --rounds 50
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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
LARGE_INPUTS = [
    ((1, 3, 512, 512, 400), "float16"),
    ((1, 3, 512, 512, 400), "float32"),
    ((1, 14, 256, 256, 256), "float32"),
]
LARGE_SOLVERS = ("RMA", "exact", "BA", "TRNA", "BA+TRNA")


# ------------------------------------------------------------------------------------------
# Inputs and methods
# ------------------------------------------------------------------------------------------


def make_input(shape: tuple[int, ...], device: str = "cpu", dtype: str = "float32") -> torch.Tensor:
    from rankseg.data import synthetic_probs

    bias = -2.0 if shape[1] == 1 else 0.0
    probs = synthetic_probs(shape[0], shape[1], shape[2:], seed=0, bias=bias)
    return probs.to(device=device, dtype=getattr(torch, dtype))


def baseline_name(shape: tuple[int, ...], mode: str) -> str:
    return "probs > 0.5" if mode == "multilabel" else "argmax"


def build(name: str, mode: str):
    """The callable of a method named in a table: a baseline, or ``"SOLVER Dice|IoU"``."""
    from rankseg import RankSEG

    if name == "argmax":
        return lambda p: p.argmax(1)
    if name == "probs > 0.5":
        return lambda p: p > 0.5
    solver, metric = name.rsplit(" ", 1)
    pruning = {"pruning_prob": 0.0} if mode == "multilabel" else {}
    return RankSEG(metric=metric.lower(), solver=solver, output_mode=mode, **pruning)


def suite_table(suite: str, shape: tuple[int, ...]) -> tuple[str, list[str]]:
    """(output mode, method names) of a suite's table for one shape; the first is the baseline."""
    if suite == "rma":
        mode = "multilabel" if shape[1] == 1 else "multiclass"
        return mode, [baseline_name(shape, mode), "RMA Dice", "RMA IoU"]
    dice = [f"{s} Dice" for s in ("RMA", "exact", "BA", "TRNA", "BA+TRNA")]
    return "multilabel", [*dice, "RMA IoU", "exact IoU"]


# ------------------------------------------------------------------------------------------
# Timing, optionally beside a busy competing process
# ------------------------------------------------------------------------------------------


class Spinner:
    """One subprocess spinning on the CPU; :meth:`pause` / :meth:`resume` stop and continue it."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.2)

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        time.sleep(0.05)  # let it take its share of the CPU before timing

    def stop(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        self.process.kill()
        self.process.wait()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def one_round(probs, device: str, table: dict) -> dict[str, float]:
    times = {}
    for name, fn in table.items():
        sync(device)
        start = time.perf_counter()
        fn(probs)
        sync(device)
        times[name] = time.perf_counter() - start
    return times


def time_methods(probs, device: str, rounds: int, table: dict, spinner: Spinner | None = None) -> dict:
    """Median times and ratios to the baseline (first entry), free and, with a spinner, busy.

    With a spinner, each round runs every method once free and once beside the spinning process,
    so slow drifts in the machine's load hit both alike.
    """
    for fn in table.values():  # warm up
        fn(probs)
    states = ["free", "busy"] if spinner else ["free"]
    times = {state: {name: [] for name in table} for state in states}
    for _ in range(rounds):
        for state in states:
            if state == "busy":
                spinner.resume()
            try:
                for name, seconds in one_round(probs, device, table).items():
                    times[state][name].append(seconds)
            finally:
                if state == "busy":
                    spinner.pause()
    base = next(iter(table))
    out = {}
    for state in states:
        out[state] = {
            name: (
                statistics.median(times[state][name]),
                statistics.median(t / b for t, b in zip(times[state][name], times[state][base], strict=True)),
            )
            for name in table
        }
    if spinner:
        out["slowdown"] = {
            name: statistics.median(
                b / f for b, f in zip(times["busy"][name], times["free"][name], strict=True)
            )
            for name in table
        }
    return out


# ------------------------------------------------------------------------------------------
# Peak memory from the operating system, in a fresh subprocess per measurement
# ------------------------------------------------------------------------------------------


def _status() -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssFile"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def child(spec: dict) -> dict:
    """Run in the measuring subprocess: load the input, warm up, measure one call."""
    torch.set_num_threads(spec["threads"])
    shape, mode, name = tuple(spec["shape"]), spec["mode"], spec["method"]
    if spec.get("cache"):
        probs = torch.from_numpy(np.load(spec["cache"]))
    else:
        probs = make_input(shape, "cpu", spec["dtype"])
    fn = build(name, mode)
    # Warm up: lazy initialisation on a small input of the same kind, and rankseg's CPU worker
    # threads (started by the first pass with several tiles; a one-off cost of the process).
    from rankseg._passes import map_tiles

    pixels = int(np.prod(shape[2:]))
    scale = (min(pixels, 1 << 20) / pixels) ** (1 / len(shape[2:]))  # at most 1 Mi pixels per row
    fn(make_input((1, shape[1], *(max(8, round(s * scale)) for s in shape[2:])), "cpu", spec["dtype"]))
    map_tiles(lambda i: None, 16, torch.device("cpu"))
    baseline = build(spec["baseline"], mode) if spec.get("baseline") else None
    base_seconds = None
    if baseline is not None:  # the baseline's time in this process, for the ratio
        baseline(probs)
        start = time.perf_counter()
        baseline(probs)
        base_seconds = time.perf_counter() - start
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the peak RSS (VmHWM)
    before = _status()
    start = time.perf_counter()
    out = fn(probs)
    seconds = time.perf_counter() - start
    after = _status()
    code_pages = max(0, after["RssFile"] - before["RssFile"])
    extra = after["VmHWM"] - before["VmRSS"] - code_pages
    return {
        "seconds": seconds,
        "baseline_seconds": base_seconds,
        "input_bytes": probs.numel() * probs.element_size(),
        "output_bytes": out.numel() * out.element_size(),
        "extra_bytes": extra,
    }


def measure(spec: dict, timeout: float | None = None) -> dict | str:
    """Run :func:`child` in a fresh subprocess; its result, or why there is none."""
    command = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return f"skipped: over {timeout:.0f} s"
    if done.returncode != 0:
        return "failed: " + (done.stderr.strip().splitlines() or ["?"])[-1]
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_columns(result: dict | str | None) -> str:
    if result is None:
        return "- | - | -"
    if isinstance(result, str):
        return f"{result} | - | -"
    extra, inp, out = result["extra_bytes"], result["input_bytes"], result["output_bytes"]
    return f"{extra / 2**20:.1f} | {extra / inp:.2f} | {(extra - out) / inp:.2f}"


def cuda_extra_bytes(fn, probs) -> int:
    """Peak bytes allocated by one call beyond what was live before, output included (CUDA)."""
    fn(probs)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn(probs)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    del out
    return extra


# ------------------------------------------------------------------------------------------
# Suites
# ------------------------------------------------------------------------------------------


def expected_gaps(probs, table) -> dict:
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


def run_table(args, shapes) -> None:
    contended = args.contended
    base = "x baseline" if args.suite == "rma" else "x RMA Dice"
    timing = f"free ms | {base} | busy ms | {base} | busy / free" if contended else f"median ms | {base}"
    memory = "extra peak MB | x input | working x input"
    if args.suite == "rma":
        header = f"| shape | input MB | method | {timing} | {memory} |"
    else:
        header = f"| shape | method | {timing} | {memory} | mean expected | gap to exact |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    spinner = Spinner() if contended else None
    if spinner:
        spinner.pause()
    try:
        for shape in shapes:
            mode, names = suite_table(args.suite, shape)
            table = {name: build(name, mode) for name in names}
            probs = make_input(shape, args.device)
            timed = time_methods(probs, args.device, args.rounds, table, spinner)
            gaps = expected_gaps(probs, table) if args.suite == "solvers" else {}
            input_mb = probs.numel() * 4 / 2**20
            for name, fn in table.items():
                if args.no_memory:
                    memory = memory_columns(None)
                elif args.device == "cuda":
                    extra = cuda_extra_bytes(fn, probs)
                    memory = f"{extra / 2**20:.1f} | {extra / (input_mb * 2**20):.2f} | -"
                else:
                    spec = {
                        "shape": shape,
                        "dtype": "float32",
                        "mode": mode,
                        "method": name,
                        "threads": args.threads,
                    }
                    memory = memory_columns(measure(spec))
                free_ms, free_x = timed["free"][name]
                cells = f"{free_ms * 1e3:.2f} | {free_x:.2f}"
                if spinner:
                    busy_ms, busy_x = timed["busy"][name]
                    cells += f" | {busy_ms * 1e3:.2f} | {busy_x:.2f} | {timed['slowdown'][name]:.2f}"
                label = "x".join(map(str, shape))
                if args.suite == "rma":
                    print(f"| {label} | {input_mb:.0f} | {name} | {cells} | {memory} |", flush=True)
                else:
                    mean, gap = gaps[name]
                    print(f"| {label} | {name} | {cells} | {memory} | {mean:.6f} | {gap:.1e} |", flush=True)
    finally:
        if spinner:
            spinner.stop()


def run_large(args) -> None:
    """Whole volumes: every method once per fresh subprocess, against the baseline timed there."""
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    memory = "extra peak MB | x input | working x input"
    header = f"| shape | dtype | output | method | seconds | x baseline | {memory} |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    skip = set(args.skip or [])
    for shape, dtype in LARGE_INPUTS:
        label = "x".join(map(str, shape))
        path = cache / f"synthetic_{label}_{dtype}.npy"
        if not path.exists():
            probs = make_input(shape, "cpu", dtype)
            np.save(path.with_suffix(".tmp.npy"), probs.numpy())
            os.replace(path.with_suffix(".tmp.npy"), path)
            del probs
        for mode in ("multiclass", "multilabel"):
            base = baseline_name(shape, mode)
            for name in [base] + [f"{s} Dice" for s in LARGE_SOLVERS]:
                solver = name.split(" ")[0]
                if name != base and (solver in skip or f"{solver}:{label}" in skip):
                    print(
                        f"| {label} | {dtype} | {mode} | {name} | skipped (--skip) | - | - | - | - |",
                        flush=True,
                    )
                    continue
                spec = {
                    "shape": shape,
                    "dtype": dtype,
                    "mode": mode,
                    "method": name,
                    "threads": args.threads,
                    "cache": str(path),
                    "baseline": None if name == base else base,
                }
                result = measure(spec, timeout=args.timeout)
                if isinstance(result, str):
                    print(f"| {label} | {dtype} | {mode} | {name} | {result} | - | - | - | - |", flush=True)
                    continue
                ratio = "1.00" if name == base else f"{result['seconds'] / result['baseline_seconds']:.2f}"
                memory = memory_columns(result)
                print(
                    f"| {label} | {dtype} | {mode} | {name} | {result['seconds']:.2f} | {ratio} | {memory} |",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    parser.add_argument("--rounds", type=int, default=21, help="interleaved timing rounds")
    parser.add_argument("--suite", default="rma", choices=["rma", "solvers", "large"])
    parser.add_argument("--shapes", nargs="*", help="shapes like 1,21,512,512 (default: the suite's)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--contended", action="store_true", help="time beside one busy competing process")
    parser.add_argument(
        "--cache",
        default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "rankseg-bench"),
        help="folder for the large suite's input files",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per large-suite measurement")
    parser.add_argument(
        "--skip", nargs="*", help="large suite: solvers to skip, e.g. TRNA or TRNA:1x14x256x256x256"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    torch.set_num_threads(args.threads)
    print(
        f"# torch {torch.__version__}, device {args.device}, {args.threads} threads, {args.rounds} rounds"
        + (", one busy competing process in the busy rounds" if args.contended else "")
    )
    if args.suite == "large":
        run_large(args)
        return
    default = SHAPES if args.suite == "rma" else SOLVER_SHAPES
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes] if args.shapes else default
    run_table(args, shapes)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    with contextlib.suppress(BrokenPipeError):
        main()
