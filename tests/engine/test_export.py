"""export_hf: a checkpoint written as an HF directory is, to transformers (the oracle), the
model, tokenizer and chat template of its source; kvsaga's loaders read it back the same."""

from __future__ import annotations

import errno
import json
import os
import shutil

import numpy as np
import pytest
import torch

from kvsaga.engine import export as export_mod
from kvsaga.engine.export import export_hf
from kvsaga.engine.model import LlamaForCausalLM
from kvsaga.engine.model_config import ModelLoadError
from kvsaga.engine.tokenizer import Tokenizer
from kvsaga.engine.weights import open_checkpoint

from .helpers import forward_all, write_llama_gguf

# 99 tokens: past llama_mqa_llama3_rope's original_max_position_embeddings (16), so both
# ends of its rescaled band matter.
IDS = list(range(3, 200, 2))


def _logits(path) -> torch.Tensor:
    ckpt = open_checkpoint(path)
    model = LlamaForCausalLM(ckpt.config)
    model.load_weights(ckpt.weights(progress=False))
    return forward_all(model, IDS)


def _hf_logits(path, dtype=torch.float32) -> torch.Tensor:
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    with torch.no_grad():
        return hf(torch.tensor([IDS])).logits[0].float()


def _source(tiny_model_dir, tmp_path, variant, via_gguf):
    src = tiny_model_dir(variant)
    return src, write_llama_gguf(src, tmp_path / "src.gguf") if via_gguf else src


