"""A GGUF's end-of-message token (`tokenizer.ggml.eom_token_id`, Llama 3.1's <|eom_id|>,
written after a tool call in ipython mode) ends generation, as the end-of-sequence and
end-of-turn ones do: llama.cpp counts all three as end of generation, and Llama 3.1's HF
generation_config.json lists <|eom_id|> (128008) among its eos_token_id. kvsaga read the
EOS and EOT ids alone, so generation ran past <|eom_id|>, and an HF export of the file
left it out of eos_token_id."""

from __future__ import annotations

import json

import pytest

from kvsaga.engine.export import export_hf
from kvsaga.engine.gguf_file import GGUFFile
from kvsaga.engine.llm import LLM
from kvsaga.engine.sampling import SamplingParams
from kvsaga.engine.tokenizer import Tokenizer

from .helpers import write_llama_gguf

PROMPT = [5, 17, 33, 2, 9]


def _generate(path, **params) -> tuple[list[int], str]:
    llm = LLM(str(path), device="cpu", progress=False, kv_memory_bytes=4 * 2**20)
    out = llm.generate(PROMPT, SamplingParams(max_tokens=8, temperature=0.0, **params))[0]
    return out.token_ids, out.finish_reason


@pytest.fixture(scope="module")
def src(tiny_model_dir):
    return tiny_model_dir("llama_gqa4_untied")


def test_generation_stops_at_the_end_of_message_token(src, tmp_path):
    plain = write_llama_gguf(src, tmp_path / "plain.gguf", end_ids={})
    free, _ = _generate(plain, ignore_eos=True)
    # The token greedy decoding reaches third, new there, stands for <|eom_id|>.
    k = next(i for i in range(2, len(free)) if free[i] not in free[:i] and free[i] != 1)
    eom = free[k]
    path = write_llama_gguf(src, tmp_path / "eom.gguf", end_ids={"eot": 300, "eom": eom})
    ids, reason = _generate(path)
    assert (ids, reason) == (free[: k + 1], "stop")
    assert Tokenizer.from_gguf(GGUFFile(path)).eos_token_ids == (1, 300, eom)
    assert GGUFFile(path).config.eos_token_ids == (1, 300, eom)


def test_the_hf_export_lists_the_end_of_message_token(src, tmp_path):
    transformers = pytest.importorskip("transformers")
    path = write_llama_gguf(src, tmp_path / "eom.gguf", end_ids={"eot": 300, "eom": 301})
    out = export_hf(path, tmp_path / "hf", with_tokenizer=False)
    for name in ("config.json", "generation_config.json"):
        assert json.loads((out / name).read_text())["eos_token_id"] == [1, 300, 301], name
    assert transformers.GenerationConfig.from_pretrained(out).eos_token_id == [1, 300, 301]
