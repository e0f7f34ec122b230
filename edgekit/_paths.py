"""Where edgekit keeps things between runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$EDGEKIT_CACHE``, else ``~/.cache/edgekit``: trained built-in models, the agent bundle."""
    return Path(os.environ.get("EDGEKIT_CACHE", Path.home() / ".cache" / "edgekit"))
