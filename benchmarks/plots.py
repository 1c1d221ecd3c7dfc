"""The plots of docs/performance.md, from the figures saved by ``bench_*.py --save``.

Run it:  python benchmarks/plots.py   (after `just bench-full`; needs matplotlib)

Writes docs/perf-fanout.png (throughput against number of workers) and
docs/perf-latency.png (distribution of execute() to handler start, in-process and
across two processes).
"""

from __future__ import annotations

import sys
from typing import Any

import _common as c
import matplotlib as mpl
import orjson

mpl.use("Agg")
import matplotlib.pyplot as plt

DOCS = c.ROOT / "docs"


def load(name: str) -> dict[str, Any] | None:
    path = c.RESULTS / f"{name}.json"
    if not path.exists():
        print(f"{path.relative_to(c.ROOT)} is missing: run bench_{name}.py --save")
        return None
    data: dict[str, Any] = orjson.loads(path.read_bytes())
    return data


def fanout(data: dict[str, Any]) -> None:
    workers = sorted(int(n) for n in data["workers"])
    rates = [data["workers"][str(n)]["per_second"] for n in workers]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(workers, rates, marker="o", label="workers splitting 100 names")
    ax.set_xscale("log")
    ax.set_xticks(workers, [str(n) for n in workers])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("pattern workers")
    ax.set_ylabel("messages/s (whole log, all workers)")
    ax.set_title(f"Catch-up throughput vs workers ({data['size']:,} messages, SQLite)")
    for n, rate in zip(workers, rates, strict=True):
        ax.annotate(f"{rate:,.0f}", (n, rate), textcoords="offset points", xytext=(0, 6))
    ax.grid(visible=True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(DOCS / "perf-fanout.png", dpi=100)
    print("wrote docs/perf-fanout.png")


def latency(data: dict[str, Any]) -> None:
    stores = (("sqlite", "SQLite FULL"), ("postgres", "PostgreSQL (fsync=off)"))
    fig, (inproc, cross) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in stores:
        if key in data:
            ms = [min(s * 1000, 4.99) for s in data[key]["samples"]]
            inproc.hist(ms, bins=100, range=(0, 5), alpha=0.6, label=f"{label}: {len(ms)} samples")
    inproc.axvline(2, color="k", linestyle="--", linewidth=1, label="p50 target (2 ms)")
    inproc.set_xlabel("execute() to handler start (ms; the last bin holds longer ones)")
    inproc.set_ylabel("commands")
    inproc.set_title("In-process")
    inproc.legend()
    spacing = None
    for key, label in stores:
        two = data.get(key, {}).get("two_processes")
        if two is not None:
            spacing = two["spacing_ms"]
            ms = [min(s * 1000, 99.9) for s in two["samples"]]
            cross.hist(ms, bins=100, range=(0, 100), alpha=0.6, label=f"{label}: {len(ms)} samples")
    cross.set_xlabel("execute() to handler start (ms; the last bin holds longer ones)")
    cross.set_ylabel("commands")
    pause = f", {spacing[0]:g}-{spacing[1]:g} ms between commands" if spacing else ""
    cross.set_title(f"Across two processes{pause}")
    if spacing is not None:
        cross.legend()
    fig.suptitle("Live latency")
    fig.tight_layout()
    fig.savefig(DOCS / "perf-latency.png", dpi=100)
    print("wrote docs/perf-latency.png")


def main() -> int:
    fan, lat = load("fanout"), load("latency")
    if fan is not None:
        fanout(fan)
    if lat is not None:
        latency(lat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
