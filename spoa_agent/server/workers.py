"""`--workers N`: N processes serving one port through SO_REUSEPORT.

The supervisor only starts, watches and stops workers: SIGTERM/SIGINT are
passed on (each worker drains), SIGHUP (reload) and SIGUSR1 (reopen logs)
are passed on too, a worker that dies is started again, and a worker that
dies at once (port taken, bad config) stops the whole group.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Any

# A worker that lives less than this died of its start-up, not of load.
_EARLY_DEATH = 2.0


# Signals every worker acts on by itself, passed on by the supervisor.
FORWARDED = (signal.SIGHUP, signal.SIGUSR1)


def supervise(count: int, target: Callable[[], None], log: Any, grace: float,
              on_signal: Callable[[int], None] | None = None) -> int:
    """Run `count` workers until SIGTERM/SIGINT; `on_signal(signum)` lets the
    supervisor act on a forwarded signal itself (reopen its own log file)."""
    context = multiprocessing.get_context("fork")
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    pending: set[int] = set()

    def request_forward(signum: int, _frame: object) -> None:
        pending.add(signum)

    for sig in FORWARDED:
        signal.signal(sig, request_forward)

    def start(index: int) -> tuple[BaseProcess, float]:
        process = context.Process(target=_worker_main, args=(target, index), daemon=False)
        process.start()
        return process, time.monotonic()

    workers = [start(index) for index in range(count)]
    log.info("workers_started", workers=count, pids=[p.pid for p, _ in workers])
    exit_code = 0
    while not stopping:
        wait([process.sentinel for process, _ in workers], timeout=0.5)
        while pending:
            signum = pending.pop()
            if on_signal is not None:
                on_signal(signum)
            for process, _ in workers:
                if process.pid is not None and process.exitcode is None:
                    os.kill(process.pid, signum)
        for index, (process, started) in enumerate(workers):
            if process.exitcode is None or stopping:
                continue
            if time.monotonic() - started < _EARLY_DEATH:
                log.error("worker_failed_at_start", pid=process.pid, code=process.exitcode)
                stopping, exit_code = True, 1
                break
            log.error("worker_died", pid=process.pid, code=process.exitcode)
            workers[index] = start(index)

    for process, _ in workers:
        if process.exitcode is None:
            process.terminate()  # SIGTERM: the worker drains
    deadline = time.monotonic() + grace
    for process, _ in workers:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            process.kill()
            process.join()
    log.info("workers_stopped")
    return exit_code



WORKER_INDEX = "SPOA_AGENT_WORKER_INDEX"


def worker_index() -> int:
    """0 in a single process; 0..N-1 among --workers N (metrics port offset)."""
    return int(os.environ.get(WORKER_INDEX, "0"))


def _worker_main(target: Callable[[], None], index: int) -> None:
    os.environ[WORKER_INDEX] = str(index)
    # The fork inherited the supervisor's handlers; until the worker's event
    # loop installs its own, a signal must act as it normally does.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_IGN)  # until the loop handles it
    target()
