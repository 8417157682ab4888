"""Tokenizer: text <-> token ids and chat prompts, from an HF directory or a GGUF file.

HF directories carry a `tokenizer.json` that the `tokenizers` library loads as is. A GGUF file
carries the pieces (vocabulary, merges, token types, pre-tokenizer name); for byte-level BPE
vocabularies (`tokenizer.ggml.model == "gpt2"`: SmolLM, Llama 3, Qwen2, ...) they are assembled
into the same `tokenizers` pipeline that the original `tokenizer.json` describes.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from kvsaga.engine.chat_template import ChatTemplate, ChatTemplateError
from kvsaga.engine.gguf_file import GGUFFile
from kvsaga.engine.model_config import ModelLoadError

# Pre-tokenizer regexes by llama.cpp's `tokenizer.ggml.pre` name.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_REGEX = {
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx", "falcon3"), _LLAMA3_SPLIT
    ),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), _QWEN2_SPLIT),
}
# GPT-2's regex after splitting off every digit (llama.cpp's "\p{N}" + gpt2 regex pair).
_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
_GPT2 = ("gpt2", "default", "gpt-2", "olmo", "jais", "stablelm2", "poro-chat", "viking", "bloom")

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


class Tokenizer:
    """Encodes, decodes and renders chat prompts for one model.

    Args:
        backend: the `tokenizers` pipeline.
        chat_template: Jinja source of the chat template, if the model has one.
        bos_token: spelling of the BOS token, if any.
        eos_token: spelling of the main EOS token, if any.
        eos_token_ids: every id that ends generation; defaults to the id of `eos_token`.
        pad_token: spelling of the padding token, if any.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        chat_template: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        eos_token_ids: Sequence[int] = (),
        pad_token: str | None = None,
    ) -> None:
        self.backend = backend
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.bos_token_id = self._id(bos_token)
        self.eos_token_id = self._id(eos_token)
        self.pad_token_id = self._id(pad_token)
        ids = list(eos_token_ids) or ([self.eos_token_id] if self.eos_token_id is not None else [])
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(ids))
        specials = {"bos_token": bos_token, "eos_token": eos_token, "pad_token": pad_token}
        self.chat_template = ChatTemplate(chat_template, specials) if chat_template else None

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        """Size of the vocabulary, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; `add_special_tokens` adds what the model's post-processor adds
        (e.g. Llama's BOS). Special tokens spelled in the text are always recognised."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(
        self, texts: Sequence[str], add_special_tokens: bool = True
    ) -> list[list[int]]:
        """`encode` over many texts, in parallel inside `tokenizers`."""
        out = self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [e.ids for e in out]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of token ids."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> str:
        """Render a conversation with the model's chat template.

        Args:
            messages: [{"role": "user", "content": "..."}, ...].
            add_generation_prompt: end with an open assistant turn.
            **kwargs: extra template variables (e.g. `tools`).

        Returns:
            The prompt text; encode it with `add_special_tokens=False`, as the template
            already wrote any BOS it wants.

        Raises:
            ChatTemplateError: the model has no template, or the template rejected the input.
        """
        if self.chat_template is None:
            raise ChatTemplateError("this model has no chat template; pass a plain prompt")
        return self.chat_template.render(messages, add_generation_prompt, **kwargs)

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_hf_dir(cls, directory: str | Path, eos_token_ids: Sequence[int] = ()) -> Tokenizer:
        """Load `tokenizer.json` (+ `tokenizer_config.json`, `chat_template.jinja`).

        Args:
            directory: the model directory.
            eos_token_ids: extra end ids from the model config (merged with the tokenizer's).

        Raises:
            ModelLoadError: no `tokenizer.json` (slow-only tokenizers are not supported).
        """
        d = Path(directory)
        if not (d / "tokenizer.json").is_file():
            raise ModelLoadError(f"{d}: no tokenizer.json (only fast tokenizers are supported)")
        backend = Backend.from_file(str(d / "tokenizer.json"))
        cfg = _read_json(d / "tokenizer_config.json")
        template = cfg.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default") or next(iter(named.values()), None)
        if (d / "chat_template.jinja").is_file():
            template = (d / "chat_template.jinja").read_text(encoding="utf-8")
        elif (d / "chat_template.json").is_file():
            template = _read_json(d / "chat_template.json").get("chat_template", template)
        eos = _token_text(cfg.get("eos_token"))
        eos_ids = [backend.token_to_id(eos)] if eos and backend.token_to_id(eos) is not None else []
        return cls(
            backend,
            chat_template=template,
            bos_token=_token_text(cfg.get("bos_token")),
            eos_token=eos,
            eos_token_ids=[*eos_ids, *eos_token_ids],
            pad_token=_token_text(cfg.get("pad_token")),
        )

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> Tokenizer:
        """Build the tokenizer stored in a GGUF file's metadata.

        Raises:
            ModelLoadError: a tokenizer model other than byte-level BPE ("gpt2"), or missing
                vocabulary.
        """
        meta = gguf.metadata
        kind = meta.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ModelLoadError(
                f"{gguf.path.name}: GGUF tokenizer model {kind!r} is not supported "
                "(supported: 'gpt2', byte-level BPE); use the model's HF directory instead"
            )
        tokens: list[str] = meta.get("tokenizer.ggml.tokens") or []
        merges: list[str] = meta.get("tokenizer.ggml.merges") or []
        if not tokens or not merges:
            raise ModelLoadError(f"{gguf.path.name}: no tokenizer vocabulary or merges in the file")
        backend = _byte_level_bpe(
            tokens,
            merges,
            meta.get("tokenizer.ggml.token_type") or [],
            meta.get("tokenizer.ggml.pre"),
        )

        def spelled(key: str) -> str | None:
            i = meta.get(f"tokenizer.ggml.{key}")
            return tokens[i] if i is not None and 0 <= i < len(tokens) else None

        bos, eos = spelled("bos_token_id"), spelled("eos_token_id")
        post = []
        if meta.get("tokenizer.ggml.add_bos_token", False) and bos is not None:
            post.append(("bos", bos))
        if meta.get("tokenizer.ggml.add_eos_token", False) and eos is not None:
            post.append(("eos", eos))
        if post:
            backend.post_processor = _template_processor(backend, post)
        eot = meta.get("tokenizer.ggml.eot_token_id")
        eos_ids = [i for i in (meta.get("tokenizer.ggml.eos_token_id"), eot) if i is not None]
        return cls(
            backend,
            chat_template=meta.get("tokenizer.chat_template"),
            bos_token=bos,
            eos_token=eos,
            eos_token_ids=eos_ids,
            pad_token=spelled("padding_token_id"),
        )


def _byte_level_bpe(
    tokens: list[str], merges: list[str], token_types: list[int], pre: str | None
) -> Backend:
    """A byte-level BPE pipeline (GPT-2 style) from GGUF vocabulary pieces."""
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    byte_spelling = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        # A token outside the byte alphabet is stored as raw text: spell it in bytes.
        key = tok if set(tok) <= alphabet else "".join(byte_spelling[b] for b in tok.encode())
        vocab.setdefault(key, i)
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    backend = Backend(models.BPE(vocab, pairs, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = _pre_tokenizer(pre)
    backend.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|>, ...) stay whole and are special; user-defined ones stay
    # whole but are ordinary text. A control token outside the byte alphabet cannot be a
    # real vocabulary entry, so it is left alone (as llama.cpp and HF do).
    control = [
        AddedToken(tok, normalized=False, special=True)
        for tok, kind in zip(tokens, token_types, strict=False)
        if kind == _CONTROL and set(tok) <= alphabet
    ]
    user = [
        AddedToken(tok, normalized=False, special=False)
        for tok, kind in zip(tokens, token_types, strict=False)
        if kind == _USER_DEFINED and tok in vocab
    ]
    if control:
        backend.add_special_tokens(control)
    if user:
        backend.add_tokens(user)
    return backend


def _pre_tokenizer(pre: str | None) -> Any:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _SPLIT_REGEX:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_SPLIT_REGEX[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    if pre in _DIGITS_THEN_GPT2:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre not in _GPT2 and pre is not None:
        warnings.warn(
            f"unknown GGUF pre-tokenizer {pre!r}; using GPT-2's, which may split text "
            "differently from the model's training",
            stacklevel=3,
        )
    return byte_level


def _template_processor(backend: Backend, specials: list[tuple[str, str]]) -> Any:
    """Post-processor adding BOS before and/or EOS after each sequence."""
    bos = next((tok for kind, tok in specials if kind == "bos"), None)
    eos = next((tok for kind, tok in specials if kind == "eos"), None)
    single = " ".join(x for x in (bos, "$A:0", eos) if x)
    pair = " ".join(x for x in (bos, "$A:0", eos, bos, "$B:1", eos) if x)
    return processors.TemplateProcessing(
        single=single,
        pair=pair,
        special_tokens=[
            (tok, backend.token_to_id(tok)) for tok in dict.fromkeys(t for t in (bos, eos) if t)
        ],
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + n)
            n += 1
    return mapping


def _token_text(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string or {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from e


__all__ = ["ChatTemplateError", "Tokenizer"]
