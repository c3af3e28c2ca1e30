"""The worker pool: request and retry workers, claiming, attempts, shutdown."""

from __future__ import annotations

from tidings.workers.attempt import AttemptRunner, Outcome, UserLookup
from tidings.workers.pool import WorkerPool, default_owner
from tidings.workers.queue import Claimed, PendingQueue

__all__ = [
    "AttemptRunner",
    "Claimed",
    "Outcome",
    "PendingQueue",
    "UserLookup",
    "WorkerPool",
    "default_owner",
]
