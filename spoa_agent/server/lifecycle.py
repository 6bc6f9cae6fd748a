"""Serve one process: startup -> main loop -> shutdown.

Signal handlers only set a flag. Shutdown stops accepting, lets every
connection finish its in-flight work (bounded by drain_timeout), says
AGENT-DISCONNECT, then cancels whatever is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import signal
import sys
from collections.abc import Callable
from typing import Any

from spoa_agent import metrics, native
from spoa_agent.server.agent import Agent
from spoa_agent.server.protocol import SpopProtocol, WriteQueue
from spoa_agent.server.settings import ServerConfig


async def serve(
    agent: Agent,
    settings: ServerConfig,
    log: Any,
    reuse_port: bool = False,
    on_ready: Callable[[], None] | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    def run_hooks(hooks: list[Callable[[], None]]) -> None:
        for hook in hooks:
            hook()

    loop.add_signal_handler(signal.SIGHUP, run_hooks, agent.reload)
    loop.add_signal_handler(signal.SIGUSR1, run_hooks, agent.reopen)

    for hook in agent.startup:
        await hook()
    connections: set[SpopProtocol] = set()
    # Read when Prometheus asks, not counted per request.
    metrics.IN_FLIGHT.set_function(lambda: sum(c.in_flight for c in list(connections)))

    writes = WriteQueue(loop)  # ACKs answered Later leave in one callback for all

    def make_protocol() -> SpopProtocol:
        protocol = SpopProtocol(agent, settings, log, connections.discard, writes)
        connections.add(protocol)
        return protocol

    server = await loop.create_server(
        make_protocol,
        settings.listen.host,
        settings.listen.port,
        reuse_port=reuse_port,
        backlog=4096,
    )
    # Whether the per-request path runs compiled (setup.py): the same
    # answers either way, with more CPU per request as pure Python.
    log.info("agent_listening", listen=str(settings.listen),
             compiled=not native.pure_modules())
    stale = native.stale_modules()
    if stale:  # a source checkout edited since its last build: Python runs the old code
        log.warning("compiled_modules_stale", modules=",".join(stale),
                    fix="build again: pip install -e . (make deps)")
    if on_ready is not None:
        on_ready()
    try:
        await stop.wait()
    finally:
        log.info("agent_stopping", connections=len(connections))
        server.close()
        await _drain(connections, settings.drain_timeout)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
        for hook in agent.shutdown:
            await hook()
    log.info("agent_stopped")


async def _drain(connections: set[SpopProtocol], timeout: float) -> None:
    live = list(connections)
    for protocol in live:
        protocol.drain()
    waiting = [protocol.drained for protocol in live]
    if waiting:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.gather(*waiting)
    for protocol in list(connections):
        protocol.close()  # past the deadline: cancel in-flight work


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


def return_large_buffers_to_the_system() -> bool:
    """Make glibc give large blocks (argon2id's 19 MiB) back when freed.

    glibc raises its mmap threshold to the size of the first large block
    freed, so every later argon2id buffer comes from a per-thread arena and
    stays resident: each argon2 thread kept 19 MiB, and an agent's RSS grew
    by that much whenever a thread first re-verified keys (seen in the soak).
    A fixed threshold keeps such blocks mmapped, returned on free.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 20))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


def run(agent: Agent, settings: ServerConfig, log: Any, reuse_port: bool = False) -> None:
    """Run serve() on uvloop when it is installed, else on asyncio's own loop."""
    return_large_buffers_to_the_system()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(agent, settings, log, reuse_port))
    else:
        uvloop.run(serve(agent, settings, log, reuse_port))
