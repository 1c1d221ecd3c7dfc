"""The public namespace is deliberate: what __all__ lists is exactly what is exported."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

import petrock_trio as pt
import petrock_trio.testing


def test_all_matches_public_names() -> None:
    # "@py_*" names come from pytest rewriting the plugin's distribution, not from us.
    # dir() lists the names loaded on first use (http_app, serve_http) before they are.
    public = {name for name in dir(pt) if not name.startswith(("_", "@"))}
    modules = {"stores", "testing"}
    assert public - modules == set(pt.__all__)
    assert pt.__all__ == sorted(pt.__all__)


def test_exports_claim_the_public_module() -> None:
    for name in pt.__all__:
        obj = getattr(pt, name)
        if isinstance(obj, types.UnionType):
            continue  # a type alias such as Event has no module of its own
        module = getattr(obj, "__module__", "petrock_trio")
        assert module == "petrock_trio", f"{name} reports module {module}"


def test_testing_namespace() -> None:
    for name in petrock_trio.testing.__all__:
        assert hasattr(petrock_trio.testing, name)


def test_http_names_load_on_first_use() -> None:
    code = (
        "import sys, petrock_trio as pt\n"
        "print('petrock_trio._http' in sys.modules, 'http_app' in vars(pt))\n"
        "from petrock_trio import serve_http\n"
        "print('petrock_trio._http' in sys.modules, pt.http_app.__module__, serve_http.__name__)\n"
        "print(pt.http_app is sys.modules['petrock_trio._http'].http_app)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == [
        "False False",
        "True petrock_trio serve_http",
        "True",
    ]


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        pt.no_such_name  # noqa: B018 - the look-up is the test


def test_version_comes_from_metadata() -> None:
    assert isinstance(pt.__version__, str)
    assert pt.__version__.count(".") >= 1
