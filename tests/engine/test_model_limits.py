"""What a model's config limits and the engine must not silently exceed or drop: a context
longer than mistral's sliding window or than max_position_embeddings, and the sampling
defaults of generation_config.json that kvsaga does not apply (review s48 engine 1, 2)."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from kvsaga.engine import engine as engine_module
from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.loader import load_model
from kvsaga.engine.weights import open_checkpoint
from kvsaga.errors import InvalidRequest

SMALL_KV = 4 * 2**20


def _edit(src, tmp_path, name: str, file: str = "config.json", **changes):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    path = dst / file
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(changes)
    path.write_text(json.dumps(data))
    return dst


def _engine(path, **kw) -> LLMEngine:
    return LLMEngine(str(path), device="cpu", progress=False, kv_memory_bytes=SMALL_KV, **kw)


@pytest.fixture
def no_load(monkeypatch):
    """Fail the test if the weights start to load."""
    def refuse(*a, **k):
        raise AssertionError("the weights loaded before max_model_len was checked")

    monkeypatch.setattr(engine_module, "load_checkpoint", refuse)


@pytest.fixture(scope="module")
def windowed(tiny_model_dir, tmp_path_factory):
    """The tiny mistral with a 16-token sliding window (max_position_embeddings 256)."""
    return _edit(tiny_model_dir("mistral"), tmp_path_factory.mktemp("w"), "m", sliding_window=16)


@pytest.mark.parametrize("allow", [None, "1"])
def test_a_context_past_mistrals_sliding_window_is_refused_before_the_load(
        windowed, no_load, monkeypatch, allow):
    """max_model_len 64 with a 16-token window was accepted without a word, and every
    layer then attended over all 64 tokens: greedy tokens past the window differed from
    transformers'. No override allows it: the output would not be the model's."""
    if allow:
        monkeypatch.setenv("KVSAGA_ALLOW_LONG_MAX_MODEL_LEN", allow)
    with pytest.raises(InvalidRequest, match=(
            r"^max_model_len=64 exceeds mistral's sliding window of 16 tokens; kvsaga has no "
            r"windowed attention, so past the window its output would not be the model's: "
            r"use at most 16$")):
        _engine(windowed, max_model_len=64)


def test_within_the_window_the_engine_loads_with_the_window_as_its_context(windowed):
    assert open_checkpoint(windowed).config.sliding_window == 16
    assert _engine(windowed).max_model_len == 16
    assert _engine(windowed, max_model_len=16).max_model_len == 16


def test_a_windowed_linear_rope_model_defaults_to_its_window(windowed, tmp_path):
    """max_position_embeddings is capped at the window; the linear factor then scaled the
    capped value, so the default max_model_len became window x factor (64 here) with no
    check, and tokens past the window were computed with full attention."""
    rope = {"rope_theta": 10000.0, "rope_type": "linear", "factor": 4.0}
    src = _edit(windowed, tmp_path, "m", rope_parameters=rope)
    config = open_checkpoint(src).config
    assert (config.max_position_embeddings, config.max_context_len) == (16, 16)
    assert _engine(src).max_model_len == 16


def test_a_context_past_max_position_embeddings_is_refused_unless_allowed(
        tiny_model_dir, monkeypatch, no_load):
    """vLLM refuses max_model_len above the model's max_position_embeddings unless
    VLLM_ALLOW_LONG_MAX_MODEL_LEN is set; kvsaga took any value."""
    src = tiny_model_dir("llama_gqa4_untied")  # max_position_embeddings 256
    with pytest.raises(InvalidRequest, match=(
            r"^max_model_len=300 exceeds the model's max_position_embeddings \(a GGUF's "
            r"context_length\) of 256; use at most 256, or set "
            r"KVSAGA_ALLOW_LONG_MAX_MODEL_LEN=1 to allow it")):
        _engine(src, max_model_len=300)
    monkeypatch.setenv("KVSAGA_ALLOW_LONG_MAX_MODEL_LEN", "yes")
    with pytest.raises(ValueError, match="KVSAGA_ALLOW_LONG_MAX_MODEL_LEN='yes'"):
        _engine(src, max_model_len=300)


def test_an_allowed_long_context_loads_with_a_warning(tiny_model_dir, monkeypatch, caplog):
    src = tiny_model_dir("llama_gqa4_untied")
    monkeypatch.setenv("KVSAGA_ALLOW_LONG_MAX_MODEL_LEN", "1")
    with caplog.at_level(logging.WARNING, logger="kvsaga.engine"):
        assert _engine(src, max_model_len=300).max_model_len == 300
    assert [r.getMessage() for r in caplog.records if "max_model_len" in r.getMessage()] == [
        "max_model_len=300 exceeds the model's max_position_embeddings (a GGUF's "
        "context_length) of 256; allowed by KVSAGA_ALLOW_LONG_MAX_MODEL_LEN: positions past "
        "256 were not in the model's training, output of unknown quality"]
    assert _engine(src, max_model_len=256).max_model_len == 256


def test_a_linear_rope_models_context_is_its_positions_times_the_factor(tiny_model_dir,
                                                                       monkeypatch):
    """Linear RoPE scaling divides positions by its factor, and HF's max_position_embeddings
    is the length before that: vLLM allows (and defaults to) the positions times the
    factor. kvsaga refused max_model_len=512 for 256 positions scaled by 2."""
    monkeypatch.delenv("KVSAGA_ALLOW_LONG_MAX_MODEL_LEN", raising=False)
    src = tiny_model_dir("llama_mha_tied_linear_rope")  # 256 positions, linear, factor 2
    assert _engine(src, max_model_len=512).max_model_len == 512
    assert _engine(src).max_model_len == 512
    config = open_checkpoint(src).config
    assert (config.max_position_embeddings, config.max_context_len) == (256, 512)
    with pytest.raises(InvalidRequest, match=(
            r"^max_model_len=513 exceeds the model's context of 512 \(max_position_embeddings, "
            r"a GGUF's context_length, of 256 times its linear RoPE factor 2\); use at most "
            r"512, or set KVSAGA_ALLOW_LONG_MAX_MODEL_LEN=1")):
        config.check_max_model_len(513)


def test_sampling_defaults_kvsaga_does_not_apply_are_named_at_load(tiny_model_dir, tmp_path,
                                                                   caplog):
    """Qwen2.5-Instruct ships repetition_penalty 1.05; vLLM applies it (and presence and
    frequency penalties, min_p) from generation_config.json, kvsaga does not implement
    them and dropped them without a word. Neutral values are not named."""
    gen = {"bos_token_id": 0, "eos_token_id": 1, "temperature": 0.7, "top_p": 0.8,
           "top_k": 20, "repetition_penalty": 1.1, "min_p": 0.05, "presence_penalty": 0.0,
           "frequency_penalty": 0.0}
    d = _edit(tiny_model_dir("qwen2_bias_tied"), tmp_path, "q", "generation_config.json", **gen)
    with caplog.at_level(logging.WARNING, logger="kvsaga.engine"):
        config = load_model(d, device="cpu", progress=False).config
    assert config.generation.as_dict() == {"temperature": 0.7, "top_p": 0.8, "top_k": 20}
    assert config.generation.unapplied == (("repetition_penalty", 1.1), ("min_p", 0.05))
    assert [r.getMessage() for r in caplog.records if r.name.startswith("kvsaga")] == [
        "the model's generation_config.json sets repetition_penalty=1.1, min_p=0.05, which "
        "kvsaga does not apply (it samples without penalties or min_p; vLLM applies them)"]


def test_a_generation_config_with_only_neutral_penalties_loads_quietly(tiny_model_dir,
                                                                       tmp_path, caplog):
    gen = {"repetition_penalty": 1.0, "presence_penalty": 0, "min_p": 0.0, "temperature": 0.6}
    d = _edit(tiny_model_dir("qwen2_bias_tied"), tmp_path, "q", "generation_config.json", **gen)
    with caplog.at_level(logging.WARNING, logger="kvsaga.engine"):
        config = load_model(d, device="cpu", progress=False).config
    assert config.generation.unapplied == ()
    assert not [r for r in caplog.records if r.name.startswith("kvsaga")], caplog.text
