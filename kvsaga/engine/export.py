"""Write a model as an HF directory (config.json + safetensors + tokenizer files).

Other engines (vLLM, transformers) read HF directories, not the GGUF file kvsaga ships as its
default model. This writes what kvsaga's own loaders read from a checkpoint, so a benchmark
can serve the same weights, tokenizer and chat template with both engines. Weights keep the
checkpoint's values (GGUF tensors come out dequantized to fp32) in the dtype asked for.
llama.cpp's `rope_freqs` divisors, which no HF loader reads, become the llama3 `rope_scaling`
they were computed from. The directory appears whole or not at all: it is written beside its
target and renamed into place.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kvsaga.engine.gguf_file import hf_tensor_name
from kvsaga.engine.model_config import ModelConfig, ModelLoadError
from kvsaga.engine.rope import llama3_from_freq_factors
from kvsaga.engine.tokenizer import Tokenizer
from kvsaga.engine.weights import Checkpoint, open_checkpoint

_HF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def hf_config(config: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    """The config.json that `ModelConfig.from_hf_config` reads back as `config`."""
    rope = config.rope_scaling
    scaling = None
    if rope.rope_type == "linear":
        scaling = {"rope_type": "linear", "factor": rope.factor}
    elif rope.rope_type == "llama3":
        scaling = {
            "rope_type": "llama3",
            "factor": rope.factor,
            "low_freq_factor": rope.low_freq_factor,
            "high_freq_factor": rope.high_freq_factor,
            "original_max_position_embeddings": rope.original_max_position_embeddings,
        }
    eos = list(config.eos_token_ids)
    out = {
        "architectures": [_HF_ARCHITECTURES[config.architecture]],
        "model_type": config.architecture,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": scaling,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
        # qwen2's q/k/v bias is implied by its model_type; llama's flag covers all four.
        "attention_bias": config.attention_out_bias,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "torch_dtype": _DTYPE_NAMES[dtype],
    }
    if config.architecture == "mistral":
        # Absent, MistralConfig's default window (4096) applies. kvsaga attends fully and
        # caps max_position_embeddings at a source's window, which is the same model.
        out["sliding_window"] = None
    return out


def tokenizer_config(tokenizer: Tokenizer) -> dict[str, Any]:
    """The tokenizer_config.json that `Tokenizer.from_hf_dir` reads back."""
    out: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "unk_token": tokenizer.unk_token,
        "clean_up_tokenization_spaces": False,
    }
    templates = tokenizer.chat_templates
    if list(templates) == ["default"]:
        out["chat_template"] = templates["default"].source
    elif templates:  # HF's list form keeps every named template ("tool_use"...)
        out["chat_template"] = [{"name": n, "template": t.source} for n, t in templates.items()]
    return {k: v for k, v in out.items() if v is not None}


def export_hf(
    source: str | Path,
    out_dir: str | Path,
    dtype: torch.dtype = torch.float32,
    with_tokenizer: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the checkpoint at `source` (GGUF file or HF directory) as an HF directory.

    Args:
        source: anything `open_checkpoint` opens.
        out_dir: the directory to write; must not exist or be an empty directory.
        dtype: the dtype of the stored weights.
        with_tokenizer: also write the tokenizer files (False for weight-only checkpoints).
        overwrite: replace whatever is at `out_dir` (only once the new directory is complete).

    Returns:
        `out_dir`, absolute (`.` and `..` resolved).

    Raises:
        ModelLoadError: `out_dir` exists and is not an empty directory (without `overwrite`),
            `source` cannot be opened, `dtype` is not a float type the loaders read, or the
            checkpoint holds what an HF directory cannot say (a tensor kvsaga does not know,
            `rope_freqs` that are not llama3 scaling). Nothing at `out_dir` changes then.
    """
    if dtype not in _DTYPE_NAMES:
        raise ModelLoadError(f"unsupported export dtype {dtype}; use {list(_DTYPE_NAMES)}")
    out = _target(out_dir)
    _check_target(out, overwrite)
    ckpt = open_checkpoint(source)
    _check_tensor_names(ckpt)
    tokenizer = None
    if with_tokenizer and ckpt.gguf is not None:
        tokenizer = Tokenizer.from_gguf(ckpt.gguf)
    elif with_tokenizer:
        tokenizer = Tokenizer.from_hf_dir(ckpt.path, ckpt.config.eos_token_ids)
    config, tensors = ckpt.config, {}
    for name, t in ckpt.weights(progress=False):
        if name == "rope_freqs.weight":
            config = _with_llama3_rope(config, t)
        elif not (name == "lm_head.weight" and config.tie_word_embeddings):
            tensors[name] = t.to(dtype).contiguous()

    def write(tmp: Path) -> None:
        from safetensors.torch import save_file

        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.backend.save(str(tmp / "tokenizer.json"))
            _write_json(tmp / "tokenizer_config.json", tokenizer_config(tokenizer))
        _write_json(tmp / "generation_config.json", _generation_config(config, ckpt))
        _write_json(tmp / "config.json", hf_config(config, dtype))

    _write_dir(out, overwrite, write)
    return out


def _target(out_dir: str | Path) -> Path:
    """`out_dir` absolute, without `.` or `..`: the temporary is made beside it, from its
    name and parent, which `.` does not have. Its last component is not followed: a link
    there is what `_check_target` judges and `overwrite` replaces."""
    out = Path(os.path.abspath(Path(out_dir).expanduser()))
    return out.parent.resolve() / out.name


_MOUNT_REFUSAL = (
    "{out} is a mount point that is not empty: overwrite=True replaces a directory by "
    "renaming a new one into its place, which a mount point refuses; empty it (an empty "
    "one is filled) or export into a directory inside it"
)


