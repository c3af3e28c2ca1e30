"""`tidings audit verify`: does the log hold what it must always hold?"""

from __future__ import annotations

import json
import sys

import click

from tidings.audit import RULES, AuditReport, LogAuditor, Violation
from tidings.cli.base import main, run, settings_of
from tidings.eventstore import open_database


@main.group("audit")
def audit_group() -> None:
    """Check the log and the read models against the rules of the design."""


@audit_group.command("verify")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="json: one document for machines (checked counts, ok, violations).",
)
@click.option(
    "--max-violations",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="List at most this many violations; all of them are counted.",
)
@click.pass_context
def audit_verify(ctx: click.Context, output_format: str, max_violations: int) -> None:
    """Walk the whole log and check every rule it must satisfy.

    Notifications start with their request, settle once, number their
    attempts 1..n within notifications.max_attempts; sequences have no gaps;
    requests point at existing source events, sent notifications have their
    source's sent event; the pending queue and the users read model equal a
    rebuild from the log.

    Safe while workers and the projector run: it reads one consistent
    snapshot, writes nothing there and locks nothing they need. Exits 0 when
    every rule holds, 1 when one does not (or the audit could not run), 2 on
    usage or settings errors.
    """
    settings = settings_of(ctx)

    async def go() -> AuditReport:
        async with open_database(settings.database) as db:
            auditor = LogAuditor(
                db=db, settings=settings.notifications, max_violations=max_violations
            )
            if sys.stderr.isatty():
                total = await auditor.events_to_check()
                with click.progressbar(
                    length=total, label="verifying the log", file=sys.stderr
                ) as bar:
                    return await auditor.verify(progress=bar.update)
            return await auditor.verify()

    report = run(go())
    if output_format == "json":
        click.echo(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    else:
        print_table(report)
    sys.exit(0 if report.ok else 1)


_COLUMNS = (("RULE", 22), ("INSTANCE", 12), ("AGGREGATE", 50), ("SEQ", 5), ("POSITION", 16))


def print_table(report: AuditReport) -> None:
    if report.violations:
        click.echo("  ".join(name.ljust(width) for name, width in _COLUMNS) + "  DETAIL")
        for violation in report.violations:
            click.echo(table_row(violation))
        click.echo()
    c = report.checked
    click.echo(
        f"checked {c['events']} events in {c['aggregates']} aggregates "
        f"({c['notifications']} notifications) up to position {c['last_position']}, "
        f"{c['pending_rows']} pending rows, {c['users']} users "
        f"(users checkpoint {c['users_checkpoint']})"
    )
    if c["users_not_compared"]:
        click.echo(
            f"{c['users_not_compared']} users changed while the audit ran and were not "
            "compared; run it again to cover them"
        )
    if report.ok:
        click.echo("ok: every rule holds")
        return
    counts = ", ".join(f"{rule} {n}" for rule, n in report.by_rule.items())
    shown = (
        f"; the first {len(report.violations)} are listed (--max-violations)"
        if report.truncated
        else ""
    )
    click.echo(f"FAILED: {report.violation_count} violations ({counts}){shown}")
    click.echo("what to do (ID: the aggregate id of a row above):")
    for rule in report.by_rule:
        click.echo(f"  {rule}: {RULES[rule].holds}.")
        click.echo(f"    {RULES[rule].advice}.")


def table_row(violation: Violation) -> str:
    cells = (
        violation.rule,
        violation.instance_id,
        violation.aggregate,
        "-" if violation.sequence is None else str(violation.sequence),
        "-" if violation.position is None else str(violation.position),
    )
    aligned = [
        cell.rjust(width) if name in ("SEQ", "POSITION") else cell.ljust(width)
        for cell, (name, width) in zip(cells, _COLUMNS, strict=True)
    ]
    return "  ".join(aligned) + "  " + violation.detail
