"""The ``edgekit`` command: a thin layer over the public API (the library never imports this)."""

from edgekit.cli import _cache  # noqa: F401  registers `edgekit cache`
from edgekit.cli import _compress  # noqa: F401  registers `edgekit compress`
from edgekit.cli import _fleet  # noqa: F401  registers `edgekit bench`, `results`, `report`
from edgekit.cli import _search  # noqa: F401  registers `edgekit search`
from edgekit.cli._main import main

__all__ = ["main"]
