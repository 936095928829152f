"""The command line under adversarial use: regression tests of issue 9, items 11-19.

Each test runs the installed ``rankseg`` command in a subprocess (or ``rankseg.cli.main`` in-process
for checks that happen before any work) and asserts the exit status, the messages naming the
argument or file, and the files left on disk. Tests that need a small or read-only file system
mount one in a user namespace (``unshare``) and are skipped where that is not allowed.
"""

import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rankseg import RankSEG
from rankseg.data import sample_labels, synthetic_probs

RANKSEG = Path(sys.executable).with_name("rankseg")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
LONG = "n" * 300  # a path component over the 255 bytes file systems allow


def run(*args, timeout=120, env=None):
    return subprocess.run(
        [str(RANKSEG), *map(str, args)], capture_output=True, text=True, env=env or ENV, timeout=timeout
    )


def start(*args):
    return subprocess.Popen(
        [str(RANKSEG), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )


def read_line(proc, timeout=120):
    """The next stdout line of a running command (fails the test after ``timeout`` seconds)."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the command printed nothing in time"
    return proc.stdout.readline()


def errors(stderr):
    return [line.split(": error: ", 1)[1] for line in stderr.splitlines() if ": error: " in line]


def probs_map(seed, classes=4, spatial=(16, 16), dtype=np.float32):
    return synthetic_probs(1, classes, spatial, seed=seed, scale=3.0)[0].numpy().astype(dtype)


def hidden(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))


def assert_cases_complete(folder):
    """Every case written has both x.npy and x.png, and no temporary file is left."""
    names = sorted(p.name for p in Path(folder).iterdir())
    assert hidden(folder) == [], names
    stems = {n.rsplit(".", 1)[0] for n in names}
    assert names == sorted([f"{s}.npy" for s in stems] + [f"{s}.png" for s in stems]), names
    return stems


def main_in_process(argv, capsys):
    from rankseg.cli import main

    status = main([str(a) for a in argv])
    return status, capsys.readouterr().err


# --------------------------------------------------------------------- 11: outputs are never inputs


def test_no_output_is_an_input_file_or_inside_an_input_folder(tmp_path, capsys):
    probs, labels = tmp_path / "probs", tmp_path / "labels"
    probs.mkdir()
    labels.mkdir()
    np.save(probs / "a.npy", probs_map(0))
    np.save(labels / "a.npy", np.zeros((16, 16), np.int64))
    before = (labels / "a.npy").read_bytes()
    # the command: with --force an input was overwritten with JSON
    result = run("evaluate", "--probs", probs, "--labels", labels, "--json", labels / "a.npy", "--force")
    assert result.returncode == 2
    assert errors(result.stderr) == [
        f"--json {labels / 'a.npy'} is inside the input folder --labels {labels}; "
        "write outputs outside the input folders"
    ]
    assert (labels / "a.npy").read_bytes() == before and result.stdout == ""

    (tmp_path / "link.json").symlink_to(probs / "new.json")  # a link into an input folder
    (labels / "out.json").symlink_to(tmp_path / "elsewhere.json")  # a rename would replace it there
    cases = [
        (
            ["--json", labels / "out.json"],
            f"--json {labels / 'out.json'} is inside the input folder --labels",
        ),
        (
            ["--csv", probs / "sub" / "r.csv"],
            f"--csv {probs / 'sub' / 'r.csv'} is inside the input folder --probs",
        ),
        (["--json", tmp_path / "link.json", "--force"], f"--json {tmp_path / 'link.json'} is inside"),
        (
            ["--json", tmp_path / "r.json", "--csv", tmp_path / "r.json"],
            "--json and --csv name the same file",
        ),
    ]
    for extra, message in cases:
        status, err = main_in_process(["evaluate", "--probs", probs, "--labels", labels, *extra], capsys)
        assert status == 2 and message in err, (extra, err)
    status, err = main_in_process(["predict", probs, "--out", probs / "masks"], capsys)
    assert status == 2
    assert f"--out {probs / 'masks'} is inside the input folder {probs}" in err
    assert sorted(p.name for p in probs.iterdir()) == ["a.npy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels", "link.json", "probs"]
    assert os.path.islink(labels / "out.json")


# ----------------------------------------------- 12, 19: only regular files, every skip explained


def special_files(folder):
    """A FIFO, a link to /dev/zero, a folder, a broken link and a header declaring 8 TB, all *.npy."""
    os.mkfifo(folder / "fifo.npy")
    (folder / "zero.npy").symlink_to("/dev/zero")
    (folder / "dir.npy").mkdir()
    (folder / "dangling.npy").symlink_to(folder / "gone.npy")
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (1000000, 1000000), }"
    header += b" " * (117 - len(header)) + b"\n"
    (folder / "huge.npy").write_bytes(
        b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(64)
    )
    return {
        "fifo.npy": "is a FIFO (named pipe), not a regular file",
        "zero.npy": "is a character device, not a regular file (a symbolic link to /dev/zero)",
        "dir.npy": "is a folder, not a file",
        "dangling.npy": f"is a broken symbolic link (to {folder / 'gone.npy'}, which does not exist)",
        "huge.npy": "is truncated: its header declares shape (1000000, 1000000) of float64 "
        "(8000000000000 bytes) but 64 bytes of data follow",
    }


def test_only_regular_files_are_read_and_every_skipped_entry_is_named(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    np.save(src / "good.npy", probs_map(0))
    (src / "notes.txt").write_text("not a map")
    expected = special_files(src)
    result = run("predict", src, "--out", tmp_path / "out", timeout=60)  # the FIFO used to hang here
    assert result.returncode == 1
    assert sorted(errors(result.stderr)) == sorted(
        f"{src / name}: {reason}" for name, reason in expected.items()
    )
    assert f"ignored 2 file(s) in {src} that are not .npy, .npz, .pt, .nii, .nii.gz: notes.txt, sub/" in (
        result.stderr
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.npy", "good.png"]

    # evaluate: the same entries among probabilities or labels are named, and the good pair evaluated
    probs, labels = tmp_path / "probs", tmp_path / "labels"
    probs.mkdir()
    labels.mkdir()
    expected = special_files(labels)
    for name in ["good", *(n[:-4] for n in expected)]:
        np.save(probs / f"{name}.npy", probs_map(1))
    np.save(labels / "good.npy", np.zeros((16, 16), np.uint8))
    result = run("evaluate", "--probs", probs, "--labels", labels, "--json", tmp_path / "r.json", timeout=60)
    assert result.returncode == 1
    assert sorted(errors(result.stderr)) == sorted(
        f"{labels / n}: {reason}" for n, reason in expected.items()
    )
    assert json.loads((tmp_path / "r.json").read_text())["images"] == ["good"]


# ------------------------------------------------------------- 13: unusable paths, no traceback


def test_paths_that_cannot_be_used_are_errors_not_tracebacks(tmp_path, capsys):
    np.save(tmp_path / "good.npy", probs_map(0))
    (tmp_path / "file").write_text("a regular file")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    cases = {
        tmp_path / "file" / "out": "Not a directory",
        tmp_path / "loop" / "out": "Too many levels of symbolic links",
        tmp_path / LONG: "File name too long",
    }
    for out, reason in cases.items():
        status, err = main_in_process(["predict", tmp_path / "good.npy", "--out", out], capsys)
        assert status == 2, err
        assert f"rankseg predict: error: --out {out}: cannot create the folder ({reason}" in err
    status, err = main_in_process(
        ["evaluate", "--probs", tmp_path / LONG, "--labels", tmp_path, "--json", tmp_path / "o" / LONG],
        capsys,
    )
    assert status == 2 and f"--probs {tmp_path / LONG} is not a folder (File name too long)" in err

    # an input whose name is too long is reported; the good file beside it is still processed
    result = run("predict", tmp_path / f"{LONG}.npy", tmp_path / "good.npy", "--out", tmp_path / "out")
    assert result.returncode == 1
    assert errors(result.stderr) == [f"{tmp_path / f'{LONG}.npy'}: cannot be read (File name too long)"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.npy", "good.png"]


def unshare_or_skip():
    unshare = shutil.which("unshare")
    ok = unshare and subprocess.run([unshare, "--user", "--map-root-user", "--mount", "true"]).returncode == 0
    if not ok:
        pytest.skip(
            "needs unshare into a user and mount namespace, to mount small and read-only file systems"
        )
    return unshare


def test_full_and_read_only_file_systems_are_named_as_such(tmp_path):
    """13: --out on a read-only file system; 19: a full disk is reported as such, naming the file
    (not NumPy's "4096 requested and 3056 written"), and a --json that cannot be written is
    named by the user's path, not the temporary file's."""
    unshare = unshare_or_skip()
    src, labels, full, ro = (tmp_path / n for n in ("in", "labels", "full", "ro"))
    for folder in (src, labels, full, ro):
        folder.mkdir()
    np.save(src / "big.npy", probs_map(0, spatial=(64, 64)))  # int64 labels: 32 KiB, more than the disk
    np.save(src / "small.npy", probs_map(1, spatial=(4, 4)))
    np.save(labels / "big.npy", np.zeros((64, 64), np.uint8))
    np.save(labels / "small.npy", np.zeros((4, 4), np.uint8))
    script = """
        mount -t tmpfs -o size=16k tmpfs "$FULL" && mount -t tmpfs -o ro,size=16k tmpfs "$RO" || exit 99
        "$RANKSEG" predict "$SRC" --out "$FULL" 2> full.err; echo $? > full.rc; ls -a "$FULL" > full.ls
        "$RANKSEG" predict "$SRC" --out "$RO/sub" 2> ro.err; echo $? > ro.rc
        "$RANKSEG" evaluate --probs "$SRC" --labels "$LABELS" --json "$RO/r.json" > /dev/null 2> json.err
        echo $? > json.rc
    """
    env = {
        **ENV,
        "RANKSEG": str(RANKSEG),
        "SRC": str(src),
        "LABELS": str(labels),
        "FULL": str(full),
        "RO": str(ro),
    }
    done = subprocess.run(
        [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    def read(name):
        return (tmp_path / name).read_text()

    assert read("full.rc").strip() == "1"
    assert errors(read("full.err")) == [
        f"{full / 'big.npy'}: cannot be written (the disk is full: no space left on device)"
    ]
    assert read("full.ls").split() == [".", "..", "small.npy", "small.png"]  # no temporary file left
    assert read("ro.rc").strip() == "2"
    assert f"--out {ro / 'sub'}: cannot create the folder (Read-only file system" in read("ro.err")
    assert read("json.rc").strip() == "1"
    assert errors(read("json.err")) == [f"{ro / 'r.json'}: cannot be written (Read-only file system)"]


# ------------------------------------------------ 14, 18: one reader, one set of accepted dtypes


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize <= 8, reason="long double is float64 here")
def test_predict_and_evaluate_read_the_same_dtypes_and_refuse_the_same(tmp_path):
    probs, labels, out = tmp_path / "probs", tmp_path / "labels", tmp_path / "out"
    probs.mkdir()
    labels.mkdir()
    base = probs_map(0)
    maps = {
        "big_endian": base.astype(">f8"),
        "half": base.astype(np.float16),
        "quad": base.astype(np.longdouble),
        "complex": base.astype(np.complex64),
        "empty": np.zeros((3, 0, 4), np.float32),
    }
    for name, array in maps.items():
        np.save(probs / f"{name}.npy", array)
        np.save(labels / f"{name}.npy", np.ones(array.shape[1:], ">i8"))  # big-endian int labels
    refused = {
        "quad": f"holds {np.dtype(np.longdouble).name} (extended precision) values, which torch cannot "
        "represent; save the array as float64",
        "complex": "holds complex64 values; expected bool, int8 to int64, uint8 to uint64, float16, "
        "float32 or float64",
        "empty": "has shape (3, 0, 4), with an empty axis; expected (classes, *spatial) with at least one "
        "class and one pixel",
    }
    result = run("predict", probs, "--out", out)
    assert result.returncode == 1
    messages = errors(result.stderr)
    assert len(messages) == 3
    for name, reason in refused.items():
        assert any(m.startswith(f"{probs / name}.npy: {reason}") for m in messages), (name, messages)
    assert sorted(p.name for p in out.iterdir()) == [
        "big_endian.npy", "big_endian.png", "half.npy", "half.png"
    ]  # fmt: skip
    np.testing.assert_array_equal(
        np.load(out / "big_endian.npy"), RankSEG()(base.astype(np.float64)[None])[0]
    )
    np.testing.assert_array_equal(np.load(out / "half.npy"), RankSEG()(base.astype(np.float16)[None])[0])

    result = run("evaluate", "--probs", probs, "--labels", labels, "--json", tmp_path / "r.json")
    assert result.returncode == 1
    assert sorted(errors(result.stderr)) == sorted(messages)  # the same file, the same reason
    assert json.loads((tmp_path / "r.json").read_text())["images"] == ["big_endian", "half"]


# ------------------------------------------------------------------------- 15: worker processes


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(n) for n in f.read().split()]
    except FileNotFoundError:  # it has just exited
        return []


def worker_pids(pid):
    """The processes of the command ``pid`` that may be workers: its children, or for a forkserver
    the children of that."""
    found = []
    for child in children(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                forkserver = b"forkserver" in f.read()
        except FileNotFoundError:
            continue
        found += children(child) if forkserver else [child]
    return found


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds worker processes through /proc")
def test_a_killed_worker_costs_only_the_file_it_was_working_on(tmp_path):
    probs, labels = tmp_path / "probs", tmp_path / "labels"
    probs.mkdir()
    labels.mkdir()
    names = [f"case{i}" for i in range(8)]
    for i, name in enumerate(names):  # large enough to keep a worker busy for a while
        p = synthetic_probs(1, 4, (1024, 1024), seed=i, scale=2.0)
        np.save(probs / f"{name}.npy", p[0].numpy().astype(np.float16))
        np.save(labels / f"{name}.npy", sample_labels(p, seed=i)[0].numpy().astype(np.uint8))
    proc = start(
        "evaluate", "--probs", probs, "--labels", labels, "--solvers", "TRNA,BA", "--workers", "2",
        "--json", tmp_path / "r.json",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        busy = []
        while not busy:  # a worker well into its work
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.02)
            busy = [pid for pid in worker_pids(proc.pid) if cpu_seconds(pid) >= 0.25]  # not the tracker
        os.kill(busy[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr
    messages = errors(stderr)
    assert len(messages) == 1, stderr  # not "worker failed" for every pending pair
    victim = next(n for n in names if str(probs / f"{n}.npy") in messages[0])
    assert messages[0] == (
        f"{probs / victim}.npy: the worker process running it was killed by SIGKILL "
        "(by the out-of-memory killer, or by hand)"
    )
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["images"] == [n for n in names if n != victim]
    assert list(saved["failed"]) == [victim]


def _double_or_die(task):
    if task == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.1 * (6 - task))  # later tasks finish first
    return 2 * task


def _exit_at_start():
    os._exit(3)


class _Steps:
    def __init__(self):
        self.names = []

    def step(self, name):
        self.names.append(name)

    def close(self):
        pass


def test_the_runner_reports_a_dead_worker_s_task_and_hands_results_over_in_task_order():
    from rankseg.cli._runner import InProcess, ProcessPool, TaskFailed, make_executor, run_tasks

    handled, progress = [], _Steps()
    names = [f"t{i}" for i in range(7)]
    run_tasks(
        _double_or_die,
        range(7),
        ProcessPool(2),
        names=names,
        progress=progress,
        handle=lambda i, r: handled.append((i, r)),
    )
    assert [i for i, _ in handled] == list(range(7))
    assert [r for i, r in handled if i != 3] == [0, 2, 4, 8, 10, 12]
    assert handled[3][1] == TaskFailed(
        "the worker process running it was killed by SIGKILL (by the out-of-memory killer, or by hand)"
    )
    assert sorted(progress.names) == names and progress.names != names  # advanced as each finished

    # workers that cannot even start: the tasks run in this process instead, with a warning
    warned, handled = [], []
    pool = ProcessPool(2, _exit_at_start, (), warned.append)
    run_tasks(
        abs,
        [-1, -2, -3],
        pool,
        names=["a", "b", "c"],
        progress=_Steps(),
        handle=lambda i, r: handled.append(r),
    )
    assert handled == [1, 2, 3]
    assert warned == [
        "no worker process could be started (worker processes exit as they start, with status 3); "
        "continuing in this process"
    ]

    warned = []
    assert isinstance(make_executor(1, 40, warned.append), InProcess)
    assert isinstance(make_executor(4, 1, warned.append), InProcess)  # one task: no process at all
    capped = make_executor(1000, 40, warned.append)
    assert isinstance(capped, ProcessPool) and capped.workers == 40
    assert warned[-1].startswith("--workers 1000 is more than the ")


def test_predict_with_workers_writes_the_same_bytes_and_lines_as_one_process(tmp_path):
    nib = pytest.importorskip("nibabel")
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        np.save(src / f"img{i}.npy", probs_map(i, spatial=(48, 40)))
    np.save(src / "one.npy", probs_map(9, classes=1, spatial=(30, 20)))
    nib.save(
        nib.Nifti1Image(probs_map(5, spatial=(8, 10, 6)), np.diag([0.7, 0.7, 2.0, 1.0])), src / "vol.nii.gz"
    )
    single = run("predict", src, "--out", tmp_path / "one")
    multi = run("predict", src, "--out", tmp_path / "two", "--workers", "2")
    assert single.returncode == multi.returncode == 0, multi.stderr
    written = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(written) == 10 and written == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in written:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert multi.stdout == single.stdout.replace(str(tmp_path / "one"), str(tmp_path / "two"))


# ------------------------------------------------------------- 16: SIGTERM; all-or-nothing cases


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_stops_cleanly_leaving_whole_cases_and_no_temporary_files(tmp_path, workers):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(40):
        np.save(src / f"m{i:02d}.npy", probs_map(i, spatial=(192, 192)))
    proc = start("predict", src, "--out", out, *(["--workers", workers] if workers > 1 else []))
    try:
        read_line(proc)  # working: the first case is written
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.strip().splitlines()[-1] == "rankseg predict: terminated"
    assert "Traceback" not in stderr
    written = assert_cases_complete(out)
    assert 1 <= len(written) < 40


def test_a_rerun_completes_a_case_an_earlier_run_left_partial(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    for name in ("a", "b", "c"):
        np.save(src / f"{name}.npy", probs_map(ord(name)))
    mask = RankSEG()(probs_map(ord("a"))[None])[0]
    np.save(out / "a.npy", mask)  # stopped after a.npy, before a.png
    np.save(out / "b.npy", 1 - mask)  # not what b's map gives: someone else's file
    result = run("predict", src, "--out", out)
    assert result.returncode == 1
    assert (
        f"{src / 'a.npy'} -> {out / 'a.npy'}, {out / 'a.png'} (multiclass labels (16, 16)); completed: "
        in (result.stdout)
    )
    assert errors(result.stderr) == [f"{out / 'b.npy'}: exists; pass --force to overwrite it"]
    assert sorted(p.name for p in out.iterdir()) == ["a.npy", "a.png", "b.npy", "c.npy", "c.png"]
    from PIL import Image

    np.testing.assert_array_equal(np.array(Image.open(out / "a.png")), mask)


# ------------------------------------------------------------------- 17: stdout closed by a reader


def test_a_closed_stdout_stops_the_command_quietly(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(20):
        np.save(src / f"m{i:02d}.npy", probs_map(i))
    proc = start("predict", src, "--out", out)  # as in: rankseg predict in --out out | head -1
    try:
        first = read_line(proc)
        proc.stdout.close()
        stderr = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert first.startswith(f"{src / 'm00.npy'} -> ")
    assert proc.returncode == 128 + signal.SIGPIPE  # what a shell shows for a tool stopped by SIGPIPE
    assert stderr == ""  # no BrokenPipeError per file, no traceback
    assert 1 <= len(assert_cases_complete(out)) < 20  # it stopped, leaving whole cases


# ---------------------------------------------------------------- 19: values and paths as given


def test_labels_out_of_range_are_reported_as_stored(tmp_path, capsys):
    probs, labels = tmp_path / "probs", tmp_path / "labels"
    probs.mkdir()
    labels.mkdir()
    stored = {
        "huge": np.array([[0, 2**63 + 5], [1, 2]], np.uint64),
        "float": np.array([[0, 1], [1e30, 2]]),
        "negative": np.array([[0, 1], [2, -3]], np.int8),
        "ignored": np.array([[0, 1], [255, 2]], np.uint8),
    }
    for name, array in stored.items():
        np.save(probs / f"{name}.npy", probs_map(0, classes=3, spatial=(2, 2)))
        np.save(labels / f"{name}.npy", array)
    result = run("evaluate", "--probs", probs, "--labels", labels, "--ignore-index", "255")
    assert result.returncode == 1
    allowed = "labels must lie in [0, 2] or --ignore-index 255"
    assert sorted(errors(result.stderr)) == [
        f"{labels / 'float.npy'}: holds the label {int(1e30)}; {allowed}",
        f"{labels / 'huge.npy'}: holds the label {2**63 + 5}; {allowed}",
        f"{labels / 'negative.npy'}: holds the label -3; {allowed}",
    ]
    assert result.stdout.startswith("1 image(s)")

    # an --ignore-index that int64 labels cannot hold is a usage error
    with pytest.raises(SystemExit) as info:
        main_in_process(["evaluate", "--probs", probs, "--labels", labels, "--ignore-index", 2**70], capsys)
    assert info.value.code == 2
    assert (
        "--ignore-index: expected an integer from -2**63 to 2**63-1 (labels are read as int64); "
        f"got '{2**70}'" in (capsys.readouterr().err)
    )

    # --json naming a folder: refused before any work, by the user's path
    (tmp_path / "results").mkdir()
    status, err = main_in_process(
        ["evaluate", "--probs", probs, "--labels", labels, "--json", tmp_path / "results", "--force"], capsys
    )
    assert status == 1
    assert errors(err) == [f"{tmp_path / 'results'}: is a folder; --json needs the name of a file to write"]
    assert list((tmp_path / "results").iterdir()) == []
    assert stat.S_ISDIR(os.stat(tmp_path / "results").st_mode)


def test_torch_files_with_other_dtypes_are_refused_by_name(tmp_path):
    """The reader's dtype check covers .pt files too (bfloat16 is read as float32)."""
    from rankseg.cli.io import InputError, read_array

    torch.save(torch.from_numpy(probs_map(0)).to(torch.bfloat16), tmp_path / "b.pt")
    assert read_array(tmp_path / "b.pt", "probs")[0].dtype == np.float32
    torch.save(torch.zeros(2, 3, dtype=torch.complex64), tmp_path / "c.pt")
    with pytest.raises(InputError, match=r"c\.pt: holds torch\.complex64 values; expected bool, int8"):
        read_array(tmp_path / "c.pt", "probs")


# ---------------------------------------------------- the reader, generated: 12, 14, 18 as properties

READABLE = [
    "<f2",
    ">f2",
    "<f4",
    ">f4",
    "<f8",
    ">f8",
    "|b1",
    "|i1",
    "|u1",
    "<i2",
    ">u2",
    "<i4",
    ">i4",
    "<u8",
    ">i8",
]
REFUSED = {
    "complex64": "<c8",
    "complex128": ">c16",
    "Python objects": "|O",
    f"{np.dtype(np.longdouble).name}": "g",
}
if np.dtype(np.longdouble).itemsize <= 8:  # long double is float64 here: read like it
    READABLE.append(REFUSED.pop(np.dtype(np.longdouble).name))


@given(
    dtype=st.sampled_from(READABLE + list(REFUSED.values())),
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple),
    fortran=st.booleans(),
    cut=st.one_of(st.none(), st.integers(0, 400)),
    seed=st.integers(0, 2**16),
)
def test_the_reader_returns_the_stored_array_or_names_the_problem(dtype, shape, fortran, cut, seed):
    """Every .npy file: the array exactly (native byte order), or an InputError naming the file:
    never a wrong array, another exception, or a read past what the header declares."""
    from rankseg.cli.io import InputError, read_array

    values = np.random.default_rng(seed).integers(-3, 4, shape)
    array = np.asfortranarray(values.astype(dtype)) if fortran else values.astype(dtype)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.npy"
        np.save(path, array, allow_pickle=True)
        data = path.read_bytes()
        if cut is not None:
            path.write_bytes(data[: min(cut, len(data))])
        try:
            got, _ = read_array(path, "labels")
        except InputError as exc:
            assert str(exc).startswith(f"{path}: ")
            if cut is None or cut >= len(data):  # a whole file is refused only for its dtype
                assert np.dtype(dtype) in [np.dtype(d) for d in REFUSED.values()], str(exc)
                name = next(n for n, d in REFUSED.items() if np.dtype(d) == np.dtype(dtype))
                assert f"holds {name}" in str(exc)
            return
    assert np.dtype(dtype) not in [np.dtype(d) for d in REFUSED.values()]
    assert got.dtype.isnative and got.dtype == np.dtype(dtype).newbyteorder("=")
    assert got.shape == array.shape and np.array_equal(got, array)
