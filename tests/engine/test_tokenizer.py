"""Tokenizer and chat template: ours, built from the GGUF file's metadata, against transformers'
tokenizer for the same file; plus the incremental detokenizer and the template sandbox."""

from __future__ import annotations

import json

import pytest

from kvsaga.engine.chat_template import ChatTemplate, ChatTemplateError
from kvsaga.engine.detokenizer import IncrementalDetokenizer
from kvsaga.engine.gguf_file import GGUFFile
from kvsaga.engine.gguf_tokenizer import build_gguf_backend
from kvsaga.engine.model_config import ModelLoadError
from kvsaga.engine.tokenizer import Tokenizer

from .helpers import write_byte_tokenizer, write_sentencepiece_gguf

TEXTS = [
    "Hello world",
    "What is the capital of France?",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\n\n\nand   runs    of     spaces",
    "Ünïcödé: naïve café, Straße, ελληνικά, русский, 中文字符, 日本語のテキスト, 한국어",
    "emoji 👋🏽 🚀🔥 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵",
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    'for (let i = 0; i < 10; i++) { console.log(`i=${i}`); } // JS\n\t{"json": [1, 2.5e-3, null]}',
    "numbers 1234567890 3.14159 -42 1,000,000 2024-11-25 0x1F",
    "digits after whitespace:\n 7460\n\n  12\t 3 \t\t45 v1.2.3 x86_64 $1,234.50",
    "contractions: I'm, you're, it's, we'll, they'd, don't, CAN'T",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n",
    "special tokens inline <|endoftext|> and a fake <|not_special|> one",
    "URL https://example.com/path?q=1&r=%20x#frag and email a.b@c.org",
    "\u200bzero width\u00a0nbsp\u3000ideographic space",
    "",
    " ",
    "a" * 300,
]

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "Another, with unicode: café 👋"},
    ],
    [
        {"role": "user", "content": "Call the weather tool."},
        {"role": "assistant", "content": '{"tool": "weather", "args": {"city": "Paris"}}'},
        {"role": "user", "content": "Result: 18°C, sunny."},
    ],
]


@pytest.fixture(scope="module")
def ours(smollm) -> Tokenizer:
    return smollm.tokenizer


@pytest.fixture(scope="module")
def hf_tok(hf_tokenizer):
    return hf_tokenizer


@pytest.mark.slow
@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_encode_matches_hf(ours, hf_tok, add_special_tokens):
    for text in TEXTS:
        expected = hf_tok.encode(text, add_special_tokens=add_special_tokens)
        assert ours.encode(text, add_special_tokens=add_special_tokens) == expected, text


@pytest.mark.slow
@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_decode_matches_hf(ours, hf_tok, skip_special_tokens):
    for text in TEXTS:
        ids = hf_tok.encode(text, add_special_tokens=False)
        expected = hf_tok.decode(ids, skip_special_tokens=skip_special_tokens)
        assert ours.decode(ids, skip_special_tokens=skip_special_tokens) == expected, text
    ids = list(range(0, 49152, 97))  # arbitrary ids, special ones included
    assert ours.decode(ids, skip_special_tokens=False) == hf_tok.decode(
        ids, skip_special_tokens=False
    )


@pytest.mark.slow
def test_special_ids_match_hf(ours, hf_tok):
    assert ours.bos_token_id == hf_tok.bos_token_id == 1
    assert ours.eos_token_id == hf_tok.eos_token_id == 2
    assert ours.eos_token_ids == (2,)
    assert ours.vocab_size == len(hf_tok) == 49152


@pytest.mark.slow
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_hf(ours, hf_tok, add_generation_prompt):
    for messages in CONVERSATIONS:
        expected = hf_tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        got = ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        assert got == expected
        assert ours.encode(got, add_special_tokens=False) == hf_tok.encode(
            expected, add_special_tokens=False
        )


