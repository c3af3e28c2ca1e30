"""Benchmark of `tidings replay` on a realistic log: throughput and constant memory.

Appends N events (default 1,000,000) in a realistic mix: users added and
changed, password-reset codes (encrypted with a real key) and session OTP
challenges, each turned into a notification (notification.requested carrying
the encrypted code, sometimes a retry.requested carrying it again, then
notification.sent) and the source aggregate's `*.sent` event. One "hot" user
gets H of the notifications (default 10,000). Then it runs the real CLI as a
subprocess, `python -m tidings replay --format jsonl --output FILE`:

1. the whole log, codes redacted (the default), and again with --keep-encrypted
   (what redaction costs);
2. the first S events only (--limit S, default 10,000): its peak RSS against the
   whole log's shows that replay memory does not grow with the log;
3. `--user` on the hot user (its notifications, their events and sources) and on
   an ordinary user, with the indexes their plan uses (EXPLAIN).

Each line gives wall time, events per second and the peak RSS of the replay
process (os.wait4's rusage of a small parent that only spawns it, so the figure
is the replay's own), and checks the file's line count.

    .venv/bin/python bench/replay.py [--events N] [--small S] [--hot-notifications H]
    .venv/bin/python bench/replay.py --events 20000 --small 1000 --hot-notifications 500
    .venv/bin/python bench/replay.py --database-url postgresql://... [--reuse]

Without --database-url a throwaway embedded PostgreSQL (pgserver) is started in a
temporary folder and deleted afterwards. With --database-url the events are
APPENDED INTO THAT DATABASE (they stay there); it refuses a database whose log
already holds events unless --reuse is given (then the figures include them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from eventstore import machine_details, prepare  # bench/eventstore.py (this script's folder)

from tidings.config import DatabaseSettings
from tidings.eventstore import EventQuery, NewEvent, open_database
from tidings.eventstore.filters import UserTrail, compose_select
from tidings.notification.codes import CodeCipher
from tidings.notification.requests import NotificationRequested, notification_id

INSTANCES = 10
BATCH = 2000  # events per append call (one transaction); keep under the lock table's size
HOT_USER = "user-hot"
CIPHER = CodeCipher(keys={"bench": bytes(range(32))}, active_key="bench")


@dataclass
class LogWriter:
    """Makes a realistic log, flow by flow, and hands it out in append batches."""

    rng: random.Random
    users: int
    sequences: dict[tuple[str, str, str], int] = field(default_factory=dict)
    made: int = 0
    ordinary_user: str = ""  # one with a notification or two, for `--user`
    pending: list[NewEvent] = field(default_factory=list)

    def event(self, instance: str, aggregate: str, event_type: str, payload: dict[str, Any]) -> int:
        """Queue one event; its sequence in the aggregate."""
        aggregate_type, aggregate_id = aggregate.split("/", 1)
        key = (instance, aggregate_type, aggregate_id)
        sequence = self.sequences.get(key, 0) + 1
        self.sequences[key] = sequence
        self.pending.append(
            NewEvent.model_construct(
                instance_id=instance, aggregate_type=aggregate_type, aggregate_id=aggregate_id,
                event_type=event_type, payload=payload, expected_sequence=None,
                owner=f"org-{instance}", creator="bench",
            )
        )  # fmt: skip
        self.made += 1
        return sequence

    def user(self, n: int) -> tuple[str, str]:
        return f"inst-{n % INSTANCES}", f"user-{n}"

    def user_added(self, instance: str, user: str) -> None:
        email = f"{user}@example.com"
        self.event(instance, f"user/{user}", "user.human.added", {
            "username": email, "first_name": "Ada", "last_name": "Lovelace",
            "display_name": "Ada Lovelace", "email": email, "email_verified": True,
            "phone": "+41791234567", "phone_verified": False, "preferred_language": "en",
        })  # fmt: skip

    def notification(
        self, instance: str, user: str, source: str, source_sequence: int, source_type: str,
        code: dict[str, Any], message_type: str, channel: str, sent_type: str,
    ) -> None:  # fmt: skip
        """requested (with the code), maybe a retry (with it again), sent, the source's sent."""
        source_aggregate_type, source_id = source.split("/", 1)
        nid = notification_id(
            instance_id=instance, aggregate_type=source_aggregate_type,
            aggregate_id=source_id, sequence=source_sequence,
        )  # fmt: skip
        request = {
            "user_id": user, "resource_owner": f"org-{instance}",
            "source": {"aggregate_type": source_aggregate_type, "aggregate_id": source_id,
                       "sequence": source_sequence, "event_type": source_type,
                       "position": 0, "created_at": "2026-01-01T00:00:00Z"},
            "message_type": message_type, "channel": channel, "sent_event_type": sent_type,
            "url_template": "https://login.example.com/reset?code={{.Code}}",
            "code": code, "code_expiry": "10m", "args": {}, "is_otp": channel == "sms",
            "unverified_channel": False,
        }  # fmt: skip
        aggregate = f"notification/{nid}"
        self.event(instance, aggregate, "notification.requested", {"request": request})
        attempt = 1
        if self.rng.random() < 0.2:
            self.event(instance, aggregate, "notification.retry.requested", {
                "request": request, "notify_user": {"instance_id": instance, "user_id": user,
                "username": f"{user}@example.com", "preferred_language": "en"},
                "backoff": "1s", "attempt": 1, "error": "smtp: 451 try again later",
                "due_at": "2026-01-01T00:00:01Z",
            })  # fmt: skip
            attempt = 2
        self.event(instance, aggregate, "notification.sent", {
            "channel": channel, "provider_message_id": f"msg-{self.made}", "attempt": attempt,
        })  # fmt: skip
        self.event(instance, source, sent_type, {
            "notification_id": nid, "message_type": message_type, "channel": channel,
        })  # fmt: skip

    def password_reset(self, instance: str, user: str) -> None:
        code = CIPHER.encrypt(f"{self.rng.randrange(10**8):08d}").model_dump()
        sequence = self.event(instance, f"user/{user}", "user.human.password.code.added", {
            "code": code, "expiry": "10m", "notification_type": "email",
            "url_template": "https://login.example.com/reset?code={{.Code}}",
        })  # fmt: skip
        self.notification(instance, user, f"user/{user}", sequence,
                          "user.human.password.code.added", code, "PasswordReset", "email",
                          "user.human.password.code.sent")  # fmt: skip

    def session_otp(self, instance: str, user: str) -> None:
        session = f"session/s-{self.made}"
        self.event(instance, session, "session.user.checked", {"user_id": user})
        code = CIPHER.encrypt(f"{self.rng.randrange(10**6):06d}").model_dump()
        sequence = self.event(instance, session, "session.otp.sms.challenged",
                              {"code": code, "expiry": "5m", "user_id": user})  # fmt: skip
        self.notification(instance, user, session, sequence, "session.otp.sms.challenged",
                          code, "VerifySMSOTP", "sms", "session.otp.sms.sent")  # fmt: skip

    def flows(self, total: int, hot_notifications: int) -> Iterator[list[NewEvent]]:
        """Batches of events until `total` are made; the hot user's flows spread evenly."""
        hot_instance = "inst-0"
        self.user_added(hot_instance, HOT_USER)
        hot_every = max(1, total // hot_notifications) if hot_notifications else 0
        known: set[int] = set()
        hot_made = 0
        while self.made < total:
            n = self.rng.randrange(self.users)
            instance, user = self.user(n)
            kind = self.rng.random()
            if hot_every and hot_made < hot_notifications and self.made // hot_every > hot_made:
                instance, user, n = hot_instance, HOT_USER, -1
                kind *= 0.85  # a notification every time
                hot_made += 1
            if n >= 0 and n not in known:
                known.add(n)
                self.user_added(instance, user)
            else:
                if kind < 0.85 and n >= 0 and not self.ordinary_user:
                    self.ordinary_user = user
                if kind < 0.45:
                    self.password_reset(instance, user)
                elif kind < 0.85:
                    self.session_otp(instance, user)
                else:
                    self.event(instance, f"user/{user}", "user.human.profile.changed",
                               {"display_name": f"Ada {self.made}"})  # fmt: skip
            if len(self.pending) >= BATCH:
                yield self.take()
        if self.pending:
            yield self.take()

    def take(self) -> list[NewEvent]:
        batch, self.pending = self.pending, []
        return batch


# Runs the replay as its child and prints that child's wall time and peak RSS. Not
# spawned from the benchmark itself: on Linux a child's ru_maxrss starts at the RSS
# of the process that forked it, so the benchmark's own memory would hide the
# replay's figure; this small interpreter's ~10 MiB does not.
TIMER = """
import os, subprocess, sys, time
started = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
_, status, usage = os.wait4(proc.pid, 0)
sys.stderr.write(proc.stderr.read().decode())
print(time.perf_counter() - started, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def run_replay(conninfo: str, output: Path, *args: str) -> tuple[float, int, int]:
    """Wall seconds, peak RSS (bytes) and lines written of `tidings replay --output`."""
    cmd = [sys.executable, "-m", "tidings", "--log-level", "warning", "replay",
           "--format", "jsonl", "--output", str(output), *args]  # fmt: skip
    env = {**os.environ, "TIDINGS_DATABASE_URL": conninfo}
    out = subprocess.run(
        [sys.executable, "-c", TIMER, *cmd], env=env, capture_output=True, text=True, check=False
    )
    fields = out.stdout.split()
    if out.returncode != 0 or len(fields) != 3 or int(fields[2]) != 0:
        raise SystemExit(f"replay failed: {' '.join(cmd)}\n{out.stderr}")
    with output.open("rb") as f:
        lines = sum(1 for _ in f)
    output.unlink()
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return float(fields[0]), int(fields[1]) * unit, lines


def row(label: str, events: int, seconds: float, rss: int) -> None:
    rate = events / seconds if seconds else float("inf")
    print(f"  {label:<44} {events:>9,} {seconds:>8.2f} s {rate:>10,.0f} ev/s"
          f"  peak RSS {rss / 2**20:6.1f} MiB")  # fmt: skip


async def fill(conninfo: str, events: int, hot: int, users: int) -> str:
    """Append the log in batches of BATCH events; an ordinary user with notifications."""
    settings = DatabaseSettings.model_validate(
        {"url": conninfo, "pool_min_size": 1, "pool_max_size": 3}
    )
    writer = LogWriter(rng=random.Random(42), users=users)
    sample = None
    async with open_database(settings) as db:
        started = time.perf_counter()
        batches = writer.flows(events, hot)
        appending: asyncio.Task[Any] | None = None
        while True:
            # The next batch is made in a thread while the previous one is appended;
            # batches go in one at a time, in order, so sequences are as made.
            batch = await asyncio.to_thread(next, batches, None)
            if appending is not None:
                await appending
            if batch is None:
                break
            if sample is None:
                sample = next(e for e in batch if e.event_type == "notification.requested")
                NotificationRequested.model_validate(sample.payload)  # the real shape
            appending = asyncio.create_task(db.store.append(batch))
        seconds = time.perf_counter() - started
        async with db.pool.connection() as conn:
            await conn.execute("ANALYZE tidings.events")
            cur = await conn.execute(
                "SELECT count(*), pg_total_relation_size('tidings.events') FROM tidings.events"
            )
            total, size = await cur.fetchone() or (0, 0)
    print(f"  appended {writer.made:,} events in {seconds:.1f} s "
          f"({writer.made / seconds:,.0f} ev/s, {BATCH} per transaction)")  # fmt: skip
    print(f"  log holds {total:,} events; table + indexes {size / 2**20:,.0f} MiB")
    return writer.ordinary_user


async def user_plan(conninfo: str, user_id: str) -> tuple[int, str]:
    """How many events the user's trail holds, and the indexes its plan uses."""
    statement, params = compose_select(EventQuery(), trail=UserTrail(user_id=user_id))
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        cur = psycopg.AsyncClientCursor(conn)
        await cur.execute(b"EXPLAIN " + statement.as_bytes(conn), params)
        plan = "\n".join(r[0] for r in await cur.fetchall())
        await cur.execute(b"SELECT count(*) FROM (" + statement.as_bytes(conn).rstrip(b";")
                          + b") t", params)  # fmt: skip
        count = (await cur.fetchone() or (0,))[0]
    used = sorted({word for word in plan.replace("\n", " ").split() if word.startswith("events_")})
    if "Seq Scan" in plan:
        used.append("AND A SEQ SCAN")
    return int(count), ", ".join(used)


def bench(conninfo: str, where: str, args: argparse.Namespace) -> None:
    server_version = asyncio.run(prepare(conninfo, args.reuse))
    print("machine")
    for key, value in [*machine_details(), ("postgresql", f"{server_version} ({where})")]:
        print(f"  {key:<11} {value}")
    print(f"\nlog: {args.events:,} events, {args.users:,} users in {INSTANCES} instances, "
          f"{args.hot_notifications:,} notifications for {HOT_USER}\n")  # fmt: skip
    ordinary = asyncio.run(fill(conninfo, args.events, args.hot_notifications, args.users))
    with tempfile.TemporaryDirectory(prefix="tidings-replay-") as out_dir:
        output = Path(out_dir) / "replay.jsonl"
        print(f"\n  {'tidings replay --format jsonl --output FILE':<44} {'events':>9} "
              f"{'wall':>10} {'rate':>15}")  # fmt: skip
        runs = [
            ("(whole log)", ()),
            ("--keep-encrypted (whole log)", ("--keep-encrypted",)),
            (f"--limit {args.small}", ("--limit", str(args.small))),
            (f"--user {HOT_USER}", ("--user", HOT_USER)),
            (f"--user {ordinary}", ("--user", ordinary)),
        ]
        rss: dict[str, int] = {}
        for label, extra in runs:
            seconds, peak, lines = run_replay(conninfo, output, *extra)
            rss[label] = peak
            row(label, lines, seconds, peak)
    whole, small = rss["(whole log)"], rss[f"--limit {args.small}"]
    print(f"\n  peak RSS, whole log vs first {args.small:,}: {whole / 2**20:.1f} MiB vs "
          f"{small / 2**20:.1f} MiB ({(whole - small) / 2**20:+.1f} MiB)")  # fmt: skip
    for user in (HOT_USER, ordinary):
        count, indexes = asyncio.run(user_plan(conninfo, user))
        print(f"  --user {user}: {count:,} events; plan uses {indexes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1_000_000, help="N (default 1000000)")
    parser.add_argument("--small", type=int, default=10_000, help="S (default 10000)")
    parser.add_argument("--hot-notifications", type=int, default=10_000, help="H (default 10000)")
    parser.add_argument("--users", type=int, default=50_000, help="distinct users (50000)")
    parser.add_argument("--database-url", help="use this database (default: throwaway pgserver)")
    parser.add_argument("--reuse", action="store_true", help="accept a log that holds events")
    args = parser.parse_args()
    if min(args.events, args.small, args.users) < 1 or args.hot_notifications < 0:
        parser.error("sizes must be positive")
    started = datetime.now(UTC)
    if args.database_url:
        bench(args.database_url, "--database-url", args)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pgserver warns at import without XDG_RUNTIME_DIR
            from pgserver.postgres_server import get_server
        root = Path(tempfile.mkdtemp(prefix="tidings-bench-"))
        server = get_server(root / "data", cleanup_mode="delete")
        try:
            with psycopg.connect(server.get_uri(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE tidings_bench")
            bench(server.get_uri("tidings_bench"), "embedded pgserver, throwaway", args)
        finally:
            server.cleanup()
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n  total {(datetime.now(UTC) - started).total_seconds():.0f} s")


if __name__ == "__main__":
    main()
