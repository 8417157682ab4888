"""DecodeGraphs and MixedGraphs (kvsaga/engine/cuda_graphs.py): the padded passes that CUDA
graphs record.

Off CUDA the same padded passes run eagerly (`capture=False`), so these tests check what a
graph replays: padding rows and tokens write no K/V and change no real row's logits, stale
rows of an earlier, larger step do not leak, and an engine whose steps take those paths
samples the tokens of one that does not. The `gpu` tests compare real graph replays against
eager CUDA passes.
"""

from __future__ import annotations

import pytest
import torch

from kvsaga.engine.attn_metadata import AttentionMetadata
from kvsaga.engine.cuda_graphs import DecodeGraphs, MixedGraphs, _Tables
from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.sampling import SamplingParams
from kvsaga.errors import InvalidRequest

from .helpers import kv_cache

BLOCK = 16


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama_gqa4_untied")


@pytest.fixture(params=["torch", "triton"])
def kernels(request, monkeypatch):
    """The torch references, or the Triton kernels CUDA graphs record (interpreted on CPU)."""
    monkeypatch.setenv("KVSAGA_KERNELS", request.param)
    return request.param


def _model(model_dir):
    from kvsaga.engine.loader import load_model

    return load_model(str(model_dir), dtype=torch.float32, device="cpu", progress=False).model


def _prefill(model, cache, seqs: list[list[int]], tables: list[list[int]]) -> None:
    """Write each sequence's K/V (all but its last token) into `cache`."""
    lens = [len(s) - 1 for s in seqs]
    meta = AttentionMetadata.build(tables, lens, lens, BLOCK)
    ids = torch.tensor([t for s in seqs for t in s[:-1]])
    model.hidden_states(ids, meta.positions(), cache, meta, ids.new_empty(0))


def _decode_case(model, n: int):
    """n sequences of different lengths, prefilled; their last tokens are the decode rows."""
    gen = torch.Generator().manual_seed(n)
    seqs = [torch.randint(3, 300, (5 + 7 * i,), generator=gen).tolist() for i in range(n)]
    tables = [list(range(4 * i, 4 * i + 4)) for i in range(n)]
    cache = kv_cache(model, 4 * n + 4, BLOCK)
    _prefill(model, cache, seqs, tables)
    rows = {
        "input_ids": [s[-1] for s in seqs],
        "positions": [len(s) - 1 for s in seqs],
        "slots": [t[(len(s) - 1) // BLOCK] * BLOCK + (len(s) - 1) % BLOCK
                  for s, t in zip(seqs, tables, strict=True)],
        "tables": tables,
        "seq_lens": [len(s) for s in seqs],
    }
    return cache, rows


def _eager(model, cache, rows) -> torch.Tensor:
    n = len(rows["input_ids"])
    meta = AttentionMetadata.build(rows["tables"], rows["seq_lens"], [1] * n, BLOCK,
                                   cache.device, slot_mapping=rows["slots"])
    ids, pos = (torch.tensor(rows[k], device=cache.device) for k in ("input_ids", "positions"))
    return model(ids, pos, cache, meta)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_padded_pass_matches_the_plain_pass(model_dir, kernels, n):
    model = _model(model_dir)
    cache, rows = _decode_case(model, n)
    plain_cache = cache.clone()
    want = _eager(model, plain_cache, rows)
    graphs = DecodeGraphs(model, cache, BLOCK, max_model_len=256, max_batch=8, capture=False)
    got = graphs.run(**rows)
    assert graphs.size_for(n) == {1: 1, 3: 4, 5: 8}[n]  # 3 and 5 run with padding rows
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # The padding wrote nothing: the caches agree everywhere (the real rows' new K/V too).
    torch.testing.assert_close(cache, plain_cache, atol=1e-5, rtol=1e-5)
    untouched = torch.ones(cache.shape[0], dtype=torch.bool)
    untouched[: 4 * n] = False
    assert torch.equal(cache[untouched], plain_cache[untouched])


def _assert_run_matches_eager(graphs, eager, model, cache, rows, untouched: int) -> None:
    """graphs.run(**rows) gives the logits and K/V of the plain pass `eager` from the same
    cache, and leaves the blocks from `untouched` on as they were (stale rows of an earlier,
    larger step write nothing)."""
    before = cache.clone()
    got = graphs.run(**rows)
    plain = before.clone()
    want = eager(model, plain, rows)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cache, plain, atol=1e-5, rtol=1e-5)
    assert torch.equal(cache[untouched:], before[untouched:])


