"""Browser sign-in's pure parts (spoa_agent/oidc): the request as HAProxy
sends it, cookies, PKCE, who may enter, the [oidc] settings, and the Lua
that answers and strips cookies (run under plain Lua)."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from spoa_agent.config import ConfigError, parse_config
from spoa_agent.oidc.flow import (
    OidcRequest,
    allowed,
    answer,
    cookie,
    header_safe,
    kept_claims,
)
from spoa_agent.oidc.provider import challenge, derived
from spoa_agent.oidc.sessions import Session, digest
from spoa_agent.oidc.settings import read_secret
from spoa_agent.policy.routes import Route
from spoa_agent.spop import SetVar

LUA_DIR = Path(__file__).resolve().parents[2] / "spoa_agent" / "files" / "lua"


def request(**args: Any) -> OidcRequest:
    values = {"ip": ipaddress.ip_address("192.0.2.1"), "method": "GET",
              "host": "chat.example.com", "authority": "chat.example.com:8443",
              "path": "/", "query": "", "user_agent": "test", "accept": None,
              "fetch_mode": None, "tls": False, "session": None, "plain_session": None,
              "login": None, "plain_login": None, **args}
    return OidcRequest.from_values(list(values.values()))


@pytest.mark.parametrize(("args", "navigation"), [
    ({"fetch_mode": "navigate"}, True),
    ({"fetch_mode": "cors", "accept": "text/html"}, False),
    ({"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}, True),
    ({"accept": "text/html", "method": "POST"}, False),
    ({"accept": "application/json"}, False),
    ({}, False),
])
def test_only_a_browser_navigating_is_sent_to_sign_in(args: dict[str, Any],
                                                      navigation: bool) -> None:
    assert request(**args).navigation is navigation


def test_under_tls_only_the_host_prefixed_cookies_count() -> None:
    both = {"session": "s-host", "plain_session": "s-plain", "login": "l-host",
            "plain_login": "l-plain"}
    secure = request(tls=True, **both)
    assert (secure.session, secure.login, secure.base) == (
        "s-host", "l-host", "https://chat.example.com:8443")
    plain = request(tls=False, **both)
    assert (plain.session, plain.login, plain.base) == (
        "s-plain", "l-plain", "http://chat.example.com:8443")


def test_cookies() -> None:
    assert cookie("spoa_session", "v", True, 60) == (
        "__Host-spoa_session=v; Path=/; Max-Age=60; HttpOnly; SameSite=Lax; Secure")
    assert cookie("spoa_login", "", False, 0) == (
        "spoa_login=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax")


def test_pkce_is_rfc_7636_s256() -> None:
    # BASE64URL-ENCODE(SHA256(ASCII(code_verifier))), no padding (RFC 7636
    # 4.2); the real provider of tests/e2e/test_oidc_browser.py checks it too.
    verifier = "dBjftJeZ4CVP-mJ92K9nkgA42zFGHTU2L2Qkqm5gpXw"
    assert challenge(verifier) == base64.urlsafe_b64encode(
        hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    verifier = derived("browser-secret", "pkce")
    assert 43 <= len(verifier) <= 128 and verifier != derived("browser-secret", "nonce")
    assert verifier != derived("another-browser", "pkce")


def session(groups: tuple[str, ...] = (), email: str = "a@example.com") -> Session:
    return Session(digest("x"), "sub-1", email, groups, "alice", 0.0, 1e12)


def test_who_may_enter() -> None:
    anyone = Route("/", frozenset({"GET"}), prefix=True, oidc=True)
    groups = Route("/", frozenset({"GET"}), prefix=True, oidc=True,
                   allow_groups=frozenset({"ai-users"}))
    emails = Route("/", frozenset({"GET"}), prefix=True, oidc=True,
                   allow_groups=frozenset({"ai-users"}), allow_emails=frozenset({"a@example.com"}))
    assert allowed(anyone, session())
    assert not allowed(groups, session(("staff",)))
    assert allowed(groups, session(("staff", "ai-users")))
    assert allowed(emails, session((), "A@Example.com"))
    assert not allowed(emails, session((), "b@example.com"))


def test_claim_values_may_let_in() -> None:
    route = Route("/", frozenset({"GET"}), prefix=True, oidc=True,
                  allow_groups=frozenset({"ai-users"}),
                  allow_claims=(("department", frozenset({"ml", "research"})),))
    ml = Session(digest("x"), "s", "a@example.com", (), "a", 0.0, 1e12,
                 (("department", ("ml",)),))
    sales = Session(digest("x"), "s", "a@example.com", (), "a", 0.0, 1e12,
                    (("department", ("sales",)),))
    assert allowed(route, ml) and not allowed(route, sales)
    assert Session.from_json(ml.to_json()) == ml


def test_the_claims_a_session_keeps() -> None:
    claims = {"iss": "https://id", "aud": "gw", "nonce": "n", "sub": "s", "email": "e",
              "groups": ["g"], "department": "ml", "roles": ["a", "b"], "admin": True,
              "level": 3, "address": {"country": "FR"}, "mixed": ["a", 1]}
    assert kept_claims(claims, "groups") == (
        ("admin", ("true",)), ("department", ("ml",)), ("level", ("3",)),
        ("roles", ("a", "b")))
    many = {f"c{i:03}": "v" * 500 for i in range(100)}
    kept = kept_claims(many, "groups")
    assert len(kept) == 30 and all(len(v[0]) == 200 for _, v in kept)


def test_identity_text_cannot_split_a_header() -> None:
    assert header_safe("eve\r\nX-Spoa-Email: admin@example.com") == \
        "eveX-Spoa-Email: admin@example.com"
    assert answer(302, location="https://id/", cookies=("a=1", "b=2"))[:2] == [
        SetVar("decision", "oidc"), SetVar("status", 302)]


BASE = '''
[[routes]]
host = "chat.example.com"
prefix = "/"
methods = ["GET"]
auth = "oidc"
allow_groups = ["ai-users"]
'''
OIDC = '''
[oidc]
issuer = "https://id.example.com/realms/home"
client_id = "ai-gateway"
client_secret = "zz-secret-zz"
'''


def load(text: str) -> Any:
    import tomllib
    return parse_config(tomllib.loads(text), "agent.toml")


def test_an_oidc_route_and_its_provider_load() -> None:
    config = load(OIDC + BASE + 'allow_claims = { department = ["ml"], roles = ["a", "b"] }\n')
    route = config.routes[0]
    assert route.oidc and route.allow_groups == {"ai-users"}
    assert route.allow_claims == (("department", frozenset({"ml"})),
                                  ("roles", frozenset({"a", "b"})))
    assert config.oidc.client_id == "ai-gateway" and "zz-secret-zz" not in repr(config.oidc)


@pytest.mark.parametrize(("text", "problem"), [
    (BASE, 'auth = "oidc" but there is no [oidc] table'),
    (BASE.replace('auth = "oidc"', 'auth = "key"'), "allow_groups, allow_emails and"),
    (OIDC + BASE + 'allow_claims = ["ml"]\n', "allow_claims: must be a table"),
    (OIDC + BASE + 'allow_claims = { department = "ml" }\n', "must be a list of strings"),
    (OIDC.replace("https://id.example.com", "http://id.example.com") + BASE, "must use https"),
    (OIDC.replace('client_id = "ai-gateway"', "") + BASE, "oidc.client_id: is required"),
    (OIDC + 'scopes = ["email"]\n' + BASE, 'scopes must include "openid"'),
    (OIDC + 'algorithms = ["HS256"]\n' + BASE, "public-key algorithms"),
    (OIDC + 'idle_lifetime = "8d"\n' + BASE, "idle_lifetime must not exceed"),
    (OIDC + 'client_secret_file = "/nonexistent/secret"\n' + BASE, "cannot read"),
    ("[auth]\nrequired = false\n" + OIDC + BASE, 'must be true with auth = "oidc"'),
])
def test_bad_oidc_settings_are_named(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(text)
    assert problem in "\n".join(err.value.problems)


def test_the_secret_from_the_environment_wins(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    assert read_secret("inline", None, {}) == "inline"
    assert read_secret("inline", str(secret), {}) == "from-file"
    assert read_secret("inline", str(secret),
                       {"SPOA_AGENT_OIDC_CLIENT_SECRET": "from-env"}) == "from-env"


def lua(script: str) -> Any:
    binary = shutil.which("lua5.4") or shutil.which("lua5.3")
    if binary is None:
        pytest.fail("lua5.4 is not installed: run `make deps`")
    prelude = f"package.path = {json.dumps(str(LUA_DIR) + '/?.lua')} .. ';' .. package.path\n" \
        "local M = require('spoa_oidc')\n"
    done = subprocess.run([binary, "-e", prelude + script], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(("header", "kept"), [
    ("theme=dark; spoa_session=abc; lang=en", "theme=dark; lang=en"),
    ("__Host-spoa_session=abc;__Host-spoa_login=x", ""),
    ("spoa_sessionx=1; my_spoa_session=2", "spoa_sessionx=1; my_spoa_session=2"),
    ("a=b", "a=b"),
])
def test_the_lua_keeps_the_gateways_cookies_from_the_upstream(header: str, kept: str) -> None:
    assert lua(f"io.write(M.strip_cookies({json.dumps(header)}))") == kept


def test_the_lua_pages_escape_the_user() -> None:
    page = lua('io.write(M.page("refused", "<script>alert(1)</script>"))')
    assert "&lt;script&gt;" in page and "<script>" not in page
    assert "Sign out" in page
    assert "Signed out" in lua('io.write(M.page("signed_out"))')
