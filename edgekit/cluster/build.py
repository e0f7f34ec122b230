"""One profile's artifacts: compress, then export (through the build cache). The same function runs in a
host's export thread and, on a cluster, inside a Ray task on whichever node has the CPUs.

A model, calibration set or recipe given as a file on the driver's disk travels with the task as bytes
(``portable``) and is written into the task's own folder on the node (``materialize``): cluster nodes do
not share a disk. Importing this module loads neither Ray nor torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from edgekit.config.profile import Profile
    from edgekit.exporters.base import Artifact, BuildProgress
    from edgekit.exporters.cache import BuildCache


@dataclass(frozen=True)
class BuildSpec:
    """What a profile's build takes from a fleet request (``BenchRequest``), and nothing of the devices."""

    model: Any
    targets: Sequence[str] | None = None
    precisions: Sequence[str] | None = None
    calibration: Any = None
    input_shape: str | None = None
    allow_pickle: bool = False
    recipe: Any = None
    cache: bool = True

    @classmethod
    def of(cls, request: Any) -> "BuildSpec":
        return cls(request.model, request.targets, request.precisions, request.calibration, request.input_shape,
                   request.allow_pickle, request.recipe, request.cache)

    def portable(self) -> "BuildSpec":
        """This spec with each file it names carried as ``{"name", "data"}``, for a task on another node."""
        return replace(self, model=_portable(self.model), calibration=_portable(self.calibration),
                       recipe=_portable(self.recipe))

    def materialize(self, folder: Path) -> "BuildSpec":
        """A portable spec's files written under ``folder`` (on the node that builds)."""
        return replace(self, model=_materialized(self.model, folder / "model"),
                       calibration=_materialized(self.calibration, folder / "calibration"),
                       recipe=_materialized(self.recipe, folder / "recipe"))


def _portable(value: Any) -> Any:
    if isinstance(value, (str, Path)) and Path(value).is_file():
        return {"name": Path(value).name, "data": Path(value).read_bytes()}
    return value


def _materialized(value: Any, folder: Path) -> Any:
    if isinstance(value, dict) and set(value) == {"name", "data"}:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / value["name"]
        path.write_bytes(value["data"])
        return str(path)
    return value


def build_profile(spec: BuildSpec, prof: "Profile", out: Path, *, cache: "bool | BuildCache" = True,
                  jobs: int | None = None, on_event: Callable[[str], None] | None = None,
                  on_progress: Callable[["BuildProgress"], None] | None = None) -> tuple[list["Artifact"], str]:
    """The profile's artifacts under ``out``, and the compressed model's weights digest."""
    from edgekit._digest import state_sha256
    from edgekit.compression import compress
    from edgekit.exporters import export

    if on_event:
        on_event("compressing")
    cm = compress(spec.model, prof, spec.calibration, input_shape=spec.input_shape, allow_pickle=spec.allow_pickle,
                  recipe=spec.recipe, on_event=on_event)
    arts = export(cm, spec.targets, out, precisions=spec.precisions, cache=cache if spec.cache else False, jobs=jobs,
                  on_event=on_event, on_progress=on_progress)
    return arts, state_sha256(cm.spec.module)
