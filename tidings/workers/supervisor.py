"""`tidings run --processes N`: N worker processes under one supervisor.

Each child is `tidings run` again (its own interpreter, event loop and
connection pool; the projector's leader lock still lets one of them project).
The supervisor restarts a child that dies (any exit but 0), waiting longer
after each quick death; forwards SIGTERM and SIGINT to every child and
returns once all of them have finished their in-flight attempts. A child dies
with its supervisor (on Linux by PR_SET_PDEATHSIG), so a supervisor killed
hard leaves no orphan sending on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tidings.supervisor")

# A child that ran this long before dying is restarted at once; a quicker death
# doubles the wait before the next start, up to MAX_BACKOFF.
HEALTHY_AFTER = 30.0
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
_PR_SET_PDEATHSIG = 1


def usable_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use, at least 1: the CPUs it may run on (its
    affinity), no more than its cgroup's CPU quota allows (a container's CPU
    limit: `cpu: 2` in Kubernetes gives 2 however many the node has).
    """
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, int(quota))  # a limit of 1.5 runs one process, not two
    return max(1, cores)


def cgroup_cpu_quota(root: Path) -> float | None:
    """CPUs the cgroup's quota allows (cgroup v2 cpu.max, else v1 cfs_quota_us); None: no limit."""
    with contextlib.suppress(OSError, ValueError):
        quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
        if quota == "max":
            return None
        return int(quota) / int(period or "100000")
    with contextlib.suppress(OSError, ValueError):
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    return None


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """In the child before exec: SIGKILL when the supervisor dies (Linux only)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class _Slot:
    number: int
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    backoff: float = FIRST_BACKOFF
    restarts: int = 0


class Supervisor:
    """Starts `command(number)` N times and keeps N running until stopped.

    `command` gives the argv of child `number` (1..N); `env` is every child's
    environment. `run()` returns the exit code: 0 when every child ended with 0.
    """

    def __init__(
        self,
        *,
        processes: int,
        command: Callable[[int], Sequence[str]],
        env: dict[str, str] | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError("a supervisor needs at least one process")
        self._slots = [_Slot(number) for number in range(1, processes + 1)]
        self._command = command
        self._env = env
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Forward SIGTERM to every child and restart none; run() returns when all ended."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        log.info(
            "supervisor: stopping %d worker processes (SIGTERM); they finish their "
            "in-flight attempts first", sum(1 for s in self._slots if _alive(s)),
            extra={"processes": len(self._slots)},
        )  # fmt: skip
        for slot in self._slots:
            if _alive(slot):
                assert slot.process is not None
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(signal.SIGTERM)

    async def run(self) -> int:
        try:
            codes = await asyncio.gather(*(self._keep(slot) for slot in self._slots))
        finally:
            await self._kill_all()
        return 0 if all(code == 0 for code in codes) else 1

    async def _keep(self, slot: _Slot) -> int:
        """One slot's life: start, wait, restart after a death, until stopped or exit 0."""
        while True:
            process = await self._start(slot)
            code = await process.wait()
            if code == -signal.SIGTERM and self._stopping.is_set():
                # Our SIGTERM reached it before it could handle one, i.e. before it
                # claimed anything: a clean stop.
                code = 0
            if code == 0 or self._stopping.is_set():
                self._ended(slot, code)
                return code
            wait = self._restart_wait(slot, code)
            if wait:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), wait)
            if self._stopping.is_set():
                return code

    async def _start(self, slot: _Slot) -> asyncio.subprocess.Process:
        argv = list(self._command(slot.number))
        process = await asyncio.create_subprocess_exec(
            *argv, env=self._env, preexec_fn=_die_with_parent
        )
        slot.process = process
        slot.started = time.monotonic()
        log.info(
            "supervisor: worker process %d started (pid %d)", slot.number, process.pid,
            extra={"process_number": slot.number, "pid": process.pid},
        )  # fmt: skip
        if self._stopping.is_set():  # stopped while this one was starting
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        return process

    def _ended(self, slot: _Slot, code: int) -> None:
        pid = slot.process.pid if slot.process else None
        level = logging.INFO if code == 0 else logging.WARNING
        log.log(
            level, "supervisor: worker process %d (pid %s) ended with %s",
            slot.number, pid, _describe(code),
            extra={"process_number": slot.number, "pid": pid, "exit_code": code},
        )  # fmt: skip

    def _restart_wait(self, slot: _Slot, code: int) -> float:
        """Log the death; how long to wait before the restart (longer after quick deaths)."""
        lived = time.monotonic() - slot.started
        if lived >= HEALTHY_AFTER:
            slot.backoff = FIRST_BACKOFF
            wait = 0.0
        else:
            wait = slot.backoff
            slot.backoff = min(slot.backoff * 2, MAX_BACKOFF)
        slot.restarts += 1
        pid = slot.process.pid if slot.process else None
        log.error(
            "supervisor: worker process %d (pid %s) died with %s after %.1fs; restarting it "
            "in %.1fs (restart %d). Its claims in flight come back when their lease runs "
            "out; if it keeps dying, read the lines above its death",
            slot.number, pid, _describe(code), lived, wait, slot.restarts,
            extra={
                "process_number": slot.number, "pid": pid, "exit_code": code,
                "restart_in_seconds": wait, "restarts": slot.restarts,
            },
        )  # fmt: skip
        return wait

    async def _kill_all(self) -> None:
        """On the way out (normally every child has ended): none is left behind."""
        for slot in self._slots:
            if _alive(slot):
                assert slot.process is not None
                with contextlib.suppress(ProcessLookupError):
                    slot.process.kill()
                await slot.process.wait()


def _alive(slot: _Slot) -> bool:
    return slot.process is not None and slot.process.returncode is None


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
