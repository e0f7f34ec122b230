"""A memo of torchao's traced pattern graphs, per process.

torchao's pt2e matches conv+BatchNorm (and other) patterns by tracing each pattern function with
``torch.export`` every time a model is prepared (``_get_aten_graph_module_for_pattern``): 24 traces, 9.5 s
of a 12 s ``prepare_qat_pt2e`` on mobilenet-v2 (and the same on digits-cnn: the patterns do not depend on
the model), paid again by every quantizer. A pattern's graph depends only on its code and its example inputs'
shapes and dtypes, so it is traced once per process (keyed by torch's and torchao's versions and the
pattern's source) and every later call gets a copy. Not kept on disk: the traced module holds a local
lambda and does not pickle, and a re-built one would lose the node metadata the matcher reads. Hand-written
because torchao has no cache of its own; it is installed once per process over the function in every
module that imported it, and any argument it cannot key falls through to the original, uncached.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import inspect
import threading
from typing import Any, Callable

import torch

_MODULES = ("torchao.quantization.pt2e.utils", "torchao.quantization.pt2e.qat_utils",
            "torchao.quantization.pt2e.export_utils", "executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils",
            "litert_torch.quantize.pt2e_quantizer_utils")
_NAME = "_get_aten_graph_module_for_pattern"
_LOCK = threading.Lock()
_MEMO: dict[str, torch.fx.GraphModule] = {}
_installed = False


class _Unkeyable(Exception):
    pass


def install() -> None:
    """Route every module's ``_get_aten_graph_module_for_pattern`` through the memo (idempotent)."""
    global _installed
    with _LOCK:
        if _installed:
            return
        original = importlib.import_module(_MODULES[0]).__dict__[_NAME]
        memoized = _memoized(original)
        for name in _MODULES:
            try:
                mod = importlib.import_module(name)
            except ImportError:
                continue  # a backend that is not installed traces nothing
            if getattr(mod, _NAME, None) is original:
                setattr(mod, _NAME, memoized)
        _installed = True


def _memoized(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def get(pattern: Callable, example_inputs: tuple[Any, ...], is_cuda: bool = False, **kwargs: Any) -> Any:
        try:
            key = _key(pattern, example_inputs, is_cuda, kwargs)
        except _Unkeyable:
            return original(pattern, example_inputs, is_cuda, **kwargs)
        if key not in _MEMO:
            _MEMO[key] = original(pattern, example_inputs, is_cuda, **kwargs)
        return copy.deepcopy(_MEMO[key])  # callers may rewrite the graph they get

    return get


def _key(pattern: Callable, example_inputs: tuple[Any, ...], is_cuda: bool, kwargs: dict[str, Any]) -> str:
    from importlib.metadata import version

    parts = [torch.__version__, version("torchao"), _ident(pattern), [_ident(x) for x in example_inputs], is_cuda,
             sorted((k, _ident(v)) for k, v in kwargs.items())]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _ident(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return ("tensor", tuple(x.shape), str(x.dtype), x.requires_grad)
    if x is None or isinstance(x, (bool, int, float, str)):
        return repr(x)
    if isinstance(x, (tuple, list)):
        return tuple(_ident(v) for v in x)
    if isinstance(x, torch.nn.Module):  # the quantizers wrap each pattern function in a module (_WrapperModule)
        cls = type(x)
        public = sorted((k, _ident(v)) for k, v in vars(x).items() if not k.startswith("_") and k != "training")
        tensors = sorted((k, _ident(v)) for k, v in [*x.named_parameters(), *x.named_buffers()])
        children = sorted((k, _ident(m)) for k, m in x.named_children())
        return ("module", cls.__module__, cls.__qualname__, _source(cls), public, tensors, children)
    if isinstance(x, functools.partial):
        return ("partial", _ident(x.func), _ident(x.args), tuple(sorted((k, _ident(v)) for k, v in x.keywords.items())))
    if callable(x):
        ident = (getattr(x, "__module__", None), getattr(x, "__qualname__", None))
        if ident[1] is None:
            raise _Unkeyable
        code = getattr(x, "__code__", None)
        if code is None:
            return ident  # a builtin (F.conv2d): its name is its identity
        cells = tuple(_ident(c.cell_contents) for c in (x.__closure__ or ()))
        return (*ident, _source(x), cells)
    raise _Unkeyable


def _source(obj: Any) -> str:
    try:
        text = inspect.getsource(obj)
    except (OSError, TypeError):
        code = getattr(obj, "__code__", None)
        if code is None:
            raise _Unkeyable from None
        text = code.co_code.hex()
    return hashlib.sha256(text.encode()).hexdigest()
