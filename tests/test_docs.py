"""The documentation stays true: its code runs, and the names it gives exist.

Every fenced ``python`` block of README.md, docs/*.md and the feature READMEs is tested,
according to the words after ``python`` on the fence line:

- nothing: a complete program. It runs in a fresh ``__main__`` namespace, in a
  temporary working directory, and must finish without raising.
- ``continuation``: runs after the blocks before it in the same file, in their
  namespace (the guide builds on its complete example).
- ``fragment``: a piece of a program (``trio.run(serve, app)``, which never returns);
  it is only compiled, top-level ``await`` allowed.
- ``test_<name>.py``: a complete pytest file; it is written under that name and run with
  pytest in a subprocess.

Any other word is an error, so that a typo cannot turn a block into an untested one.

The guides are also checked for the names they use: log event names (``petrock.…``),
fields read from ``metrics()`` / ``statistics()``, ``petrock-trio`` command lines and
file paths must exist. The troubleshooting guide is checked strictly: every
backticked name in it must be something the code defines.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import importlib.util
import inspect
import re
import shlex
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import click
import pytest
import trio

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
    ROOT / "features" / "items" / "workers" / "README.md",
]
STRICT = ROOT / "docs" / "troubleshooting.md"

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_TEST_FILE = re.compile(r"test_\w+\.py")


# --- code blocks --------------------------------------------------------------------------


@attrs.frozen
class Block:
    """One fenced code block: where it is, its info words and its code."""

    path: Path
    line: int  # line number of the block's first code line
    language: str
    markers: tuple[str, ...]
    code: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str:
        if not self.markers:
            return "program"
        if self.markers in {("continuation",), ("fragment",)}:
            return self.markers[0]
        if len(self.markers) == 1 and _TEST_FILE.fullmatch(self.markers[0]):
            return "pytest"
        return "unknown"


def code_blocks(path: Path, text: str | None = None) -> list[Block]:
    """The fenced code blocks of a Markdown file (CommonMark fences, indented up to 3)."""
    lines = (path.read_text() if text is None else text).splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        index += 1
        if opening is None:
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        words = opening["info"].split()
        body: list[str] = []
        start = index + 1
        while index < len(lines):
            line = lines[index]
            index += 1
            stripped = line.strip()
            if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
                break
            # CommonMark: up to the fence's own indentation is removed from each line.
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))) :])
        language = words[0] if words else ""
        blocks.append(Block(path, start, language, tuple(words[1:]), "\n".join(body) + "\n"))
    return blocks


def python_blocks(paths: Iterable[Path]) -> list[Block]:
    return [b for p in paths for b in code_blocks(p) if b.language in {"python", "py"}]


def chains(blocks: Sequence[Block]) -> list[list[Block]]:
    """Programs with their continuations, in file order."""
    result: list[list[Block]] = []
    for block in blocks:
        if block.kind == "program":
            result.append([block])
        elif block.kind == "continuation":
            if not result or result[-1][0].path != block.path:
                raise AssertionError(f"{block.where}: a continuation needs a program before it")
            result[-1].append(block)
    return result


def run_chain(chain: Sequence[Block]) -> None:
    """Run a program and its continuations as ``__main__``, as ``python file.py`` would."""
    module = types.ModuleType("__main__")
    module.__file__ = str(chain[0].path)
    saved = sys.modules["__main__"]
    # attrs and cattrs resolve string annotations through sys.modules[cls.__module__].
    sys.modules["__main__"] = module
    try:
        for block in chain:
            # Leading blank lines keep tracebacks pointing at the Markdown file's lines.
            source = "\n" * (block.line - 1) + block.code
            exec(compile(source, str(block.path), "exec", dont_inherit=True), module.__dict__)
    finally:
        sys.modules["__main__"] = saved


def compile_fragment(block: Block) -> None:
    source = "\n" * (block.line - 1) + block.code
    compile(
        source, str(block.path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )


ALL_BLOCKS = python_blocks(DOCUMENTS)
CHAINS = chains(ALL_BLOCKS)


class TestCodeBlocks:
    """Every Python block of the docs runs (or, marked as a fragment, compiles)."""

    def test_documents_have_blocks(self) -> None:
        assert {b.path for b in ALL_BLOCKS} >= {ROOT / "README.md", ROOT / "docs" / "workers.md"}

    @pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.where for b in ALL_BLOCKS])
    def test_marker_is_known(self, block: Block) -> None:
        assert block.kind != "unknown", f"{block.where}: unknown marker {block.markers}"

    @pytest.mark.parametrize("chain", CHAINS, ids=[c[0].where for c in CHAINS])
    def test_program_runs(
        self, chain: list[Block], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        run_chain(chain)

    @pytest.mark.parametrize(
        "block",
        [b for b in ALL_BLOCKS if b.kind == "fragment"],
        ids=[b.where for b in ALL_BLOCKS if b.kind == "fragment"],
    )
    def test_fragment_compiles(self, block: Block) -> None:
        compile_fragment(block)

    @pytest.mark.parametrize(
        "block",
        [b for b in ALL_BLOCKS if b.kind == "pytest"],
        ids=[b.where for b in ALL_BLOCKS if b.kind == "pytest"],
    )
    def test_test_file_passes(self, block: Block, tmp_path: Path) -> None:
        (tmp_path / block.markers[0]).write_text(block.code)
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
                block.markers[0],
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"{block.where}\n{result.stdout}{result.stderr}"
        assert " passed" in result.stdout


class TestTheChecker:
    """A broken example fails: the runner is not quietly lenient."""

    def parse(self, text: str) -> list[Block]:
        blocks = code_blocks(ROOT / "docs" / "x.md", textwrap.dedent(text))
        return [b for b in blocks if b.language in {"python", "py"}]

    def test_error_in_a_program_fails(self) -> None:
        (block,) = self.parse(
            """
            ```python
            import petrock_trio as pt
            pt.PatternWorker("w").on_commnd("a/b")
            ```
            """
        )
        with pytest.raises(AttributeError, match="on_commnd") as info:
            run_chain([block])
        # The traceback names the Markdown file and the line of the mistake.
        frame = info.traceback[-1]
        assert (Path(str(frame.path)).name, frame.lineno + 1) == ("x.md", 4)

    def test_continuation_sees_earlier_names_only(self) -> None:
        blocks = self.parse(
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
            """
        )
        first, second = chains(blocks)
        run_chain(first)
        with pytest.raises(NameError):
            run_chain(second)

    def test_markers(self) -> None:
        blocks = self.parse(
            """
            ~~~python fragment
            await app.redrive("w", 1)
            ~~~
            ```py test_x.py
            ```
            ```python notest
            ```
            ```sh
            ls
            ```
            """
        )
        assert [b.kind for b in blocks] == ["fragment", "pytest", "unknown"]
        compile_fragment(blocks[0])
        with pytest.raises(SyntaxError):
            compile_fragment(attrs.evolve(blocks[0], code="def (\n"))

    def test_links(self) -> None:
        guide = ROOT / "docs" / "workers.md"
        assert check_link(guide, "#retries") == ""
        assert check_link(guide, "troubleshooting.md#lag-keeps-growing") == ""
        assert check_link(guide, "#retry") == "no heading #retry"
        assert check_link(guide, "tuning.md") == "no such file"
        assert check_link(guide, "https://trio.readthedocs.io") == ""


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
    spans: list[tuple[int, str]] = []
    in_block = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if _FENCE.match(line):
            in_block = not in_block
            continue
        if not in_block:
            spans += [(number, m.group(1)) for m in _SPAN.finditer(line)]
    return spans


