"""The oidc-request message through real agent processes: a session created
in Redis is honoured by two agents, and refused by both within a second of
`spoa-agent session revoke`; a browser without one is sent to the real
provider; a script gets 401."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from pathlib import Path

from spoa_agent.demo.stack import Gateway, free_port
from spoa_agent.oidc.sessions import SessionStore
from spoa_agent.spop import Ack, Message, Notify, SetVar
from spoa_agent.store.redis import async_client, close
from tests.conftest import EXAMPLE_CONFIG
from tests.oidc import Provider, signing_key
from tests.peer import Peer

HOST = "chat.example.com"


def oidc_request(peer: Peer, stream: int, **extra: object) -> dict[str, object]:
    args: dict[str, object] = {
        "ip": ipaddress.ip_address("192.0.2.7"), "method": "GET", "host": HOST,
        "authority": f"{HOST}:8080", "path": "/c/1", "query": "a=b", "user_agent": "test",
        "accept": "application/json", "fetch_mode": None, "tls": False, "session": None,
        "plain_session": None, "login": None, "plain_login": None, **extra}
    peer.send(Notify(stream, 1, (Message("oidc-request", args),)))  # type: ignore[arg-type]
    ack = peer.read()
    assert isinstance(ack, Ack)
    return {a.name: a.value for a in ack.actions if isinstance(a, SetVar)}


def test_two_agents_honour_a_session_and_its_revocation(redis_gw: Gateway,
                                                         tmp_path: Path) -> None:
    idp = Provider(keys=[signing_key("k1")], clients=[{
        "client_id": "ai-gateway", "client_secret": "x" * 32,
        "redirect_uris": [f"http://{HOST}:8080/.spoa-agent/oidc/callback"],
        "grant_types": ["authorization_code"], "response_types": ["code"]}]).start()
    try:
        config = tmp_path / "agent.toml"
        config.write_text(EXAMPLE_CONFIG.read_text() + f'''
[oidc]
issuer = "{idp.issuer}"
client_id = "ai-gateway"
client_secret = "{"x" * 32}"

[[routes]]
host = "{HOST}"
prefix = "/"
methods = ["GET"]
auth = "oidc"
allow_groups = ["ai-users"]
''')
        redis_gw.start_agent(config)
        second = free_port()
        redis_gw.start_agent(config, port=second, name="agent2")
        peers = [Peer(redis_gw.agent_port), Peer(second)]
        for peer in peers:
            peer.hello()

        async def sign_in() -> tuple[str, str]:
            client = async_client(redis_gw.redis_url)
            try:
                store = SessionStore(client, 3600, 3600)
                secret, session = await store.create("sub-a", "alice@example.com",
                                                     ("ai-users",), "alice")
                return secret, session.id
            finally:
                await close(client)
        secret, session_id = asyncio.run(sign_in())

        for stream, peer in enumerate(peers):
            got = oidc_request(peer, stream * 2 + 1, plain_session=secret)
            assert (got["decision"], got["email"], got["groups"]) == (
                "allow", "alice@example.com", "ai-users")
            assert got["principal"] == "alice@example.com"
        # Under TLS only the __Host- cookie counts: the plain one is ignored.
        assert oidc_request(peers[0], 9, plain_session=secret, tls=True)["status"] == 401

        revoked = redis_gw.spoa_agent("session", "revoke", session_id)
        assert revoked.returncode == 0, revoked.stderr
        deadline = time.monotonic() + 1.0
        for stream, peer in enumerate(peers):
            got = oidc_request(peer, stream * 2 + 11, plain_session=secret)
            assert (got["decision"], got["status"], got["reason"]) == (
                "deny", 401, "missing_credential")
        assert time.monotonic() < deadline

        # A browser without a session: to the provider, with a login cookie.
        got = oidc_request(peers[1], 21, fetch_mode="navigate")
        assert (got["decision"], got["status"]) == ("oidc", 302)
        location = str(got["oidc_location"])
        assert location.startswith(f"{idp.issuer}/auth?")
        assert "code_challenge_method=S256" in location and "a%3Db" not in location
        assert str(got["oidc_cookie1"]).startswith("spoa_login=")
        assert "HttpOnly; SameSite=Lax" in str(got["oidc_cookie1"])
        # A callback with a made-up state: the failure page, never a session.
        got = oidc_request(peers[0], 23, path="/.spoa-agent/oidc/callback",
                           query="code=abc&state=forged", fetch_mode="navigate")
        assert (got["decision"], got["status"], got["oidc_page"]) == ("oidc", 400, "failed")
        assert "login_failed" in redis_gw.processes["agent"].log()
        # A state that is real, but a response from another issuer (RFC 9207):
        # refused, and the state used up.
        start = oidc_request(peers[0], 25, fetch_mode="navigate")
        state = str(start["oidc_location"]).split("state=")[1].split("&")[0]
        login = str(start["oidc_cookie1"]).split(";")[0].split("=", 1)[1]
        got = oidc_request(peers[0], 27, path="/.spoa-agent/oidc/callback",
                           query=f"code=abc&state={state}&iss=https%3A%2F%2Fevil.example",
                           fetch_mode="navigate", plain_login=login)
        assert (got["status"], got["oidc_page"]) == (400, "failed")
        assert "another issuer" in redis_gw.processes["agent"].log()
    finally:
        idp.stop()
