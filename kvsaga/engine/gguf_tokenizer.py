"""Building a `tokenizers` pipeline from the tokenizer a GGUF file describes.

A GGUF file has no `tokenizer.json`; it stores the pieces under llama.cpp's key names:
vocabulary, merges or scores, token types, the pre-tokenizer's name and flags. Two kinds are
supported, which cover Llama-class models:

- "gpt2": byte-level BPE (SmolLM, Llama 3, Qwen2, Mistral Nemo...), with the split regex that
  `tokenizer.ggml.pre` names; a name kvsaga does not know is refused, since another split
  would tokenize text differently from the model's training;
- "llama": SentencePiece BPE with byte fallback (Llama 2, TinyLlama, Mistral 7B...); merges come
  from the file or, as SentencePiece scores imply, are derived from the vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

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
# Mistral's "tekken" (Mistral Nemo): a word breaks where lower case turns upper ("Java" +
# "Script", " i" + "Phone"), each digit stands alone, and there is no contraction rule.
_CASED_UPPER = r"\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}"  # (uncased letters and marks count as both)
_CASED_LOWER = r"\p{Ll}\p{Lm}\p{Lo}\p{M}"
_WORD_LEAD = r"[^\r\n\p{L}\p{N}]?"  # one space or symbol joins the word after it
_TEKKEN_SPLIT = "|".join((
    f"{_WORD_LEAD}[{_CASED_UPPER}]*[{_CASED_LOWER}]+",  # "word", "Word"; "HTTPServer" -> "Server"
    f"{_WORD_LEAD}[{_CASED_UPPER}]+[{_CASED_LOWER}]*",  # "HTTP" (before "Server"), "ID"
    r"\p{N}",
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*",  # symbols, with the line breaks or slashes after them
    r"\s*[\r\n]+",
    r"\s+(?!\S)",
    r"\s+",
))
_SPLIT_REGEX = {
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx", "falcon3"), _LLAMA3_SPLIT
    ),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), _QWEN2_SPLIT),
    "tekken": _TEKKEN_SPLIT,
}
# GPT-2's regex after splitting off every digit (llama.cpp's "\p{N}" + gpt2 regex pair).
_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
_GPT2 = ("gpt2", "default", "gpt-2", "olmo", "jais", "stablelm2", "poro-chat", "viking", "bloom")

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types
_SPACE = "\u2581"  # SentencePiece's visible space


def build_gguf_backend(meta: Mapping[str, Any], source: str = "GGUF file") -> Backend:
    """The tokenizer pipeline described by GGUF metadata, special tokens and BOS/EOS
    post-processing included.

    Args:
        meta: decoded GGUF metadata (`GGUFFile.metadata`).
        source: a name for error messages.

    Raises:
        ModelLoadError: an unsupported tokenizer kind, or no vocabulary.
    """
    kind = meta.get("tokenizer.ggml.model")
    tokens: list[str] = meta.get("tokenizer.ggml.tokens") or []
    token_types: list[int] = meta.get("tokenizer.ggml.token_type") or []
    merges: list[str] = meta.get("tokenizer.ggml.merges") or []
    if not tokens:
        raise ModelLoadError(f"{source}: no tokenizer vocabulary in the file")
    if kind == "gpt2":
        if not merges:
            raise ModelLoadError(f"{source}: a byte-level BPE tokenizer without merges")
        backend = _byte_level_bpe(
            tokens, merges, token_types, _pre_name(meta.get("tokenizer.ggml.pre"), source),
            source,
        )
        add_bos_default = False
    elif kind == "llama":
        scores: list[float] = meta.get("tokenizer.ggml.scores") or []
        unk = meta.get("tokenizer.ggml.unknown_token_id")
        backend = _sentencepiece_bpe(
            tokens,
            scores,
            merges,
            token_types,
            add_space_prefix=meta.get("tokenizer.ggml.add_space_prefix", True),
            unk_token=tokens[unk] if unk is not None and 0 <= unk < len(tokens) else None,
            source=source,
        )
        add_bos_default = True  # llama.cpp's default for SentencePiece vocabularies
    else:
        raise ModelLoadError(
            f"{source}: GGUF tokenizer model {kind!r} is not supported (supported: 'gpt2' "
            "byte-level BPE, 'llama' SentencePiece BPE); use the model's HF directory instead"
        )

    def spelled(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    bos = (
        spelled("bos_token_id")
        if meta.get("tokenizer.ggml.add_bos_token", add_bos_default)
        else None
    )
    eos = spelled("eos_token_id") if meta.get("tokenizer.ggml.add_eos_token", False) else None
    if bos or eos:
        backend.post_processor = _template_processor(backend, bos, eos)
    return backend


def _byte_level_bpe(
    tokens: list[str], merges: list[str], token_types: list[int], pre: str | None,
    source: str = "GGUF file",
) -> Backend:
    """A byte-level BPE pipeline (GPT-2 style) from GGUF vocabulary pieces."""
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    byte_spelling = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        # A token outside the byte alphabet is stored as raw text: spell it in bytes.
        key = tok if set(tok) <= alphabet else "".join(byte_spelling[b] for b in tok.encode())
        vocab.setdefault(key, i)
    pairs = _merge_pairs(merges, vocab, source)
    backend = _bpe(source, vocab, pairs, fuse_unk=False, byte_fallback=False)
    backend.pre_tokenizer = _pre_tokenizer(pre)
    backend.decoder = decoders.ByteLevel()
    # A control token outside the byte alphabet cannot be a real vocabulary entry, so it is
    # left alone (as llama.cpp and HF do).
    _add_marked_tokens(backend, tokens, token_types, vocab, lambda tok: set(tok) <= alphabet)
    return backend


def _add_marked_tokens(
    backend: Backend,
    tokens: list[str],
    token_types: list[int],
    vocab: Mapping[str, int],
    spellable: Any,
) -> None:
    """Control tokens (<|im_start|>, <s>, ...) stay whole and are special; user-defined ones
    stay whole but are ordinary text."""
    control = [
        AddedToken(tok, normalized=False, special=True)
        for tok, kind in zip(tokens, token_types, strict=False)
        if kind == _CONTROL and spellable(tok)
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


def _sentencepiece_bpe(
    tokens: list[str],
    scores: list[float],
    merges: list[str],
    token_types: list[int],
    add_space_prefix: bool,
    unk_token: str | None,
    source: str = "GGUF file",
) -> Backend:
    """A SentencePiece-style BPE pipeline: spaces spelled as U+2581, unknown bytes as
    `<0xNN>` tokens."""
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)
    if merges:
        pairs = _merge_pairs(merges, vocab, source)
    else:
        pairs = _merges_from_scores(tokens, scores, vocab)
    backend = _bpe(source, vocab, pairs, unk_token=unk_token, fuse_unk=True, byte_fallback=True)
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=_SPACE, prepend_scheme="first" if add_space_prefix else "never", split=False
    )
    steps = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(steps)
    _add_marked_tokens(backend, tokens, token_types, vocab, lambda tok: True)
    return backend


def _merge_pairs(
    merges: list[str], vocab: Mapping[str, int], source: str
) -> list[tuple[str, str]]:
    """`tokenizer.ggml.merges` ("left right") as pairs, checked against the vocabulary:
    `tokenizers` fails on a bad one with its own error, or with a Rust panic (a
    BaseException that no `except Exception` catches) where the merged token is missing,
    as it is in a corrupt file. ModelLoadError names the first bad merge."""
    try:
        pairs = [(left, right) for left, right in (m.split(" ", 1) for m in merges)]
    except (AttributeError, ValueError):  # (not a str; no space)
        pairs = []
    # (the merged token's lookup is the one check `tokenizers` panics on; it reports the
    # others as errors, which `_bpe` turns into ModelLoadError, less clearly)
    if len(pairs) == len(merges) and all(left + right in vocab for left, right in pairs):
        return pairs
    for i, merge in enumerate(merges):  # (the first bad one, to name it)
        left, space, right = merge.partition(" ") if isinstance(merge, str) else ("", "", "")
        problem = None
        if not (space and left and right):
            problem = "is not two tokens joined by a space"
        elif left not in vocab or right not in vocab:
            problem = f"merges {left if left not in vocab else right!r}, which is not a token"
        elif left + right not in vocab:
            problem = f"makes {left + right!r}, which is not a token"
        if problem:
            raise ModelLoadError(
                f"{source}: tokenizer.ggml.merges[{i}] {merge!r} {problem}; the file's "
                "tokenizer is corrupt"
            )
    return pairs


def _bpe(source: str, vocab: dict[str, int], pairs: list[tuple[str, str]],
         **options: Any) -> Backend:
    """A `tokenizers` BPE pipeline, its own errors (on what `_merge_pairs` does not check)
    as ModelLoadError."""
    try:
        return Backend(models.BPE(vocab, pairs, **options))
    except Exception as e:
        raise ModelLoadError(f"{source}: cannot build the file's tokenizer: {e}") from e


def _merges_from_scores(
    tokens: list[str], scores: list[float], vocab: Mapping[str, int]
) -> list[tuple[str, str]]:
    """Merges that a SentencePiece BPE vocabulary implies: every split of a token into two
    vocabulary pieces, the token's score ranking it (higher merges first); ties go to the
    shorter left piece, then to the earlier pieces."""
    if len(scores) != len(tokens):
        raise ModelLoadError(
            f"SentencePiece vocabulary has {len(tokens)} tokens but {len(scores)} scores"
        )
    candidates: list[tuple[str, str, float]] = []
    for token, score in dict(zip(tokens, scores, strict=True)).items():
        splits = [
            (token[:k], token[k:], score)
            for k in range(1, len(token))
            if token[:k] in vocab and token[k:] in vocab
        ]
        splits.sort(key=lambda s: (vocab[s[0]], vocab[s[1]]))
        candidates.extend(splits)
    candidates.sort(key=lambda s: (s[2], len(s[0]), len(s[1])), reverse=True)
    return [(left, right) for left, right, _ in candidates]


def _pre_name(pre: Any, source: str) -> str | None:
    """`tokenizer.ggml.pre`, refused unless kvsaga knows its split (files without the key
    predate it and use GPT-2's, as llama.cpp assumes)."""
    if pre is None or pre in _SPLIT_REGEX or pre in _DIGITS_THEN_GPT2 or pre in _GPT2:
        return pre
    known = sorted({*_SPLIT_REGEX, *_DIGITS_THEN_GPT2, *_GPT2})
    raise ModelLoadError(
        f"{source}: GGUF pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not supported, and "
        f"another split would tokenize text differently; supported: {known}. Use the "
        "model's HF directory instead"
    )


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
    return byte_level  # GPT-2's (`_pre_name` refused the names it does not cover)


def _template_processor(backend: Backend, bos: str | None, eos: str | None) -> Any:
    """Post-processor adding BOS before and/or EOS after each sequence."""
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
