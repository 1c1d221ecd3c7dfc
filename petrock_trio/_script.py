"""The ``petrock-trio`` console script: the command line, or one line saying what it needs.

The engine installs without the command line's dependencies; the script is installed
either way, so without them it says which extra brings them instead of a traceback.
"""

from __future__ import annotations

import sys

__all__ = ["CLI_MODULES", "main"]

# What the command line imports beyond the engine: all of it comes with the `cli` extra.
CLI_MODULES = frozenset(
    {"click", "rich", "httpx", "starlette", "hypercorn", "prometheus_client", "anyio"}
)


def main() -> None:
    try:
        from ._cli import main as cli  # noqa: PLC0415 - its imports are what may be missing
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in CLI_MODULES:
            raise  # a bug, not an installation without the extra
        sys.exit(
            f"Error: petrock-trio needs the 'cli' extra ({missing} is not installed): "
            "pip install 'petrock-trio[cli]'"
        )
    cli()
