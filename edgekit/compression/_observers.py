"""Calibrate once per model and calibration set, whichever quantizer asks.

XNNPACK's quantizer (ExecuTorch int8) and litert-torch's (LiteRT int8) place the same observers (histogram
activations, per-channel min/max weights, same dtype, range and bins) on the same edges of the captured
graph; litert's adds one on the classifier's output. Calibrating each is the same 128 forward passes
through the same histogram observers twice (36 s each for mobilenet-v2 on this 2-core VM). So every
observer's state after a calibration is kept, keyed by the captured graph (its code and weights), the
samples and the observer's own settings; a later prepared graph whose observers are *all* found there
takes those states and runs no sample. The states are what the same samples would have produced, so the
converted graph is the same. Any observer not found (another quantizer's settings, another graph) means a
full calibration, as before. Per process: the export workers put the two int8 artifacts in one worker
(``exporters._parallel.shares``), the one with more observers first. Hand-written: torchao has no way to
share observer statistics between quantizers.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Sequence

import torch

from edgekit.models import Inputs
from edgekit._digest import inputs_digest, state_sha256

_SETTINGS = ("dtype", "qscheme", "quant_min", "quant_max", "ch_axis", "bins", "eps", "reduce_range",
             "upsample_rate", "averaging_constant", "is_dynamic")
_KEPT: OrderedDict[str, dict[tuple[str, str], dict[str, torch.Tensor]]] = OrderedDict()
_MAX_KEPT = 4  # (graph, samples) pairs; a few KiB of histograms each


def calibration_key(graph: torch.fx.GraphModule, samples: Sequence[Inputs]) -> str:
    # torch.export adds an input-guard call (``_guards_fn``) or not, depending on what was imported before
    # (litert-torch changes it): it observes nothing, so it is not part of what a calibration depends on.
    code = "\n".join(line for line in graph.code.splitlines() if "_guards_fn" not in line)
    parts = [code, state_sha256(graph), inputs_digest(samples)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def observers(prepared: torch.fx.GraphModule) -> dict[str, tuple[str, str]]:
    """Observer module name -> (the node it observes, its settings)."""
    found = {}
    for node in prepared.graph.nodes:
        if node.op != "call_module" or "activation_post_process" not in str(node.target) or not node.args:
            continue
        obs = prepared.get_submodule(str(node.target))
        settings = repr((type(obs).__qualname__, *(str(getattr(obs, k, None)) for k in _SETTINGS)))
        found[str(node.target)] = (getattr(node.args[0], "name", str(node.args[0])), settings)
    return found


def restore(prepared: torch.fx.GraphModule, key: str) -> bool:
    """Load every observer's state from an earlier calibration; False (nothing loaded) unless all are there."""
    kept = _KEPT.get(key)
    if kept is None:
        return False
    wanted = observers(prepared)
    if not wanted or any(ident not in kept for ident in wanted.values()):
        return False
    for name, ident in wanted.items():
        prepared.get_submodule(name).load_state_dict(kept[ident])
    _KEPT.move_to_end(key)
    return True


def keep(prepared: torch.fx.GraphModule, key: str) -> None:
    """Remember the observers' states after ``prepared`` ran the calibration samples."""
    states: dict[tuple[str, str], dict[str, Any]] = _KEPT.setdefault(key, {})
    for name, ident in observers(prepared).items():
        states[ident] = {k: v.detach().clone() for k, v in prepared.get_submodule(name).state_dict().items()}
    _KEPT.move_to_end(key)
    while len(_KEPT) > _MAX_KEPT:
        _KEPT.popitem(last=False)
