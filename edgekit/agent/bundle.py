"""Build the agent as one self-contained file to copy to a device: ``edgekit-agent-<sha256[:12]>.pyz``.

Why a zipapp: a device has Python, numpy and a runtime, but not edgekit. The archive holds this package's
device-side modules renamed ``edgekit_agent`` plus a root ``__main__.py``, so
``python edgekit-agent-XXXX.pyz run --request R.json`` runs with nothing else installed.

Why deterministic: the name carries the content hash, so the host can skip the upload when the device
already has that file. Entries are sorted, stored uncompressed (compressed bytes could differ between zlib
versions) with fixed timestamps and permissions, so the same sources always give the same bytes.

Imported by the host: standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "edgekit_agent"
# The device-side modules; bundle.py itself is host-side and stays out.
MODULES = ("__init__.py", "__main__.py", "conditions.py", "devlock.py", "device_info.py", "execution.py", "gpu.py", "measure.py",
           "meters.py", "opprofile.py", "runtimes.py", "sensors.py")
SHEBANG = b"#!/usr/bin/env python3\n"
ROOT_MAIN = b'''"""edgekit agent zipapp entry point."""
import sys

from edgekit_agent.__main__ import main

sys.exit(main())
'''
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold


def build_agent(dest_dir: Path) -> Path:
    """Write the agent zipapp into ``dest_dir`` (once per content) and return its path."""
    data = agent_bytes()
    dest_dir = Path(dest_dir)
    target = dest_dir / f"edgekit-agent-{hashlib.sha256(data).hexdigest()[:12]}.pyz"
    if target.is_file():
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(target, data)
    return target


def agent_bytes() -> bytes:
    """The zipapp's bytes, built in memory from the sources beside this file."""
    here = Path(__file__).resolve().parent
    entries = {f"{PACKAGE}/{name}": (here / name).read_bytes() for name in MODULES}
    entries["__main__.py"] = ROOT_MAIN
    buf = io.BytesIO()
    buf.write(SHEBANG)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(entries):
            zf.writestr(_entry(name), entries[name])
    return buf.getvalue()


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3  # unix, so the permission bits below mean the same everywhere
    info.external_attr = 0o644 << 16
    return info


def _write_atomically(target: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, then rename: no reader ever sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=".edgekit-agent-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise

