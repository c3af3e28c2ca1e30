"""`tidings notifications list`: find notifications by instance, user, state, type, time."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click

from tidings.cli.base import main, parse_time, run, settings_of, table_or_jsonl_option, wants_table
from tidings.eventstore import open_database
from tidings.notification.messages import MESSAGE_TYPES
from tidings.views.listing import (
    STATES,
    Listing,
    NotificationFilter,
    NotificationRow,
    list_notifications,
)

DEFAULT_LIMIT = 50


@main.group("notifications")
def notifications_group() -> None:
    """Find notifications and see where each one stands."""


@notifications_group.command("list")
@click.option("--instance", "instances", multiple=True, help="Only this instance (repeatable).")
@click.option("--user", "user_id", metavar="USER_ID", help="Only notifications for this user.")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(STATES, case_sensitive=False),
    help="Only in this state (repeatable).",
)
@click.option(
    "--type",
    "message_types",
    multiple=True,
    callback=lambda _ctx, _param, values: tuple(map(_message_type, values)),
    metavar="MESSAGE_TYPE",
    help=f"Only this message type (repeatable): {', '.join(MESSAGE_TYPES)}.",
)
@click.option(
    "--since",
    callback=parse_time,
    help="Requested at or after: ISO time (UTC if no zone) or a duration ago, like 1h.",
)
@click.option(
    "--until",
    callback=parse_time,
    help="Requested before: ISO time (UTC if no zone) or a duration ago, like 1h.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=DEFAULT_LIMIT,
    show_default=True,
    help="Show at most this many, newest first.",
)
@table_or_jsonl_option
@click.pass_context
def notifications_list(
    ctx: click.Context,
    instances: tuple[str, ...],
    user_id: str | None,
    states: tuple[str, ...],
    message_types: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    limit: int,
    output_format: str | None,
) -> None:
    """List notifications, newest request first, with their state from the log.

    STATE is pending (requested, not attempted yet), retrying (an attempt
    failed, the next one is due later), sent or canceled. DUE/SETTLED is when
    an open one is due next, or when it was settled. DETAIL has the cancel
    reason, the last error, and the worker that holds an open one right now
    (its lease). Times are UTC. The table fits the terminal and shortens long
    values with …; jsonl has every value in full.

    \b
    Examples:
      tidings notifications list --state retrying --state canceled --since 1h
      tidings notifications list --user 2071234 --instance acme
      tidings notifications list --type PasswordReset --format jsonl
    """
    if since is not None and until is not None and since >= until:
        raise click.BadParameter(
            f"{_time(since)} UTC is not before --until {_time(until)} UTC, so nothing "
            "could match (a duration counts back from now: --since 2h --until 1h)",
            param_hint="'--since'",
        )
    filters = NotificationFilter(
        instance_ids=instances,
        user_id=user_id,
        states=states,
        message_types=message_types,
        requested_since=since,
        requested_until=until,
        limit=limit,
    )
    table = wants_table(output_format, terminal=sys.stdout.isatty())
    now = datetime.now(UTC)

    async def go() -> Listing:
        async with open_database(settings_of(ctx).database) as db:
            return await list_notifications(db.pool, filters, now=now)

    listing = run(go())
    if not listing.rows:
        click.echo(f"no notifications match{describe_filters(filters)}", err=True)
        return
    if table:
        width = shutil.get_terminal_size().columns
        for line in table_lines(listing.rows, width=width):
            click.echo(line)
    else:
        for row in listing.rows:
            click.echo(jsonl_row(row))
    if listing.more:
        click.echo(
            f"note: showing the newest {limit}; more notifications match "
            "(raise --limit, or narrow with --since/--until or other filters)",
            err=True,
        )


def _message_type(value: str) -> str:
    """A message type as the log spells it, whatever the case it was typed in."""
    for known in MESSAGE_TYPES:
        if known.lower() == value.lower():
            return known
    raise click.BadParameter(
        f"{value!r} is not a message type; use one of: {', '.join(MESSAGE_TYPES)}",
        param_hint="'--type'",
    )


def describe_filters(filters: NotificationFilter) -> str:
    """The filters as options, for "no notifications match"."""
    given: list[tuple[str, str]] = [("--instance", i) for i in filters.instance_ids]
    if filters.user_id is not None:
        given.append(("--user", filters.user_id))
    given += [("--state", s) for s in filters.states]
    given += [("--type", t) for t in filters.message_types]
    if filters.requested_since is not None:
        given.append(("--since", f"{_time(filters.requested_since)} UTC"))
    if filters.requested_until is not None:
        given.append(("--until", f"{_time(filters.requested_until)} UTC"))
    if not given:
        return " (the log holds no notifications)"
    return ": " + " ".join(f"{option} {shlex.quote(value)}" for option, value in given)


def jsonl_row(row: NotificationRow) -> str:
    document: dict[str, Any] = {
        "instance_id": row.instance_id,
        "notification_id": row.notification_id,
        "user_id": row.user_id,
        "message_type": row.message_type,
        "channel": row.channel,
        "state": row.state,
        "cancel_reason": row.cancel_reason,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "next_due_at": _iso(row.next_due_at),
        "leased_until": _iso(row.leased_until),
        "lease_owner": row.lease_owner,
        "requested_at": _iso(row.requested_at),
        "settled_at": _iso(row.settled_at),
        "sent_via": row.sent_via,
        "provider_message_id": row.provider_message_id,
    }
    return json.dumps(document, ensure_ascii=False)


# Each column's header and the widest it may get; the last one takes what the
# terminal has left. When the terminal is narrow, table_lines first drops the
# year from times, then the channel, then narrows instance and user.
_HEADERS = ("REQUESTED", "INSTANCE", "NOTIFICATION", "USER", "TYPE", "CHANNEL", "STATE",
            "ATTEMPTS", "DUE/SETTLED", "DETAIL")  # fmt: skip
_CAPS = (19, 16, 36, 24, 24, 7, 12, 8, 19)
_NARROW_CAPS = (14, 12, 36, 12, 24, 0, 12, 8, 14)
_LAST_MIN = 24
_CHANNEL = _HEADERS.index("CHANNEL")


def table_lines(rows: Sequence[NotificationRow], *, width: int) -> list[str]:
    """A header and one line per row, fitted to `width` columns; cut cells end in …."""
    layouts = [
        (False, _CAPS),
        (True, _CAPS),
        (True, tuple(0 if i == _CHANNEL else cap for i, cap in enumerate(_CAPS))),
        (True, _NARROW_CAPS),
    ]
    for compact, caps in layouts:
        table = [list(_HEADERS), *(_table_cells(row, compact=compact) for row in rows)]
        widths = [
            cap and max(len(_HEADERS[i]), min(cap, max(len(line[i]) for line in table[1:])))
            for i, cap in enumerate(caps)
        ]
        fixed = sum(w + 2 for w in widths if w)
        if fixed + _LAST_MIN <= width:
            break
    last = max(_LAST_MIN, width - fixed)
    lines = []
    for line in table:
        cells = [_fit(cell, w).ljust(w) for cell, w in zip(line, widths, strict=False) if w]
        lines.append("  ".join([*cells, _fit(line[-1], last)]).rstrip())
    return lines


def _table_cells(row: NotificationRow, *, compact: bool) -> list[str]:
    def time(moment: datetime) -> str:
        return _time(moment)[5:] if compact else _time(moment)

    if row.settled_at is not None:
        when = time(row.settled_at)
    elif row.leased_until is not None:
        when = "in flight"
    elif row.state == "pending":
        when = "now"  # a request is due at once; its due time only orders the queue
    elif row.next_due_at is not None:
        when = time(row.next_due_at)  # if past: overdue, waiting for a retry worker
    else:
        when = "-"
    cells = [
        time(row.requested_at),
        row.instance_id,
        row.notification_id,
        row.user_id or "-",
        row.message_type or "-",
        row.channel or "-",
        row.state,
        "-" if row.attempts is None else str(row.attempts),
        when,
        _detail(row) or "-",
    ]
    return [_one_line(cell) for cell in cells]


def _detail(row: NotificationRow) -> str:
    """Why it was canceled, what failed last, which worker holds it now."""
    if row.cancel_reason:
        return f"{row.cancel_reason}: {row.last_error}" if row.last_error else row.cancel_reason
    error = row.last_error or ""
    if error and row.state == "sent":
        error = f"earlier: {error}"  # it failed before, then went out
    if row.leased_until is not None:
        lease = f"leased by {row.lease_owner or '?'} until {_time(row.leased_until)[11:]}"
        return f"{lease}; {error}" if error else lease
    return error


def _fit(cell: str, width: int) -> str:
    return cell if len(cell) <= width else cell[: width - 1] + "…"


def _one_line(text: str) -> str:
    """Errors may span lines (a template's traceback); a table row may not."""
    return " ".join(text.split())


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None
