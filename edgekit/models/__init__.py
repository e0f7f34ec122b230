"""Where models come from: built-in names, ``.pt2`` files, ``package.module:function``, or a module.

Heavy imports (torch) happen here, not in ``import edgekit``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Sequence

import torch

from edgekit.errors import ModelError, UnknownNameError
from edgekit.models._spec import EvalSet, Inputs, ModelSpec, TrainSet, as_inputs, model_family

__all__ = ["BUILTIN", "EvalSet", "Inputs", "ModelSpec", "TrainSet", "as_inputs", "load_model", "model_family",
           "parse_shapes"]


def _digits() -> ModelSpec:
    from edgekit.models import digits

    return digits.build()


def _digits_wide() -> ModelSpec:
    from edgekit.models import digits

    return digits.build(width=64)


def _mobilenet() -> ModelSpec:
    from edgekit.models import mobilenet

    return mobilenet.build()


def _minilm() -> ModelSpec:
    from edgekit.models import hf

    return hf.minilm()


def _gpt2_tiny() -> ModelSpec:
    from edgekit.models import hf

    return hf.gpt2_tiny()


BUILTIN: dict[str, Callable[[], ModelSpec]] = {
    "digits-cnn": _digits, "digits-cnn-wide": _digits_wide, "mobilenet-v2": _mobilenet,
    "minilm-l6": _minilm, "gpt2-tiny": _gpt2_tiny,
}


def parse_shapes(text: str | Sequence[str] | None) -> list[tuple[int, ...]]:
    """``"1,3,224,224"`` or several such joined by ``;`` -> one shape per input."""
    if not text:
        return []
    parts = text.split(";") if isinstance(text, str) else list(text)
    shapes = []
    for part in parts:
        try:
            shape = tuple(int(d) for d in part.replace("x", ",").split(",") if d.strip())
        except ValueError as exc:
            raise ModelError(f"--input-shape {part!r}: expected integers like 1,3,224,224") from exc
        if not shape or any(d <= 0 for d in shape):
            raise ModelError(f"--input-shape {part!r}: dimensions must be positive integers")
        shapes.append(shape)
    return shapes


def load_model(
    model: str | Path | torch.nn.Module | ModelSpec,
    *,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
    input_shape: str | Sequence[str] | None = None,
    name: str | None = None,
    allow_pickle: bool = False,
) -> ModelSpec:
    """Resolve any accepted model form into a :class:`ModelSpec` in eval mode."""
    if isinstance(model, ModelSpec):
        return model
    shapes = parse_shapes(input_shape)
    given = as_inputs(example_inputs) if example_inputs is not None else None
    if isinstance(model, torch.nn.Module):
        return _spec(name or type(model).__name__, model, given, shapes, origin="python object")
    text = str(model)
    if text in BUILTIN:
        return BUILTIN[text]()
    if text.endswith(".pt2"):
        return _from_pt2(Path(text), given, shapes, name)
    if text.endswith((".pt", ".pth")):
        return _from_pickle(Path(text), given, shapes, name, allow_pickle)
    if ":" in text and not Path(text).exists():
        return _from_factory(text, given, shapes, name)
    raise UnknownNameError(
        "model", text, BUILTIN,
        hint="or pass a torch.export .pt2 file, a .pt file, or package.module:function",
    )


def _spec(name: str, module: torch.nn.Module, given: Inputs | None, shapes: list[tuple[int, ...]], origin: str) -> ModelSpec:
    if given is None:
        if not shapes:
            raise ModelError(f"model {name!r}: its input shape is unknown; pass --input-shape (e.g. 1,3,224,224) or example_inputs")
        given = tuple(torch.randn(*s) for s in shapes)
    module = module.eval()
    return ModelSpec(name=name, module=module, example_inputs=given, origin=origin)


def _from_pt2(path: Path, given: Inputs | None, shapes: list[tuple[int, ...]], name: str | None) -> ModelSpec:
    if not path.is_file():
        raise ModelError(f"{path}: file not found")
    try:
        ep = torch.export.load(str(path))
    except Exception as exc:
        saved_by = _pt2_torch_version(path)
        if saved_by and saved_by != torch.__version__:
            raise ModelError(f"{path}: saved by torch {saved_by}, which this torch {torch.__version__} cannot load "
                             f"({type(exc).__name__}: {exc}); re-export it with torch.export.save under torch "
                             f"{torch.__version__}, or install torch {saved_by} here") from exc
        raise ModelError(f"{path}: cannot load as a torch.export program ({type(exc).__name__}: {exc}); "
                         f"re-save it with torch.export.save under torch {torch.__version__}") from exc
    if given is None and not shapes and ep.example_inputs is not None:
        args, _kwargs = ep.example_inputs
        given = tuple(args)
    return _spec(name or path.stem, _ExportedModule(ep.module()), given, shapes, origin=f"torch.export file {path}")


def _pt2_torch_version(path: Path) -> str | None:
    """The torch version a ``.pt2`` archive says wrote it (``models/*.json`` inside the zip), if it says."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if "/models/" in f"/{name}" and name.endswith(".json"):
                    version = json.loads(archive.read(name)).get("torch_version")
                    return str(version) if version else None
    except (OSError, ValueError, zipfile.BadZipFile, AttributeError):
        return None
    return None


class _ExportedModule(torch.nn.Module):
    """A loaded ExportedProgram's GraphModule cannot switch train/eval: this wrapper can."""

    def __init__(self, gm: torch.nn.Module) -> None:
        super().__init__()
        self.gm = gm

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.gm(*args)

    def train(self, mode: bool = True) -> "_ExportedModule":
        self.training = mode
        return self


def _from_pickle(path: Path, given: Inputs | None, shapes: list[tuple[int, ...]], name: str | None, allow_pickle: bool) -> ModelSpec:
    if not path.is_file():
        raise ModelError(f"{path}: file not found")
    try:
        obj = torch.load(str(path), weights_only=not allow_pickle, map_location="cpu")
    except Exception as exc:
        if not allow_pickle:
            raise ModelError(
                f"{path}: not loadable with weights_only=True (a pickled module can run arbitrary code). "
                "If you trust this file, pass --allow-pickle (allow_pickle=True); better, save it with "
                "torch.export.save as a .pt2"
            ) from exc
        raise ModelError(f"{path}: cannot load ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, torch.nn.Module):
        raise ModelError(f"{path}: holds a {type(obj).__name__}, not an nn.Module (a state dict needs its model "
                         "class: use package.module:function that builds the model and loads it)")
    return _spec(name or path.stem, obj, given, shapes, origin=f"pickle {path}")


def _from_factory(text: str, given: Inputs | None, shapes: list[tuple[int, ...]], name: str | None) -> ModelSpec:
    mod_name, _, attr = text.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"{text}: cannot import ({type(exc).__name__}: {exc})") from exc
    try:
        module = factory()
    except Exception as exc:
        raise ModelError(f"{text}: the factory raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"{text}: returned a {type(module).__name__}, expected a torch.nn.Module")
    return _spec(name or attr, module, given, shapes, origin=f"factory {text}")