@pytest.mark.parametrize(
    "variant,via_gguf",
    [
        ("llama_gqa4_untied", True),
        ("llama_mqa_llama3_rope", True),  # rope_freqs in the GGUF
        ("llama_mha_tied_linear_rope", False),
        ("qwen2_bias_tied", False),
        ("mistral", False),
    ],
)
def test_export_matches_transformers(tiny_model_dir, tmp_path, variant, via_gguf):
    """transformers runs the written directory as the model it ran from the source HF
    directory, and kvsaga runs it as transformers does."""
    src, source = _source(tiny_model_dir, tmp_path, variant, via_gguf)
    out = export_hf(source, tmp_path / "hf", with_tokenizer=False)
    ref = _hf_logits(src)
    torch.testing.assert_close(_hf_logits(out), ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_logits(out), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", ["llama_gqa4_untied", "llama_mqa_llama3_rope"])
def test_gguf_export_is_the_same_model(tiny_model_dir, tmp_path, variant):
    """GGUF -> HF directory: the source HF directory's config (rope_freqs back as the llama3
    rope_scaling they came from), no rope_freqs tensor, and kvsaga's logits of the GGUF."""
    from safetensors import safe_open

    src = tiny_model_dir(variant)
    gguf_path = write_llama_gguf(src, tmp_path / "tiny.gguf", "F32")
    out = export_hf(gguf_path, tmp_path / "hf", with_tokenizer=False)
    assert open_checkpoint(out).config.rope_scaling == open_checkpoint(src).config.rope_scaling
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert all(k.startswith(("model.", "lm_head.")) for k in f.keys())  # noqa: SIM118
    torch.testing.assert_close(_logits(out), _logits(gguf_path), atol=1e-5, rtol=0)


def test_export_refuses_tensors_other_loaders_cannot_read(tiny_model_dir, tmp_path):
    """A GGUF tensor with no HF name, or rope_freqs that no llama3 scaling gives, is refused
    by name before anything is written."""
    src = tiny_model_dir("llama_gqa4_untied")
    unknown = write_llama_gguf(
        src, tmp_path / "u.gguf", extra={"blk.0.attn_q_norm.weight": np.ones(16)}
    )
    with pytest.raises(ModelLoadError, match="blk.0.attn_q_norm.weight"):
        export_hf(unknown, tmp_path / "u", with_tokenizer=False)
    freqs = write_llama_gguf(
        src, tmp_path / "f.gguf", extra={"rope_freqs.weight": np.linspace(1.0, 3.0, 8)}
    )
    with pytest.raises(ModelLoadError, match="not the divisors of any llama3"):
        export_hf(freqs, tmp_path / "f", with_tokenizer=False)
    assert not (tmp_path / "u").exists() and not (tmp_path / "f").exists()


def test_mistral_export_keeps_full_attention(tiny_model_dir, tmp_path):
    """A Mistral without a sliding window stays without one (absent, transformers and vLLM
    would use MistralConfig's default window of 4096)."""
    transformers = pytest.importorskip("transformers")
    src = tiny_model_dir("mistral")
    out = export_hf(src, tmp_path / "hf", with_tokenizer=False)
    assert transformers.AutoConfig.from_pretrained(out).sliding_window is None
    assert transformers.AutoConfig.from_pretrained(src).sliding_window is None


def test_export_dtype_and_tied_head(tiny_model_dir, tmp_path):
    """bf16 weights; a tied head is stored once, and transformers ties it to the embedding."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    src = tiny_model_dir("llama_mha_tied_linear_rope")
    out = export_hf(src, tmp_path / "bf16", dtype=torch.bfloat16)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    stored = load_file(out / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    assert "lm_head.weight" not in stored
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    ref = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    assert torch.equal(hf.lm_head.weight, hf.model.embed_tokens.weight)
    assert torch.equal(hf.lm_head.weight, ref.lm_head.weight.to(torch.bfloat16))


def test_export_tokenizer_and_template_match_transformers(tiny_model_dir, tmp_path):
    """transformers' tokenizer from the written directory encodes, ends and renders chats as
    transformers' tokenizer of the source does."""
    transformers = pytest.importorskip("transformers")
    src = tiny_model_dir("llama_gqa4_untied")
    out = export_hf(src, tmp_path / "hf")
    theirs, ref = (transformers.AutoTokenizer.from_pretrained(p) for p in (out, src))
    text = "Hello, world! The cache keeps 1234 tokens\n\tacross tool calls. émoji 🍕"
    assert theirs.encode(text) == ref.encode(text)
    assert theirs.eos_token_id == ref.eos_token_id and theirs.bos_token_id == ref.bos_token_id
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert theirs.apply_chat_template(chat, tokenize=False) == ref.apply_chat_template(
        chat, tokenize=False
    )


def test_export_keeps_named_templates_unk_and_sampling_defaults(tiny_model_dir, tmp_path):
    """export_hf wrote the "default" chat template alone (the export lost "tool_use"), no
    unk_token, and a generation_config.json of token ids alone: both engines serving the
    export sampled with other defaults than kvsaga serving the source."""
    transformers = pytest.importorskip("transformers")
    src = tmp_path / "src"
    shutil.copytree(tiny_model_dir("llama_gqa4_untied"), src)
    named = [
        {"name": "default", "template": "{% for m in messages %}{{ m.content }}{% endfor %}"},
        {"name": "tool_use", "template": "{{ tools | length }}:{% for m in messages %}"
                                         "{{ m.content }}{% endfor %}"},
    ]
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    cfg.update(chat_template=named, unk_token="</s>")
    (src / "tokenizer_config.json").write_text(json.dumps(cfg))
    gen_path = src / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
    sampling = {"temperature": 0.6, "top_p": 0.9, "top_k": 20, "max_new_tokens": 64,
                "repetition_penalty": 1.1}
    gen_path.write_text(json.dumps({**gen, **sampling}))
    out = export_hf(src, tmp_path / "out")
    written = json.loads((out / "generation_config.json").read_text())
    assert {k: written.get(k) for k in sampling} == sampling
    assert open_checkpoint(out).config.generation == open_checkpoint(src).config.generation
    back = Tokenizer.from_hf_dir(out)
    assert {n: t.source for n, t in back.chat_templates.items()} == {
        t["name"]: t["template"] for t in named}
    assert back.unk_token == "</s>"
    chat, tools = [{"role": "user", "content": "hi"}], [{"type": "function"}]
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    assert back.apply_chat_template(chat, tools=tools) == "1:hi" == theirs.apply_chat_template(
        chat, tools=tools, tokenize=False)
    assert theirs.apply_chat_template(chat, tokenize=False) == "hi"


def test_export_refuses_an_occupied_target(tiny_model_dir, tmp_path):
    """A file or a non-empty directory at out_dir is refused before the source is read (so
    before a missing source is noticed) and left as it was; an empty directory is filled."""
    src = tiny_model_dir("llama_gqa4_untied")
    with pytest.raises(ModelLoadError, match="unsupported export dtype"):
        export_hf(src, tmp_path / "x", dtype=torch.int8)
    assert not (tmp_path / "x").exists()
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "chat_template.jinja").write_text("{{ 'STALE' }}")
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    for target in (stale, a_file):
        with pytest.raises(ModelLoadError, match="overwrite=True"):
            export_hf(tmp_path / "no-such-model", target)
    assert [p.name for p in stale.iterdir()] == ["chat_template.jinja"]
    assert a_file.read_text() == "not a directory"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (export_hf(src, empty) / "config.json").is_file()
    with pytest.raises(ModelLoadError, match="not empty"):
        export_hf(src, empty)
    assert sorted(os.listdir(tmp_path)) == ["empty", "file", "stale"]  # no temporaries left


