"""`tidings migrate` and `tidings events append`."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from typing import IO, Any

import click
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tidings.cli.base import fail, main, run, settings_of
from tidings.config import DatabaseSettings, EventSettings
from tidings.config.durations import format_duration, parse_duration
from tidings.eventstore import (
    ConcurrencyError,
    DatabaseUnavailable,
    NewEvent,
    SchemaNotReady,
    current_version,
    latest_version,
    migrate,
    open_database,
)
from tidings.notification.admission import is_internal, producer_event_problem
from tidings.notification.redaction import ENCRYPTED, redacted_path

log = logging.getLogger("tidings.cli")

_WAIT_POLL = 1.0  # seconds between two looks at the schema version


@main.command("migrate")
@click.option("--to", "target", type=int, help="Stop at this schema version (default: latest).")
@click.option(
    "--wait",
    "wait_for",
    metavar="DURATION",
    help="Apply nothing: wait up to DURATION (e.g. 5m) until another process (a migration "
    "Job) has brought the schema to this version. For an init container.",
)
@click.pass_context
def migrate_command(ctx: click.Context, target: int | None, wait_for: str | None) -> None:
    """Create or upgrade the database schema. Safe to run again.

    \b
    In Kubernetes the migration Job runs `tidings migrate`, and every pod's init
    container `tidings migrate --wait 10m`, so no worker starts on an old schema.
    """
    if wait_for is not None:
        try:
            timeout = parse_duration(wait_for)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--wait") from exc
        if target is not None:
            raise click.UsageError("--wait migrates nothing, so it takes no --to")
        version = run(wait_for_schema(settings_of(ctx).database, timeout))
        click.echo(f"schema at version {version}, as this tidings needs")
        return

    async def go() -> None:
        async with (
            open_database(settings_of(ctx).database, require_schema=False) as db,
            db.pool.connection() as conn,
        ):
            applied = await migrate(conn, target=target)
            version = await current_version(conn)
        if applied:
            names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied)
            click.echo(f"migrated {db.target}: applied {names}; schema at version {version}")
        else:
            click.echo(f"{db.target}: schema already at version {version}, nothing to apply")
        if version < latest_version():
            click.echo(f"note: the latest version is {latest_version()}", err=True)

    run(go())


async def wait_for_schema(settings: DatabaseSettings, timeout: timedelta) -> int:
    """Poll until the schema is at this tidings' version; the version, or a TidingsError."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout.total_seconds()
    expected = latest_version()
    while True:
        try:
            async with (
                open_database(settings, require_schema=False) as db,
                db.pool.connection() as conn,
            ):
                version = await current_version(conn)
            state = f"the schema is at version {version}, this tidings needs {expected}"
        except DatabaseUnavailable as exc:
            version, state = None, str(exc)
        if version is not None and version >= expected:
            return version
        if loop.time() >= deadline:
            raise SchemaNotReady(
                f"gave up waiting after {format_duration(timeout)}: {state}; check that the "
                "migration Job (`tidings migrate`) ran and succeeded: "
                "kubectl logs job/tidings-migrate",
                current_version=version,
                expected_version=expected,
            )
        log.info("waiting for the migration: %s", state)
        await asyncio.sleep(_WAIT_POLL)


@main.group("events")
def events_group() -> None:
    """Write events into the log."""


class AppendLine(BaseModel):
    """One line of `tidings events append`.

    Takes what `replay --format jsonl` prints too: `sequence` then stands for
    an expected sequence one lower, `position` and `created_at` are assigned
    anew by the store.
    """

    model_config = ConfigDict(extra="forbid")

    instance_id: str = Field(min_length=1)
    aggregate_type: str = Field(min_length=1)
    aggregate_id: str = Field(min_length=1)
    event_type: str = Field(min_length=1)
    payload: dict[str, Any]
    expected_sequence: int | None = Field(default=None, ge=0)
    owner: str = ""
    creator: str = ""
    sequence: int | None = Field(default=None, ge=1)
    position: int | None = None
    created_at: str | None = None

    @model_validator(mode="after")
    def _no_redacted_code(self) -> AppendLine:
        where = redacted_path(self.payload)
        if where is not None:
            raise ValueError(
                f"{where} is {ENCRYPTED!r}: a code hidden by `tidings replay`, which could "
                "never be sent; to copy a log, replay with --keep-encrypted"
            )
        return self

    @model_validator(mode="after")
    def _sequence_agrees(self) -> AppendLine:
        both = self.sequence is not None and self.expected_sequence is not None
        if both and self.expected_sequence != (self.sequence or 0) - 1:
            raise ValueError("sequence and expected_sequence disagree")
        return self

    def to_event(self) -> NewEvent:
        expected = self.expected_sequence
        if expected is None and self.sequence is not None:
            expected = self.sequence - 1
        return NewEvent(
            instance_id=self.instance_id,
            aggregate_type=self.aggregate_type,
            aggregate_id=self.aggregate_id,
            event_type=self.event_type,
            payload=self.payload,
            expected_sequence=expected,
            owner=self.owner,
            creator=self.creator,
        )


