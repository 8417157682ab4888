"""Recording the CUDA graphs (kvsaga/engine/cuda_graphs.py): when a graph is captured (at a
shape's first step, or every shape at start-up with `graph_capture="startup"`), what a failed
capture does, and when graphs apply at all. Off CUDA `_capture` is faked (a "graph" whose
replay reruns the pass) or fails for real (no CUDA streams); the `gpu` tests record real
graphs. The padded passes themselves: tests/engine/test_cuda_graphs.py, whose cases these
reuse.
"""

from __future__ import annotations

import pytest
import torch

from kvsaga.engine.cuda_graphs import DecodeGraphs, MixedGraphs
from kvsaga.engine.engine import LLMEngine
from kvsaga.errors import InvalidRequest

from .test_cuda_graphs import (
    BLOCK,
    GREEDY,
    MIXED,
    _eager_mixed,
    _generate_chunked,
    _mixed_case,
    _model,
)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama_gqa4_untied")


def _fake_capture(monkeypatch) -> list:
    """Replace `_capture` off CUDA by a fake whose "graph" replays by rerunning the pass
    (after a warm-up call, as the real one); returns the list of pools it was given."""
    from kvsaga.engine import cuda_graphs

    pools = []

    class FakeGraph:
        def __init__(self, forward):
            self.replay = forward

    def fake_capture(forward, pool):
        pools.append(pool)
        forward()  # the warm-up
        return FakeGraph(forward), forward()

    monkeypatch.setattr(cuda_graphs, "_capture", fake_capture)
    return pools


def test_lazy_capture_bookkeeping(model_dir, monkeypatch):
    """The capture=True branch off CUDA, with `_capture` faked (a "graph" whose replay
    reruns the pass): one capture per shape at its first step, replays after, and the
    logits read from where a replay leaves them."""
    captures = _fake_capture(monkeypatch)
    model = _model(model_dir)
    cache, rows = _mixed_case(model, MIXED)
    plain = cache.clone()
    want = _eager_mixed(model, plain, rows)
    decode = DecodeGraphs(model, cache, BLOCK, 256, 8, capture=False)
    mixed = MixedGraphs(model, cache, BLOCK, 256, 8, 64, capture=False, pool="pool")
    decode.capture = mixed.capture = True
    for _ in range(2):
        torch.testing.assert_close(mixed.run(**rows), want, atol=1e-4, rtol=1e-4)
    one = {k: rows[k][:1] for k in ("input_ids", "positions", "slots", "tables", "seq_lens")}
    decode.run(**one)
    decode.run(**one)
    assert mixed.captured() == [(32, 4)] and decode.captured_sizes() == [1]
    assert captures == ["pool", None] and (mixed.replays, decode.replays) == (2, 2)


def test_graphs_apply_on_cuda_with_the_triton_kernels_only(monkeypatch):
    """Graphs follow the kernels: the torch references read lengths on the host, which a
    capture cannot hold, so `KVSAGA_KERNELS=torch` (or enforce_eager) keeps CUDA eager."""
    from kvsaga.engine.cuda_graphs import graphs_apply

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.delenv("KVSAGA_KERNELS", raising=False)
    assert graphs_apply(cuda, enforce_eager=False)
    assert not graphs_apply(cuda, enforce_eager=True)
    assert not graphs_apply(cpu, enforce_eager=False)
    monkeypatch.setenv("KVSAGA_KERNELS", "torch")
    assert not graphs_apply(cuda, enforce_eager=False)
    monkeypatch.setenv("KVSAGA_KERNELS", "triton")
    assert graphs_apply(cuda, enforce_eager=False) and not graphs_apply(cpu, False)


def test_a_failed_capture_turns_that_kind_of_graph_off(model_dir, caplog):
    """Off CUDA the real `_capture` fails (no CUDA streams): the runner logs it once per
    kind of graph, turns that kind off, and serves the step and the rest eagerly, with the
    tokens of an engine that never had graphs."""
    import logging

    from kvsaga.engine.cuda_graphs import GraphCaptureError, _capture

    with pytest.raises(GraphCaptureError, match="recording a CUDA graph failed"):
        _capture(lambda: None, None)
    kw = dict(device="cpu", progress=False, kv_memory_bytes=4 * 2**20, max_num_seqs=8,
              max_num_batched_tokens=24)
    want = _generate_chunked(LLMEngine(str(model_dir), **kw))
    engine = LLMEngine(str(model_dir), **kw)
    args = (engine.model, engine.storage.kv, engine.spec.block_size, engine.max_model_len, 8)
    decode = DecodeGraphs(*args, capture=False)
    mixed = MixedGraphs(*args, max_tokens=24, capture=False)
    decode.capture = mixed.capture = True  # the real capture, which fails here
    engine.runner.graphs, engine.runner.mixed = decode, mixed
    with caplog.at_level(logging.WARNING, logger="kvsaga.engine"):
        assert _generate_chunked(engine) == want
    assert engine.runner.graphs is None and engine.runner.mixed is None
    off = [r.getMessage() for r in caplog.records if "CUDA graphs are off" in r.getMessage()]
    assert sorted(m.split()[0] for m in off) == ["decode", "mixed"], off
    assert decode.captured_sizes() == [] and mixed.captured() == []


