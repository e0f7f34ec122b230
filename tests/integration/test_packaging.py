"""The wheel carries the YAML folders, so an installed edgekit finds its profiles, targets and recipes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_ships_profiles_and_targets(tmp_path: Path) -> None:
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(REPO)],
                   check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("edgekit-*.whl"))
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True)
    code = (f"import sys; sys.path.insert(0, {str(site)!r}); import edgekit; "
            "from edgekit.config._catalog import builtin_dir; "
            "from edgekit.config.recipe import list_recipes; "
            "print(edgekit.__file__); print(builtin_dir('profiles')); print(sorted(edgekit.list_profiles())); "
            "print(builtin_dir('recipes')); print(sorted(list_recipes()))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    module, folder, names, recipes_folder, recipes = out.strip().splitlines()
    assert module.startswith(str(site)) and folder.startswith(str(site))  # the wheel's copy, not the checkout
    assert names == "['jetson-orin', 'pi4', 'x86', 'x86-cuda']"
    assert recipes_folder.startswith(str(site)) and "'prune-distill-qat'" in recipes