def command_lines(path: Path) -> list[tuple[int, str]]:
    """``petrock-trio`` lines of sh blocks, and backticked ones."""
    found = [(n, s) for n, s in inline_code(path) if s.startswith("petrock-trio")]
    for block in code_blocks(path):
        if block.language in {"sh", "console", "bash"}:
            for offset, line in enumerate(block.code.splitlines()):
                command = line.removeprefix("$ ").strip()
                if command.startswith("petrock-trio"):
                    found.append((block.line + offset, command))
    return found


class Names:
    """What the code defines, gathered once."""

    def __init__(self) -> None:
        self.events = event_names()
        self.fields = log_fields()
        self.inspect = inspect_keys()
        self.api = api_names()
        self.metrics = {f.name for f in attrs.fields(pt.WorkerMetrics)}
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


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for a Markdown file's headings."""
    found: set[str] = set()
    in_block = False
    for line in path.read_text().splitlines():
        if _FENCE.match(line):
            in_block = not in_block
        elif not in_block and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
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

    @pytest.mark.parametrize("path", CHECKED, ids=[str(p.relative_to(ROOT)) for p in CHECKED])
    def test_links_resolve(self, path: Path) -> None:
        problems = [
            f"{path.relative_to(ROOT)}: link {target!r}: {problem}"
            for target in _LINK.findall(path.read_text())
            if (problem := check_link(path, target))
        ]
        assert not problems, "\n".join(problems)

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
