"""CPU time of processes and of the whole machine, read from /proc (Linux).

Where a measurement spans several processes (benchmark members, the PostgreSQL
server), their CPU seconds over the run say whether the machine's cores were the
limit, and who used them. Elsewhere than Linux every figure is ``None``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

_PROC = Path("/proc")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, CPU ticks in user and system mode) of ``pid``, or None if gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces: split after it.
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def server_pids(url: str) -> int | None:
    """The postmaster's pid of a server on a Unix socket in its cluster's directory (as
    tests/postgres_server.py starts one: ``<dir>/data/postmaster.pid``); else None."""
    hosts = parse_qs(urlsplit(url).query).get("host", [])
    if not hosts:
        return None
    try:
        first = (Path(hosts[0]) / "data" / "postmaster.pid").read_text().split("\n", 1)[0]
        return int(first)
    except (OSError, ValueError):
        return None


def _machine_busy() -> int | None:
    """Ticks all cores spent on anything but idle and I/O wait since boot."""
    try:
        fields = (_PROC / "stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[1:9])
    return user + nice + system + irq + softirq + steal


def sample(pids: list[int], server: int | None) -> dict[str, Any]:
    """CPU ticks so far: of ``pids``, of the server and its children, of the machine."""
    members = {pid: stat[1] for pid in pids if (stat := _stat(pid)) is not None}
    servers: dict[int, int] | None = None
    if server is not None:
        servers = {}
        for entry in _PROC.iterdir():
            if entry.name.isdigit():
                stat = _stat(int(entry.name))
                if stat is not None and (stat[0] == server or int(entry.name) == server):
                    servers[int(entry.name)] = stat[1]
    return {"members": members, "server": servers, "machine": _machine_busy()}


def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float | None] | None:
    """CPU seconds between two samples: the members, the server (processes that
    started meanwhile count from zero; those that ended meanwhile are missed), the
    rest of the machine; None without /proc."""
    if before["machine"] is None or after["machine"] is None:
        return None

    def spent(key: str) -> float:
        old: dict[int, int] = before[key]
        new: dict[int, int] = after[key]
        return sum(t - old.get(pid, 0) for pid, t in new.items()) / _TICK

    members = spent("members")
    server = None if before["server"] is None or after["server"] is None else spent("server")
    machine = (after["machine"] - before["machine"]) / _TICK
    return {
        "members": members,
        "server": server,
        "rest": machine - members - (server or 0.0),
    }


def text(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds:.1f}"
