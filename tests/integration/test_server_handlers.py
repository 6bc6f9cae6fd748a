"""The server with handlers of our own, in one event loop with a raw peer:
pipelining out of order, a raising handler answered at once, bounded work."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog
from structlog.testing import capture_logs

from spoa_agent.config import Listen, ServerConfig
from spoa_agent.demo.stack import free_port
from spoa_agent.server import Actions, Agent, Later, serve
from spoa_agent.spop import Ack, Message, Notify, SetVar, decode_frame, encode_frame
from tests.peer import HELLO


async def read_frame(reader: asyncio.StreamReader) -> object:
    size = int.from_bytes(await reader.readexactly(4), "big")
    return decode_frame(await reader.readexactly(size))


def run_with_agent(agent: Agent, body: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                               Awaitable[None]], **settings: object) -> None:
    port = free_port()
    config = ServerConfig(listen=Listen("127.0.0.1", port), **settings)  # type: ignore[arg-type]

    async def main() -> None:
        ready = asyncio.Event()
        server = asyncio.create_task(serve(agent, config, structlog.get_logger(),
                                           on_ready=ready.set))
        await ready.wait()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(encode_frame(HELLO))
        await read_frame(reader)
        try:
            await body(reader, writer)
        finally:
            writer.close()
            await writer.wait_closed()
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server

    asyncio.run(main())


def notify(stream: int, name: str = "m", **args: object) -> bytes:
    return encode_frame(Notify(stream, 1, (Message(name, args),)))  # type: ignore[arg-type]


def test_acks_come_back_in_the_order_handlers_finish() -> None:
    agent = Agent()

    async def slow(delay: float) -> Actions:
        await asyncio.sleep(delay)
        return [SetVar("delay", str(delay))]

    agent.register("m", lambda message: slow(float(str(message.args["delay"]))))

    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(notify(1, delay="0.3") + notify(2, delay="0.1") + notify(3, delay="0.2"))
        order = [(await read_frame(reader)).stream_id for _ in range(3)]  # type: ignore[attr-defined]
        assert order == [2, 3, 1]

    run_with_agent(agent, body)


def test_raising_handler_is_answered_at_once_and_logged() -> None:
    agent = Agent()

    def broken(message: Message) -> Actions:
        raise RuntimeError("bug in handler")

    agent.register("m", broken)

    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with capture_logs() as logs:
            started = time.monotonic()
            writer.write(notify(7))
            assert await read_frame(reader) == Ack(7, 1, ())
            # Not after the handler timeout: the error is the answer.
            assert time.monotonic() - started < 5.0
        assert [log["event"] for log in logs] == ["handler_error"]

    run_with_agent(agent, body, handler_timeout=30.0)


def test_failing_async_handler_and_timeout_are_answered() -> None:
    agent = Agent()

    async def fails() -> Actions:
        raise ValueError("redis said no")

    async def hangs() -> Actions:
        await asyncio.sleep(60)
        return []

    agent.register("fails", lambda message: fails())
    agent.register("hangs", lambda message: hangs())

    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with capture_logs() as logs:
            writer.write(notify(1, "fails") + notify(2, "hangs"))
            first, second = await read_frame(reader), await read_frame(reader)
        assert (first, second) == (Ack(1, 1, ()), Ack(2, 1, ()))
        assert {log["event"] for log in logs} == {"handler_error", "handler_timeout"}

    run_with_agent(agent, body, handler_timeout=0.2)


def test_unknown_message_gets_an_empty_ack() -> None:
    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(notify(4, "nobody-handles-this"))
        assert await read_frame(reader) == Ack(4, 1, ())

    run_with_agent(Agent(), body)


def test_in_flight_work_is_bounded_per_connection() -> None:
    agent = Agent()
    running = 0
    peak = 0

    async def work() -> Actions:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return [SetVar("ok", True)]

    agent.register("m", lambda message: work())

    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"".join(notify(i) for i in range(200)))
        acks = [await read_frame(reader) for _ in range(200)]
        assert sorted(a.stream_id for a in acks) == list(range(200))  # type: ignore[attr-defined]

    run_with_agent(agent, body, max_in_flight=8)
    assert peak == 8


def test_reply_too_big_for_the_frame_becomes_an_empty_ack() -> None:
    agent = Agent()
    agent.register("m", lambda message: [SetVar("big", "x" * 20000)])

    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(notify(3))
        assert await read_frame(reader) == Ack(3, 1, ())

    run_with_agent(agent, body)


def test_later_answers_many_notifies_from_one_callback_with_no_task_each() -> None:
    agent = Agent()
    queued: list[tuple[Later, str]] = []

    def batched(message: Message) -> Later:
        # As the limiter does: queue, and answer the whole turn from one callback.
        later = Later()
        if not queued:
            asyncio.get_running_loop().call_soon(answer_all)
        queued.append((later, str(message.args["n"])))
        return later

    def answer_all() -> None:
        batch = queued[:]
        queued.clear()
        for later, n in batch:
            later.answer([SetVar("n", n), SetVar("batch", len(batch))])

    agent.register("m", batched)

    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks_before = len(asyncio.all_tasks())
        writer.write(b"".join(notify(i, n=str(i)) for i in range(1, 41)))
        acks = [await read_frame(reader) for _ in range(40)]
        assert sorted(ack.stream_id for ack in acks) == list(range(1, 41))  # type: ignore[attr-defined]
        for ack in acks:
            got = {action.name: action.value for action in ack.actions}  # type: ignore[attr-defined]
            assert got["n"] == str(ack.stream_id)  # type: ignore[attr-defined]
        # Handled in one read, answered in one batch: one callback, no Task each.
        assert {a.actions[1].value for a in acks} == {40}  # type: ignore[attr-defined]
        assert len(asyncio.all_tasks()) <= tasks_before

    run_with_agent(agent, body)


def test_a_later_never_answered_gets_an_empty_ack_at_the_deadline() -> None:
    agent = Agent()
    forgotten: list[Later] = []

    def never(message: Message) -> Later:
        forgotten.append(Later())
        return forgotten[-1]

    agent.register("m", never)
    agent.register("sync", lambda message: [SetVar("ok", True)])

    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with capture_logs() as logs:
            started = time.monotonic()
            writer.write(notify(1) + notify(2, "sync"))
            first = await read_frame(reader)
            assert first.stream_id == 2  # type: ignore[attr-defined]
            late = await read_frame(reader)
            assert late.stream_id == 1 and late.actions == ()  # type: ignore[attr-defined]
            assert time.monotonic() - started >= 0.3
        assert any(entry["event"] == "handler_timeout" for entry in logs)
        forgotten[0].answer([SetVar("too", "late")])  # nothing left to answer: ignored
        writer.write(notify(3, "sync"))
        assert (await read_frame(reader)).stream_id == 3  # type: ignore[attr-defined]

    run_with_agent(agent, body, handler_timeout=0.3)
