"""The body reader: one reading every downstream reader shares, or a refusal."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoa_agent.policy.body import BodyFacts, model_of
from spoa_agent.reasons import Reason

AMBIGUOUS_BODY, MODEL_MISSING = Reason.AMBIGUOUS_BODY, Reason.MODEL_MISSING
LENGTH_REQUIRED, ENCODED_BODY = Reason.LENGTH_REQUIRED, Reason.ENCODED_BODY
TOO_LARGE_TO_READ = Reason.BODY_TOO_LARGE_FOR_MODEL_CHECK


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"model":"a"}', "a"),
    (b'{"messages":[{"model":"nested is not the model"}],"model":"a"}', "a"),
    (b'{"model":"a","model":"b"}', AMBIGUOUS_BODY),
    (b'{"model":"a","Model":"b"}', AMBIGUOUS_BODY),
    (b'{"model":"a","mod\\u0065l":"b"}', AMBIGUOUS_BODY),
    (b'{"model":"a","MODE\\u212a":"b"}', "a"),  # Kelvin sign: "modek" is not "model"
    (b'{"model":"a","\\u006dode\\u004c":"b"}', AMBIGUOUS_BODY),
    (b'{"MODEL":"a"}', AMBIGUOUS_BODY),  # Go reads it as model, pydantic does not
    (b'{"messages":[]}', MODEL_MISSING),
    (b'{"model":""}', MODEL_MISSING),
    (b'{"model":null}', MODEL_MISSING),
    (b'{"model":["a"]}', AMBIGUOUS_BODY),
    (b'["model","a"]', AMBIGUOUS_BODY),
    (b"not json", AMBIGUOUS_BODY),
    (b'{"model":"a"} {"model":"b"}', AMBIGUOUS_BODY),
    (b'\xef\xbb\xbf{"model":"a"}', AMBIGUOUS_BODY),  # a BOM: Go refuses it
    ('{"model":"a"}'.encode("utf-16"), AMBIGUOUS_BODY),  # not UTF-8
    (b'{"model":"\xff"}', AMBIGUOUS_BODY),
    (b"[" * 100_000 + b"]" * 100_000, AMBIGUOUS_BODY),  # deeper than Python recurses
])
def test_model_of(body: bytes, expected: object) -> None:
    assert model_of(body) == expected


@pytest.mark.parametrize(("facts", "length"), [
    (BodyFacts("POST", "3", None, None, b"abc"), 3),
    (BodyFacts("GET", None, None, None, b""), 0),
    (BodyFacts("POST", None, None, None, b""), LENGTH_REQUIRED),  # HTTP/2 without the header
    (BodyFacts("GET", None, "chunked", None, b"abc"), LENGTH_REQUIRED),
    (BodyFacts("GET", None, None, None, b"abc"), LENGTH_REQUIRED),
    (BodyFacts("POST", "3", None, "gzip", b"abc"), ENCODED_BODY),
    (BodyFacts("POST", "3", None, "identity", b"abc"), 3),
    (BodyFacts("POST", "+3", None, None, b"abc"), LENGTH_REQUIRED),
    (BodyFacts("POST", "٣", None, None, b"abc"), LENGTH_REQUIRED),  # a digit, not ASCII
])
def test_length(facts: BodyFacts, length: object) -> None:
    assert facts.length() == length


def test_whole_needs_every_byte() -> None:
    assert BodyFacts("POST", "3", None, None, b"abc").whole() == b"abc"
    assert BodyFacts("POST", "40000", None, None, b"a" * 16000).whole() == TOO_LARGE_TO_READ


# --- Differential: whenever model_of answers a model, every reader agrees ---

def _first_wins(body: bytes) -> object:
    # HAProxy's json_query('$.model'): the first key spelled exactly "model".
    for key, value in json.loads(body, object_pairs_hook=list):
        if key == "model":
            return value
    return None


def _last_wins(body: bytes) -> object:
    # Python's json (FastAPI, vLLM, LiteLLM): the last duplicate.
    parsed = json.loads(body)
    return parsed.get("model") if isinstance(parsed, dict) else None


def _go_reads(body: bytes) -> object:
    # Go's encoding/json (Ollama): the last key that folds to "model".
    found = None
    for key, value in json.loads(body, object_pairs_hook=list):
        if key.casefold() == "model":
            found = value
    return found


KEY_SPELLINGS = st.sampled_from(["model", "Model", "MODEL", "mod\\u0065l", "models", "mode",
                                 "\\u006dodel", "name", "messages", "mode\\u017f"])
VALUES = st.sampled_from(['"a"', '"b"', "1", "null", '["a"]', '{"model":"c"}', '""'])


@given(st.lists(st.tuples(KEY_SPELLINGS, VALUES), max_size=5))
def test_a_model_it_answers_is_the_one_every_reader_sees(pairs: list[tuple[str, str]]) -> None:
    body = ("{" + ",".join(f'"{key}":{value}' for key, value in pairs) + "}").encode()
    model = model_of(body)
    if not isinstance(model, Reason):
        assert model == _first_wins(body) == _last_wins(body) == _go_reads(body)
