"""How long and how hard to measure: validated on construction, light to import."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from edgekit.errors import ConfigError


@dataclass(frozen=True)
class BenchConfig:
    """How long and how hard to measure. Defaults: >= 50 runs and >= 1 s after warm-up.

    ``min_seconds`` may be minutes (MLPerf-style minimum duration); ``max_seconds`` then defaults to twice
    that (at least 120 s) and ``timeout`` to what a run may need on top (load, warm-up, idle baseline).
    ``threads`` may be several counts: each artifact is then measured once per count, a row each.
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

    def __post_init__(self) -> None:
        for name, lowest in (("warmup_iterations", 0), ("min_iterations", 1)):
            if getattr(self, name) < lowest:
                raise ConfigError(f"must be >= {lowest}, got {getattr(self, name)}", field=name)
        for name in ("min_seconds", "warmup_seconds", "idle_seconds"):
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

    def __post_init__(self) -> None:
        if not isinstance(self.parallel, int) or self.parallel < 1:
            raise ConfigError(f"must be an integer >= 1, got {self.parallel!r}", field="parallel")
        if self.retries < 0:
            raise ConfigError(f"must be >= 0, got {self.retries}", field="retries")
        for name in ("device_timeout", "backoff_s", "backoff_max_s", "grace_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"must be > 0 seconds, got {getattr(self, name)}", field=name)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before try ``attempt + 1``."""
        base = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
        return base * random.uniform(0.75, 1.25)
