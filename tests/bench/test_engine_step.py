"""bench/engine_step.py (docs/engine_profiles.md's decode split): the method it times as the
decoder is the one the model's `forward` runs every step (session 55, lane docswalk: it
timed `hidden_states`, which `forward` no longer calls, so "model.hidden_states" read 0 ms,
"rest of the layers" -120 ms and "engine and runner" the whole decoder). The script is read,
not imported: importing it takes bench/ and the working directory off sys.path."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "engine_step.py"


def _decoder_method():
    source = SCRIPT.read_text(encoding="utf-8")
    (fn,) = [n for n in ast.parse(source).body
             if isinstance(n, ast.FunctionDef) and n.name == "decoder_method"]
    namespace: dict = {}
    exec(compile(ast.Module([fn], []), str(SCRIPT), "exec"), namespace)
    return namespace["decoder_method"]


def test_the_timed_decoder_is_what_forward_runs():
    from kvsaga.engine.model import LlamaForCausalLM

    source = SCRIPT.read_text(encoding="utf-8")
    assert 'timed(acc, m, decoder_method(m), "model.hidden_states")' in source
    name = _decoder_method()(LlamaForCausalLM)
    for caller in (LlamaForCausalLM.forward, LlamaForCausalLM.hidden_states):
        calls = set(re.findall(r"self\.(\w+)\(", inspect.getsource(caller)))
        assert name in calls, (caller.__name__, name, sorted(calls))
