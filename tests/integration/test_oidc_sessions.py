"""Browser sessions in a real Redis: what Redis holds, idle and absolute
lifetimes, one-time sign-in states, and `spoa-agent session list|revoke`."""

from __future__ import annotations

import asyncio
import json
import time

from spoa_agent.demo.stack import Gateway
from spoa_agent.oidc.sessions import INDEX, SessionStore, digest, session_key
from spoa_agent.store.redis import async_client, close, sync_client


def test_sessions_in_redis_and_the_cli(redis_gw: Gateway) -> None:
    async def run() -> tuple[str, str, str]:
        client = async_client(redis_gw.redis_url)
        store = SessionStore(client, idle=3600, absolute=3600)
        short = SessionStore(client, idle=2, absolute=3600)
        try:
            alice, made = await store.create("sub-a", "alice@example.com", ("ai-users",),
                                             "alice")
            bob, _ = await store.create("sub-b", "bob@example.com", (), "bob")
            carol, _ = await short.create("sub-c", "carol@example.com", (), "carol")
            assert (await store.get(alice)) == made
            assert await store.get(alice + "x") is None and await store.get("") is None
            # The cookie's secret is nowhere in Redis: only its digest names the key.
            dump = json.dumps([str(await client.get(session_key(made.id)))])
            assert alice not in dump and digest(alice) == made.id
            # One-time states.
            await store.save_state("st", {"binding": "h", "return_to": "/x"})
            assert await store.take_state("st") == {"binding": "h", "return_to": "/x"}
            assert await store.take_state("st") is None
            # Each use extends the idle lifetime (2 s): alive 2.4 s after sign-in...
            for _ in range(2):
                await asyncio.sleep(1.2)
                assert await short.get(carol) is not None
            await asyncio.sleep(2.3)  # ...and ended after 2 s unused.
            assert await short.get(carol) is None
            return alice, bob, made.id
        finally:
            await close(client)

    alice, bob, alice_id = asyncio.run(run())
    listed = redis_gw.spoa_agent("session", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    sessions = json.loads(listed.stdout)
    assert {s["email"] for s in sessions} == {"alice@example.com", "bob@example.com"}
    table = redis_gw.spoa_agent("session", "list", "--user", "bob@example.com")
    assert "bob@example.com" in table.stdout and "alice" not in table.stdout

    assert redis_gw.spoa_agent("session", "revoke", alice_id).returncode == 0
    missing = redis_gw.spoa_agent("session", "revoke", alice_id)
    assert missing.returncode == 1 and "no session" in missing.stderr
    by_user = redis_gw.spoa_agent("session", "revoke", "--user", "bob@example.com")
    assert by_user.returncode == 0 and "revoked 1 session" in by_user.stdout
    usage = redis_gw.spoa_agent("session", "revoke")
    assert usage.returncode == 2

    async def after() -> None:
        client = async_client(redis_gw.redis_url)
        store = SessionStore(client, idle=2, absolute=3600)
        try:
            assert await store.get(alice) is None and await store.get(bob) is None
            assert await store.count() == 0
        finally:
            await close(client)
    asyncio.run(after())
    assert sync_client(redis_gw.redis_url).zcard(INDEX) == 0


def test_absolute_lifetime_ends_a_used_session(redis_gw: Gateway) -> None:
    async def run() -> None:
        client = async_client(redis_gw.redis_url)
        store = SessionStore(client, idle=1, absolute=1)
        try:
            secret, _ = await store.create("s", "e@example.com", (), "e")
            deadline = time.time() + 1.5
            while time.time() < deadline:
                await asyncio.sleep(0.3)
                await store.get(secret)
            assert await store.get(secret) is None
        finally:
            await close(client)
    asyncio.run(run())
