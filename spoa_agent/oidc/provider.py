"""The OpenID provider as the gateway's client sees it: discovery, the
authorization URL (code flow with PKCE S256), the code exchange and the ID
token's checks (signature from the provider's JWKS, iss, aud, exp, nonce).

Network calls block (urllib) and run in a thread; the provider's keys are a
RemoteKeys (auth/jwks.py): fetched on need, kept when the provider is down.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import jwt

from spoa_agent.auth.jwks import MAX_DOCUMENT, KeyFetchError, RemoteKeys, check_url, discover
from spoa_agent.oidc.settings import OidcSettings


class LoginError(Exception):
    """The sign-in cannot finish; the message is for the log, never the client."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def derived(binding: str, purpose: str) -> str:
    """The PKCE verifier or the nonce of a sign-in, derived from the secret in
    the browser's login cookie: Redis never holds them, and only the browser
    that started the sign-in can finish it."""
    return _b64(hashlib.sha256(f"{purpose}:{binding}".encode()).digest())


def challenge(verifier: str) -> str:
    return _b64(hashlib.sha256(verifier.encode()).digest())


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Provider:
    def __init__(self, settings: OidcSettings, log: Any) -> None:
        self.settings, self.log = settings, log
        self.metadata: dict[str, Any] | None = None
        self.keys = RemoteKeys(settings.issuer, None, max_age=600, min_refresh=10,
                               timeout=settings.timeout, log=log)
        self._lock = asyncio.Lock()

    async def config(self) -> dict[str, Any]:
        """The discovery document, fetched once (then kept)."""
        if self.metadata is None:
            async with self._lock:
                if self.metadata is None:
                    try:
                        document = await asyncio.to_thread(discover, self.settings.issuer,
                                                           self.settings.timeout)
                        for name in ("authorization_endpoint", "token_endpoint"):
                            check_url(document.get(name), name)
                    except (KeyFetchError, ValueError) as err:
                        raise LoginError(f"discovery: {err}") from None
                    self.metadata = document
        return self.metadata

    async def authorization_url(self, redirect_uri: str, state: str, binding: str) -> str:
        endpoint = str((await self.config())["authorization_endpoint"])
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": self.settings.client_id,
            "redirect_uri": redirect_uri, "scope": " ".join(self.settings.scopes),
            "state": state, "nonce": derived(binding, "nonce"),
            "code_challenge": challenge(derived(binding, "pkce")),
            "code_challenge_method": "S256",
        })
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    async def end_session_url(self, post_logout: str) -> str | None:
        try:
            endpoint = (await self.config()).get("end_session_endpoint")
        except LoginError:
            return None
        if not isinstance(endpoint, str):
            return None
        query = urllib.parse.urlencode({"client_id": self.settings.client_id,
                                        "post_logout_redirect_uri": post_logout})
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    async def sign_in(self, code: str, redirect_uri: str, binding: str) -> dict[str, Any]:
        """The ID token's claims, once the code is exchanged and the token checked."""
        endpoint = str((await self.config())["token_endpoint"])
        answer = await asyncio.to_thread(self._exchange, endpoint, code, redirect_uri,
                                         derived(binding, "pkce"))
        id_token = answer.get("id_token")
        if not isinstance(id_token, str):
            raise LoginError("the token endpoint gave no id_token")
        return await self._check(id_token, derived(binding, "nonce"))

    def _exchange(self, endpoint: str, code: str, redirect_uri: str,
                  verifier: str) -> dict[str, Any]:
        s = self.settings
        basic = base64.b64encode(
            f"{urllib.parse.quote(s.client_id, safe='')}:"
            f"{urllib.parse.quote(s.client_secret, safe='')}".encode()).decode()
        request = urllib.request.Request(
            endpoint, method="POST",
            data=urllib.parse.urlencode({"grant_type": "authorization_code", "code": code,
                                         "redirect_uri": redirect_uri,
                                         "code_verifier": verifier}).encode(),
            headers={"Authorization": f"Basic {basic}", "Accept": "application/json",
                     "Content-Type": "application/x-www-form-urlencoded"})
        opener = urllib.request.build_opener(_NoRedirect())
        try:
            with opener.open(request, timeout=s.timeout) as response:
                body = response.read(MAX_DOCUMENT)
        except urllib.error.HTTPError as err:
            detail = err.read(2000).decode("utf-8", "replace")
            err.close()
            raise LoginError(f"token endpoint: HTTP {err.code}: {_error_of(detail)}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise LoginError(f"token endpoint: {getattr(err, 'reason', err)}") from None
        try:
            data = json.loads(body)
        except ValueError:
            raise LoginError("token endpoint: the answer is not JSON") from None
        if not isinstance(data, dict):
            raise LoginError("token endpoint: the answer is not a JSON object")
        return data

    async def _check(self, id_token: str, nonce: str) -> dict[str, Any]:
        s = self.settings
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError:
            raise LoginError("id_token: malformed") from None
        if header.get("alg") not in s.algorithms:
            raise LoginError(f"id_token: algorithm {header.get('alg')!r} not allowed")
        key = self.keys.get(header.get("kid"))
        if key is None:
            await self.keys.refresh_if_allowed()
            key = self.keys.get(header.get("kid"))
        if key is None:
            raise LoginError("id_token: no key for its kid at the provider")
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token, key, algorithms=list(s.algorithms), audience=s.client_id,
                issuer=s.issuer, leeway=s.leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        except jwt.PyJWTError as err:
            raise LoginError(f"id_token: {err}") from None
        if not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise LoginError("id_token: wrong nonce")
        return claims


def _error_of(detail: str) -> str:
    """The provider's OAuth error code, not its whole answer (no secrets in logs)."""
    try:
        data = json.loads(detail)
    except ValueError:
        return "not JSON"
    return str(data.get("error", "?")) if isinstance(data, dict) else "?"
