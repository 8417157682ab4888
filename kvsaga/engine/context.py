"""TokenContext: the exact token ids a conversation's cache holds, and the text they spell.

A multi-turn conversation is re-rendered as text at each step (chat template, earlier
answers pasted back). Re-tokenizing that text often splits the earlier answer differently
from the ids the model generated, and the prefix cache, which holds exactly the generated
ids, then misses everything after the first difference. So each step remembers its prompt
ids, output ids and their text; the next prompt, if its text starts with that text, reuses
those ids and tokenizes only the new suffix.

The caller may hold less text than the output ids spell: an answer cut inside a multi-byte
character (by max_tokens) decodes to text ending in U+FFFD, which the returned text leaves
out; a stop string is cut from the returned text with what follows it, though the tokens
that hold it were generated; and a token that ended the step by its id (EOS, a stop token)
is not in the text. A next prompt built from the returned text never starts with the whole
context's text, so the context also offers its ids up to the last one whose text the
returned text holds (`held_text`: what the caller holds, to continue raw text from).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvsaga.engine.tokenizer import Tokenizer

if TYPE_CHECKING:
    from kvsaga.engine.request import RequestOutput
    from kvsaga.engine.sampling import SamplingParams


@dataclass
class TokenContext:
    """One step's prompt + output ids and their text (special tokens spelled out).

    Attributes:
        token_ids: prompt ids + output ids.
        text: the text `token_ids` decode to.
        prompt_len / prompt_text_len: where the prompt ends in each.
        kept_len / kept_text_len: where the output ids whose text the returned text holds
            end in each, when the returned text holds less than all of them (else 0).
        tail: the returned text past those ids' (a stop string cut inside a token leaves
            the text before it).
    """

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    prompt_len: int = 0
    prompt_text_len: int = 0
    kept_len: int = 0
    kept_text_len: int = 0
    tail: str = ""

    @classmethod
    def of_step(
        cls,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int],
        prompt_text: str | None,
        out_ids: Sequence[int],
        *,
        drop_last: bool = False,
        cut_text: str | None = None,
    ) -> TokenContext:
        """The context after a finished step.

        Args:
            prompt_ids: the step's prompt.
            prompt_text: the text it was encoded from (None: decode `prompt_ids`).
            out_ids: the generated ids (EOS included: the cache holds it too).
            drop_last: the last output id ended the step by its id (EOS, a stop token): the
                returned text holds none of it.
            cut_text: the text the step returned, when a stop string cut it.
        """
        if prompt_text is None:
            prompt_text = tokenizer.decode(prompt_ids, skip_special_tokens=False)
        out_text = tokenizer.decode(out_ids, skip_special_tokens=False)
        tail = ""
        if cut_text is not None:
            kept, kept_text, tail = _before_cut(tokenizer, prompt_ids, out_ids, cut_text)
        elif drop_last and out_ids:
            head = out_ids[:-1]
            head_text = tokenizer.decode(head, skip_special_tokens=False)
            kept, kept_text = _whole_characters(tokenizer, head, head_text)
            if kept is None:
                kept, kept_text = len(head), head_text
        else:
            kept, kept_text = _whole_characters(tokenizer, out_ids, out_text)
        return cls(
            token_ids=list(prompt_ids) + list(out_ids),
            text=prompt_text + out_text,
            prompt_len=len(prompt_ids),
            prompt_text_len=len(prompt_text),
            kept_len=len(prompt_ids) + kept if kept is not None else 0,
            kept_text_len=len(prompt_text) + len(kept_text) if kept is not None else 0,
            tail=tail,
        )

    @classmethod
    def after(
        cls,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int],
        prompt_text: str | None,
        params: SamplingParams,
        out: RequestOutput,
        *,
        keep_eos: bool,
    ) -> TokenContext:
        """The context a finished step leaves (`of_step`), told what its returned text
        leaves out: the last output id, if it ended the step by its id (EOS unless
        `ignore_eos`, a stop token: as in vLLM, not in the text), or what a stop string cut.

        Args:
            params: the step's sampling parameters (its stop token ids, `ignore_eos`,
                `include_stop_str_in_output`).
            out: the step's finished output.
            keep_eos: an EOS that ended the step stays (a chat step's: it closes the
                assistant's turn, as the chat template renders the answer the caller's
                messages hold).
        """
        ids = out.token_ids
        last = ids[-1] if ids else None
        eos = tokenizer.eos_token_ids
        # (A stop token kept in the text, `include_stop_str_in_output`, is cut as text.)
        by_id = out.finish_reason == "stop" and last is not None and (
            (last in params.stop_token_ids and (not params.include_stop_str_in_output
                                                 or last in tokenizer.special_ids()))
            or (not params.ignore_eos and last in eos))
        cut = out.text if out.finish_reason == "stop" and not by_id else None
        if by_id and keep_eos and last in eos:
            by_id = False  # (kept: the turn's end)
        return cls.of_step(tokenizer, prompt_ids, prompt_text, ids, drop_last=by_id,
                           cut_text=cut)

    @property
    def held_text(self) -> str:
        """The text the caller holds: the prompt's, then the returned text (special tokens
        the kept output ids hold spelled out)."""
        if not self.kept_len:
            return self.text
        return self.text[: self.kept_text_len] + self.tail

    def known_prefix(self, text: str) -> tuple[int, list[int]]:
        """The longest part of this context that `text` starts with.

        Returns:
            (characters of `text` covered, their exact ids); (0, []) when neither the whole
            context nor its prompt is a prefix of `text`.
        """
        candidates = (
            (self.text, self.token_ids),
            (self.text[: self.kept_text_len], self.token_ids[: self.kept_len]),
            (self.text[: self.prompt_text_len], self.token_ids[: self.prompt_len]),
        )
        for known_text, known_ids in candidates:
            if known_text and text.startswith(known_text):
                return len(known_text), known_ids
        return 0, []


# A UTF-8 character is at most 4 bytes, so one cut inside it leaves at most 3 of its bytes,
# in as many tokens.
_MAX_PARTIAL_TOKENS = 3
# The output ids `_whole_characters` looks back over: the returned text leaves out every
# U+FFFD it ends in (the detokenizer holds them back), an incomplete character's or a run
# of invalid bytes' (a model emitting stray continuation bytes). Past that many, the held
# text keeps them.
_MAX_HELD_BACK_TOKENS = 64


def _whole_characters(
    tokenizer: Tokenizer, out_ids: Sequence[int], out_text: str
) -> tuple[int | None, str]:
    """(k, text) for the longest `out_ids[:k]` whose text does not end in U+FFFD (inside a
    character, or invalid bytes), when `out_text` does and that text is a prefix of it;
    else (None, "")."""
    if not out_text.endswith("\ufffd"):
        return None, ""
    for k in range(len(out_ids) - 1, max(len(out_ids) - _MAX_HELD_BACK_TOKENS, 0) - 1, -1):
        text = tokenizer.decode(out_ids[:k], skip_special_tokens=False)
        if not text.endswith("\ufffd"):
            return (k, text) if k and out_text.startswith(text) else (None, "")
    return None, ""


# The output ids `_before_cut` looks back over for the last one before a stop string: the
# stop string's tokens and the one completing it (the text past the cut). Past that, the
# returned text is tokenized again (from the prompt's ids on).
_MAX_CUT_TOKENS = 64
# Prompt ids decoded before the output's (its left context: a decoder may strip the first
# space of a string).
_LEFT_CONTEXT = 4


def _before_cut(
    tokenizer: Tokenizer, prompt_ids: Sequence[int], out_ids: Sequence[int], cut_text: str
) -> tuple[int, str, str]:
    """(k, text, tail): the longest `out_ids[:k]` whose text (after the prompt's, special
    tokens skipped, as the returned text reads) is a prefix of `cut_text` and ends in a
    whole character; their text with special tokens spelled out; the rest of `cut_text`.
    (0, "", cut_text) when none within `_MAX_CUT_TOKENS` of the end is.

    The candidates' texts are decoded as the text before the last `_MAX_CUT_TOKENS` ids
    (decoded once) plus a window of those ids after `_LEFT_CONTEXT` ids of left context,
    not each as the whole output: that was up to 64 decodes of a long answer per step. The
    one found is checked against its whole decode; a decoder for which the window's text
    differs (a cleanup across the window's start) falls back to whole decodes."""
    left = list(prompt_ids[-_LEFT_CONTEXT:])
    pre = tokenizer.decode(left, skip_special_tokens=True)
    n = len(out_ids)
    lo = max(n - _MAX_CUT_TOKENS, 0)  # candidates: k in (lo, n]
    # The window starts at `start`, where the text before it ends in a whole character
    # (a character's bytes split across the start would decode apart).
    start, head = lo, ""
    while start:
        whole = tokenizer.decode(left + list(out_ids[:start]), skip_special_tokens=True)
        if not whole.endswith("\ufffd"):
            break
        start -= 1
        if start < lo - _MAX_PARTIAL_TOKENS:
            return _before_cut_whole(tokenizer, left, pre, out_ids, cut_text)
    if start:
        if not whole.startswith(pre):
            return _before_cut_whole(tokenizer, left, pre, out_ids, cut_text)
        head = whole[len(pre):]
    if not cut_text.startswith(head):
        return 0, "", cut_text
    ctx = (left + list(out_ids[:start]))[-_LEFT_CONTEXT:]
    ctx_text = tokenizer.decode(ctx, skip_special_tokens=True)
    for k in range(n, lo, -1):
        text = tokenizer.decode(ctx + list(out_ids[start:k]), skip_special_tokens=True)
        shown = head + text[len(ctx_text):]
        if (text.startswith(ctx_text) and cut_text.startswith(shown)
                and not shown.endswith("\ufffd")):
            whole = tokenizer.decode(left + list(out_ids[:k]), skip_special_tokens=True)
            if whole != pre + shown:
                return _before_cut_whole(tokenizer, left, pre, out_ids, cut_text)
            spelled = tokenizer.decode(out_ids[:k], skip_special_tokens=False)
            return k, spelled, cut_text[len(shown):]
    return 0, "", cut_text


def _before_cut_whole(
    tokenizer: Tokenizer, left: list[int], pre: str, out_ids: Sequence[int], cut_text: str
) -> tuple[int, str, str]:
    """`_before_cut` decoding each candidate whole (`left`: the prompt's last ids, `pre`
    their text)."""
    n = len(out_ids)
    for k in range(n, max(n - _MAX_CUT_TOKENS, 0), -1):
        text = tokenizer.decode(left + list(out_ids[:k]), skip_special_tokens=True)
        shown = text[len(pre):]
        if (text.startswith(pre) and cut_text.startswith(shown)
                and not shown.endswith("\ufffd")):
            spelled = tokenizer.decode(out_ids[:k], skip_special_tokens=False)
            return k, spelled, cut_text[len(shown):]
    return 0, "", cut_text


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
