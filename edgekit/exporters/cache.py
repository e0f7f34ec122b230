"""The build cache: an artifact is built once for the inputs that determine its bytes, then re-used.

**Key** (``artifact_keys``): a sha256 over what shapes the artifact and its checks: the model's code identity
(each module class's source, a GraphModule's code) and weights; the example inputs; the parity inputs and
the eval set (the cached parity and accuracy figures come from them); the calibration samples, the
profile's quantization scheme, the mixed-precision layer lists and a QAT plan (quantized artifacts only: an
fp32 artifact is the same bytes under the x86 and pi4 profiles, so switching profile rebuilds only what
changed); the target's format, delegate, opset and tolerance for the precision; the precision; and the
versions of torch, executorch, torchao, litert-torch, onnx, onnxruntime and of edgekit's own source files.
A QAT plan whose training data is not a fixed set of tensors (a shuffling DataLoader) has no stable key:
such a model is built and not cached.

**Layout** under ``$EDGEKIT_BUILD_CACHE``, else ``cache_dir()/builds`` (``$EDGEKIT_CACHE/builds``):

- ``entries/<key>/``: the artifact's files and ``entry.json`` (its parity, accuracy and each file's sha256).
  Whole or absent: written into ``tmp/`` and renamed into place in one step.
- ``tmp/<key>.<random>/``: a write in progress. One left by a killed build is never read; it is removed
  the next time that key is locked.
- ``locks/<key>.lock``: one process builds a key while another waits for it and then re-uses it
  (``filelock``, the kept library torch itself uses).

A hit re-hashes every file before it is used: an entry whose bytes changed on disk is removed and rebuilt,
never shipped. The cache keeps under ``EDGEKIT_CACHE_MAX_MB`` (default 10 GiB), evicting the least
recently used entries. Hand-written because no kept library stores a *folder* of files under a key with a
per-file hash check on read and a build lock held across a minutes-long toolchain run; diskcache stores
values (blobs in its own files), so an artifact would be copied twice on every hit and its hash check
would still be ours. Importing this module loads no torch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from edgekit._fs import atomic_write_text, build_cache_dir, sha256_file, write_folder
from edgekit.exporters.base import Artifact, ParityResult
from edgekit._digest import code_digest, inputs_digest, state_sha256

if TYPE_CHECKING:
    from filelock import FileLock

    from edgekit.compression.model import CompressedModel
    from edgekit.config.target import Target

__all__ = ["BuildCache", "CacheEntry", "artifact_keys", "cached_artifact", "toolchain_versions"]

DEFAULT_MAX_MB = 10 * 1024
_ENTRY = "entry.json"
# What the toolchain's bytes depend on; a package that is not installed counts as "absent".
_PACKAGES = ("torch", "executorch", "torchao", "litert-torch", "ai-edge-litert", "ai-edge-quantizer", "onnx",
             "onnxruntime", "onnxscript", "numpy")
_KEY_VERSION = 1  # bump when the key's definition changes
_FLOAT = ("fp32", "fp16")  # precisions whose bytes the quantization scheme does not touch


@dataclass
class CacheEntry:
    """One cached artifact, as ``edgekit cache list`` shows it."""

    key: str
    model: str
    target: str
    precision: str
    bytes: int
    created: float
    last_used: float
    path: Path


class BuildCache:
    """Content-addressed artifacts under ``root`` (default ``$EDGEKIT_BUILD_CACHE``, else
    ``cache_dir()/builds``)."""

    def __init__(self, root: str | Path | None = None, max_bytes: int | None = None) -> None:
        self.root = Path(root) if root is not None else build_cache_dir()
        if max_bytes is None:
            max_bytes = int(float(os.environ.get("EDGEKIT_CACHE_MAX_MB", DEFAULT_MAX_MB)) * 1024 * 1024)
        self.max_bytes = max_bytes
        self.entries_dir, self.tmp_dir, self.locks_dir = (self.root / n for n in ("entries", "tmp", "locks"))
        self.reference_dir = self.root / "reference"  # fp32 accuracies (compression.model.fp32_accuracy)

    # ---- one key --------------------------------------------------------------------------------------

    def lock(self, key: str) -> "FileLock":
        """The build lock of ``key``: whoever holds it builds; the others wait, then re-use."""
        from filelock import FileLock

        self.locks_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.locks_dir / f"{key}.lock"))

    def clean_partial(self, key: str) -> None:
        """Remove writes of ``key`` left by a killed build (call holding its lock)."""
        for stale in self.tmp_dir.glob(f"{key}.*"):
            shutil.rmtree(stale, ignore_errors=True)

    def lookup(self, key: str) -> tuple[dict[str, Any] | None, str | None]:
        """The entry's record when every file is there with its recorded hash; else None and, for an entry
        that was there but damaged, why it was removed."""
        entry = self.entries_dir / key
        try:
            record = json.loads((entry / _ENTRY).read_text())
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as exc:
            return None, self._drop(entry, f"its {_ENTRY} is unreadable ({exc})")
        for name, digest in record.get("files", {}).items():
            path = entry / name
            if not path.is_file():
                return None, self._drop(entry, f"{name} is missing")
            if sha256_file(path) != digest:
                return None, self._drop(entry, f"{name} changed on disk (sha256 differs)")
        os.utime(entry / _ENTRY)  # last used, for eviction
        return record, None

    def restore(self, key: str, record: dict[str, Any], final: Path) -> list[Path]:
        """Copy the entry's files into ``final`` (replaced whole, never half-written)."""
        def fill(tmp: Path) -> None:
            for name in record["files"]:
                shutil.copyfile(self.entries_dir / key / name, tmp / name)

        write_folder(final, fill)
        return [final / name for name in record["files"]]

    def store(self, key: str, art: Artifact) -> str | None:
        """Add a checked artifact; None when stored, else why not (a full disk, say): the artifact itself is
        fine either way, and no partial entry is left."""
        if art.path is None or art.error is not None:
            return "not stored: the artifact failed"
        path = art.path

        def fill(tmp: Path) -> dict[str, Any]:
            files = {}
            for f in art.files:
                shutil.copyfile(f, tmp / f.name)
                files[f.name] = sha256_file(tmp / f.name)
            return {"key": key, "key_version": _KEY_VERSION, "created": time.time(), "files": files,
                    "main": path.name, "model": art.model, "target": art.target, "precision": art.precision,
                    "bytes": art.bytes, "accuracy": art.accuracy, "export_seconds": art.export_seconds,
                    "check_seconds": art.check_seconds, "parity": asdict(art.parity) if art.parity else None}

        return self._commit(key, fill)

    def read_entry(self, key: str) -> tuple[dict[str, Any], dict[str, bytes]] | None:
        """A checked entry's record and file contents (to hand to another machine), or None."""
        record, _ = self.lookup(key)
        if record is None:
            return None
        return record, {name: (self.entries_dir / key / name).read_bytes() for name in record["files"]}

    def add_entry(self, key: str, record: dict[str, Any], contents: dict[str, bytes]) -> str | None:
        """Add an entry built elsewhere (another node's ``read_entry``); every file must match its recorded
        sha256, else nothing is stored. None when stored, else why not."""
        if set(contents) != set(record.get("files", {})):
            return f"not stored: entry {key[:12]} arrived with files {sorted(contents)}, expected {sorted(record.get('files', {}))}"
        for name, data in contents.items():
            if hashlib.sha256(data).hexdigest() != record["files"][name]:
                return f"not stored: {name} of entry {key[:12]} arrived with another sha256 than it was built with"

        def fill(tmp: Path) -> dict[str, Any]:
            for name, data in contents.items():
                (tmp / name).write_bytes(data)
            return record

        return self._commit(key, fill)

    def _commit(self, key: str, fill: Callable[[Path], dict[str, Any]]) -> str | None:
        """Write an entry whole: ``fill`` writes its files into a fresh folder in ``tmp/`` and gives the
        record; the folder is renamed into place, or removed."""
        tmp = self.tmp_dir / f"{key}.{secrets.token_hex(4)}"
        try:
            tmp.mkdir(parents=True)
            record = fill(tmp)
            atomic_write_text(tmp / _ENTRY, json.dumps(record, indent=1))
            final = self.entries_dir / key
            self.entries_dir.mkdir(parents=True, exist_ok=True)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        except OSError as exc:
            return f"not stored in the build cache ({self.root}): {exc.strerror or exc}"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.evict(keep=key)
        return None

    # ---- the whole cache ------------------------------------------------------------------------------

    def entries(self) -> list[CacheEntry]:
        """Every complete entry, most recently used first."""
        out = []
        for entry in self.entries_dir.glob("*/" + _ENTRY):
            try:
                rec = json.loads(entry.read_text())
                used = entry.stat().st_mtime
            except (OSError, ValueError):
                continue
            size = sum(p.stat().st_size for p in entry.parent.iterdir() if p.is_file())
            out.append(CacheEntry(key=entry.parent.name, model=rec.get("model", "?"), target=rec.get("target", "?"),
                                  precision=rec.get("precision", "?"), bytes=size, created=rec.get("created", 0.0),
                                  last_used=used, path=entry.parent))
        return sorted(out, key=lambda e: -e.last_used)

    def size(self) -> int:
        return sum(e.bytes for e in self.entries())

    def clear(self) -> int:
        """Remove every entry (and any partial write, and the remembered fp32 accuracies); the number of
        entries removed."""
        n = len(self.entries())
        for sub in (self.entries_dir, self.tmp_dir, self.reference_dir):
            shutil.rmtree(sub, ignore_errors=True)
        return n

    def evict(self, keep: str | None = None) -> list[str]:
        """Drop least recently used entries until the cache fits its limit; the keys dropped."""
        entries = self.entries()
        total = sum(e.bytes for e in entries)
        dropped = []
        for e in reversed(entries):  # oldest first
            if total <= self.max_bytes:
                break
            if e.key == keep:
                continue
            shutil.rmtree(e.path, ignore_errors=True)
            total -= e.bytes
            dropped.append(e.key)
        return dropped

    def _drop(self, entry: Path, why: str) -> str:
        shutil.rmtree(entry, ignore_errors=True)
        return f"build cache entry {entry.name[:12]} removed: {why}; rebuilding"


