"""Device-side Python environments: real venvs, built once per recipe and cached between runs.

A device's python decides which runtimes exist there; these envs let loopback devices differ like real ones.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

DEVICE_ENVS: dict[str, list[str]] = {
    "pi-like": ["tflite-runtime==2.14.0", "numpy<2"],
    "onnx-only": ["onnxruntime==1.32.0", "numpy==2.4.6"],
    "bare": [],  # a python with no numpy and no runtime at all
}
# Envs that need a particular Python: Raspberry Pi OS bullseye ships 3.9, the oldest the agent supports.
ENV_PYTHON: dict[str, str] = {"pi-bullseye": "3.9"}
DEVICE_ENVS["pi-bullseye"] = ["tflite-runtime==2.14.0", "numpy<2"]
HOST = "host"


class EnvUnavailable(RuntimeError):
    """This machine cannot build the env (its Python version is not installed)."""  # the current interpreter (the host venv: executorch, onnxruntime, ai-edge-litert)

# Import names checked after install; bare must NOT have numpy.
_IMPORTS = {"tflite-runtime": "tflite_runtime.interpreter", "onnxruntime": "onnxruntime", "numpy": "numpy"}
_PIP_TIMEOUT = 900


def device_python(name: str, cache: Path | None = None) -> str:
    """Path of the python for env ``name`` (a DEVICE_ENVS key or "host"), building the venv on first use."""
    if name == HOST:
        return sys.executable
    if name not in DEVICE_ENVS:
        raise ValueError(f"unknown device env {name!r}; known: {', '.join([HOST, *DEVICE_ENVS])}")
    base = _base_python() if name not in ENV_PYTHON else find_python(ENV_PYTHON[name])
    if base is None:
        raise EnvUnavailable(f"device env {name!r} needs Python {ENV_PYTHON[name]}, which is not installed here "
                             f"(apt-get install python{ENV_PYTHON[name]}, or pyenv install {ENV_PYTHON[name]})")
    reqs = DEVICE_ENVS[name]
    recipe = {"name": name, "requirements": reqs, "python": base, "version": _version(base),
              "machine": platform.machine()}
    # never resolve() the python: the venv's symlink target is the base python, outside the venv
    return str(cached_build(name, recipe, lambda tmp: _build(tmp, base, reqs), cache=cache) / "bin" / "python")


def cached_build(
    name: str, recipe: dict[str, Any], build: Callable[[Path], dict[str, Any] | None], *,
    cache: Path | None = None, remove: Callable[[Path], None] = lambda path: shutil.rmtree(path, ignore_errors=True),
) -> Path:
    """``cache/device-envs/<name>-<hash of recipe>``, made by ``build(tmp)`` on first use and reused after.

    One builder per recipe (a file lock; others wait and reuse its result). The folder is built under a
    temporary name and renamed when complete, so the final path is either absent or whole. Beside it,
    ``edgekit-env.json`` holds the recipe and whatever ``build`` returned (timings...). ``remove`` deletes
    a failed or stale build.
    """
    if cache is None:
        from edgekit._fs import cache_dir

        cache = cache_dir()
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    envs = Path(cache) / "device-envs"
    final = envs / f"{name}-{key}"
    if (final / "edgekit-env.json").exists():
        return final
    envs.mkdir(parents=True, exist_ok=True)
    with open(envs / f".{name}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "edgekit-env.json").exists():
            return final
        for stale in envs.glob(f".tmp-{name}-{key}-*"):  # left by a crashed build (we hold the lock)
            remove(stale)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-{key}-", dir=envs))
        try:
            extra = build(tmp) or {}
            tmp.chmod(0o755)  # mkdtemp makes it 0700; a device user other than us must read it
            (tmp / "edgekit-env.json").write_text(json.dumps({**recipe, **extra}, indent=2) + "\n")
            os.rename(tmp, final)  # atomic: the final path is either absent or complete
        finally:
            if tmp.exists():
                remove(tmp)
    return final


def find_python(version: str) -> str | None:
    """An interpreter of ``version`` (e.g. "3.9"): on PATH, else a pyenv install; verified by running it."""
    name = f"python{version}"
    roots = [os.environ.get("PYENV_ROOT", ""), str(Path.home() / ".pyenv"), "/root/.pyenv", "/opt/pyenv"]
    candidates = [shutil.which(name) or ""]
    candidates += [str(p) for r in roots if r for p in sorted(Path(r).glob(f"versions/{version}.*/bin/{name}"))]
    candidates += [f"/usr/bin/{name}", f"/usr/local/bin/{name}"]
    for cand in candidates:
        if cand and Path(cand).exists() and _version(cand).startswith(version + "."):
            return cand
    return None


def _version(python: str) -> str:
    try:
        out = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _base_python() -> str:
    """The real interpreter behind the current venv (a venv of a venv would chain to ours)."""
    base = getattr(sys, "_base_executable", "")
    return base if base and Path(base).exists() else str(Path(sys.base_prefix) / "bin" / "python3")


def _build(env: Path, base: str, reqs: list[str]) -> None:
    run_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    _run([base, "-m", "venv", str(env)], run_env, "venv creation")
    py = str(env / "bin" / "python")
    if reqs:
        _run([py, "-m", "pip", "install", "--disable-pip-version-check", "-q", *reqs], run_env, "pip install")
    names = {r.split("[")[0].split("=")[0].split("<")[0].split(">")[0].split("!")[0].strip().lower() for r in reqs}
    checks = [f"import {_IMPORTS[n]}" for n in sorted(names) if n in _IMPORTS]
    if "numpy" not in names:
        checks.append("import importlib.util as u; assert u.find_spec('numpy') is None, 'numpy must be absent'")
    _run([py, "-I", "-c", "; ".join(checks)], run_env, "import check")


def _run(argv: list[str], env: dict[str, str], what: str) -> None:
    try:
        out = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=_PIP_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"device env {what} timed out after {_PIP_TIMEOUT}s: {' '.join(argv)}") from e
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-30:])
        raise RuntimeError(f"device env {what} failed ({' '.join(argv)}):\n{tail}")
