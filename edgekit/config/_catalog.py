"""Catalogs of named YAML configs (profiles, targets): built-in folder plus the user's own."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel

from edgekit.config._yaml import read_yaml, validate
from edgekit.errors import ConfigError, UnknownNameError

M = TypeVar("M", bound=BaseModel)


def builtin_dir(kind: str) -> Path:
    """Where the shipped YAML folder ``kind`` lives: inside the wheel, or at the repo root in a checkout."""
    packaged = Path(__file__).resolve().parents[1] / "_data" / kind
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / kind


class Catalog(Generic[M]):
    """Name -> validated config, read from YAML files; later folders override earlier ones.

    The file stem must equal the ``name`` inside, so that ``--profile pi4`` and ``pi4.yaml`` agree.
    """

    def __init__(self, kind: str, model: type[M], env_var: str) -> None:
        self.kind = kind
        self.model = model
        self.env_var = env_var

    def folders(self, extra: Path | str | None = None) -> list[Path]:
        dirs = [builtin_dir(self.kind + "s")]
        env = os.environ.get(self.env_var)
        if env:
            dirs += [Path(p) for p in env.split(os.pathsep) if p]
        if extra is not None:
            dirs.append(Path(extra))
        return dirs

    def load_file(self, path: Path) -> M:
        data, lines = read_yaml(path)
        if not isinstance(data, dict):
            raise ConfigError(f"expected a mapping of {self.kind} fields, got {type(data).__name__}", source=str(path))
        item = validate(self.model, data, path=path, lines=lines)
        name = getattr(item, "name")
        if name != path.stem:
            raise ConfigError(
                f"name {name!r} does not match the file name; rename the file to {name}.yaml or set name: {path.stem}",
                source=f"{path}:{lines.get(('name',), 1)}", field="name",
            )
        setattr(item, "source", str(path))  # where it came from, for messages and `edgekit profiles --json`
        return item

    def all(self, extra: Path | str | None = None) -> dict[str, M]:
        items: dict[str, M] = {}
        if extra is not None and not Path(extra).is_dir():
            raise ConfigError(f"{self.kind} folder does not exist", source=str(extra))
        for folder in self.folders(extra):
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.yaml")):
                item = self.load_file(path)
                items[getattr(item, "name")] = item
        return items

    def get(self, name_or_path: str | Path | M, extra: Path | str | None = None) -> M:
        if isinstance(name_or_path, self.model):
            return name_or_path
        text = str(name_or_path)
        if text.endswith((".yaml", ".yml")) or os.sep in text:
            path = Path(text)
            if not path.is_file():
                raise ConfigError(f"{self.kind} file not found", source=text)
            return self.load_file(path)
        items = self.all(extra)
        if text not in items:
            raise UnknownNameError(
                self.kind, text, items,
                hint=f"add {text}.yaml to a folder named in ${self.env_var} or pass a path",
            )
        return items[text]
