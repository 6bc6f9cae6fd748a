"""The API key format: what is accepted, what is refused before any I/O."""

import pytest

from spoa_agent.auth.keys import (
    KeyFormatError,
    format_key,
    key_length,
    new_key_id,
    new_secret,
    parse_key,
    validate_prefix,
)


def test_round_trip() -> None:
    key_id, secret = new_key_id(), new_secret()
    token = format_key("spoa", key_id, secret)
    assert token.startswith(f"spoa_{key_id}_")
    assert len(token) == key_length("spoa")
    parsed = parse_key(token, "spoa")
    assert (parsed.key_id, parsed.secret) == (key_id, secret)


def test_secrets_are_random_and_long_enough() -> None:
    secrets = {new_secret() for _ in range(1000)}
    assert len(secrets) == 1000
    assert all(len(s) == 22 for s in secrets)  # 62**22 > 2**130


GOOD = format_key("spoa", "AAAAAAAAAAAA", "B" * 22)


@pytest.mark.parametrize(("token", "reason"), [
    ("", "malformed_key"),
    ("spoa_", "malformed_key"),
    (GOOD[:-1], "malformed_key"),
    (GOOD + "x", "malformed_key"),
    (GOOD.replace("spoa_", "sk_x_", 1), "malformed_key"),
    (GOOD[:17] + "-" + GOOD[18:], "malformed_key"),
    (GOOD[:20] + "!" + GOOD[21:], "malformed_key"),
    (GOOD[:-1] + ("a" if GOOD[-1] != "a" else "b"), "bad_checksum"),
    (GOOD[:10] + ("C" if GOOD[10] != "C" else "D") + GOOD[11:], "bad_checksum"),
])
def test_bad_keys_are_refused_with_reason(token: str, reason: str) -> None:
    with pytest.raises(KeyFormatError) as err:
        parse_key(token, "spoa")
    assert err.value.reason == reason


def test_every_single_character_typo_is_caught() -> None:
    for position in range(5, len(GOOD)):
        for replacement in "0aZ":
            if GOOD[position] == replacement or GOOD[position] == "_":
                continue
            typo = GOOD[:position] + replacement + GOOD[position + 1 :]
            with pytest.raises(KeyFormatError):
                parse_key(typo, "spoa")


def test_other_prefix() -> None:
    token = format_key("acme", new_key_id(), new_secret())
    assert parse_key(token, "acme")
    with pytest.raises(KeyFormatError):
        parse_key(token, "spoa")


@pytest.mark.parametrize("prefix", ["", "Spoa", "1abc", "a_b", "x" * 17])
def test_bad_prefixes(prefix: str) -> None:
    with pytest.raises(ValueError):
        validate_prefix(prefix)
