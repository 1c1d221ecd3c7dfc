"""The public namespace is deliberate: what __all__ lists is exactly what is exported."""

from __future__ import annotations

import types

import petrock_trio as pt
import petrock_trio.testing


def test_all_matches_public_names() -> None:
    # "@py_*" names come from pytest rewriting the plugin's distribution, not from us.
    public = {name for name in vars(pt) if not name.startswith(("_", "@"))}
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


def test_version_comes_from_metadata() -> None:
    assert isinstance(pt.__version__, str)
    assert pt.__version__.count(".") >= 1
