"""The quantizer registry: keyed by backend, unknown names list the valid ones; the modes a profile may name."""

from __future__ import annotations

import typing

import pytest

from edgekit.compression import QUANT_MODES
from edgekit.compression.quantize import QUANTIZERS, keep_layers_fp32, quantizer_for
from edgekit.config.profile import QuantizationScheme
from edgekit.errors import UnknownNameError


def test_registry_is_keyed_by_backend_and_lists_valid_keys() -> None:
    assert sorted(QUANTIZERS) == ["litert", "onnxruntime", "xnnpack"]
    with pytest.raises(UnknownNameError, match="valid: litert, onnxruntime, xnnpack"):
        quantizer_for("qnnpack", QuantizationScheme())


def test_no_fp32_layers_leaves_the_quantizer_as_it_is() -> None:
    quantizer = object()
    assert keep_layers_fp32(quantizer, []) is quantizer


def test_quant_modes_are_exactly_what_a_profile_may_name() -> None:
    # compress() trusts the profile's validation for the mode: the Literal and QUANT_MODES must agree.
    mode = QuantizationScheme.model_fields["mode"].annotation
    assert set(typing.get_args(mode)) == set(QUANT_MODES)
