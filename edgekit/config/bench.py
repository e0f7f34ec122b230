"""What a benchmark run is asked to do: how long and how hard to measure (``BenchConfig``), how a fleet
treats its devices (``FleetConfig``), and the whole request of a fleet run (``BenchRequest``). Validated on
construction, light to import."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from edgekit.errors import ConfigError

if TYPE_CHECKING:
    from edgekit.config.profile import Profile


@dataclass(frozen=True)
class BenchConfig:
    """How long and how hard to measure. Defaults: >= 50 runs and >= 1 s after warm-up.

    ``min_seconds`` may be minutes (MLPerf-style minimum duration); ``max_seconds`` then defaults to twice
    that (at least 120 s) and ``timeout`` to what a run may need on top (load, warm-up, idle baseline).
    ``threads`` may be several counts: each artifact is then measured once per count, a row each.
    ``lock_timeout`` bounds the wait for a device whose measuring lock another run holds (``agent/devlock.py``);
    it is not part of ``timeout``: a run on a device with a workdir may take ``timeout + lock_timeout``.
    """

    warmup_iterations: int = 10
    warmup_seconds: float = 0.2
    min_iterations: int = 50
    min_seconds: float = 1.0
    max_seconds: float | None = None
    threads: int | Sequence[int] | None = None  # None: the artifact's profile's thread count
    timeout: float | None = None
    energy: bool = True
    idle_seconds: float = 0.5  # idle power baseline before the timed window (power sensors, meters)
    energy_interval_s: float = 0.05  # sampling period of power sensors
    external_meter: Sequence[str] | None = None  # argv of a command printing joules or watts (plug-in)
    profile_ops: bool = False  # a separate per-op profiling pass after the timed loop
    device_accuracy: bool = True  # score the eval set with the device's runtime, after timing
    sensors_root: str = "/"  # where /sys and /proc are (tests point it at fake trees)
    include_copies: bool = False  # on a GPU provider, time host<->device copies too (default: GPU time only)
    lock_timeout: float = 300.0  # how long a run waits for a device whose measuring lock another run holds

    def __post_init__(self) -> None:
        for name, lowest in (("warmup_iterations", 0), ("min_iterations", 1)):
            if getattr(self, name) < lowest:
                raise ConfigError(f"must be >= {lowest}, got {getattr(self, name)}", field=name)
        for name in ("min_seconds", "warmup_seconds", "idle_seconds", "lock_timeout"):
            if getattr(self, name) < 0:
                raise ConfigError(f"must be >= 0, got {getattr(self, name)}", field=name)
        if self.energy_interval_s <= 0:
            raise ConfigError(f"must be > 0, got {self.energy_interval_s}", field="energy_interval_s")
        if self.max_seconds is None:
            object.__setattr__(self, "max_seconds", max(120.0, 2 * self.min_seconds))
        if self.max_seconds < self.min_seconds:  # type: ignore[operator]
            raise ConfigError(f"max_seconds {self.max_seconds} < min_seconds {self.min_seconds}", field="max_seconds")
        if self.timeout is None:
            object.__setattr__(self, "timeout", self.max_seconds * 2 + self.idle_seconds + 300)  # type: ignore[operator]
        counts = [self.threads] if isinstance(self.threads, int) else list(self.threads or [])
        if any(not isinstance(t, int) or isinstance(t, bool) or t < 1 for t in counts):
            raise ConfigError(f"thread counts must be integers >= 1, got {self.threads!r}", field="threads")
        if self.threads is not None and not isinstance(self.threads, int):
            if not counts:
                raise ConfigError("give at least one thread count, or None for the profile's", field="threads")
            object.__setattr__(self, "threads", tuple(counts))
        if self.external_meter is not None:
            if isinstance(self.external_meter, str) or not list(self.external_meter):
                raise ConfigError("external_meter is an argv list, e.g. ['meter-read', '--joules']",
                                  field="external_meter")
            object.__setattr__(self, "external_meter", tuple(self.external_meter))

    @property
    def run_timeout(self) -> float:
        """Seconds one agent run may take (``timeout``, resolved on construction when not given)."""
        assert self.timeout is not None  # __post_init__ always sets it
        return float(self.timeout)

    def thread_counts(self, default: int) -> list[int]:
        """The thread counts to measure an artifact with (its profile's when none were given)."""
        if self.threads is None:
            return [default]
        return [self.threads] if isinstance(self.threads, int) else list(self.threads)


@dataclass(frozen=True)
class FleetConfig:
    """How a fleet run treats its devices; validated on construction."""

    parallel: int = 4  # devices measured at once
    device_timeout: float = 1800.0  # seconds per device, from when its artifacts are ready
    retries: int = 2  # further tries after a transient connection error
    backoff_s: float = 1.0  # first wait before a retry; doubled each time, +-25 % jitter
    backoff_max_s: float = 30.0
    grace_s: float = 15.0  # after the deadline, how long a stuck device thread gets before it is abandoned
    cluster: str | None = None  # a Ray cluster's address (HOST:PORT): builds and devices run there (edgekit.cluster)
    build_cpus: int = 2  # on a cluster, the CPUs a profile's build task asks for (and its export workers)

    def __post_init__(self) -> None:
        if not isinstance(self.parallel, int) or self.parallel < 1:
            raise ConfigError(f"must be an integer >= 1, got {self.parallel!r}", field="parallel")
        if self.retries < 0:
            raise ConfigError(f"must be >= 0, got {self.retries}", field="retries")
        if not isinstance(self.build_cpus, int) or self.build_cpus < 1:
            raise ConfigError(f"must be an integer >= 1, got {self.build_cpus!r}", field="build_cpus")
        if self.cluster is not None and (not isinstance(self.cluster, str) or ":" not in self.cluster):
            raise ConfigError(f"a Ray cluster address is HOST:PORT (what `ray start --head` printed), got "
                              f"{self.cluster!r}", field="cluster")
        for name in ("device_timeout", "backoff_s", "backoff_max_s", "grace_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"must be > 0 seconds, got {getattr(self, name)}", field=name)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before try ``attempt + 1``."""
        base = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
        return base * random.uniform(0.75, 1.25)


@dataclass(frozen=True)
class BenchRequest:
    """Everything one fleet run (``edgekit.bench``) takes: the API, the CLI, the fleet and ``--resume`` all
    pass this one object, and a run stores it (``record``) so that a resume can rebuild it.

    Devices are chosen by name (``devices``), by tag (``tags``, any of them) or all registered ones
    (``all_devices``). ``config``/``fleet`` None means the defaults (or, on resume, the stored run's).
    """

    model: Any = None  # nn.Module, built-in name, .pt2/.pt file, or "package.module:function"
    devices: Sequence[str] | None = None
    tags: Sequence[str] | None = None
    all_devices: bool = False
    profile: "str | Path | Profile | None" = None  # overrides each device's own profile
    targets: Sequence[str] | None = None
    precisions: Sequence[str] | None = None
    calibration: str | Path | None = None
    input_shape: str | None = None
    allow_pickle: bool = False
    recipe: str | Path | None = None
    config: BenchConfig | None = None
    fleet: FleetConfig | None = None
    devices_file: str | Path | None = None
    results: str | Path | None = None  # the results folder (default ``./edgekit-results``)
    trust_new_host: bool = False
    mlflow: str | None = None  # a tracking URI to log the run to
    cache: bool = True  # re-use artifacts from the build cache (False: rebuild, store nothing)

    def __post_init__(self) -> None:
        for name in ("devices", "tags", "targets", "precisions"):
            value = getattr(self, name)
            if isinstance(value, str):  # "a,b" is one name with a comma in it, not two: say so
                raise ConfigError(f"give a list of names, got the string {value!r}", field=name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))

    @property
    def bench_config(self) -> BenchConfig:
        return self.config or BenchConfig()

    @property
    def fleet_config(self) -> FleetConfig:
        return self.fleet or FleetConfig()

    def record(self, device_names: Sequence[str]) -> dict[str, Any]:
        """The JSON a run keeps in its meta (``request``): files as absolute paths, a Python model object
        only by its type, the devices actually chosen."""
        model, profile = self.model, self.profile
        return {
            "model": _as_given(model) if isinstance(model, (str, Path)) else f"<{type(model).__name__} object>",
            "model_is_object": not isinstance(model, (str, Path)), "devices": list(device_names),
            "profile": str(profile) if isinstance(profile, (str, Path)) else getattr(profile, "name", None),
            "targets": list(self.targets) if self.targets else None,
            "precisions": list(self.precisions) if self.precisions else None,
            "calibration": _as_given(self.calibration) if self.calibration else None,
            "input_shape": self.input_shape, "allow_pickle": self.allow_pickle,
            "recipe": _as_given(self.recipe) if self.recipe else None,
            "config": asdict(self.bench_config), "fleet": asdict(self.fleet_config),
        }

    def resumed(self, stored: dict[str, Any], run_id: str) -> "BenchRequest":
        """This request completed from a stored run's ``record``: what was given here wins, the rest (and
        always the devices) comes from the run."""
        model = self.model
        if model is None:
            if stored.get("model_is_object"):
                raise ConfigError(f"run {run_id} benchmarked a Python model object: pass the model again to "
                                  "resume it", field="model")
            model = stored.get("model")
        return replace(
            self, model=model, devices=stored.get("devices"), tags=None, all_devices=False,
            profile=self.profile or stored.get("profile"), targets=self.targets or stored.get("targets"),
            precisions=self.precisions or stored.get("precisions"),
            calibration=self.calibration or stored.get("calibration"),
            input_shape=self.input_shape or stored.get("input_shape"),
            allow_pickle=self.allow_pickle or bool(stored.get("allow_pickle")),
            recipe=self.recipe or stored.get("recipe"),
            config=self.config or BenchConfig(**stored.get("config", {})),
            fleet=_resumed_fleet(self.fleet, stored.get("fleet", {})),
        )


def _resumed_fleet(given: FleetConfig | None, stored: dict[str, Any]) -> FleetConfig:
    """The fleet settings given, else the run's; a run that ran on a cluster resumes there unless another
    cluster is named."""
    if given is None:
        return FleetConfig(**stored)
    if given.cluster is None and stored.get("cluster"):
        return replace(given, cluster=stored["cluster"])
    return given


def _as_given(value: str | Path) -> str:
    """A file as an absolute path (``--resume`` may run from another folder); a name as it is."""
    return str(Path(value).resolve()) if Path(value).is_file() else str(value)
