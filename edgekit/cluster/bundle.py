"""Artifacts as one portable value: their records and files, each file with its sha256.

A build on one cluster node is measured from another, so the files travel through Ray's object store,
not a shared disk. ``unpack`` writes them under a new root and refuses any file whose bytes are not the
ones that passed parity on the node that built them; the device re-checks them again on arrival (the
agent's sha256 check), as without a cluster. Importing this module loads neither Ray nor torch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from edgekit._fs import write_folder
from edgekit.errors import ClusterError
from edgekit.results.store import artifact_from_record, artifact_record

if TYPE_CHECKING:
    from edgekit.exporters.base import Artifact

_PATHS = ("path", "inputs", "eval_set")


def artifact_files(arts: Sequence["Artifact"]) -> list[Path]:
    """Every file the artifacts need on a device: their own, the timing inputs and the eval set."""
    return sorted({Path(f) for a in arts for f in [*a.files, a.path, a.inputs, a.eval_set] if f})


def pack(arts: Sequence["Artifact"], root: Path) -> dict[str, Any]:
    """``{"records", "files": {relative path: bytes}, "sha256": {relative path: hex}}``; every file must lie
    under ``root``."""
    root = root.resolve()
    files: dict[str, bytes] = {}
    for f in artifact_files(arts):
        rel = f.resolve().relative_to(root).as_posix()
        files[rel] = f.read_bytes()
    records = []
    for a in arts:
        rec = artifact_record(a)
        for key in _PATHS:
            if rec.get(key):
                rec[key] = Path(rec[key]).resolve().relative_to(root).as_posix()
        rec["files"] = [Path(p).resolve().relative_to(root).as_posix() for p in rec.get("files") or []]
        records.append(rec)
    return {"records": records, "files": files,
            "sha256": {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}}


def digest(bundle: dict[str, Any]) -> str:
    """What identifies a bundle's contents: its files' hashes (so a node unpacks each bundle once)."""
    h = hashlib.sha256()
    for rel, sha in sorted(bundle["sha256"].items()):
        h.update(f"{rel}\0{sha}\n".encode())
    return h.hexdigest()


def unpack(bundle: dict[str, Any], dest: Path) -> list["Artifact"]:
    """The bundle's artifacts with their files under ``dest`` (see ``write_files``; what ``dest`` held is
    replaced)."""
    write_files(bundle, dest, replace=True)
    return artifacts_at(bundle["records"], dest)


def write_files(bundle: dict[str, Any], dest: Path, *, replace: bool = False) -> None:
    """Write the bundle's files under ``dest``, whole: into a temporary folder first, every file checked against
    its recorded sha256, then renamed into place. A file that differs is refused with ClusterError and
    nothing is written. Without ``replace``, a ``dest`` that exists was written (and checked) this way before
    (a folder named by the bundle's digest): it is left as it is."""
    for rel, data in bundle["files"].items():
        if hashlib.sha256(data).hexdigest() != bundle["sha256"].get(rel):
            raise ClusterError(f"artifact file {rel} arrived with another sha256 than the one that passed parity; "
                               "it was not used (a damaged transfer or object store): run again")
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise ClusterError(f"artifact file {rel!r} would be written outside its folder; refused")
    if dest.is_dir() and not replace:
        return

    def fill(tmp: Path) -> None:
        for rel, data in bundle["files"].items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)

    write_folder(dest, fill, replace=replace)


def artifacts_at(records: list[dict[str, Any]], dest: Path) -> list["Artifact"]:
    """The records' artifacts, their paths under ``dest``."""
    arts = []
    for rec in records:
        rec = dict(rec)
        for key in _PATHS:
            if rec.get(key):
                rec[key] = str(dest / rec[key])
        rec["files"] = [str(dest / p) for p in rec.get("files") or []]
        arts.append(artifact_from_record(rec))
    return arts