def test_stale_rows_of_a_larger_batch_do_not_leak(model_dir, kernels):
    """A batch of 2 after a batch of 5 in the same size (8): rows 2-4 still hold the first
    batch's tokens, tables and lengths in the host copy, but they are padding now."""
    model = _model(model_dir)
    cache, rows = _decode_case(model, 5)
    graphs = DecodeGraphs(model, cache, BLOCK, max_model_len=256, max_batch=8, capture=False)
    graphs.run(**rows)
    two = {k: v[:2] for k, v in rows.items()}
    two["positions"] = [p + 1 for p in two["positions"]]
    two["seq_lens"] = [s + 1 for s in two["seq_lens"]]
    two["slots"] = [t[p // BLOCK] * BLOCK + p % BLOCK
                    for t, p in zip(two["tables"], two["positions"], strict=True)]
    _assert_run_matches_eager(graphs, _eager, model, cache, two, untouched=8)  # seqs 2-4


def test_sizes_and_bad_input(model_dir):
    model = _model(model_dir)
    cache, rows = _decode_case(model, 3)
    graphs = DecodeGraphs(model, cache, BLOCK, max_model_len=64, max_batch=5, capture=False)
    assert graphs.sizes == (1, 2, 4, 8)
    assert [graphs.size_for(b) for b in (0, 1, 3, 5, 8, 9)] == [None, 1, 4, 8, 8, None]
    packed = graphs._packed.clone()
    with pytest.raises(ValueError, match="one entry per row"):
        graphs.run(**{**rows, "slots": rows["slots"][:2]})
    with pytest.raises(ValueError, match="exceeds the largest graph"):
        graphs.run(**{k: v * 3 for k, v in rows.items()})
    with pytest.raises(ValueError, match="exceeds the 4"):  # 64 tokens: 4 blocks of 16
        graphs.run(**{**rows, "tables": [list(range(5))] * 3})
    assert torch.equal(graphs._packed, packed)  # nothing staged
    with pytest.raises(ValueError, match="need max_batch >= 1"):
        DecodeGraphs(model, cache, BLOCK, max_model_len=64, max_batch=0, capture=False)
    with pytest.raises(ValueError, match="need a CUDA KV cache"):
        DecodeGraphs(model, cache, BLOCK, max_model_len=64, max_batch=4)


GREEDY = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
PROMPTS = [list(range(5, 5 + n)) for n in (3, 20, 40, 9, 33)]


def _generate(engine: LLMEngine) -> list[list[int]]:
    reqs = [engine.add_request(p, GREEDY) for p in PROMPTS]
    while engine.has_unfinished():
        engine.step()
    return [r.output_ids for r in reqs]


def test_engine_decode_steps_through_the_padded_pass(model_dir, kernels):
    kw = dict(device="cpu", progress=False, kv_memory_bytes=4 * 2**20, max_num_seqs=8)
    want = _generate(LLMEngine(str(model_dir), **kw))
    engine = LLMEngine(str(model_dir), **kw)
    assert engine.runner.graphs is None  # CPU: eager unless asked
    engine.runner.graphs = DecodeGraphs(engine.model, engine.storage.kv, engine.spec.block_size,
                                        engine.max_model_len, 8, capture=False)
    assert _generate(engine) == want
    assert engine.runner.graphs.replays >= GREEDY.max_tokens - 1


def _assert_tokens_agree(got: list[list[int]], want: list[list[int]], dtype) -> None:
    """Greedy tokens of a graphed engine against an eager one: equal in fp32; in bf16 a near
    tie may part them, so most tokens agree."""
    if dtype == torch.float32:
        assert got == want
        return
    pairs = [(a, b) for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=True)]
    assert sum(a == b for a, b in pairs) >= 0.8 * sum(len(w) for w in want)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graphs_match_eager(model_dir, dtype):
    kw = dict(device="cuda", dtype=dtype, progress=False, kv_memory_bytes=64 * 2**20,
              max_num_seqs=8)
    eager = LLMEngine(str(model_dir), enforce_eager=True, **kw)
    assert eager.runner.graphs is None
    graphed = LLMEngine(str(model_dir), **kw)
    want, got = _generate(eager), _generate(graphed)
    graphs = graphed.runner.graphs
    assert graphs.replays >= GREEDY.max_tokens - 1
    assert graphs.captured_sizes()  # the decode steps replayed recorded graphs
    _assert_tokens_agree(got, want, dtype)


