"""DecodeGraphs (kvsaga/engine/cuda_graphs.py): the padded decode pass that CUDA graphs record.

Off CUDA the same padded pass runs eagerly (`capture=False`), so these tests check what a
graph replays: padding rows write no K/V and change no real row's logits, and an engine
whose decode steps take that path samples the tokens of one that does not. The `gpu` tests
compare real graph replays against eager CUDA passes.
"""

from __future__ import annotations

import pytest
import torch

from kvsaga.engine.attn_metadata import AttentionMetadata
from kvsaga.engine.cuda_graphs import DecodeGraphs
from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.sampling import SamplingParams

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
    before = cache.clone()
    got = graphs.run(**two)
    plain = before.clone()
    want = _eager(model, plain, two)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cache, plain, atol=1e-5, rtol=1e-5)
    assert torch.equal(cache[8:], before[8:])  # sequences 2-4 untouched


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
    if dtype == torch.float32:
        assert got == want
    else:  # bf16: a near tie may part them; most tokens agree
        pairs = [(a, b) for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=True)]
        same = sum(a == b for a, b in pairs)
        assert same >= 0.8 * sum(len(w) for w in want)


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
