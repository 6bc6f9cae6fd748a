"""One SPOP connection from HAProxy: the asyncio glue around AgentConnection.

Reads frames, answers HELLO, runs handlers, writes each frame with a single
write. ACKs go back in whatever order handlers finish (pipelining), always on
this connection. Every error the peer causes ends in AGENT-DISCONNECT.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any, cast

from spoa_agent import metrics
from spoa_agent.config import ServerConfig
from spoa_agent.server.agent import Actions, Agent
from spoa_agent.spop import (
    CLOSED,
    NEED_DATA,
    Ack,
    Action,
    AgentConnection,
    AgentDisconnect,
    HaproxyDisconnect,
    HaproxyHello,
    Notify,
    SpopError,
    Status,
)

NOTIFY_FRAMES = metrics.FRAMES.labels("notify")


class SpopProtocol(asyncio.Protocol):
    def __init__(
        self,
        agent: Agent,
        settings: ServerConfig,
        log: Any,
        on_close: Callable[[SpopProtocol], None],
    ) -> None:
        self.agent = agent
        self.settings = settings
        self.conn = AgentConnection(settings.max_frame_size)
        self.log = log
        self._on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self._deadlines: dict[asyncio.Task[None], asyncio.TimerHandle] = {}
        self._expired: set[asyncio.Task[None]] = set()  # cancelled by their deadline
        self._paused = False
        self._draining = False
        self._hello_timer: asyncio.TimerHandle | None = None
        self._batch: list[bytes] | None = None
        self.drained = asyncio.get_running_loop().create_future()

    # --- asyncio callbacks ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.log = self.log.bind(peer=f"{peer[0]}:{peer[1]}" if peer else "?")
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # A peer that vanished without FIN or RST is found and dropped.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._hello_timer = asyncio.get_running_loop().call_later(
            self.settings.hello_timeout, self._hello_timed_out
        )

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        # ACKs answered inline while handling this chunk leave in one write
        # (one syscall instead of one per frame); frames are never split.
        if self._batch is None:
            self._batch = []
        try:
            self._pump()
        finally:
            self._flush()

    def eof_received(self) -> bool:
        self.conn.receive_data(b"")
        self._pump()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        # HAProxy 3.1+ may close with an RST instead of DISCONNECT: a normal close.
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        for task in self.tasks:
            task.cancel()  # their ACKs have nowhere to go
        if not self.drained.done():
            self.drained.set_result(None)
        self.log.debug("spop_closed", error=str(exc) if exc else None)
        self._on_close(self)

    # --- frames -----------------------------------------------------------

    def _pump(self) -> None:
        """Handle every whole frame buffered, unless too much work is in flight."""
        conn = self.conn
        while not self._paused:
            try:
                event = conn.next_event()
            except SpopError as err:
                self._fail(err)
                return
            kind = type(event)
            if kind is Notify:
                assert isinstance(event, Notify)
                NOTIFY_FRAMES.inc()
                self._on_notify(event)
                if len(self.tasks) >= self.settings.max_in_flight:
                    self._pause()
            elif event is NEED_DATA:
                return
            elif kind is HaproxyHello:
                assert isinstance(event, HaproxyHello)
                self._on_hello(event)
            elif kind is HaproxyDisconnect:
                assert isinstance(event, HaproxyDisconnect)
                self.log.debug("spop_haproxy_disconnect", status=event.status, error=event.message)
                self._disconnect(Status.NORMAL, "bye")
                return
            elif event is CLOSED:
                self.close()
                return

    def _on_hello(self, hello: HaproxyHello) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        self._write(self.conn.send(self.conn.hello_reply()))
        if hello.healthcheck:
            self.close()

    def _on_notify(self, notify: Notify) -> None:
        actions: list[Action] = []
        pending: list[Awaitable[Actions]] = []
        for message in notify.messages:
            handler = self.agent.handlers.get(message.name)
            if handler is None:
                self.log.warning("spop_unknown_message", message=message.name)
                continue
            try:
                result = handler(message)
            except Exception:
                self.log.exception("handler_error", message=message.name)
                continue
            if isinstance(result, list | tuple):
                actions.extend(result)
            else:
                pending.append(cast(Awaitable[Actions], result))
        if not pending:
            self._send_ack(notify, actions)
            return
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._finish(notify, actions, pending))
        self.tasks.add(task)
        metrics.IN_FLIGHT.inc()
        task.add_done_callback(self._task_done)
        # One deadline for the whole NOTIFY, as HAProxy's `timeout processing`
        # has: a plain timer that cancels the task costs a fraction of an
        # asyncio.timeout() block per request.
        self._deadlines[task] = loop.call_later(self.settings.handler_timeout,
                                                self._expire, task)

    def _expire(self, task: asyncio.Task[None]) -> None:
        self._expired.add(task)
        task.cancel()

    async def _finish(
        self, notify: Notify, actions: list[Action], pending: list[Awaitable[Actions]]
    ) -> None:
        try:
            for awaitable in pending:
                try:
                    actions.extend(await awaitable)
                except Exception:
                    self.log.exception("handler_error", stream=notify.stream_id)
        except asyncio.CancelledError:
            if asyncio.current_task() not in self._expired:
                raise  # the connection is gone: no ACK to send
            self.log.error("handler_timeout", stream=notify.stream_id)
            for awaitable in pending:  # those never awaited
                if asyncio.iscoroutine(awaitable):
                    awaitable.close()
        self._send_ack(notify, actions)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        deadline = self._deadlines.pop(task, None)
        if deadline is not None:
            deadline.cancel()
        self._expired.discard(task)
        self.tasks.discard(task)
        metrics.IN_FLIGHT.dec()
        if self._paused and len(self.tasks) < self.settings.max_in_flight:
            self._resume()
        if self._draining and not self.tasks:
            self._disconnect(Status.NORMAL, "agent shutting down")

    def _send_ack(self, notify: Notify, actions: list[Action]) -> None:
        try:
            data = self.conn.send(Ack(notify.stream_id, notify.frame_id, tuple(actions)))
        except (ValueError, TypeError) as err:
            # Our handler's answer cannot be sent; an empty ACK still lets
            # HAProxy decide now (haproxy.cfg fails closed on missing vars).
            self.log.error("handler_bad_reply", error=str(err))
            data = self.conn.send(Ack(notify.stream_id, notify.frame_id))
        self._write(data)

    # --- flow control and shutdown -----------------------------------------

    def _pause(self) -> None:
        self._paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def _resume(self) -> None:
        self._paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        self._pump()  # frames buffered while paused

    def drain(self) -> None:
        """Finish what is in flight, then say goodbye (SIGTERM)."""
        self._draining = True
        if not self.tasks:
            self._disconnect(Status.NORMAL, "agent shutting down")

    def _hello_timed_out(self) -> None:
        self._fail(SpopError(Status.TIMEOUT, "no HELLO received in time"))

    def _fail(self, err: SpopError) -> None:
        metrics.PROTOCOL_ERRORS.labels(err.status.name.lower()).inc()
        self.log.warning("spop_protocol_error", status=int(err.status), error=err.message)
        self._disconnect(err.status, err.message)

    def _disconnect(self, status: Status, message: str) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self._write(self.conn.send(AgentDisconnect(int(status), message)))
        self.close()

    def _write(self, data: bytes) -> None:
        # Whole frames only: some HAProxy versions mishandle a frame split
        # across writes (a HELLO over two TCP segments). Frames written in one
        # turn of the event loop (ACKs of handlers that finished together)
        # leave in one write.
        if self._batch is None:
            self._batch = []
            asyncio.get_running_loop().call_soon(self._flush)
        self._batch.append(data)

    def _flush(self) -> None:
        batch, self._batch = self._batch, None
        if batch and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(batch))

    def close(self) -> None:
        self._flush()
        if self.transport is not None:
            self.transport.close()
