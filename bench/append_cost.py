"""PostgreSQL instructions per appended event, counted by callgrind.

CPU time per event moves by 20 % and more with the load of a shared machine;
the number of instructions the server executes for the same append does not.
This counts them for the three ways tidings appends in batches:

- source:   the platform's source events (a password-reset code each) through
            the in-database door `tidings.append_events(jsonb)`, 1,000 per call;
- requests: notification.requested as the projector appends them, 1,000 per
            `EventStore.append` (its statement);
- outcomes: a worker's bulk of 10 outcomes, notification.sent and the source's
            sent event each, 20 per `EventStore.append`.

Per shape: a fresh database of a throwaway server (this checkout's migrations,
or --baseline's), 1,000 users (and the requests the outcomes settle), one warm
batch, two copies of it. Then the server stops and the same backend binary runs
in single-user mode under callgrind on each copy: copy B runs one batch, copy A
the same batch and K more; (A - B) / events in the K batches is the cost
per event of the appending backend (parsing, planning, executing, triggers,
commit; not the WAL writer or other processes). The statement is prepared once
and executed per batch, as psycopg runs a statement it has run a few times.
Identical on every run of the same code, so two checkouts compare in one run,
however busy the machine.

    .venv/bin/python bench/append_cost.py                      # ~3 minutes
    .venv/bin/python bench/append_cost.py --baseline /tmp/before --shapes source
    .venv/bin/python bench/append_cost.py --batches 10

Needs valgrind (`apt-get install valgrind`). Started as root, the server and
the single-user backend run as the data folder's owner (pgserver's user).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

SHAPES = ("source", "requests", "outcomes")
DOOR = "SELECT count(*) FROM tidings.append_events($1::jsonb)"


def store_statement() -> str:
    """EventStore.append's statement of this checkout, with the batch inline."""
    from tidings.eventstore.sql import query

    text = query("append_events").as_string(None)
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    body = "\n".join(lines).strip().rstrip(";")
    body = body.replace("%(events)s", "$1").replace("%(channel)s", "'tidings_events'")
    return f"SELECT count(*) FROM ({body}) appended"


def batches(shape: str, count: int) -> tuple[str, list[str], list[str]]:
    """(statement, setup documents, batch documents) for a shape."""
    from projector import source_events
    from workers import request_events

    from tidings.eventstore.models import NewEvent
    from tidings.eventstore.store import _EVENTS

    def dump(events: list[NewEvent]) -> str:
        return _EVENTS.dump_json(events).decode()

    if shape == "source":
        events = source_events(1000 * count, seed=11)
        return DOOR, [], [dump(events[i : i + 1000]) for i in range(0, len(events), 1000)]
    if shape == "requests":
        events = request_events(1000 * count)
        docs = [dump(events[i : i + 1000]) for i in range(0, len(events), 1000)]
        return store_statement(), [], docs
    requests = request_events(10 * count)
    docs = []
    for b in range(count):
        bulk: list[NewEvent] = []
        for r in requests[b * 10 : (b + 1) * 10]:
            request = r.payload["request"]
            bulk.append(
                NewEvent(
                    instance_id=r.instance_id, aggregate_type="notification",
                    aggregate_id=r.aggregate_id, event_type="notification.sent",
                    payload={"channel": "email", "provider_message_id": f"m-{r.aggregate_id}",
                             "attempt": 1},
                    expected_sequence=1, creator="tidings",
                )
            )  # fmt: skip
            bulk.append(
                NewEvent(
                    instance_id=r.instance_id,
                    aggregate_type=request["source"]["aggregate_type"],
                    aggregate_id=request["source"]["aggregate_id"],
                    event_type=request["sent_event_type"],
                    payload={"notification_id": r.aggregate_id,
                             "message_type": request["message_type"], "channel": "email"},
                    owner=request["resource_owner"], creator="tidings",
                )
            )  # fmt: skip
        docs.append(dump(bulk))
    return store_statement(), [dump(requests)], docs


def literal(doc: str) -> str:
    return "'" + doc.replace("'", "''") + "'"


def script(statement: str, docs: list[str]) -> str:
    """Single-user mode input (-j: a statement ends with a semicolon and an empty line).

    The statement is prepared, then executed per batch, as psycopg does once a
    statement has run a few times: the plans are cached as in a worker.
    """
    executes = "".join(f"EXECUTE appended({literal(d)});\n\n" for d in docs)
    return f"PREPARE appended AS {statement};\n\n{executes}"


