"""`tidings replay`: the log in position order, for people and machines."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

import click

from tidings.cli.base import main, parse_time, run, settings_of
from tidings.eventstore import (
    EventQuery,
    StoredEvent,
    open_database,
)


@main.command("replay")
@click.option("--instance", "instances", multiple=True, help="Only this instance (repeatable).")
@click.option("--aggregate-type", "aggregate_types", multiple=True, help="Repeatable.")
@click.option("--aggregate-id", "aggregate_ids", multiple=True, help="Repeatable.")
@click.option(
    "--event-type",
    "event_types",
    multiple=True,
    help="Repeatable; * is a wildcard, as in notification.*",
)
@click.option(
    "--since", callback=parse_time, help="Created after: ISO time (UTC if no zone) or 1h ago."
)
@click.option(
    "--until", callback=parse_time, help="Created before: ISO time (UTC if no zone) or 1h ago."
)
@click.option("--after-position", type=int, help="Only events after this position.")
@click.option("--limit", type=click.IntRange(min=1), help="Stop after this many events.")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["jsonl", "table"]),
    help="Default: table on a terminal, jsonl otherwise.",
)
@click.pass_context
def replay_command(
    ctx: click.Context,
    instances: tuple[str, ...],
    aggregate_types: tuple[str, ...],
    aggregate_ids: tuple[str, ...],
    event_types: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    after_position: int | None,
    limit: int | None,
    output_format: str | None,
) -> None:
    """Stream the log in position order, for audit, in constant memory."""
    query = EventQuery(
        instance_ids=instances or None,
        aggregate_types=aggregate_types or None,
        aggregate_ids=aggregate_ids or None,
        event_types=event_types or None,
        created_after=since,
        created_before=until,
        position_after=after_position,
        limit=limit,
    )
    table = (output_format or ("table" if sys.stdout.isatty() else "jsonl")) == "table"
    out = sys.stdout

    async def go() -> None:
        async with open_database(settings_of(ctx).database) as db:
            if table:
                out.write(TABLE_HEADER)
            async for event in db.store.stream(query):
                out.write(table_row(event) if table else jsonl_row(event))

    run(go())


def jsonl_row(event: StoredEvent) -> str:
    return (
        json.dumps(
            {
                "instance_id": event.instance_id,
                "aggregate_type": event.aggregate_type,
                "aggregate_id": event.aggregate_id,
                "event_type": event.event_type,
                "payload": event.payload,
                "owner": event.owner,
                "creator": event.creator,
                "sequence": event.sequence,
                "position": event.position,
                "created_at": event.created_at.isoformat(),
            },
            ensure_ascii=False,
        )
        + "\n"
    )


_COLUMNS = (("POSITION", 14), ("CREATED_AT", 20), ("INSTANCE", 12), ("AGGREGATE", 50),
            ("SEQ", 4), ("EVENT_TYPE", 40), ("PAYLOAD", 0))  # fmt: skip
TABLE_HEADER = "  ".join(name.ljust(width) for name, width in _COLUMNS).rstrip() + "\n"


def table_row(event: StoredEvent) -> str:
    created = event.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    payload = json.dumps(event.payload, ensure_ascii=False, separators=(",", ":"))
    cells: Iterable[str] = (
        str(event.position),
        created,
        event.instance_id,
        f"{event.aggregate_type}/{event.aggregate_id}",
        str(event.sequence),
        event.event_type,
        payload if len(payload) <= 80 else payload[:77] + "...",
    )
    return "  ".join(_fit(cell, width) for cell, (_, width) in zip(cells, _COLUMNS, strict=True))


def _fit(cell: str, width: int) -> str:
    if width == 0:
        return cell + "\n"
    if len(cell) > width:
        cell = cell[: width - 1] + "…"
    return cell.ljust(width)
