"""The documentation stays true: its code runs, and the names it gives exist.

Every fenced ``python`` block of README.md, docs/*.md and the feature READMEs runs, on
Sybil: Sybil lexes the pages into examples, and the evaluators below run them. The
words after ``python`` on the fence line say how:

- nothing: a complete program. It runs as ``__main__`` in a fresh namespace and a fresh
  temporary working directory, and must finish without raising.
- ``continuation``: runs after the blocks before it in the same page, in their
  namespace and directory (the guide builds on its complete example). Run alone, it
  runs its program and the continuations before it first.
- ``test_<name>.py``: a complete pytest file; it is written under that name and run with
  pytest (trio mode, warnings as errors) in a subprocess.
- ``from=<file>``: a quotation of a file of the repository (the before and after of the
  migration guide). Its lines must be that file's lines, in the same order, each run of
  them consecutive there; a line ``...`` stands for lines left out. It runs in a copy of
  that module's namespace, so it uses the module's imports and names.

A block that starts with ``>>>`` is a session: each statement must print what the
block shows after it (as a doctest, with ``...`` and any whitespace allowed).

Any other word is an error, so that a typo cannot turn a block into an untested one,
and nothing is only compiled: a block with top-level ``await`` runs under ``trio.run``
with an autojumping MockClock (virtual time, exact and instant), and
``trio.run(pt.serve, app)``, which serves until a signal, serves until the app has
caught up with its log and then stops it. A hidden block, in an HTML comment
``<!-- invisible-code-block: python [words] ... -->``, runs by the same rules: it sets up
what a short visible block needs, or checks what it did.

The pages are also checked for the names they use: log event names (``petrock.…``),
fields read from ``metrics()`` / ``statistics()``, ``petrock-trio`` command lines and
file paths must exist, and every relative link and anchor must resolve. The
troubleshooting guide is checked strictly: every backticked name in it must be
something the code defines.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import doctest
import functools
import importlib
import importlib.util
import inspect
import io
import re
import shlex
import subprocess
import sys
import tempfile
import textwrap
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import attrs
import click
import pytest
import trio
import trio.testing
from sybil import Document, Example, Region
from sybil.parsers.abstract.lexers import LexerCollection
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer, RawFencedCodeBlockLexer

import features.items
import features.items.summarizer
import petrock_trio as pt
import petrock_trio.testing
from petrock_trio import _cli
from petrock_trio.testing import serving

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "features").glob("*/**/README.md")),
]
# Guides whose names are checked (files owned by other pages may follow other rules).
CHECKED = [
    ROOT / "README.md",
    ROOT / "docs" / "workers.md",
    ROOT / "docs" / "migration.md",
    ROOT / "docs" / "troubleshooting.md",
    ROOT / "docs" / "reliability.md",
    ROOT / "docs" / "scaling.md",
    ROOT / "docs" / "testing.md",
    ROOT / "features" / "items" / "workers" / "README.md",
]
STRICT = ROOT / "docs" / "troubleshooting.md"

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
# A fence's info string: the language, then the words that say how the block runs.
_INFO = re.compile(r"[ \t]*(?P<language>[^\s]*)(?P<words>[^\n]*)$\n", re.MULTILINE)
_TEST_FILE = re.compile(r"test_\w+\.py")
_ELISION = re.compile(r"\.\.\.(\s*#.*)?")
PYTHON = {"python", "py"}


class BlockError(Exception):
    """A block that cannot run as written: unknown words, no program to continue."""


class ExcerptError(AssertionError):
    """A ``from=`` block that is not (or no longer) a quotation of its file."""


# --- code blocks --------------------------------------------------------------------------


@attrs.frozen
class Block:
    """One Python block of a page: where it is, the words of its fence and its code."""

    path: Path
    line: int  # line number of the block's first code line
    words: tuple[str, ...]
    code: str
    hidden: bool = False  # an invisible-code-block comment

    @property
    def where(self) -> str:
        return f"{_relative(self.path)}:{self.line}"

    @property
    def kind(self) -> str:
        if not self.words:
            return "program"
        if self.words == ("continuation",):
            return "continuation"
        if len(self.words) == 1 and _TEST_FILE.fullmatch(self.words[0]):
            return "pytest"
        if len(self.words) == 1 and self.words[0].startswith("from="):
            return "excerpt"
        return "unknown"

    @property
    def quoted(self) -> Path:
        """The file an excerpt quotes."""
        return ROOT / self.words[0].removeprefix("from=")


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def fenced_blocks(document: Document) -> Iterator[tuple[str, tuple[str, ...], int, str]]:
    """Every fenced block: its language, its other info words, its first line, its code."""
    for region in RawFencedCodeBlockLexer(info_pattern=_INFO)(document):
        source = region.lexemes["source"]
        line = document.text.count("\n", 0, region.start + source.offset) + 1
        words = tuple(region.lexemes["words"].split())
        yield region.lexemes["language"], words, line, str(source)


class BlockParser:
    """Sybil parser: a region for each Python block, fenced or in a hidden comment."""

    def __init__(self) -> None:
        self.hidden = DirectiveInHTMLCommentLexer(
            directive=r"invisible-code-block", arguments=r".+"
        )

    def __call__(self, document: Document) -> Iterator[Region]:
        fenced = RawFencedCodeBlockLexer(info_pattern=_INFO)
        for region in LexerCollection([fenced, self.hidden])(document):
            lexemes = region.lexemes
            hidden = "directive" in lexemes
            info = lexemes["arguments"] if hidden else lexemes["language"] + lexemes["words"]
            language, *words = info.split() or [""]
            if language not in PYTHON:
                continue
            source = lexemes["source"]
            line = document.text.count("\n", 0, region.start + source.offset) + 1
            region.parsed = Block(Path(document.path), line, tuple(words), str(source), hidden)
            region.evaluator = evaluate_block
            yield region


class Page(Document):
    """A Markdown page and what its blocks share while they run.

    The namespace of the program that runs (its ``__main__`` module), the indices of the
    blocks of that program that ran, and its working directory.
    """

    def __init__(self, text: str, path: str) -> None:
        super().__init__(text, path)
        self.main: types.ModuleType | None = None
        self.ran: list[int] = []
        self.workdir: Path | None = None
        self.workdirs: Callable[[], Path] = lambda: Path(tempfile.mkdtemp(prefix="docs-"))

    @classmethod
    def read(cls, path: Path, text: str | None = None) -> Page:
        page = cls(path.read_text() if text is None else text, str(path))
        for region in BlockParser()(page):
            page.add(region)
        return page

    @functools.cached_property
    def examples_list(self) -> list[Example]:
        return list(self.examples())

    def block(self, index: int) -> Block:
        parsed: Block = self.examples_list[index].parsed
        return parsed

    def program_of(self, index: int) -> int:
        """The index of the program a continuation continues."""
        for earlier in range(index - 1, -1, -1):
            if self.block(earlier).kind == "program":
                return earlier
        raise BlockError(f"{self.block(index).where}: a continuation needs a program before it")


def run_block(page: Page, index: int) -> None:
    """Run block ``index`` of ``page``; a continuation after its program and the blocks between."""
    block = page.block(index)
    if block.kind == "continuation":
        start = page.program_of(index)
        chain = [i for i in range(start, index) if page.block(i).kind in {"program", block.kind}]
        if page.ran != chain:  # run alone, or after a failure: run what it builds on first
            page.ran = []
            for earlier in chain:
                try:
                    page.examples_list[earlier].evaluate()
                except Exception as exc:
                    where = page.block(earlier).where
                    raise BlockError(f"{where}, which {block.where} continues, failed") from exc
                page.ran.append(earlier)
    elif block.kind == "program":
        page.ran = []
    page.examples_list[index].evaluate()
    if block.kind in {"program", "continuation"}:
        page.ran.append(index)


def evaluate_block(example: Example) -> None:
    """Sybil evaluator of every Python block, by the words of its fence."""
    page = example.document
    block: Block = example.parsed
    assert isinstance(page, Page)
    if block.kind == "program":
        page.main = types.ModuleType("__main__")
        page.main.__file__ = str(block.path)
        page.namespace = page.main.__dict__
        page.workdir = page.workdirs()
        execute(block, page.main.__dict__, main=page.main, workdir=page.workdir)
    elif block.kind == "continuation":
        if page.main is None or page.workdir is None:
            raise BlockError(f"{block.where}: a continuation needs a program before it")
        execute(block, page.main.__dict__, main=page.main, workdir=page.workdir)
    elif block.kind == "excerpt":
        run_excerpt(block, page.workdirs())
    elif block.kind == "pytest":
        run_test_file(block, page.workdirs())
    else:
        hint = (
            ": nothing is only compiled any more; give the block what it needs "
            "(a program, a continuation, a hidden setup block) or quote it with from=<file>"
            if "fragment" in block.words
            else ""
        )
        raise BlockError(
            f"{block.where}: unknown words {' '.join(block.words)!r} after python "
            f"(known: none, continuation, test_<name>.py, from=<file>){hint}"
        )


def execute(
    block: Block, namespace: dict[str, Any], *, main: types.ModuleType | None, workdir: Path
) -> None:
    """Run a block's code in ``namespace``: under Trio if it awaits at top level."""
    if block.code.lstrip().startswith(">>>"):
        with _as_main(main), contextlib.chdir(workdir), _serve_returns():
            run_session(block, namespace)
        return
    # Leading blank lines keep tracebacks pointing at the Markdown file's lines.
    source = "\n" * (block.line - 1) + block.code
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    code = compile(source, str(block.path), "exec", flags=flags, dont_inherit=True)
    with _as_main(main), contextlib.chdir(workdir), _serve_returns():
        if code.co_flags & inspect.CO_COROUTINE:
            clock = trio.testing.MockClock(autojump_threshold=0)
            trio.run(_await_block, code, namespace, clock=clock)
        else:
            exec(code, namespace)


