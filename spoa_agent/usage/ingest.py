"""Where HAProxy's Lua sends usage records ([usage] listen, loopback).

The Lua sends `batch N ID` then N record lines, and waits for `ok N`, sent
once the whole batch is in Redis, counted and charged to token budgets:
until then it keeps the batch as it is and sends it again, with the same
ID, on a new connection, and the store counts (and the charger charges)
each batch ID once. So nothing is lost while the agent or Redis is away
(HAProxy holds the records, up to its queue's bound), and nothing is counted
or charged twice. Counting per batch, not per record, is what keeps the
Redis work of a batch of 500 answers to a few commands.
"""

from __future__ import annotations

import asyncio
from typing import Any

from spoa_agent import metrics
from spoa_agent.ratelimit.budget import BudgetCharger
from spoa_agent.usage.record import MAX_LINE, UsageRecord, parse_record
from spoa_agent.usage.settings import UsageSettings
from spoa_agent.usage.store import NAMES, SCRIPT, script_args

MAX_BATCH = 1000  # records: the Lua sends at most 500
MAX_BATCH_ID = 256  # bytes: HAProxy's unique-id of the batch's first request
# Models with a metric series of their own; others are counted as "other".
MAX_MODEL_LABELS = 64


class UsageCounter:
    """Counts batches into Redis and Prometheus, and charges token budgets."""

    def __init__(self, client: Any, settings: UsageSettings, log: Any) -> None:
        self.script = client.register_script(SCRIPT)
        self.budgets = BudgetCharger(client)
        self.settings = settings
        self.log = log
        self.models: set[str] = set()

    async def count(self, records: list[UsageRecord], batch_id: str) -> None:
        fresh = await self.script(keys=[NAMES], args=script_args(
            records, batch_id, self.settings.retention_days))
        if fresh:
            for record in records:
                self._observe(record)
        else:
            metrics.USAGE_DROPPED.add(len(records), "resent")
        # After the counting: a batch that fails here is sent again, counted
        # as seen already, and charged then.
        await self.budgets.charge(records, batch_id)

    def _observe(self, record: UsageRecord) -> None:
        model = record.model
        if model not in self.models:
            if len(self.models) >= MAX_MODEL_LABELS:
                model = "other"
            else:
                self.models.add(model)
        metrics.LLM_REQUESTS.inc(model, record.status_class)
        metrics.LLM_TOKENS.add(record.input, model, "in")
        metrics.LLM_TOKENS.add(record.output, model, "out")
        if self.settings.per_key_metrics:
            metrics.LLM_KEY_TOKENS.add(record.input, record.principal, "in")
            metrics.LLM_KEY_TOKENS.add(record.output, record.principal, "out")


class UsageProtocol(asyncio.Protocol):
    """One connection from HAProxy's Lua sender."""

    def __init__(self, counter: UsageCounter, log: Any) -> None:
        self.counter = counter
        self.log = log
        self.buffer = b""
        self.expected = 0  # lines of the batch being received
        self.batch_id = ""
        self.lines: list[bytes] = []
        self.busy = False  # a batch is being counted: read nothing more
        self.transport: asyncio.Transport | None = None
        self.counting: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > MAX_LINE * (MAX_BATCH + 1):
            self._fail("more than a batch sent without waiting for its answer")
            return
        self._take_lines()

    def _take_lines(self) -> None:
        # Lines are read at an offset and the rest kept once: a batch of 500
        # lines in one read costs one copy of the buffer, not one per line.
        buffer, at = self.buffer, 0
        while not self.busy:
            end = buffer.find(b"\n", at)
            if end < 0:
                break
            line, at = buffer[at:end], end + 1
            if self.expected == 0:
                words = line.split()
                if len(words) != 3 or words[0] != b"batch" or not words[1].isdigit() \
                        or not 0 < int(words[1]) <= MAX_BATCH or len(words[2]) > MAX_BATCH_ID \
                        or not words[2].isascii():
                    self._fail("expected `batch N ID`")
                    return
                self.expected, self.batch_id = int(words[1]), words[2].decode()
                continue
            self.lines.append(line)
            if len(self.lines) == self.expected:
                self.busy = True
                # Held here: the loop keeps only a weak reference to a task.
                self.counting = asyncio.get_running_loop().create_task(self._count())
        self.buffer = buffer[at:]

    async def _count(self) -> None:
        lines, self.lines = self.lines, []
        records = []
        for line in lines:
            record = parse_record(line)
            if record is None:
                metrics.USAGE_DROPPED.inc("malformed")
                self.log.warning("usage_record_malformed", size=len(line))
            else:
                records.append(record)
        try:
            if records:
                await self.counter.count(records, self.batch_id)
        except Exception as err:  # Redis away: the Lua keeps the batch and resends it
            self.log.error("usage_not_counted", records=len(records), error=str(err))
            if self.transport is not None:
                self.transport.write(b"error redis\n")
                self.transport.close()
            return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"ok %d\n" % len(lines))
        self.expected = 0
        self.busy = False
        self._take_lines()

    def _fail(self, why: str) -> None:
        self.log.warning("usage_protocol_error", error=why)
        if self.transport is not None:
            self.transport.write(f"error {why}\n".encode())
            self.transport.close()


async def serve_usage(client: Any, settings: UsageSettings, log: Any,
                      reuse_port: bool) -> asyncio.Server | None:
    """The usage listener, in the agent's loop; None when [usage] listen is off."""
    if settings.listen is None:
        return None
    counter = UsageCounter(client, settings, log)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: UsageProtocol(counter, log), settings.listen.host,
                                      settings.listen.port, reuse_address=True,
                                      reuse_port=reuse_port)
    log.info("usage_listening", listen=str(settings.listen))
    return server