def test_export_overwrite_replaces_the_whole_directory(tiny_model_dir, tmp_path):
    """overwrite=True: nothing of the old directory survives (a stale template would win
    on reload); a failed export leaves the old one whole."""
    src = tiny_model_dir("llama_gqa4_untied")
    out = tmp_path / "out"
    out.mkdir()
    (out / "chat_template.jinja").write_text("{{ 'STALE' }}")
    (out / "model-00001-of-00002.safetensors").write_bytes(b"old")
    export_hf(src, out, overwrite=True)
    assert "chat_template.jinja" not in os.listdir(out)
    template = Tokenizer.from_hf_dir(out).chat_template.source
    assert template == Tokenizer.from_hf_dir(src).chat_template.source
    before = sorted(os.listdir(out))
    bad = write_llama_gguf(src, tmp_path / "f.gguf", extra={"rope_freqs.weight": np.full(8, 2.0)})
    with pytest.raises(ModelLoadError, match="llama3"):
        export_hf(bad, out, with_tokenizer=False, overwrite=True)
    assert sorted(os.listdir(out)) == before
    file_target = tmp_path / "file"
    file_target.write_text("x")
    assert (export_hf(src, file_target, overwrite=True) / "config.json").is_file()


def test_export_into_the_working_directory(tiny_model_dir, tmp_path, monkeypatch):
    """'.' (the working directory, empty, or replaced with overwrite=True) has no name to
    make the temporary beside it from; once replaced, the working directory is the new one,
    not the removed one."""
    src = tiny_model_dir("llama_gqa4_untied")
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    files = ["config.json", "generation_config.json", "model.safetensors"]
    assert export_hf(src, ".", with_tokenizer=False) == here
    assert sorted(os.listdir(".")) == files
    (here / "chat_template.jinja").write_text("{{ 'STALE' }}")
    export_hf(src, ".", with_tokenizer=False, overwrite=True)
    assert sorted(os.listdir(".")) == files
    assert os.listdir(tmp_path) == ["here"]  # no temporaries left


def test_export_fills_an_empty_directory_it_cannot_rename_over(tiny_model_dir, tmp_path,
                                                               monkeypatch):
    """An empty mount point cannot be renamed over (EBUSY): its files are moved into it."""
    src = tiny_model_dir("llama_gqa4_untied")
    mount = tmp_path / "mnt"
    mount.mkdir()
    real = os.replace

    def busy(a, b):
        if os.path.exists(b) and os.path.samefile(b, mount):
            raise OSError(errno.EBUSY, "Device or resource busy")
        real(a, b)

    monkeypatch.setattr(os, "replace", busy)
    export_hf(src, mount, with_tokenizer=False)
    assert (mount / "config.json").is_file()
    assert os.listdir(tmp_path) == ["mnt"]


