"""A PostgreSQL log opened only to read it: tools and the command line's reading commands.

The writer's way of opening (``PostgresStore``) creates the schema. This one creates
nothing: its sessions start with ``default_transaction_read_only`` on, so the server
refuses any write whatever the client sends, and a database (or schema, through
``search_path``) without the log's tables is refused with :class:`ForeignDatabase`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import trio
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .._errors import ForeignDatabase, StoreError
from ._base import LOG_TABLES
from ._pgbinary import Statement, get_text, texts
from ._postgres import PostgresStore

__all__ = ["ReadOnlyPostgresStore"]

# The tables the statements would find: the first of that name on the search_path.
_MISSING: Final = b"""
SELECT t.name FROM unnest($1::text[]) WITH ORDINALITY AS t(name, n)
WHERE NOT EXISTS (
    SELECT 1 FROM pg_catalog.pg_class c
    WHERE c.relname = t.name AND c.relkind IN ('r', 'p') AND pg_catalog.pg_table_is_visible(c.oid)
)
ORDER BY t.n
"""


class ReadOnlyPostgresStore(PostgresStore):
    """The reading half of :class:`PostgresStore`, in read-only sessions.

    Every write (commits, leases) raises :class:`StoreError` before it is sent.
    """

    def __init__(self, url: str, *, poll_interval: float = 5.0, abort_grace: float = 5.0) -> None:
        super().__init__(url, poll_interval=poll_interval, abort_grace=abort_grace)
        # Added to the URL's own options (a search_path, say), not in their place.
        options = conninfo_to_dict(self._conninfo).get("options") or ""
        self._conninfo = make_conninfo(
            self._conninfo, options=f"{options} -c default_transaction_read_only=on".strip()
        )

    def __repr__(self) -> str:
        return f"<ReadOnlyPostgresStore {self.url!r} open={self._open}>"

    async def open(self) -> int:
        self._open = True
        try:
            res = await self._read((_MISSING, [texts(LOG_TABLES)]))
        except BaseException:
            await self.aclose()
            raise
        missing = tuple(get_text(res, r, 0) for r in range(res.ntuples))
        if missing:
            await self.aclose()
            raise ForeignDatabase(self.url, missing)
        return await self.head()

    async def _write(
        self,
        statements: Sequence[Statement],  # noqa: ARG002
        *,
        prepare: bool = True,  # noqa: ARG002
    ) -> list[pq.abc.PGresult]:
        await trio.lowlevel.checkpoint()
        raise StoreError(f"{self.url} is opened read-only: nothing is written")
