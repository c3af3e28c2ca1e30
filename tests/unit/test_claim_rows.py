"""The claim's JSON columns, read from their text (tidings.workers.queue._json)."""

from __future__ import annotations

import json

from tidings.workers.queue import _json


def test_a_null_column_is_none() -> None:
    assert _json(None) is None


def test_a_request_reads_as_json_loads_reads_it() -> None:
    text = json.dumps(
        {"user_id": "u-1", "args": {"n": 12345678901234567890123, "x": 0.1, "s": "é\u263a"}}
    )
    assert _json(text) == json.loads(text)


def test_nesting_deeper_than_the_fast_parser_takes_still_reads() -> None:
    # pydantic_core's parser stops at a depth json.loads still reads: such a
    # document goes to json.loads instead of failing the claim's whole bulk.
    text = '{"args": ' + "[" * 400 + "]" * 400 + "}"
    assert _json(text) == json.loads(text)
