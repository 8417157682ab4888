"""export_hf: a checkpoint written as an HF directory loads back as the same model, tokenizer
and chat template, through kvsaga's loaders and through transformers (the oracle)."""

from __future__ import annotations

import json

import pytest
import torch

from kvsaga.engine.export import export_hf
from kvsaga.engine.model import LlamaForCausalLM
from kvsaga.engine.model_config import ModelLoadError
from kvsaga.engine.tokenizer import Tokenizer
from kvsaga.engine.weights import open_checkpoint

from .helpers import forward_all, write_llama_gguf

IDS = list(range(3, 40, 2))


def _logits(path) -> torch.Tensor:
    ckpt = open_checkpoint(path)
    model = LlamaForCausalLM(ckpt.config)
    model.load_weights(ckpt.weights(progress=False))
    return forward_all(model, IDS)


@pytest.mark.parametrize("variant", ["llama_gqa4_untied", "llama_mqa_llama3_rope"])
def test_gguf_export_is_the_same_model(tiny_model_dir, tmp_path, variant):
    """GGUF -> HF directory undoes nothing twice: same config, same logits as the source."""
    src = tiny_model_dir(variant)
    gguf_path = write_llama_gguf(src, tmp_path / "tiny.gguf", "F32")
    out = export_hf(gguf_path, tmp_path / "hf", with_tokenizer=False)
    assert open_checkpoint(out).config == open_checkpoint(gguf_path).config
    torch.testing.assert_close(_logits(out), _logits(gguf_path), atol=1e-5, rtol=0)


def test_export_matches_transformers(tiny_model_dir, tmp_path):
    """transformers reads the written config and weights as the model kvsaga computes."""
    transformers = pytest.importorskip("transformers")
    src = tiny_model_dir("llama_gqa4_untied")
    gguf_path = write_llama_gguf(src, tmp_path / "t.gguf", "F32")
    out = export_hf(gguf_path, tmp_path / "hf", with_tokenizer=False)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.tensor([IDS])).logits[0]
    torch.testing.assert_close(_logits(out), ref, atol=1e-4, rtol=1e-4)


def test_export_dtype_and_tied_head(tiny_model_dir, tmp_path):
    src = tiny_model_dir("llama_gqa4_untied")
    out = export_hf(src, tmp_path / "bf16", dtype=torch.bfloat16)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["torch_dtype"] == "bfloat16"
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}


def test_export_refuses_to_overwrite_and_bad_dtype(tiny_model_dir, tmp_path):
    src = tiny_model_dir("llama_gqa4_untied")
    with pytest.raises(ModelLoadError, match="unsupported export dtype"):
        export_hf(src, tmp_path / "x", dtype=torch.int8)
    assert not (tmp_path / "x").exists()
    export_hf(src, tmp_path / "y")
    before = (tmp_path / "y" / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(ModelLoadError, match="already holds a config.json"):
        export_hf(src, tmp_path / "y")
    assert (tmp_path / "y" / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_default_model_export_keeps_tokenizer_and_template(gguf_path, tmp_path):
    """The shipped SmolLM2 GGUF written out: the HF tokenizer encodes, ends and renders
    chats exactly as the GGUF one does."""
    out = export_hf(gguf_path, tmp_path / "smol")
    ckpt = open_checkpoint(gguf_path)
    ours, back = Tokenizer.from_gguf(ckpt.gguf), Tokenizer.from_hf_dir(out)
    text = "Hello, world! The cache keeps 1234 tokens\n\tacross tool calls."
    assert back.encode(text) == ours.encode(text)
    assert back.eos_token_ids == ours.eos_token_ids
    chat = [{"role": "user", "content": "hi"}]
    assert back.apply_chat_template(chat) == ours.apply_chat_template(chat)
    assert open_checkpoint(out).config == ckpt.config
