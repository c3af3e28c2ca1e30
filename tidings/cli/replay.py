"""`tidings replay`: the log in position order, for people and machines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import click

from tidings.cli.base import (
    fail,
    main,
    parse_time,
    run,
    settings_of,
    stop_on_signals,
    table_or_jsonl_option,
    wants_table,
)
from tidings.eventstore import (
    Database,
    EventQuery,
    StoredEvent,
    WakeUp,
    open_database,
    wakeups,
)
from tidings.eventstore.filters import NotificationTrail, Trail, UserTrail
from tidings.notification.redaction import redact_codes


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
    "--user",
    "user_id",
    help="Only this user's trail: the user's events, every notification for the user "
    "(all its events) and their source events on other aggregates (a session's OTP).",
)
@click.option(
    "--notification",
    "notification_id",
    help="Only this notification's events, its source event and the source's sent event.",
)
@click.option(
    "--follow",
    is_flag=True,
    help="After the log, keep printing new events as they commit, until SIGINT or SIGTERM.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file instead of stdout (it appears complete or not at all; "
    "with --follow it grows as events arrive).",
)
@click.option(
    "--keep-encrypted",
    is_flag=True,
    help="Print encrypted codes as stored (ciphertext, never plaintext), e.g. to copy a log "
    "with `events append`; by default they show as <encrypted>.",
)
@table_or_jsonl_option
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
    user_id: str | None,
    notification_id: str | None,
    follow: bool,
    output: Path | None,
    keep_encrypted: bool,
    output_format: str | None,
) -> None:
    """Stream the log in position order, for audit, in constant memory.

    Encrypted codes show as <encrypted> unless --keep-encrypted is given.
    """
    if user_id is not None and notification_id is not None:
        raise click.UsageError("give --user or --notification, not both")
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
    trail: Trail | None = None
    if user_id is not None:
        trail = UserTrail(user_id=user_id)
    elif notification_id is not None:
        trail = NotificationTrail(notification_id=notification_id)
    table = wants_table(output_format, terminal=output is None and sys.stdout.isatty())
    render = row_renderer(table=table, keep_encrypted=keep_encrypted)
    settings = settings_of(ctx)
    poll = settings.projections.poll_every.total_seconds()

    async def go() -> int:
        async with open_database(settings.database) as db:
            with output_stream(output, live=follow) as out:
                if table:
                    out.write(TABLE_HEADER)
                events = Replay(db=db, query=query, trail=trail, render=render, out=out)
                if follow:
                    stop = asyncio.Event()
                    stop_on_signals(stop)
                    await events.follow(stop=stop, poll=poll)
                else:
                    await events.catch_up()
                return events.written

    try:
        written = run(go())
    except BrokenPipeError:
        # The reader went away (`| head`): not an error of ours, and nothing to flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    except OSError as exc:
        fail(f"cannot write {output or 'stdout'}: {exc.strerror or exc}")
    if output is not None:
        click.echo(f"replay: wrote {written} event(s) to {output}", err=True)


@dataclass
class Replay:
    """Writes the events of `query` (and `trail`) to `out`, once or following the log."""

    db: Database
    query: EventQuery
    trail: Trail | None
    render: Callable[[StoredEvent], str]
    out: TextIO
    written: int = 0

    async def catch_up(self) -> None:
        """Every matching event committed so far, through one server-side cursor."""
        async with contextlib.aclosing(self.db.store.stream(self.query, trail=self.trail)) as rows:
            await self._write(rows, stop=None)

    async def follow(self, *, stop: asyncio.Event, poll: float) -> None:
        """The matching events so far, then each new one as it commits, until `stop`.

        Reads only below the ordered reader's horizon (`EventStore.horizon`):
        an event whose transaction is still open may commit later with a lower
        position than one already committed, and reading past it would skip it
        for good. Each round reads the window from the last horizon to the new
        one with the same query as the catch-up, so the catch-up (the first
        window) and the following neither overlap nor leave a gap. A wake-up
        (an append committed) starts the next round at once; without one, a
        round starts every `poll` seconds.
        """
        after = self.query.position_after or 0
        listener = wakeups(self.db.conninfo, timeout=poll)
        # Listening starts before the first read, so no append after it goes unnoticed.
        wake: asyncio.Future[WakeUp | None] | None = asyncio.ensure_future(anext(listener))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set() and not self._done:
                horizon = await self.db.store.horizon()
                if horizon - 1 > after:
                    window = self.query.model_copy(
                        update={"position_after": after, "limit": self._remaining}
                    )
                    stream = self.db.store.stream(window, trail=self.trail, below=horizon)
                    async with contextlib.aclosing(stream) as rows:
                        await self._write(rows, stop=stop)
                    self.out.flush()
                    after = horizon - 1
                if self._done:
                    break
                if wake is None:
                    wake = asyncio.ensure_future(anext(listener))
                either: set[asyncio.Future[Any]] = {wake, stopping}
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                if wake.done():
                    wake.result()  # a hint only: which append woke us does not matter
                    wake = None
        finally:
            for task in (wake, stopping):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await listener.aclose()

    @property
    def _remaining(self) -> int | None:
        return None if self.query.limit is None else self.query.limit - self.written

    @property
    def _done(self) -> bool:
        return self.query.limit is not None and self.written >= self.query.limit

    async def _write(self, rows: AsyncIterator[StoredEvent], *, stop: asyncio.Event | None) -> None:
        write, render = self.out.write, self.render
        async for event in rows:
            write(render(event))
            self.written += 1
            if stop is not None and stop.is_set():
                return


@contextlib.contextmanager
def output_stream(path: Path | None, *, live: bool) -> Iterator[TextIO]:
    """stdout, or the file at `path`.

    The file is written under a temporary name beside it and renamed into place
    once complete, so an interrupted or failed replay leaves no file that looks
    like a whole log. `live` (for --follow) writes the file itself instead,
    flushed as events arrive, so it can be tailed.
    """
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    if live:
        with path.open("w", encoding="utf-8") as out:
            yield out
        return
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise


def row_renderer(*, table: bool, keep_encrypted: bool) -> Callable[[StoredEvent], str]:
    """How one event becomes one line, with its codes shown as <encrypted> or as stored."""
    payload_of: Callable[[StoredEvent], dict[str, Any]] = (
        (lambda event: event.payload)
        if keep_encrypted
        else (lambda event: redact_codes(event.payload))
    )
    if table:
        return lambda event: table_row(event, payload_of(event))
    return lambda event: jsonl_row(event, payload_of(event))


_encode_json = json.JSONEncoder(ensure_ascii=False).encode
_encode_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def jsonl_row(event: StoredEvent, payload: dict[str, Any]) -> str:
    """One JSON line; `events append` takes it back."""
    return (
        _encode_json(
            {
                "instance_id": event.instance_id,
                "aggregate_type": event.aggregate_type,
                "aggregate_id": event.aggregate_id,
                "event_type": event.event_type,
                "payload": payload,
                "owner": event.owner,
                "creator": event.creator,
                "sequence": event.sequence,
                "position": event.position,
                "created_at": event.created_at.isoformat(),
            }
        )
        + "\n"
    )


_COLUMNS = (("POSITION", 14), ("CREATED_AT", 20), ("INSTANCE", 12), ("AGGREGATE", 50),
            ("SEQ", 4), ("EVENT_TYPE", 40), ("PAYLOAD", 0))  # fmt: skip
TABLE_HEADER = "  ".join(name.ljust(width) for name, width in _COLUMNS).rstrip() + "\n"


def table_row(event: StoredEvent, payload: dict[str, Any]) -> str:
    created = event.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    text = _encode_compact(payload)
    cells: Iterable[str] = (
        str(event.position),
        created,
        event.instance_id,
        f"{event.aggregate_type}/{event.aggregate_id}",
        str(event.sequence),
        event.event_type,
        text if len(text) <= 80 else text[:77] + "...",
    )
    return "  ".join(_fit(cell, width) for cell, (_, width) in zip(cells, _COLUMNS, strict=True))


def _fit(cell: str, width: int) -> str:
    if width == 0:
        return cell + "\n"
    if len(cell) > width:
        cell = cell[: width - 1] + "…"
    return cell.ljust(width)
