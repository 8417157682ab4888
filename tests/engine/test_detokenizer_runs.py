"""The incremental detokenizer over long runs of byte tokens: the tokens it decodes grow
linearly with the output, and its text is still the output's decode after every token.

Before the fix each token of a run that did not yet end in a whole character re-decoded
the run (byte-level BPE, inside `DecodeStream`), and with a byte-fallback vocabulary each
byte token after another one re-decoded the whole output (`_resync`): 301 generated tokens
of "東京" spelled in bytes decoded 46,046 tokens, 601 decoded 182,096, 1201 decoded 724,196.
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsaga.engine.detokenizer import IncrementalDetokenizer
from kvsaga.engine.gguf_file import GGUFFile
from kvsaga.engine.tokenizer import Tokenizer

from .helpers import write_byte_tokenizer, write_sentencepiece_gguf

FFFD = "\ufffd"


class _Counting:
    """A tokenizer backend that counts the tokens it decodes. (`DecodeStream`, which the
    detokenizer used before, cannot take it: it raised, and the detokenizer re-decoded the
    whole output at every token, as it did at every byte of a byte-fallback run anyway.)"""

    def __init__(self, backend) -> None:
        self._backend = backend
        self.decoded = 0

    def decode(self, ids, skip_special_tokens=True):
        self.decoded += len(ids)
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def __getattr__(self, name):
        return getattr(self._backend, name)


@pytest.fixture(scope="module")
def spm(tmp_path_factory) -> Tokenizer:
    """A SentencePiece vocabulary with byte fallback, trained on ASCII text only: other
    characters are byte tokens."""
    corpus = ["We went to the fox and had sushi", "the quick brown fox jumps over the dog"]
    path = write_sentencepiece_gguf(tmp_path_factory.mktemp("spm") / "spm.gguf", corpus)
    return Tokenizer.from_gguf(GGUFFile(path))


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory) -> Tokenizer:
    """A byte-level BPE vocabulary of single bytes (with <s> and </s>)."""
    d = tmp_path_factory.mktemp("bytes")
    write_byte_tokenizer(d)
    return Tokenizer.from_hf_dir(d)


def _byte_ids(tok: Tokenizer, data: bytes) -> list[int]:
    """The tokens of `data`, one byte each."""
    if tok.byte_fallback_ids():
        return [tok.token_to_id(f"<0x{b:02X}>") for b in data]
    by_byte = {tok.token_bytes(i): i for i in range(tok.vocab_size)}
    return [by_byte[bytes([b])] for b in data]


def _decoded(tok: Tokenizer, prompt: list[int], gen: list[int]) -> tuple[int, str]:
    """The tokens decoded to stream `gen` after `prompt`, and the text at the end."""
    counted = copy.copy(tok)
    counted.backend = _Counting(tok.backend)
    detok = IncrementalDetokenizer(counted, prompt)
    for t in gen:
        detok.add(t)
    return counted.backend.decoded, detok.text


def _reference(tok: Tokenizer, prompt: list[int], gen: list[int]) -> str:
    """The text of `gen` after `prompt` (`decode(gen)` where it rewrites the prompt's),
    less the U+FFFD it ends in."""
    pre, full = tok.decode(prompt), tok.decode(prompt + gen)
    out = full[len(pre):] if full.startswith(pre) else tok.decode(gen)
    return out.rstrip(FFFD)


@pytest.mark.parametrize("which", ["spm", "byte_level"])
@pytest.mark.parametrize("data", [
    "東京".encode() * 200,  # whole characters
    b"\x80" * 600,  # stray continuation bytes
    b"\xe6" * 600,  # lead bytes, each cut short by the next
    ("東京".encode() * 100)[:-1] + b" ok",  # one cut character makes a byte-fallback run invalid
], ids=["whole", "stray", "leads", "cut"])
def test_a_long_run_of_bytes_decodes_linearly(which, data, request):
    tok = request.getfixturevalue(which)
    prompt = tok.encode("We went to", add_special_tokens=False)
    gen = _byte_ids(tok, data) + tok.encode(" the dog", add_special_tokens=False)
    decoded, text = _decoded(tok, prompt, gen)
    assert decoded <= 40 * len(gen), decoded
    assert text == _reference(tok, prompt, gen)


@pytest.mark.parametrize("which", ["spm", "byte_level"])
def test_decoded_tokens_grow_linearly_with_the_run(which, request):
    tok = request.getfixturevalue(which)
    prompt = tok.encode("the fox", add_special_tokens=False)
    counts = [_decoded(tok, prompt, _byte_ids(tok, "東".encode() * n))[0] for n in (100, 400)]
    assert counts[1] <= 4.5 * counts[0], counts


_PIECES = ["the", " dog", " fox", "é", "東", "😀", "\x1a"]
_BYTES = [0x1A, 0x41, 0x80, 0x83, 0xBA, 0xBF, 0xC3, 0xA9, 0xE6, 0x9D, 0xB1, 0xF0, 0x9F, 0xED,
          0xA0, 0xC0, 0xF5]


@pytest.mark.parametrize("which", ["spm", "byte_level"])
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_text_is_the_decode_after_every_token(which, data, request):
    """Random runs of bytes (whole characters, cut ones, stray and invalid bytes), words and
    special tokens, after a prompt that may end in a character's bytes: after every token
    `text` is the decode of the output so far less the U+FFFD it ends in."""
    tok = request.getfixturevalue(which)
    specials = [tok.token_to_id(s) for s in ("<s>", "</s>")]
    pool = st.one_of(
        st.lists(st.sampled_from(_BYTES), min_size=1, max_size=12).map(
            lambda b: _byte_ids(tok, bytes(b))),
        st.sampled_from(_PIECES).map(lambda p: tok.encode(p, add_special_tokens=False)),
        st.sampled_from(specials).map(lambda i: [i]),
    )
    gen = [t for part in data.draw(st.lists(pool, max_size=12)) for t in part]
    prompt = tok.encode(data.draw(st.sampled_from(["We went to", "We went to 東", "é"])),
                        add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, prompt)
    for k, t in enumerate(gen, 1):
        detok.add(t)
        assert detok.text == _reference(tok, prompt, gen[:k]), gen[:k]


def test_a_decoder_that_rewrites_settled_text_decodes_everything():
    """A decoder that replaces text across tokens ("a" then "b" decode as "X") rewrites text
    settled before the window; the detokenizer then decodes all the output at each token."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models

    backend = Backend(models.WordLevel({"a": 0, "b": 1, "c": 2}, unk_token="c"))
    backend.decoder = decoders.Sequence([decoders.Fuse(), decoders.Replace("ab", "X")])
    tok = Tokenizer(backend)
    detok = IncrementalDetokenizer(tok, [2])
    texts = [(detok.add(t), detok.text) for t in (0, 2, 0, 1, 2)]
    assert texts == [("a", "a"), ("c", "ac"), ("a", "aca"), ("", "acX"), ("c", "acXc")]


def test_bytes_after_special_tokens_join_the_run_that_ends_the_prompt(spm):
    """The prompt's context ends in the bytes of "東"; skipped special tokens add nothing,
    so a generated byte joins that run. Trimming the anchor kept the run's last two bytes
    alone, which decode as U+FFFD with the new byte: the text lost "\\x1a"."""
    prompt = spm.encode("We went to 東", add_special_tokens=False)
    for specials in (1, 5):
        gen = [spm.bos_token_id] * specials + [spm.token_to_id("<0x1A>")]
        detok = IncrementalDetokenizer(spm, prompt)
        detok.add(gen)
        assert detok.text == _reference(spm, prompt, gen) == "\x1a"


@pytest.mark.parametrize("which", ["spm", "byte_level"])
@pytest.mark.parametrize("pending", ["\xe6", "\ufffd"], ids=["lead", "fffd"])
def test_skipped_special_tokens_cost_no_decode(which, pending, request):
    """Text that ends in U+FFFD (a cut character, or a literal one) keeps the window open;
    each skipped special token after it joined the window, which never cut before one, so
    every one re-decoded all of it: 1000 of them after a lead byte decoded ~500,000 tokens
    (byte-level). The decode drops them before its decoder runs, so they change nothing."""
    tok = request.getfixturevalue(which)
    prompt = tok.encode("We went to", add_special_tokens=False)
    lead = _byte_ids(tok, pending.encode("latin-1" if pending == "\xe6" else "utf-8"))
    dog = tok.encode(" the dog", add_special_tokens=False)
    plain = _decoded(tok, prompt, lead + dog)
    gen = lead + [tok.bos_token_id] * 1000 + dog
    assert _decoded(tok, prompt, gen) == plain
    assert plain[1] == _reference(tok, prompt, gen)


def test_plain_text_takes_the_fast_path_and_decodes_nothing(byte_level):
    """With a ByteLevel decoder and nothing pending, a token of whole characters adds its
    own text: streaming ASCII decodes no token. Text that is pending (a cut character, a
    special token in the way) goes the exact way and comes back to the fast path."""
    tok = byte_level
    assert len(tok.whole_pieces()) == 128  # the single ASCII bytes; <s> and </s> are added
    prompt = tok.encode("We went to", add_special_tokens=False)
    counted = copy.copy(tok)
    counted.backend = _Counting(tok.backend)
    detok = IncrementalDetokenizer(counted, prompt)
    counted.backend.decoded = 0
    gen = tok.encode(" the quick brown fox jumps over the lazy dog", add_special_tokens=False)
    for k, t in enumerate(gen, 1):
        detok.add(t)
        assert detok.text == _reference(tok, prompt, gen[:k])
    assert counted.backend.decoded == 0
    more = _byte_ids(tok, "東".encode()) + [tok.eos_token_id] + gen
    for k in range(1, len(more) + 1):
        detok.add(more[k - 1])
        assert detok.text == _reference(tok, prompt, gen + more[:k])


def test_spm_has_no_fast_path(spm):
    assert spm.whole_pieces() == {}


def test_a_decoder_that_rewrites_characters_after_byte_fallback_decodes_each(spm):
    """ByteFallback then Metaspace turns the bytes of U+2581 into a space; a run's
    characters after its first were taken from its bytes, so the text showed "▁"."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders

    backend = Backend.from_str(spm.backend.to_str())
    backend.decoder = decoders.Sequence([
        decoders.ByteFallback(), decoders.Metaspace(replacement="\u2581", prepend_scheme="first")])
    tok = Tokenizer(backend)
    assert not tok.byte_runs_fuse() and spm.byte_runs_fuse()
    prompt = tok.encode("We went to", add_special_tokens=False)
    gen = tok.encode("the", add_special_tokens=False) + _byte_ids(tok, "(\u2581".encode())
    detok = IncrementalDetokenizer(tok, prompt)
    for k, t in enumerate(gen, 1):
        detok.add(t)
        assert detok.text == _reference(tok, prompt, gen[:k])
    assert detok.text == " the( "


def test_a_decoder_that_strips_from_the_right_after_byte_fallback_decodes_each(spm):
    """Strip(right=1) after Fuse drops the text's last space, which a run's last character
    can be: any Strip counted as harmless, so the run's bytes showed it ("東 ")."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders

    backend = Backend.from_str(spm.backend.to_str())
    backend.decoder = decoders.Sequence([
        decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
        decoders.Strip(content=" ", left=0, right=1)])
    tok = Tokenizer(backend)
    prompt = tok.encode("We went to", add_special_tokens=False)
    gen = _byte_ids(tok, "東 ".encode())
    detok = IncrementalDetokenizer(tok, prompt)
    for k, t in enumerate(gen, 1):
        detok.add(t)
        assert detok.text == _reference(tok, prompt, gen[:k])
    assert detok.text == "東"
    assert not tok.byte_runs_fuse()


def _assert_generated_bytes_stay_invalid(spm, prompt: list[int]) -> None:
    """Generate the bytes of "東東" then " dog" after `prompt`: the text equals the full
    decode after every token, and the bytes join the prompt's invalid run (six U+FFFD)."""
    gen = _byte_ids(spm, "東東".encode()) + spm.encode(" dog", add_special_tokens=False)[-1:]
    detok = IncrementalDetokenizer(spm, prompt)
    for k, t in enumerate(gen, 1):
        detok.add(t)
        assert detok.text == _reference(spm, prompt, gen[:k])
    assert detok.text == FFFD * 6 + " dog"


def test_bytes_that_join_the_prompts_invalid_run_stay_invalid(spm):
    """The prompt ends in a stray continuation byte then the bytes of "東": decode shows the
    whole run as U+FFFD, and bytes generated after it join it. The left context started
    inside the run, at its valid tail, so the generated bytes decoded as "東"."""
    prompt = spm.encode("We went to", add_special_tokens=False) + _byte_ids(
        spm, b"\x80" + "東".encode())
    _assert_generated_bytes_stay_invalid(spm, prompt)


@pytest.mark.parametrize("invalid", [1, 3])
def test_bytes_that_join_a_long_invalid_run_of_the_prompt_stay_invalid(spm, invalid):
    """The same, with the invalid run longer than the left context (6 tokens): every start
    in the context lay inside the run after invalid bytes, so there was none, and the
    generated bytes decoded alone as "東東"."""
    prompt = spm.encode("We went to", add_special_tokens=False) + _byte_ids(
        spm, b"\x80" * invalid + "東".encode() * 3)
    _assert_generated_bytes_stay_invalid(spm, prompt)


class _CountingBytes(Tokenizer):
    """A tokenizer that counts the tokens whose bytes it is asked for."""

    def __init__(self, tok: Tokenizer) -> None:
        self.__dict__.update(tok.__dict__)
        self.looked_up = 0

    def token_bytes(self, token_id: int) -> bytes:
        self.looked_up += 1
        return super().token_bytes(token_id)


def test_the_prompts_last_run_is_read_once(spm):
    """A prompt that ends in a long run of byte tokens (text the vocabulary lacks): the
    left context walked the run back to its start and joined its bytes once for each of
    its 6 candidate starts, 6 times the run (143 ms for 30,000 tokens), on the engine
    thread at every request (once only where the prompt ends in a whole character)."""
    data = "東".encode() * 1000 + "東".encode()[:2]
    prompt = spm.encode("We went to", add_special_tokens=False) + _byte_ids(spm, data)
    tok = _CountingBytes(spm)
    IncrementalDetokenizer(tok, prompt)
    assert tok.looked_up <= len(data) + 20


def test_the_engine_builds_the_fast_path_table_at_load(tiny_model_dir):
    """`whole_pieces` was built at the first request, on the engine thread (about 80 ms for
    a 49k vocabulary)."""
    from kvsaga.engine.engine import LLMEngine

    engine = LLMEngine(str(tiny_model_dir("llama_gqa4_untied")), device="cpu", progress=False,
                       kv_memory_bytes=4 * 2**20)
    assert engine.tokenizer._whole_pieces is not None