# -- every shape recorded before the first step (graph_capture="startup") ----------------

def test_capture_all_records_every_shape_largest_first(model_dir, monkeypatch):
    """The capture=True branch off CUDA, `_capture` faked as in the test above: each shape
    once (warm-up and capture), largest first, into the shared pool, from a staged dummy
    step that writes no K/V; a second call records nothing; a real step after it
    replays its shape's graph with that step's values."""
    calls = _fake_capture(monkeypatch)
    model = _model(model_dir)
    cache, rows = _mixed_case(model, MIXED)
    want = _eager_mixed(model, cache.clone(), rows)
    before = cache.clone()
    decode = DecodeGraphs(model, cache, BLOCK, 256, 8, capture=False)
    mixed = MixedGraphs(model, cache, BLOCK, 256, 8, 64, capture=False, pool=decode.pool)
    decode.capture = mixed.capture = True
    assert decode.capture_all() == 4 and list(decode._graphs) == [8, 4, 2, 1]
    assert mixed.capture_all() == mixed.worst_case_graphs() == 12
    assert list(mixed._graphs)[:5] == [(64, 8), (64, 4), (64, 2), (64, 1), (32, 8)]
    assert sorted(mixed._graphs) == mixed.captured() and len(calls) == 16
    assert torch.equal(cache, before)  # the dummy step's slot is -1: no K/V written
    assert decode.capture_all() == mixed.capture_all() == 0 and len(calls) == 16
    torch.testing.assert_close(mixed.run(**rows), want, atol=1e-4, rtol=1e-4)
    assert len(calls) == 16 and mixed.replays == 1


def test_engine_graph_capture_is_checked_and_a_failed_startup_capture_runs_eagerly(
        model_dir, caplog):
    import logging

    kw = dict(device="cpu", progress=False, kv_memory_bytes=4 * 2**20, max_num_seqs=8,
              max_num_batched_tokens=24)
    for bad in ("eager", None, 1):
        with pytest.raises(InvalidRequest, match="graph_capture must be one of"):
            LLMEngine(str(model_dir), graph_capture=bad, **kw)
    want = _generate_chunked(LLMEngine(str(model_dir), graph_capture="startup", **kw))
    engine = LLMEngine(str(model_dir), **kw)
    assert engine.runner.capture_graphs() == {}  # CPU: no graphs to record
    args = (engine.model, engine.storage.kv, engine.spec.block_size, engine.max_model_len, 8)
    decode = DecodeGraphs(*args, capture=False)
    mixed = MixedGraphs(*args, max_tokens=24, capture=False)
    decode.capture = mixed.capture = True  # the real capture, which fails off CUDA
    engine.runner.graphs, engine.runner.mixed = decode, mixed
    with caplog.at_level(logging.WARNING, logger="kvsaga.engine"):
        assert engine.runner.capture_graphs() == {}
    assert engine.runner.graphs is None and engine.runner.mixed is None
    off = [r.getMessage() for r in caplog.records if "CUDA graphs are off" in r.getMessage()]
    assert sorted(m.split()[0] for m in off) == ["decode", "mixed"], off
    assert _generate_chunked(engine) == want


@pytest.mark.gpu
def test_cuda_startup_capture_records_every_shape_before_the_first_step(model_dir):
    kw = dict(device="cuda", dtype=torch.float32, progress=False,
              kv_memory_bytes=64 * 2**20, max_num_seqs=8, max_num_batched_tokens=24)
    eager = LLMEngine(str(model_dir), enforce_eager=True, **kw)
    graphed = LLMEngine(str(model_dir), graph_capture="startup", **kw)
    decode, mixed = graphed.runner.graphs, graphed.runner.mixed
    assert decode.captured_sizes() == list(decode.sizes)
    shapes = mixed.captured()
    assert len(shapes) == mixed.worst_case_graphs() and decode.replays == mixed.replays == 0
    assert _generate_chunked(graphed) == _generate_chunked(eager)
    assert decode.captured_sizes() == list(decode.sizes) and mixed.captured() == shapes
    assert decode.replays >= GREEDY.max_tokens - 1 and mixed.replays >= 3
