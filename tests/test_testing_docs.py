"""docs/testing.md as a new user meets it: its test files pass in a fresh project
with only the documented pytest configuration, and it documents the whole kit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import petrock_trio as pt
import petrock_trio.testing
import petrock_trio.testing._plugin
from petrock_trio.stores import Store, open_store
from petrock_trio.testing import FakeService, FaultyStore, WorkerHarness, strategies

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "testing.md"
TEST_BLOCK = re.compile(r"^```python (test_\w+\.py)\n(.*?)^```", re.MULTILINE | re.DOTALL)
TOML_BLOCK = re.compile(r"^```toml\n(.*?)^```", re.MULTILINE | re.DOTALL)
TEST_FUNCTION = re.compile(r"^(?:async )?def (test_\w+)", re.MULTILINE)


def guide_test_files() -> dict[str, str]:
    return dict(TEST_BLOCK.findall(GUIDE.read_text()))


def documented_configuration() -> str:
    (toml,) = TOML_BLOCK.findall(GUIDE.read_text())
    return str(toml)


def write_project(directory: Path, configuration: str) -> int:
    """The guide's test files and ``configuration`` as pyproject.toml in ``directory``
    (outside the repository: none of its conftest or settings apply); how many tests."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(configuration)
    count = 0
    for name, code in guide_test_files().items():
        (directory / name).write_text(code)
        count += len(TEST_FUNCTION.findall(code))
    return count


def run_pytest(python: str, directory: Path, *files: str) -> subprocess.CompletedProcess[str]:
    # Nothing of this run's environment that would not be in a user's shell.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "HYPOTHESIS_PROFILE", "PYTEST_ADDOPTS", "VIRTUAL_ENV"}
    }
    return subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


class TestAFreshProject:
    """The guide's test files, with its pytest configuration and nothing else."""

    def test_the_configuration_is_pytest_trio_mode(self) -> None:
        assert documented_configuration() == "[tool.pytest.ini_options]\ntrio_mode = true\n"

    def test_the_examples_pass(self, tmp_path: Path) -> None:
        assert not tmp_path.is_relative_to(ROOT)
        count = write_project(tmp_path / "project", documented_configuration())
        assert count >= 6
        result = run_pytest(sys.executable, tmp_path / "project")
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        summary = result.stdout.strip().splitlines()[-1]
        assert re.fullmatch(rf"{count} passed in [\d.]+s", summary), output

    def test_the_first_example_is_short(self) -> None:
        code = guide_test_files()["test_greeter.py"]
        assert len([line for line in code.splitlines() if line.strip()]) < 20

    def test_without_trio_mode_async_tests_do_not_run(self, tmp_path: Path) -> None:
        # What the guide warns about, so that its warning stays true.
        write_project(tmp_path / "project", "[tool.pytest.ini_options]\n")
        result = run_pytest(sys.executable, tmp_path / "project", "test_greeter.py")
        assert result.returncode != 0
        assert "async def functions are not natively supported" in result.stdout
        assert " passed" not in result.stdout


@pytest.mark.slow
def test_the_examples_pass_with_only_the_testing_extra(tmp_path: Path) -> None:
    """A new venv with ``pip install 'petrock-trio[testing]'``, as the guide says."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", f"{ROOT}[testing]"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    # Only the testing extra: none of the HTTP, command-line or development packages.
    probe = "import importlib.util as u; print([m for m in MODULES if u.find_spec(m)])"
    absent = subprocess.run(
        [python, "-c", probe.replace("MODULES", repr(("starlette", "click", "mypy")))],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert absent.stdout.strip() == "[]"
    count = write_project(tmp_path / "project", documented_configuration())
    result = run_pytest(python, tmp_path / "project")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{count} passed" in result.stdout


FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _spans() -> set[str]:
    """Every identifier that appears in code font or a code block of the guide."""
    text = GUIDE.read_text()
    prose = FENCED.sub(" ", text)
    code = [*re.findall(r"`([^`]+)`", prose), *FENCED.findall(text)]
    return set(re.findall(r"\w+", " ".join(code)))


def _public(obj: object) -> set[str]:
    return {n for n in dir(obj) if not n.startswith("_")}


def _instance_attributes() -> dict[str, set[str]]:
    harness = WorkerHarness(pt.App(), pt.PatternWorker("w"), None)
    store = FaultyStore(open_store(":memory:"))
    return {
        "WorkerHarness": _public(WorkerHarness) | _public(harness),
        "FakeService": _public(FakeService) | _public(FakeService()),
        # The fault scripts and counters: the rest is the Store protocol, passed on.
        "FaultyStore": (_public(FaultyStore) | _public(store)) - _public(Store) - {"url"},
    }


class TestTheGuideDocumentsTheKit:
    """Every public name of petrock_trio.testing is in docs/testing.md."""

    def test_public_names(self) -> None:
        fixtures = {
            name
            for name, value in vars(petrock_trio.testing._plugin).items()
            if hasattr(value, "_fixture_function_marker")
            or "fixture" in type(value).__name__.lower()
        }
        assert fixtures == {"petrock_harness", "petrock_database", "fake_service"}
        names = {*petrock_trio.testing.__all__, *strategies.__all__, *fixtures}
        assert sorted(names - _spans()) == []

    @pytest.mark.parametrize("owner", ["WorkerHarness", "FakeService", "FaultyStore"])
    def test_methods_and_attributes(self, owner: str) -> None:
        assert sorted(_instance_attributes()[owner] - _spans()) == []

    @pytest.mark.parametrize("owner", ["HandlerCall", "FakeCall", "Throughput"])
    def test_fields(self, owner: str) -> None:
        cls = getattr(petrock_trio.testing, owner)
        assert sorted(_public(cls) - _spans()) == []
