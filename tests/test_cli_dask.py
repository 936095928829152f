"""The per-file subcommands on a Dask cluster (``--dask ADDRESS`` / ``--dask local``): issue 14, section 2.

One ``LocalCluster`` of two worker processes on the loopback interface, started by this module,
serves the tests that pass its address on the command line; ``--dask local`` starts the command's
own. The commands run as subprocesses of the installed ``rankseg``, and their masks, lines and
tables are compared with a run of the same command in one process (``rankseg.cli.main``).
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rankseg import RankSEG
from rankseg.data import sample_labels, synthetic_probs

dask = pytest.importorskip("dask")  # the 'dask' extra: dask[distributed]
distributed = pytest.importorskip("distributed")

RANKSEG = Path(sys.executable).with_name("rankseg")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*args, cwd=None, timeout=180):
    return subprocess.run(
        [str(RANKSEG), *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=timeout
    )


def start(*args, cwd=None, **kwargs):
    return subprocess.Popen(
        [str(RANKSEG), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=cwd,
        **kwargs,
    )


def main_in_process(argv, capsys):
    from rankseg.cli import main

    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def errors(stderr):
    return [line.split(": error: ", 1)[1] for line in stderr.splitlines() if ": error: " in line]


def probs_map(seed, classes=4, spatial=(16, 16)):
    return synthetic_probs(1, classes, spatial, seed=seed, scale=2.0)[0].numpy()


def hidden(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def cluster():
    """A client of a cluster of two single-threaded worker processes. A task is given up after one
    retry (Dask's default is three) so that a task that always kills its worker fails fast; and a
    worker holds only the task it runs (worker-saturation 1.0; Dask's default 1.1 lets it hold one
    more, which its death would count against too)."""
    environ = dict(os.environ)
    with (
        dask.config.set({"distributed.scheduler.worker-saturation": 1.0}),
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"allowed_failures": 1, "dashboard_address": "127.0.0.1:0"},
        ) as local,
        distributed.Client(local, set_as_default=False) as client,
    ):
        yield client
    os.environ.clear()  # a nanny sets OMP_NUM_THREADS=1 and more here before it starts a worker
    os.environ.update(environ)


def ready(client):
    """The cluster's address once both workers run (a worker killed by an earlier test is restarted)."""
    client.wait_for_workers(2, timeout=120)
    return client.scheduler.address


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Probability maps of several shapes and formats, and labels for evaluate."""
    root = tmp_path_factory.mktemp("dask-data")
    probs, labels = root / "probs", root / "labels"
    probs.mkdir()
    labels.mkdir()
    for i, spatial in enumerate([(48, 40), (64, 64), (40, 56), (32, 32), (56, 48)]):
        p = probs_map(i, spatial=spatial)
        np.save(probs / f"img{i}.npy", p)
        np.save(labels / f"img{i}.npy", sample_labels(torch.from_numpy(p)[None], seed=i)[0].numpy())
    np.savez(probs / "zipped.npz", probs=probs_map(7, spatial=(24, 20)))
    np.save(labels / "zipped.npy", sample_labels(torch.from_numpy(probs_map(7, spatial=(24, 20)))[None])[0])
    torch.save(torch.from_numpy(probs_map(8, spatial=(6, 10, 8))), probs / "vol.pt")
    np.save(labels / "vol.npy", np.zeros((6, 10, 8), dtype=np.uint8))
    return probs, labels


# ------------------------------------------------------------------ same results as one process


def test_predict_on_dask_writes_the_same_bytes_and_lines_as_one_process(data, cluster, tmp_path, capsys):
    nib = pytest.importorskip("nibabel")
    probs, _ = data
    more = tmp_path / "more"  # beside the folder: a one-class map (bool masks) and a NIfTI volume
    more.mkdir()
    np.save(more / "one_class.npy", probs_map(9, classes=1, spatial=(30, 20)))
    affine = np.diag([0.7, 0.7, 2.0, 1.0])
    nib.save(nib.Nifti1Image(probs_map(5, spatial=(8, 10, 6)), affine), more / "scan.nii.gz")
    inputs = [probs, more / "one_class.npy", more / "scan.nii.gz"]
    status, single_out, _ = main_in_process(["predict", *inputs, "--out", tmp_path / "one"], capsys)
    assert status == 0
    remote = run("predict", *inputs, "--out", tmp_path / "remote", "--dask", ready(cluster), "--progress")
    written = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(written) == 15  # 9 masks, and a PNG beside each of the six 2-D multiclass ones
    assert remote.returncode == 0, remote.stderr
    assert errors(remote.stderr) == []
    assert sorted(p.name for p in (tmp_path / "remote").iterdir()) == written
    for file in written:
        assert (tmp_path / "one" / file).read_bytes() == (tmp_path / "remote" / file).read_bytes(), file
    assert remote.stdout == single_out.replace(str(tmp_path / "one"), str(tmp_path / "remote"))
    assert "rankseg predict [####################] 9/9 " in remote.stderr  # one step per file
    # --dask local (the command's own cluster) is compared in test_ctrl_c_stops_a_local_cluster_run...


def _without_times(table):
    """The printed table without the last column of its main rows (ms/image, which no two runs share)."""
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("method "))
    end = lines.index("", start)
    assert lines[start].endswith(" ms/image") and end - start >= 3
    return lines[:start] + [line.rsplit(None, 1)[0] for line in lines[start:end]] + lines[end:]


def test_evaluate_on_dask_prints_the_same_table_and_saves_the_same_results(data, cluster, tmp_path, capsys):
    probs, labels = data
    common = [
        "evaluate",
        "--probs",
        probs,
        "--labels",
        labels,
        "--solvers",
        "RMA,exact",
        "--num-classes",
        "4",
    ]
    status, single_out, _ = main_in_process([*common, "--json", tmp_path / "one.json", "-q"], capsys)
    assert status == 0
    scheduler_file = tmp_path / "scheduler.json"  # as 'dask scheduler --scheduler-file' writes it
    scheduler_file.write_text(json.dumps({"type": "Scheduler", "address": ready(cluster)}))
    result = run(*common, "--json", tmp_path / "two.json", "-q", "--dask", scheduler_file)
    assert result.returncode == 0, result.stderr
    assert _without_times(result.stdout) == _without_times(single_out)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["images"] == two["images"] == ["img0", "img1", "img2", "img3", "img4", "vol", "zipped"]
    for method in ("argmax", "RMA", "exact"):
        for key in ("mDice_I", "mIoU_I", "mIoU_D", "mDice_C", "per_class", "per_image_dice"):
            assert one["methods"][method][key] == two["methods"][method][key], (method, key)


def test_nnunet_and_evaluate_nnunet_on_dask_write_and_print_what_the_library_does(cluster, tmp_path):
    pytest.importorskip("nnunetv2")
    from rankseg.integration import nnunet

    import nnunet_folders

    folder = nnunet_folders.build(nnunet_folders.LABELS, tmp_path / "built")
    nnunet.postprocess_folder(folder.pred_dir, tmp_path / "library")
    address = ready(cluster)
    result = run("nnunet", folder.pred_dir, "--out", tmp_path / "out", "--dask", address)
    assert result.returncode == 0, result.stderr
    library = sorted((tmp_path / "library").iterdir())
    assert [p.name for p in library] == sorted(p.name for p in (tmp_path / "out").iterdir())
    for file in library:
        assert file.read_bytes() == (tmp_path / "out" / file.name).read_bytes(), file.name
    assert result.stdout.splitlines() == [
        f"{folder.pred_dir / case}.npz -> {tmp_path / 'out' / case}.nii.gz" for case in folder.cases
    ]
    evaluation = nnunet.evaluate_folder(folder.pred_dir, folder.labels_dir, solvers=["RMA"])
    result = run("evaluate", "--nnunet", folder.pred_dir, "--labels", folder.labels_dir, "--dask", address)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n\n" + nnunet.format_table(evaluation) + "\n")


# ------------------------------------------------------------------------------ lost workers


def _square_or_die(task):
    """A task that kills its own worker process: on the first attempt only (a marker file remembers
    the attempt), or on every attempt."""
    index, marker, always = task
    if marker is not None and (always or not marker.exists()):
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(1.0 if index == 0 else 0.05)  # the first task finishes late
    return index * index


class _Steps:
    def __init__(self):
        self.names = []

    def step(self, name):
        self.names.append(name)

    def close(self):
        pass


def test_the_runner_on_dask_retries_a_task_whose_worker_died_and_names_one_that_always_kills_it(
    cluster, tmp_path
):
    from rankseg.cli._dask import DaskExecutor
    from rankseg.cli._runner import TaskFailed, run_tasks

    once, always = tmp_path / "once", tmp_path / "always"
    tasks = [(i, None, False) for i in range(8)]
    tasks[2] = (2, once, False)  # its worker dies, then the scheduler runs it on another
    tasks[5] = (5, always, True)  # every worker that runs it dies: given up after allowed-failures
    handled, progress = [], _Steps()
    run_tasks(
        _square_or_die,
        tasks,
        DaskExecutor(ready(cluster)),
        names=[f"t{i}" for i in range(8)],
        progress=progress,
        handle=lambda i, outcome: handled.append((i, outcome)),
    )
    assert once.exists() and always.exists()  # both did kill a worker
    assert [i for i, _ in handled] == list(range(8))  # handed over in task order
    assert [outcome for i, outcome in handled if i != 5] == [0, 1, 4, 9, 16, 36, 49]
    failed = handled[5][1]
    assert isinstance(failed, TaskFailed)
    assert failed.reason.startswith("its Dask worker died while running it, on each of 2 workers that tried")
    assert failed.reason.endswith(
        "Dask gives up after allowed-failures=1 (distributed.scheduler.allowed-failures)"
    )
    assert sorted(progress.names) == [f"t{i}" for i in range(8)]  # one step per task,
    assert progress.names[0] != "t0"  # as each finished


def _sleep_then_touch(path):
    time.sleep(1.5)
    path.touch()


def test_a_stopped_run_lets_the_files_being_worked_on_finish(cluster, tmp_path):
    from rankseg.cli._dask import _let_running_tasks_finish, run_on_worker, tasks_running

    done = tmp_path / "done"
    future = cluster.submit(run_on_worker, _sleep_then_touch, done, os.getcwd(), None, pure=False)
    deadline = time.monotonic() + 60
    while not any(cluster.run(tasks_running).values()):  # it has started
        assert time.monotonic() < deadline and not future.done()
        time.sleep(0.02)
    cluster.cancel([future])  # as a stopped command does: the task's thread goes on
    start = time.monotonic()
    _let_running_tasks_finish(cluster, 30)
    assert done.exists() and time.monotonic() - start < 30
    assert not any(cluster.run(tasks_running).values())


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="kills a worker process with SIGKILL")
def test_a_worker_killed_mid_run_costs_no_file_and_leaves_no_partial_output(cluster, tmp_path):
    address = ready(cluster)
    pids = cluster.run(os.getpid)  # worker address -> its process
    (tmp_path / "in").mkdir()
    names = [f"case{i}" for i in range(4)]
    for i, name in enumerate(names):
        np.save(tmp_path / "in" / f"{name}.npy", probs_map(i, spatial=(320, 320)))
    # relative paths, from a folder that is not the workers' working folder
    proc = start("predict", "in", "--out", "out", "--solver", "TRNA", "--dask", address, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        busy = {}
        while not busy:  # a worker holding a file (TRNA takes about half a CPU second per file)
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
            processing = cluster.processing()
            busy = {w: keys for w, keys in processing.items() if any("predict_file-" in str(k) for k in keys)}
        victim, keys = next(iter(busy.items()))
        os.kill(pids[victim], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert errors(stderr) == []
    lost = {names[int(str(key).rsplit("-", 1)[1])] for key in keys}  # the files the dead worker held
    out = tmp_path / "out"
    assert hidden(out) == []
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.{s}" for n in names for s in ("npy", "png"))
    for i, name in enumerate(names):  # the lost files too, written by the other worker
        expected = RankSEG(solver="TRNA")(probs_map(i, spatial=(320, 320))[None])[0]
        np.testing.assert_array_equal(np.load(out / f"{name}.npy"), expected, err_msg=name)
    # the workers ran in another folder: they were given the paths made absolute
    assert stdout.splitlines() == [
        f"{tmp_path}/in/{n}.npy -> {tmp_path}/out/{n}.npy, {tmp_path}/out/{n}.png "
        "(multiclass labels (320, 320))"
        for n in names
    ]
    assert lost
    with pytest.raises(ProcessLookupError):  # the worker did die (its nanny starts another)
        os.kill(pids[victim], 0)


# ---------------------------------------------------------------------- stopping, options, extra


@pytest.mark.skipif(not Path("/proc").exists(), reason="checks the process group through /proc")
def test_ctrl_c_stops_a_local_cluster_run_and_closes_the_cluster(tmp_path):
    """--dask local: the cases written are what one process writes, whole, in file order; then Ctrl-C."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(12):
        np.save(src / f"m{i:02d}.npy", probs_map(i, spatial=(320, 320)))
    proc = start(
        "predict",
        src,
        "--out",
        out,
        "--solver",
        "TRNA",
        "--dask",
        "local",
        "--workers",
        "2",
        start_new_session=True,
    )
    try:
        first = proc.stdout.readline()  # working: the first case is written
        workers = _spawned_children(proc.pid)
        assert len(workers) == 2
        for pid in workers:  # they leave the signals to the command, which stops them
            assert _ignores(pid, signal.SIGINT) and _ignores(pid, signal.SIGTERM), pid
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at a terminal: the whole process group
        rest, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, stderr
    assert stderr.strip().splitlines()[-1] == "rankseg predict: interrupted"
    assert "Traceback" not in stderr
    assert hidden(out) == []
    stems = {p.name.rsplit(".", 1)[0] for p in out.iterdir()}
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.{x}" for s in stems for x in ("npy", "png"))
    assert 1 <= len(stems) < 12
    # the lines printed: the first files in file order, as one process prints them (files finished
    # out of order or after the interrupt are written whole but not reported)
    lines = (first + rest).splitlines()
    assert lines == [
        f"{src / s}.npy -> {out / s}.npy, {out / s}.png (multiclass labels (320, 320))"
        for s in [f"m{i:02d}" for i in range(len(lines))]
    ]
    assert {f"m{i:02d}" for i in range(len(lines))} <= stems
    from PIL import Image

    for stem in stems:  # what one process writes for the file
        expected = RankSEG(solver="TRNA")(probs_map(int(stem[1:]), spatial=(320, 320))[None])[0]
        np.testing.assert_array_equal(np.load(out / f"{stem}.npy"), expected)
        np.testing.assert_array_equal(np.array(Image.open(out / f"{stem}.png")), expected)
    deadline = time.monotonic() + 30
    while _group(proc.pid) and time.monotonic() < deadline:  # the cluster's worker processes end too
        time.sleep(0.1)
    assert _group(proc.pid) == []


def _spawned_children(pid):
    """The child processes of ``pid`` started by multiprocessing's spawn (a LocalCluster's workers,
    started from one of its threads)."""
    found = []
    children = [
        c for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()
    ]
    for child in children:
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
        except OSError:
            continue
    return found


def _ignores(pid, signum):
    """Whether the process ``pid`` ignores the signal ``signum`` (its SigIgn mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    raise AssertionError(f"no SigIgn line for {pid}")


def _group(pgid):
    """The processes still alive in the process group ``pgid``."""
    alive = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if entry.name.isdigit() and int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry.name))
    return alive


def test_dask_address_options_are_checked_before_any_work(data, tmp_path, capsys):
    probs, _ = data
    for options in (
        ["--dask", "tcp://127.0.0.1:1", "--workers", "2"],
        ["--workers", "2", "--dask", "h:8786"],
    ):
        with pytest.raises(SystemExit) as stopped:
            main_in_process(["predict", probs, "--out", tmp_path / "x", *options], capsys)
        assert stopped.value.code == 2
        address = options[options.index("--dask") + 1]
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"rankseg predict: error: argument {options[2]}: --workers applies to this machine (alone, or "
            f"with --dask local), not to the cluster at --dask {address}: size that cluster instead "
            "(e.g. 'dask worker --nworkers N')"
        )
    with pytest.raises(SystemExit) as stopped:
        main_in_process(["predict", probs, "--out", tmp_path / "x", "--dask", " "], capsys)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "rankseg predict: error: argument --dask: expected 'local', a scheduler address such as "
        "tcp://host:8786, or a scheduler file; got ' '"
    )
    assert not (tmp_path / "x").exists()

    with _connect_timeout():
        status, out, err = main_in_process(
            ["evaluate", "--probs", probs, "--labels", probs, "--dask", "tcp://127.0.0.1:1"], capsys
        )
    assert status == 1 and out == ""
    assert errors(err) == [
        "--dask tcp://127.0.0.1:1: no Dask scheduler answered "
        "(Timed out trying to connect to tcp://127.0.0.1:1 after 1 s)"
    ]
    status, _, err = main_in_process(
        ["predict", probs, "--out", tmp_path / "x", "--dask", tmp_path / "missing.json"], capsys
    )
    assert status == 1
    assert errors(err) == [
        f"--dask {tmp_path / 'missing.json'}: cannot read the scheduler file (No such file or directory)"
    ]


def _connect_timeout():
    return dask.config.set({"distributed.comm.timeouts.connect": "1s"})


def test_dask_without_the_extra_is_a_usage_error_naming_it(tmp_path, capsys, monkeypatch):
    for name in [n for n in sys.modules if n == "rankseg.cli._dask"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "distributed", None)  # not installed
    with pytest.raises(SystemExit) as stopped:
        main_in_process(["predict", tmp_path, "--out", tmp_path / "x", "--dask", "local"], capsys)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "rankseg predict: error: argument --dask: needs the 'dask' extra (dask.distributed: import of "
        'distributed halted; None in sys.modules): pip install "rankseg[dask]"'
    )
    assert not (tmp_path / "x").exists()


def test_rankseg_and_the_command_without_dask_never_import_dask(tmp_path):
    np.save(tmp_path / "a.npy", probs_map(0))
    script = (
        "import sys, rankseg, rankseg.cli\n"
        "from rankseg.cli import main\n"
        f"status = main(['predict', {str(tmp_path / 'a.npy')!r}, '--out', {str(tmp_path / 'out')!r}, '-q'])\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed'))\n"
        "print(status, loaded, 'rankseg.cli._dask' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert result.stdout.split("\n")[0] == "0 [] False", result.stderr


def test_losing_the_scheduler_stops_the_run_with_one_error_naming_it():
    from rankseg.cli._dask import ClusterError, DaskExecutor

    scheduler = distributed.LocalCluster(
        n_workers=0,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    )
    address = scheduler.scheduler_address
    outcomes = DaskExecutor(address).map_unordered(abs, [-1, -2])  # no worker: nothing finishes
    threading.Timer(1.0, scheduler.close).start()
    with pytest.raises(ClusterError) as lost:
        next(outcomes)
    assert str(lost.value) == (
        f"--dask {address}: lost the connection to the Dask scheduler; "
        "the files not reported above are not known to be done"
    )
