"""One libpq connection driven by Trio.

Trio drives libpq directly through psycopg's documented low-level layer,
``psycopg.pq``: each connection is in non-blocking mode, and the task that runs a
query waits on the connection's socket with ``trio.lowlevel.wait_readable`` /
``wait_writable``. Measured against a server on the same machine, a round trip
(``SELECT 1``) takes about 25 µs that way against about 80 µs for a blocking psycopg
connection behind ``trio.to_thread`` (and two to four times that on a busy machine);
and cancellation is plain Trio: the waiting task is the one cancelled, nothing runs
on in a thread. psycopg's own async connection is built on
asyncio, and its waiting functions are internal, so neither is used.

Every operation is one pipeline: its statements and a Sync go out together (one
round trip) and run as one implicit transaction, committed at the Sync or rolled
back whole if any statement fails. Statements are prepared on a connection's first
use of them, inside the same pipeline. A cancel scope that fires mid-operation sends
PostgreSQL a cancel request, drains the connection back to idle within
``abort_grace`` seconds and keeps it; a connection that cannot be brought back is
closed, and the next operation opens a new one.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import psycopg
import psycopg.errors
import trio
from psycopg import pq

from .._errors import LeaseLost, OutcomeUnknown, StoreError
from .._logging import get_logger
from ._pgbinary import Statement
from ._pgsql import LEASE_LOST

__all__ = ["Connection"]

_log = get_logger("petrock_trio")

# libpq 17 added a non-blocking cancel request; older ones block, so they run in a thread.
_ASYNC_CANCEL: Final = pq.version() >= 170000  # noqa: PLR2004 - libpq's version number


class Connection:
    """One non-blocking libpq connection; one operation at a time (callers hold a lock)."""

    def __init__(self, pgconn: pq.abc.PGconn, *, abort_grace: float) -> None:
        self._pg: pq.abc.PGconn | None = pgconn
        self._fd = pgconn.socket
        self.abort_grace = abort_grace
        self.backend_pid = pgconn.backend_pid
        self.async_cancel = _ASYNC_CANCEL
        # A pipeline was sent and its Sync has not been read back yet.
        self._awaiting_sync = False
        # Statements prepared on this connection: SQL -> name.
        self._prepared: dict[bytes, bytes] = {}
        self._names = itertools.count()

    @classmethod
    async def connect(cls, conninfo: str, *, abort_grace: float) -> Connection:
        # A blocking connect in a thread: libpq resolves host names synchronously even
        # in its non-blocking connect, and this happens once per connection.
        try:
            pgconn = await trio.to_thread.run_sync(
                pq.PGconn.connect, conninfo.encode(), abandon_on_cancel=True
            )
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
        if pgconn.status != pq.ConnStatus.OK:
            message = pgconn.get_error_message()
            pgconn.finish()
            raise StoreError(f"cannot connect to PostgreSQL: {message}") from (
                psycopg.OperationalError(message)
            )
        pgconn.nonblocking = 1
        # Notices (CREATE TABLE IF NOT EXISTS ... skipping) are not for the application.
        pgconn.notice_handler = _ignore_notice
        return cls(pgconn, abort_grace=abort_grace)

    @property
    def closed(self) -> bool:
        return self._pg is None

    def close(self) -> None:
        pg, self._pg = self._pg, None
        if pg is not None:
            # Wake any task still waiting on the socket before its number can be reused.
            trio.lowlevel.notify_closing(self._fd)
            pg.finish()

    def _conn(self) -> pq.abc.PGconn:
        if self._pg is None:
            raise StoreError("the PostgreSQL connection is closed")
        return self._pg

    async def run(
        self, statements: Sequence[Statement], *, prepare: bool = True
    ) -> list[pq.abc.PGresult]:
        """Run ``statements`` as one pipeline: one round trip, one implicit transaction.

        Returns one result per statement. Raises :class:`StoreError` for the first
        statement that failed (the transaction is then rolled back whole). With
        ``prepare``, each statement is prepared on its first run on this connection,
        in the same pipeline: later runs skip parsing and planning (about 20 µs of a
        50 µs round trip for ``max(id)``).
        """
        pg = self._conn()
        try:
            sent, preparing = self._send(statements, prepare=prepare)
        except psycopg.Error as exc:
            self.close()
            raise StoreError(f"PostgreSQL: {exc}") from exc
        results: list[pq.abc.PGresult] = []
        try:
            await self._flush()
            await self._collect(results)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                drained = await self._abort(results)
            self._remember(sent, preparing, results)
            complete = len(results) == len(sent)
            if not (drained and complete and not any(map(_failed, results))):
                raise
            # The cancel came too late: the server had already done (and committed) the
            # work, so report it, as Trio does for an operation that completes before a
            # cancel can take effect. The caller's scope stays cancelled.
        except BaseException as exc:
            # The connection failed, or an interrupt: stop the server's work and bring
            # the connection back to idle, or drop it.
            with trio.CancelScope(shield=True):
                await self._abort(results)
            self._remember(sent, preparing, results)
            if isinstance(exc, psycopg.Error):
                raise OutcomeUnknown(
                    f"PostgreSQL connection failed mid-transaction (it may or may not have"
                    f" committed): {exc}"
                ) from exc
            raise
        else:
            pg.exit_pipeline_mode()
            self._remember(sent, preparing, results)
        for res in results:
            if res.status == pq.ExecStatus.FATAL_ERROR:
                error = _error(res)
                if res.error_field(pq.DiagnosticField.SQLSTATE) == LEASE_LOST:
                    detail = res.error_field(pq.DiagnosticField.MESSAGE_DETAIL) or b"[]"
                    raise LeaseLost(tuple(json.loads(detail))) from error
                raise StoreError(f"PostgreSQL: {error}") from error
        return [res for what, res in zip(sent, results, strict=True) if what is None]

    def _send(
        self, statements: Sequence[Statement], *, prepare: bool
    ) -> tuple[list[bytes | None], dict[bytes, bytes]]:
        """Queue the pipeline's messages and its Sync in libpq.

        Returns, per message, the SQL it prepares or None for a statement's execution,
        and the names given to statements prepared by this pipeline.
        """
        pg = self._conn()
        sent: list[bytes | None] = []
        preparing: dict[bytes, bytes] = {}
        pg.enter_pipeline_mode()
        for sql, params in statements:
            values = [value for _, value in params]
            types = [oid for oid, _ in params]
            formats = [pq.Format.BINARY] * len(params)
            if not prepare:
                pg.send_query_params(sql, values, types, formats, pq.Format.BINARY)
                sent.append(None)
                continue
            name = self._prepared.get(sql) or preparing.get(sql)
            if name is None:
                name = preparing[sql] = b"petrock_%d" % next(self._names)
                pg.send_prepare(name, sql, types)
                sent.append(sql)
            pg.send_query_prepared(name, values, formats, pq.Format.BINARY)
            sent.append(None)
        pg.pipeline_sync()
        self._awaiting_sync = True
        return sent, preparing

    def _remember(
        self,
        sent: Sequence[bytes | None],
        preparing: dict[bytes, bytes],
        results: Sequence[pq.abc.PGresult],
    ) -> None:
        """Record the statements whose preparation succeeded (a failed pipeline skips some)."""
        for what, res in zip(sent, results, strict=False):
            if what is not None and res.status == pq.ExecStatus.COMMAND_OK:
                self._prepared[what] = preparing[what]

    async def notifications(self) -> list[pq.PGnotify]:
        """Wait until at least one notification (``LISTEN``) has arrived; return them all."""
        pg = self._conn()
        while True:
            try:
                pg.consume_input()
            except psycopg.Error as exc:
                self.close()
                raise StoreError(f"PostgreSQL: {exc}") from exc
            found = []
            while (notify := pg.notifies()) is not None:
                found.append(notify)
            if found:
                return found
            await trio.lowlevel.wait_readable(self._fd)

    async def _flush(self) -> None:
        pg = self._conn()
        while pg.flush():
            # libpq asks to wait for either direction: the server may be blocked sending
            # us results while we are blocked sending it a large batch.
            async with trio.open_nursery() as nursery:
                for wait in (trio.lowlevel.wait_readable, trio.lowlevel.wait_writable):
                    nursery.start_soon(_first_of, wait, self._fd, nursery.cancel_scope)
            pg.consume_input()

    async def _collect(self, results: list[pq.abc.PGresult]) -> None:
        """Read results into ``results`` up to the pipeline's end (its Sync).

        Results go into the caller's list so that a read interrupted by a cancel can be
        resumed where it stopped.
        """
        pg = self._conn()
        ended = False
        while self._awaiting_sync:
            while pg.is_busy():
                await trio.lowlevel.wait_readable(self._fd)
                pg.consume_input()
            res = pg.get_result()
            if res is None:  # the end of one statement's results
                if ended or pg.status != pq.ConnStatus.OK:
                    # Two ends in a row: libpq and this loop disagree about the
                    # pipeline. Give the connection up rather than spin on it.
                    raise psycopg.OperationalError(
                        pg.get_error_message() or "pipeline results out of step"
                    )
                ended = True
                continue
            ended = False
            if res.status == pq.ExecStatus.PIPELINE_SYNC:
                self._awaiting_sync = False
            else:
                results.append(res)

    async def _abort(self, results: list[pq.abc.PGresult]) -> bool:
        """Cancel the server's work and drain the pipeline's results into ``results``.

        True if the connection is back to idle; otherwise it is closed (within
        ``abort_grace`` seconds whatever the server does) and the outcome on the
        server is unknown.
        """
        with trio.move_on_after(self.abort_grace):
            try:
                await self._cancel_request()
                await self._flush()
                await self._collect(results)
                pg = self._conn()
                pg.exit_pipeline_mode()
                if pg.transaction_status == pq.TransactionStatus.IDLE:
                    return True
            except (psycopg.Error, StoreError, OSError) as exc:
                _log.debug("petrock.postgres_abort_failed", error=str(exc))
        self.close()
        return False

    async def _cancel_request(self) -> None:
        # Waiting for the cancel request to complete matters: once the server has
        # received it, it can no longer hit a later statement on this connection.
        pg = self._conn()
        if not self.async_cancel:
            cancel = pg.get_cancel()
            await trio.to_thread.run_sync(cancel.cancel, abandon_on_cancel=True)
            return
        request = pg.cancel_conn()
        try:
            request.start()
            while True:
                status = request.poll()
                if status == pq.PollingStatus.OK:
                    return
                if status == pq.PollingStatus.READING:
                    await trio.lowlevel.wait_readable(request.socket)
                elif status == pq.PollingStatus.WRITING:
                    await trio.lowlevel.wait_writable(request.socket)
                else:
                    raise psycopg.OperationalError(request.get_error_message())
        finally:
            request.finish()


async def _first_of(
    wait: Callable[[int], Awaitable[object]], fd: int, scope: trio.CancelScope
) -> None:
    await wait(fd)
    scope.cancel()


def _ignore_notice(res: pq.abc.PGresult) -> None:
    pass


def _failed(res: pq.abc.PGresult) -> bool:
    return res.status in (pq.ExecStatus.FATAL_ERROR, pq.ExecStatus.PIPELINE_ABORTED)


def _error(res: pq.abc.PGresult) -> psycopg.Error:
    """The psycopg exception for a failed result, with its SQLSTATE class."""
    message = res.get_error_message().strip()
    sqlstate = res.error_field(pq.DiagnosticField.SQLSTATE)
    cls: type[psycopg.Error] = psycopg.DatabaseError
    if sqlstate is not None:
        with contextlib.suppress(KeyError):  # an SQLSTATE newer than psycopg
            cls = psycopg.errors.lookup(sqlstate.decode())
    return cls(message)