@pytest.mark.slow
def test_incremental_detokenizer_streams_the_full_text(ours):
    for text in TEXTS:
        prompt = ours.encode("User says:", add_special_tokens=False)
        ids = ours.encode(text, add_special_tokens=False)
        detok = IncrementalDetokenizer(ours, prompt)
        deltas = [detok.add(i) for i in ids]
        assert "".join(deltas) == detok.text
        # Everything but a trailing incomplete character has been emitted.
        assert ours.decode(ids).startswith(detok.text)
        assert detok.text == ours.decode(ids).rstrip("\ufffd")
        assert all("\ufffd" not in d for d in deltas), text


@pytest.mark.slow
def test_incremental_detokenizer_keeps_the_first_space_and_skips_specials(ours):
    """The prompt's tail is left context: a first token that starts a word keeps its space;
    special tokens add no text unless asked for."""
    prompt = ours.encode("Say hi:", add_special_tokens=False)
    word = ours.encode("Say hi: world", add_special_tokens=False)[len(prompt):]
    detok = IncrementalDetokenizer(ours, prompt)
    assert detok.add(word) == ours.decode(prompt + word)[len(ours.decode(prompt)):]
    assert detok.text.startswith(" ")
    end = ours.eos_token_ids[0]
    assert detok.add(end) == ""
    keep = IncrementalDetokenizer(ours, prompt, skip_special_tokens=False)
    assert keep.add(end) == ours.decode([end], skip_special_tokens=False) != ""


