"""``edgekit cache list | du | clear``: the build cache (see :mod:`edgekit.exporters.cache`)."""

from __future__ import annotations

import json
import time
from typing import Any

import click

import edgekit
import edgekit.cli._options as opt
from edgekit.cli._main import _stderr, _stdout, cli, escape


@cli.group()
def cache() -> None:
    """The build cache: artifacts re-used when their inputs have not changed ($EDGEKIT_CACHE/builds)."""


@cache.command("list")
@opt.json_option
def cache_list(as_json: bool) -> None:
    """Every cached artifact, most recently used first."""
    entries = edgekit.build_cache().entries()
    rows: list[dict[str, Any]] = [{"key": e.key, "model": e.model, "target": e.target, "precision": e.precision, "bytes": e.bytes,
             "created": e.created, "last_used": e.last_used, "path": str(e.path)} for e in entries]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"build cache: {edgekit.build_cache().root}")
    for col in ("key", "model", "target", "prec", "KiB", "last used"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["key"][:12], escape(r["model"]), escape(r["target"]), escape(r["precision"]),
                      f"{r['bytes'] / 1024:.0f}", time.strftime("%Y-%m-%d %H:%M", time.localtime(r["last_used"])))
    _stdout().print(table)


@cache.command("du")
@opt.json_option
def cache_du(as_json: bool) -> None:
    """How much the cache holds, and its limit ($EDGEKIT_CACHE_MAX_MB)."""
    store = edgekit.build_cache()
    entries = store.entries()
    size = sum(e.bytes for e in entries)
    if as_json:
        click.echo(json.dumps({"root": str(store.root), "entries": len(entries), "bytes": size,
                               "max_bytes": store.max_bytes}))
        return
    click.echo(f"{size / 2**20:.1f} MiB in {len(entries)} entries (limit {store.max_bytes / 2**20:.0f} MiB, least "
               f"recently used evicted first): {store.root}")


@cache.command("clear")
def cache_clear() -> None:
    """Remove every cached artifact (the next builds run the toolchains again)."""
    store = edgekit.build_cache()
    n = store.clear()
    _stderr().print(f"removed {n} cached artifacts from {escape(str(store.root))}", highlight=False)
