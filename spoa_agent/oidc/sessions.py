"""Browser sessions in Redis, named by the cookie only the browser holds.

The cookie's value is a 256-bit random secret; Redis holds its SHA-256 (the
session id operators see), so neither Redis nor `session list` can hand a
session to anyone. Each use reads the record (no cache in the agent), so a
revocation is refused by every agent at the next request. The record
expires after the idle lifetime without use (each use extends it; past
the absolute lifetime it is refused). Commands touch one key each: fine on a
Redis Cluster.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

INDEX = "spoa:sessions"  # sorted set: session id -> absolute expiry
STATE_TTL = 600  # seconds a sign-in may take at the provider


def session_key(session_id: str) -> str:
    return f"spoa:session:{session_id}"


def state_key(state: str) -> str:
    return f"spoa:oidc-state:{state}"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:32]


def new_secret() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    sub: str
    email: str
    groups: tuple[str, ...]
    name: str
    created: float
    expires: float  # absolute: the idle lifetime runs out earlier unless used
    # The ID token's other claims with text values, for routes' allow_claims.
    claims: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def to_json(self) -> str:
        data = asdict(self)
        data["claims"] = {name: list(values) for name, values in self.claims}
        return json.dumps(data)

    def claim(self, name: str) -> tuple[str, ...]:
        for claim, values in self.claims:
            if claim == name:
                return values
        return ()

    @classmethod
    def from_json(cls, raw: str | bytes) -> Session | None:
        try:
            data = json.loads(raw)
            return cls(id=str(data["id"]), sub=str(data["sub"]), email=str(data["email"]),
                       groups=tuple(str(g) for g in data["groups"]), name=str(data["name"]),
                       created=float(data["created"]), expires=float(data["expires"]),
                       claims=tuple((str(k), tuple(str(v) for v in vs))
                                    for k, vs in dict(data.get("claims", {})).items()))
        except (ValueError, KeyError, TypeError):
            return None


class SessionStore:
    """The agent's side (redis.asyncio)."""

    def __init__(self, client: Any, idle: float, absolute: float) -> None:
        self.client, self.idle, self.absolute = client, idle, absolute

    async def create(self, sub: str, email: str, groups: tuple[str, ...], name: str,
                     claims: tuple[tuple[str, tuple[str, ...]], ...] = ()
                     ) -> tuple[str, Session]:
        """A new session: the cookie's secret (for the browser only) and the record."""
        secret = new_secret()
        now = time.time()
        session = Session(digest(secret), sub, email, groups, name, now, now + self.absolute,
                          claims)
        ttl = max(1, round(min(self.idle, self.absolute)))
        await self.client.set(session_key(session.id), session.to_json(), ex=ttl)
        await self.client.zadd(INDEX, {session.id: session.expires})
        return secret, session

    async def get(self, secret: str) -> Session | None:
        """The live session this cookie names, its idle lifetime extended."""
        if not secret or len(secret) > 100:
            return None
        session_id = digest(secret)
        # One round trip: read and extend the idle lifetime together (a
        # revoked, deleted record stays deleted). Past its absolute lifetime
        # the record may linger up to `idle`, refused by the check below.
        raw = await self.client.getex(session_key(session_id), ex=max(1, round(self.idle)))
        if raw is None:
            return None
        session = Session.from_json(raw)
        if session is None or session.id != session_id or time.time() >= session.expires:
            return None
        return session

    async def end(self, secret: str) -> None:
        session_id = digest(secret)
        await self.client.delete(session_key(session_id))
        await self.client.zrem(INDEX, session_id)

    async def count(self) -> int:
        await self.client.zremrangebyscore(INDEX, "-inf", time.time())
        return int(await self.client.zcard(INDEX))

    async def save_state(self, state: str, record: dict[str, str]) -> None:
        await self.client.set(state_key(state), json.dumps(record), ex=STATE_TTL)

    async def take_state(self, state: str) -> dict[str, str] | None:
        """The sign-in's record, once: a second callback with it finds nothing."""
        if not state or len(state) > 100:
            return None
        raw = await self.client.getdel(state_key(state))
        if raw is None:
            return None
        data = json.loads(raw)
        return data if isinstance(data, dict) else None


class SessionAdmin:
    """The operator's side (`spoa-agent session`, a synchronous client)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def find(self, user: str | None = None) -> list[Session]:
        self.client.zremrangebyscore(INDEX, "-inf", time.time())
        found = []
        for raw_id in self.client.zrange(INDEX, 0, -1):
            session_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            raw = self.client.get(session_key(session_id))
            session = Session.from_json(raw) if raw is not None else None
            if session is None:  # ended by its idle lifetime
                self.client.zrem(INDEX, session_id)
                continue
            if user is None or user in (session.sub, session.email, session.name):
                found.append(session)
        return sorted(found, key=lambda s: s.created)

    def revoke(self, session_id: str) -> bool:
        removed = int(self.client.delete(session_key(session_id)))
        self.client.zrem(INDEX, session_id)
        return removed > 0

    def revoke_user(self, user: str) -> list[str]:
        ended = [s.id for s in self.find(user)]
        for session_id in ended:
            self.revoke(session_id)
        return ended
