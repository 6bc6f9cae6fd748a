"""From a credential to a Principal or an AuthFailure.

`quick()` is the hot path and never waits: format and checksum checks, the
cache of verified keys, the cache of recent failures, and JWTs (CPU only).
When it returns None the key must be looked up in Redis and its secret
checked with argon2id: `verify_slow()` does that once per key and cache
lifetime, with concurrent requests for the same key sharing one check.

A device certificate (auth/devices.py) is the same cache and Redis record
without a secret: `device_quick()` and `verify_device()` by the fingerprint
HAProxy verified.

Revocation wins every race: `key_changed()` (the key-event channel) drops a
key's cache entries, and a check that began before the change, or before a
"forget everything", neither caches its answer nor serves requests that
arrive after the change.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from hashlib import blake2b
from typing import Any, Final

import redis

from spoa_agent import metrics
from spoa_agent.auth.devices import device_id
from spoa_agent.auth.hashing import Argon2Params, VerifierPool
from spoa_agent.auth.jwt import IssuerConfig, JwtVerifier
from spoa_agent.auth.keys import KeyFormatError, ParsedKey, looks_like_key, parse_key
from spoa_agent.auth.principal import AuthFailure, Principal
from spoa_agent.cache import TtlLru
from spoa_agent.ratelimit.limits import OnRedisError
from spoa_agent.reasons import Reason
from spoa_agent.store.tokens import KeyLookup, KeyRecord

# A credential longer than this is refused unread (HAProxy sends at most 4097
# bytes of it, see spoe-agent.conf).
MAX_CREDENTIAL: Final = 4096
# last_used_at is written at most this often per key and agent.
TOUCH_EVERY: Final = 60.0


@dataclass(frozen=True, slots=True)
class AuthSettings:
    required: bool = True
    key_prefix: str = "spoa"
    cache_size: int = 10_000
    cache_ttl: float = 60.0
    failure_ttl: float = 10.0
    argon2: Argon2Params = field(default_factory=Argon2Params)
    argon2_workers: int = 2
    # Key checks (Redis lookup + argon2id) in progress past which a new one is
    # refused at once (503): small enough that the queue drains well within
    # handler_timeout, and a flood of made-up keys cannot flood Redis either.
    argon2_max_pending: int = 16
    # Key checks in progress per client address past which a new one from that
    # address is refused at once (429): one address sending made-up keys cannot
    # take the whole queue from everyone else. Requests for a key already being
    # checked join that check and do not count.
    argon2_per_source: int = 2
    # Redis unreachable (no change announcements can arrive): CLOSED trusts
    # no cached key beyond about a second, so a revocation made meanwhile
    # still wins; OPEN keeps cached keys for cache_ttl, for availability.
    on_redis_error: OnRedisError = OnRedisError.CLOSED
    issuers: tuple[IssuerConfig, ...] = ()


def token_digest(token: str) -> bytes:
    # Caches are keyed by a digest, so clear secrets do not sit in memory.
    return blake2b(token.encode(), digest_size=16).digest()


_CACHE_COUNTS: Final = metrics.KEY_CACHE.counts
_HIT: Final = ("hit",)


def device_digest(fingerprint: str) -> bytes:
    # Apart from every token's digest (another personalisation).
    return blake2b(fingerprint.encode(), digest_size=16, person=b"device").digest()


def principal_of(record: KeyRecord) -> Principal:
    return Principal(
        kind="api_key" if record.cert_sha256 is None else "device", id=record.key_id,
        name=record.name, scopes=frozenset(record.scopes),
        routes=frozenset(record.routes), models=frozenset(record.models), rate=record.rate,
        tokens=record.tokens, model_tokens=record.model_tokens,
        max_in_flight=record.max_in_flight, expires_at=record.expires_at,
    )


def _failure_of(record: KeyRecord | None, key_id: str, now: float) -> AuthFailure | None:
    if record is None or record.cert_sha256 is not None:  # no key opens a device's record
        return AuthFailure(Reason.UNKNOWN_KEY, key_id)
    status = record.status(now)
    if status == "revoked":
        return AuthFailure(Reason.REVOKED_KEY, key_id)
    if status == "expired":
        return AuthFailure(Reason.EXPIRED_KEY, key_id)
    return None


@dataclass(slots=True, eq=False)
class _Check:
    """A key check in progress: requests for the same key while it runs share it."""

    key_id: str
    source: str | None
    started: int  # Authenticator._changes when it began, before the Redis read
    future: asyncio.Future[Principal | AuthFailure]


class Authenticator:
    def __init__(
        self,
        settings: AuthSettings,
        lookup: KeyLookup | None,
        verifier: VerifierPool,
        log: Any,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.lookup = lookup
        self.verifier = verifier
        self.jwt = JwtVerifier(settings.issuers, log=log)
        self.log = log
        self.clock = clock
        self.verified: TtlLru[bytes, Principal] = TtlLru(settings.cache_size, settings.cache_ttl)
        self.failures: TtlLru[bytes, AuthFailure] = TtlLru(settings.cache_size,
                                                           settings.failure_ttl)
        # Checks a new request for the same key may join (none begun before a
        # change of that key), and every check still running, for the limits.
        self._checking: dict[bytes, _Check] = {}
        self._running = 0
        # Per client address, the keys (by digest) being checked for it, and
        # how many checks of each: the share counts different keys, so the
        # same key checked again (after "forget everything", which a busy
        # Redis can send a few times a second) takes no second share.
        self._per_source: dict[str, dict[bytes, int]] = {}
        self._check_limit = settings.argon2_workers + settings.argon2_max_pending
        # Change announcements so far; the count at the last "forget
        # everything"; per key id, the count at its last change (kept only
        # while checks run: only they compare against it).
        self._changes = 0
        self._forgot_at = 0
        self._changed_at: dict[str, int] = {}
        self._touched: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()

    def quick(self, token: str) -> Principal | AuthFailure | None:
        if len(token) > MAX_CREDENTIAL or not token.isascii() or not token.isprintable():
            return AuthFailure(Reason.MALFORMED_CREDENTIAL)
        prefix = self.settings.key_prefix
        is_key = looks_like_key(token, prefix)
        if not is_key and not (self.jwt and token.count(".") == 2):
            return AuthFailure(Reason.MALFORMED_CREDENTIAL)
        # The caches first: an entry means this exact string was checked
        # already, so the hot path skips even the checksum or the signature.
        now = self.clock()
        digest = blake2b(token.encode(), digest_size=16).digest()  # token_digest(), inline
        cached = self._cached(digest, now)
        if cached is not None:
            return cached
        metrics.KEY_CACHE.inc("miss")
        if is_key:
            try:
                parse_key(token, prefix)
            except KeyFormatError as err:
                return AuthFailure(err.reason)
            return None
        verified = self.jwt.verify(token)
        if type(verified) is Principal:
            self.verified.put(digest, verified, now)
        return verified  # None: the issuer's keys must be fetched (verify_slow)

    def _cached(self, digest: bytes, now: float) -> Principal | AuthFailure | None:
        """What the caches know of a credential: a key's, a JWT's or a device's."""
        principal = self.verified.get(digest, now)
        if principal is not None:
            _CACHE_COUNTS[_HIT] = _CACHE_COUNTS.get(_HIT, 0) + 1  # KEY_CACHE.inc("hit"), inline
            if principal.expires_at is not None and now >= principal.expires_at:
                reason = Reason.EXPIRED_KEY if principal.kind == "api_key" \
                    else Reason.EXPIRED_TOKEN
                return AuthFailure(reason, principal.id)
            return principal
        failure = self.failures.get(digest, now)
        if failure is not None:
            metrics.KEY_CACHE.inc("hit")
        return failure

    async def verify_slow(self, token: str, source: str | None = None) -> Principal | AuthFailure:
        """Redis lookup and argon2id for a well-formed key quick() had no answer for.

        `source`: the client's address; None for no per-address limit.
        A JWT whose issuer's keys must be fetched first comes here too."""
        if not looks_like_key(token, self.settings.key_prefix):
            verified = await self.jwt.verify_fetching(token)
            if type(verified) is Principal:
                self.verified.put(token_digest(token), verified, self.clock())
            return verified
        digest = token_digest(token)
        running = self._checking.get(digest)
        if running is not None:
            return await asyncio.shield(running.future)
        parsed = parse_key(token, self.settings.key_prefix)
        key_id = parsed.key_id
        checking = self._per_source.get(source) if source is not None else None
        if checking and digest not in checking \
                and len(checking) >= self.settings.argon2_per_source:
            # The client's own doing (429, counted like any failed credential):
            # its earlier checks are still running. Not 401 (the key may be
            # valid) and not 503 (the gateway is not at fault); clients and
            # SDKs retry a 429 after Retry-After.
            return AuthFailure(Reason.TOO_MANY_KEY_CHECKS, key_id)
        if self._running >= self._check_limit:
            return AuthFailure(Reason.AUTH_OVERLOADED, key_id)
        check = _Check(key_id, source, self._changes, asyncio.get_running_loop().create_future())
        return await self._shared(digest, check, self._check(parsed, digest, check))

    def device_quick(self, fingerprint: str) -> Principal | AuthFailure | None:
        """A device by the fingerprint HAProxy verified, from the caches; None: ask Redis."""
        found = self._cached(device_digest(fingerprint), self.clock())
        if found is None:
            metrics.KEY_CACHE.inc("miss")
        return found

    async def verify_device(self, fingerprint: str) -> Principal | AuthFailure:
        """The device's record in Redis, for a fingerprint device_quick() had no answer for.

        No argon2id (HAProxy checked the certificate): not counted against the
        key checks' limits, but joined and raced against revocations as they are."""
        digest = device_digest(fingerprint)
        running = self._checking.get(digest)
        if running is not None:
            return await asyncio.shield(running.future)
        check = _Check(device_id(fingerprint), None, self._changes,
                       asyncio.get_running_loop().create_future())
        return await self._shared(digest, check, self._check_device(fingerprint, digest, check))

    async def _shared(self, digest: bytes, check: _Check,
                      work: Coroutine[Any, Any, Principal | AuthFailure],
                      ) -> Principal | AuthFailure:
        """Run a check that requests for the same credential may join meanwhile."""
        self._checking[digest] = check
        self._running += 1
        if check.source is not None:
            keys = self._per_source.setdefault(check.source, {})
            keys[digest] = keys.get(digest, 0) + 1
        try:
            result = await work
            check.future.set_result(result)
            return result
        except BaseException as err:
            check.future.set_exception(err)
            check.future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            self._finished(digest, check)

    def _finished(self, digest: bytes, check: _Check) -> None:
        if self._checking.get(digest) is check:
            del self._checking[digest]
        self._running -= 1
        if not self._running:
            self._changed_at.clear()
        if check.source is not None:
            keys = self._per_source[check.source]
            left = keys[digest] - 1
            if left:
                keys[digest] = left
            else:
                del keys[digest]
                if not keys:
                    del self._per_source[check.source]

    def _current(self, check: _Check) -> bool:
        """No change of the key, and no "forget everything", since the check began."""
        return (self._forgot_at <= check.started
                and self._changed_at.get(check.key_id, 0) <= check.started)

    async def _read(self, key_id: str) -> KeyRecord | AuthFailure | None:
        if self.lookup is None:
            return AuthFailure(Reason.STORE_UNAVAILABLE, key_id)
        metrics.REDIS_CALLS.labels("keys").inc()
        try:
            return await self.lookup.get(key_id)
        except (redis.RedisError, OSError) as err:
            metrics.REDIS_ERRORS.labels("keys").inc()
            self.log.error("store_error", error=str(err), key_id=key_id)
            return AuthFailure(Reason.STORE_UNAVAILABLE, key_id)

    async def _check_device(self, fingerprint: str, digest: bytes,
                            check: _Check) -> Principal | AuthFailure:
        record = await self._read(check.key_id)
        if type(record) is AuthFailure:
            return record  # not cached: Redis may answer the next one
        result: Principal | AuthFailure
        if type(record) is not KeyRecord or record.cert_sha256 != fingerprint:
            result = AuthFailure(Reason.UNKNOWN_DEVICE, check.key_id)
        elif record.revoked_at is not None:
            result = AuthFailure(Reason.REVOKED_DEVICE, check.key_id)
        else:
            result = principal_of(record)
            self._touch(check.key_id, self.clock())
        if self._current(check):
            if isinstance(result, Principal):
                self.verified.put(digest, result, self.clock())
            else:
                self.failures.put(digest, result, self.clock())
        return result

    async def _check(self, parsed: ParsedKey, digest: bytes,
                     check: _Check) -> Principal | AuthFailure:
        record = await self._read(parsed.key_id)
        if type(record) is AuthFailure:
            return record
        assert type(record) is KeyRecord or record is None
        now = self.clock()
        failure = _failure_of(record, parsed.key_id, now)
        if failure is None:
            assert record is not None
            principal = principal_of(record)
            metrics.ARGON2.inc()
            good = await self.verifier.verify(record.hash, parsed.secret)
            if not good and record.prev_hash and now < (record.prev_hash_until or 0):
                metrics.ARGON2.inc()
                good = await self.verifier.verify(record.prev_hash, parsed.secret)
                # The old secret of a rotated key: cached only until its grace ends.
                until = min(record.prev_hash_until or now, principal.expires_at or math.inf)
                principal = replace(principal, expires_at=until)
            if good:
                # A record read before a revocation announced since then: this
                # answer goes to the requests that came before it, not to the cache.
                if self._current(check):
                    self.verified.put(digest, principal, self.clock())
                self._touch(parsed.key_id, now)
                return principal
            failure = AuthFailure(Reason.WRONG_SECRET, parsed.key_id)
        if self._current(check):
            self.failures.put(digest, failure, self.clock())
        return failure

    def _touch(self, key_id: str, now: float) -> None:
        if now - self._touched.get(key_id, 0.0) < TOUCH_EVERY or self.lookup is None:
            return
        self._touched[key_id] = now
        task = asyncio.get_running_loop().create_task(self._touch_now(key_id, now))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _touch_now(self, key_id: str, now: float) -> None:
        assert self.lookup is not None
        try:
            await self.lookup.touch(key_id, now)
        except (redis.RedisError, OSError) as err:
            self.log.warning("store_error", error=str(err), key_id=key_id)

    def key_changed(self, key_id: str | None) -> None:
        """A key was revoked, rotated or updated (None: maybe any key): forget it.

        Checks already running finish for the requests waiting on them, but
        cache nothing, and later requests start a check of their own."""
        self._changes += 1
        if key_id is None:
            self._forgot_at = self._changes
            self._changed_at.clear()
            self._checking.clear()
            self.verified.clear()
            self.failures.clear()
            return
        if self._running:
            self._changed_at[key_id] = self._changes
            for digest in [d for d, c in self._checking.items() if c.key_id == key_id]:
                del self._checking[digest]
        dropped = self.verified.drop_where(lambda p: p.id == key_id)
        dropped += self.failures.drop_where(lambda f: f.key_id == key_id)
        self.log.debug("key_cache_dropped", key_id=key_id, entries=dropped)
