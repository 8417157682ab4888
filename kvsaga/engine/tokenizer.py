"""Tokenizer: text <-> token ids and chat prompts, from an HF directory or a GGUF file.

HF directories carry a `tokenizer.json` that the `tokenizers` library loads as is. A GGUF file
carries the pieces (vocabulary, merges, token types, pre-tokenizer name), which
`gguf_tokenizer.py` assembles into the same `tokenizers` pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as Backend

from kvsaga.engine.chat_template import ChatTemplate, ChatTemplateError
from kvsaga.engine.gguf_file import GGUFFile
from kvsaga.engine.gguf_tokenizer import build_gguf_backend
from kvsaga.engine.model_config import ModelLoadError, gguf_end_token_ids


class Tokenizer:
    """Encodes, decodes and renders chat prompts for one model.

    Args:
        backend: the `tokenizers` pipeline.
        chat_template: Jinja source of the chat template, if the model has one, or its named
            templates ({"default": ..., "tool_use": ...}, as HF keeps them).
        bos_token: spelling of the BOS token, if any.
        eos_token: spelling of the main EOS token, if any.
        eos_token_ids: every id that ends generation; defaults to the id of `eos_token`.
        pad_token: spelling of the padding token, if any.
        unk_token: spelling of the unknown token, if any.

    Attributes:
        chat_templates: the templates by name (a single one is "default").
        chat_template: the one rendered without tools: "default", else the first.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        chat_template: str | Mapping[str, str] | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        eos_token_ids: Sequence[int] = (),
        pad_token: str | None = None,
        unk_token: str | None = None,
    ) -> None:
        self.backend = backend
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.unk_token = unk_token
        self.bos_token_id = self._id(bos_token)
        self.eos_token_id = self._id(eos_token)
        self.pad_token_id = self._id(pad_token)
        ids = list(eos_token_ids) or ([self.eos_token_id] if self.eos_token_id is not None else [])
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(ids))
        # As HF's special_tokens_map: a token the model lacks is left out, so a template's
        # `{{ bos_token }}` renders "" (undefined) rather than "None".
        specials = {"bos_token": bos_token, "eos_token": eos_token, "pad_token": pad_token,
                    "unk_token": unk_token}
        specials = {k: v for k, v in specials.items() if v is not None}
        if isinstance(chat_template, str):
            chat_template = {"default": chat_template}
        self.chat_templates = {
            name: ChatTemplate(source, specials)
            for name, source in (chat_template or {}).items() if source
        }
        self.chat_template = self.chat_templates.get("default") or next(
            iter(self.chat_templates.values()), None)
        self._byte_spelling: tuple[bool, bool, bool, frozenset[int]] | None = None
        self._byte_fallback_ids: frozenset[int] | None = None
        self._special_ids: frozenset[int] | None = None
        self._whole_pieces: dict[int, str] | None = None
        self._byte_runs_fuse: bool | None = None

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

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for, even when they are part of a UTF-8 character
        (decoding such a token alone gives U+FFFD). Read from the vocabulary: byte-level
        BPE spells bytes as characters of its alphabet, SentencePiece-style vocabularies
        (GGUF's llama) have <0xNN> byte tokens and spell spaces as U+2581."""
        if self._byte_spelling is None:
            self._byte_spelling = _byte_spelling(self.backend)
        byte_level, byte_fallback, metaspace, added = self._byte_spelling
        piece = self.backend.id_to_token(token_id)
        if piece is None or token_id in added:
            return self.decode([token_id], skip_special_tokens=False).encode("utf-8")
        if byte_level and all(ch in _BYTE_OF for ch in piece):
            return bytes(_BYTE_OF[ch] for ch in piece)
        if byte_fallback and len(piece) == 6 and piece.startswith("<0x") and piece[5] == ">":
            return bytes([int(piece[3:5], 16)])
        if metaspace:
            return piece.replace("\u2581", " ").encode("utf-8")
        return self.decode([token_id], skip_special_tokens=False).encode("utf-8")

    def byte_fallback_ids(self) -> frozenset[int]:
        """The ids of a byte-fallback vocabulary's <0xNN> tokens (none for other decoders):
        a run of them decodes as one UTF-8 sequence, all U+FFFD when it is not valid, so
        the next byte can rewrite the text of the bytes before it."""
        if self._byte_fallback_ids is None:
            if self._byte_spelling is None:
                self._byte_spelling = _byte_spelling(self.backend)
            ids = (self.backend.token_to_id(f"<0x{b:02X}>") for b in range(256))
            fallback = self._byte_spelling[1]
            self._byte_fallback_ids = frozenset(i for i in ids if i is not None and fallback)
        return self._byte_fallback_ids

    def byte_runs_fuse(self) -> bool:
        """Whether a valid run of byte-fallback tokens decodes to its bytes' UTF-8 characters
        (the first may lose a space to Strip): only Fuse and Strip from the left follow
        ByteFallback in the decoder, none that rewrites characters (e.g. Metaspace after it
        turns the bytes of U+2581 into a space; Strip from the right drops a run's last
        space). The detokenizer decodes a run only then at its first character (`_Run`),
        else at each."""
        if self._byte_runs_fuse is None:
            steps = _decoder_steps(self.backend)
            types = [step.get("type") for step in steps]
            after = steps[types.index("ByteFallback") + 1:] if "ByteFallback" in types else []
            self._byte_runs_fuse = all(
                step.get("type") == "Fuse" or (step.get("type") == "Strip" and not step.get("stop"))
                for step in after)
        return self._byte_runs_fuse

    def whole_pieces(self) -> dict[int, str]:
        """id -> text of the tokens whose bytes are whole UTF-8 characters (not U+FFFD),
        where the decoder is ByteLevel alone (else none): it joins the tokens' bytes and
        decodes them, so after text that ends in a whole character such a token adds its
        own text, whatever came before (the detokenizer's fast path). Added tokens are left
        out. Built once, in one pass over the vocabulary."""
        if self._whole_pieces is None:
            pieces: dict[int, str] = {}
            steps = _decoder_steps(self.backend)
            if [step.get("type") for step in steps] == ["ByteLevel"]:
                added = self.backend.get_added_tokens_decoder()
                for piece, i in self.backend.get_vocab(with_added_tokens=False).items():
                    spelled = piece.translate(_LATIN1_OF)  # (bytes as the chars they code)
                    try:
                        text = spelled.encode("latin-1").decode("utf-8")
                    except UnicodeError:  # not bytes spelled, or not whole characters
                        continue
                    if i not in added and text and "\ufffd" not in text:
                        pieces[i] = text
            self._whole_pieces = pieces
        return self._whole_pieces

    def special_ids(self) -> frozenset[int]:
        """The ids of the special added tokens: those `decode(skip_special_tokens=True)`
        leaves out before its decoder runs (so bytes on either side of one join)."""
        if self._special_ids is None:
            added = self.backend.get_added_tokens_decoder()
            self._special_ids = frozenset(i for i, tok in added.items() if tok.special)
        return self._special_ids

    def chat_template_for(self, tools: Any = None) -> ChatTemplate | None:
        """The template that renders a conversation: "tool_use" when `tools` are given and
        the model has one (as HF's apply_chat_template picks), else `chat_template`."""
        if tools is not None and "tool_use" in self.chat_templates:
            return self.chat_templates["tool_use"]
        return self.chat_template

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
            **kwargs: extra template variables (e.g. `tools`, which pick the "tool_use"
                template where the model has one).

        Returns:
            The prompt text; encode it with `add_special_tokens=False`, as the template
            already wrote any BOS it wants.

        Raises:
            ChatTemplateError: the model has no template, or the template rejected the input.
        """
        template = self.chat_template_for(kwargs.get("tools"))
        if template is None:
            raise ChatTemplateError("this model has no chat template; pass a plain prompt")
        return template.render(messages, add_generation_prompt, **kwargs)

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_hf_dir(cls, directory: str | Path, eos_token_ids: Sequence[int] = ()) -> Tokenizer:
        """Load `tokenizer.json` (+ `tokenizer_config.json`, `chat_template.jinja`, and
        `special_tokens_map.json` for special tokens the config does not name).

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
        templates = _named_templates(cfg.get("chat_template"))
        if (d / "chat_template.jinja").is_file():
            templates["default"] = (d / "chat_template.jinja").read_text(encoding="utf-8")
        elif (d / "chat_template.json").is_file():
            source = _read_json(d / "chat_template.json").get("chat_template")
            templates.update(_named_templates(source))
        legacy = _read_json(d / "special_tokens_map.json")

        def special(name: str) -> str | None:
            return _token_text(cfg.get(name)) or _token_text(legacy.get(name))

        eos = special("eos_token")
        eos_ids = [backend.token_to_id(eos)] if eos and backend.token_to_id(eos) is not None else []
        return cls(
            backend,
            chat_template=templates,
            bos_token=special("bos_token"),
            eos_token=eos,
            eos_token_ids=[*eos_ids, *eos_token_ids],
            pad_token=special("pad_token"),
            unk_token=special("unk_token"),
        )

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> Tokenizer:
        """Build the tokenizer stored in a GGUF file's metadata.

        Raises:
            ModelLoadError: an unsupported tokenizer kind (see `gguf_tokenizer`), or no
                vocabulary.
        """
        meta = gguf.metadata
        backend = build_gguf_backend(meta, gguf.path.name)
        tokens: list[str] = meta["tokenizer.ggml.tokens"]

        def spelled(key: str) -> str | None:
            i = meta.get(f"tokenizer.ggml.{key}")
            return tokens[i] if i is not None and 0 <= i < len(tokens) else None

        return cls(
            backend,
            chat_template=_gguf_templates(meta),
            bos_token=spelled("bos_token_id"),
            eos_token=spelled("eos_token_id"),
            eos_token_ids=gguf_end_token_ids(meta),
            pad_token=spelled("padding_token_id"),
            unk_token=spelled("unknown_token_id"),
        )


def _named_templates(value: Any) -> dict[str, str]:
    """A config's chat template by name: a string is "default"; HF's list form is
    [{"name": "default", "template": ...}, {"name": "tool_use", ...}]."""
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, list):
        return {
            t["name"]: t["template"]
            for t in value
            if isinstance(t, dict) and isinstance(t.get("name"), str)
            and isinstance(t.get("template"), str)
        }
    return {}


