"""Wall time of one data set through the ``rankseg`` command: one process, a local Dask cluster of two
worker processes, and two worker processes of ``--workers``, in one run.

Runs ``rankseg predict`` (or ``evaluate``) on the same synthetic files with ``--workers 1`` (torch's
default threads, one per CPU; and with one thread, ``OMP_NUM_THREADS=1``), ``--dask local
--workers 2`` and ``--workers 2`` (each worker with its share of the CPUs' threads), in interleaved
rounds whose order rotates, so that every configuration meets the same machine load; each time is
the whole command as a user sees it (start-up, the cluster's start and close included). The
printed speed-up is the median over rounds of (``--workers 1`` time / the configuration's time in
the same round). Every run's masks are checked to be the same bytes as the first run's.

    python benchmarks/bench_dask.py                          # 32 volumes (4, 64, 128, 128), RMA
    python benchmarks/bench_dask.py --files 64 --rounds 5
    python benchmarks/bench_dask.py --command evaluate --solvers RMA,exact --shape 4,256,256
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# name -> (options, OMP_NUM_THREADS or None for torch's default: one thread per CPU)
CONFIGS = {
    "--workers 1": (["--workers", "1"], None),
    "--workers 1, 1 thread": (["--workers", "1"], "1"),
    "--dask local --workers 2": (["--dask", "local", "--workers", "2"], None),
    "--workers 2": (["--workers", "2"], None),
}


def make_files(root: Path, files: int, shape: tuple[int, ...], labels: bool) -> None:
    from rankseg.data import sample_labels, synthetic_probs

    (root / "probs").mkdir()
    (root / "labels").mkdir()
    for i in range(files):
        probs = synthetic_probs(1, shape[0], shape[1:], seed=i)
        np.save(root / "probs" / f"case{i:03d}.npy", probs[0].numpy())
        if labels:
            np.save(
                root / "labels" / f"case{i:03d}.npy", sample_labels(probs, seed=i)[0].numpy().astype(np.uint8)
            )


def command(args: argparse.Namespace, root: Path, out: Path) -> list[str]:
    base = [sys.executable, "-m", "rankseg"]
    if args.command == "predict":
        return [*base, "predict", str(root / "probs"), "--out", str(out), "-q", "--solver", args.solver]
    return [
        *base,
        "evaluate",
        "--probs",
        str(root / "probs"),
        "--labels",
        str(root / "labels"),
        "--solvers",
        args.solvers,
        "--json",
        str(out / "results.json"),
        "-q",
    ]


def same_outputs(a: Path, b: Path, command_name: str) -> bool:
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    if command_name == "evaluate":  # the metrics, not the times
        import json

        ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
        return all(
            {k: v for k, v in ra["methods"][m].items() if k != "seconds_per_image"}
            == {k: v for k, v in rb["methods"][m].items() if k != "seconds_per_image"}
            for m in ra["methods"]
        )
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--command", choices=("predict", "evaluate"), default="predict")
    parser.add_argument("--files", type=int, default=32)
    parser.add_argument("--shape", default="4,64,128,128", help="(classes, *spatial) of every file")
    parser.add_argument("--solver", default="RMA", help="predict's --solver")
    parser.add_argument("--solvers", default="RMA", help="evaluate's --solvers")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split(","))
    env = {**os.environ}
    env.pop("OMP_NUM_THREADS", None)  # each configuration sets its own threads
    env.pop("MKL_NUM_THREADS", None)

    with tempfile.TemporaryDirectory(prefix="rankseg-bench-dask-") as tmp:
        root = Path(tmp)
        make_files(root, args.files, shape, labels=args.command == "evaluate")
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(
            f"rankseg {args.command}: {args.files} files {shape} float32, "
            f"{args.solver if args.command == 'predict' else args.solvers}; {cpus} CPU(s); "
            f"load average at start {os.getloadavg()[0]:.1f}"
        )
        times: dict[str, list[float]] = {name: [] for name in CONFIGS}
        first: Path | None = None
        names = list(CONFIGS)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                out = root / f"out-{r}-{names.index(name)}"
                out.mkdir()
                options, threads = CONFIGS[name]
                run_env = env if threads is None else {**env, "OMP_NUM_THREADS": threads}
                start = time.perf_counter()
                subprocess.run([*command(args, root, out), *options], check=True, env=run_env)
                times[name].append(time.perf_counter() - start)
                if first is None:
                    first = out
                elif not same_outputs(first, out, args.command):
                    raise SystemExit(f"{name}: the outputs differ from the first run's")
        base = times["--workers 1"]
        print(f"{'configuration':<26} {'median wall s':>13}  {'speed-up vs --workers 1':>23}")
        for name in names:
            speedup = statistics.median(b / t for b, t in zip(base, times[name], strict=True))
            print(f"{name:<26} {statistics.median(times[name]):>13.2f}  {speedup:>22.2f}x")
        print(f"load average at the end {os.getloadavg()[0]:.1f}; outputs identical in every run")


if __name__ == "__main__":
    main()
