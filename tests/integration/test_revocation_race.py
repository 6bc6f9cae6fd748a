"""Revocation against key checks in flight, and against a lost key-event
subscription: the Authenticator with a real Redis and the real subscription
(follow_changes). The argon2id check is held on an asyncio.Event, so each
interleaving happens exactly, every run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from spoa_agent.auth import Argon2Params, Authenticator, AuthFailure, AuthSettings, Principal
from spoa_agent.auth.hashing import SecretHasher, VerifierPool
from spoa_agent.auth.keys import format_key, new_key_id, new_secret
from spoa_agent.demo.stack import Gateway
from spoa_agent.store.redis import async_client, close, subscriber_client, sync_client
from spoa_agent.store.tokens import KeyLookup, KeyRecord, TokenStore, follow_changes

CHEAP = Argon2Params(time_cost=1, memory_kib=8, parallelism=1)


class HeldVerifier(VerifierPool):
    """Real argon2id, but each check waits for `release` once it has begun
    (the key's record has been read from Redis by then)."""

    def __init__(self) -> None:
        super().__init__(SecretHasher(CHEAP), 1)
        self.began = asyncio.Event()
        self.release = asyncio.Event()

    async def verify(self, encoded: str, secret: str) -> bool:
        self.began.set()
        await self.release.wait()
        return await super().verify(encoded, secret)


@dataclass
class Log:
    events: list[str] = field(default_factory=list)

    def __getattr__(self, level: str) -> Callable[..., None]:
        return lambda event, **_: self.events.append(event)


@dataclass
class Agent:
    auth: Authenticator
    verifier: HeldVerifier
    store: TokenStore
    announced: list[str | None]  # what the subscription delivered, in order
    log: Log

    async def announced_after(self, count: int, what: str | None) -> None:
        """Wait until announcement number `count` or later is `what`."""
        deadline = time.monotonic() + 5
        while what not in self.announced[count:]:
            assert time.monotonic() < deadline, f"{what} never announced"
            await asyncio.sleep(0.005)


@pytest.fixture
def store(redis_gw: Gateway) -> Iterator[TokenStore]:
    yield TokenStore(sync_client(redis_gw.redis_url))


def new_key(store: TokenStore, name: str = "k") -> tuple[str, str]:
    key_id, secret = new_key_id(), new_secret()
    assert store.create(KeyRecord(key_id, name, SecretHasher(CHEAP).hash(secret)))
    return key_id, format_key("spoa", key_id, secret)


@asynccontextmanager
async def running(redis_gw: Gateway, store: TokenStore) -> AsyncIterator[Agent]:
    verifier, log, announced = HeldVerifier(), Log(), []
    auth = Authenticator(AuthSettings(), KeyLookup(async_client(redis_gw.redis_url, 2.0)),
                         verifier, log)

    def on_change(key_id: str | None) -> None:
        announced.append(key_id)
        auth.key_changed(key_id)

    events = subscriber_client(redis_gw.redis_url)
    task = asyncio.get_running_loop().create_task(follow_changes(events, on_change, log))
    agent = Agent(auth, verifier, store, announced, log)
    deadline = time.monotonic() + 5
    while "key_events_subscribed" not in log.events:
        assert time.monotonic() < deadline, "never subscribed"
        await asyncio.sleep(0.01)
    try:
        yield agent
    finally:
        task.cancel()
        # The last_used_at writes still under way, before their client closes.
        await asyncio.gather(task, *auth._background, return_exceptions=True)
        assert auth.lookup is not None
        await close(auth.lookup.client)
        await close(events)
        verifier.close()


def refused(result: object) -> tuple[int, str, str]:
    assert isinstance(result, AuthFailure), result
    return result.status, result.reason, result.key_id


def revoke(store: TokenStore, key_id: str) -> None:
    store.update(key_id, {"revoked_at": str(time.time())})  # writes, then announces


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_key_revoked_while_its_first_check_runs_is_not_cached(
        redis_gw: Gateway, store: TokenStore) -> None:
    key_id, token = new_key(store)

    async def scenario() -> None:
        async with running(redis_gw, store) as agent:
            first = asyncio.create_task(agent.auth.verify_slow(token))
            await agent.verifier.began.wait()  # the record, still valid, has been read
            seen = len(agent.announced)
            revoke(store, key_id)
            await agent.announced_after(seen, key_id)
            # A request that comes after the announcement does not share the
            # check begun before it: it reads the record again.
            later = asyncio.create_task(agent.auth.verify_slow(token))
            await asyncio.sleep(0.05)
            agent.verifier.release.set()
            assert refused(await later) == (401, "revoked_key", key_id)
            # The request that came before the revocation may get in ...
            assert isinstance(await first, Principal)
            # ... but nothing was cached from that stale read.
            assert refused(agent.auth.quick(token)) == (401, "revoked_key", key_id)

    run(scenario())


def test_check_that_began_before_a_forget_everything_is_not_cached(
        redis_gw: Gateway, store: TokenStore) -> None:
    _, token = new_key(store)

    async def scenario() -> None:
        async with running(redis_gw, store) as agent:
            first = asyncio.create_task(agent.auth.verify_slow(token))
            await agent.verifier.began.wait()
            agent.auth.key_changed(None)  # what a resubscription announces
            agent.verifier.release.set()
            assert isinstance(await first, Principal)
            assert agent.auth.quick(token) is None  # not cached: checked again
            assert isinstance(await agent.auth.verify_slow(token), Principal)
            assert isinstance(agent.auth.quick(token), Principal)  # now it is

    run(scenario())


def test_other_keys_checked_meanwhile_are_still_cached(
        redis_gw: Gateway, store: TokenStore) -> None:
    revoked_id, _ = new_key(store, "revoked")
    _, other = new_key(store, "other")

    async def scenario() -> None:
        async with running(redis_gw, store) as agent:
            pending = asyncio.create_task(agent.auth.verify_slow(other))
            await agent.verifier.began.wait()
            seen = len(agent.announced)
            revoke(store, revoked_id)
            await agent.announced_after(seen, revoked_id)
            agent.verifier.release.set()
            assert isinstance(await pending, Principal)
            assert isinstance(agent.auth.quick(other), Principal)

    run(scenario())


def test_cache_is_not_trusted_once_the_subscription_is_lost(
        redis_gw: Gateway, store: TokenStore) -> None:
    _, token = new_key(store)

    async def scenario() -> None:
        async with running(redis_gw, store) as agent:
            agent.verifier.release.set()
            assert isinstance(await agent.auth.verify_slow(token), Principal)
            assert isinstance(agent.auth.quick(token), Principal)
            redis_gw.processes["redis"].stop(sig=9)
            started = time.monotonic()
            while isinstance(agent.auth.quick(token), Principal):
                assert time.monotonic() - started < 1.0, "cache trusted without events"
                await asyncio.sleep(0.01)
            # And nothing is cached again until Redis confirms a subscription.
            await asyncio.sleep(1.0)
            assert agent.auth.quick(token) is None

    run(scenario())


def test_cache_is_not_trusted_while_redis_is_silent(
        redis_gw: Gateway, store: TokenStore) -> None:
    # A connection that stays open but carries nothing (a network partition,
    # a stuck server): announcements may be lost without any error.
    _, token = new_key(store)

    async def scenario() -> None:
        async with running(redis_gw, store) as agent:
            agent.verifier.release.set()
            assert isinstance(await agent.auth.verify_slow(token), Principal)
            store.client.execute_command("CLIENT", "PAUSE", "2500", "ALL")
            started = time.monotonic()
            while isinstance(agent.auth.quick(token), Principal):
                assert time.monotonic() - started < 1.0, "cache trusted without events"
                await asyncio.sleep(0.01)
            # Redis answers again: subscribed anew, caching again.
            deadline = time.monotonic() + 10
            while not isinstance(agent.auth.quick(token), Principal):
                assert time.monotonic() < deadline, "never cached again"
                if agent.log.events.count("key_events_subscribed") > 1:
                    await agent.auth.verify_slow(token)
                await asyncio.sleep(0.05)

    run(scenario())
