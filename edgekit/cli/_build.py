"""Build progress on a terminal: a bar per artifact with its stage (export, quantize, lower, check), a cache
hit shown as such, and one status line for everything else. Nothing is drawn when stderr is not a terminal
(a CI log or a pipe), so ``--json`` output stays clean either way."""

from __future__ import annotations

from typing import Any

from edgekit.exporters.base import BUILD_STAGES, BuildProgress

_FINAL = {"done": "[green]checked[/]", "failed": "[red]failed[/]", "cached": "[cyan]build cache hit[/]"}


class BuildBars:
    def __init__(self, console: Any) -> None:
        self.console = console
        self.tty = console.is_terminal
        self.progress: Any = None
        self.tasks: dict[tuple[str, str], Any] = {}
        self.line: Any = None

    def __enter__(self) -> "BuildBars":
        if self.tty:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description:<22}"), BarColumn(bar_width=24),
                                     TextColumn("{task.fields[stage]}"), TimeElapsedColumn(),
                                     console=self.console, transient=True)
            self.progress.__enter__()
            self.line = self.progress.add_task("edgekit", total=None, stage="starting")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def status(self, message: str) -> None:
        if self.progress is not None:
            from rich.markup import escape

            self.progress.update(self.line, stage=escape(message[:100]))

    def update(self, event: BuildProgress) -> None:
        if self.progress is None:
            return
        key = (event.target, event.precision)
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(f"{event.target} {event.precision}", total=len(BUILD_STAGES),
                                                     stage="")
        task = self.tasks[key]
        if event.stage in _FINAL:
            self.progress.update(task, completed=len(BUILD_STAGES), stage=_FINAL[event.stage])
        elif event.stage in BUILD_STAGES:
            self.progress.update(task, completed=BUILD_STAGES.index(event.stage), stage=event.stage)
        else:
            self.progress.update(task, stage=event.stage)
