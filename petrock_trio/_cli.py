"""Command line: petrock-trio."""

from __future__ import annotations


def main() -> None:
    raise SystemExit("petrock-trio: the command line is not built yet")
