"""`step_info`, the vLLM connector's reading of `kv_transfer_params` (fuzz2 lane): whatever a
request carries, it returns a `StepInfo` or None, or raises `InvalidRequest` naming what was
wrong. The connector, the offload cache policy and the scheduler catch `ValueError` to ignore
a malformed hint; any other exception would fail vLLM's request (or its engine core)."""

from __future__ import annotations

import math

import pytest

# The vLLM environment (tests/integrations/vllm/run.sh) collects tests/integrations too and
# has no hypothesis; these need no vLLM and run in the main suite.
pytest.importorskip("hypothesis", reason="run by the main suite; the vLLM env lacks hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kvsaga.errors import InvalidRequest
from kvsaga.integrations.vllm.hints import StepInfo, step_info


@pytest.mark.parametrize("params, match", [
    (["kvsaga"], "kv_transfer_params must be an object, got list"),
    ("kvsaga", "kv_transfer_params must be an object, got str"),
    (3, "kv_transfer_params must be an object, got int"),
])
def test_kv_transfer_params_that_is_not_an_object_is_refused_by_name(params, match):
    with pytest.raises(InvalidRequest, match=match):
        step_info(params)


def test_unknown_keys_of_any_type_are_named():
    # A Python caller's dict may mix key types: sorting them raised TypeError.
    with pytest.raises(InvalidRequest, match=r"unknown fields 'x', 1 \(known: session_id"):
        step_info({"kvsaga": {1: "a", "x": 2, "session_id": "s"}})


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8)
_FIELD = st.sampled_from(["session_id", "tool", "expected_s", "last_step", "workflow", "x"])
_HINT = st.dictionaries(_FIELD, _JSON, max_size=5)
_KEYS = st.one_of(st.text(max_size=4), st.integers(), st.none(), st.tuples(st.integers()))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(params=st.one_of(_JSON, st.dictionaries(st.just("kvsaga"), _JSON | _HINT, max_size=1),
                        st.dictionaries(st.just("kvsaga"),
                                        st.dictionaries(_KEYS, _JSON, max_size=3), max_size=1)),
       sid=st.one_of(st.none(), st.text(max_size=4), st.integers()))
def test_any_params_give_info_or_invalid_request(params, sid):
    try:
        info = step_info(params, session_id=sid)
    except InvalidRequest:
        return
    assert info is None or isinstance(info, StepInfo)
    if info is not None:
        assert isinstance(info.session_id, str) and info.session_id
        assert isinstance(info.workflow, str)
        e = info.hint.expected_s
        assert e is None or (not isinstance(e, bool) and e >= 0 and not math.isnan(e))
