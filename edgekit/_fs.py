"""Files: where edgekit keeps things between runs, and writing a file so that it is either whole or absent.

The bottom layer: it imports nothing from edgekit.

Atomic writes (``atomic_path``, ``atomic_write_bytes``, ``atomic_write_text``) write a temporary file beside
the target and rename it over the target with ``os.replace``. The temporary name, ``.<name>.<random>.tmp``, is
hidden, unique, in the same folder (so the rename stays on one filesystem) and ends in ``.tmp`` (so a leftover
is easy to find). The policy, the same at every call site:

- durability: the temporary file is fsynced before the rename, and the folder after it. A crash never leaves
  a half-written file under the final name: a reader sees the old file or the new one, whole. (The folder
  fsync is best effort: where a filesystem refuses it the rename is done but may be lost on power failure,
  leaving the old file.)
- failure: on any exception (KeyboardInterrupt included) the temporary file is removed and the target is
  left as it was (absent if it was absent).
- permissions: ``mode=None`` keeps the mode the writer created the file with (``open``, ``torch.save``,
  ``to_parquet``: 0o666 less the umask, as for any new file; the old target's mode is not carried over); an
  int is applied exactly (``os.chmod``, the umask not applied), e.g. 0o644 for a report others must read,
  0o600 for a private file. The temporary file gets its mode before it is renamed, so the target never has
  another.
- the target's folder must exist: nothing here creates folders.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "build_cache_dir", "cache_dir", "sha256_file"]


def cache_dir() -> Path:
    """``$EDGEKIT_CACHE``, else ``~/.cache/edgekit``: trained built-in models, the agent bundle."""
    return Path(os.environ.get("EDGEKIT_CACHE", Path.home() / ".cache" / "edgekit"))


def build_cache_dir() -> Path:
    """``$EDGEKIT_BUILD_CACHE``, else ``cache_dir()/builds``: built artifacts and what they were judged by."""
    return Path(os.environ.get("EDGEKIT_BUILD_CACHE") or cache_dir() / "builds")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read now (no memo: the build cache checks what is on disk)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _temp_name(path: Path) -> Path:
    """A hidden, unique name beside ``path``; the file is not created here (the writer creates it)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the caller to write (by any writer: ``open``,
    ``torch.save``, ``df.to_parquet``...); when the block ends without an exception, the file is made
    durable and renamed over ``path``. On an exception it is removed and ``path`` is untouched.

    The yielded path does not exist yet; the block must create it. See the module docstring for the policy.
    """
    final = Path(path)
    tmp = _temp_name(final)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)  # before the fsync, so the mode is as durable as the bytes
        _fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` whole or not at all (see ``atomic_path``)."""
    with atomic_path(path, mode=mode) as tmp, open(tmp, "xb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8",
                      mode: int | None = None) -> None:
    """Write ``text`` to ``path`` whole or not at all (see ``atomic_path``). Newlines are written as given."""
    atomic_write_bytes(path, text.encode(encoding), mode=mode)


def write_folder(final: Path, fill: Callable[[Path], None], *, replace: bool = True) -> None:
    """Create the folder ``final`` whole or not at all: ``fill`` writes into a fresh hidden sibling, which is
    then renamed into place (what ``final`` held is replaced; without ``replace``, a ``final`` that appears
    meanwhile, written the same way by another process, is kept). The sibling is removed either way."""
    import shutil

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}-{secrets.token_hex(4)}"
    tmp.mkdir(mode=0o755)
    try:
        fill(tmp)
        if replace and final.exists():
            shutil.rmtree(final)
        try:
            tmp.rename(final)
        except OSError:
            if replace or not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # fsync flushes the file's data whatever the descriptor was opened for
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable. Best effort: not every platform or filesystem allows it."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(folder, flags)
    except OSError:  # e.g. Windows cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:  # e.g. EINVAL on filesystems that do not support fsync on a folder
        pass
    finally:
        os.close(fd)