@pytest.mark.gpu
def test_cuda_graph_logits_match_an_eager_pass(model_dir):
    from kvsaga.engine.loader import load_model

    cache, rows = _decode_case(_model(model_dir), 5)  # prefilled on CPU
    model = load_model(str(model_dir), dtype=torch.float32, device="cuda", progress=False).model
    cache = cache.cuda()
    plain = cache.clone()
    want = _eager(model, plain, rows)
    graphs = DecodeGraphs(model, cache, BLOCK, max_model_len=256, max_batch=8)
    got = graphs.run(**rows).clone()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cache, plain, atol=1e-5, rtol=1e-5)
    assert graphs.captured_sizes() == [8]
    got2 = graphs.run(**rows)  # a replay: same inputs, same K/V rewritten, same logits
    torch.testing.assert_close(got2, got)


# -- mixed steps: prefill chunks beside decode rows ------------------------------------------

def _mixed_case(model, spec: list[tuple[int, int, bool]], seed: int = 0, cache=None):
    """One step over sequences given as (cached prefix, new tokens, sampled): sequence i
    owns blocks 4i..4i+3 (up to 64 tokens); its prefix is written into the cache first.
    Returns the cache and the step's arguments for `MixedGraphs.run`."""
    gen = torch.Generator().manual_seed(seed)
    if cache is None:
        cache = kv_cache(model, 4 * len(spec) + 4, BLOCK)
    rows = {k: [] for k in ("input_ids", "positions", "slots", "tables", "seq_lens",
                            "query_lens", "logits_rows")}
    prefixes = []
    for i, (prefix, new, sampled) in enumerate(spec):
        table = list(range(4 * i, 4 * i + 4))
        seq = torch.randint(3, 300, (prefix + new,), generator=gen).tolist()
        if prefix:
            prefixes.append((seq[:prefix], table))
        rows["input_ids"] += seq[prefix:]
        rows["positions"] += list(range(prefix, prefix + new))
        rows["slots"] += [table[p // BLOCK] * BLOCK + p % BLOCK
                          for p in range(prefix, prefix + new)]
        rows["tables"].append(table)
        rows["seq_lens"].append(prefix + new)
        rows["query_lens"].append(new)
        if sampled:
            rows["logits_rows"].append(len(rows["input_ids"]) - 1)
    if prefixes:
        seqs, tables = zip(*prefixes, strict=True)
        _prefill(model, cache, [s + [0] for s in seqs], list(tables))
    return cache, rows


def _eager_mixed(model, cache, rows) -> torch.Tensor:
    meta = AttentionMetadata.build(rows["tables"], rows["seq_lens"], rows["query_lens"], BLOCK,
                                   cache.device, rows["logits_rows"], rows["slots"])
    ids, pos = (torch.tensor(rows[k], device=cache.device) for k in ("input_ids", "positions"))
    return model(ids, pos, cache, meta)


# decode rows, an extend chunk that completes its prompt, a prompt's first chunk (not
# sampled), a fresh prompt in one chunk: 24 tokens over 4 (or 5) sequences.
MIXED = [(6, 1, True), (20, 13, True), (0, 9, False), (33, 1, True)]


@pytest.mark.parametrize("spec", [MIXED, MIXED + [(0, 7, True)], [(0, 9, False)]],
                         ids=["mixed", "mixed+prompt", "unsampled"])
def test_padded_mixed_pass_matches_the_plain_pass(model_dir, kernels, spec):
    model = _model(model_dir)
    cache, rows = _mixed_case(model, spec)
    plain_cache = cache.clone()
    want = _eager_mixed(model, plain_cache, rows)
    graphs = MixedGraphs(model, cache, BLOCK, max_model_len=256, max_batch=8, max_tokens=64,
                         capture=False)
    n, b = len(rows["input_ids"]), len(rows["seq_lens"])
    assert graphs.bucket_for(n, b) == {(24, 4): (32, 4), (31, 5): (32, 8), (9, 1): (16, 1)}[
        (n, b)]  # padding tokens and (but the first) padding rows
    got = graphs.run(**rows)
    assert got.shape == want.shape == (sum(s for *_, s in spec), model.config.vocab_size)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # The padding wrote nothing: the caches agree everywhere (the real rows' new K/V too).
    torch.testing.assert_close(cache, plain_cache, atol=1e-5, rtol=1e-5)
    untouched = torch.ones(cache.shape[0], dtype=torch.bool)
    untouched[: 4 * len(spec)] = False
    assert torch.equal(cache[untouched], plain_cache[untouched])
    assert graphs.replays == 1


def test_stale_rows_of_a_larger_mixed_step_do_not_leak(model_dir, kernels):
    """A step of 5 sequences after one of 7 in the same shape (32 tokens, 8 rows): rows 5-6
    and tokens 23-30 still hold the first step's data in the buffers, but are padding now."""
    model = _model(model_dir)
    first = [(5, 1, True), (0, 12, True), (9, 1, True), (0, 4, False), (2, 3, True),
             (7, 9, True), (11, 1, True)]
    cache, rows = _mixed_case(model, first, seed=1)
    graphs = MixedGraphs(model, cache, BLOCK, max_model_len=256, max_batch=8, max_tokens=32,
                         capture=False)
    assert graphs.bucket_for(len(rows["input_ids"]), 7) == (32, 8)
    graphs.run(**rows)
    # Sequences 0-4 again, new tokens after the first step's (5 rows, 20 tokens).
    second = [(6, 1, True), (12, 8, True), (10, 1, True), (4, 6, False), (5, 4, True)]
    cache2, rows2 = _mixed_case(model, second, seed=2, cache=cache.clone())
    cache.copy_(cache2)
    assert graphs.bucket_for(len(rows2["input_ids"]), 5) == (32, 8)
    _assert_run_matches_eager(graphs, _eager_mixed, model, cache, rows2,
                              untouched=20)  # sequences 5 and 6


def test_mixed_buckets_and_bad_input(model_dir):
    model = _model(model_dir)
    cache, rows = _mixed_case(model, MIXED)
    graphs = MixedGraphs(model, cache, BLOCK, max_model_len=64, max_batch=20, max_tokens=40,
                         capture=False)
    assert graphs.token_sizes == (16, 32, 64)
    assert graphs.row_sizes == (1, 2, 4, 8, 16, 24)
    # R <= T: 16 -> 5 row sizes, 32 and 64 -> 6 each.
    assert graphs.worst_case_graphs() == 17
    # Steps above max_tokens run eagerly, though the 64-token graphs would hold them.
    assert [graphs.bucket_for(t, r) for t, r in ((1, 1), (17, 3), (40, 24), (41, 1), (64, 2),
                                                (30, 25), (3, 4), (0, 0))] == [
        (16, 1), (32, 4), (64, 24), None, None, None, None, None]
    # The engine's defaults (64 sequences, 512 tokens): the 48 of the module docstring.
    assert MixedGraphs(model, cache, BLOCK, 64, 64, 512, capture=False).worst_case_graphs() == 48
    # A token cap below the row count keeps no row size it could never fill.
    assert MixedGraphs(model, cache, BLOCK, 64, 64, 10, capture=False).row_sizes == (
        1, 2, 4, 8, 16)
    packed, tables = graphs._packed.clone(), graphs.block_tables.clone()
    bad = [
        ({"slots": rows["slots"][:-1]}, "one entry per token"),
        ({"query_lens": rows["query_lens"][:-1]}, "one entry per sequence"),
        ({"query_lens": [8, 13, 9, 1]}, "sequence 0: need 0 < query_len <= seq_len, got 8, 7"),
        ({"query_lens": [1, 13, 0, 1]}, "sequence 2: need 0 < query_len"),
        ({"query_lens": [1, 12, 9, 1]}, "add up to 23, not the 24"),
        ({"logits_rows": [0, 24]}, "logits_rows must be at most 4 rows"),
        ({"logits_rows": [0, 1, 2, 3, 4]}, "logits_rows must be at most 4 rows"),
        ({"tables": [[0], [4, 5], [8], [12, 13, 14]]}, "1: 2 blocks of 16 tokens cannot hold 33"),
        ({"tables": [list(range(5))] * 4}, "exceeds the 4"),  # 64 tokens: 4 blocks of 16
    ]
    for change, message in bad:
        with pytest.raises(ValueError, match=message):
            graphs.run(**{**rows, **change})
    big = {k: v * 3 for k, v in rows.items()}
    big["query_lens"] = rows["query_lens"] * 3
    with pytest.raises(ValueError, match=r"72 tokens over 12 sequences exceeds the graphs' "
                       r"bounds \(40 tokens"):
        graphs.run(**big)
    assert torch.equal(graphs._packed, packed) and torch.equal(graphs.block_tables, tables)
    assert graphs.replays == 0
    with pytest.raises(ValueError, match="need max_batch, max_tokens"):
        MixedGraphs(model, cache, BLOCK, 64, 4, 0, capture=False)
    with pytest.raises(ValueError, match="exceeds the largest token size"):
        MixedGraphs(model, cache, BLOCK, 64, 4, 4096, capture=False)
    with pytest.raises(ValueError, match="need a CUDA KV cache"):
        MixedGraphs(model, cache, BLOCK, 64, 4, 64)


def test_block_tables_are_staged_by_their_changes():
    tables = _Tables(4, 6, torch.device("cpu"), pin=False)
    tables.stage([[3, 4], [7]])
    assert tables.entries_written == 3
    tables.stage([[3, 4], [7, 9]])  # a block appended: one entry written
    assert tables.entries_written == 4
    tables.stage([[3, 4], [7, 9]])  # nothing changed
    assert tables.entries_written == 4
    # A block replaced (the row rewritten), another sequence, a new row.
    tables.stage([[3, 8, 1], [5], [2, 2]])
    assert tables.entries_written == 4 + 3 + 1 + 2
    want = [[3, 8, 1], [5], [2, 2]]
    for i, t in enumerate(want):
        assert tables.on_device[i, : len(t)].tolist() == t
    tables.stage([[3], [5, 6, 7, 8, 9, 10]])  # shorter, then longer
    assert tables.on_device[0, :1].tolist() == [3]
    assert tables.on_device[1].tolist() == [5, 6, 7, 8, 9, 10]
    assert tables.entries_written == 10 + 1 + 5


def test_padded_passes_read_no_device_values(model_dir, monkeypatch):
    """A CUDA graph cannot capture a read of a device value (`.item()`, `int(t)`,
    `.tolist()`, a data-dependent shape). On the meta device every such read raises, so
    the padded passes run there end to end: the model's own code (hidden_states,
    KeptRows.build, _attention_threads, _step_plan, norms, RoPE, linears) takes its
    non-CPU branches, as on CUDA. The kernels are stubbed out: on CUDA they check only
    metadata and take the host bounds (the `gpu` tests capture them for real)."""
    from kvsaga import kernels

    model = _model(model_dir)
    _, rows = _mixed_case(model, MIXED)
    model = model.to("meta")
    model.pack_weights()  # what a load off CPU sets: serial_below 0, no packed copies
    assert model.serial_below == 0
    cache = kv_cache(model, 20, BLOCK).to("meta")
    monkeypatch.setattr(kernels, "cache_write", lambda *a, **k: None)
    monkeypatch.setattr(kernels, "paged_attention",
                        lambda query, *a, **k: torch.empty_like(query))
    with pytest.raises(RuntimeError, match="meta"):
        int(cache.sum())  # the probe works: a read raises
    vocab = model.config.vocab_size
    mixed = MixedGraphs(model, cache, BLOCK, 256, 8, 64, capture=False)
    assert mixed.run(**rows).shape == (3, vocab)
    decode = DecodeGraphs(model, cache, BLOCK, 256, 8, capture=False)
    # (values are never read on meta: any three rows make a decode batch)
    one = {k: rows[k][:3] for k in ("input_ids", "positions", "slots", "tables", "seq_lens")}
    assert decode.run(**one).shape == (3, vocab)


def _generate_chunked(engine: LLMEngine) -> list[list[int]]:
    """PROMPTS, two of them added after a few steps: with a small token budget, prompt
    chunks share steps with other sequences' decode rows."""
    reqs = [engine.add_request(p, GREEDY) for p in PROMPTS[:3]]
    for _ in range(3):
        engine.step()
    reqs += [engine.add_request(p, GREEDY) for p in PROMPTS[3:]]
    while engine.has_unfinished():
        engine.step()
    return [r.output_ids for r in reqs]


def test_engine_mixed_steps_through_the_padded_pass(model_dir, kernels):
    kw = dict(device="cpu", progress=False, kv_memory_bytes=4 * 2**20, max_num_seqs=8,
              max_num_batched_tokens=24)
    want = _generate_chunked(LLMEngine(str(model_dir), **kw))
    engine = LLMEngine(str(model_dir), **kw)
    assert engine.runner.mixed is None  # CPU: eager unless asked
    args = (engine.model, engine.storage.kv, engine.spec.block_size, engine.max_model_len, 8)
    engine.runner.graphs = DecodeGraphs(*args, capture=False)
    mixed = engine.runner.mixed = MixedGraphs(*args, max_tokens=24, capture=False)
    steps = []  # the query lengths of each step through the mixed pass
    run = mixed.run
    mixed.run = lambda *a: steps.append(list(a[5])) or run(*a)
    assert _generate_chunked(engine) == want
    assert mixed.replays == len(steps) >= 3
    assert any(1 in q and max(q) > 1 for q in steps)  # decode rows beside a prompt chunk
    assert engine.runner.graphs.replays >= GREEDY.max_tokens - 1


def test_engine_max_graph_tokens_is_checked(model_dir):
    for bad in (-1, 4096, 1.5, True):
        with pytest.raises(InvalidRequest, match="max_graph_tokens must be an int"):
            LLMEngine(str(model_dir), device="cpu", progress=False, max_graph_tokens=bad)


@pytest.mark.gpu
def test_cuda_mixed_graph_logits_match_an_eager_pass(model_dir):
    from kvsaga.engine.loader import load_model

    cache, rows = _mixed_case(_model(model_dir), MIXED)  # prefixes written on CPU
    model = load_model(str(model_dir), dtype=torch.float32, device="cuda", progress=False).model
    cache = cache.cuda()
    plain = cache.clone()
    want = _eager_mixed(model, plain, rows)
    decode = DecodeGraphs(model, cache, BLOCK, max_model_len=256, max_batch=8)
    graphs = MixedGraphs(model, cache, BLOCK, max_model_len=256, max_batch=8, max_tokens=64,
                         pool=decode.pool)
    got = graphs.run(**rows).clone()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cache, plain, atol=1e-5, rtol=1e-5)
    assert graphs.captured() == [(32, 4)]
    # Another shape in the same pool, then the first again: a replay, same logits.
    one = {**rows, "input_ids": rows["input_ids"][:1], "positions": rows["positions"][:1],
           "slots": rows["slots"][:1], "tables": rows["tables"][:1],
           "seq_lens": rows["seq_lens"][:1], "query_lens": [1], "logits_rows": [0]}
    graphs.run(**one)
    assert graphs.captured() == [(16, 1), (32, 4)]
    got2 = graphs.run(**rows)
    torch.testing.assert_close(got2, got)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_mixed_graphs_match_eager(model_dir, dtype):
    kw = dict(device="cuda", dtype=dtype, progress=False, kv_memory_bytes=64 * 2**20,
              max_num_seqs=8, max_num_batched_tokens=24)
    eager = LLMEngine(str(model_dir), enforce_eager=True, **kw)
    assert eager.runner.graphs is None and eager.runner.mixed is None
    graphed = LLMEngine(str(model_dir), **kw)
    want, got = _generate_chunked(eager), _generate_chunked(graphed)
    mixed = graphed.runner.mixed
    assert mixed.token_sizes == (16, 32) and mixed.replays >= 3 and mixed.captured()
    assert graphed.runner.graphs.replays >= GREEDY.max_tokens - 1
    _assert_tokens_agree(got, want, dtype)
    decode_only = LLMEngine(str(model_dir), max_graph_tokens=0, **kw)
    assert decode_only.runner.mixed is None and decode_only.runner.graphs is not None


