"""The package's shape: imports flow one way (the layers themselves are import-linter's contract in
pyproject.toml, run by scripts/check); these add what a layers contract cannot say, on grimp's graph (the
library import-linter is built on; it counts imports inside functions too)."""

from __future__ import annotations

import pkgutil

import grimp
import pytest

import edgekit

TOP = ("edgekit.cli", "edgekit.testing", "edgekit.__main__")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("edgekit", cache_dir=None)


def test_no_import_circle_between_any_two_files(graph: grimp.ImportGraph) -> None:
    """A package's ``__init__`` and its own submodules count as files too (acyclic_siblings skips those)."""
    circles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                circles.append(" -> ".join((importer, *back)))
    assert circles == []


def test_nothing_below_the_api_imports_it_or_the_package_root(graph: grimp.ImportGraph) -> None:
    for api in ("edgekit", "edgekit._api"):
        importers = graph.find_modules_that_directly_import(api)
        assert sorted(m for m in importers if not m.startswith(TOP) and m != "edgekit") == [], api


def test_no_subpackage_is_named_like_a_verb() -> None:
    """``edgekit.bench`` was both the fleet verb and a subpackage: importing the subpackage rebound it."""
    subpackages = {m.name for m in pkgutil.iter_modules(edgekit.__path__) if m.ispkg}
    verbs = {name for name in edgekit.__all__ if callable(getattr(edgekit, name))}
    assert subpackages & verbs == set()


def test_stored_runs_load_through_their_module() -> None:
    import edgekit.results.store

    assert callable(edgekit.results.store.load_run)
    assert callable(edgekit.bench)


def test_artifact_imports_without_torch() -> None:
    import subprocess
    import sys

    code = "import sys, edgekit.exporters.base; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
