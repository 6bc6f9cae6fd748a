"""API keys through real HAProxy: a created key gets in, every bad credential
gets 401 with RFC 6750's challenge, and the agent records why."""

from __future__ import annotations

import json
import time

from spoa_agent.auth.keys import format_key, new_secret, parse_key
from spoa_agent.demo.stack import Gateway
from tests.e2e.client import bearer, error_message, request
from tests.e2e.conftest import create_key


def test_created_key_works_as_bearer_and_x_api_key(gw: Gateway, key: str) -> None:
    assert request(gw, "GET", "/api/tags", bearer(key))[0] == 200
    assert request(gw, "POST", "/api/chat", {"x-api-key": key}, b"{}")[0] == 200


def test_bad_credentials_get_401_with_the_reason_recorded(gw: Gateway, key: str) -> None:
    key_id = parse_key(key, "spoa").key_id
    expired = str(create_key(gw, "--name", "short", "--expires", "1s")["token"])
    revoked = create_key(gw, "--name", "gone")
    assert gw.spoa_agent("token", "revoke", str(revoked["id"])).returncode == 0
    time.sleep(1.2)
    # What the client reads for each: it says what to do, not which check failed.
    told = {"missing": "no API key was sent", "expired": "expired", "revoked": "revoked",
            "bad-checksum": "copied whole", "garbage": "copied whole",
            "basic-auth": "copied whole", "non-ascii": "copied whole", "oversized": "too long"}
    cases = [
        ("missing", {}, "missing_credential"),
        ("wrong-secret", bearer(format_key("spoa", key_id, new_secret())), "wrong_secret"),
        ("unknown-id", bearer(format_key("spoa", "ZZZZZZZZZZZZ", new_secret())), "unknown_key"),
        ("bad-checksum", bearer(key[:-1] + ("0" if key[-1] != "0" else "1")), "bad_checksum"),
        ("expired", bearer(expired), "expired_key"),
        ("revoked", bearer(str(revoked["token"])), "revoked_key"),
        ("garbage", bearer("hello world"), "malformed_credential"),
        ("basic-auth", {"Authorization": "Basic dXNlcjpwYXNz"}, "malformed_credential"),
        ("oversized", bearer("spoa_" + "a" * 9000), "oversized_credential"),
        ("non-ascii", bearer("spoa_\xe9" + key[6:]), "malformed_credential"),
    ]
    for name, headers, _ in cases:
        status, answer, body = request(gw, "GET", "/api/tags",
                                       {**headers, "User-Agent": f"case-{name}"})
        assert status == 401, name
        challenge = answer["www-authenticate"]
        assert challenge.startswith('Bearer realm="spoa-agent"'), name
        assert ('error="invalid_token"' in challenge) == (name != "missing"), name
        assert told.get(name, "not valid") in error_message(body), name
    recorded = {}
    for line in gw.processes["agent"].log().splitlines():
        entry = json.loads(line)
        if entry.get("event.action") == "auth_failed":
            recorded[entry["user_agent.original"]] = entry["event.reason"]
    for name, _, reason in cases:
        assert recorded.get(f"case-{name}") == reason, name
    assert key not in gw.processes["agent"].log()
