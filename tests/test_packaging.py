"""What installing petrock-trio brings: the wheel's files, the import's cost, the extras."""

from __future__ import annotations

import ast
import email.parser
import os
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

import petrock_trio as pt
from petrock_trio import _demo

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "features" / "items"
# What the engine must not import for a program that only runs workers: the HTTP
# server and framework, the Prometheus client, the console, the CLI and its client.
# Packages of `pip install petrock-trio`, itself included (the README says so).
BASE_INSTALL = 15
HEAVY = ("starlette", "hypercorn", "prometheus_client", "rich", "anyio", "httpx", "click")


def python(code: str, *, executable: str = sys.executable) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path("/"),  # not the source tree: nothing importable from the current directory
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = out.glob("petrock_trio-*.whl")
    return built


def example_files() -> set[str]:
    """The example feature's files as the source tree has them, without its tests."""
    return {
        path.relative_to(EXAMPLE).as_posix()
        for path in EXAMPLE.rglob("*")
        if path.is_file()
        and not {"tests", "__pycache__"} & set(path.relative_to(EXAMPLE).parts)
        and path.suffix != ".pyc"
    }


class TestWheel:
    """The wheel ships the engine and the example inside its namespace, nothing else."""

    def test_only_the_package_and_its_metadata(self, wheel: Path) -> None:
        names = zipfile.ZipFile(wheel).namelist()
        tops = {name.split("/")[0] for name in names}
        assert tops == {"petrock_trio", f"{wheel.name.split('-py3')[0]}.dist-info"}
        assert not [n for n in names if n.startswith("features/")]
        assert not [n for n in names if "tests" in n.split("/")]

    def test_the_example_is_inside_the_package_without_its_tests(self, wheel: Path) -> None:
        prefix = "petrock_trio/examples/items/"
        names = zipfile.ZipFile(wheel).namelist()
        shipped = {n.removeprefix(prefix) for n in names if n.startswith(prefix)}
        assert shipped == example_files()
        assert {"__init__.py", "workers/summary_worker.py"} <= shipped

    def test_license_and_metadata(self, wheel: Path) -> None:
        archive = zipfile.ZipFile(wheel)
        info = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        dist_info = info.removesuffix("METADATA")
        license_text = archive.read(f"{dist_info}licenses/LICENSE").decode()
        assert license_text.startswith("MIT License")
        assert "petrock_trio developers" in license_text
        metadata = email.parser.Parser().parsestr(archive.read(info).decode())
        assert metadata["License-Expression"] == "MIT"
        urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
        assert set(urls) == {"Homepage", "Documentation", "Issues", "Source"}
        home = "https://github.com/petrock-trio/petrock_trio"
        assert all(u.startswith(home) for u in urls.values())
        # The base install is the engine: HTTP, console and CLI come with extras.
        base = [r for r in metadata.get_all("Requires-Dist") or [] if "extra ==" not in r]
        assert not [r for r in base if r.split(">")[0].replace("-", "_") in HEAVY]
        assert {"cli", "http", "postgres", "testing", "otel", "dev"} <= set(
            metadata.get_all("Provides-Extra") or []
        )
        entry_points = archive.read(f"{dist_info}entry_points.txt").decode()
        assert "petrock-trio = petrock_trio._script:main" in entry_points

    def test_package_data(self, wheel: Path) -> None:
        names = set(zipfile.ZipFile(wheel).namelist())
        assert {"petrock_trio/dashboard.html", "petrock_trio/py.typed"} <= names