def _mount_at(monkeypatch, mount, seen=True) -> None:
    """`mount` behaves as a mount point: renaming it, or over it, is EBUSY; `seen`:
    os.path.ismount says so (a bind mount on the same file system it misses)."""
    real_replace, real_ismount = os.replace, os.path.ismount

    def busy(a, b):
        for p in (a, b):
            if os.path.exists(p) and os.path.samefile(p, mount):
                raise OSError(errno.EBUSY, "Device or resource busy")
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", busy)
    monkeypatch.setattr(os.path, "ismount",
                        lambda p: (seen and os.path.samefile(p, mount)) or real_ismount(p))


def test_export_overwrite_fills_an_empty_mount_point(tiny_model_dir, tmp_path, monkeypatch):
    """overwrite=True renamed the target aside first, which a mount point refuses: an empty
    one that the same call without overwrite fills failed with a bare EBUSY."""
    src = tiny_model_dir("llama_gqa4_untied")
    mount = tmp_path / "mnt"
    mount.mkdir()
    _mount_at(monkeypatch, mount)
    export_hf(src, mount, with_tokenizer=False, overwrite=True)
    assert sorted(os.listdir(mount)) == ["config.json", "generation_config.json",
                                         "model.safetensors"]
    assert os.listdir(tmp_path) == ["mnt"]


@pytest.mark.parametrize("seen", [True, False], ids=["ismount", "bind-mount"])
def test_export_overwrite_refuses_a_mount_point_that_is_not_empty(tiny_model_dir, tmp_path,
                                                                  monkeypatch, seen):
    """A mount point with files cannot be replaced: a clear refusal (before the source is
    read where ismount sees it), its files as they were, no temporaries left."""
    src = tiny_model_dir("llama_gqa4_untied")
    mount = tmp_path / "mnt"
    mount.mkdir()
    (mount / "model.safetensors").write_bytes(b"old")
    _mount_at(monkeypatch, mount, seen)
    with pytest.raises(ModelLoadError, match="mount point that is not empty.*empty it"):
        export_hf(src if not seen else tmp_path / "no-such-model", mount, with_tokenizer=False,
                  overwrite=True)
    assert os.listdir(mount) == ["model.safetensors"]
    assert (mount / "model.safetensors").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["mnt"]


def test_export_overwrite_interrupted_between_the_renames_keeps_the_old(tiny_model_dir,
                                                                       tmp_path, monkeypatch):
    """An interrupt after the old directory was moved aside and before the new one took its
    place puts the old one back whole (the temporaries go)."""
    src = tiny_model_dir("llama_gqa4_untied")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"old")
    real, calls = os.replace, []

    def interrupted(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(a, b)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_hf(src, out, with_tokenizer=False, overwrite=True)
    assert os.listdir(tmp_path) == ["out"]
    assert os.listdir(out) == ["model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == b"old"


def test_export_failure_while_writing_leaves_nothing(tiny_model_dir, tmp_path, monkeypatch):
    """A failure halfway through writing leaves neither out_dir nor a temporary beside it."""
    src = tiny_model_dir("llama_gqa4_untied")

    def fail(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_mod, "_write_json", fail)
    with pytest.raises(ModelLoadError, match="No space left"):
        export_hf(src, tmp_path / "out")
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_default_model_export_matches_transformers(gguf_path, smollm, tmp_path):
    """The shipped SmolLM2 GGUF written out: transformers' tokenizer from the directory
    encodes and renders chats as kvsaga does from the GGUF, and its model computes kvsaga's
    logits."""
    transformers = pytest.importorskip("transformers")
    out = export_hf(gguf_path, tmp_path / "smol")
    ours, theirs = smollm.tokenizer, transformers.AutoTokenizer.from_pretrained(out)
    text = "Hello, world! The cache keeps 1234 tokens\n\tacross tool calls."
    assert theirs.encode(text) == ours.encode(text)
    assert theirs.eos_token_id in ours.eos_token_ids
    chat = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}]
    prompt = ours.apply_chat_template(chat)
    assert theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == prompt
    ids = ours.encode(prompt, add_special_tokens=False)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(forward_all(smollm.model, ids), ref, atol=2e-3, rtol=2e-3)
