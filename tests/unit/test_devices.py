"""Device certificates without HAProxy or Redis: reading a certificate file,
the `device` argument as HAProxy sends it, the Authenticator's device path
(records from a stub) and what the checker makes of a device beside a key."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import cast

import pytest

from spoa_agent.app import RequestChecker
from spoa_agent.auth import Authenticator, AuthFailure, AuthSettings, Principal
from spoa_agent.auth.devices import (
    NO_SECRET,
    CertificateError,
    device_id,
    read_certificate,
)
from spoa_agent.config import load_config
from spoa_agent.install.shipped import EXAMPLE_CONFIG
from spoa_agent.outcome import Outcome
from spoa_agent.request import ARGS, CheckRequest
from spoa_agent.store.tokens import KeyLookup, KeyRecord
from tests.certs import Ca
from tests.unit.test_authenticator import RECORD, VALID, HeldVerifier, Quiet

FP = "ab" * 32
REVOKED_FP = "cd" * 32


class Devices:
    """KeyLookup's interface, from memory: one key, two devices (one revoked);
    `gate` holds reads until set."""

    def __init__(self) -> None:
        self.records = {RECORD.key_id: RECORD}
        for fp, revoked in ((FP, None), (REVOKED_FP, 1.0)):
            self.records[device_id(fp)] = KeyRecord(
                device_id(fp), f"device-{fp[:2]}", NO_SECRET, scopes=("chat",), rate="5/m",
                cert_sha256=fp, revoked_at=revoked)
        self.gate = asyncio.Event()
        self.gate.set()
        self.reads = 0

    async def get(self, key_id: str) -> KeyRecord | None:
        self.reads += 1
        record = self.records.get(key_id)  # as Redis had it when asked
        await self.gate.wait()
        return record

    async def touch(self, key_id: str, now: float) -> None:
        pass


def authenticator() -> tuple[Authenticator, Devices]:
    devices = Devices()
    verifier = HeldVerifier()
    verifier.release.set()
    return Authenticator(AuthSettings(), cast(KeyLookup, devices), verifier, Quiet()), devices


# --- the certificate file ------------------------------------------------------


def test_the_fingerprint_is_the_sha256_of_the_first_certificate(tmp_path: Path) -> None:
    issued = Ca(tmp_path).issue("laptop")
    assert read_certificate(issued.cert) == (issued.sha256, "CN=laptop")
    # HAProxy's layout (certificate then key) and a chain after it: the same one.
    both = tmp_path / "both.pem"
    both.write_bytes(issued.cert.read_bytes() + issued.key.read_bytes()
                     + Ca(tmp_path / "x").path.read_bytes())
    assert read_certificate(both)[0] == issued.sha256


def test_files_that_are_no_device_certificate_are_refused_with_a_reason(
        tmp_path: Path) -> None:
    ca = Ca(tmp_path)
    key_only = ca.issue("k").key
    garbled = tmp_path / "garbled.pem"
    garbled.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                       "-----END CERTIFICATE-----\n")
    for path, says in [(tmp_path / "missing.pem", "No such file"),
                       (tmp_path, "Is a directory"),
                       (key_only, "no PEM certificate"),
                       (garbled, "not a readable PEM certificate"),
                       (ca.path, "CA certificate")]:
        with pytest.raises(CertificateError, match=says):
            read_certificate(path)


# --- the argument ----------------------------------------------------------------


@pytest.mark.parametrize(("sent", "read"), [
    (FP.upper(), FP), (FP, FP), (None, None), ("", None), (FP[:-1], None),
    ("zz" * 32, None), (FP.encode(), None), (FP + "0", None)])
def test_the_device_argument_is_64_hex_digits_or_nothing(sent: object, read: str | None) -> None:
    assert "device" in ARGS
    assert CheckRequest.from_args({"device": sent}).device == read  # type: ignore[dict-item]


# --- the Authenticator -------------------------------------------------------------


def test_a_registered_device_is_a_principal_and_cached() -> None:
    async def scenario() -> None:
        auth, devices = authenticator()
        assert auth.device_quick(FP) is None
        found = await auth.verify_device(FP)
        assert isinstance(found, Principal)
        assert (found.kind, found.id, found.name, found.scopes, found.rate) == (
            "device", FP[:12], "device-ab", frozenset({"chat"}), "5/m")
        assert auth.device_quick(FP) == found and devices.reads == 1

    asyncio.run(scenario())


def test_revoked_unknown_and_mismatched_devices_are_failures_naming_the_id() -> None:
    async def scenario() -> None:
        auth, _ = authenticator()
        # Same id (first 12 digits), another certificate: unknown, not that device.
        impostor = FP[:12] + "0" * 52
        for fp, reason in [(REVOKED_FP, "revoked_device"), ("ef" * 32, "unknown_device"),
                           (impostor, "unknown_device")]:
            found = await auth.verify_device(fp)
            assert isinstance(found, AuthFailure)
            assert (found.status, found.reason, found.key_id) == (401, reason, fp[:12])
            assert auth.device_quick(fp) == found  # cached for failure_ttl

    asyncio.run(scenario())


def test_no_api_key_opens_a_devices_record() -> None:
    from spoa_agent.auth.keys import format_key, new_secret

    async def scenario() -> None:
        auth, _ = authenticator()
        found = await auth.verify_slow(format_key("spoa", FP[:12], new_secret()))
        assert isinstance(found, AuthFailure) and found.reason == "unknown_key"

    asyncio.run(scenario())


def test_a_revocation_during_the_lookup_is_not_cached() -> None:
    async def scenario() -> None:
        auth, devices = authenticator()
        devices.gate.clear()
        first = asyncio.create_task(auth.verify_device(FP))
        await asyncio.sleep(0)
        joined = asyncio.create_task(auth.verify_device(FP))  # shares the lookup
        await asyncio.sleep(0)
        devices.records[FP[:12]] = replace(devices.records[FP[:12]], revoked_at=2.0)
        auth.key_changed(FP[:12])  # the announcement came before the answer
        devices.gate.set()
        assert isinstance(await first, Principal) and isinstance(await joined, Principal)
        assert devices.reads == 1
        assert auth.device_quick(FP) is None  # so the next request reads it again
        again = await auth.verify_device(FP)
        assert isinstance(again, AuthFailure) and again.reason == "revoked_device"

    asyncio.run(scenario())


def test_a_revocation_drops_the_cached_device() -> None:
    async def scenario() -> None:
        auth, _ = authenticator()
        assert isinstance(await auth.verify_device(FP), Principal)
        auth.key_changed(FP[:12])
        assert auth.device_quick(FP) is None

    asyncio.run(scenario())


# --- the checker: a device beside a key -----------------------------------------


def outcome(token: str | None, device: str | None, auth: Authenticator) -> Outcome:
    checker = RequestChecker(load_config(EXAMPLE_CONFIG, env={}), auth, Quiet())
    args: dict[str, object] = {"method": "POST", "path": "/v1/chat/completions",
                               "ip": IPv4Address("192.0.2.1"), "device": device}
    if token is not None:
        args["authorization"] = f"Bearer {token}"
    return asyncio.run(checker.evaluate(CheckRequest.from_args(args)))  # type: ignore[arg-type]


def test_the_device_is_the_caller_whatever_key_is_sent() -> None:
    auth, _ = authenticator()
    for token in (None, "not-a-key", VALID):
        got = outcome(token, FP, auth)
        assert got.decision.allowed and got.principal is not None
        assert got.principal.name == "device-ab", token


def test_an_unknown_or_revoked_device_falls_back_to_the_key() -> None:
    auth, _ = authenticator()
    for fp, reason in ((REVOKED_FP, "revoked_device"), ("ef" * 32, "unknown_device")):
        alone = outcome(None, fp, auth)
        assert (alone.stage, alone.decision.reason, alone.key_id) == ("auth", reason, fp[:12])
        with_key = outcome(VALID, fp, auth)
        assert with_key.decision.allowed and with_key.principal is not None
        assert with_key.principal.name == "valid"
        # A bad key beside it is refused for what is wrong with the key.
        bad = outcome("not-a-key", fp, auth)
        assert bad.decision.reason == "malformed_credential"


def test_redis_down_is_the_gateways_fault_not_a_fallback() -> None:
    auth, _ = authenticator()
    auth.lookup = None  # as before Redis is connected
    got = outcome(VALID, FP, auth)
    assert (got.decision.status, got.decision.reason) == (503, "store_unavailable")
