"""Which header the token comes from, and why there is none."""

import pytest

from spoa_agent.reasons import Reason
from spoa_agent.request import CheckRequest


@pytest.mark.parametrize(("args", "expected"), [
    ({}, Reason.MISSING_CREDENTIAL),
    ({"authorization": None, "api_key": None}, Reason.MISSING_CREDENTIAL),
    ({"authorization": "Bearer abc"}, "abc"),
    ({"authorization": "bearer   abc  "}, "abc"),
    ({"authorization": b"Bearer abc"}, "abc"),  # BINARY after HAProxy's bytes() cut
    ({"api_key": "abc"}, "abc"),
    ({"authorization": "Bearer abc", "api_key": "other"}, "abc"),
    ({"authorization": "Basic dXNlcjpwYXNz"}, Reason.MALFORMED_CREDENTIAL),
    ({"authorization": "Bearer "}, Reason.MALFORMED_CREDENTIAL),
    ({"api_key": ""}, Reason.MALFORMED_CREDENTIAL),
    ({"authorization": "Bearer " + "a" * 4090}, Reason.OVERSIZED_CREDENTIAL),
])
def test_credential(args: dict[str, object], expected: object) -> None:
    got = CheckRequest.from_args(args).credential  # type: ignore[arg-type]
    assert got == expected and isinstance(got, Reason) is isinstance(expected, Reason)
