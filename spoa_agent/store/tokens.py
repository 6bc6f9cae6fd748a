"""API key records in Redis, one hash per key id, and change announcements.

    spoa:key:{<id>}   hash: name, hash (argon2id), scopes, routes, models, rate, tokens,
                      model_tokens (JSON object: model -> budget),
                      created_at, expires_at, revoked_at, prev_hash,
                      prev_hash_until, last_used_at; a device's record
                      has cert_sha256 instead of a secret (auth/devices.py)
    spoa:keys         set of key ids, for listing
    spoa:devices      set of device ids, for listing
    spoa:key-events   pub/sub channel: a key id whenever its record changes

Each change writes only the fields it owns (HSET per field), so the CLI and
several agents working at once never overwrite each other's updates. The
clear secret is never written: only its argon2id hash.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Any, cast

import redis
import redis.asyncio

INDEX = "spoa:keys"
DEVICE_INDEX = "spoa:devices"
CHANNEL = "spoa:key-events"
_LIST_FIELDS = ("scopes", "routes", "models")
_TIME_FIELDS = ("created_at", "expires_at", "revoked_at", "prev_hash_until", "last_used_at")
TOUCH_SCRIPT = resources.files("spoa_agent.store").joinpath("touch.lua").read_text()
ROTATE_SCRIPT = resources.files("spoa_agent.store").joinpath("rotate.lua").read_text()


def record_key(key_id: str) -> str:
    # Hash tag: everything about one key lives in one Redis Cluster slot.
    return f"spoa:key:{{{key_id}}}"


def model_budgets(budgets: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Token budgets per model, in the one order records and plans compare."""
    return tuple(sorted((str(model), str(budget)) for model, budget in budgets.items()))