def cached_artifact(record: dict[str, Any], base: Artifact, files: list[Path], seconds: float) -> Artifact:
    """``base`` (this build's names, threads, profile facts) with the cached files and check results."""
    base.files = sorted(files)
    base.path = next(f for f in files if f.name == record["main"])
    base.bytes = sum(f.stat().st_size for f in files)
    base.accuracy = record.get("accuracy")
    base.parity = ParityResult(**record["parity"]) if record.get("parity") else None
    base.export_seconds = seconds
    base.check_seconds = None  # nothing was checked this time: the figures are the cached build's
    base.cache_hit = True
    return base


# ---- keys ----------------------------------------------------------------------------------------------


def artifact_keys(cm: "CompressedModel", tasks: Sequence[tuple["Target", str]], *, check: bool) -> dict[
        tuple[str, str], str | None]:
    """(target, precision) -> key; None where the model has no stable key (then it is built, not cached)."""
    base = _model_parts(cm, check)
    # the calibration set and QAT data are hashed only when a quantized artifact needs them
    quant = _quant_parts(cm) if any(p not in _FLOAT for _, p in tasks) else None
    keys: dict[tuple[str, str], str | None] = {}
    for target, precision in tasks:
        if quant is None and precision not in _FLOAT:
            keys[(target.name, precision)] = None
            continue
        parts = {**base, "precision": precision, "target": {
            "format": target.format, "extension": target.extension, "delegate": target.delegate,
            "opset": target.opset, "tolerance": target.tolerance_for(precision).model_dump(mode="json")}}
        if precision not in _FLOAT:
            parts["quantization"] = quant
        keys[(target.name, precision)] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return keys


