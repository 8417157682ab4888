"""The connector's `kv_connector_extra_config` keys are checked (no vLLM needed): a typo is
refused naming it, never silently ignored."""

from __future__ import annotations

import inspect
import json

import pytest

from kvsaga.integrations.vllm import kv_transfer_config, offload_transfer_config
from kvsaga.integrations.vllm.connector_config import (
    ARGS_KEYS,
    CONNECTOR_KEYS,
    GATE_KEYS,
    OBJECT_PARAMS,
    args_taken,
    check_connector_extra,
    make_connector_policy,
)
from kvsaga.integrations.vllm.gate import SessionGate
from kvsaga.policy import DEFAULT_POLICY, POLICIES, GraphPolicy, TTLPolicy


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
    # (each a valid value: before review s51 every scalar here was null, which the connector
    # refused inside vLLM's start but for session_idle_s, and this check passed)
    extra = {"policy": "ttl", "admission": True, "best_effort_steps": 0, "keep_demoted": False,
             "session_idle_s": None}
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
    cfg = json.loads(kv_transfer_config("ttl", admission=True, gate_args={}))
    assert cfg["kv_connector_extra_config"] == {"policy": "ttl", "admission": True,
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


@pytest.mark.parametrize(("key", "typo", "meant", "valid"), [
    ("gate_args", "horizon", "horizon_steps", "admission_order"),
    ("step_cost_args", "alfa", "alpha", "min_steps"),
    ("scheduler_args", "agin_s", "aging_s", "gate_arrivals"),
    ("policy_args", "base_ttl", "base_ttl_s", "max_usage")])
def test_an_unknown_keyword_argument_is_refused_at_config_time_naming_it(key, typo, meant,
                                                                         valid):
    """An unknown gate_args key reached `SessionGate(**gate_args)` only when vLLM bound its
    blocks (step_cost_args, policy_args when the connector was built, scheduler_args when
    the scheduler was), and failed there with a bare TypeError naming no setting."""
    pattern = rf"unknown {key} key\(s\) '{typo}' \(did you mean '{meant}'\?\); .*{valid}"
    extra = {"policy": "ttl", key: {typo: 1}}
    with pytest.raises(ValueError, match=pattern):
        check_connector_extra(extra)
    with pytest.raises(ValueError, match=pattern):  # before any JSON is written
        kv_transfer_config("ttl", **{key: {typo: 1}})
    with pytest.raises(ValueError, match=pattern):
        offload_transfer_config(2**20, retention=extra)


def test_policy_args_are_checked_against_the_policy_named():
    """`graph` takes `alpha`, `ttl` does not; with no policy named, the default's count."""
    assert check_connector_extra({"policy": "graph", "policy_args": {"alpha": 0.3}})
    with pytest.raises(ValueError, match="unknown policy_args key"):
        kv_transfer_config("ttl", policy_args={"alpha": 0.3})
    assert args_taken("policy_args", {}) == args_taken("policy_args",
                                                       {"policy": DEFAULT_POLICY})
    with pytest.raises(ValueError, match="unknown policy_args key\\(s\\) 'zzz'"):
        check_connector_extra({"policy_args": {"zzz": 1}})
    # An unknown policy name is make_policy's to refuse (it lists the known ones).
    assert args_taken("policy_args", {"policy": "nope"}) is None


def test_the_gate_keys_are_those_the_connector_does_not_pass_itself():
    """capacity and block_size come from vLLM's blocks: given in gate_args they failed as
    "multiple values" in SessionGate."""
    taken = args_taken("gate_args", {})
    assert "capacity" not in taken and "block_size" not in taken
    assert set(taken) == set(inspect.signature(SessionGate).parameters) - {"capacity",
                                                                          "block_size"}
    with pytest.raises(ValueError, match="unknown gate_args key\\(s\\) 'capacity'"):
        check_connector_extra({"gate_args": {"capacity": 8}})


@pytest.mark.parametrize(("policy", "key", "value", "why"), [
    ("ttl", "cost", 5, "the policy builds its own"),
    ("ttl", "graph", {"a": 1}, "the policy builds its own"),
    ("graph", "cost", {}, "the policy builds its own"),
    ("saga", "oracle", None, "only the offline policies take one, which the connector cannot "
                             "run")])
def test_a_policy_parameter_that_takes_an_object_is_refused_naming_it(policy, key, value,
                                                                      why):
    """No JSON value is a CostModel, an ExecutionGraph or a FutureOracle: one given passed,
    and the policy failed on it inside vLLM's scheduler (AttributeError), which killed vLLM's
    engine core for every client. No online policy builds an oracle: "builds its own" was
    said of it too."""
    extra = {"policy": policy, "policy_args": {key: value}}
    message = rf"policy_args '{key}' takes a Python object .*; leave it out \({why}\)"
    with pytest.raises(ValueError, match=message):
        check_connector_extra(extra)
    with pytest.raises(ValueError, match=message):
        kv_transfer_config(policy, policy_args={key: value})
    assert not set(OBJECT_PARAMS) & set(args_taken("policy_args", extra))


@pytest.mark.parametrize("policy", ["belady", "oracle-ttl"])
@pytest.mark.parametrize("policy_args", [{}, {"oracle": {}}])
def test_an_offline_policy_is_refused_by_name(policy, policy_args):
    """`belady` and `oracle-ttl` need the future (a FutureOracle): they passed every check
    and failed at vLLM's start asking for an oracle, which policy_args refuses by name."""
    message = (rf"kvsaga connector: policy '{policy}' is an offline reference .* the "
               rf"connector cannot run it: choose one of \['adaptive', 'graph', 'lru', "
               rf"'saga', 'ttl'\]")
    with pytest.raises(ValueError, match=message):
        check_connector_extra({"policy": policy, "policy_args": policy_args})
    with pytest.raises(ValueError, match=message):
        kv_transfer_config(policy, policy_args=policy_args)


@pytest.mark.parametrize(("policy", "key", "value", "kind"), [
    ("ttl", "base_ttl_s", "x", "a number"), ("graph", "min_wait_s", None, "a number"),
    ("graph", "alpha", "x", "a number"), ("graph", "trust", 1, "true or false"),
    ("ttl", "max_usage", True, "a number"), ("adaptive", "realized", "yes", "true or false")])
def test_a_policy_argument_of_the_wrong_type_is_refused_naming_it(policy, key, value, kind):
    """A string or null for a number failed at vLLM's start with a bare TypeError ("'>' not
    supported between ...") naming no parameter, or (graph's alpha) not until a decision read
    it."""
    with pytest.raises(ValueError, match=rf"policy_args {key} of policy '{policy}' must be "
                                         rf"{kind}, got {value!r}"):
        check_connector_extra({"policy": policy, "policy_args": {key: value}})


def test_well_typed_policy_arguments_pass_and_null_only_where_taken():
    ok = {"policy": "graph", "policy_args": {"alpha": 0.3, "min_wait_s": 1, "trust": True,
                                             "calib_prior": None,
                                             "spread_states": ["queued"]}}
    assert check_connector_extra(ok) == ok
    policy = make_connector_policy(ok)
    assert isinstance(policy, GraphPolicy) and policy.alpha == 0.3


@pytest.mark.parametrize(("extra", "message"), [
    ({"policy": "ttl", "policy_args": {"base_ttl_s": -5}},
     "base_ttl_s must be a finite number > 0"),
    ({"policy": "graph", "policy_args": {"calib_prior": 0}},
     "calib_prior must be a finite number > 0"),
    ({"policy": "graph", "policy_args": {"alpha": 5}}, "alpha must be a finite number in"),
    ({"policy": "graph", "policy_args": {"min_wait_s": float("inf")}},
     "min_wait_s must be a finite number > 0, got inf"),
    ({"policy": "adaptive", "policy_args": {"experts": ["zz"]}}, "expert 'zz' is not")])
def test_a_value_the_policy_refuses_names_policy_args_and_the_policy(extra, message):
    """The policy's own TypeError or ValueError came out as is, naming no setting."""
    with pytest.raises(ValueError, match=rf"kvsaga connector: policy_args of policy "
                                         rf"'{extra['policy']}': .*{message}"):
        make_connector_policy(extra)


def test_the_connector_policy_is_the_named_one_or_the_default():
    assert isinstance(make_connector_policy({"policy": "ttl"}), TTLPolicy)
    assert isinstance(make_connector_policy({}), POLICIES[DEFAULT_POLICY])
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        make_connector_policy({"policy": "nope"})


@pytest.mark.parametrize("key", GATE_KEYS)
def test_a_gate_key_with_admission_off_is_refused_naming_it(key):
    """They act only through the gate, which admission off never builds: accepted, they were
    ignored, and gate_args not even checked."""
    value = {"gate_args": {"horizon_steps": 5}, "keep_demoted": True,
             "best_effort_steps": 5}[key]
    with pytest.raises(ValueError, match=rf"kvsaga connector: {key} act\(s\) only through "
                                         rf"the admission gate, and admission is off"):
        check_connector_extra({"admission": False, key: value})
    with pytest.raises(ValueError, match=rf"{key} act\(s\) only"):
        kv_transfer_config("ttl", admission=False, **{key: value})
    assert check_connector_extra({"admission": True, key: value})
    assert check_connector_extra({key: value})  # (admission is on by default)


def test_step_cost_args_are_taken_with_admission_off():
    """The step-cost fit runs with admission off too (the stats report it): refused there,
    `step_cost_args` was said to act only through the gate."""
    extra = {"admission": False, "step_cost_args": {"min_steps": 1000}}
    assert check_connector_extra(extra) == extra
    assert kv_transfer_config("ttl", admission=False, step_cost_args={"min_steps": 1000})
    assert "step_cost_args" not in GATE_KEYS


def test_every_gate_key_given_with_admission_off_is_named():
    with pytest.raises(ValueError, match="gate_args, keep_demoted act"):
        check_connector_extra({"admission": False, "keep_demoted": False, "gate_args": {}})


@pytest.mark.parametrize(("key", "args", "says"), [
    ("gate_args", {"horizon_steps": "4"},
     "gate_args: gate parameter horizon_steps must be a finite number >= 0, got '4'"),
    ("gate_args", {"admission_order": "lifo"},
     "gate_args: gate parameter admission_order must be one of fifo, predicted, got 'lifo'"),
    ("gate_args", {"room_admit": 1}, "gate_args: gate parameter room_admit must be true or "
     "false, got 1"),
    ("step_cost_args", {"alpha": 2}, "step_cost_args: step cost alpha must be in (0, 1]"),
    ("scheduler_args", {"aging_s": 0}, "scheduler_args aging_s must be a finite number > 0"),
    ("scheduler_args", {"work": "bogus"}, "scheduler_args work must be one of tokens, steps"),
    ("scheduler_args", {"gate_arrivals": 1}, "scheduler_args gate_arrivals must be true or "
     "false, got 1"),
])
def test_a_gate_or_scheduler_value_is_refused_before_vllm_loads_anything(key, args, says):
    """Review s49 gate finding 3: these passed `kv_transfer_config()` and the connector's
    start and failed only where vLLM's Scheduler built the gate (`bind_gpu_block_pool`) or
    KVSagaScheduler, after the model and KV cache had loaded. Now both refuse them first,
    naming the key and the setting; a valid value passes."""
    with pytest.raises(ValueError) as e:
        kv_transfer_config("ttl", **{key: args})
    assert str(e.value).startswith("kvsaga connector: ") and says in str(e.value)
    with pytest.raises(ValueError, match="kvsaga connector: "):
        check_connector_extra({"policy": "ttl", key: args})
    ok = {"gate_args": {"horizon_steps": 4, "admission_order": "fifo", "room_admit": False},
          "step_cost_args": {"alpha": 0.5},
          "scheduler_args": {"aging_s": 5, "work": "tokens", "gate_arrivals": False}}[key]
    assert check_connector_extra({"policy": "ttl", key: ok})[key] == ok


@pytest.mark.parametrize(("key", "args", "says"), [
    ("scheduler_args", {"aging_s": 10**400},
     "scheduler_args aging_s must be a finite number > 0, got an int of 1329 bits"),
    ("scheduler_args", {"prior_steps": 10**400},
     "scheduler_args prior_steps must be a finite number >= 1, got an int of 1329 bits"),
    ("scheduler_args", {"prior_growth_tokens": -(10**5000)},
     "scheduler_args prior_growth_tokens must be a finite number >= 0, got an int of"),
    ("gate_args", {"horizon_steps": 10**400}, "gate_args: gate parameter horizon_steps"),
])
def test_an_int_past_any_float_is_refused_naming_its_key(key, args, says):
    """Review s49 gatediff finding 6: `scheduler_args` `aging_s` of a 400-digit JSON int
    passed SessionRanker's range check, and `float()` then raised a bare OverflowError that
    named no key, from `kv_transfer_config()` and the connector's start alike."""
    with pytest.raises(ValueError) as e:
        kv_transfer_config("ttl", **{key: args})
    assert str(e.value).startswith("kvsaga connector: ") and says in str(e.value)