def run_session(block: Block, namespace: dict[str, Any]) -> None:
    """A ``>>>`` session: each statement runs, and prints what the block shows after it."""
    test = doctest.DocTestParser().get_doctest(
        block.code, namespace, block.where, str(block.path), block.line - 1
    )
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, out=report.write, clear_globs=False)
    if runner.failures:
        raise AssertionError(f"{block.where}: the session prints otherwise\n{report.getvalue()}")


async def _await_block(code: types.CodeType, namespace: dict[str, Any]) -> None:
    await eval(code, namespace)


@contextlib.contextmanager
def _as_main(main: types.ModuleType | None) -> Iterator[None]:
    """Make ``main`` the ``__main__`` module, as ``python file.py`` would."""
    if main is None:
        yield
        return
    saved = sys.modules["__main__"]
    # attrs and cattrs resolve string annotations through sys.modules[cls.__module__].
    sys.modules["__main__"] = main
    try:
        yield
    finally:
        sys.modules["__main__"] = saved


@contextlib.contextmanager
def _serve_returns() -> Iterator[None]:
    """``trio.run(pt.serve, app)`` serves until the app caught up, then stops it.

    In a page it stands for a program that serves until SIGINT or SIGTERM; here it
    starts, replays, handles what is in the log and shuts down gracefully.
    """
    real_run = trio.run

    def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if fn is pt.serve:
            return real_run(_serve_until_caught_up, *args, **kwargs)
        return real_run(fn, *args, **kwargs)

    with mock.patch.object(trio, "run", run):
        yield