def test_capture_all_off_cuda_runs_each_padded_pass_and_writes_no_kv(model_dir, kernels):
    """Off CUDA, capture_all runs the pass each graph would record, once a shape, on a
    dummy step: every kernel path of every shape runs, no K/V is written, and a real step
    afterwards gives the plain pass's logits."""
    model = _model(model_dir)
    cache, rows = _mixed_case(model, MIXED)
    want = _eager_mixed(model, cache.clone(), rows)
    before = cache.clone()
    decode = DecodeGraphs(model, cache, BLOCK, 256, 4, capture=False)
    mixed = MixedGraphs(model, cache, BLOCK, 256, 4, 32, capture=False)
    ran = []
    for graphs in (decode, mixed):
        forward = graphs._forward
        graphs._forward = lambda *shape, f=forward: ran.append(shape) or f(*shape)
    assert decode.capture_all() == 3 and mixed.capture_all() == 6
    assert ran == [(4,), (2,), (1,), (32, 4), (32, 2), (32, 1), (16, 4), (16, 2), (16, 1)]
    assert torch.equal(cache, before)
    assert decode.captured_sizes() == [] and mixed.captured() == []  # nothing recorded
    torch.testing.assert_close(mixed.run(**rows), want, atol=1e-4, rtol=1e-4)


