"""A throwaway PostgreSQL server for the test session.

``initdb`` and ``pg_ctl`` build and start a cluster in a temporary directory. The
server listens only on a Unix socket in that directory, so there is no port to
collide with another run. initdb refuses to run as root: as root the server runs as
the ``postgres`` system user (which Debian's packages create), in a directory
handed to that user.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import attrs

__all__ = ["PostgresServer", "find_binaries", "running_server"]

# The socket file is named after the port even when TCP is off; any number will do.
_PORT = 5432
_START_TIMEOUT = 60  # seconds; pg_ctl -w waits for the server to accept connections


@attrs.frozen
class PostgresServer:
    socket_dir: Path
    user: str

    def url(self, database: str) -> str:
        return f"postgresql:///{database}?host={self.socket_dir}&port={_PORT}&user={self.user}"


def find_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: Debian's newest version, or PATH."""
    debian = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    candidates = sorted(debian, key=lambda p: int(p.parent.name), reverse=True)
    on_path = shutil.which("initdb")
    if on_path is not None:
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    return None


def _as_server_user(user: str | None, argv: list[str]) -> list[str]:
    return argv if user is None else ["runuser", "-u", user, "--", *argv]


@contextmanager
def running_server(bindir: Path) -> Iterator[PostgresServer]:
    """Start a server in a fresh temporary directory; stop it and remove the directory."""
    run_as: str | None = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError as exc:
            raise RuntimeError("running as root, but there is no `postgres` user") from exc
        run_as = "postgres"
    # Short and directly under the system temp dir: a socket path has a length limit,
    # and the server user must be able to reach it.
    base = Path(tempfile.mkdtemp(prefix="petrock-pg-"))
    data = base / "data"
    pg_ctl = [str(bindir / "pg_ctl"), "--pgdata", str(data)]
    try:
        if run_as is not None:
            shutil.chown(base, user=run_as)
        _run(
            run_as,
            [
                *(str(bindir / "initdb"), "--pgdata", str(data), "--auth", "trust"),
                *("--username", "postgres", "--encoding", "UTF8", "--locale", "C", "--no-sync"),
            ],
            base,
        )
        options = [
            "-c listen_addresses=''",
            f"-c unix_socket_directories='{base}'",
            f"-c port={_PORT}",
            # A throwaway cluster: durability costs time and protects nothing here.
            "-c fsync=off",
            "-c full_page_writes=off",
            "-c synchronous_commit=off",
        ]
        _run(
            run_as,
            [
                *(*pg_ctl, "--log", str(base / "server.log"), "--options", " ".join(options)),
                *("--wait", "--timeout", str(_START_TIMEOUT), "start"),
            ],
            base,
        )
        stop = _as_server_user(run_as, [*pg_ctl, "--mode", "immediate", "--wait", "stop"])
        watchdog = _start_watchdog(stop, base)
        try:
            yield PostgresServer(socket_dir=base, user="postgres")
        finally:
            watchdog.kill()
            watchdog.wait()
            subprocess.run(stop, check=False, capture_output=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _start_watchdog(stop: list[str], base: Path) -> subprocess.Popen[bytes]:
    """Stops the server if this process dies without tearing the fixture down.

    A test run killed (a timeout, Ctrl-C twice) would otherwise leave a server
    running. The watchdog has its own session, so that a signal to this process
    group does not take it down with us.
    """
    script = (
        f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done;"
        f' "$@" >/dev/null 2>&1; rm -rf {shlex.quote(str(base))}'
    )
    return subprocess.Popen(
        ["sh", "-c", script, "watchdog", *stop],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _run(run_as: str | None, argv: list[str], base: Path) -> None:
    done = subprocess.run(_as_server_user(run_as, argv), check=False, capture_output=True)
    if done.returncode != 0:
        log = base / "server.log"
        server_log = log.read_text(errors="replace") if log.exists() else ""
        output = (done.stdout + done.stderr).decode(errors="replace").strip()
        raise RuntimeError(
            f"{Path(argv[0]).name} failed ({done.returncode}): {output}\n{server_log}"
        )


@contextmanager
def trial_database() -> Iterator[str]:
    """A PostgreSQL URL for a long trial: PETROCK_TEST_PG, or a throwaway server started
    here with a database ``petrock``."""
    import psycopg  # noqa: PLC0415 - the `postgres` extra

    given = os.environ.get("PETROCK_TEST_PG")
    if given:
        yield given
        return
    bindir = find_binaries()
    if bindir is None:
        raise SystemExit("PostgreSQL (initdb, pg_ctl) is not installed")
    with running_server(bindir) as server:
        with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE petrock")
        yield server.url("petrock")


def fresh_schema(url: str, prefix: str) -> str:
    """``url`` with a new, empty schema of its own as the search path: a fresh log."""
    import psycopg  # noqa: PLC0415 - the `postgres` extra

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=" + quote(f"-c search_path={schema}")