async def _serve_until_caught_up(app: pt.App, *args: Any) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(pt.serve, app, *args)
        await app.caught_up()
        app.stop()


def run_excerpt(block: Block, workdir: Path) -> None:
    """Check that an excerpt quotes its file, then run it in that module's namespace."""
    if block.quoted.suffix != ".py" or not block.quoted.resolve().is_relative_to(ROOT):
        raise BlockError(f"{block.where}: from= names a Python module of the repository")
    if not block.quoted.is_file():
        raise ExcerptError(f"{block.where}: no file {_relative(block.quoted)}")
    problem = excerpt_problem(block.code, block.quoted.read_text())
    if problem:
        raise ExcerptError(f"{block.where}: not as in {_relative(block.quoted)}: {problem}")
    name = ".".join(block.quoted.relative_to(ROOT).with_suffix("").parts)
    namespace = dict(vars(importlib.import_module(name)))
    execute(block, namespace, main=None, workdir=workdir)


def excerpt_problem(excerpt: str, text: str) -> str:
    """Why ``excerpt`` does not quote ``text`` ("" when it does).

    Lines are compared stripped and blank lines are ignored. A line ``...`` (with a
    comment or not) leaves lines out; the lines between two of them must be consecutive
    lines of the text, after the lines matched before.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    runs: list[list[str]] = [[]]
    for line in (s.strip() for s in excerpt.splitlines()):
        if _ELISION.fullmatch(line):
            runs.append([])
        elif line:
            runs[-1].append(line)
    position = 0
    for run in filter(None, runs):
        starts = [i for i in range(position, len(lines)) if lines[i] == run[0]]
        if not starts:
            return f"{run[0]!r} is not there (after the lines quoted before it)"
        longest, start = max((_common(lines[i:], run), i) for i in starts)
        if longest < len(run) and run[longest] not in lines:
            return f"{run[longest]!r} is not in the file"
        if longest < len(run):
            return f"{run[longest]!r} does not follow {run[longest - 1]!r} there"
        position = start + len(run)
    return ""


def _common(lines: Sequence[str], run: Sequence[str]) -> int:
    """How many lines of ``run`` the start of ``lines`` matches."""
    count = 0
    for line, wanted in zip(lines, run, strict=False):
        if line != wanted:
            break
        count += 1
    return count


def run_test_file(block: Block, workdir: Path) -> None:
    (workdir / block.words[0]).write_text(block.code)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "error",
            "-o",
            "trio_mode=true",
            block.words[0],
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{block.where}\n{result.stdout}{result.stderr}"
    assert " passed" in result.stdout


PAGES = [Page.read(path) for path in DOCUMENTS]
BLOCKS = [(page, index) for page in PAGES for index in range(len(page.examples_list))]


def _block_id(entry: tuple[Page, int]) -> str:
    page, index = entry
    return page.block(index).where


class TestCodeBlocks:
    """Every Python block of the docs runs."""

    def test_documents_have_blocks(self) -> None:
        paths = {Path(page.path) for page, _ in BLOCKS}
        assert paths >= {ROOT / "README.md", ROOT / "docs" / "workers.md"}

    @pytest.mark.parametrize("path", DOCUMENTS, ids=[_relative(p) for p in DOCUMENTS])
    def test_every_python_fence_is_a_block(self, path: Path) -> None:
        """Counted without Sybil: no Python block is left out of the run."""
        fences = re.findall(
            r"^ {0,3}(?:```|~~~)[ \t]*(?:python|py)\b", path.read_text(), re.MULTILINE
        )
        page = next(p for p in PAGES if Path(p.path) == path)
        visible = [b for b in map(page.block, range(len(page.examples_list))) if not b.hidden]
        assert len(visible) == len(fences)

    @pytest.mark.parametrize("entry", BLOCKS, ids=[_block_id(b) for b in BLOCKS])
    def test_block_runs(
        self, entry: tuple[Page, int], tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        page, index = entry
        page.workdirs = lambda: tmp_path_factory.mktemp("docs")
        run_block(page, index)


class TestTheChecker:
    """A broken example fails: the runner is not quietly lenient."""

    def page(self, text: str, tmp_path: Path) -> Page:
        page = Page.read(ROOT / "docs" / "x.md", textwrap.dedent(text))
        page.workdirs = lambda: Path(tempfile.mkdtemp(dir=tmp_path))
        return page

    def run_all(self, page: Page) -> None:
        for index in range(len(page.examples_list)):
            run_block(page, index)

    def test_error_in_a_program_fails(self, tmp_path: Path) -> None:
        page = self.page(
            """
            ```python
            import petrock_trio as pt
            pt.PatternWorker("w").on_commnd("a/b")
            ```
            """,
            tmp_path,
        )
        with pytest.raises(AttributeError, match="on_commnd") as info:
            run_block(page, 0)
        # The traceback names the Markdown file and the line of the mistake.
        frame = info.traceback[-1]
        assert (Path(str(frame.path)).name, frame.lineno + 1) == ("x.md", 4)

    def test_program_runs_as_main_in_a_directory_of_its_own(self, tmp_path: Path) -> None:
        page = self.page(
            """
            ```python
            from __future__ import annotations
            import os, attrs, cattrs
            @attrs.frozen
            class Point:
                x: int
                near: Point | None = None
            assert __name__ == "__main__"
            point = cattrs.structure({"x": 1, "near": {"x": 2}}, Point)
            here = os.getcwd()
            open("written.txt", "w").close()
            ```

            ```python
            import os
            there = os.getcwd()
            ```
            """,
            tmp_path,
        )
        run_block(page, 0)
        assert page.main is not None
        first = page.main.__dict__
        run_block(page, 1)
        second = page.main.__dict__
        assert first["point"].near.x == 2  # the annotation resolved in this __main__
        assert "point" not in second  # a program starts afresh
        here, there = Path(first["here"]), Path(second["there"])
        assert here.parent == there.parent == tmp_path
        assert here != there
        assert (here / "written.txt").exists()

    def test_continuation_sees_earlier_names_only(self, tmp_path: Path) -> None:
        page = self.page(
            """
            ```python
            x = 1
            ```

            ```python continuation
            assert x == 1
            ```

            ```python
            print(x)
            ```
            """,
            tmp_path,
        )
        run_block(page, 0)
        run_block(page, 1)
        with pytest.raises(NameError):
            run_block(page, 2)

    def test_continuation_alone_runs_its_program_first(self, tmp_path: Path) -> None:
        page = self.page(
            """
            ```python
            log = ["program"]
            ```

            ```python continuation
            log.append("first")
            ```

            ```python test_nothing.py
            def test_nothing(): pass
            ```

            ```python continuation
            log.append("second")
            ```
            """,
            tmp_path,
        )
        run_block(page, 3)
        assert page.main is not None
        assert page.main.__dict__["log"] == ["program", "first", "second"]

    def test_failure_of_the_program_fails_its_continuation(self, tmp_path: Path) -> None:
        page = self.page(
            """
            ```python
            raise RuntimeError("broken")
            ```

            ```python continuation
            pass
            ```
            """,
            tmp_path,
        )
        with pytest.raises(BlockError, match=r"x.md:3, which docs/x.md:7 continues, failed"):
            run_block(page, 1)

    def test_words(self, tmp_path: Path) -> None:
        page = self.page(
            """
            ~~~python continuation
            pass
            ~~~
            ```py test_x.py
            ```
            ```python fragment
            trio.run(serve, app)
            ```
            ```python notest
            ```
            ```sh
            ls
            ```
            """,
            tmp_path,
        )
        kinds = [page.block(i).kind for i in range(len(page.examples_list))]
        assert kinds == ["continuation", "pytest", "unknown", "unknown"]
        with pytest.raises(BlockError, match="needs a program before it"):
            run_block(page, 0)
        with pytest.raises(BlockError, match=r"'fragment'.*nothing is only compiled"):
            run_block(page, 2)
        with pytest.raises(BlockError, match="unknown words 'notest'"):
            run_block(page, 3)

    def test_session_prints_what_it_shows(self, tmp_path: Path) -> None:
        page = self.page(
            """
            ```python
            >>> import petrock_trio as pt
            >>> pt.Backoff().delays()[:3]
            [1.0, 2.0, 4.0]
            ```

            ```python continuation
            >>> pt.Backoff(max_attempts=2).delays()
            [2]
            ```
            """,
            tmp_path,
        )
        run_block(page, 0)
        with pytest.raises(AssertionError, match=r"x.md:9: the session prints otherwise"):
            run_block(page, 1)

    def test_top_level_await_runs_in_virtual_time(self, tmp_path: Path) -> None:
        page = self.page(
            """
            ```python
            import trio
            start = trio.current_time()
            await trio.sleep(3600)
            waited = trio.current_time() - start
            ```
            """,
            tmp_path,
        )
        run_block(page, 0)
        assert page.main is not None
        assert page.main.__dict__["waited"] == 3600

    def test_serving_until_a_signal_stops_once_caught_up(self, tmp_path: Path) -> None:
        page = self.page(
            """
            ```python
            import attrs, trio
            import petrock_trio as pt

            @pt.command("a/b")
            @attrs.frozen
            class B:
                n: int

            worker = pt.PatternWorker("w", state=[])

            @worker.on_command("a/b")
            async def on_b(ctx, cmd, state):
                state.append(cmd.n)

            async def fill() -> None:
                async with pt.open_log("app.db") as log:
                    await log.append(B(1), B(2))
            ```

            <!-- invisible-code-block: python continuation
            trio.run(fill)
            -->

            ```python continuation
            app = pt.App(database="app.db", hooks=[])
            app.register_command(B)
            app.register_worker(worker)
            trio.run(pt.serve, app)
            ```

            <!-- invisible-code-block: python continuation
            assert worker.state == [1, 2] and not app.running
            -->
            """,
            tmp_path,
        )
        assert [page.block(i).hidden for i in range(4)] == [False, True, False, True]
        self.run_all(page)

    def test_excerpt_quotes_its_file(self, tmp_path: Path) -> None:
        source = "features/items/workers/summary_worker.py"
        page = self.page(
            f"""
            ```python from={source}
            # The worker keeps no state of its own: the items state has the content requested.
            SummaryState: TypeAlias = None
            ...
            ```

            ```python from={source}
            # The worker keeps no state of its own: the items state has the content requested.
            SummaryState: TypeAlias = None
            submitted: set[str] = set()
            ```

            ```python from={source}
            SummaryState: TypeAlias = None
            MAX_AGE = timedelta(hours=24)
            ```

            ```python from=examples/missing.py
            pass
            ```

            ```python from=README.md
            pass
            ```
            """,
            tmp_path,
        )
        run_block(page, 0)
        with pytest.raises(ExcerptError, match=r"'submitted: set.*' is not in the file"):
            run_block(page, 1)
        with pytest.raises(ExcerptError, match=r"'MAX_AGE = .*' does not follow 'SummaryState"):
            run_block(page, 2)
        with pytest.raises(ExcerptError, match=r"no file examples/missing.py"):
            run_block(page, 3)
        with pytest.raises(BlockError, match=r"from= names a Python module"):
            run_block(page, 4)

    def test_excerpt_runs_in_its_module(self, tmp_path: Path) -> None:
        page = self.page(
            """
            ```python from=features/items/workers/summary_worker.py
            ctx.emit(result)  # committed with this request's position: it lands once
            ```
            """,
            tmp_path,
        )
        with pytest.raises(NameError, match="'ctx'"):
            run_block(page, 0)

    def test_links(self) -> None:
        guide = ROOT / "docs" / "workers.md"
        assert check_link(guide, "#retries") == ""
        assert check_link(guide, "troubleshooting.md#lag-keeps-growing") == ""
        assert check_link(guide, "#retry") == "no heading #retry"
        assert check_link(guide, "tuning.md") == "no such file"
        assert check_link(guide, "../examples/batch_job.py") == ""
        assert check_link(guide, "https://trio.readthedocs.io") == ""

    def test_links_and_anchors_are_read_as_github_does(self, tmp_path: Path) -> None:
        page = tmp_path / "page.md"
        page.write_text(
            textwrap.dedent(
                """
                # Setup
                ## Setup
                ## `serve(app)`, step 2
                <a id="custom"></a>
                See [one](#setup-1), [two](other.md "title"), ![plot](plot.png),
                `[not a link](nowhere.md)`.

                [ref]: #serve-app-step-2

                ```python
                data = values[0](1)
                ```
                """
            )
        )
        assert anchors(page) == {"setup", "setup-1", "serveapp-step-2", "custom"}
        assert [t for _, t in links(page)] == [
            "#setup-1",
            "other.md",
            "plot.png",
            "#serve-app-step-2",
        ]
        assert check_link(page, "#custom") == ""
        assert check_link(page, "#serve-app-step-2") == "no heading #serve-app-step-2"


# --- names ----------------------------------------------------------------------------------


def _package_sources() -> Iterator[ast.AST]:
    for path in sorted((ROOT / "petrock_trio").rglob("*.py")):
        yield ast.parse(path.read_text())


def event_names() -> set[str]:
    """Every ``petrock.…`` event name a log call in the package uses."""
    names: set[str] = set()
    for tree in _package_sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and node.args:
                names |= {
                    c.value
                    for c in ast.walk(node.args[0])
                    if isinstance(c, ast.Constant)
                    and isinstance(c.value, str)
                    and re.fullmatch(r"petrock\.[a-z_.]+", c.value)
                }
    return names


def log_fields() -> set[str]:
    """Keys of the package's log lines: keywords of ``petrock.…`` calls and of ``bind``."""
    fields = {"event", "level", "timestamp"}  # added by configure_logging's processors
    for tree in _package_sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            first = node.args[0] if node.args else None
            is_event = isinstance(first, ast.IfExp | ast.Constant) and any(
                isinstance(c, ast.Constant) and str(c.value).startswith("petrock.")
                for c in ast.walk(first)
            )
            is_bind = isinstance(node.func, ast.Attribute) and node.func.attr == "bind"
            if is_event or is_bind:
                fields |= {k.arg for k in node.keywords if k.arg is not None}
            if is_event:
                # The handler-failure lines build their fields in a dict first.
                for kw in node.keywords:
                    if kw.arg is None and isinstance(kw.value, ast.Name):
                        fields |= _dict_keys(tree, kw.value.id)
    return fields


def _dict_keys(tree: ast.AST, name: str) -> set[str]:
    """String keys given to dict ``name``: in its literal, and by ``name["key"] = …``."""
    keys: list[object] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if isinstance(target, ast.Name) and target.id == name:
                if isinstance(node.value, ast.Dict):
                    keys += [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
            elif (
                isinstance(target, ast.Subscript)
                and isinstance(target.value, ast.Name)
                and target.value.id == name
                and isinstance(target.slice, ast.Constant)
            ):
                keys.append(target.slice.value)
    return {k for k in keys if isinstance(k, str)}


def inspect_keys() -> set[str]:
    """Every key of an ``app.inspect()`` report (with a pattern and a legacy worker)."""

    class Legacy:
        def info(self) -> pt.WorkerInfo:
            return pt.WorkerInfo("legacy")

        async def start(self, app: pt.App) -> None: ...
        async def replay(self) -> None: ...
        async def work(self) -> None: ...
        async def stop(self) -> None: ...

    app = pt.App(leases=True, hooks=[])
    worker: pt.PatternWorker[None] = pt.PatternWorker("w")
    worker.set_periodic_work(_noop_periodic)
    app.register_worker(worker)
    app.register_worker(Legacy())
    keys: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, dict):
            keys.update(k for k in value if isinstance(k, str))
            for item in value.values():
                walk(item)

    async def served() -> dict[str, Any]:
        # Serving adds the pump's, the store's and the leases' reports.
        async with serving(app):
            return app.inspect()

    walk(app.inspect())
    walk(trio.run(served))
    return keys - {"w", "legacy"}


async def _noop_periodic(ctx: pt.PeriodicContext, state: None) -> None:
    return None


# The modules whose public names the guides may use: the API and the example feature.
PUBLIC_MODULES: list[types.ModuleType] = [
    pt,
    petrock_trio.testing,
    features.items,
    features.items.summarizer,
]


def public_objects() -> list[Any]:
    return [getattr(m, n) for m in PUBLIC_MODULES for n in m.__all__]


def api_names() -> set[str]:
    """Names of the public API: objects, their attributes, fields and parameters."""
    names: set[str] = {n for m in PUBLIC_MODULES for n in m.__all__}
    for obj in public_objects():
        members = [obj]
        if isinstance(obj, type):
            names |= {n for n in dir(obj) if not n.startswith("_")}
            if attrs.has(obj):
                names |= {f.name for f in attrs.fields(obj)}
            members += [getattr(obj, n) for n in dir(obj) if not n.startswith("_")]
            members.append(vars(obj).get("__init__"))
        for member in members:
            if callable(member):
                with contextlib.suppress(TypeError, ValueError):  # builtins without one
                    names |= set(inspect.signature(member).parameters)
    # Attributes set on instances in __init__ (e.g. ExternalService.failure_threshold).
    for obj in public_objects():
        init = getattr(obj, "__init__", None)
        if isinstance(obj, type) and init is not None and hasattr(init, "__code__"):
            try:
                source = textwrap.dedent(inspect.getsource(init))
            except (OSError, TypeError):
                continue
            names |= {
                node.attr
                for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
                and not node.attr.startswith("_")
            }
    names |= {m.value for m in pt.Health} | {m.name for m in pt.Health}
    names |= {m.value for m in pt.Circuit} | {m.name for m in pt.Circuit}
    return names


def cli_tree() -> click.Group:
    return _cli.main


def check_command_line(line: str) -> list[str]:
    """Problems with a ``petrock-trio …`` line: unknown commands or options."""
    problems: list[str] = []
    words = shlex.split(line)
    if not words or words[0] != "petrock-trio":
        return [f"{line!r} is not a petrock-trio command"]
    command: click.Command = cli_tree()
    rest = words[1:]
    while rest:
        word = rest.pop(0)
        if word.startswith("-"):
            problems += _check_option(command, word, rest)
            continue
        if isinstance(command, click.Group):
            choices = word.split("|")
            unknown = [c for c in choices if c not in command.commands]
            if unknown:
                problems.append(f"{line!r}: no command {unknown} under {command.name!r}")
                return problems
            command = command.commands[choices[0]]
        # Anything else is an argument's placeholder or value (URL, FILE, WORKER, 12).
    return problems


def _check_option(command: click.Command, word: str, rest: list[str]) -> list[str]:
    name = word.split("=", 1)[0]
    for param in command.params:
        if isinstance(param, click.Option) and name in (*param.opts, *param.secondary_opts):
            if not param.is_flag and "=" not in word and rest and not rest[0].startswith("-"):
                rest.pop(0)  # the option's value
            return []
    if name in {"--help", "-h"}:
        return []
    return [f"{command.name!r} has no option {name!r}"]


def all_options() -> set[str]:
    options: set[str] = set()

    def walk(command: click.Command) -> None:
        for param in command.params:
            if isinstance(param, click.Option):
                options.update(param.opts, param.secondary_opts)
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                walk(sub)

    walk(cli_tree())
    return options | {"--help", "-h"}


# Plain names the guides use for the objects they talk about, and methods that user
# code defines for the engine to call (a command's validate, a feature's register).
RECEIVERS = {
    "nursery",
    "validate",
    "app",
    "worker",
    "ctx",
    "cmd",
    "state",
    "service",
    "h",
    "message",
    "report",
    "letter",
    "event",
    "name",
    "pt",
    "self",
}

_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")


def inline_code(path: Path) -> list[tuple[int, str]]:
    """Backticked spans outside code blocks, with their line numbers."""
    return [
        (number, m.group(1)) for number, line in prose_lines(path) for m in _SPAN.finditer(line)
    ]


def command_lines(path: Path) -> list[tuple[int, str]]:
    """``petrock-trio`` lines of sh blocks, and backticked ones."""
    found = [(n, s) for n, s in inline_code(path) if s.startswith("petrock-trio")]
    for language, _, first, code in fenced_blocks(Document(path.read_text(), str(path))):
        if language in {"sh", "console", "bash"}:
            for offset, line in enumerate(code.splitlines()):
                command = line.removeprefix("$ ").strip()
                if command.startswith("petrock-trio"):
                    found.append((first + offset, command))
    return found


def _prometheus_series() -> list[str]:
    from petrock_trio._http_metrics import family_names  # noqa: PLC0415 - loads prometheus_client

    return list(family_names())


class Names:
    """What the code defines, gathered once."""

    def __init__(self) -> None:
        self.events = event_names()
        self.fields = log_fields()
        self.inspect = inspect_keys()
        self.api = api_names()
        self.metrics = {f.name for f in attrs.fields(pt.WorkerMetrics)}
        self.series = set(_prometheus_series())
        self.worker_statistics = {f.name for f in attrs.fields(pt.WorkerStatistics)}
        self.service_statistics = {f.name for f in attrs.fields(pt.ServiceStatistics)}
        self.options = all_options()
        self.endpoints = {_template(getattr(r, "path", "")) for r in pt.http_app(pt.App()).routes}
        self.known = self.api | self.fields | self.inspect | self.metrics | self.events

    def check(self, span: str, *, strict: bool) -> list[str]:  # noqa: PLR0911 - a return per kind of span
        """Problems with one backticked span (empty when it names things that exist)."""
        span = span.strip()
        if span.startswith("petrock-trio"):
            return check_command_line(span)
        if span in self.series:
            return []  # a series of /metrics
        if re.fullmatch(r"petrock\.[a-z_.]+", span):
            return [] if span in self.events else [f"no log event {span!r} in the code"]
        if re.fullmatch(r"--[a-z-]+", span):
            return [] if span in self.options else [f"no command-line option {span!r}"]
        if re.fullmatch(r"[\w./-]+\.(py|md)|[\w.-]+(/[\w.-]+)+/", span) and "/" in span:
            return [] if (ROOT / span).exists() else [f"no file {span!r} in the repository"]
        endpoint = re.fullmatch(r"(?:(?:GET|POST) )?(/[\w{}/-]*)", span)
        if endpoint:
            return [] if _template(endpoint[1]) in self.endpoints else [f"no endpoint {span!r}"]
        problems = self._check_reads(span)
        if problems or not strict:
            return problems
        return self._check_expression(span)

    def _check_reads(self, span: str) -> list[str]:
        """``metrics().x`` and ``statistics().x`` name real fields."""
        problems = [
            f"WorkerMetrics has no field {field!r}"
            for field in re.findall(r"metrics\(\)\.(\w+)", span)
            if field not in self.metrics
        ]
        for receiver, field in re.findall(r"(\w*)\.?statistics\(\)\.(\w+)", span):
            fields = self.service_statistics if "service" in receiver else self.worker_statistics
            if field not in fields:
                problems.append(f"{receiver or 'worker'}.statistics() has no field {field!r}")
        return problems

    def _check_expression(self, span: str) -> list[str]:
        keyword = re.fullmatch(r"(\w+)=(.*)", span)
        if keyword:
            unknown = [] if keyword[1] in self.known else [f"unknown name {keyword[1]!r}"]
            return unknown + (self._check_expression(keyword[2]) if keyword[2] else [])
        try:
            tree = ast.parse(span, mode="eval")
        except SyntaxError:
            return []  # prose in code font: a message, a reason, a value
        return [problem for node in ast.walk(tree) for problem in self._check_node(node)]

    def _check_node(self, node: ast.AST) -> list[str]:
        if isinstance(node, ast.Attribute):
            owner = node.value
            module = _module(owner.id) if isinstance(owner, ast.Name) else None
            if module is not None:
                return (
                    []
                    if hasattr(module, node.attr)
                    else [f"{module.__name__} has no {node.attr!r}"]
                )
            return [] if node.attr in self.known else [f"unknown attribute {node.attr!r}"]
        if isinstance(node, ast.Name):
            return [] if self._name_exists(node.id) else [f"unknown name {node.id!r}"]
        if isinstance(node, ast.Call):
            return self._check_keywords(node)
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
            and node.slice.value not in self.inspect
        ):
            return [f"app.inspect() has no key {node.slice.value!r}"]
        return []

    def _check_keywords(self, call: ast.Call) -> list[str]:
        """Keywords of a call to ``pt.X`` are X's parameters; others are known names."""
        allowed = self.known
        func = call.func
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id == "pt"
            and callable(target := getattr(pt, func.attr, None))
        ):
            allowed = set(inspect.signature(target).parameters)
        return [
            f"unknown keyword {k.arg!r}" for k in call.keywords if k.arg and k.arg not in allowed
        ]

    def _name_exists(self, name: str) -> bool:
        return (
            name in self.known
            or name in RECEIVERS
            or hasattr(pt, name)
            or hasattr(builtins, name)
            or importlib.util.find_spec(name) is not None
        )


_LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(\S+)")
_HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """The lines outside code blocks and hidden blocks, with their numbers."""
    lines: list[tuple[int, str]] = []
    in_block = in_comment = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if in_comment:
            in_comment = "-->" not in line
        elif _FENCE.match(line):
            in_block = not in_block
        elif not in_block and line.lstrip().startswith("<!--") and "-->" not in line:
            in_comment = True
        elif not in_block:
            lines.append((number, line))
    return lines


def links(path: Path) -> list[tuple[int, str]]:
    """Link targets outside code: inline links, images and reference definitions."""
    found: list[tuple[int, str]] = []
    for number, line in prose_lines(path):
        prose = _SPAN.sub("", line)  # a link written in code font is not a link
        found += [(number, target) for target in _LINK.findall(prose)]
        found += [(number, target) for target in _REFERENCE.findall(prose)]
    return found


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for a Markdown file's headings (and its HTML anchors)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(path):
        found.update(_HTML_ANCHOR.findall(line))
        if re.match(r"#{1,6} ", line):
            title = line.lstrip("#").strip().lower()
            slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
            # A repeated heading gets -1, -2, ... after its slug.
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(f"{slug}-{count}" if count else slug)
    return found


def check_link(source: Path, target: str) -> str:
    """Why a relative link does not resolve ("" when it does); web links are not fetched."""
    if re.match(r"[a-z]+://|mailto:", target):
        return ""
    file_part, _, anchor = target.partition("#")
    destination = (source.parent / file_part).resolve() if file_part else source
    if not destination.exists():
        return "no such file"
    if anchor and destination.suffix == ".md" and anchor not in anchors(destination):
        return f"no heading #{anchor}"
    return ""


