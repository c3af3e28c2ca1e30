"""The embedded PostgreSQL (pgserver) used when no database.url is set."""

from __future__ import annotations

import logging
import subprocess
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

from tidings.eventstore.errors import EmbeddedDatabaseError

log = logging.getLogger(__name__)

DATABASE_NAME = "tidings"


def start_embedded(data_dir: Path) -> str:
    """Start (or join) the embedded server in `data_dir`; return a conninfo for its database.

    The folder is created on first use and reused afterwards. The server keeps
    running while any process uses it and stops when the last one exits.
    Blocking: call it from a thread in async code.
    """
    with warnings.catch_warnings():
        # Imported on use: at import pgserver looks up the runtime directory,
        # which warns where XDG_RUNTIME_DIR is unset (as for root in a container).
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import get_server

    data_dir = data_dir.expanduser().resolve()
    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        fresh = not (data_dir / "PG_VERSION").exists()
        log.info(
            "%s the embedded PostgreSQL in %s", "initialising" if fresh else "starting", data_dir
        )
        server = get_server(data_dir, cleanup_mode="stop")
        uri: str = server.get_uri()
    except (OSError, subprocess.SubprocessError, AssertionError) as exc:
        log_file = data_dir / "log"
        raise EmbeddedDatabaseError(
            f"the embedded PostgreSQL did not start in {data_dir}: {exc}; see {log_file}, "
            "or set database.url (TIDINGS_DATABASE_URL) to use your own server",
            data_dir=str(data_dir),
        ) from exc
    _ensure_database(uri)
    return server.get_uri(DATABASE_NAME)


def _ensure_database(admin_uri: str) -> None:
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
        ).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))
