"""The check-request message as a CheckRequest: the client address as text."""

from ipaddress import IPv4Address, IPv6Address

import pytest

from spoa_agent import request
from spoa_agent.request import ARGS, CheckRequest


def test_addresses_are_their_text_whichever_object_carries_them() -> None:
    # The text is remembered per address object (the codec hands out one per
    # address); a new object of the same or another address gets its own.
    v4, v6 = IPv4Address("192.0.2.10"), IPv6Address("2001:db8::1")
    for ip, text in [(v4, "192.0.2.10"), (v4, "192.0.2.10"), (IPv4Address("192.0.2.10"),
                     "192.0.2.10"), (v6, "2001:db8::1"), (IPv4Address("198.51.100.7"),
                     "198.51.100.7"), (None, "")]:
        assert CheckRequest.from_args({"ip": ip}).ip == text


def test_the_remembered_addresses_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(request, "_MAX_ADDRESSES", 4)
    addresses = [IPv4Address(f"192.0.2.{i}") for i in range(10)]
    for ip in addresses:
        values = [ip if name == "ip" else None for name in ARGS]
        assert CheckRequest.from_values(values).ip == str(ip)
        assert len(request._ADDRESSES) <= 4