def _is_mount(out: Path) -> bool:
    return not out.is_symlink() and out.is_dir() and os.path.ismount(out)


def _check_target(out: Path, overwrite: bool) -> None:
    """Refuse, before the source is read, a target that would mix with what is there (stale
    shards, an index or a chat_template.jinja left behind win on reload) or cannot be made."""
    if not overwrite and (out.is_symlink() or out.exists()):
        if not out.is_dir() or out.is_symlink():
            what = "a link" if out.is_symlink() else "a file"
        elif any(out.iterdir()):
            what = "a directory that is not empty"
        else:
            return
        raise ModelLoadError(
            f"{out} exists and is {what}; choose a new or empty directory, or pass "
            "overwrite=True to replace it"
        )
    if overwrite and _is_mount(out) and any(out.iterdir()):
        raise ModelLoadError(_MOUNT_REFUSAL.format(out=out))
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ModelLoadError(f"cannot create {out}: {parent} is not a directory")


def _check_tensor_names(ckpt: Checkpoint) -> None:
    """Refuse, before any tensor is read, GGUF tensors with no HF name (written as such, other
    loaders reject the directory or ignore what the tensor did)."""
    if ckpt.gguf is None:
        return
    names = [t.name for t in ckpt.gguf.reader.tensors]
    unknown = [n for n in names if hf_tensor_name(n).startswith("gguf:")]
    if unknown:
        raise ModelLoadError(
            f"{ckpt.path.name}: GGUF tensor(s) {unknown[:8]} have no HF name; "
            "this checkpoint cannot be written as an HF directory"
        )


def _with_llama3_rope(config: ModelConfig, factors: torch.Tensor) -> ModelConfig:
    """`config` with the llama3 rope_scaling that `factors` (llama.cpp's rope_freqs) apply."""
    if config.rope_scaling.rope_type != "default":
        raise ModelLoadError(
            f"rope_freqs together with {config.rope_scaling.rope_type!r} rope scaling cannot be "
            "written as one HF rope_scaling"
        )
    scaling = llama3_from_freq_factors(factors, config.head_dim, config.rope_theta)
    return dataclasses.replace(config, rope_scaling=scaling)


def _write_dir(out: Path, overwrite: bool, write: Callable[[Path], None]) -> None:
    """Run `write` on a new sibling directory and rename that to `out`: a failure or a
    crash leaves `out` as it was, never half written. An empty directory at `out` that
    cannot be renamed over (a mount point) is filled instead (`_fill`), with `overwrite`
    too (a mount point that is not empty is refused: it cannot be replaced); one that was the
    working directory (`.`) is entered again once replaced, or the working directory would
    be the removed one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    here = not out.is_symlink() and out.is_dir() and os.path.samefile(out, os.getcwd())
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir()
    try:
        write(tmp)
        if overwrite and (out.is_symlink() or out.exists()) and not _is_empty_dir(out):
            old = tmp.with_suffix(".old")
            try:
                os.replace(out, old)
            except OSError as e:  # (a bind mount that ismount did not see)
                if e.errno == errno.EBUSY:
                    raise ModelLoadError(_MOUNT_REFUSAL.format(out=out)) from e
                raise
            try:
                os.replace(tmp, out)
            except BaseException:  # an interrupt too: the finally below removes `tmp`
                os.replace(old, out)
                raise
            _remove(old)
        else:
            try:
                os.replace(tmp, out)  # replaces an empty directory, fails on anything else
            except OSError as e:
                if e.errno not in (errno.EBUSY, errno.EXDEV) or not out.is_dir():
                    raise
                _fill(tmp, out)
        if here:
            os.chdir(out)
    except OSError as e:
        raise ModelLoadError(f"could not write {out}: {e}") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _is_empty_dir(out: Path) -> bool:
    """An empty directory at `out` (not a link to one): replaced as when `overwrite` is
    False, by renaming over it, or filled where it is a mount point."""
    return not out.is_symlink() and out.is_dir() and not any(out.iterdir())


def _fill(tmp: Path, out: Path) -> None:
    """Move `tmp`'s files into the empty directory `out` (copied where `out` is another file
    system), config.json last: until it is there no loader takes `out` for a model. A
    failure or an interrupt removes what was moved, leaving `out` empty as it was."""
    names = sorted(p.name for p in tmp.iterdir())
    names.sort(key=lambda n: n == "config.json")
    try:
        for name in names:
            shutil.move(tmp / name, out / name)
    except BaseException:
        for name in names:  # (one half copied too)
            (out / name).unlink(missing_ok=True)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _generation_config(config: ModelConfig, ckpt: Checkpoint) -> dict[str, Any]:
    """The source's generation_config.json (an HF directory's: what kvsaga does not apply,
    such as repetition_penalty, too: the model's authors meant it, and vLLM applies it) with
    the token ids and the sampling defaults kvsaga serves with (`config.generation`), so
    that engines serving the export take the same temperature, top_p, top_k and length."""
    source = {}
    if ckpt.gguf is None and (ckpt.path / "generation_config.json").is_file():
        try:
            source = json.loads((ckpt.path / "generation_config.json").read_text("utf-8"))
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot read the source's generation_config.json: {e}") from e
    eos = list(config.eos_token_ids)
    out: dict[str, Any] = {**source, "bos_token_id": config.bos_token_id}
    if eos:
        out["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    defaults = config.generation.as_dict()
    if "max_tokens" in defaults:
        defaults["max_new_tokens"] = defaults.pop("max_tokens")
    out.update(defaults)
    return {k: v for k, v in out.items() if v is not None}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


__all__ = ["export_hf", "hf_config", "tokenizer_config"]
