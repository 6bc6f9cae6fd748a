"""The Authenticator's queue of key checks: fair shares per client address,
the overall bound, and shared checks. Records come from a stub instead of
Redis; argon2id checks are held on an asyncio.Event, so what is pending
when is exact."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from spoa_agent.auth import Argon2Params, Authenticator, AuthFailure, AuthSettings, Principal
from spoa_agent.auth.hashing import SecretHasher, VerifierPool
from spoa_agent.auth.keys import format_key, new_key_id, new_secret
from spoa_agent.store.tokens import KeyLookup, KeyRecord

HASHER = SecretHasher(Argon2Params(time_cost=1, memory_kib=8, parallelism=1))
VALID_ID, VALID_SECRET = new_key_id(), new_secret()
VALID = format_key("spoa", VALID_ID, VALID_SECRET)
RECORD = KeyRecord(VALID_ID, "valid", HASHER.hash(VALID_SECRET))


class Records:
    """KeyLookup's interface, from memory."""

    async def get(self, key_id: str) -> KeyRecord | None:
        return RECORD if key_id == VALID_ID else None

    async def touch(self, key_id: str, now: float) -> None:
        pass


class HeldVerifier(VerifierPool):
    def __init__(self) -> None:
        super().__init__(HASHER, 1)
        self.release = asyncio.Event()
        self.waiting = 0

    async def verify(self, encoded: str, secret: str) -> bool:
        self.waiting += 1
        await self.release.wait()
        return await super().verify(encoded, secret)


class Quiet:
    def __getattr__(self, level: str) -> Any:
        return lambda *args, **kwargs: None


def authenticator(**settings: Any) -> tuple[Authenticator, HeldVerifier]:
    verifier = HeldVerifier()
    return Authenticator(AuthSettings(**settings), cast(KeyLookup, Records()), verifier,
                         Quiet()), verifier


def wrong() -> str:
    """A well-formed key for the valid id with a made-up secret: needs argon2id."""
    return format_key("spoa", VALID_ID, new_secret())


def refused(result: object) -> tuple[int, str, str]:
    assert isinstance(result, AuthFailure), result
    return result.status, result.reason, result.key_id


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_an_address_gets_two_checks_at_once_then_429_at_once() -> None:
    async def scenario() -> None:
        auth, verifier = authenticator(argon2_per_source=2)
        flood = [asyncio.create_task(auth.verify_slow(wrong(), "192.0.2.7")) for _ in range(2)]
        await settle()
        assert verifier.waiting == 2
        # The third from that address is refused without any work ...
        third = wrong()
        assert refused(await auth.verify_slow(third, "192.0.2.7")) == (
            429, "too_many_key_checks", VALID_ID)
        assert verifier.waiting == 2
        # ... while another address is checked as usual.
        valid = asyncio.create_task(auth.verify_slow(VALID, "198.51.100.1"))
        await settle()
        assert verifier.waiting == 3
        verifier.release.set()
        assert isinstance(await valid, Principal)
        assert [refused(f)[1] for f in await asyncio.gather(*flood)] == ["wrong_secret"] * 2
        # Its checks done, the address gets its share back.
        assert refused(await auth.verify_slow(third, "192.0.2.7")) == (
            401, "wrong_secret", VALID_ID)

    asyncio.run(scenario())


def test_requests_for_a_key_being_checked_share_it_and_do_not_count() -> None:
    async def scenario() -> None:
        auth, verifier = authenticator(argon2_per_source=1)
        same = [asyncio.create_task(auth.verify_slow(VALID, "192.0.2.7")) for _ in range(10)]
        await settle()
        assert verifier.waiting == 1
        verifier.release.set()
        assert all(isinstance(r, Principal) for r in await asyncio.gather(*same))

    asyncio.run(scenario())


def test_the_same_key_checked_again_after_forget_everything_takes_no_second_share() -> None:
    # A busy Redis's silent pub/sub makes the agent forget everything a few
    # times a second; requests of one key then start checks of their own.
    # They are one key, not a flood of different ones: none is refused.
    async def scenario() -> None:
        auth, verifier = authenticator(argon2_per_source=1)
        first = asyncio.create_task(auth.verify_slow(VALID, "192.0.2.7"))
        await settle()
        auth.key_changed(None)
        again = [asyncio.create_task(auth.verify_slow(VALID, "192.0.2.7")) for _ in range(3)]
        await settle()
        assert verifier.waiting == 2  # the check begun before could be stale: a new one
        # A different key from that address still waits its turn.
        assert refused(await auth.verify_slow(wrong(), "192.0.2.7"))[1] == "too_many_key_checks"
        verifier.release.set()
        assert all(isinstance(r, Principal) for r in await asyncio.gather(first, *again))
        assert not auth._per_source  # every share given back

    asyncio.run(scenario())


def test_a_cancelled_check_gives_the_share_back() -> None:
    async def scenario() -> None:
        auth, verifier = authenticator(argon2_per_source=1)
        first = asyncio.create_task(auth.verify_slow(wrong(), "192.0.2.7"))
        await settle()
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        verifier.release.set()
        assert await auth.verify_slow(VALID, "192.0.2.7") == auth.quick(VALID)

    asyncio.run(scenario())


def test_without_an_address_only_the_overall_bound_applies() -> None:
    async def scenario() -> None:
        auth, verifier = authenticator(argon2_per_source=1, argon2_workers=1,
                                       argon2_max_pending=2)
        pending = [asyncio.create_task(auth.verify_slow(wrong())) for _ in range(3)]
        await settle()
        assert verifier.waiting == 3
        # The gateway's own limit: 503, not the client's fault.
        overloaded = (503, "auth_overloaded", VALID_ID)
        assert refused(await auth.verify_slow(wrong())) == overloaded
        assert refused(await auth.verify_slow(wrong(), "192.0.2.9")) == overloaded
        verifier.release.set()
        await asyncio.gather(*pending)

    asyncio.run(scenario())
