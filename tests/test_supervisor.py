"""`tidings run --processes N` through the real command line: a supervisor and its children."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import psutil

from tests.cli import clean_env, tidings
from tests.ops_helpers import Process, free_port, running, serving, wait_for
from tests.projection_helpers import code_event, user_added
from tests.worker_helpers import CRYPTO, KEY
from tidings.eventstore import Database, EventQuery
from tidings.notification.codes import CodeCipher
from tidings.workers.supervisor import cgroup_cpu_quota, usable_cores

STARTED = re.compile(r"worker process (\d+) started \(pid (\d+)\)")
POOL = re.compile(r"worker pool \S+: \d+ request")


def children(process: Process) -> dict[int, list[int]]:
    """Every pid each process number was started with, in order, from the supervisor's log."""
    started: dict[int, list[int]] = {}
    for number, pid in STARTED.findall(process.stderr()):
        started.setdefault(int(number), []).append(int(pid))
    return started


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def env_for(conninfo: str, tmp_path: Path) -> dict[str, str]:
    return clean_env(
        TIDINGS_DATABASE_URL=conninfo,
        TIDINGS_CRYPTO_KEYS=f"k1={KEY}",
        TIDINGS_CHANNELS_FILESYSTEM_OUTBOX_DIR=str(tmp_path / "outbox"),
        TIDINGS_NOTIFICATIONS_REQUEUE_EVERY="200ms",
        TIDINGS_PROJECTIONS_POLL_EVERY="200ms",
        TIDINGS_PROJECTIONS_LEADER_RETRY_EVERY="200ms",
    )


async def sent(db: Database) -> set[str]:
    events = await db.store.query(EventQuery(event_types=("notification.sent",)))
    return {e.aggregate_id for e in events}


async def test_a_killed_child_is_restarted_and_sigterm_ends_them_all(
    db: Database, conninfo: str, tmp_path: Path
) -> None:
    await db.store.append([user_added()])
    with running(["run", "--processes", "2"], env_for(conninfo, tmp_path), tmp_path / "sup") as sup:

        async def both_started() -> bool:
            pids = children(sup)
            return len(pids) == 2 and all(alive(p[-1]) for p in pids.values())

        await wait_for(both_started, "two worker processes")
        first = children(sup)[1][-1]
        other = children(sup)[2][-1]
        assert {first, other} <= {c.pid for c in psutil.Process(sup.proc.pid).children()}

        psutil.Process(first).send_signal(signal.SIGKILL)

        async def restarted() -> bool:
            pids = children(sup).get(1, [])
            return len(pids) == 2 and alive(pids[-1])

        await wait_for(restarted, "process 1 started again")
        log = sup.stderr()
        assert f"worker process 1 (pid {first}) died with signal SIGKILL" in log
        assert "restarting it in" in log
        assert alive(other), "the other child runs on, untouched"
        replacement = children(sup)[1][-1]
        assert replacement != first

        # The restarted pair still does the work: source events appended now are
        # projected (by whichever child holds the leader lock) and sent.
        code = CodeCipher.from_settings(CRYPTO).encrypt("RESET-4821").model_dump()
        await db.store.append(
            [code_event("user.human.password.code.added", code=code) for _ in range(5)]
        )

        async def all_sent() -> bool:
            return len(await sent(db)) == 5

        await wait_for(all_sent, "5 notifications sent")

        async def replacement_working() -> bool:  # its pool runs (owner host:pid:...)
            return (
                re.search(rf"worker pool \S+:{replacement}:\S+: \d+ request", sup.stderr())
                is not None
            )

        await wait_for(replacement_working, "the restarted process's worker pool")
        assert sup.stop() == 0, sup.stderr()[-3000:]
    log = sup.stderr()
    for pid in (replacement, other):
        assert not alive(pid), f"child {pid} still runs after the supervisor's SIGTERM"
    assert re.search(r"worker process 1 \(pid \d+\) ended with exit code 0", log), log[-3000:]
    assert re.search(r"worker process 2 \(pid \d+\) ended with exit code 0", log), log[-3000:]
    assert log.count("stopped: in-flight attempts finished and recorded") == 2


