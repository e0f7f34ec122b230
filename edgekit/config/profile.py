"""Hardware profiles: what a device's kernels are good at decides how a model is compressed."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from edgekit.agent.execution import GPU_PROVIDERS
from edgekit.config._catalog import Catalog
from edgekit.config.target import Precision, list_targets
from edgekit.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WeightScheme(_Strict):
    dtype: Literal["int8"] = "int8"
    granularity: Literal["per_channel", "per_tensor"] = "per_channel"
    symmetric: bool = True
    # 7-bit weights. onnxruntime's x86 int8 kernels multiply u8 activations by s8 weights with AVX2's
    # vpmaddubsw, whose int16 pair sums saturate with full 8-bit weights on CPUs without VNNI (measured on
    # an AVX2-only EPYC: digits-cnn onnx int8 cosine 0.960, failing parity). Honoured by the ONNX exporter
    # (onnxruntime's ``reduce_range``); XNNPACK and LiteRT widen before they multiply and need no such cut.
    reduce_range: bool = False


class ActivationScheme(_Strict):
    # Only backends that offer a choice honour dtype (ONNX QDQ); XNNPACK and LiteRT kernels take int8.
    dtype: Literal["int8", "uint8"] = "int8"
    symmetric: bool = False


class CalibrationScheme(_Strict):
    min_samples: PositiveInt = 32
    max_samples: PositiveInt = 256


class LayerSchemes(_Strict):
    """How each kind of layer is quantized in an int8 (or int4) artifact.

    Convolutions follow ``quantization.mode`` (static int8, calibrated, as CNNs always have). ``linear: auto``
    follows ``mode`` too in a model without attention or token embeddings (a CNN's classifier head), and is
    ``dynamic`` in a transformer: activation ranges computed at run time per token (ExecuTorch / LiteRT,
    XNNPACK) or per tensor (onnxruntime), weights per-channel int8, because one calibrated range per tensor
    does not fit activations whose outliers move with the input. Embeddings are weight-only: their int64
    indices are never quantized. LayerNorm, softmax and GELU stay float in every target.
    """

    linear: Literal["auto", "static", "dynamic"] = "auto"
    embedding: Literal["weight_only", "fp32"] = "weight_only"


class Int4Scheme(_Strict):
    """The ``int4`` precision: 4-bit symmetric weights in groups, int8 dynamic activations (Linear/matmul)."""

    group_size: Literal[32, 64, 128, 256] = 32  # LiteRT's blockwise kernels take exactly these
    # Weight-only embedding tables, in groups of group_size when 4-bit. 4 by default: the tables are half of a
    # small encoder's bytes (MiniLM: int4 with 8-bit tables is 0.21x fp32, with 4-bit 0.16x), at no measured cost.
    embedding_bits: Literal[4, 8] = 4
    # onnxruntime MatMulNBits: 4 computes in int8 (fast on CPU); 0 keeps fp32 compute (slow, exact to the weights).
    accuracy_level: Literal[0, 1, 2, 3, 4] = 4


class QuantizationScheme(_Strict):
    mode: Literal["static", "dynamic", "qat"] = "static"
    weight: WeightScheme = WeightScheme()
    activation: ActivationScheme = ActivationScheme()
    calibration: CalibrationScheme = CalibrationScheme()
    layers: LayerSchemes = LayerSchemes()
    int4: Int4Scheme = Int4Scheme()

    @property
    def per_channel(self) -> bool:
        return self.weight.granularity == "per_channel"


class PruningScheme(_Strict):
    granularity: Literal["none", "unstructured", "channel", "2:4"] = "none"


class TensorRtOptions(_Strict):
    """TensorRT builder flags, passed to onnxruntime's TensorRT execution provider."""

    fp16: bool = False
    int8: bool = False  # takes its scales from the artifact's QDQ nodes (no TensorRT calibration)


class ExecutionScheme(_Strict):
    """Where the device runs an artifact: onnxruntime execution providers, in order of preference.

    The agent asks for these on the device and reports which ran and how many graph nodes each took; a row
    whose accelerator did not run says so and is never recommended (``accelerator_ok``).
    """

    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"], min_length=1)
    cpu_fallback: bool = True  # CPUExecutionProvider may take what the accelerator's providers cannot
    tensorrt: TensorRtOptions = TensorRtOptions()

    @model_validator(mode="after")
    def _fallback_listed(self) -> "ExecutionScheme":
        if self.cpu_fallback and "CPUExecutionProvider" not in self.providers:
            raise ValueError("cpu_fallback is true but CPUExecutionProvider is not in providers: list it last")
        if not self.cpu_fallback and "CPUExecutionProvider" in self.providers:
            raise ValueError("cpu_fallback is false but CPUExecutionProvider is in providers: drop one")
        return self


class HostMatch(_Strict):
    """Which hosts the built-in ``local`` device maps to this profile."""

    arch: list[str] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list, description="all must exist, e.g. /etc/nv_tegra_release")
    providers: list[str] = Field(default_factory=list,
                                 description="onnxruntime execution providers that must be available here")

    def matches(self, arch: str) -> bool:
        if self.arch and arch.lower() not in [a.lower() for a in self.arch]:
            return False
        if not (all(Path(f).exists() for f in self.files) and bool(self.arch or self.files)):
            return False
        return not self.providers or set(self.providers) <= set(available_providers())


