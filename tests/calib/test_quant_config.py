"""QuantSpec / QuantConfig: validation at the boundary, per-role lookup, and the JSON round trip the calibration
log relies on. (Named test_quant_config.py: tests/diffusion/test_config.py already holds the module name
`test_config` in this package-less test tree.)"""
import json

import pytest

from faircalib.config import ROLES, QuantConfig, QuantSpec


@pytest.mark.parametrize("bits", [0, 1, 9, 16, 4.0, "4"])
def test_spec_rejects_bits_outside_2_to_8(bits):
    with pytest.raises(ValueError, match="bits must be an int in 2..8"):
        QuantSpec(bits=bits)


@pytest.mark.parametrize("group_size", [0, -2, -128, 2.5])
def test_spec_rejects_group_size(group_size):
    with pytest.raises(ValueError, match="group_size must be -1"):
        QuantSpec(group_size=group_size)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_spec_accepts_valid_settings(bits):
    spec = QuantSpec(bits=bits, symmetric=False, group_size=32)
    assert (spec.bits, spec.symmetric, spec.group_size) == (bits, False, 32)


def test_check_dim_names_the_tensor_and_the_fix():
    QuantSpec(group_size=16).check_dim(64, "layer")
    QuantSpec().check_dim(63, "layer")  # per channel divides anything
    with pytest.raises(ValueError, match=r"block 3 linear 'q': group_size 16 does not divide in_features 56"):
        QuantSpec(group_size=16).check_dim(56, "block 3 linear 'q'")


@pytest.mark.parametrize("kwargs", [
    {"overrides": {"qkv": (QuantSpec(), QuantSpec())}},
    {"skip": ("lm_head",)},
    {"skip": ("q", "embed")},
])
def test_config_rejects_unknown_roles(kwargs):
    with pytest.raises(ValueError, match="unknown roles"):
        QuantConfig(**kwargs)


def test_config_rejects_grouped_or_asymmetric_activations():
    """Activation quantization is per-token symmetric everywhere (fake-quant and W4A4): anything else would be
    silently ignored."""
    must = r"act group_size must be -1 and symmetric True"
    with pytest.raises(ValueError, match=must + r" \(role default"):
        QuantConfig(act=QuantSpec(group_size=16))
    with pytest.raises(ValueError, match=must + r" \(role down"):
        QuantConfig(overrides={"down": (QuantSpec(), QuantSpec(group_size=8))})
    with pytest.raises(ValueError, match=must + r" \(role default"):
        QuantConfig(act=QuantSpec(symmetric=False))
    QuantConfig(overrides={"down": (QuantSpec(group_size=8, symmetric=False), QuantSpec())})  # such weights are fine


def test_specs_default_override_and_skip():
    w8, a8 = QuantSpec(bits=8), QuantSpec(bits=8)
    config = QuantConfig(overrides={"down": (w8, a8), "o": (QuantSpec(bits=3), None)}, skip=("gate",))
    assert config.specs("q") == (QuantSpec(), QuantSpec())
    assert config.specs("down") == (w8, a8)
    assert config.specs("o") == (QuantSpec(bits=3), None)
    assert config.specs("gate") == (None, None)
    assert QuantConfig(skip=ROLES).specs("up") == (None, None)


def test_w_a_preset():
    config = QuantConfig.w_a(3, None, 16)
    assert config.weight == QuantSpec(3, True, 16) and config.act is None
    assert QuantConfig.w_a().specs("v") == (QuantSpec(4), QuantSpec(4))
    with pytest.raises(ValueError, match="bits must be an int in 2..8, got 0"):  # 0 once meant "no act quant"
        QuantConfig.w_a(4, 0)


@pytest.mark.parametrize("config", [
    QuantConfig(),
    QuantConfig.w_a(4, None, 32),
    QuantConfig(weight=None, act=QuantSpec(bits=6), skip=("gate", "up")),
    QuantConfig(overrides={"down": (QuantSpec(8, False, 16), QuantSpec(8)), "q": (None, QuantSpec(3))},
                skip=("o",)),
])
def test_dict_round_trip_through_json(config):
    payload = json.loads(json.dumps(config.to_dict()))
    assert QuantConfig.from_dict(payload) == config
    assert QuantConfig.from_dict(payload).to_dict() == config.to_dict()


def test_with_replaces_and_revalidates():
    config = QuantConfig().with_(skip=("down",))
    assert config.specs("down") == (None, None)
    with pytest.raises(ValueError, match="unknown roles"):
        QuantConfig().with_(skip=("bogus",))
