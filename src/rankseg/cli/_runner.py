"""The one place that runs the per-file tasks of every subcommand, here or in worker processes.

``rankseg predict`` and ``rankseg evaluate`` (and any later command that works file by file) call::

    run_tasks(work, tasks, executor, names=names, progress=progress, handle=handle)

Contract
--------
- ``work`` is a module-level function (so that it pickles by reference) taking one task and
  returning its result. A task is a plain picklable value that holds everything ``work`` needs
  (paths and options, no open files or models), so that it can run in another process or on
  another machine that sees the same files. Paths held as :class:`pathlib.Path` (in a dataclass's
  fields, tuples, lists, dicts) are made absolute for a Dask worker that runs in another folder;
  paths held as strings are passed on as they are. ``work`` reports a file's own problems inside its
  result; an exception that escapes it becomes a :class:`TaskFailed` naming the exception.
- ``handle(index, outcome)`` runs in this process once per task, **in the order of** ``tasks``, as
  soon as every earlier task has finished: printed lines and tables never depend on which worker
  finished first. ``outcome`` is ``work``'s result or a :class:`TaskFailed`. Meanwhile
  ``progress.step(name)`` advances as each task finishes, in whatever order.
- A task whose worker process dies (killed, out of memory, crashed) comes back as a
  :class:`TaskFailed` that says so; tasks that had not started on it are run by a replacement
  worker, so no other task fails with it. When no worker can be started at all, the remaining
  tasks run in this process, with a warning. On a Dask cluster the scheduler runs such a task again
  on another worker, and it comes back as a :class:`TaskFailed` only when ``allowed_failures``
  workers have died with it.
- Interrupts: :func:`signals_handled` makes SIGTERM behave like SIGINT in the main process
  (:class:`Terminated`, a ``KeyboardInterrupt``), once: later signals are ignored while it is
  handled. The exception closes the executor (pending tasks are dropped, busy workers get SIGTERM,
  which runs their ``finally`` blocks so that no temporary file is left, and are killed if they
  have not stopped within :data:`STOP_SECONDS`) and then propagates to the command. An exception of
  ``handle`` (a closed stdout) closes the executor the same way. Workers ignore SIGINT: a Ctrl-C
  at the terminal reaches the whole process group, and is handled in the main process only. A
  worker that exits on SIGTERM the main process did not send (SIGTERM to the process group) ends
  the run as if the main process had received it.

Executors
---------
An executor has one method, ``map_unordered(work, tasks)``: a generator that yields ``(index,
outcome)`` as tasks finish, and whose ``finally`` stops whatever still runs when it is closed
early. :class:`InProcess` runs the tasks one after another in this process, :class:`ProcessPool`
in worker processes (``--workers N``), and ``rankseg.cli._dask.DaskExecutor`` on a
``dask.distributed`` cluster (``--dask ADDRESS``, or ``--dask local`` for a ``LocalCluster`` of
``--workers`` processes; that module imports Dask, and is imported only for ``--dask``). Which one
runs is decided in :func:`executor_from_args` alone, so the subcommands do not change with it.
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from ._common import UsageError

__all__ = [
    "DASK_EXTRA_HINT",
    "STOP_SECONDS",
    "Executor",
    "InProcess",
    "ProcessPool",
    "TaskFailed",
    "Terminated",
    "dask_address",
    "executor_from_args",
    "make_executor",
    "run_tasks",
    "runner_options_conflict",
    "signals_handled",
]

STOP_SECONDS = 10.0  # how long stopped workers get to clean up before they are killed
DASK_EXTRA_HINT = 'pip install "rankseg[dask]"'


@dataclass(frozen=True)
class TaskFailed:
    """A task that produced no result; ``reason`` says why, e.g. that its worker process died."""

    reason: str


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that every ``finally`` block runs."""

    signum = signal.SIGTERM


class Executor(Protocol):
    def map_unordered(self, work: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, result or TaskFailed)`` for every task as it finishes; stop on close."""
        ...


def _call(work: Callable[[Any], Any], task: Any) -> Any:
    try:
        return work(task)
    except Exception as exc:  # work reports file problems itself; anything else is named here
        return TaskFailed(f"{type(exc).__name__}: {exc}")


class InProcess:
    """Run the tasks one after another in this process."""

    def map_unordered(self, work: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        for index, task in enumerate(tasks):
            yield index, _call(work, task)


def _worker_main(conn: Connection, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    """A worker process: take one ``(work, task)`` at a time, send back its outcome, until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C, and stops us

    def terminated(signum: int, frame: object) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, terminated)
    try:
        if initializer is not None:
            initializer(*initargs)
        while True:
            try:
                message = conn.recv()
            except EOFError:  # the main process has gone
                return
            if message is None:
                return
            work, task = message
            conn.send(("started", None))  # from here on, its death is this task's failure
            outcome = _call(work, task)
            try:
                conn.send(("done", outcome))
            except Exception as exc:  # the result does not pickle (nothing was sent)
                reason = f"its result could not be sent back ({type(exc).__name__}: {exc})"
                conn.send(("done", TaskFailed(reason)))
    except Terminated:
        sys.exit(128 + signal.SIGTERM)


