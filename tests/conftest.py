"""Fixtures of the engine's tests: a PostgreSQL server for the stores that need one."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from petrock_trio.stores import Store, open_store
from tests.postgres_server import PostgresServer, find_binaries, running_server

_DATABASE = "petrock"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole session, started on first use.

    Skips (with the reason) where psycopg or the server binaries are missing; a server
    that is present but fails to start is an error, not a skip.
    """
    psycopg = pytest.importorskip(
        "psycopg", reason="psycopg is not installed (the `postgres` extra)"
    )
    bindir = find_binaries()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found under "
            "/usr/lib/postgresql/*/bin or on PATH; install PostgreSQL to run these tests "
            "(Debian: apt-get install postgresql)"
        )
    with running_server(bindir) as server:
        with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {_DATABASE}")
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty log: its own schema, through ``search_path``.

    A schema costs a millisecond where a database costs a tenth of a second or more,
    and it checks on the way that the store keeps to the schema it is given.
    """
    import psycopg  # noqa: PLC0415 - only where the server exists, so its absence skips
    from psycopg import sql  # noqa: PLC0415

    schema = f"test_{uuid.uuid4().hex[:16]}"
    url = postgres_server.url(_DATABASE)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    yield url + "&options=" + quote(f"-c search_path={schema}")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(params=["memory", "file", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store of each kind: in memory, a SQLite file, PostgreSQL."""
    if request.param == "postgres":
        # Only this parameter needs a server; where there is none it skips.
        return str(request.getfixturevalue("postgres_url"))
    return ":memory:" if request.param == "memory" else str(tmp_path / "store.db")


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """The store at ``store_url``, opened."""
    s = open_store(store_url)
    await s.open()
    yield s
    await s.aclose()
