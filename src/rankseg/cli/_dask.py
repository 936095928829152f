"""The runner's Dask backend: ``--dask ADDRESS`` and ``--dask local`` (imported only for those).

:class:`DaskExecutor` is an executor of :mod:`rankseg.cli._runner` (``map_unordered(work, tasks)``)
that submits every task to a ``dask.distributed`` cluster and yields the outcomes as they finish.
The workers read and write the files themselves, so they must see them at the same paths (a shared
file system); only the tasks (paths and options) and the results (lines, counts) cross the network.

- A worker that dies while it holds a task (killed, out of memory, its machine lost) makes the
  scheduler run the task again on another worker, until ``allowed_failures`` workers have died with
  it (Dask's ``distributed.scheduler.allowed-failures``, 3 by default); then the task comes back as
  a :class:`~rankseg.cli._runner.TaskFailed` that says so, and the command names its file. The
  per-file work writes atomically, so a worker that dies leaves no partial file under a final name.
- Relative paths are resolved against this process's working directory: a worker that runs in
  another folder receives the task with its relative paths made absolute.
- A lost scheduler stops the run with one :class:`ClusterError` (an ``OSError``: the command reports
  it and exits with status 1), as does one that cannot be reached or a local cluster that cannot
  start.
- When the executor is closed early (interrupted, or stdout was closed), the tasks not yet finished
  are cancelled, and what the command started is closed: the client, and for ``local`` the
  cluster, once its workers have completed the files they are writing (at most
  :data:`~rankseg.cli._runner.STOP_SECONDS`). The workers of ``local`` ignore SIGINT and SIGTERM, so
  that a signal to the whole process group (a Ctrl-C at the terminal) stops them only through the
  command. A remote cluster's workers finish the files they are writing on their own.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from contextlib import ExitStack
from dataclasses import fields, is_dataclass, replace
from pathlib import Path, PurePath
from typing import Any

from distributed import Client, KilledWorker, LocalCluster, WorkerPlugin, as_completed

from ._runner import STOP_SECONDS, TaskFailed, _call

__all__ = ["LOCAL", "ClusterError", "DaskExecutor", "absolute_paths", "run_on_worker", "tasks_running"]

LOCAL = "local"  # --dask local: a LocalCluster of --workers processes on this machine


class ClusterError(OSError):
    """The cluster cannot be reached or started: reported like a file problem (exit status 1)."""


def absolute_paths(value: Any, base: Path) -> Any:
    """``value`` with every relative path in it (a dataclass's fields, tuples, lists, dicts) joined to
    ``base``; other values unchanged.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Task:
    ...     path: Path
    ...     paths: tuple
    ...     name: str
    >>> absolute_paths(Task(Path("a.npy"), (Path("/x/b.npy"), Path("c")), "a"), Path("/data"))
    Task(path=PosixPath('/data/a.npy'), paths=(PosixPath('/x/b.npy'), PosixPath('/data/c')), name='a')
    """
    if isinstance(value, PurePath):
        return value if value.is_absolute() else base / value
    if is_dataclass(value) and not isinstance(value, type):
        changed = {f.name: absolute_paths(getattr(value, f.name), base) for f in fields(value) if f.init}
        return replace(value, **changed)
    if isinstance(value, (tuple, list)):
        return type(value)(absolute_paths(item, base) for item in value)
    if isinstance(value, dict):
        return {key: absolute_paths(item, base) for key, item in value.items()}
    return value


_running = 0  # (in a worker process) how many tasks run_on_worker is running now
_running_lock = threading.Lock()


def run_on_worker(work: Callable[[Any], Any], task: Any, cwd: str, threads: int | None) -> Any:
    """Run one task on a Dask worker: relative paths against the command's folder ``cwd``; ``threads``
    torch threads when given (``--dask local``), else as the worker has them."""
    global _running
    if os.getcwd() != cwd:
        task = absolute_paths(task, Path(cwd))
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    with _running_lock:
        _running += 1
    try:
        return _call(work, task)
    finally:
        with _running_lock:
            _running -= 1


def tasks_running() -> int:
    """How many tasks this worker process is running now (asked with ``Client.run``)."""
    return _running


class IgnoreStopSignals(WorkerPlugin):
    """For the workers of ``--dask local``: ignore SIGINT and SIGTERM. A Ctrl-C at the terminal, or a
    SIGTERM to the process group (a job scheduler stopping the job), reaches the workers too; the
    command handles it, and closes the workers once the files they are writing are complete, instead
    of them stopping half-way through a file."""

    idempotent = True
    name = "rankseg-ignore-stop-signals"

    def setup(self, worker: Any) -> None:
        if threading.current_thread() is threading.main_thread():  # where Python handles signals
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _let_running_tasks_finish(client: Client, seconds: float) -> None:
    """Wait, at most ``seconds``, until the workers run no task (cancelled tasks that had started
    go on to the end: a thread cannot be stopped half-way, and they write whole files)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if not any(client.run(tasks_running, on_error="ignore").values()):
                return
        except Exception:  # the cluster is going away already
            return
        time.sleep(0.1)


def _outcome(future: Any, address: str) -> Any:
    """The task's result, or a TaskFailed saying what happened to it on the cluster; ClusterError
    when the scheduler is lost (every task still to come is, with it)."""
    try:
        return future.result()
    except KilledWorker as exc:
        return TaskFailed(
            f"its Dask worker died while running it, on each of {exc.allowed_failures + 1} workers that "
            f"tried (the last: {exc.last_worker.address}); Dask gives up after allowed-failures="
            f"{exc.allowed_failures} (distributed.scheduler.allowed-failures)"
        )
    except CancelledError as exc:
        reason = getattr(exc, "reason", None) or "unknown"
        if reason == "scheduler-connection-lost":
            raise ClusterError(
                f"--dask {address}: lost the connection to the Dask scheduler; "
                "the files not reported above are not known to be done"
            ) from None
        return TaskFailed(f"it was cancelled on the Dask cluster (reason: {reason})")
    except Exception as exc:  # raised on the worker outside the work itself, e.g. rankseg missing there
        return TaskFailed(f"on its Dask worker: {type(exc).__name__}: {exc}")


def scheduler_address(address: str) -> str:
    """The scheduler address that ``--dask`` names: the address itself, or the one in a scheduler
    file (the JSON file that ``dask scheduler --scheduler-file PATH`` writes)."""
    if not address.endswith(".json"):
        return address
    try:
        with open(address) as f:
            info = json.load(f)
        return str(info["address"])
    except OSError as exc:
        raise ClusterError(
            f"--dask {address}: cannot read the scheduler file ({exc.strerror or exc})"
        ) from None
    except (ValueError, KeyError, TypeError):
        raise ClusterError(
            f"--dask {address}: is not a scheduler file (JSON with an 'address', as written by "
            "'dask scheduler --scheduler-file')"
        ) from None


def _close_quietly(client: Client) -> None:
    """Close the client without the traceback Dask logs when it was still trying to reconnect to a
    lost scheduler (the command has said so already)."""
    logger = logging.getLogger("distributed.client")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        client.close()
    finally:
        logger.setLevel(level)


class DaskExecutor:
    """Run the tasks on a ``dask.distributed`` cluster, one Dask task per file.

    ``address`` is a scheduler address (``tcp://host:8786``), a scheduler file (``*.json``), or
    ``"local"``: a ``LocalCluster`` of ``workers`` processes with one thread each, on the loopback
    interface, without a dashboard, started when the tasks are and closed with them. ``threads``
    sets torch's thread count for each task (None: the worker's own setting, e.g. a Dask nanny's
    ``OMP_NUM_THREADS=1``).
    """

    def __init__(self, address: str, workers: int = 1, threads: int | None = None) -> None:
        self.address = address
        self.workers = workers
        self.threads = threads

    def _client(self, stack: ExitStack) -> Client:
        if self.address == LOCAL:
            try:
                cluster = LocalCluster(
                    n_workers=self.workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                    # the scheduler's HTTP server (health, metrics) still runs: on a free port, so that
                    # a notebook's cluster on the default 8787 costs no warning
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                    memory_limit=0,  # as --workers: no per-worker cap, the operating system's limits
                    silence_logs=logging.ERROR,
                )
            except Exception as exc:
                raise ClusterError(
                    f"--dask local: cannot start a Dask cluster ({type(exc).__name__}: {exc})"
                ) from None
            stack.callback(cluster.close, timeout=STOP_SECONDS)
            client = Client(cluster, set_as_default=False)
            stack.callback(_close_quietly, client)
            client.register_plugin(IgnoreStopSignals())
            return client
        address = scheduler_address(self.address)
        try:
            client = Client(address, set_as_default=False)
        except (OSError, ValueError, TypeError) as exc:  # unreachable; or not an address
            raise ClusterError(f"--dask {self.address}: no Dask scheduler answered ({exc})") from None
        stack.callback(_close_quietly, client)
        return client

    def map_unordered(self, work: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        if not tasks:
            return
        with ExitStack() as stack:
            client = self._client(stack)
            cwd = os.getcwd()
            run = uuid.uuid4().hex[:12]
            futures = {
                client.submit(
                    run_on_worker,
                    work,
                    task,
                    cwd,
                    self.threads,
                    key=f"{work.__name__}-{run}-{index}",
                    pure=False,
                ): index
                for index, task in enumerate(tasks)
            }
            try:
                for future in as_completed(list(futures), loop=client.loop):
                    index = futures.pop(future)
                    yield index, _outcome(future, self.address)
            finally:
                if futures:  # stopped early: nothing more starts
                    client.cancel(list(futures), reason="the rankseg command stopped")
                    if self.address == LOCAL:  # the files being worked on are completed, then the
                        _let_running_tasks_finish(client, STOP_SECONDS)  # cluster is closed
