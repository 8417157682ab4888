"""Model I/O on awkward input (review s52 engineio): text that tokenizers split oddly, against
transformers; a GGUF file whose merges are corrupt; an empty conversation."""

from __future__ import annotations

import pytest

from kvsaga.engine.chat_template import ChatTemplate, ChatTemplateError
from kvsaga.engine.detokenizer import IncrementalDetokenizer
from kvsaga.engine.gguf_file import GGUFFile
from kvsaga.engine.gguf_tokenizer import build_gguf_backend
from kvsaga.engine.model_config import ModelLoadError

AWKWARD = [
    "e\u0301 cafe\u0301 a\u0300\u0301\u0302\u0303\u0304",  # combining marks, stacked
    "\u0301 a lone combining mark first",
    "\U0001f469\u200d\U0001f469\u200d\U0001f467 "  # a ZWJ family, a flag, a skin tone
    "\U0001f3f3\ufe0f\u200d\U0001f308 \U0001f44d\U0001f3fd",
    "\U0001d518\U0001d52b\U0001d526 \uff21\uff22\uff23 \U0010ffff \x00 \ufeffbom",
    "tab\tthen\r\nCRLF   \n\n  \t ",
    "x" * 500 + "\u00e9" * 300,  # a very long word, then a long run of one 2-byte character
    "<|im_start|>user\nhi<|im_end|> <|endoftext|> <|im_start| cut",
    "don't I'LL We'Re 12345678901234",
    # whitespace before digits (SmolLM2 splits digits off first: "\n " stays one piece)
    ">x\n 7460\t 3\r\n\n  42 \u00a0 7 \u3000 8 ab1 2c",
]


@pytest.mark.slow
@pytest.mark.parametrize("text", AWKWARD)
def test_awkward_text_encodes_decodes_and_streams_as_transformers(smollm, hf_tokenizer, text):
    ours = smollm.tokenizer
    for special in (True, False):
        assert ours.encode(text, special) == hf_tokenizer.encode(
            text, add_special_tokens=special)
    ids = ours.encode(text, add_special_tokens=False)
    for skip in (True, False):
        full = hf_tokenizer.decode(ids, skip_special_tokens=skip)
        assert ours.decode(ids, skip) == full
        detok = IncrementalDetokenizer(ours, skip_special_tokens=skip)
        deltas = [detok.add(t) for t in ids]
        assert "".join(deltas) == full
        assert all("\ufffd" not in d for d in deltas)  # no half of a character is sent


@pytest.fixture(scope="module")
def smol_meta(gguf_path):
    return dict(GGUFFile(gguf_path).metadata)


@pytest.mark.parametrize("bad,why", [
    ("\u0120the \u0120cat", "makes '\u0120the\u0120cat', which is not a token"),
    ("\u0120theX \u0120cat", "merges '\u0120theX', which is not a token"),
    ("\u0120the", "is not two tokens joined by a space"),
])
def test_corrupt_merges_are_a_model_load_error_naming_the_merge(smol_meta, bad, why):
    """A merge whose merged token is not in the vocabulary made `tokenizers` panic (a
    BaseException, past every `except Exception`); other bad merges raised its own
    Exception or TypeError. All are ModelLoadError, naming the merge."""
    merges = list(smol_meta["tokenizer.ggml.merges"])
    merges[7] = bad
    with pytest.raises(ModelLoadError, match=rf"smol\.gguf: tokenizer\.ggml\.merges\[7\] .*{why}"):
        build_gguf_backend({**smol_meta, "tokenizer.ggml.merges": merges}, "smol.gguf")


def test_corrupt_stored_merges_of_a_sentencepiece_vocabulary_are_refused():
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": ["<unk>", "a", "b", "c"],
        "tokenizer.ggml.scores": [0.0, -1.0, -2.0, -3.0],
        "tokenizer.ggml.token_type": [2, 1, 1, 1],
        "tokenizer.ggml.merges": ["a b"],
    }
    with pytest.raises(ModelLoadError, match=r"merges\[0\] 'a b' makes 'ab'"):
        build_gguf_backend(meta, "spm.gguf")
    meta["tokenizer.ggml.tokens"] = ["<unk>", "a", "b", "ab"]
    assert build_gguf_backend(meta).encode("ab", add_special_tokens=False).ids == [3]


def test_an_empty_conversation_is_refused_as_transformers_does():
    """HF's apply_chat_template raises on []; rendering it gave "" or a lone assistant
    header (SmolLM2's default system turn sits inside the message loop)."""
    template = ChatTemplate(
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    for add_generation_prompt in (True, False):
        with pytest.raises(ChatTemplateError, match="empty conversation"):
            template.render([], add_generation_prompt)
    assert template.render([{"role": "user", "content": "hi"}]) == "hi<|im_start|>assistant\n"
