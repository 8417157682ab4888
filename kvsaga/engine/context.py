"""TokenContext: the exact token ids a conversation's cache holds, and the text they spell.

A multi-turn conversation is re-rendered as text at each step (chat template, earlier
answers pasted back). Re-tokenizing that text often splits the earlier answer differently
from the ids the model generated, and the prefix cache, which holds exactly the generated
ids, then misses everything after the first difference. So each step remembers its prompt
ids, output ids and their text; the next prompt, if its text starts with that text, reuses
those ids and tokenizes only the new suffix.

An answer cut inside a multi-byte character (by max_tokens) decodes to text ending in U+FFFD,
which the next prompt (holding the answer's text without the partial character) never
starts with; so the context also offers its ids up to the last whole character.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kvsaga.engine.tokenizer import Tokenizer


@dataclass
class TokenContext:
    """One step's prompt + output ids and their text (special tokens spelled out).

    Attributes:
        token_ids: prompt ids + output ids.
        text: the text `token_ids` decode to.
        prompt_len / prompt_text_len: where the prompt ends in each.
        whole_len / whole_text_len: where the output's last whole character ends in each,
            when the output ends inside one (else 0).
    """

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    prompt_len: int = 0
    prompt_text_len: int = 0
    whole_len: int = 0
    whole_text_len: int = 0

    @classmethod
    def of_step(
        cls,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int],
        prompt_text: str | None,
        out_ids: Sequence[int],
    ) -> TokenContext:
        """The context after a finished step.

        Args:
            prompt_ids: the step's prompt.
            prompt_text: the text it was encoded from (None: decode `prompt_ids`).
            out_ids: the generated ids (EOS included: the cache holds it too).
        """
        if prompt_text is None:
            prompt_text = tokenizer.decode(prompt_ids, skip_special_tokens=False)
        out_text = tokenizer.decode(out_ids, skip_special_tokens=False)
        whole, whole_text = _whole_characters(tokenizer, out_ids, out_text)
        return cls(
            token_ids=list(prompt_ids) + list(out_ids),
            text=prompt_text + out_text,
            prompt_len=len(prompt_ids),
            prompt_text_len=len(prompt_text),
            whole_len=len(prompt_ids) + whole if whole else 0,
            whole_text_len=len(prompt_text) + len(whole_text) if whole else 0,
        )

    def known_prefix(self, text: str) -> tuple[int, list[int]]:
        """The longest part of this context that `text` starts with.

        Returns:
            (characters of `text` covered, their exact ids); (0, []) when neither the whole
            context nor its prompt is a prefix of `text`.
        """
        candidates = (
            (self.text, self.token_ids),
            (self.text[: self.whole_text_len], self.token_ids[: self.whole_len]),
            (self.text[: self.prompt_text_len], self.token_ids[: self.prompt_len]),
        )
        for known_text, known_ids in candidates:
            if known_text and text.startswith(known_text):
                return len(known_text), known_ids
        return 0, []


# A UTF-8 character is at most 4 bytes, so one cut inside it leaves at most 3 of its bytes,
# in as many tokens.
_MAX_PARTIAL_TOKENS = 3


def _whole_characters(
    tokenizer: Tokenizer, out_ids: Sequence[int], out_text: str
) -> tuple[int, str]:
    """(k, text) for the longest `out_ids[:k]` whose text does not end inside a character,
    when `out_text` does (ends in U+FFFD) and that text is a prefix of it; else (0, "")."""
    if not out_text.endswith("\ufffd"):
        return 0, ""
    for k in range(len(out_ids) - 1, max(len(out_ids) - _MAX_PARTIAL_TOKENS, 0) - 1, -1):
        text = tokenizer.decode(out_ids[:k], skip_special_tokens=False)
        if not text.endswith("\ufffd"):
            return (k, text) if k and out_text.startswith(text) else (0, "")
    return 0, ""


def encode_continuing(
    tokenizer: Tokenizer,
    contexts: Iterable[TokenContext | None],
    text: str,
    add_special_tokens: bool,
    release_gil: bool = False,
) -> list[int]:
    """Tokenize `text`, reusing the exact ids of the longest known context it extends.

    Args:
        contexts: earlier steps' contexts (None entries are skipped).
        text: the whole prompt text.
        add_special_tokens: add BOS etc. when `text` extends no context.
        release_gil: tokenize through `encode_batch`, which lets other Python threads run
            meanwhile (`tokenizers`' single `encode` holds the GIL throughout): for a
            caller on a worker thread beside an event loop.
    Returns:
        The prompt's token ids.
    """
    def encode(part: str, special: bool) -> list[int]:
        if release_gil:
            return tokenizer.encode_batch([part], add_special_tokens=special)[0]
        return tokenizer.encode(part, add_special_tokens=special)

    covered, ids = 0, []
    for ctx in contexts:
        if ctx is not None:
            n, known = ctx.known_prefix(text)
            if n > covered:
                covered, ids = n, known
    if not covered:
        return encode(text, add_special_tokens)
    rest = text[covered:]
    return ids + (encode(rest, False) if rest else [])