async def test_children_die_with_a_supervisor_killed_hard(
    db: Database, conninfo: str, tmp_path: Path
) -> None:
    with running(["run", "--processes", "2"], env_for(conninfo, tmp_path), tmp_path / "sup") as sup:

        async def both_started() -> bool:
            return len(children(sup)) == 2

        await wait_for(both_started, "two worker processes")
        pids = [p[-1] for p in children(sup).values()]
        assert all(alive(pid) for pid in pids)
        sup.proc.send_signal(signal.SIGKILL)  # no SIGTERM to forward: a crash
        assert sup.proc.wait(timeout=10) == -signal.SIGKILL

        async def gone() -> bool:
            return not any(alive(pid) for pid in pids)

        await wait_for(gone, "the children ending with their supervisor", seconds=10)


def test_until_idle_refuses_several_processes(conninfo: str, tmp_path: Path) -> None:
    result = tidings("run", "--until-idle", "--processes", "2", env=env_for(conninfo, tmp_path))
    assert result.returncode == 1
    assert "--until-idle runs in one process" in result.stderr


async def test_sigterm_while_the_children_start_is_a_clean_stop(
    db: Database, conninfo: str, tmp_path: Path
) -> None:
    with running(["run", "--processes", "2"], env_for(conninfo, tmp_path), tmp_path / "sup") as sup:

        async def both_started() -> bool:
            return len(children(sup)) == 2

        await wait_for(both_started, "two worker processes")
        # At once: the children are still importing, before they handle SIGTERM.
        assert sup.stop() == 0, sup.stderr()[-3000:]
    log = sup.stderr()
    assert log.count("ended with exit code 0") == 2, log[-3000:]
    assert "restarting" not in log


async def test_by_default_one_process_per_usable_core(
    db: Database, conninfo: str, tmp_path: Path
) -> None:
    """No --processes and no setting: as many worker processes as usable cores (one,
    without a supervisor, on a machine of one core)."""
    cores = usable_cores()
    with running(["run"], env_for(conninfo, tmp_path), tmp_path / "sup") as sup:

        async def pools_running() -> bool:
            return len(POOL.findall(sup.stderr())) == cores

        await wait_for(pools_running, f"{cores} worker pools")
        assert len(children(sup)) == (cores if cores > 1 else 0), sup.stderr()[-3000:]
        assert sup.stop() == 0, sup.stderr()[-3000:]


async def test_run_serve_with_several_processes_serves_the_api_from_the_first(
    db: Database, conninfo: str, tmp_path: Path
) -> None:
    """api.addr is one port: the first process serves it, the others only work (none
    dies of an address in use)."""
    port = free_port()
    env = {**env_for(conninfo, tmp_path), "TIDINGS_API_ADDR": f"127.0.0.1:{port}"}
    with running(["run", "--serve", "--processes", "2"], env, tmp_path / "sup") as sup:
        await serving(f"http://127.0.0.1:{port}", sup)

        async def both_pools() -> bool:
            return len(POOL.findall(sup.stderr())) == 2

        await wait_for(both_pools, "two worker pools")
        assert sup.stop() == 0, sup.stderr()[-3000:]
    log = sup.stderr()
    assert "died" not in log and "restarting" not in log, log[-3000:]
    assert log.count("ended with exit code 0") == 2, log[-3000:]


def test_a_cgroup_cpu_quota_caps_the_usable_cores(tmp_path: Path) -> None:
    """A container's CPU limit (cgroup v2 cpu.max, or v1 cfs_quota_us) counts, rounded down."""
    v2 = tmp_path / "v2"
    v2.mkdir()
    assert cgroup_cpu_quota(v2) is None, "no cgroup files: no limit"
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(v2) is None
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(v2) == 1.5
    assert usable_cores(v2) == 1
    (v2 / "cpu.max").write_text("50000 100000\n")
    assert usable_cores(v2) == 1, "at least one"
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    assert cgroup_cpu_quota(v1) == 2.0
    affinity = usable_cores(tmp_path / "none")  # no quota: the CPUs it may run on
    assert usable_cores(v1) == min(affinity, 2)
