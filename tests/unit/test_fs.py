"""Atomic writes (edgekit._fs): the file appears whole or not at all, a failure leaves no temporary file and no
change, and the mode is the umask's or the one asked for. Also where the cache lives."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from edgekit._fs import atomic_path, atomic_write_bytes, atomic_write_text, cache_dir


class Boom(Exception):
    pass


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_the_file_appears_whole_with_nothing_else_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    data = os.urandom(3 * 1024 * 1024)
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.bin.") and tmp.name.endswith(".tmp")
        assert not tmp.exists()  # the writer creates it
        with open(tmp, "wb") as f:
            f.write(data[:1000])
            assert not target.exists()  # nothing under the final name while the write is under way
            f.write(data[1000:])
    assert target.read_bytes() == data
    assert _names(tmp_path) == ["out.bin"]


def test_an_exception_inside_leaves_neither_the_file_nor_a_temporary_one(tmp_path: Path) -> None:
    target = tmp_path / "rows.parquet"
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"PAR1 half")  # the writer got half-way
            raise Boom
    assert _names(tmp_path) == []


def test_an_exception_before_anything_was_written_is_passed_on(tmp_path: Path) -> None:
    with pytest.raises(Boom):
        with atomic_path(tmp_path / "x"):
            raise Boom
    assert _names(tmp_path) == []


def test_an_existing_file_is_untouched_when_the_write_fails(tmp_path: Path) -> None:
    target = tmp_path / "meta.json"
    target.write_text('{"status": "complete"}')
    target.chmod(0o640)
    before = target.stat()
    with pytest.raises(KeyboardInterrupt):  # not only Exception: an interrupt cleans up too
        with atomic_path(target, mode=0o600) as tmp:
            tmp.write_text('{"status": "runn')
            raise KeyboardInterrupt
    after = target.stat()
    assert target.read_text() == '{"status": "complete"}'
    assert (after.st_ino, after.st_mode, after.st_mtime_ns) == (before.st_ino, before.st_mode, before.st_mtime_ns)
    assert _names(tmp_path) == ["meta.json"]


def test_a_writer_that_never_creates_the_file_fails_and_leaves_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(FileNotFoundError):
        with atomic_path(target):
            pass
    assert target.read_text() == "old" and _names(tmp_path) == ["a.txt"]


def test_an_existing_file_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old " * 10_000)
    atomic_write_text(target, "new \u2014 page")
    assert target.read_bytes() == "new \u2014 page".encode("utf-8")
    atomic_write_bytes(target, b"")  # an empty file is a file
    assert target.read_bytes() == b"" and _names(tmp_path) == ["report.html"]


def test_text_is_written_as_given(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a", "x\r\ny\n")
    atomic_write_text(tmp_path / "b", "\u00e9", encoding="latin-1")
    assert (tmp_path / "a").read_bytes() == b"x\r\ny\n" and (tmp_path / "b").read_bytes() == b"\xe9"


def test_the_file_is_fsynced_before_the_rename_and_the_folder_after(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "rows.parquet"
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else "?"))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write_bytes(target, b"x")
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    if events[0][1] != "?":
        assert events[0][1].endswith(".tmp") and events[2][1] == str(tmp_path)


def test_a_missing_folder_is_an_error_not_created(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "no" / "such" / "f", b"x")
    assert _names(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_mode_is_the_umasks_unless_given(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "default", b"x")
        atomic_write_bytes(tmp_path / "shared", b"x", mode=0o644)  # exactly that, whatever the umask
        with atomic_path(tmp_path / "private", mode=0o600) as tmp:
            tmp.write_bytes(b"x")
        (tmp_path / "replaced").write_bytes(b"old")
        (tmp_path / "replaced").chmod(0o666)
        atomic_write_bytes(tmp_path / "replaced", b"new")  # the new file's mode, not the old one's
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"default": 0o640, "shared": 0o644, "private": 0o600, "replaced": 0o640}


def test_concurrent_writers_each_leave_a_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "meta.json"
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    threads = [threading.Thread(target=atomic_write_bytes, args=(target, p)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert target.read_bytes() in payloads and _names(tmp_path) == ["meta.json"]


def test_cache_dir_is_the_env_var_else_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("EDGEKIT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "edgekit"