def test_template_sandbox_and_raise_exception():
    t = ChatTemplate(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}"
        "{% endif %}{{ bos_token }}{{ messages | tojson }}"
        "{% generation %}{{ messages[0].content }}{% endgeneration %}",
        {"bos_token": "<s>"},
    )
    assert t.render([{"role": "user", "content": "é"}]) == '<s>[{"role": "user", "content": "é"}]é'
    with pytest.raises(ChatTemplateError, match="first must be user"):
        t.render([{"role": "assistant", "content": "x"}])
    unsafe = ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ChatTemplateError, match="unsafe|not safely|access"):
        unsafe.render([{"role": "user", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="invalid chat template"):
        ChatTemplate("{% for %}")


def test_template_context_matches_hf(tiny_model_dir):
    """What a template sees, as transformers' apply_chat_template gives it: `tools` defined
    as None when no tools are passed, and message keys whose value is None left out (an
    OpenAI-style tool call has `content: null`)."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(tiny_model_dir("mistral"))
    source = (
        "{% if tools is not none %}[TOOLS {{ tools | length }}]{% endif %}"
        "{% if documents is not none %}[DOCS]{% endif %}"
        "{% for m in messages %}<{{ m.role }}>"
        "{% if m.content is defined %}{{ m.content }}{% else %}(tool call){% endif %}"
        "{% endfor %}"
    )
    chat = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [{"name": "f"}]},
    ]
    tools = [{"type": "function", "function": {"name": "f"}}]
    for kwargs in ({}, {"tools": tools}):
        expected = hf.apply_chat_template(
            chat, chat_template=source, tokenize=False, add_generation_prompt=False, **kwargs
        )
        assert ChatTemplate(source).render(chat, add_generation_prompt=False, **kwargs) == expected
    assert chat[1]["content"] is None  # the caller's messages are not changed


def test_reads_keeps_template_variables_apart_from_message_keys():
    """`tools` reaches a template as a variable and `tool_calls` as a message key. One set
    held both, so a template that reads a message's `tools` key (a system message carrying
    its tools, Phi-4-mini style) counted as reading the `tools` variable, and top-level
    tools were dropped without a word; and a variable named `tool_calls` counted as the
    key."""
    loop = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% endfor %}"
    key_tools = ChatTemplate(
        "{% for m in messages %}{% if 'tools' in m %}{{ m['tools'] }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    assert not key_tools.reads_variable("tools") and key_tools.reads_key("tools")
    var_calls = ChatTemplate(loop + "{{ tool_calls }}")
    assert var_calls.reads_variable("tool_calls") and not var_calls.reads_key("tool_calls")
    plain = ChatTemplate(loop)  # SmolLM2-like: reads neither
    assert not plain.reads_variable("tools") and not plain.reads_key("tool_calls")
    aware = ChatTemplate(
        "{% if tools %}{{ tools | tojson }}{% endif %}{% for m in messages %}"
        "{% if 'tool_calls' in m %}{{ m.tool_calls | tojson }}{% endif %}{% endfor %}"
    )
    assert aware.reads_variable("tools") and aware.reads_key("tool_calls")
    for attr in ("m.tool_calls", "m['tool_calls']"):
        assert ChatTemplate("{% for m in messages %}{{ " + attr + " }}{% endfor %}").reads_key(
            "tool_calls"
        )


def test_sentencepiece_gguf_matches_hf(tmp_path):
    """A Llama-2-style vocabulary (SentencePiece BPE, byte fallback, merges derived from
    scores) built from GGUF metadata, against transformers' tokenizer for the same file."""
    transformers = pytest.importorskip("transformers")
    corpus = [*TEXTS, "the quick brown fox jumps over the lazy dog " * 5]
    path = write_sentencepiece_gguf(tmp_path / "spm.gguf", corpus)
    ours = Tokenizer.from_gguf(GGUFFile(path))
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    assert ours.bos_token_id == hf.bos_token_id == 1
    for text in TEXTS:
        for add_special_tokens in (True, False):
            expected = hf.encode(text, add_special_tokens=add_special_tokens)
            assert ours.encode(text, add_special_tokens=add_special_tokens) == expected, text
        ids = hf.encode(text)
        for skip in (True, False):
            assert ours.decode(ids, skip) == hf.decode(ids, skip_special_tokens=skip), text
    assert ours.encode("the fox")[:2] == [1, ours.token_to_id("\u2581the")]
    assert [ours.id_to_token(i) for i in ours.encode("☃", False)][-3:] == [
        "<0xE2>",
        "<0x98>",
        "<0x83>",
    ]


def test_token_bytes_of_partial_characters_come_from_the_vocabulary(tmp_path):
    """Logprobs' `bytes`: a token holding part of a UTF-8 character decodes alone to U+FFFD
    (whose bytes were reported); the vocabulary spells its real bytes (byte-level BPE's
    alphabet, <0xNN> byte-fallback tokens, U+2581 for a space)."""
    corpus = [*TEXTS, "the quick brown fox jumps over the lazy dog " * 5]
    spm = Tokenizer.from_gguf(GGUFFile(write_sentencepiece_gguf(tmp_path / "spm.gguf", corpus)))
    write_byte_tokenizer(tmp_path)
    byte_level = Tokenizer.from_hf_dir(tmp_path)
    text = "the fox 😀 ☃ é</s>"
    for tok, prefix in ((byte_level, b""), (spm, b" ")):  # SentencePiece's dummy prefix
        ids = tok.encode(text, add_special_tokens=False)
        assert b"".join(tok.token_bytes(i) for i in ids) == prefix + text.encode(), tok


NAMED = [
    {"name": "default", "template": "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
                                    "{% endfor %}"},
    {"name": "tool_use", "template": "<tools>{{ tools | tojson }}</tools>{% for m in messages %}"
                                     "<{{ m.role }}>{{ m.content }}{% endfor %}"},
]
WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]