async def prepare(server: Any, name: str, statement: str, setup: list[str], warm: str) -> None:
    import psycopg
    from workers import INSTANCES, USERS, user_added

    from tidings.eventstore import migrate

    with psycopg.connect(server.get_uri(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = server.get_uri(name)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await migrate(conn)
    users = [user_added(f"user-{u}", instance_id=f"inst-{u % INSTANCES}") for u in range(USERS)]
    from tidings.eventstore.store import _EVENTS

    users_doc = _EVENTS.dump_json(users).decode()
    with psycopg.connect(url, autocommit=True) as conn:
        for doc in [users_doc, *setup]:
            conn.execute(store_statement().replace("$1", literal(doc)))
        conn.execute(f"PREPARE appended AS {statement}")
        conn.execute(f"EXECUTE appended({literal(warm)})")
        conn.execute("CHECKPOINT")
    with psycopg.connect(server.get_uri(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}_a TEMPLATE {name}")
        admin.execute(f"CREATE DATABASE {name}_b TEMPLATE {name}")


def callgrind(datadir: Path, db: str, sql: str, work: Path, tag: str) -> int:
    from pgserver._commands import POSTGRES_BIN_PATH

    (work / f"{tag}.sql").write_text(sql)
    out = work / f"{tag}.callgrind"
    as_owner: list[str] = []
    if os.geteuid() == 0:
        as_owner = ["runuser", "-u", pwd.getpwuid(datadir.stat().st_uid).pw_name, "--"]
    command = [
        *as_owner, "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        "--toggle-collect=exec_simple_query",
        str(POSTGRES_BIN_PATH / "postgres"), "--single", "-j", "-D", str(datadir), db,
    ]  # fmt: skip
    with (work / f"{tag}.sql").open() as stdin:
        run = subprocess.run(command, stdin=stdin, capture_output=True, text=True, check=False)
    if run.returncode != 0 or "ERROR" in run.stdout:
        raise SystemExit(
            f"{tag}: the single-user backend failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
        )
    for line in out.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"{tag}: no totals in {out}")


async def measure(shapes: list[str], count: int) -> dict[str, float]:
    """Instructions per event for each shape, with this process's tidings."""
    from pgserver.postgres_server import get_server

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="tidings-append-cost-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o777)
        datadir = work / "pg"
        server = get_server(str(datadir), cleanup_mode="stop")
        plans: dict[str, tuple[str, list[str]]] = {}
        for shape in shapes:
            statement, setup, docs = batches(shape, count + 2)
            await prepare(server, f"cost_{shape}", statement, setup, docs[0])
            plans[shape] = (statement, docs)
        server.cleanup()
        for shape, (statement, docs) in plans.items():
            a = callgrind(
                datadir, f"cost_{shape}_a", script(statement, docs[1:]), work, f"{shape}_a"
            )
            b = callgrind(
                datadir, f"cost_{shape}_b", script(statement, docs[1:2]), work, f"{shape}_b"
            )
            events = sum(len(json.loads(d)) for d in docs[2:])
            results[shape] = (a - b) / events
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=5, help="batches counted per shape")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--baseline", type=Path, action="append", default=[],
                        help="another tidings checkout to count too (repeatable)")  # fmt: skip
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shapes = [s for s in args.shapes.split(",") if s]
    if unknown := set(shapes) - set(SHAPES):
        parser.error(f"unknown shapes: {', '.join(sorted(unknown))}")
    if args.child:
        print(json.dumps(asyncio.run(measure(shapes, args.batches))))
        return
    if subprocess.run(["valgrind", "--version"], capture_output=True, check=False).returncode:
        raise SystemExit("valgrind is needed (apt-get install valgrind)")
    columns: dict[str, dict[str, float]] = {
        "this checkout": asyncio.run(measure(shapes, args.batches))
    }
    for checkout in args.baseline:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH), str(checkout)])}
        child = subprocess.run(
            [sys.executable, __file__, "--child", "--batches", str(args.batches),
             "--shapes", ",".join(shapes)],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if child.returncode != 0:
            raise SystemExit(f"{checkout}: {child.stderr[-2000:]}")
        columns[checkout.name] = json.loads(child.stdout.strip().splitlines()[-1])
    first: Callable[[str], float] = lambda shape: columns["this checkout"][shape]  # noqa: E731
    print(
        f"PostgreSQL instructions per appended event (callgrind, {args.batches} batches per shape)"
    )
    header = f"  {'shape':<10}" + "".join(f"{name:>22}" for name in columns)
    print(header)
    for shape in shapes:
        cells = []
        for name, figures in columns.items():
            value = figures[shape]
            ratio = "" if name == "this checkout" else f" ({first(shape) / value:.2f}x)"
            cells.append(f"{value:>14,.0f}{ratio:>8}")
        print(f"  {shape:<10}" + "".join(f"{c:>22}" for c in cells))
    if args.baseline:
        print("  (x: this checkout's count over the baseline's; below 1 is fewer instructions)")


if __name__ == "__main__":
    main()
