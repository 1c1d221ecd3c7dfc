"""Every program in examples/ runs as its header says, finishes on its own, and shows its point."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# What each program must print on stdout: the lines that carry its point.
EXPECTED = {
    "event_processing.py": [
        "o-1: reserved 1 x widget",
        "o-2: rejected: only 1 widget in stock",
        "o-3: reserved 5 x gadget",
        "notifications sent: 3",
        # The second serve replays: stock comes back and nothing is sent twice.
        "fulfilment replayed 5 messages, stock Stock(available={'widget': 1, 'gadget': 0})",
        "o-4: rejected: only 0 gadget in stock",
        "notifications sent: 1",
    ],
    "batch_job.py": [
        "batch 1: ",
        "every sale in exactly one batch: True",
        "still open: {}",
        "failures: 0",
    ],
    "external_integration.py": [
        "service up: circuit closed, health healthy",
        "service down: circuit open, health degraded (external service 'mail' unavailable",
        "service back: circuit closed, health healthy",
        "mails sent: 3, circuit opened",  # once, and again per failed probe (timing)
        "dead letter: message 4 after 1 attempt",
    ],
    "legacy_summary_worker.py": ["summary: Old workers poll."],
}
# Each program takes a few seconds; the bounds are generous for a loaded CI machine.
TIMEOUT = 60
SLOWEST = 30


def programs() -> list[str]:
    return sorted(p.name for p in EXAMPLES.glob("*.py") if p.name != "__init__.py")


def test_every_example_is_checked() -> None:
    assert programs() == sorted(EXPECTED)


@pytest.mark.parametrize("name", programs())
def test_header_says_how_to_run_it(name: str) -> None:
    docstring = ast.get_docstring(ast.parse((EXAMPLES / name).read_text())) or ""
    assert f"Run it:  python examples/{name}" in docstring


@pytest.mark.parametrize("name", programs())
def test_example_runs(name: str) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, f"examples/{name}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    for line in EXPECTED[name]:
        assert line in result.stdout, f"{line!r} not in:\n{result.stdout}{result.stderr}"
    assert elapsed < SLOWEST, f"{name} took {elapsed:.1f} s"
