"""The package surface: light import, complete and sorted exports, one error root."""

from __future__ import annotations

import inspect
import subprocess
import sys

import edgekit
from edgekit import errors

HEAVY = ("torch", "executorch", "onnxruntime", "onnx", "tensorflow", "ai_edge_litert", "litert_torch",
         "paramiko", "fabric", "pandas", "sklearn")


def test_import_edgekit_loads_no_heavy_backend() -> None:
    code = f"import sys, edgekit; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_all_is_sorted_and_complete() -> None:
    assert edgekit.__all__ == sorted(edgekit.__all__)
    public = {n for n, v in vars(edgekit).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert public <= set(edgekit.__all__) | {"annotations"}
    for name in edgekit.__all__:
        assert hasattr(edgekit, name), name


def test_the_verbs_are_functions_not_shadowed_by_subpackages() -> None:
    import edgekit.results.compare  # noqa: F401  edgekit.bench is both the fleet verb and a subpackage
    import edgekit.results.store  # noqa: F401
    import edgekit.compression  # noqa: F401  importing the stage packages must not rebind the verbs
    import edgekit.exporters  # noqa: F401
    import edgekit.fleet  # noqa: F401

    for verb in ("compress", "export", "benchmark", "deploy", "bench"):
        assert inspect.isfunction(getattr(edgekit, verb)), verb


def test_every_error_derives_from_the_root() -> None:
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.EdgekitError)


def test_library_never_imports_the_cli() -> None:
    import pathlib

    root = pathlib.Path(edgekit.__file__).parent
    entry = root / "__main__.py"  # `python -m edgekit` is the CLI entry point itself
    offenders = [p for p in root.rglob("*.py") if "cli" not in p.parts and p != entry and "edgekit.cli" in p.read_text()]
    assert offenders == []