def _template(path: str) -> str:
    """A route path with its parameters blanked: /dead-letters/{}/{}/redrive."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def _module(name: str) -> types.ModuleType | None:
    """The module a name in a guide stands for: ``pt``, or an importable module."""
    if name == "pt":
        return pt
    if name in RECEIVERS or hasattr(builtins, name) or importlib.util.find_spec(name) is None:
        return None
    return importlib.import_module(name)


NAMES = Names()


class TestNames:
    """The guides name events, fields, metrics and commands that exist."""

    @pytest.mark.parametrize("path", CHECKED, ids=[str(p.relative_to(ROOT)) for p in CHECKED])
    def test_names_exist(self, path: Path) -> None:
        if not path.exists():
            pytest.fail(f"{path.relative_to(ROOT)} is missing")
        strict = path == STRICT
        problems = [
            f"{path.relative_to(ROOT)}:{number}: `{span}`: {problem}"
            for number, span in inline_code(path)
            for problem in NAMES.check(span, strict=strict)
        ]
        problems += [
            f"{path.relative_to(ROOT)}:{number}: {problem}"
            for number, line in command_lines(path)
            for problem in check_command_line(line)
        ]
        assert not problems, "\n".join(problems)

    @pytest.mark.parametrize("path", DOCUMENTS, ids=[_relative(p) for p in DOCUMENTS])
    def test_links_resolve(self, path: Path) -> None:
        problems = [
            f"{path.relative_to(ROOT)}:{number}: link {target!r}: {problem}"
            for number, target in links(path)
            if (problem := check_link(path, target))
        ]
        assert not problems, "\n".join(problems)

    def test_architecture_names_real_modules(self) -> None:
        """Every module and file the architecture page names is in the package."""
        package = ROOT / "petrock_trio"
        page = ROOT / "docs" / "architecture.md"
        missing = [
            f"{_relative(page)}:{number}: `{word}`"
            for number, span in inline_code(page)
            for word in re.findall(r"[\w/.-]+\.(?:py|html)|[\w-]+/$", span)
            # Named from the package (`_pump.py`, `stores/_sqlite.py`), within the
            # stores (`_sqlitesql.py` after `stores/_sqlite.py`), or from the root.
            if not any(p.exists() for p in (package / word, package / "stores" / word, ROOT / word))
        ]
        assert not missing, "no such file in the package:\n" + "\n".join(missing)

    def test_migration_figures_are_measured(self) -> None:
        """The lines of code the migration guide gives are what benchmarks/loc.py counts."""
        spec = importlib.util.spec_from_file_location("loc", ROOT / "benchmarks" / "loc.py")
        assert spec is not None
        assert spec.loader is not None
        loc = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loc)
        text = (ROOT / "docs" / "migration.md").read_text()
        figures = re.search(r"it is (\d+) lines before\s+and (\d+) after", text)
        assert figures is not None, "the guide no longer gives the lines before and after"
        measured = (loc.code_lines(loc.LEGACY), loc.code_lines(loc.PATTERN))
        assert (int(figures[1]), int(figures[2])) == measured

    def test_troubleshooting_diagnoses_with_real_names(self) -> None:
        """Each problem of the troubleshooting guide names a metric or log event and a fix."""
        text = STRICT.read_text()
        sections = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
        problems = [s for s in sections if "**Diagnose.**" in s]
        assert len(problems) >= 10
        for section in problems:
            title = section.splitlines()[0]
            for part in ("**Symptoms.**", "**Diagnose.**", "**Fix.**"):
                assert part in section, f"{title!r} has no {part}"
            spans = _SPAN.findall(section)
            assert any(
                s in NAMES.events
                or re.search(r"(metrics|statistics|inspect|health)\(\)", s)
                or s.startswith("petrock-trio")
                for s in spans
            ), f"{title!r} names no metric, log event or command"

    @pytest.mark.parametrize(
        ("span", "expected"),
        [
            pytest.param("petrock.handler.failed", [], id="event"),
            pytest.param("petrock.handler.crashed", ["no log event"], id="unknown-event"),
            pytest.param("worker.metrics().lag", [], id="metric"),
            pytest.param("worker.metrics().latency", ["no field 'latency'"], id="unknown-metric"),
            pytest.param("service.statistics().circuit", [], id="service-statistic"),
            pytest.param("worker.statistics().circuit", ["no field 'circuit'"], id="wrong-owner"),
            pytest.param('app.inspect()["workers"][name]["lag"]', [], id="inspect"),
            pytest.param('app.inspect()["wrokers"]', ["no key 'wrokers'"], id="inspect-typo"),
            pytest.param("error_details", [], id="log-field"),
            pytest.param("error_detail", ["unknown name"], id="unknown-field"),
            pytest.param("pt.Backoff(max_attempts=3)", [], id="call"),
            pytest.param("pt.Backof(max_attempts=3)", ["has no 'Backof'"], id="unknown-class"),
            pytest.param("pt.Backoff(attempts=3)", ["unknown keyword"], id="unknown-keyword"),
            pytest.param("petrock-trio dead-letters retry w 3 --url URL", [], id="cli"),
            pytest.param("petrock-trio dead-letters redo w 3", ["no command"], id="cli-command"),
            pytest.param("petrock-trio inspect --uri URL", ["no option"], id="cli-option"),
            pytest.param("examples/batch_job.py", [], id="path"),
            pytest.param("examples/batch.py", ["no file"], id="missing-path"),
            pytest.param("trio.fail_after", [], id="module-attribute"),
            pytest.param("trio.fail_afterwards", ["trio has no"], id="unknown-module-attribute"),
            pytest.param("POST /dead-letters/{worker}/{id}/redrive", [], id="endpoint"),
            pytest.param("GET /dead-letter", ["no endpoint"], id="unknown-endpoint"),
        ],
    )
    def test_checker(self, span: str, expected: list[str]) -> None:
        problems = NAMES.check(span, strict=True)
        assert len(problems) == len(expected), problems
        for problem, part in zip(problems, expected, strict=True):
            assert part in problem
