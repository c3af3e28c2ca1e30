"""The named SQL blocks: what is sent is the statement without its comment lines,
and every statement of a worker's bulk stays short enough for psycopg to keep its
parsed form (it parses a longer text's placeholders again at every call)."""

from __future__ import annotations

import pytest
from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH

from tidings.eventstore.sql import QueryFiles, parse_blocks
from tidings.eventstore.sql import query as eventstore_query
from tidings.projections.sql import query as projections_query
from tidings.workers.queue import claim_statement
from tidings.workers.sql import query as workers_query


def test_comment_lines_are_left_out_and_the_rest_kept_as_written() -> None:
    text = (
        "-- name: first\n"
        "-- What it does, for the reader.\n"
        "SELECT 1,  -- a trailing comment stays: it ends the line it is on\n"
        "    -- an indented comment line goes\n"
        "       '--not a comment' AS s\n"
        "-- name: second\n"
        "SELECT 2\n"
        "-- the last line, without a newline"
    )
    blocks = parse_blocks(text)
    assert blocks == {
        "first": (
            "SELECT 1,  -- a trailing comment stays: it ends the line it is on\n"
            "       '--not a comment' AS s"
        ),
        "second": "SELECT 2",
    }


@pytest.mark.parametrize("bulk", [1, 10, 100, 10_000])
def test_the_claim_is_short_enough_to_be_parsed_once(bulk: int) -> None:
    assert len(claim_statement(bulk)) <= MAX_CACHED_STATEMENT_LENGTH


@pytest.mark.parametrize(
    ("loader", "name"),
    [
        (eventstore_query, "append_events"),
        (workers_query, "next_due"),
        (workers_query, "has_pending"),
        (workers_query, "release_leases"),
        (projections_query, "users_get_many"),
    ],
)
def test_the_bulks_other_statements_are_short_enough_to_be_parsed_once(
    loader: QueryFiles, name: str
) -> None:
    statement = loader(name)
    assert len(statement.as_string().encode()) <= MAX_CACHED_STATEMENT_LENGTH
