"""IncrementalDetokenizer: turn a growing list of token ids into text deltas for streaming.

Decoding token by token breaks multi-byte characters (an emoji spans several byte-level
tokens) and word-initial spaces (some decoders strip the first space of a string). The
`tokenizers` library's `DecodeStream` handles both: it decodes a short window that starts a
few tokens back, emits only what the new token adds, and holds text back while it ends in an
incomplete character. Seeding it with the end of the prompt gives the first generated token
its left context, so it decodes with its leading space as inside the full text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers.decoders import DecodeStream

from kvsaga.engine.tokenizer import Tokenizer

# Prompt tokens of left context: enough for any decoder's look-back (a space marker, the
# bytes of one character), few enough that seeding costs nothing.
_CONTEXT_TOKENS = 6


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
        self._stream = DecodeStream(
            list(prompt_ids[-_CONTEXT_TOKENS:]), skip_special_tokens=skip_special_tokens
        )
        self.text = ""  # everything emitted so far

    def add(self, token_ids: int | Iterable[int]) -> str:
        """Append generated token(s) and return the new text they complete (may be "").

        Args:
            token_ids: one id or several.

        Returns:
            The text delta; `self.text` holds the running total.
        """
        ids = (token_ids,) if isinstance(token_ids, int) else token_ids
        step, backend = self._stream.step, self.tokenizer.backend
        delta = "".join(chunk for t in ids if (chunk := step(backend, t)) is not None)
        self.text += delta
        return delta
