"""Command line: expected failures end in one ``Error: ...`` line and a documented exit code.

Every command lists the codes in its ``--help`` (``EXIT_CODES``). A failure the
command line expects (a database that is not one, a port in use, bad configuration)
is one line on stderr, never a traceback; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import errno
import sqlite3
import sys
from collections.abc import Callable
from typing import Any, Final

import click
import trio

from ._errors import ConfigurationError, StoreError
from ._retry import leaves

__all__ = [
    "EXIT_CODES",
    "BadConfiguration",
    "CannotListen",
    "NotOnLoopback",
    "StoreFailed",
    "run_trio",
]

EXIT_CODES: Final = """\b
Exit codes:
  0    done
  1    the operation failed: an error answer from the app, an app that cannot
       be reached, a re-drive that failed again, a demo that did not finish
  2    bad usage: unknown options, bad values (a malformed database URL,
       postgresql:// without psycopg), serving beyond loopback without a token
  3    the database failed: it cannot be opened, read or written (not a
       database, not a petrock_trio database, unreadable, read-only, disk full)
  4    the HTTP API cannot listen on the address (serve, demo --serve)
  130  interrupted before serving started
"""

# What binding a listening socket fails with when the address is taken or not ours.
_CANNOT_BIND: Final = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL})


class _OneLine(click.ClickException):
    """``Error: ...`` on stderr, in one line, and the exit code of the subclass."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()) or "failed")


class BadConfiguration(_OneLine):
    """A value the command line passed on is refused by what it configures."""

    exit_code = 2


class NotOnLoopback(_OneLine):
    """Serving beyond loopback without what that needs (a token)."""

    exit_code = 2


class StoreFailed(_OneLine):
    """The database cannot be opened, read or written."""

    exit_code = 3


class CannotListen(_OneLine):
    """The HTTP API cannot listen on its address."""

    exit_code = 4


def _as_refusal(exc: BaseException) -> click.ClickException | None:
    """The one-line error for an expected failure; None for a bug."""
    if isinstance(exc, click.ClickException):
        return exc
    if isinstance(exc, ConfigurationError):
        return BadConfiguration(str(exc))
    if isinstance(exc, StoreError | sqlite3.Error):
        return StoreFailed(f"database error: {exc}")
    if isinstance(exc, OSError) and exc.errno in _CANNOT_BIND:
        return CannotListen(f"cannot listen: {exc.strerror or exc}")
    if isinstance(exc, OSError):
        return StoreFailed(str(exc) or type(exc).__name__)
    return None


def run_trio(fn: Callable[..., Any], *args: Any) -> Any:
    """``trio.run(fn, *args)``; an expected failure ends the command in one line.

    Store errors (:class:`StoreError` and its subclasses, ``sqlite3`` errors,
    ``OSError``) exit 3, a listening socket's address in use 4, a
    :class:`ConfigurationError` 2, alone or grouped by nurseries, as ``Error: ...``
    with no traceback; anything else is a bug and keeps its traceback.
    """
    try:
        return trio.run(fn, *args)
    except KeyboardInterrupt:  # before the app's own signal handling was in place
        sys.exit(130)
    except BaseException as exc:
        if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves(exc)):
            # Ctrl-C while a nursery was starting up: an interrupt all the same.
            sys.exit(130)
        refusals = [_as_refusal(leaf) for leaf in leaves(exc)]
        if not refusals or any(r is None for r in refusals):
            raise
        first = refusals[0]
        assert first is not None
        raise first from None
