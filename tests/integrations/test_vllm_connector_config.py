"""The connector's `kv_connector_extra_config` keys are checked (no vLLM needed): a typo is
refused naming it, never silently ignored."""

from __future__ import annotations

import json

import pytest

from kvsaga.integrations.vllm import kv_transfer_config, offload_transfer_config
from kvsaga.integrations.vllm.connector_config import (
    ARGS_KEYS,
    CONNECTOR_KEYS,
    check_connector_extra,
)


@pytest.mark.parametrize(("typo", "meant"), [("polcy", "policy"), ("admision", "admission"),
                                             ("gate_arg", "gate_args")])
def test_a_typo_is_refused_naming_it_and_the_key_it_resembles(typo, meant):
    with pytest.raises(ValueError, match=rf"unknown .* key\(s\) '{typo}' \(did you mean "
                                         rf"'{meant}'\?\); the valid keys are policy, "):
        check_connector_extra({"policy": "ttl", typo: 1})


def test_every_unknown_key_is_named_and_every_valid_one_listed():
    with pytest.raises(ValueError) as e:
        check_connector_extra({"zzz": 1, "policy": "ttl", "qqq": 2})
    text = str(e.value)
    assert "'zzz'" in text and "'qqq'" in text
    assert all(k in text for k in CONNECTOR_KEYS)


def test_the_valid_keys_pass_and_none_means_no_settings():
    extra = {k: None for k in CONNECTOR_KEYS if k != "reserve_blocks" and k not in ARGS_KEYS}
    extra.update({k: {} for k in ARGS_KEYS}, reserve_blocks=0)
    assert set(extra) == set(CONNECTOR_KEYS) and check_connector_extra(extra) == extra
    assert check_connector_extra(None) == {} and check_connector_extra({}) == {}
    with pytest.raises(ValueError, match="must be a JSON object, got list"):
        check_connector_extra(["policy"])


def test_the_config_builders_refuse_a_typo_before_writing_json():
    with pytest.raises(ValueError, match="'admision'"):
        kv_transfer_config("ttl", admision=False)
    with pytest.raises(ValueError, match="'reserve'"):
        offload_transfer_config(2**20, retention={"policy": "ttl", "reserve": 2})
    cfg = json.loads(kv_transfer_config("ttl", admission=False, gate_args={}))
    assert cfg["kv_connector_extra_config"] == {"policy": "ttl", "admission": False,
                                                "gate_args": {}}


@pytest.mark.parametrize(("key", "value"), [
    ("reserve_blocks", "abc"), ("reserve_blocks", 2.7), ("reserve_blocks", True),
    ("reserve_blocks", None), ("reserve_blocks", -1), ("gate_args", "abc"),
    ("gate_args", None), ("gate_args", [1, 2]), ("scheduler_args", "x"), ("policy_args", [1]),
    ("step_cost_args", 5)])
def test_a_value_of_the_wrong_type_is_refused_naming_its_key(key, value):
    """reserve_blocks 2.7 and true were read as 2 and 1; "abc" and null, and a string or a
    list where keyword arguments belong, failed in int() or dict() naming no key."""
    with pytest.raises(ValueError, match=rf"kvsaga connector: {key} must be "):
        check_connector_extra({key: value})
    with pytest.raises(ValueError, match=rf"{key} must be "):  # before any JSON is written
        kv_transfer_config("ttl", **{key: value})
    with pytest.raises(ValueError, match=rf"{key} must be "):
        offload_transfer_config(2**20, retention={"policy": "ttl", key: value})


def test_well_typed_values_pass():
    extra = {"reserve_blocks": 3, "gate_args": {"horizon_steps": 2}, "policy_args": {},
             "step_cost_args": {"alpha": 0.1}, "scheduler_args": {"aging_s": 30}}
    assert check_connector_extra(extra) == extra
