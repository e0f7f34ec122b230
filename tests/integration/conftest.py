from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import pytest

# tiny_models.py is importable as `tiny_models` (and so as `tiny_models:function` from the CLI).
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def digits_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], list[Any]]:
    """``get(profile)``: digits-cnn for that profile, every target x precision, exported and parity-checked
    once per session."""
    import edgekit

    done: dict[str, list[Any]] = {}

    def get(profile: str) -> list[Any]:
        if profile not in done:
            cm = edgekit.compress("digits-cnn", profile)
            arts = edgekit.export(cm, out_dir=tmp_path_factory.mktemp(f"{profile}-artifacts"))
            assert all(a.ok for a in arts), [a.error for a in arts]
            done[profile] = arts
        return done[profile]

    return get