def _model_parts(cm: "CompressedModel", check: bool) -> dict[str, Any]:
    parts: dict[str, Any] = {"v": _KEY_VERSION, "versions": toolchain_versions(), "code": code_digest(cm.spec.module),
                             "weights": state_sha256(cm.spec.module),
                             "example": inputs_digest([cm.spec.example_inputs]), "check": check}
    if check:
        parts["parity"] = inputs_digest(cm.parity_inputs())
        ev = cm.spec.eval_set
        if ev is not None:
            parts["eval"] = inputs_digest([*ev.inputs, (ev.labels,)])
        parts["class_scores"] = cm.spec.class_scores
    return parts


def _quant_parts(cm: "CompressedModel") -> dict[str, Any] | None:
    parts: dict[str, Any] = {"scheme": cm.profile.quantization.model_dump(mode="json"),
                             "calibration": inputs_digest(cm.calibration), "fp32_layers": list(cm.fp32_layers),
                             "int8_layers": list(cm.int8_layers)}
    if cm.qat is not None:
        data = _qat_data_digest(cm.qat)
        if data is None:
            return None
        parts["qat"] = {"settings": repr(cm.qat.settings), "data": data,
                        "masks": inputs_digest([tuple(cm.qat.masks[k] for k in sorted(cm.qat.masks))])}
    return parts


def _qat_data_digest(plan: Any) -> str | None:
    from edgekit.models import TrainSet

    data = plan.data
    if isinstance(data, TrainSet):
        return inputs_digest([tuple(data.inputs), (data.labels,)])
    if isinstance(data, (list, tuple)):
        try:
            return inputs_digest([tuple(_tensors(b)) for b in data])
        except TypeError:
            return None
    return None  # a DataLoader may shuffle: its order (and the QAT result) is not a fixed input


def _tensors(batch: Any) -> Iterator[Any]:
    import torch

    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, (list, tuple)):
        for b in batch:
            yield from _tensors(b)
    else:
        raise TypeError(type(batch).__name__)


@functools.cache
def toolchain_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    out["edgekit-source"] = _source_digest()
    return out


def _source_digest() -> str:
    """edgekit's own code: a development checkout changes without its version number changing."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()
