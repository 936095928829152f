"""Bounded memory of the exact solver and the exact expected metrics (issue 14, section 1).

Each call runs in a fresh subprocess that measures the operating system's view: the peak resident
set size during the call minus the resident size just before it (``VmHWM`` after resetting it
through ``/proc/self/clear_refs`` on Linux; elsewhere ``ru_maxrss``, whose baseline is then the
peak of the set-up, kept close to the resident size by building the input in small chunks). One-time
allocations (torch's lazy initialisation, the first call's caches) are made by a warm-up call on a
small input of the same kind before the baseline.

The bound: extra peak memory at most the input's size plus a fixed working set of
:data:`WORKING_SET` (the solvers and the metrics work in chunks of a few MiB).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

WORKING_SET = 40 * 2**20  # measured: 5-26 MiB over the input, depending on the C allocator's caching

_SCRIPT = textwrap.dedent(
    """
    import ctypes, gc, json, math, resource, sys
    import torch
    torch.set_num_threads(1)
    from rankseg.functional import rankseg
    from rankseg.metrics import expected_dice, expected_iou

    def smooth_map(shape, dtype, seed, bias):
        # Network-like maps built image by image (no temporary larger than one image): smooth
        # logits from a few random waves, then softmax over classes (sigmoid for one class).
        gen = torch.Generator().manual_seed(seed)
        batch, classes, *spatial = shape
        out = torch.empty(shape, dtype=dtype)
        grids = torch.meshgrid(*[torch.linspace(0, 1, s) for s in spatial], indexing="ij")
        for b in range(batch):
            logits = torch.zeros(classes, *spatial)
            for c in range(classes):
                for _ in range(3):
                    freq = torch.rand(len(spatial), generator=gen) * 12
                    phase = torch.rand(1, generator=gen) * 6.3
                    wave = sum(f * g for f, g in zip(freq, grids))
                    logits[c] += 3 * torch.sin(wave + phase)
            if classes == 1:
                out[b] = torch.sigmoid(logits + bias)
            else:
                out[b] = torch.softmax(logits, dim=0)
            del logits
        return out

    def resident():
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024

    def reset_peak():
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return resident()[0], "VmHWM"
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"

    def peak():
        try:
            return resident()[1]
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    CALLS = {
        "exact dice": lambda p, m: rankseg(p, solver="exact", output_mode="multilabel", pruning_prob=0.0),
        "exact iou": lambda p, m: rankseg(
            p, metric="iou", solver="exact", output_mode="multilabel", pruning_prob=0.0
        ),
        "expected_dice": lambda p, m: expected_dice(p, m, smooth=0.5),
        "expected_iou": lambda p, m: expected_iou(p, m),
    }
    results = []
    for shape, dtype, bias in json.loads(sys.argv[1]):
        dtype = getattr(torch, dtype)
        probs = smooth_map(shape, dtype, 0, bias)
        masks = probs > 0.5
        for name, call in CALLS.items():
            small = smooth_map([1, 1] + shape[2:], dtype, 1, bias)  # one row of the same length
            call(small, small > 0.5)  # warm-up: one-time allocations are not the call's
            del small
            before, how = reset_peak()
            out = call(probs, masks)
            extra = peak() - before
            del out
            results.append(dict(shape=shape, dtype=str(dtype), call=name, how=how, extra=extra,
                                input=probs.numel() * probs.element_size()))
        del probs, masks
    print(json.dumps(results))
    """
)

CASES = {  # (shape, dtype, logit bias of one-class maps)
    # one long row (4 Mi pixels); one long row of little mass (about 20 expected true pixels in
    # 1 Mi: the solver's direct pixels and the longest searches); many classes on small images (like
    # the 16x21x40x40: rows of 1600 pixels, the short-row paths); 150 classes of 48x48
    # (rows of 2304: the long-row paths); 3-D volumes
    "long row": ([1, 1, 2048, 2048], "float32", -2.0),
    "long row, little mass": ([1, 1, 1 << 20], "float32", -15.0),
    "many classes, small images": ([8, 21, 40, 40], "float32", 0.0),
    "150 classes": ([1, 150, 48, 48], "float32", 0.0),
    "3-D volume": ([1, 3, 96, 96, 96], "float32", 0.0),
    "3-D volume, half precision": ([1, 2, 128, 128, 96], "float16", 0.0),
}


@pytest.fixture(scope="module")
def measurements():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = json.dumps(list(CASES.values()))
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, args], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("case", list(CASES))
def test_extra_peak_memory_is_at_most_the_input_plus_a_small_working_set(measurements, case):
    shape = CASES[case][0]
    rows = [m for m in measurements if m["shape"] == shape]
    assert len(rows) == 4
    report = {m["call"]: f"{m['extra'] / 2**20:.1f} MiB (input {m['input'] / 2**20:.1f} MiB)" for m in rows}
    for m in rows:
        assert m["extra"] <= m["input"] + WORKING_SET, (case, report)