class TestImportCost:
    """``import petrock_trio`` loads the engine only; HTTP names load on first use."""

    def test_import_loads_nothing_heavy(self) -> None:
        done = python(
            f"""
            import sys
            import petrock_trio
            print(sorted({{m.partition(".")[0] for m in sys.modules}} & {set(HEAVY)!r}))
            print("petrock_trio._http" in sys.modules)
            """
        )
        assert done.returncode == 0, done.stderr
        loaded, http = done.stdout.split("\n")[:2]
        # structlog imports rich by itself whenever rich is installed (its console
        # renderer uses it), so here rich is left to the test below, which has none.
        assert loaded in ("[]", "['rich']")
        assert http == "False"

    def test_the_engine_runs_without_the_extras(self) -> None:
        """As in a base install: the heavy packages cannot be imported at all."""
        done = python(
            f"""
            import sys
            for name in {HEAVY!r}:
                sys.modules[name] = None  # makes `import name` fail, as when not installed

            import attrs, trio
            import petrock_trio as pt

            @pt.command("packaging/ping")
            @attrs.frozen
            class Ping:
                n: int

            async def main():
                app = pt.App(hooks=[])
                app.register_command(Ping)
                async with trio.open_nursery() as nursery:
                    await nursery.start(pt.serve, app)
                    message = await app.execute(Ping(1))
                    app.stop()
                print(message.id)

            trio.run(main)
            try:
                pt.http_app
            except ModuleNotFoundError as exc:
                print(exc)
            from petrock_trio._script import main
            main()
            """
        )
        out = done.stdout.splitlines()
        assert out[:1] == ["1"], done.stderr
        assert out[1] == (
            "petrock_trio.http_app needs the 'http' extra (starlette is not installed): "
            "pip install 'petrock-trio[http]'"
        )
        # The console script without its extra: one line naming the extra, no traceback.
        assert done.returncode == 1
        assert done.stderr == (
            "Error: petrock-trio needs the 'cli' extra (click is not installed): "
            "pip install 'petrock-trio[cli]'\n"
        )

    def test_console_logs_render_tracebacks_without_rich(self) -> None:
        """structlog's rich traceback formatter fails without rich: plain text instead."""
        done = python(
            """
            import io, sys
            sys.modules["rich"] = None  # as in a base install
            import structlog
            import petrock_trio as pt

            out = io.StringIO()
            pt.configure_logging(json=False, stream=out)
            try:
                raise ValueError("the failure")
            except ValueError:
                structlog.get_logger().exception("petrock.test")
            print(out.getvalue())
            """
        )
        assert done.returncode == 0, done.stderr
        assert "petrock.test" in done.stdout
        assert "Traceback (most recent call last)" in done.stdout
        assert "ValueError: the failure" in done.stdout

    def test_a_bug_is_not_taken_for_a_missing_extra(self) -> None:
        done = python(
            """
            import sys
            sys.modules["petrock_trio._cli_read"] = None
            from petrock_trio._script import main
            main()
            """
        )
        assert done.returncode == 1
        assert "ModuleNotFoundError" in done.stderr
        assert "extra" not in done.stderr


class TestExample:
    """The example works under either name: the source tree's and the wheel's."""

    def test_its_modules_import_each_other_relatively(self) -> None:
        absolute = []
        for path in EXAMPLE.rglob("*.py"):
            if "tests" in path.relative_to(EXAMPLE).parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom) and node.level == 0
                    else []
                )
                absolute += [f"{path.name}: {n}" for n in names if n.startswith("features")]
        assert absolute == []

    def test_the_demo_finds_the_source_trees_example(self) -> None:
        import features.items  # noqa: PLC0415 - the source tree's copy, for comparison

        assert _demo.example() is features.items

    def test_the_library_never_imports_the_example(self) -> None:
        """Only the demo does, by name at run time (``_demo.example``)."""
        static = []
        for path in (ROOT / "petrock_trio").rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                modules = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom) and node.level == 0
                    else []
                )
                example = ("features", "petrock_trio.examples")
                static += [m for m in modules if m.startswith(example)]
        assert static == []
        done = python(
            "import sys, petrock_trio._cli, petrock_trio.testing\n"
            "print(sorted(m for m in sys.modules if m.startswith(('features', 'petrock_trio.ex'))))"
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_wheel_installed_outside_the_repo(wheel: Path, tmp_path: Path) -> None:
    """A fresh venv: the base install is the engine alone; with `cli` the demo runs."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def pip(*args: str) -> None:
        done = subprocess.run(
            [str(bin_dir / "python"), "-m", "pip", "install", "-q", *args],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
            env=env,
        )
        assert done.returncode == 0, done.stderr

    pip(str(wheel))
    listed = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.split()
    installed = sorted(line.split("==")[0].lower() for line in listed)
    print(f"base install: {len(installed)} packages: {', '.join(installed)}")
    assert not set(installed) & {"starlette", "hypercorn", "prometheus-client", "rich", "click"}
    # The README's figure: the engine and its dependencies, the venv's own pip and
    # setuptools aside. A new dependency of the engine, or of one of its own, shows here.
    engine = sorted(set(installed) - {"pip", "setuptools"})
    assert len(engine) <= BASE_INSTALL, engine

    done = python("import features", executable=str(bin_dir / "python"))
    assert "No module named 'features'" in done.stderr
    done = python(
        f"""
        import sys, petrock_trio
        print(sorted({{m.partition(".")[0] for m in sys.modules}} & {set(HEAVY)!r}))
        """,
        executable=str(bin_dir / "python"),
    )
    assert done.stdout.strip() == "[]", done.stderr
    script = str(bin_dir / "petrock-trio")
    no_extra = subprocess.run([script, "--help"], capture_output=True, text=True, check=False)
    assert no_extra.returncode == 1
    assert no_extra.stderr == (
        "Error: petrock-trio needs the 'cli' extra (click is not installed): "
        "pip install 'petrock-trio[cli]'\n"
    )

    pip(f"{wheel}[cli]")
    demo = subprocess.run(
        [script, "demo", "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=tmp_path,
        env=env,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "items-summaries" in demo.stdout
    assert "created 6 items" in demo.stdout
    version = python(
        "import petrock_trio; print(petrock_trio.__version__)", executable=str(bin_dir / "python")
    )
    assert version.stdout.strip() == pt.__version__
