"""API keys through real agent processes and a real Redis: caching,
revocation across agents, rotation, expiry, floods, concurrency, no clear
secrets in Redis. The peer speaks raw SPOP as HAProxy would."""

from __future__ import annotations

import collections
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from spoa_agent.auth import Argon2Params, SecretHasher
from spoa_agent.auth.keys import format_key, new_key_id, new_secret, parse_key
from spoa_agent.demo.stack import Gateway
from spoa_agent.spop import Ack, SetVar
from spoa_agent.store.redis import sync_client
from spoa_agent.store.tokens import KeyRecord, TokenStore
from tests.conftest import EXAMPLE_CONFIG
from tests.peer import Peer


def create(gw: Gateway, *args: str) -> dict[str, str]:
    result = gw.spoa_agent("token", "create", "--format", "json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def answer(peer: Peer, stream: int, token: str | None) -> dict[str, object]:
    args: dict[str, object] = {"method": "GET", "path": "/api/tags", "ip": None}
    if token is not None:
        args["authorization"] = f"Bearer {token}"
    peer.notify(stream, **args)
    ack = peer.read()
    assert isinstance(ack, Ack)
    return {a.name: a.value for a in ack.actions if isinstance(a, SetVar)}


def test_valid_key_is_allowed_as_its_principal(two_agents: tuple[Gateway, Peer, Peer]) -> None:
    # That the second use is served from the cache, without argon2id, is
    # counted in test_metrics.py.
    gw, a, _ = two_agents
    key = create(gw, "--name", "laptop")
    for stream in (1, 2):
        got = answer(a, stream, key["token"])
        assert (got["decision"], got["principal"], got["principal_id"]) == (
            "allow", "laptop", key["id"])


def test_every_bad_credential_is_refused_with_its_reason(
        two_agents: tuple[Gateway, Peer, Peer]) -> None:
    gw, a, _ = two_agents
    key = create(gw, "--name", "k")
    parsed = parse_key(key["token"], "spoa")
    expired = create(gw, "--name", "short", "--expires", "1s")
    revoked = create(gw, "--name", "gone")
    assert gw.spoa_agent("token", "revoke", revoked["id"]).returncode == 0
    time.sleep(1.2)
    cases = [
        (None, "missing_credential"),
        (format_key("spoa", parsed.key_id, new_secret()), "wrong_secret"),
        (format_key("spoa", "ZZZZZZZZZZZZ", new_secret()), "unknown_key"),
        (key["token"][:-1] + ("0" if key["token"][-1] != "0" else "1"), "bad_checksum"),
        (expired["token"], "expired_key"),
        (revoked["token"], "revoked_key"),
        ("hello", "malformed_credential"),
        ("spoa_" + "x" * 30, "malformed_key"),
        ("spoa_" + "x" * 5000, "oversized_credential"),
        ("spoa_\udce9" + key["token"][6:], "malformed_credential"),  # non-ASCII byte
    ]
    for stream, (token, reason) in enumerate(cases):
        got = answer(a, stream, token)
        assert (got["decision"], got["status"], got["reason"]) == ("deny", 401, reason), reason
    log = gw.processes["agent"].log()
    for token, _ in cases:
        if token:
            assert token not in log  # secrets never reach a log


# The example config trusts a cached key for 60 s: a revocation seen much
# sooner than that can only have come from the agents' key-event channel.
# (How soon, on a quiet machine, is measured by bench, not asserted here.)
PUSHED_WITHIN = 10.0


def test_revocation_is_pushed_to_the_other_agent(
        two_agents: tuple[Gateway, Peer, Peer]) -> None:
    gw, a, b = two_agents
    key = create(gw, "--name", "to-revoke")
    assert answer(a, 1, key["token"])["decision"] == "allow"
    assert answer(b, 1, key["token"])["decision"] == "allow"  # cached in agent B now
    revoke = gw.spoa_agent("token", "revoke", key["id"])
    revoked_at = time.monotonic()
    assert revoke.returncode == 0
    stream = 2
    while (got := answer(b, stream, key["token"]))["decision"] == "allow":
        assert time.monotonic() - revoked_at < PUSHED_WITHIN, "agent B still accepts it"
        stream += 1
        time.sleep(0.01)
    assert got["reason"] == "revoked_key"
    took = time.monotonic() - revoked_at
    print(f"revocation seen by the other agent after at most {took * 1000:.0f} ms")


def test_rotation_keeps_old_secret_for_the_grace_period(
        two_agents: tuple[Gateway, Peer, Peer]) -> None:
    gw, a, _ = two_agents
    key = create(gw, "--name", "rotating")
    assert answer(a, 1, key["token"])["decision"] == "allow"
    result = gw.spoa_agent("token", "rotate", key["id"], "--grace", "2s", "--format", "json")
    new = json.loads(result.stdout)
    assert new["id"] == key["id"]
    time.sleep(0.2)
    assert answer(a, 2, new["token"])["decision"] == "allow"
    assert answer(a, 3, key["token"])["decision"] == "allow"  # within grace
    time.sleep(2.2)
    assert answer(a, 4, key["token"])["reason"] == "expired_key"
    assert answer(a, 5, new["token"])["decision"] == "allow"


def test_flood_of_wrong_secrets_does_not_stall_a_valid_key(
        two_agents: tuple[Gateway, Peer, Peer]) -> None:
    gw, a, b = two_agents
    key = create(gw, "--name", "victim")
    key_id = parse_key(key["token"], "spoa").key_id
    assert answer(b, 1, key["token"])["decision"] == "allow"
    # 300 distinct wrong secrets for a real key id: each needs argon2id.
    for stream in range(100, 400):
        a.notify(stream, method="GET", path="/api/tags",
                 authorization=f"Bearer {format_key('spoa', key_id, new_secret())}")
    started = time.perf_counter()
    assert answer(b, 2, key["token"])["decision"] == "allow"
    on_other_connection = time.perf_counter() - started
    reasons = [a.read() for _ in range(300)]
    flood = time.perf_counter() - started
    # An empty ACK is a check that ran out of handler_timeout on a loaded
    # machine: HAProxy refuses it too (no decision).
    refused = [{x.name: x.value for x in r.actions if isinstance(x, SetVar)}.get("reason", "")
               for r in reasons if isinstance(r, Ack)]
    assert len(refused) == 300
    assert set(refused) <= {"wrong_secret", "auth_overloaded", ""}
    assert "auth_overloaded" in refused  # the queue is bounded, the excess refused at once
    # Not queued behind the flood's argon2id work: answered in a small part of
    # the time the flood takes (a ratio, so that a slow machine slows both).
    assert on_other_connection < flood / 4, (on_other_connection, flood)
    print(f"valid cached key answered in {on_other_connection * 1000:.1f} ms during the flood"
          f" ({flood * 1000:.0f} ms)")


def test_no_secret_in_clear_anywhere_in_redis(two_agents: tuple[Gateway, Peer, Peer]) -> None:
    gw, a, _ = two_agents
    keys = [create(gw, "--name", f"k{i}") for i in range(3)]
    rotated = json.loads(gw.spoa_agent("token", "rotate", keys[0]["id"], "--grace", "1m",
                                       "--format", "json").stdout)
    for stream, key in enumerate([*keys, rotated]):
        assert answer(a, stream, key["token"])["decision"] == "allow"
    secrets = [parse_key(k["token"], "spoa").secret for k in [*keys, rotated]]
    client = sync_client(gw.redis_url)
    dump = []
    for name in client.scan_iter("*"):
        kind = client.type(name)
        value = {"hash": client.hgetall, "set": client.smembers, "string": client.get}[kind](name)
        dump.append(f"{name} {value}")
    text = "\n".join(dump)
    records = [line for line in dump if line.startswith("spoa:key:")]
    assert len(records) == 3  # rotation keeps the id
    assert any(line.startswith("spoa:rl:") for line in dump)  # rate limit state, scanned too
    for secret in secrets:
        assert secret not in text


def test_two_agents_and_the_cli_at_once_lose_no_update(
        two_agents: tuple[Gateway, Peer, Peer], tmp_path: Path) -> None:
    gw, a, b = two_agents
    keys = [create(gw, "--name", f"busy{i}") for i in range(6)]

    def traffic(peer: Peer) -> None:
        for round_ in range(5):
            for i, key in enumerate(keys):
                got = answer(peer, round_ * 100 + i, key["token"])
                assert got["decision"] == "allow", got

    def cli(key: dict[str, str]) -> None:
        # A rate the traffic here never reaches: this is about lost updates.
        for args in (["--scope", "chat"], ["--rate", "500/s"], ["--model", "llama3"]):
            assert gw.spoa_agent("token", "update", key["id"], *args).returncode == 0

    with ThreadPoolExecutor(max_workers=8) as pool:
        jobs = [pool.submit(traffic, a), pool.submit(traffic, b)]
        jobs += [pool.submit(cli, key) for key in keys]
        for job in jobs:
            job.result()
    for key in keys:
        shown = json.loads(gw.spoa_agent("token", "show", key["id"], "--format", "json").stdout)
        assert (shown["scopes"], shown["rate"], shown["models"]) == (["chat"], "500/s",
                                                                      ["llama3"])
        assert shown["name"] == key["name"] and shown["status"] == "active"
        assert shown["last_used_at"] is not None  # the agents' writes landed too
        last = answer(a, 999, key["token"])
        assert last["decision"] == "allow", sorted(last.items())


def test_agent_starts_without_redis_fails_closed_then_recovers(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    try:
        gw.start_agent(EXAMPLE_CONFIG)  # its Redis is not running yet
        peer = Peer(gw.agent_port)
        peer.hello()
        made_up = format_key("spoa", "AAAAAAAAAAAA", new_secret())
        got = answer(peer, 1, made_up)
        assert (got["status"], got["reason"]) == (503, "store_unavailable")
        gw.start_redis()
        key = create(gw, "--name", "late")
        deadline = time.monotonic() + 10
        stream = 2
        while answer(peer, stream, key["token"])["decision"] != "allow":
            assert time.monotonic() < deadline, "agent never recovered after Redis came back"
            stream += 1
            time.sleep(0.2)
        # Once it has subscribed (retries back off to at most 5 s), revocations
        # reach it again.
        deadline = time.monotonic() + 10
        while "key_events_subscribed" not in gw.processes["agent"].log():
            assert time.monotonic() < deadline, "never subscribed to key events"
            time.sleep(0.1)
        assert gw.spoa_agent("token", "revoke", key["id"]).returncode == 0
        deadline = time.monotonic() + PUSHED_WITHIN
        while answer(peer, stream, key["token"])["decision"] == "allow":
            assert time.monotonic() < deadline, "the revocation was not pushed"
            stream += 1
            time.sleep(0.01)
    finally:
        gw.stop()



def _traffic_while_revoking(gw: Gateway, key_id: str, token: str,
                            lead: float) -> tuple[float, list[tuple[float, object]]]:
    """Four connections send requests with `token` from `lead` s after the CLI
    starts revoking it until 2 s after it is done: when it was done, and each
    request's start time and reason ("allowed" when let in)."""
    answers: list[tuple[float, object]] = []
    stop = threading.Event()

    def traffic() -> None:
        peer = Peer(gw.agent_port)
        peer.hello()
        stream = 0
        while not stop.is_set():
            sent = time.monotonic()
            answers.append((sent, answer(peer, stream, token).get("reason")))
            stream += 1
            time.sleep(0.005)

    revoker = threading.Thread(target=gw.spoa_agent, args=("token", "revoke", key_id))
    revoker.start()
    time.sleep(lead)
    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = [pool.submit(traffic) for _ in range(4)]
        revoker.join()
        revoked_at = time.monotonic()
        time.sleep(2.0)
        stop.set()
        for job in jobs:
            job.result()
    return revoked_at, answers


def test_revoked_while_first_checks_run_is_refused_within_a_second(
        redis_gw: Gateway) -> None:
    # Revocation wins every race (issue 12, item 5): requests keep coming
    # while the CLI revokes the key, timed to land while the key's first
    # argon2id check runs (made slow here: time_cost 32, ~0.3 s); every request
    # that starts more than 1 s after the CLI is done must be refused.
    gw = redis_gw
    gw.start_agent(EXAMPLE_CONFIG)
    store = TokenStore(sync_client(gw.redis_url))
    slow = SecretHasher(Argon2Params(time_cost=32))
    started = time.monotonic()
    assert gw.spoa_agent("token", "list").returncode == 0
    cli_takes = time.monotonic() - started  # mostly Python starting up
    for round_ in range(3):
        key_id, secret = new_key_id(), new_secret()
        assert store.create(KeyRecord(key_id, f"race{round_}", slow.hash(secret)))
        revoked_at, answers = _traffic_while_revoking(
            gw, key_id, format_key("spoa", key_id, secret),
            lead=max(0.0, cli_takes - 0.1 * (round_ + 1)))
        late = [reason for sent, reason in answers if sent > revoked_at + 1.0]
        assert late and set(late) == {"revoked_key"}, (round_, collections.Counter(late))
