"""How long and how hard to measure: validated on construction, light to import."""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.errors import ConfigError


@dataclass(frozen=True)
class BenchConfig:
    """How long and how hard to measure. Defaults follow the issue: >= 50 runs and >= 1 s."""

    warmup_iterations: int = 10
    warmup_seconds: float = 0.2
    min_iterations: int = 50
    min_seconds: float = 1.0
    max_seconds: float = 120.0
    threads: int | None = None  # None: the artifact's profile's thread count
    timeout: float = 600.0

    def __post_init__(self) -> None:
        for name, lowest in (("warmup_iterations", 0), ("min_iterations", 1)):
            if getattr(self, name) < lowest:
                raise ConfigError(f"must be >= {lowest}, got {getattr(self, name)}", field=name)
        if self.min_seconds < 0 or self.warmup_seconds < 0:
            raise ConfigError("durations must be >= 0", field="min_seconds")
        if self.max_seconds < self.min_seconds:
            raise ConfigError(f"max_seconds {self.max_seconds} < min_seconds {self.min_seconds}", field="max_seconds")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"must be >= 1, got {self.threads}", field="threads")
