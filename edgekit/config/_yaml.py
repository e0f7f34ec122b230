"""YAML loading whose errors name file, line and field.

pydantic reports a field path (``quantization.weight.granularity``); a user wants the line in their
file. We compose the YAML node tree once to map each path to its line, then translate errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from edgekit.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

_Path = tuple[Any, ...]


def _line_map(node: yaml.Node, path: _Path = (), out: dict[_Path, int] | None = None) -> dict[_Path, int]:
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[path + (key,)] = key_node.start_mark.line + 1
            _line_map(value_node, path + (key,), out)
            out[path + (key,)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, path + (i,), out)
    return out


def read_yaml(path: Path) -> tuple[Any, dict[_Path, int]]:
    """Parse ``path``; return the data and a map from field path to line number."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror}", source=str(path)) from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"malformed YAML: {problem}; fix the syntax", source=where) from exc
    lines = _line_map(node) if node is not None else {}
    return data, lines


def validate(model: type[M], data: Any, *, path: Path, lines: dict[_Path, int], base: _Path = ()) -> M:
    """Validate ``data`` as ``model``; on failure raise ConfigError naming file:line and field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise config_error_from(exc, path=path, lines=lines, base=base, data=data) from exc


def config_error_from(exc: ValidationError, *, path: Path, lines: dict[_Path, int], base: _Path = (),
                      data: Any = None) -> ConfigError:
    err = exc.errors()[0]
    loc = _yaml_path(data, tuple(err["loc"])) if data is not None else tuple(err["loc"])
    if err["type"] == "union_tag_invalid":  # point at the `kind:` line, not the entry's first
        loc += (str(err.get("ctx", {}).get("discriminator", "")).strip("'"),)
    full = base + loc
    line = _closest_line(lines, full)
    field = ".".join(str(p) for p in full) or "(top level)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown field; remove it or check its spelling"
    elif "input" in err and err["type"] != "missing" and not isinstance(err["input"], dict):
        # a whole mapping is never echoed: it is long, and may hold what the check refused (a password)
        msg += f" (got {err['input']!r})"
    more = len(exc.errors()) - 1
    if more:
        msg += f" (+{more} more error{'s' if more > 1 else ''})"
    source = f"{path}:{line}" if line else str(path)
    return ConfigError(msg, source=source, field=field)


def _yaml_path(data: Any, loc: _Path) -> _Path:
    """pydantic's error location as a path in the YAML: without the tags of discriminated unions
    (``devices.0.ssh.port`` is ``devices.0.port`` in the file)."""
    out: list[Any] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and i + 1 < len(loc) and loc[i + 1] in node:
            continue  # a union's tag: not in the file
        else:
            return (*out, *loc[i:])
        out.append(part)
    return tuple(out)


def _closest_line(lines: dict[_Path, int], loc: _Path) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None
