"""The worker pool: request and retry workers, claiming, attempts, shutdown."""

from __future__ import annotations
