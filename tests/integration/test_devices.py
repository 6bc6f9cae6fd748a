"""`spoa-agent device ...` against a real Redis, and two real agents reading what
it wrote: a registered device is allowed at once, a revoked one is refused
by every agent, and bad input is one line of error, never a traceback."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from spoa_agent.demo.stack import Gateway
from spoa_agent.spop import Ack, SetVar
from spoa_agent.store.redis import sync_client
from spoa_agent.store.tokens import DEVICE_INDEX, INDEX, KeyRecord, TokenStore
from tests.certs import Ca, Issued
from tests.conftest import EXAMPLE_CONFIG
from tests.peer import Peer

PUSHED_WITHIN = 10.0  # as test_agent_keys: generous on a loaded machine


def device(gw: Gateway, *args: str) -> str:
    result = gw.spoa_agent("device", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def answer(peer: Peer, stream: int, fingerprint: str | None) -> dict[str, object]:
    # HAProxy's hex is upper case: the agent reads either.
    peer.notify(stream, method="GET", path="/api/tags", ip=None,
                device=fingerprint.upper() if fingerprint else None)
    ack = peer.read()
    assert isinstance(ack, Ack)
    return {a.name: a.value for a in ack.actions if isinstance(a, SetVar)}


def until(peer: Peer, fingerprint: str, decision: str, start: int) -> dict[str, object]:
    stream, since = start, time.monotonic()
    while (got := answer(peer, stream, fingerprint))["decision"] != decision:
        assert time.monotonic() - since < PUSHED_WITHIN, got
        stream += 1
        time.sleep(0.01)
    return got


def test_registered_then_revoked_on_every_agent(two_agents: tuple[Gateway, Peer, Peer],
                                               tmp_path: Path) -> None:
    gw, a, b = two_agents
    laptop: Issued = Ca(tmp_path).issue("laptop")
    refused = answer(a, 1, laptop.sha256)  # unknown, and no key: cached as such
    assert (refused["status"], refused["reason"]) == (401, "unknown_device")
    added = json.loads(device(gw, "add", "--cert", str(laptop.cert), "--name", "laptop",
                              "--scope", "models", "--format", "json"))
    # `add` announces the id: the cached "unknown" goes at once.
    got = until(a, laptop.sha256, "allow", 2)
    assert (got["principal"], got["principal_id"]) == ("laptop", added["id"])
    assert until(b, laptop.sha256, "allow", 1)["principal"] == "laptop"
    # Stored beside the keys, listed apart from them, no secret.
    store = TokenStore(sync_client(gw.redis_url), DEVICE_INDEX)
    record = store.get(added["id"])
    assert (record.cert_sha256, record.hash, record.scopes) == (laptop.sha256, "!", ("models",))
    assert [r.key_id for r in store.list()] == [added["id"]]
    assert TokenStore(sync_client(gw.redis_url), INDEX).list() == []
    listed = json.loads(device(gw, "list", "--format", "json"))
    assert [(d["id"], d["status"], d["cert_sha256"]) for d in listed] == [
        (added["id"], "active", laptop.sha256)]

    # Revoked by the whole fingerprint as openssl prints it: every agent refuses it.
    colons = ":".join(laptop.sha256[i:i + 2] for i in range(0, 64, 2)).upper()
    assert "Revoked" in device(gw, "revoke", colons)
    for peer in (a, b):
        got = until(peer, laptop.sha256, "deny", 100)
        assert (got["status"], got["reason"]) == (401, "revoked_device")
    # Registering it again does not bring it back.
    again = gw.spoa_agent("device", "add", "--cert", str(laptop.cert), "--name", "x")
    assert again.returncode == 1 and "registered already" in again.stderr
    assert json.loads(device(gw, "list", "--format", "json"))[0]["status"] == "revoked"
    agent_logs = gw.processes["agent"].log() + gw.processes["agent-b"].log()
    assert laptop.sha256 not in agent_logs.lower()


@pytest.mark.parametrize("case", ["missing", "not-pem", "key-only", "ca", "empty-name"])
def test_bad_input_is_one_clear_line(redis_gw: Gateway, tmp_path: Path, case: str) -> None:
    ca = Ca(tmp_path)
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("hello\n")
    cert, name, says = {
        "missing": (tmp_path / "nope.pem", "laptop", "No such file"),
        "not-pem": (not_pem, "laptop", "no PEM certificate"),
        "key-only": (ca.issue("k").key, "laptop", "no PEM certificate"),
        "ca": (ca.path, "laptop", "CA certificate"),
        "empty-name": (ca.issue("n").cert, " ", "printable name"),
    }[case]
    result = redis_gw.spoa_agent("device", "add", "--cert", str(cert), "--name", name)
    assert result.returncode == 2, result
    assert says in result.stderr and "Traceback" not in result.stderr


def test_unknown_ids_and_api_keys_are_no_devices(redis_gw: Gateway) -> None:
    for arg, code, says in [("0123456789ab", 1, "no device with id"),
                            ("not-an-id", 2, "is not a device id")]:
        result = redis_gw.spoa_agent("device", "revoke", arg)
        assert result.returncode == code and says in result.stderr, result
        assert "Traceback" not in result.stderr
    # An API key whose id happens to read as a device id is no device.
    TokenStore(sync_client(redis_gw.redis_url)).create(KeyRecord("00000000abcd", "k", "h"))
    result = redis_gw.spoa_agent("device", "revoke", "00000000abcd")
    assert result.returncode == 1 and "no device with id" in result.stderr
    assert TokenStore(sync_client(redis_gw.redis_url)).get("00000000abcd").revoked_at is None


def test_redis_unreachable_is_one_line(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)  # nothing listens on its Redis port
    laptop = Ca(tmp_path).issue("laptop")
    result = gw.spoa_agent("device", "add", "--cert", str(laptop.cert), "--name", "laptop")
    assert result.returncode == 1 and "cannot reach Redis" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_as_a_device(redis_gw: Gateway, tmp_path: Path) -> None:
    """`spoa-agent check --device-cert` answers as the agent would for that
    certificate: the device registered for it, or its refusal."""
    laptop = Ca(tmp_path).issue("laptop")
    argv = ("check", "--method", "GET", "--path", "/v1/models", "--device-cert",
            str(laptop.cert), "--format", "json")
    unknown = redis_gw.spoa_agent("--config", str(EXAMPLE_CONFIG), *argv)
    assert unknown.returncode == 1, unknown.stderr
    assert json.loads(unknown.stdout)["reason"] == "unknown_device"
    added = json.loads(device(redis_gw, "add", "--cert", str(laptop.cert), "--name", "laptop",
                              "--format", "json"))
    allowed = redis_gw.spoa_agent("--config", str(EXAMPLE_CONFIG), *argv)
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["principal"] == "laptop"
    device(redis_gw, "revoke", added["id"])
    revoked = redis_gw.spoa_agent("--config", str(EXAMPLE_CONFIG), *argv)
    assert revoked.returncode == 1 and json.loads(revoked.stdout)["reason"] == "revoked_device"
    bad = redis_gw.spoa_agent("check", "--method", "GET", "--path", "/", "--device-cert",
                              str(tmp_path / "missing.pem"))
    assert bad.returncode == 2 and "--device-cert" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_device_gets_a_token_budget_like_a_key(redis_gw: Gateway, tmp_path: Path) -> None:
    tablet = Ca(tmp_path).issue("tablet")
    added = json.loads(device(redis_gw, "add", "--cert", str(tablet.cert), "--name", "tablet",
                              "--tokens", "50k/d", "--tokens", "big-model=5k/d",
                              "--format", "json"))
    shown = json.loads(redis_gw.spoa_agent("token", "show", added["id"], "--format",
                                           "json").stdout)
    assert (shown["tokens"], shown["model_tokens"]) == ("50k/d", {"big-model": "5k/d"})
    assert shown["tokens_left"] == {"*": 50_000, "big-model": 5_000}