def _gguf_templates(meta: Mapping[str, Any]) -> dict[str, str]:
    """A GGUF file's chat templates by name: `tokenizer.chat_template` is "default", and
    llama.cpp's converter stores each named one as `tokenizer.chat_template.<name>`
    (listed in `tokenizer.chat_templates`)."""
    prefix = "tokenizer.chat_template."
    named = {key[len(prefix):]: value for key, value in meta.items()
             if key.startswith(prefix) and isinstance(value, str)}
    default = meta.get("tokenizer.chat_template")
    return {**named, "default": default} if isinstance(default, str) else named


def _token_text(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string or {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _byte_unicode_map() -> dict[str, int]:
    """Byte-level BPE's alphabet: the character each byte is spelled as (GPT-2's table:
    printable Latin-1 bytes as themselves, the others shifted to U+0100 and up)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    shifted = [b for b in range(256) if b not in kept]
    spelled = {chr(b): b for b in kept}
    spelled.update((chr(256 + i), b) for i, b in enumerate(shifted))
    return spelled


_BYTE_OF = _byte_unicode_map()
# Byte-level spelling -> the Latin-1 character of each byte; a Latin-1 character that is no
# spelling -> one that Latin-1 cannot encode (so it is not read as a byte).
_LATIN1_OF = str.maketrans({**{chr(c): "\u0100" for c in range(256) if chr(c) not in _BYTE_OF},
                            **{ch: chr(b) for ch, b in _BYTE_OF.items()}})


def _decoder_steps(backend: Backend) -> list[dict[str, Any]]:
    """The steps of a backend's decoder, in order (one for a decoder that is no Sequence,
    none for no decoder)."""
    if not backend.decoder:
        return []
    state = json.loads(backend.decoder.__getstate__())
    return state.get("decoders", [state]) if state.get("type") == "Sequence" else [state]


def _byte_spelling(backend: Backend) -> tuple[bool, bool, bool, frozenset[int]]:
    """(byte-level, <0xNN> byte fallback, U+2581 spaces, added token ids) of a backend,
    from the decoder its tokenizer.json (or GGUF assembly) configured."""
    steps = _decoder_steps(backend)
    kinds = {step.get("type") for step in steps}
    metaspace = "Metaspace" in kinds or any(
        step.get("type") == "Replace" and step.get("pattern", {}).get("String") == "\u2581"
        for step in steps)
    added = frozenset(backend.get_added_tokens_decoder())
    return "ByteLevel" in kinds, "ByteFallback" in kinds, metaspace, added


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from e


__all__ = ["ChatTemplateError", "Tokenizer"]
