"""The current schema in one file: tidings/eventstore/schema.sql.

The migrations stay the way a database gets there (immutable, applied in
order); schema.sql is what a fresh install looks like, to read in one place.
It is generated from the migrations, never edited by hand: after adding or
merging a migration, regenerate it with

    python3 dev.py schema          # = .venv/bin/python -m tidings.eventstore.schema

which migrates a throwaway embedded PostgreSQL, dumps the tidings schema
(pg_dump --schema-only) and records the migrations it stands for. A test
builds one database from schema.sql and one from the migrations and compares
them (tests/test_schema.py).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import warnings
from importlib import resources
from pathlib import Path

import psycopg

from tidings.eventstore.migrate import Migration, migrate, migrations

SCHEMA_FILE = "schema.sql"
_HEADER = """\
-- tidings: the current schema, what a fresh install looks like
-- (migrations {first:04d}..{last:04d} applied).
--
-- GENERATED from tidings/eventstore/migrations by `python3 dev.py schema`:
-- never edit it by hand. Change the schema with a new migration, then
-- regenerate this file; tests/test_schema.py checks that the two agree.
"""


def schema_sql() -> str:
    """The packaged schema.sql."""
    return resources.files("tidings.eventstore").joinpath(SCHEMA_FILE).read_text("utf-8")


def pg_dump_path() -> str:
    """pg_dump of the embedded PostgreSQL (pgserver), else the one on PATH."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pgserver warns at import without XDG_RUNTIME_DIR
        try:
            from pgserver._commands import POSTGRES_BIN_PATH

            bundled = Path(POSTGRES_BIN_PATH) / "pg_dump"
            if bundled.exists():
                return str(bundled)
        except ImportError:  # pragma: no cover - pgserver is a dependency
            pass
    found = shutil.which("pg_dump")
    if found is None:
        raise RuntimeError("pg_dump not found (neither pgserver's nor on PATH)")
    return found


def dump_schema(conninfo: str) -> str:
    """The tidings schema of a database as pg_dump writes it, without version lines."""
    out = subprocess.run(
        [pg_dump_path(), "--schema-only", "--schema=tidings", "--no-owner", "--no-privileges",
         conninfo],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    lines = [line for line in out.splitlines() if not line.startswith("-- Dumped")]
    return "\n".join(lines).strip() + "\n"


def render(dump: str, applied: list[Migration]) -> str:
    """schema.sql: the header, the dump, and the rows saying which migrations it stands for."""
    rows = ",\n".join(
        f"    ({m.version}, '{m.name}', '{m.checksum}')" for m in applied
    )  # names match \w+, checksums are hex: nothing to quote
    return (
        _HEADER.format(first=applied[0].version, last=applied[-1].version)
        + "\n"
        + dump
        + "\n-- The migrations this schema stands for: `tidings migrate` finds nothing to do.\n"
        + "INSERT INTO tidings.schema_migrations (version, name, checksum) VALUES\n"
        + rows
        + ";\n"
    )


async def install(conn: psycopg.AsyncConnection[object]) -> None:
    """Build the schema from schema.sql into an empty database."""
    await conn.execute(schema_sql().encode())


async def _generate() -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import get_server

    root = Path(tempfile.mkdtemp(prefix="tidings-schema-"))
    server = get_server(root / "pgdata", cleanup_mode="delete")
    try:
        conninfo = server.get_uri()
        async with await psycopg.AsyncConnection.connect(conninfo) as conn:
            await migrate(conn)
        return render(dump_schema(conninfo), migrations())
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate tidings/eventstore/schema.sql.")
    parser.add_argument("--check", action="store_true", help="only say whether it is current")
    args = parser.parse_args(argv)
    target = Path(__file__).with_name(SCHEMA_FILE)
    text = asyncio.run(_generate())
    current = target.read_text("utf-8") if target.exists() else ""
    if args.check:
        print(f"{target}: {'current' if current == text else 'OUT OF DATE: python3 dev.py schema'}")
        return 0 if current == text else 1
    target.write_text(text, "utf-8")
    print(f"wrote {target} ({'unchanged' if current == text else 'updated'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