def test_a_failed_capture_is_not_counted_as_a_replay(model_dir, monkeypatch):
    """`replays` (bench/engine_cuda_profile.py prints it) counts passes that ran: a capture
    that raises GraphCaptureError (the runner then runs the step eagerly) adds none. The
    failure is the real `_capture`'s, its first CUDA call made to raise, so this runs on CPU."""
    from kvsaga.engine.cuda_graphs import GraphCaptureError

    def no_stream():
        raise RuntimeError("no CUDA stream here")

    monkeypatch.setattr(torch.cuda, "Stream", no_stream)
    model = _model(model_dir)
    cache, rows = _decode_case(model, 3)
    decode = DecodeGraphs(model, cache, BLOCK, max_model_len=64, max_batch=4, capture=False)
    cache, mixed_rows = _mixed_case(model, MIXED)
    mixed = MixedGraphs(model, cache, BLOCK, max_model_len=64, max_batch=4, max_tokens=32,
                        capture=False)
    for graphs, step in ((decode, rows), (mixed, mixed_rows)):
        graphs.capture = True  # as on CUDA (the constructor refuses a CPU cache for it)
        with pytest.raises(GraphCaptureError, match="no CUDA stream here"):
            graphs.run(**step)
        assert graphs.replays == 0
        graphs.capture = False  # the padded pass eagerly: it runs, and counts
        graphs.run(**step)
        assert graphs.replays == 1