class UnknownKey(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    name: str
    hash: str
    scopes: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    rate: str | None = None
    tokens: str | None = None  # LLM token budget, e.g. "200k/d"
    model_tokens: tuple[tuple[str, str], ...] = ()  # (model, budget), sorted
    max_in_flight: int | None = None
    created_at: float = field(default_factory=time.time)
    expires_at: float | None = None
    revoked_at: float | None = None
    prev_hash: str | None = None
    prev_hash_until: float | None = None
    last_used_at: float | None = None
    # A device's: the SHA-256 of the certificate HAProxy verified (lower-case hex).
    cert_sha256: str | None = None

    def to_fields(self) -> dict[Any, str]:  # Any: redis-py's mapping key type is a wide union
        out: dict[Any, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "key_id" or value is None or (f.name == "model_tokens" and not value):
                continue
            if f.name == "model_tokens":
                out[f.name] = json.dumps(dict(value))
            else:
                out[f.name] = json.dumps(list(value)) if f.name in _LIST_FIELDS else str(value)
        return out

    @classmethod
    def from_fields(cls, key_id: str, data: Mapping[str, str]) -> KeyRecord | None:
        """None for a missing or half-written record (no name or hash yet)."""
        if "hash" not in data or "name" not in data:
            return None
        kwargs: dict[str, Any] = {"key_id": key_id, "name": data["name"], "hash": data["hash"]}
        for name in _LIST_FIELDS:
            if name in data:
                kwargs[name] = tuple(json.loads(data[name]))
        for name in _TIME_FIELDS:
            if name in data:
                kwargs[name] = float(data[name])
        for name in ("rate", "tokens", "prev_hash", "cert_sha256"):
            if name in data:
                kwargs[name] = data[name]
        if "max_in_flight" in data:
            kwargs["max_in_flight"] = int(data["max_in_flight"])
        if "model_tokens" in data:
            kwargs["model_tokens"] = model_budgets(json.loads(data["model_tokens"]))
        return cls(**kwargs)

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def public(self, now: float) -> dict[str, Any]:
        """What `token show/list` prints: everything but the hashes."""
        return {
            "id": self.key_id, "name": self.name, "status": self.status(now),
            "scopes": list(self.scopes), "routes": list(self.routes), "models": list(self.models),
            "rate": self.rate, "tokens": self.tokens, "model_tokens": dict(self.model_tokens),
            "max_in_flight": self.max_in_flight,
            "created_at": self.created_at, "expires_at": self.expires_at,
            "revoked_at": self.revoked_at, "last_used_at": self.last_used_at,
            "previous_secret_valid_until": self.prev_hash_until,
        }


class TokenStore:
    """Blocking access for the CLI."""

    def __init__(self, client: Any, index: str = INDEX) -> None:
        self.client = client  # redis.Redis or redis.cluster.RedisCluster
        self.index = index  # the set listing them: INDEX, or DEVICE_INDEX for devices

    def create(self, record: KeyRecord) -> bool:
        """Store a new record; False if its id is taken (the caller draws another)."""
        key = record_key(record.key_id)
        if not self.client.hsetnx(key, "hash", record.hash):
            return False
        self.client.hset(key, mapping=record.to_fields())
        self.client.sadd(self.index, record.key_id)
        return True

    def get(self, key_id: str) -> KeyRecord:
        record = KeyRecord.from_fields(key_id, cast(dict[str, str],
                                                    self.client.hgetall(record_key(key_id))))
        if record is None:
            raise UnknownKey(key_id)
        return record

    def list(self) -> list[KeyRecord]:
        ids = sorted(cast(set[str], self.client.smembers(self.index)))
        pipe = self.client.pipeline(transaction=False)
        for key_id in ids:
            pipe.hgetall(record_key(key_id))
        records = (KeyRecord.from_fields(k, d) for k, d in zip(ids, pipe.execute(), strict=True))
        return [r for r in records if r is not None]

    def update(self, key_id: str, changes: Mapping[str, str | None]) -> KeyRecord:
        """Set (or, with None, remove) fields of an existing key, then announce it."""
        self.get(key_id)
        key = record_key(key_id)
        to_set: dict[Any, str] = {
            name: value for name, value in changes.items() if value is not None}
        to_delete = [name for name, value in changes.items() if value is None]
        # Field by field: each write is atomic on its own, and a Cluster needs
        # no transaction for it.
        if to_set:
            self.client.hset(key, mapping=to_set)
        if to_delete:
            self.client.hdel(key, *to_delete)
        self.client.publish(CHANNEL, key_id)
        return self.get(key_id)

    def rotate(self, key_id: str, new_hash: str, grace: float, now: float) -> KeyRecord:
        """New secret, same id; the old one stays valid for `grace` seconds."""
        # A script, not WATCH/MULTI: atomic on a Redis Cluster too.
        swapped = self.client.register_script(ROTATE_SCRIPT)(
            keys=[record_key(key_id)], args=[new_hash, str(now + grace) if grace > 0 else ""])
        if not swapped:
            raise UnknownKey(key_id)
        self.client.publish(CHANNEL, key_id)
        return self.get(key_id)

    def delete(self, key_id: str) -> None:
        self.get(key_id)
        self.client.delete(record_key(key_id))
        self.client.srem(self.index, key_id)
        self.client.publish(CHANNEL, key_id)


class KeyLookup:
    """What the agent needs on the request path: read a record, note its use."""

    def __init__(self, client: Any) -> None:  # redis.asyncio Redis or RedisCluster
        self.client = client
        self._touch = client.register_script(TOUCH_SCRIPT)

    async def get(self, key_id: str) -> KeyRecord | None:
        data = await cast(Awaitable[dict[str, str]], self.client.hgetall(record_key(key_id)))
        return KeyRecord.from_fields(key_id, data)

    async def touch(self, key_id: str, now: float) -> None:
        await self._touch(keys=[record_key(key_id)], args=[str(now)])


# The subscription is PINGed this often; not heard from (a message, a pong)
# for LIVE_FOR it counts as lost. While it is lost, and until Redis confirms a
# new one, on_change(None) is called every HEARTBEAT: announcements may be
# missed, so nothing cached is trusted for more than about LIVE_FOR + HEARTBEAT
# (under the 1 s in which a revocation must reach every agent).
HEARTBEAT = 0.25
LIVE_FOR = 0.6


async def follow_changes(
    client: redis.asyncio.Redis,
    on_change: Callable[[str | None], None],
    log: Any,
    retry_every: float = 0.5,
    retry_at_most: float = 5.0,
    heartbeat: float = HEARTBEAT,
    live_for: float = LIVE_FOR,
    forget_while_deaf: bool = True,
) -> None:
    """Call on_change(key_id) for every announced change, for ever.

    `client` must have no socket timeout: a quiet channel is not an error.

    on_change(None) means "forget everything": called whenever Redis confirms
    a (re)subscription (redis-py may reconnect and resubscribe by itself),
    and every `heartbeat` while the subscription is down or silent, since
    announcements made while we were not listening are lost. While Redis is
    away, retries back off from `retry_every` to `retry_at_most` seconds and
    only the first failure is logged. With `forget_while_deaf` False, only
    a (re)subscription forgets: what was cached stays trusted meanwhile
    (auth.on_redis_error = "open").
    """
    loop = asyncio.get_running_loop()
    heard: list[float | None] = [None]  # last sign of a live subscription; None: none yet
    watchdog = loop.create_task(_forget_while_deaf(on_change, heard, heartbeat, live_for)) \
        if forget_while_deaf else None
    delay = retry_every
    failing = False
    try:
        while True:
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    subscribed = loop.time()
                    while True:
                        await pubsub.ping()
                        until = loop.time() + heartbeat
                        while (left := until - loop.time()) > 0:
                            message = await pubsub.get_message(timeout=left)
                            if message is None:
                                continue
                            kind = message.get("type")
                            if kind == "subscribe":
                                on_change(None)
                                log.info("key_events_subscribed")
                                delay, failing = retry_every, False
                            elif kind == "message":
                                on_change(str(message["data"]))
                            heard[0] = loop.time()
                        last = heard[0]
                        if loop.time() - (subscribed if last is None else last) > live_for:
                            raise redis.ConnectionError(f"Redis silent for over {live_for} s")
            except (redis.RedisError, OSError) as err:
                if not failing:
                    log.warning("key_events_lost", error=str(err))
                failing = True
            heard[0] = None
            if forget_while_deaf:
                on_change(None)
            await asyncio.sleep(delay)
            delay = min(delay * 2, retry_at_most)
    finally:
        if watchdog is not None:
            watchdog.cancel()


async def _forget_while_deaf(on_change: Callable[[str | None], None], heard: list[float | None],
                             heartbeat: float, live_for: float) -> None:
    # Apart from the reading loop, which may sit in a reconnection for longer.
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(heartbeat)
        last = heard[0]
        if last is None or loop.time() - last > live_for:
            on_change(None)