def available_providers() -> list[str]:
    """This host's onnxruntime execution providers ([] without onnxruntime): a GPU profile is this host's
    only when its runtime can reach the GPU, not merely when a GPU is there."""
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


class PowerModel(_Strict):
    """Board power when idle and when running inference: gives an energy *estimate* where no sensor reads."""

    idle_w: float = Field(ge=0)
    active_w: float = Field(gt=0)

    @model_validator(mode="after")
    def _active_above_idle(self) -> "PowerModel":
        if self.active_w < self.idle_w:
            raise ValueError(f"active_w {self.active_w} is below idle_w {self.idle_w}")
        return self


class Profile(_Strict):
    """A hardware profile, from ``profiles/NAME.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=False)

    name: str
    description: str = ""
    arch: str = Field(description="CPU architecture of the device, e.g. aarch64, x86_64")
    backend: Literal["xnnpack", "qnnpack", "fbgemm", "onednn", "tensorrt"]
    accelerator: Literal["none", "cuda"] = "none"
    isa: list[str] = Field(default_factory=list)
    threads: PositiveInt = 1
    precisions: list[Precision] = Field(min_length=1)
    targets: list[str] = Field(min_length=1, description="export targets to try, in order of preference")
    quantization: QuantizationScheme = QuantizationScheme()
    pruning: PruningScheme = PruningScheme()
    execution: ExecutionScheme = ExecutionScheme()
    match: HostMatch = HostMatch()
    power_model: PowerModel | None = Field(default=None, description="estimate energy where no sensor reads")
    source: str | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _accelerator_has_providers(self) -> "Profile":
        gpu = [p for p in self.execution.providers if p in GPU_PROVIDERS]
        if self.accelerator == "cuda" and not gpu:
            raise ValueError(f"accelerator cuda needs a GPU execution provider in execution.providers "
                             f"({', '.join(GPU_PROVIDERS)})")
        if self.accelerator == "none" and gpu:
            raise ValueError(f"execution.providers lists {', '.join(gpu)} but accelerator is none: set "
                             "accelerator: cuda")
        return self

    def execution_request(self) -> dict[str, Any] | None:
        """What the agent is asked to run on (None: the CPU, as for every CPU profile)."""
        if self.accelerator == "none":
            return None
        ex = self.execution
        return {"accelerator": self.accelerator, "providers": list(ex.providers), "cpu_fallback": ex.cpu_fallback,
                "tensorrt": ex.tensorrt.model_dump()}

    @field_validator("targets", "precisions")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dup = sorted({x for x in v if v.count(x) > 1})
        if dup:
            raise ValueError(f"listed twice: {', '.join(dup)}")
        return v


PROFILES: Catalog[Profile] = Catalog("profile", Profile, "EDGEKIT_PROFILES")


def list_profiles(extra_dir: Path | str | None = None) -> dict[str, Profile]:
    """All profiles: built-in ones, then folders in ``$EDGEKIT_PROFILES``, then ``extra_dir``."""
    return PROFILES.all(extra_dir)


def load_profile(name_or_path: str | Path | Profile, extra_dir: Path | str | None = None) -> Profile:
    """A profile by name (``pi4``) or by path to a YAML file; unknown names list the valid ones."""
    profile = PROFILES.get(name_or_path, extra_dir)
    check_targets(profile)
    return profile


def check_targets(profile: Profile) -> None:
    """Every target the profile names exists: else a ConfigError naming the profile's file, line and field
    now, rather than an unknown target later, in the middle of an export."""
    from difflib import get_close_matches

    from edgekit.config._yaml import read_yaml

    known = list_targets()
    for i, name in enumerate(profile.targets):
        if name in known or name.endswith((".yaml", ".yml")) and Path(name).is_file():
            continue
        close = get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        source = profile.source
        if source and Path(source).is_file():
            source = f"{source}:{read_yaml(Path(source))[1].get(('targets', i), '?')}"
        raise ConfigError(f"profile {profile.name!r} names unknown target {name!r}; valid: {', '.join(sorted(known))}"
                          f"{hint}. Fix the name, or add {name}.yaml to a folder in $EDGEKIT_TARGETS (--targets-dir)",
                          source=source, field=f"targets.{i}")


def host_profile(extra_dir: Path | str | None = None, arch: str | None = None) -> Profile:
    """The profile whose ``match`` fits this host; profiles with file conditions win (more specific)."""
    arch = arch or platform.machine()
    candidates = [p for p in list_profiles(extra_dir).values() if p.match.matches(arch)]
    if not candidates:
        raise ConfigError(
            f"no profile matches this host (arch {arch}); pass --profile NAME or add a profile "
            "with a 'match: {arch: [...]}' entry",
        )
    candidates.sort(key=lambda p: (-len(p.match.files), p.name))
    return candidates[0]
