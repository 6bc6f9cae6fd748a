"""One SPOP connection from HAProxy: the asyncio glue around AgentConnection.

Reads frames, answers HELLO, runs handlers, writes each frame with a single
write. ACKs go back in whatever order handlers finish (pipelining), always on
this connection. Every error the peer causes ends in AGENT-DISCONNECT.

No one connection can starve the others or grow our memory: each handles at
most MESSAGES_PER_TURN messages per turn of the event loop and leaves the rest
of what it read for the next turn, and none is read while it has frames left
over, too much work in flight, or a peer that does not read its ACKs. What we
buffer per connection is then at most one read (256 KiB) plus a partial frame
in, and WRITE_HIGH plus one turn's and the in-flight NOTIFYs' ACKs out.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

from spoa_agent import metrics
from spoa_agent.server.agent import Actions, Agent, Answer, Later
from spoa_agent.server.settings import ServerConfig
from spoa_agent.spop import (
    CLOSED,
    NEED_DATA,
    Action,
    AgentConnection,
    AgentDisconnect,
    HaproxyDisconnect,
    HaproxyHello,
    Message,
    MessageValues,
    Notify,
    SpopError,
    Status,
)

# Messages (handler calls) one connection may have handled per turn of the
# event loop before every other connection's read is handled; an empty NOTIFY
# counts as one. HAProxy sends about one NOTIFY of one message per read, so
# this never binds on it; a peer pipelining thousands per read (a flood, or a
# client that is not HAProxy) gets 64 per turn, well under a millisecond of
# handler time, and every gateway request waits at most that for it. Smaller
# would add a loop turn per few frames for a busy pipelining peer.
MESSAGES_PER_TURN: Final = 64
# The transport's write buffer. HAProxy reads its ACKs at once and the kernel
# takes hundreds of KiB before anything is buffered here, so only a peer that
# sends without reading fills it: past WRITE_HIGH we stop reading it and
# handling its frames until the buffer is under WRITE_LOW again.
WRITE_HIGH: Final = 64 * 1024
WRITE_LOW: Final = 16 * 1024
_FRAME_COUNTS: Final = metrics.FRAMES.counts
_NOTIFY: Final = ("notify",)
# Why a connection's frames are not handled now (bits of SpopProtocol._stalled).
_IN_FLIGHT: Final = 1  # max_in_flight of its NOTIFYs are being handled
_WRITE_FULL: Final = 2  # its peer is not reading: our write buffer is over WRITE_HIGH


class _Waiting:
    """A NOTIFY of several messages answered Later: what is answered so far.
    Each Later calls it with its actions; the last one sends the ACK. (A
    NOTIFY of one message, HAProxy's usual, waits on its Later itself.)"""

    __slots__ = ("actions", "protocol", "remaining")

    def __init__(self, protocol: SpopProtocol, actions: list[Action], remaining: int) -> None:
        self.protocol = protocol
        self.actions = actions
        self.remaining = remaining

    def __call__(self, actions: Actions) -> None:
        if self not in self.protocol._waiting:
            return  # answered already by the sweeper, or the connection is gone
        self.remaining -= 1
        self.actions.extend(actions)
        if not self.remaining:
            self.protocol._done_waiting(self, self.actions)


class WriteQueue:
    """The connections with ACKs to write, written together on the next turn
    of the event loop. Answers that come Later come many at once (a Redis
    batch's callback answers requests of dozens of connections): one loop
    callback writes them all, not one callback per connection. Shared by
    the connections of one server."""

    __slots__ = ("_loop", "_pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[SpopProtocol] = []

    def add(self, protocol: SpopProtocol) -> None:
        if not self._pending:
            self._loop.call_soon(self._write_all)
        self._pending.append(protocol)

    def _write_all(self) -> None:
        pending, self._pending = self._pending, []
        for protocol in pending:
            protocol._flush()


class SpopProtocol(asyncio.Protocol):
    def __init__(
        self,
        agent: Agent,
        settings: ServerConfig,
        log: Any,
        on_close: Callable[[SpopProtocol], None],
        writes: WriteQueue | None = None,
    ) -> None:
        self.agent = agent
        self.settings = settings
        self.conn = AgentConnection(settings.max_frame_size, schemas=agent.schemas)
        self.log = log
        self._on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        # NOTIFYs answered Later, oldest first: the Later of a one-message
        # NOTIFY, or a _Waiting, with its NOTIFY and when it came; and the
        # one timer that answers those past handler_timeout.
        self._waiting: dict[Later | _Waiting, tuple[Notify, float]] = {}
        self._answered = self._done_waiting  # bound once, not per request
        self._value_handlers = agent.value_handlers
        self._max_in_flight = settings.max_in_flight
        self._sweeper: asyncio.TimerHandle | None = None
        self._deadlines: dict[asyncio.Task[None], asyncio.TimerHandle] = {}
        self._expired: set[asyncio.Task[None]] = set()  # cancelled by their deadline
        self._stalled = 0  # _IN_FLIGHT | _WRITE_FULL
        # Frames may be buffered that this turn did not handle; a _resume is queued.
        self._backlog = False
        self._resume_queued = False
        self._reading = True  # what we last asked of the transport
        self._draining = False
        self._hello_timer: asyncio.TimerHandle | None = None
        self._batch: list[bytes] | None = None
        self._loop = asyncio.get_running_loop()
        self._writes = writes if writes is not None else WriteQueue(self._loop)
        self.drained = self._loop.create_future()

    # --- asyncio callbacks ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
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
        self._pump_and_write()

    def _pump_and_write(self) -> None:
        # ACKs answered inline while handling the buffered frames leave in
        # one write (one syscall instead of one per frame); frames are never
        # split.
        if self._batch is None:
            self._batch = []
        try:
            self._pump()
        finally:
            # _pump() may have flushed (a close): read the attribute anew,
            # not as the list set above (compiled, that would be checked).
            batch: list[bytes] | None = getattr(self, "_batch")  # noqa: B009
            if batch:
                self._flush()
            else:  # nothing answered inline (answers come Later)
                self._batch = None

    def pause_writing(self) -> None:
        # The peer sends without reading: what it sends waits in its own
        # socket buffer, not in our memory, until it reads its ACKs.
        self._stall(_WRITE_FULL)

    def resume_writing(self) -> None:
        self._unstall(_WRITE_FULL)

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
        self._waiting.clear()  # their answers will find nothing to fill
        if self._sweeper is not None:
            self._sweeper.cancel()
        if not self.drained.done():
            self.drained.set_result(None)
        self.log.debug("spop_closed", error=str(exc) if exc else None)
        self._on_close(self)

    # --- frames -----------------------------------------------------------

    def _pump(self) -> None:
        """Handle the whole frames buffered, up to this turn's budget, unless
        too much work is in flight or the peer is not reading."""
        conn = self.conn
        budget = MESSAGES_PER_TURN
        notifies = 0
        try:
            while not self._stalled:
                if budget <= 0:
                    # The rest next turn, after every other connection's read;
                    # reading more of this one now would only grow the buffer.
                    if not self._backlog:
                        self._backlog = True
                        self._set_reading()
                    self._queue_resume()
                    return
                try:
                    event = conn.next_event()
                except SpopError as err:
                    self._fail(err)
                    return
                if type(event) is Notify:  # narrows the type: no isinstance() per request
                    notifies += 1
                    budget -= len(event.messages) or 1
                    self._on_notify(event)
                elif event is NEED_DATA:
                    if self._backlog:
                        self._backlog = False
                        self._set_reading()
                    return
                elif type(event) is HaproxyHello:
                    self._on_hello(event)
                elif type(event) is HaproxyDisconnect:
                    self.log.debug("spop_haproxy_disconnect", status=event.status,
                                   error=event.message)
                    self._disconnect(Status.NORMAL, "bye")
                    return
                elif event is CLOSED:
                    self.close()
                    return
        finally:
            # Counted once per read rather than once per frame: the same
            # total by the time anything (a scrape) reads it.
            if notifies:  # metrics.FRAMES.add(notifies, "notify"), inline
                _FRAME_COUNTS[_NOTIFY] = _FRAME_COUNTS.get(_NOTIFY, 0) + notifies

    def _on_hello(self, hello: HaproxyHello) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        self._write(self.conn.send(self.conn.hello_reply()))
        if hello.healthcheck:
            self.close()

    @property
    def in_flight(self) -> int:
        """NOTIFYs received and not answered yet."""
        return len(self.tasks) + len(self._waiting)

    def _on_notify(self, notify: Notify) -> None:
        messages = notify.messages
        if len(messages) == 1:  # HAProxy's usual NOTIFY: one message, no lists to build
            message = messages[0]
            if type(message) is MessageValues:  # _handle(), inline
                try:
                    result = self._value_handlers[message.name](message.values)
                except Exception:
                    self.log.exception("handler_error", message=message.name)
                    result = None
            else:
                result = self._handle(message)
            if result is None or type(result) is tuple or type(result) is list:
                self._send_ack(notify, result or ())
            elif isinstance(result, Later):
                # The Later is the waiting entry: no object of ours per request.
                self._waiting[result] = (notify, self._loop.time())
                self._waited()
                result.owned_by(self._answered)
            else:
                self._run(notify, [], [cast(Awaitable[Actions], result)])
            return
        actions: list[Action] = []
        pending: list[Awaitable[Actions]] = []
        later: list[Later] = []
        for message in messages:
            result = self._handle(message)
            if result is None:
                continue
            if isinstance(result, list | tuple):
                actions.extend(result)
            elif isinstance(result, Later):
                later.append(result)
            else:
                pending.append(cast(Awaitable[Actions], result))
        if pending:
            pending.extend(_awaitable(each) for each in later)  # a mix: rare
            self._run(notify, actions, pending)
        elif later:
            waiting = _Waiting(self, actions, len(later))
            self._waiting[waiting] = (notify, self._loop.time())
            self._waited()
            for each in later:
                each.then(waiting)
        else:
            self._send_ack(notify, actions)

    def _handle(self, message: Message | MessageValues) -> Answer | None:
        """The message's handler's answer; None when there is none to give."""
        try:
            if type(message) is MessageValues:  # its handler declared its arguments
                return self.agent.value_handlers[message.name](message.values)
            assert isinstance(message, Message)
            handler = self.agent.handlers.get(message.name)
            if handler is None:
                self.log.warning("spop_unknown_message", message=message.name)
                return None
            return handler(message)
        except Exception:
            self.log.exception("handler_error", message=message.name)
            return None

    def _run(self, notify: Notify, actions: list[Action],
             pending: list[Awaitable[Actions]]) -> None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._finish(notify, actions, pending))
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        if len(self.tasks) + len(self._waiting) >= self._max_in_flight:
            self._stall(_IN_FLIGHT)
        # One deadline for the whole NOTIFY, as HAProxy's `timeout processing`
        # has: a plain timer that cancels the task costs a fraction of an
        # asyncio.timeout() block per request.
        self._deadlines[task] = loop.call_later(self.settings.handler_timeout,
                                                self._expire, task)

    def _waited(self) -> None:
        """A NOTIFY more waits on a Later."""
        if self._sweeper is None:
            self._sweeper = self._loop.call_at(self._loop.time() + self.settings.handler_timeout,
                                               self._sweep)
        if len(self.tasks) + len(self._waiting) >= self._max_in_flight:
            self._stall(_IN_FLIGHT)

    def _done_waiting(self, waiting: Later | _Waiting, actions: Actions) -> None:
        entry = self._waiting.pop(waiting, None)
        if entry is None:
            return  # answered already by the sweeper, or the connection is gone
        self._send_ack(entry[0], actions)
        if self._stalled or self._draining:
            self._settled()

    def _sweep(self) -> None:
        """Answer the NOTIFYs older than handler_timeout with what they have
        (an empty ACK: HAProxy answers 503), as the deadline of a Task does.
        One timer per connection, not one per request."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        expiry = loop.time() - self.settings.handler_timeout
        for waiting, (notify, started) in list(self._waiting.items()):
            if started > expiry:
                self._sweeper = loop.call_at(started + self.settings.handler_timeout,
                                             self._sweep)
                return
            self.log.error("handler_timeout", stream=notify.stream_id)
            self._done_waiting(waiting, ())

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
        self._settled()

    def _settled(self) -> None:
        """One NOTIFY fewer in flight."""
        if self._stalled & _IN_FLIGHT and self.in_flight < self.settings.max_in_flight:
            self._unstall(_IN_FLIGHT)
        if self._draining and not self.in_flight:
            self._disconnect(Status.NORMAL, "agent shutting down")

    def _send_ack(self, notify: Notify, actions: Actions) -> None:
        try:
            data = self.conn.ack(notify.stream_id, notify.frame_id, actions)
        except (ValueError, TypeError) as err:
            # Our handler's answer cannot be sent; an empty ACK still lets
            # HAProxy decide now (haproxy.cfg fails closed on missing vars).
            self.log.error("handler_bad_reply", error=str(err))
            data = self.conn.ack(notify.stream_id, notify.frame_id)
        batch = self._batch
        if batch is not None:  # _write(), inline: in a read's turn, or a flush is queued
            batch.append(data)
        else:
            self._write(data)

    # --- flow control and shutdown -----------------------------------------

    def _stall(self, reason: int) -> None:
        self._stalled |= reason
        self._set_reading()

    def _unstall(self, reason: int) -> None:
        self._stalled &= ~reason
        if not self._stalled:
            # Frames buffered while stalled come first: reading resumes once
            # _pump has found no whole frame left.
            self._backlog = True
            self._queue_resume()

    def _set_reading(self) -> None:
        # Read only what we will handle this turn: never while frames are
        # left over or stalled, so the receive buffer holds at most one read.
        reading = not self._stalled and not self._backlog
        if reading is self._reading:
            return
        self._reading = reading
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if reading:
            transport.resume_reading()
        else:
            transport.pause_reading()

    def _queue_resume(self) -> None:
        # On the next turn, like another connection's read: the others are
        # served in between (round robin).
        if not self._resume_queued:
            self._resume_queued = True
            self._loop.call_soon(self._resume)

    def _resume(self) -> None:
        self._resume_queued = False
        if self.transport is None or self.transport.is_closing():
            return
        self._pump_and_write()

    def drain(self) -> None:
        """Finish what is in flight, then say goodbye (SIGTERM)."""
        self._draining = True
        if not self.in_flight:
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
            self._writes.add(self)
        self._batch.append(data)

    def _flush(self) -> None:
        batch, self._batch = self._batch, None
        if batch and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(batch))

    def close(self) -> None:
        self._flush()
        if self.transport is None:
            return
        if self._stalled & _WRITE_FULL:
            # Its peer reads nothing: a close would wait for our unsent
            # bytes, and hold the connection (and a drain) open, until it
            # goes away.
            self.transport.abort()
        else:
            self.transport.close()


async def _awaitable(later: Later) -> Actions:
    """A Later as an awaitable, for a NOTIFY that also awaits something."""
    future: asyncio.Future[Actions] = asyncio.get_running_loop().create_future()

    def answer(actions: Actions) -> None:
        if not future.done():  # the NOTIFY's deadline may have cancelled it
            future.set_result(actions)

    later.then(answer)
    return await future