def test_named_chat_templates_render_tools_with_tool_use(tmp_path):
    """Named templates (Hermes-style; HF's list form, and llama.cpp's
    tokenizer.chat_template.<name> GGUF keys): with tools, "tool_use" renders, as HF's
    apply_chat_template picks it, and it is the one whose variables count. Only "default"
    was kept: the tools were dropped, and the server refused them (400) since "default"
    never reads `tools`."""
    transformers = pytest.importorskip("transformers")
    write_byte_tokenizer(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": NAMED}))
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    (tmp_path / "gguf").mkdir()
    spm = write_sentencepiece_gguf(tmp_path / "gguf" / "spm.gguf", TEXTS, chat_template=NAMED)
    chat = [{"role": "user", "content": "weather?"}]
    for ours in (Tokenizer.from_hf_dir(tmp_path), Tokenizer.from_gguf(GGUFFile(spm))):
        assert sorted(ours.chat_templates) == ["default", "tool_use"]
        for tools in (None, WEATHER):
            expected = hf.apply_chat_template(chat, tools=tools, tokenize=False)
            assert ours.apply_chat_template(chat, False, tools=tools) == expected
        assert ours.apply_chat_template(chat, False, tools=WEATHER).startswith("<tools>[")
        assert ours.chat_template_for(WEATHER).reads_variable("tools")
        assert not ours.chat_template_for(None).reads_variable("tools")


def test_a_missing_special_token_renders_empty_and_special_tokens_map_is_read(tmp_path):
    """HF leaves a special token the model lacks out of the template's variables, so
    `{{ bos_token }}` renders "" (kvsaga passed None: "None"); and it reads
    special_tokens_map.json, where older repos keep bos/eos/pad/unk (kvsaga did not: no
    EOS id, no BOS in the prompt)."""
    transformers = pytest.importorskip("transformers")
    write_byte_tokenizer(tmp_path)
    template = ("{{ bos_token }}{% for m in messages %}[{{ m.content }}]{{ eos_token }}"
                "{% endfor %}{{ unk_token }}")
    cfg = {"bos_token": None, "chat_template": template}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    chat = [{"role": "user", "content": "hi"}]
    ours = Tokenizer.from_hf_dir(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert ours.apply_chat_template(chat, False) == "[hi]" == hf.apply_chat_template(
        chat, tokenize=False)
    legacy = {"bos_token": {"content": "<s>"}, "eos_token": "</s>", "unk_token": "</s>"}
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(legacy))
    ours = Tokenizer.from_hf_dir(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert (ours.bos_token, ours.eos_token, ours.unk_token) == ("<s>", "</s>", "</s>")
    assert ours.eos_token_ids == (1,) and ours.bos_token_id == 0
    assert ours.apply_chat_template(chat, False) == "<s>[hi]</s></s>" == hf.apply_chat_template(
        chat, tokenize=False)


def test_tekken_pre_tokenizer_splits_as_transformers_and_unknown_ones_are_refused(gguf_path):
    """Mistral Nemo's GGUF pre-tokenizer "tekken" breaks words where the case turns and
    digits one by one; it fell back to GPT-2's split with a warning, which tokenizes
    differently from the model's training. SmolLM2's vocabulary with its pre-tokenizer
    renamed, against transformers' own GGUF tokenizer. A name kvsaga does not know is
    refused, naming it."""
    mapping = pytest.importorskip("transformers.integrations.gguf.gguf_tokenizer_mapping")
    meta = dict(GGUFFile(gguf_path).metadata)
    meta["tokenizer.ggml.pre"] = "tekken"
    ours = build_gguf_backend(meta)
    arch, pieces, _ = mapping.get_gguf_tokenizer(str(gguf_path))
    hf, _ = mapping.convert_gguf_tokenizer(arch, {**pieces, "pre_tokenizer_type": "tekken"})
    camel = "JavaScript on iPhone and YouTube"
    assert ours.encode(camel, add_special_tokens=False).tokens == [
        "Java", "Script", "Ġon", "Ġi", "Phone", "Ġand", "ĠYou", "Tube"]
    for text in [camel, "getElementById HTTPServer ÉCOLE x1234y a//b\n// c", *TEXTS]:
        assert ours.encode(text, add_special_tokens=False).ids == hf.encode(
            text, add_special_tokens=False).ids, text
    meta["tokenizer.ggml.pre"] = "made-up-bpe"
    with pytest.raises(ModelLoadError, match="pre-tokenizer 'made-up-bpe'"):
        build_gguf_backend(meta)
