"""Which header the token comes from, and why there is none."""

import pytest

from spoa_agent.app import credential
from spoa_agent.auth import AuthFailure


@pytest.mark.parametrize(("args", "expected"), [
    ({}, AuthFailure(401, "missing_credential")),
    ({"authorization": None, "api_key": None}, AuthFailure(401, "missing_credential")),
    ({"authorization": "Bearer abc"}, "abc"),
    ({"authorization": "bearer   abc  "}, "abc"),
    ({"authorization": b"Bearer abc"}, "abc"),  # BINARY after HAProxy's bytes() cut
    ({"api_key": "abc"}, "abc"),
    ({"authorization": "Bearer abc", "api_key": "other"}, "abc"),
    ({"authorization": "Basic dXNlcjpwYXNz"}, AuthFailure(401, "malformed_credential")),
    ({"authorization": "Bearer "}, AuthFailure(401, "malformed_credential")),
    ({"api_key": ""}, AuthFailure(401, "malformed_credential")),
    ({"authorization": "Bearer " + "a" * 4090}, AuthFailure(401, "oversized_credential")),
])
def test_credential(args: dict[str, object], expected: object) -> None:
    assert credential(args) == expected  # type: ignore[arg-type]
