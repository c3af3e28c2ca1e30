"""The Python CPU of a notification's attempt, without a database, before and after.

`bench/peers.py` measures the whole worker, whose Python CPU per notification
also holds the claim's and the append's round trips (psycopg, asyncio). This
isolates what tidings' own code spends on each notification between the two:
the lifecycle's decisions, the rendering (texts, link, both layouts, the code's
decryption), the no-op channel's call, the outcome events and the INFO line.

Figures, in microseconds of CPU per notification (each the best of 3 passes in
a child process; the median over `--rounds` children, checkouts alternating):

- run_bulk: `AttemptRunner.run_bulk` over `--count` rows as the claim returns
  them (the request as the projector wrote it, the user's row), in bulks of
  `--bulk`; an event store whose append returns at once, the no-op channel
  (bench/workers.py's), the INFO line per notification into /dev/null;
- compose: `MessageComposer.compose` of a password reset email (built-in texts);
- compose, templates.dir: the same with two override folders (`_default/` and
  the instance's) of one text each.

    .venv/bin/python bench/attempt.py
    .venv/bin/python bench/attempt.py --baseline /tmp/before --rounds 7

`--baseline DIR` (repeatable): the same figures with another checkout's
`tidings/` (e.g. `git worktree add --detach /tmp/before main`), alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PASSES = 3


def child(count: int, bulk: int) -> dict[str, float]:
    """The figures for the tidings on sys.path (this process's checkout)."""
    # Imported here: the parent put the checkout to measure first on sys.path.
    from workers import (  # bench/workers.py
        CRYPTO,
        INSTANCES,
        USERS,
        NoopChannel,
        bench_settings,
        configure_logging,
        requested,
        user_added,
    )

    from tidings.clock import utc_now
    from tidings.config import Settings, TemplateSettings
    from tidings.notification.backoff import Backoff
    from tidings.notification.codes import CodeCipher
    from tidings.notification.requests import NotifyUser, Request
    from tidings.notification.setup import build_channels, build_composer
    from tidings.workers.attempt import AttemptRunner
    from tidings.workers.queue import Claimed

    configure_logging("info")
    cipher = CodeCipher.from_settings(CRYPTO)
    now = datetime.now(UTC)
    known = {f.name for f in dataclasses.fields(Claimed)}
    rows = []
    for i in range(count):
        instance_id, user_id = f"inst-{i % INSTANCES}", f"user-{i % USERS}"
        event = requested(f"bench-{i:07d}", user_id=user_id, instance_id=instance_id, cipher=cipher)
        added = user_added(user_id, instance_id=instance_id).payload
        user = {
            "instance_id": instance_id, "user_id": user_id, "resource_owner": f"org-{instance_id}",
            "username": added["username"], "first_name": added["first_name"],
            "last_name": added["last_name"], "display_name": added["display_name"],
            "preferred_language": added["preferred_language"], "last_email": added["email"],
            "verified_email": added["email"], "last_phone": added["phone"],
            "verified_phone": added["phone"], "state": "active", "sequence": 1, "change_date": now,
        }  # fmt: skip
        fields = {
            "instance_id": instance_id, "notification_id": event.aggregate_id, "kind": "request",
            "sequence": 1, "attempts": 0, "requested_at": now, "due_at": now, "claims": 1,
            "request": json.loads(json.dumps(event.payload["request"])), "notify_user": None,
            "backoff": None, "last_error": None, "leased_until": None, "user": user,
            "user_read": True,
        }  # fmt: skip
        rows.append(Claimed(**{k: v for k, v in fields.items() if k in known}))

    class Store:
        async def append(self, events: list[Any]) -> None:
            return None

        async def append_unread(self, events: list[Any]) -> None:
            return None

    async def no_users(keys: list[tuple[str, str]]) -> dict[Any, Any]:
        return {}

    async def checkpoint() -> int:
        return 0

    async def release(waiting: list[Any]) -> None:
        return None

    settings = bench_settings("postgresql://unused/none", bulk=bulk)
    channels = build_channels(settings)
    for name in {settings.channels.email, settings.channels.sms}:
        channels._built[name] = NoopChannel()
    n = settings.notifications
    runner = AttemptRunner(
        store=Store(),  # type: ignore[arg-type]
        composer=build_composer(settings),
        channels=channels,
        users=no_users,
        users_checkpoint=checkpoint,
        release=release,
        settings=n,
        backoff=Backoff(
            min_delay=n.min_retry_delay,
            max_delay=n.max_retry_delay,
            factor=n.retry_delay_factor,
            uniform=random.uniform,
        ),
        clock=utc_now,
    )

    async def drain() -> None:
        for start in range(0, len(rows), bulk):
            outcomes = await runner.run_bulk(rows[start : start + bulk])
            if any(o.result != "sent" for o in outcomes):
                raise SystemExit(f"not sent: {outcomes[0]}")  # the figure would mean nothing

    def best(run: Callable[[], None], per: int) -> float:
        times = []
        for _ in range(PASSES):
            started = time.process_time()
            run()
            times.append((time.process_time() - started) / per * 1e6)
        return min(times)

    figures = {"run_bulk": best(lambda: asyncio.run(drain()), len(rows))}
    request = Request.model_validate(rows[0].request)
    notify_user = NotifyUser.model_validate(rows[0].user)
    with tempfile.TemporaryDirectory() as folder:
        templates = Path(folder)
        for scope, text in (("_default", "footer: Kind regards"), ("inst-0", "title: Reset it")):
            (templates / scope).mkdir()
            (templates / scope / "texts.en.yaml").write_text(f"PasswordReset:\n  {text}\n")
            old = time.time() - 3600  # written long ago, as a deployed override is
            os.utime(templates / scope / "texts.en.yaml", (old, old))
            os.utime(templates / scope, (old, old))
        for label, folder_setting in (("compose", None), ("compose, templates.dir", templates)):
            composer = build_composer(
                Settings(crypto=CRYPTO, templates=TemplateSettings(dir=folder_setting))
            )

            def compose(times: int = 2000, composer: Any = composer) -> None:
                for _ in range(times):
                    composer.compose(
                        notification_id="n-1", instance_id="inst-0", attempt=1,
                        request=request, user=notify_user,
                    )  # fmt: skip

            compose(10)  # compiled once
            figures[label] = best(compose, 2000)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="rows per pass (default 2000)")
    parser.add_argument("--bulk", type=int, default=10, help="bulk size (default 10)")
    parser.add_argument("--rounds", type=int, default=5, help="children per checkout")
    parser.add_argument("--baseline", action="append", default=[], metavar="DIR")
    parser.add_argument("--child", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.count, args.bulk)))
        return
    repo = str(HERE.parent)
    checkouts = [("this checkout", repo)] + [(Path(b).name, b) for b in args.baseline]
    for _, path in checkouts[1:]:
        if not (Path(path) / "tidings" / "__init__.py").is_file():
            raise SystemExit(f"--baseline {path}: no tidings package there")
    results: dict[str, list[dict[str, float]]] = {label: [] for label, _ in checkouts}
    for _ in range(args.rounds):
        for label, path in checkouts:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([path, str(HERE)])}
            done = subprocess.run(
                [sys.executable, __file__, "--child", path, "--count", str(args.count),
                 "--bulk", str(args.bulk)],
                env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise SystemExit(f"{label}: {done.stderr[-2000:]}")
            results[label].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        f"CPU per notification, us: median of {args.rounds} children per checkout, "
        f"each the best of {PASSES} passes ({args.count} rows, bulk {args.bulk})"
    )
    first = checkouts[0][0]
    names = list(results[first][0])
    print(f"  {'checkout':20}" + "".join(f"{name:>26}" for name in names))
    medians = {
        label: {name: statistics.median(r[name] for r in runs) for name in names}
        for label, runs in results.items()
    }
    for label, _ in checkouts:
        cells = []
        for name in names:
            value = medians[label][name]
            ratio = "" if label == first else f" ({medians[first][name] / value:.2f}x)"
            cells.append(f"{value:.0f}{ratio}")
        print(f"  {label:20}" + "".join(f"{cell:>26}" for cell in cells))
    if len(checkouts) > 1:
        print("  (x: this checkout's figure / the baseline's; below 1 is less CPU)")


if __name__ == "__main__":
    main()
