"""Benchmark of `tidings serve` from a separate load process.

Starts a real `tidings serve` (one uvicorn process) on a throwaway embedded
PostgreSQL (or --database-url), creates an API key, and drives it from a
second process (aiohttp, keep-alive connections) that measures:

1. POST /v1/notifications at saturation: requests/s with `--concurrency`
   requests in flight (closed loop), the median of `--rounds` rounds;
2. POST /v1/notifications at fixed rates (200/s and 1,000/s, open loop): p50
   and p99 latency, counted from when each request was due, so a server that
   falls behind shows it instead of slowing the load down;
3. POST /v1/events with 100 events per request at saturation: events/s, the
   median of `--rounds` rounds.

Every notification has its own Idempotency-Key (a new notification, an
inline recipient, appended as notification.requested and queued by the
pending trigger); no workers run, so the figures are the API's and the
database's alone. The serve process's CPU time per request is printed too: on
a shared machine it moves less than the rates do. Figures are printed, never
asserted; only same-run ratios mean much.

    .venv/bin/pip install -e '.[bench]'     # aiohttp (the load process), psutil
    .venv/bin/python bench/api.py [--seconds 10] [--rounds 3] [--concurrency 64]
    .venv/bin/python bench/api.py --database-url postgresql://...   # appends into it
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from eventstore import machine_details, prepare  # bench/eventstore.py (this script's folder)

from tidings.api import ApiKeys
from tidings.config import DatabaseSettings
from tidings.eventstore import open_database

KEY = base64.b64encode(b"b" * 32).decode()
NOTIFICATION = json.dumps(
    {
        "recipient": {"email": "ada@example.com", "name": "Ada", "language": "en"},
        "message_type": "PasswordChange",
        "channel": "email",
        "data": {"reason": "benchmark"},
    }
).encode()
BATCH = 100


# --- the load process -----------------------------------------------------------------


def events_body(round_id: str, n: int) -> bytes:
    events = [
        {
            "aggregate_type": "user",
            "aggregate_id": f"user-{round_id}-{n}-{i}",
            "event_type": "user.human.added",
            "expected_sequence": 0,
            "payload": {
                "username": f"u{n}-{i}",
                "email": f"u{n}-{i}@example.com",
                "email_verified": True,
                "preferred_language": "en",
            },
        }
        for i in range(BATCH)
    ]
    return json.dumps({"events": events}).encode()


async def load(opts: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {opts.key}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=opts.concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    run = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    errors: dict[int, int] = {}
    async with aiohttp.ClientSession(
        base_url=opts.url, connector=connector, timeout=timeout
    ) as session:

        async def post(path: str, body: bytes, extra: dict[str, str]) -> None:
            async with session.post(path, data=body, headers={**headers, **extra}) as answer:
                await answer.read()
                if answer.status >= 300:
                    errors[answer.status] = errors.get(answer.status, 0) + 1

        def notify(n: int) -> Any:
            return post("/v1/notifications", NOTIFICATION, {"Idempotency-Key": f"{run}-{n}"})

        if opts.mode in ("notify-saturate", "events-saturate"):
            counter = iter(range(10**9))
            deadline = time.perf_counter() + opts.seconds

            async def worker() -> int:
                done = 0
                while time.perf_counter() < deadline:
                    n = next(counter)
                    started = time.perf_counter()
                    if opts.mode == "notify-saturate":
                        await notify(n)
                    else:
                        await post("/v1/events", events_body(run, n), {})
                    latencies.append(time.perf_counter() - started)
                    done += 1
                return done

            started = time.perf_counter()
            done = sum(await asyncio.gather(*(worker() for _ in range(opts.concurrency))))
            elapsed = time.perf_counter() - started
            return {"requests": done, "seconds": elapsed, "errors": errors,
                    "latencies": sorted(latencies)}  # fmt: skip

        # Open loop at a fixed rate: each request is due at start + n / rate.
        total = int(opts.rate * opts.seconds)
        start = time.perf_counter() + 0.2
        tasks = []

        async def timed(n: int, due: float) -> None:
            await notify(n)
            latencies.append(time.perf_counter() - due)

        for n in range(total):
            due = start + n / opts.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(timed(n, due)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        return {"requests": total, "seconds": elapsed, "errors": errors,
                "latencies": sorted(latencies)}  # fmt: skip


# --- the orchestrating process -----------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def run_load(url: str, key: str, mode: str, *, seconds: float, concurrency: int,
             rate: float = 0) -> dict[str, Any]:  # fmt: skip
    command = [
        sys.executable, __file__, "--load", mode, "--url", url, "--key", key,
        "--seconds", str(seconds), "--concurrency", str(concurrency), "--rate", str(rate),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"the load process failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def make_key(url: str) -> str:
    async with open_database(DatabaseSettings(url=url)) as db:
        key, _ = await ApiKeys(db=db).create(
            instance_id="bench", name="bench", scopes=(), creator="bench/api.py"
        )
    return key


def wait_up(base: str, process: subprocess.Popen[bytes]) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("tidings serve exited at start; see its stderr above")
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("tidings serve did not answer /healthz within 60s")


def bench(url: str, where: str, opts: argparse.Namespace) -> None:
    version = asyncio.run(prepare(url, opts.reuse))
    key = asyncio.run(make_key(url))
    with __import__("socket").socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(
        TIDINGS_DATABASE_URL=url,
        TIDINGS_DATABASE_POOL_MAX_SIZE="20",
        TIDINGS_CRYPTO_KEYS=f"b1={KEY}",
        TIDINGS_CRYPTO_ACTIVE_KEY="b1",
        TIDINGS_API_MAX_BODY=str(4 * 1024 * 1024),
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "tidings", "--log-level", "warning", "serve", "--addr",
         f"127.0.0.1:{port}"], env=env,
    )  # fmt: skip
    try:
        wait_up(base, server)
        for name, value in machine_details():
            print(f"{name:<10} {value}")
        print(f"{'database':<10} PostgreSQL {version} ({where})")
        print(f"{'server':<10} one `tidings serve` process (uvicorn); load from another process")
        print()
        seconds, rounds, conc = opts.seconds, opts.rounds, opts.concurrency

        serve = psutil.Process(server.pid)

        def cpu() -> float:
            times = serve.cpu_times()
            return float(times.user + times.system)

        rates, cpu_ms = [], []
        for _ in range(rounds):
            before = cpu()
            r = run_load(base, key, "notify-saturate", seconds=seconds, concurrency=conc)
            cpu_ms.append((cpu() - before) * 1000 / max(r["requests"], 1))
            rates.append(r["requests"] / r["seconds"])
            errors = r["errors"]
        shown = ", ".join(f"{x:,.0f}" for x in rates)
        print(f"POST /v1/notifications at saturation ({conc} in flight, {rounds} x {seconds:g}s):")
        print(f"  median {statistics.median(rates):,.0f} req/s (rounds: {shown}); "
              f"errors {errors or 'none'}")  # fmt: skip
        print(f"  server CPU per request: median {statistics.median(cpu_ms):.2f} ms "
              f"(one core's worth: {1000 / statistics.median(cpu_ms):,.0f} req/s)")  # fmt: skip
        print()
        print("POST /v1/notifications at a fixed rate (open loop, latency from when due):")
        for rate in (200, 1000):
            r = run_load(base, key, "notify-rate", seconds=seconds, concurrency=256, rate=rate)
            lat = r["latencies"]
            achieved = r["requests"] / r["seconds"]
            p50, p99 = pct(lat, 50) * 1000, pct(lat, 99) * 1000
            print(f"  {rate:>5}/s: p50 {p50:6.1f} ms  p99 {p99:6.1f} ms"
                  f"  (achieved {achieved:,.0f}/s, {r['requests']:,} requests, "
                  f"errors {r['errors'] or 'none'})")  # fmt: skip
        print()
        event_rates, event_cpu = [], []
        for _ in range(rounds):
            before = cpu()
            r = run_load(base, key, "events-saturate", seconds=seconds, concurrency=8)
            event_cpu.append((cpu() - before) * 1e6 / max(r["requests"] * BATCH, 1))
            event_rates.append(r["requests"] * BATCH / r["seconds"])
            errors = r["errors"]
        print(
            f"POST /v1/events, {BATCH} events per request (8 in flight, {rounds} x {seconds:g}s):"
        )
        print(f"  median {statistics.median(event_rates):,.0f} events/s "
              f"(rounds: {', '.join(f'{x:,.0f}' for x in event_rates)}); "
              f"errors {errors or 'none'}")  # fmt: skip
        per_event = statistics.median(event_cpu)
        print(f"  server CPU per event: median {per_event:.0f} µs "
              f"(one core's worth: {1e6 / per_event:,.0f} events/s)")  # fmt: skip
    finally:
        server.terminate()
        code = server.wait(timeout=60)
        print(f"\ntidings serve exited {code} on SIGTERM")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement (10)")
    parser.add_argument("--rounds", type=int, default=3, help="saturation rounds (3)")
    parser.add_argument("--concurrency", type=int, default=64, help="in flight (64)")
    parser.add_argument("--database-url", help="use this database (default: throwaway pgserver)")
    parser.add_argument("--reuse", action="store_true", help="accept a log that holds events")
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.load:
        opts.mode = opts.load
        print(json.dumps(asyncio.run(load(opts))))
        return
    if opts.database_url:
        bench(opts.database_url, "--database-url", opts)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import get_server
    import psycopg

    root = Path(tempfile.mkdtemp(prefix="tidings-bench-api-"))
    server = get_server(root / "data", cleanup_mode="delete")
    try:
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE tidings_bench")
        bench(server.get_uri("tidings_bench"), "embedded pgserver, throwaway", opts)
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
