"""IncrementalDetokenizer: turn a growing list of token ids into text deltas for streaming.

Decoding token by token breaks multi-byte characters (an emoji spans several byte-level
tokens) and word-initial spaces (some decoders strip the first space of a string). So each
step decodes a short window that starts a few tokens back and emits only what that window adds,
and holds text back while it ends in an incomplete character (U+FFFD).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kvsaga.engine.tokenizer import Tokenizer


class IncrementalDetokenizer:
    """Streams the text of generated tokens.

    Args:
        tokenizer: the model's tokenizer.
        prompt_ids: the prompt, used as left context so that the first generated token decodes
            with its leading space as it would inside the full text.
        skip_special_tokens: drop special tokens from the text.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int] = (),
        skip_special_tokens: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = list(prompt_ids[-6:])
        self._prefix_offset = 0  # start of the window that gives left context
        self._read_offset = len(self.ids)  # tokens before this are already emitted
        self.text = ""  # everything emitted so far

    def add(self, token_ids: int | Iterable[int]) -> str:
        """Append generated token(s) and return the new text they complete (may be "").

        Args:
            token_ids: one id or several.

        Returns:
            The text delta; `self.text` holds the running total.
        """
        if isinstance(token_ids, int):
            self.ids.append(token_ids)
        else:
            self.ids.extend(token_ids)
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self._prefix_offset : self._read_offset], self.skip_special_tokens)
        full = decode(self.ids[self._prefix_offset :], self.skip_special_tokens)
        if full.endswith("\ufffd") or len(full) <= len(prefix):
            return ""  # an incomplete character, or a token that adds no text yet
        delta = full[len(prefix) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self.ids)
        self.text += delta
        return delta
