"""An issuer's signing keys fetched from its JWKS URL (pyjwt's PyJWKClient),
or found through OpenID discovery, and kept in memory.

The set is fetched on first need, again in the background once older than
`max_age`, and at once when a token names a `kid` the set lacks (the
provider rotated its keys), but never more often than every `min_refresh`
seconds, so a flood of tokens with made-up kids cannot make the agent flood
the provider. A failed fetch keeps the last good set: tokens signed with
known keys keep working while the provider is down.

State lives on the event loop; fetches run in a thread (urllib blocks) and
concurrent needs share one fetch.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import jwt

# The provider's answer is read up to this size: a JWKS or a discovery
# document is a few kilobytes.
MAX_DOCUMENT = 1 << 20
DISCOVERY_PATH = "/.well-known/openid-configuration"


class KeyFetchError(Exception):
    """The keys could not be fetched or read (the message names the URL)."""


def check_url(url: object, what: str) -> str:
    """An https URL, or http to a loopback address (a provider on the same host)."""
    if not isinstance(url, str):
        raise ValueError(f"{what} must be a URL string")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{what} must be an http(s) URL, not {url!r}")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise ValueError(f"{what} must use https (http only to a loopback address): {url}")
    return url


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A key URL that redirects elsewhere is a configuration to fix, not a
    # place to follow.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def get_json(url: str, timeout: float) -> dict[str, Any]:
    """A JSON object from this URL (discovery documents; blocking)."""
    opener = urllib.request.build_opener(_NoRedirect())
    try:
        with opener.open(urllib.request.Request(url, headers={"Accept": "application/json"}),
                         timeout=timeout) as response:
            body = response.read(MAX_DOCUMENT + 1)
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise KeyFetchError(f"{url}: {getattr(err, 'reason', err)}") from None
    if len(body) > MAX_DOCUMENT:
        raise KeyFetchError(f"{url}: the answer is over {MAX_DOCUMENT} bytes")
    try:
        data = json.loads(body)
    except ValueError:
        raise KeyFetchError(f"{url}: the answer is not JSON") from None
    if not isinstance(data, dict):
        raise KeyFetchError(f"{url}: the answer is not a JSON object")
    return data


def discover(issuer: str, timeout: float) -> dict[str, Any]:
    """The issuer's OpenID configuration; its `issuer` must be this one exactly."""
    url = issuer.rstrip("/") + DISCOVERY_PATH
    document = get_json(url, timeout)
    if document.get("issuer") != issuer:
        raise KeyFetchError(f"{url}: names issuer {document.get('issuer')!r}, not {issuer!r}")
    return document


def fetch_keys(url: str | None, issuer: str, timeout: float) -> dict[str, jwt.PyJWK]:
    """The signing keys with a kid, from `url` or (None) from discovery (blocking)."""
    if url is None:
        jwks_uri = discover(issuer, timeout).get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise KeyFetchError(f"{issuer}: the discovery document has no jwks_uri")
        try:
            url = check_url(jwks_uri, "jwks_uri")
        except ValueError as err:
            raise KeyFetchError(str(err)) from None
    client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=timeout)
    try:
        keyset = client.get_jwk_set()
    except jwt.PyJWKClientError as err:
        raise KeyFetchError(f"{url}: {err}") from None
    except (jwt.PyJWTError, ValueError) as err:
        raise KeyFetchError(f"{url}: not a usable JWKS: {err}") from None
    keys = {key.key_id: key for key in keyset.keys
            if key.key_id and getattr(key, "public_key_use", None) in (None, "sig")}
    if not keys:
        raise KeyFetchError(f"{url}: no signing key with a kid")
    return keys


class RemoteKeys:
    """One issuer's last good key set, and when to fetch it again."""

    def __init__(self, issuer: str, url: str | None, *, max_age: float, min_refresh: float,
                 timeout: float, log: Any = None,
                 clock: Callable[[], float] = time.monotonic,
                 fetch: Callable[[str | None, str, float], dict[str, Any]] = fetch_keys) -> None:
        self.issuer, self.url = issuer, url
        self.max_age, self.min_refresh, self.timeout = max_age, min_refresh, timeout
        self.log, self.clock, self._fetch = log, clock, fetch
        self.keys: dict[str, Any] = {}
        self.fetched_at: float | None = None  # the last good fetch
        self.tried_at: float | None = None    # the last attempt, good or not
        self.failed = False                    # the last attempt failed
        self._running: asyncio.Future[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    def get(self, kid: str | None) -> Any:
        """The key for this kid from the set in memory (None: not there);
        starts a background refresh when the set is older than max_age."""
        now = self.clock()
        if self.fetched_at is not None and now - self.fetched_at >= self.max_age \
                and self._may_try(now) and self._running is None:
            self._refresh_in_background()
        return self.keys.get(kid or "")

    def may_refresh(self) -> bool:
        """A fetch for an unknown kid is allowed now (the bound on how often),
        or one is running that the request may wait for."""
        return self._running is not None or self._may_try(self.clock())

    async def refresh_if_allowed(self) -> None:
        """Join the fetch running, or start one if the bound allows."""
        if self._running is not None or self._may_try(self.clock()):
            await self.refresh()

    def _may_try(self, now: float) -> bool:
        return self.tried_at is None or now - self.tried_at >= self.min_refresh

    async def refresh(self) -> None:
        """Fetch the set now (concurrent callers share one fetch); a failure
        is logged and keeps the last good set."""
        if self._running is not None:
            await asyncio.shield(self._running)
            return
        loop = asyncio.get_running_loop()
        self._running = running = loop.create_future()
        self.tried_at = self.clock()
        try:
            keys = await asyncio.to_thread(self._fetch, self.url, self.issuer, self.timeout)
        except KeyFetchError as err:
            self.failed = True
            if self.log is not None:
                self.log.error("jwks_fetch_failed", issuer=self.issuer, error=str(err),
                               keys=len(self.keys),
                               reason="kept the last good keys" if self.keys else "no keys yet")
        else:
            changed = set(keys) != set(self.keys)
            self.keys, self.fetched_at, self.failed = keys, self.clock(), False
            if changed and self.log is not None:
                self.log.info("jwks_fetched", issuer=self.issuer, keys=len(keys))
        finally:
            self._running = None
            running.set_result(None)

    def _refresh_in_background(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): the next need fetches
            return
        task = loop.create_task(self.refresh())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