_NOTHING = object()


@dataclass
class _Worker:
    process: Any  # multiprocessing.Process of the chosen context
    conn: Connection
    index: int | None = None  # the task it was given
    started: bool = False  # whether it has taken that task


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (by the out-of-memory killer, or by hand)" if -exitcode == signal.SIGKILL else ""
        return f"the worker process running it was killed by {name}{hint}"
    return f"the worker process running it died (exit status {exitcode})"


class ProcessPool:
    """Run the tasks in ``workers`` processes, one task per process at a time.

    Workers are forked from a ``forkserver`` that has imported ``work``'s module once, so they start
    fast and share no threads with this process (``spawn`` where there is no fork server);
    ``initializer(*initargs)`` runs in each (the CLI sets torch's thread count). The pool knows which
    task each worker holds, so a worker that dies costs that one task (a :class:`TaskFailed`), and
    a replacement takes the rest.
    """

    def __init__(
        self,
        workers: int,
        initializer: Callable[..., None] | None = None,
        initargs: tuple = (),
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.workers = workers
        self.initializer = initializer
        self.initargs = initargs
        self.warn = warn or (lambda message: None)

    def _start(self, context: Any) -> tuple[_Worker | None, str]:
        """A new worker, or None and why it could not be started."""
        try:
            parent, child = context.Pipe()
            process = context.Process(
                target=_worker_main, args=(child, self.initializer, self.initargs), daemon=True
            )
            process.start()
        except (OSError, EOFError) as exc:  # e.g. no process can be forked, or the forkserver is gone
            return None, f"{type(exc).__name__}: {exc}"
        child.close()  # the worker holds the only other end: its death reads as end-of-file here
        return _Worker(process, parent), ""

    def map_unordered(self, work: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        if "forkserver" in multiprocessing.get_all_start_methods():
            context = multiprocessing.get_context("forkserver")
            # what every worker needs, imported once by the fork server (workers then start in ~0.1 s)
            needed = [__name__, work.__module__, getattr(self.initializer, "__module__", None)]
            context.set_forkserver_preload([name for name in dict.fromkeys(needed) if name])
        else:  # Windows: each worker imports what it needs
            context = multiprocessing.get_context("spawn")
        pending = deque(range(len(tasks)))
        workers: list[_Worker] = []
        trouble = ""  # why workers could not be started or kept
        early_deaths = 0  # workers that died before taking their task
        try:
            for _ in range(min(self.workers, len(tasks))):
                worker, trouble = self._start(context)
                workers += [worker] if worker is not None else []
            while pending or any(w.index is not None for w in workers):
                if not workers:  # none could be started: the rest runs here
                    self.warn(f"no worker process could be started ({trouble}); continuing in this process")
                    while pending:
                        index = pending.popleft()
                        yield index, _call(work, tasks[index])
                    return
                for worker in workers:
                    if worker.index is None and pending:
                        worker.index, worker.started = pending.popleft(), False
                        try:
                            worker.conn.send((work, tasks[worker.index]))
                        except OSError:  # it has died; its sentinel says so below
                            pass
                waiting = {w.process.sentinel: w for w in workers} | {w.conn: w for w in workers}
                for ready in wait(list(waiting)):
                    worker = waiting[ready]
                    if worker not in workers:
                        continue
                    outcome = self._receive(worker)
                    if outcome is not _NOTHING:
                        index, worker.index = worker.index, None
                        yield index, outcome  # type: ignore[misc]
                        continue
                    if worker.process.is_alive() and ready is worker.conn:
                        continue  # an acknowledgement
                    # the worker has died (its pipe closed or its process ended)
                    worker.process.join()
                    workers.remove(worker)
                    worker.conn.close()
                    code = worker.process.exitcode
                    if code in (-signal.SIGTERM, 128 + signal.SIGTERM):  # SIGTERM to the process group
                        raise Terminated()
                    if worker.index is not None and worker.started:
                        yield worker.index, TaskFailed(_death(code))
                    elif worker.index is not None:  # it died before taking its task: run it elsewhere
                        pending.appendleft(worker.index)
                        early_deaths += 1
                        trouble = f"worker processes exit as they start, with status {code}"
                    if pending and early_deaths <= 2 * self.workers:
                        replacement, trouble = self._start(context)
                        workers += [replacement] if replacement is not None else []
        finally:
            _stop(workers)

    @staticmethod
    def _receive(worker: _Worker) -> Any:
        """The worker's outcome when one is waiting; _NOTHING for an acknowledgement or a dead worker."""
        try:
            while worker.conn.poll():
                kind, outcome = worker.conn.recv()
                if kind == "done":
                    return outcome
                worker.started = True
        except (EOFError, OSError, pickle.UnpicklingError):
            pass
        return _NOTHING


def _stop(workers: list[_Worker]) -> None:
    """Stop every worker: idle ones are told to exit, busy ones get SIGTERM; killed after STOP_SECONDS."""
    for worker in workers:
        try:
            if worker.index is None:
                worker.conn.send(None)
            else:
                worker.process.terminate()
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + STOP_SECONDS
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _cpus_for(workers: int, warn: Callable[[str], None]) -> int:
    """The CPUs this process may use; more workers than CPUs is allowed, with a warning."""
    cpus = usable_cpus()
    if workers > cpus:
        warn(f"--workers {workers} is more than the {cpus} CPU(s) available; the workers compete for them")
    return cpus


def make_executor(workers: int, tasks: int, warn: Callable[[str], None]) -> Executor:
    """The executor for ``--workers N`` and this many tasks: in-process for one worker or one task,
    else at most one process per task, each with its share of the CPUs' threads. More workers than
    CPUs is allowed, with a warning."""
    cpus = _cpus_for(workers, warn)
    workers = min(workers, tasks)
    if workers <= 1:
        return InProcess()
    return ProcessPool(workers, _set_torch_threads, (max(1, cpus // workers),), warn)


def dask_address(text: str) -> str:
    """The value of ``--dask``: ``local``, a scheduler address or a scheduler file; checks that the
    ``dask`` extra is installed (argparse reports an ArgumentTypeError as a usage error)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "expected 'local', a scheduler address such as tcp://host:8786, or a scheduler file; "
            f"got {text!r}"
        )
    try:
        importlib.import_module(f"{__package__}._dask")
    except ImportError as exc:
        raise argparse.ArgumentTypeError(
            f"needs the 'dask' extra (dask.distributed: {exc}): {DASK_EXTRA_HINT}"
        ) from None
    return text


def runner_options_conflict(workers: int | None, dask: str | None) -> str | None:
    """Why ``--workers`` and ``--dask`` cannot go together here, or None when they can: ``--workers``
    sizes this machine's processes (alone, or with ``--dask local``); with ``--dask ADDRESS`` the
    cluster's own workers run the files, and ``--workers`` would have no effect."""
    if workers is None or dask is None or dask == "local":
        return None
    return (
        f"--workers applies to this machine (alone, or with --dask local), not to the cluster at --dask "
        f"{dask}: size that cluster instead (e.g. 'dask worker --nworkers N')"
    )


def executor_from_args(args: argparse.Namespace, tasks: int, warn: Callable[[str], None]) -> Executor:
    """The executor the command line's runner options ask for: ``--workers N`` (default 1) alone, or
    with ``--dask``. The one place these options are read, so that the subcommands need no change.

    ``--dask local`` starts at most one worker process per task, and shares the CPUs' threads among
    them as ``--workers`` does; ``--dask ADDRESS`` leaves threads to the cluster's workers."""
    dask = getattr(args, "dask", None)
    conflict = runner_options_conflict(args.workers, dask)
    if conflict is not None:  # the parser reports it first; this for a namespace built otherwise
        raise UsageError(conflict)
    if dask is None:
        return make_executor(args.workers or 1, tasks, warn)
    from . import _dask

    if dask != _dask.LOCAL:
        return _dask.DaskExecutor(dask)
    workers = args.workers or 1
    cpus = _cpus_for(workers, warn)
    workers = max(1, min(workers, tasks))
    return _dask.DaskExecutor(_dask.LOCAL, workers, threads=max(1, cpus // workers))


class _Progress(Protocol):
    def step(self, name: str) -> None: ...

    def close(self) -> None: ...


def run_tasks(
    work: Callable[[Any], Any],
    tasks: Sequence[Any],
    executor: Executor,
    *,
    names: Sequence[str],
    progress: _Progress,
    handle: Callable[[int, Any], None],
) -> None:
    """Run ``work`` on every task with ``executor``; see the module docstring for the contract.

    >>> seen = []
    >>> class Quiet:
    ...     def step(self, name): pass
    ...     def close(self): pass
    >>> run_tasks(abs, [-2, 3, -5], InProcess(), names=["a", "b", "c"], progress=Quiet(),
    ...           handle=lambda i, result: seen.append((i, result)))
    >>> seen
    [(0, 2), (1, 3), (2, 5)]
    """
    finished: dict[int, Any] = {}
    next_index = 0
    outcomes = executor.map_unordered(work, tasks)
    try:
        for index, outcome in outcomes:
            progress.step(names[index])
            finished[index] = outcome
            while next_index in finished:
                handle(next_index, finished.pop(next_index))
                next_index += 1
    finally:
        outcomes.close()  # type: ignore[attr-defined]
        progress.close()


@contextmanager
def signals_handled() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt and SIGTERM :class:`Terminated` in this (main) thread; once
    one has, both are ignored until the block ends, so that cleaning up is not cut short. The
    previous handlers come back at the end. Does nothing outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
