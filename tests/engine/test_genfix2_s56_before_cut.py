"""Session 56 lane genfix2 (findings/s56/diffgen.md LOW-3): finding the output ids before a
stop-string cut (`kvsaga.engine.context._before_cut`) decodes a window of the last ids per
candidate, not the whole output each time (it decoded up to 64 whole prefixes of the answer
per finished step: 70 ms on a 6,005-token answer). Its answers equal the whole decodes'."""

from __future__ import annotations

import random

import pytest

from kvsaga.engine import context
from kvsaga.engine.gguf_file import GGUFFile
from kvsaga.engine.tokenizer import Tokenizer

WORDS = ["alpha", " beta", " é", "日本", " 42", "\n", " x", "語", "!"]


@pytest.fixture(scope="module")
def tok(gguf_path) -> Tokenizer:
    return Tokenizer.from_gguf(GGUFFile(gguf_path))


class Counting:
    """A tokenizer that counts the ids it decodes."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        self.decoded = 0

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        self.decoded += len(ids)
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


def _answer(tok: Tokenizer, seed: int, words: int) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    text = "".join(rng.choice(WORDS) for _ in range(words))
    return (tok.encode("Q: go", add_special_tokens=False),
            tok.encode(text, add_special_tokens=False))


def test_a_long_answers_cut_decodes_a_window_not_every_prefix(tok):
    prompt, out = _answer(tok, 0, 1500)
    n = len(out)
    assert n > 1000
    full = tok.decode(out)
    for cut in (full[: len(full) - 3], "zzz" + full, full[: len(full) - 1] + "#"):
        counting = Counting(tok)
        context._before_cut(counting, prompt, out, cut)
        # A few whole decodes and at most 64 windows of 64 + 4 ids; was up to 64 whole ones.
        assert counting.decoded <= 4 * (n + 4) + 64 * 70, (repr(cut[-5:]), counting.decoded)


@pytest.mark.parametrize("seed", range(12))
def test_the_window_finds_what_whole_decodes_find(tok, seed):
    """Cuts anywhere in the last 70 characters, inside characters and tokens too."""
    prompt, out = _answer(tok, seed, 120 + 40 * seed)
    full = tok.decode(out)
    rng = random.Random(seed)
    left = list(prompt[-context._LEFT_CONTEXT:])
    pre = tok.decode(left)
    for _ in range(8):
        cut = full[: len(full) - rng.randrange(0, 70)]
        got = context._before_cut(tok, prompt, out, cut)
        assert got == context._before_cut_whole(tok, left, pre, out, cut), repr(cut[-8:])
        k, spelled, tail = got
        assert k and tok.decode(out[:k]) + tail == cut