def parse_event_lines(
    stream: IO[bytes], name: str, *, limits: EventSettings, allow_internal: bool = False
) -> tuple[list[NewEvent], list[int]]:
    """Events and their line numbers; exits naming every line that cannot be appended.

    A line must be UTF-8 JSON, and an event a producer may append (see
    tidings.notification.admission: producer types, sizes, text PostgreSQL
    can store), checked here so that nothing is half-appended.
    """
    events: list[NewEvent] = []
    numbers: list[int] = []
    problems: list[str] = []
    for number, raw in enumerate(stream, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(
                f"{name} line {number}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
                f"column {exc.start + 1})"
            )
            continue
        if not line.strip():
            continue
        try:
            event = AppendLine.model_validate_json(line).to_event()
        except ValidationError as exc:
            problems.append(f"{name} line {number}: {_validation_summary(exc)}")
            continue
        refused = producer_event_problem(event, limits=limits, allow_internal=allow_internal)
        if refused is not None:
            problems.append(f"{name} line {number}: {refused}")
            continue
        events.append(event)
        numbers.append(number)
    if problems:
        for problem in problems[:20]:
            click.echo(f"error: {problem}", err=True)
        if len(problems) > 20:
            click.echo(f"error: ... and {len(problems) - 20} more lines refused", err=True)
        fail("nothing was appended", code=1)
    return events, numbers


def _validation_summary(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        if error["type"] == "json_invalid":
            parts.append(f"not valid JSON ({error['ctx'].get('error', 'syntax error')})")
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


@events_group.command("append")
@click.argument("source", type=click.File("rb"), default="-")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "jsonl"]),
    default="text",
    show_default=True,
    help="How to print where each event landed.",
)
@click.option(
    "--allow-internal",
    is_flag=True,
    help="An operator's repair: also take notification.* and *.sent events, which "
    "otherwise only tidings writes. Logged.",
)
@click.pass_context
def append_command(
    ctx: click.Context, source: IO[bytes], output_format: str, allow_internal: bool
) -> None:
    """Append events from a JSON-lines FILE (or - for stdin), all in one transaction.

    \b
    Each line: {"instance_id", "aggregate_type", "aggregate_id", "event_type",
    "payload": {...}, optional "expected_sequence" (the aggregate's last
    sequence as you saw it, 0 for a new aggregate), "owner", "creator"}.
    A malformed line or a conflict stores nothing and names the line.
    Producers append user.* and session.* events (docs/events.md); sizes are
    bounded by the events.* settings.
    """
    name = "stdin" if source.name in ("<stdin>", "-") else source.name
    settings = settings_of(ctx)
    events, numbers = parse_event_lines(
        source, name, limits=settings.events, allow_internal=allow_internal
    )
    if not events:
        fail(f"{name} holds no events")
    internal = [
        (number, event) for number, event in zip(numbers, events, strict=True)
        if is_internal(event.event_type)
    ]  # fmt: skip
    if internal:
        log.warning(
            "events append --allow-internal: an operator appends %d events that only tidings "
            "writes otherwise, from %s: %s",
            len(internal), name,
            "; ".join(
                f"line {number} {e.event_type} on {e.instance_id} {e.aggregate_type}/"
                f"{e.aggregate_id}" for number, e in internal[:20]
            ) + (f"; and {len(internal) - 20} more" if len(internal) > 20 else ""),
            extra={"allow_internal": True, "internal_events": len(internal)},
        )  # fmt: skip

    async def go() -> None:
        async with open_database(settings.database) as db:
            try:
                stored = await db.store.append(events)
            except ConcurrencyError as exc:
                where = f"{name} line {numbers[exc.index]}: " if exc.index is not None else ""
                fail(f"{where}{exc}; nothing was appended")
        for event, landed, number in zip(events, stored, numbers, strict=True):
            if output_format == "jsonl":
                click.echo(
                    json.dumps(
                        {
                            "line": number,
                            "position": landed.position,
                            "sequence": landed.sequence,
                            "instance_id": event.instance_id,
                            "aggregate_type": event.aggregate_type,
                            "aggregate_id": event.aggregate_id,
                            "event_type": event.event_type,
                        }
                    )
                )
            else:
                click.echo(
                    f"position {landed.position}\tsequence {landed.sequence}\t"
                    f"{event.instance_id} {event.aggregate_type}/{event.aggregate_id}\t"
                    f"{event.event_type}"
                )

    run(go())
