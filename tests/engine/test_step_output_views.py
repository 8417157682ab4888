"""A step's outputs cost the same at any output length, and top-logprobs are read once a batch.

Review s50 (engine findings 2 and 3): every step's `RequestOutput` copied the request's whole
output (`token_ids`, `logprobs`, `top_logprobs`), quadratic over a request's life; and each
sampled row's top-logprobs were read with their own `.tolist()` (on CUDA a sync per row)."""

from __future__ import annotations

import pytest

from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.request import ListPrefix
from kvsaga.engine.sampling import SamplingParams

PROMPTS = [[(7 + 13 * i + 31 * j) % 250 + 3 for i in range(20 + 7 * j)] for j in range(4)]


@pytest.fixture
def engine(tiny_model_dir) -> LLMEngine:
    return LLMEngine(str(tiny_model_dir("llama_gqa4_untied")), device="cpu", progress=False,
                     kv_memory_bytes=4 << 20)


def params(logprobs, n: int = 6) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, logprobs=logprobs)


def test_a_running_requests_output_shares_its_lists_and_keeps_its_length(engine):
    r = engine.add_request(PROMPTS[0], params(3))
    kept = []
    while engine.has_unfinished():
        for out in engine.step():
            kept.append((out, list(r.output_ids), list(r.logprobs), list(r.top_logprobs)))
    *running, last = kept
    assert len(running) == 5
    for out, ids, lps, tops in running:
        # No copy of what came before: a view of the request's own list ...
        assert isinstance(out.token_ids, ListPrefix) and out.token_ids._items is r.output_ids
        assert out.logprobs._items is r.logprobs and out.top_logprobs._items is r.top_logprobs
        # ... that still holds, after later steps, exactly what it held at its step.
        assert out.token_ids == ids and out.logprobs == lps and out.top_logprobs == tops
        assert list(out.token_ids) == ids and out.token_ids[-1] == out.new_token_ids[0]
    out, ids, lps, tops = last
    assert out.finished and type(out.token_ids) is list and out.token_ids == r.output_ids
    assert type(out.logprobs) is list and type(out.top_logprobs) is list
    final = engine.final_output(r)
    assert type(final.token_ids) is list and final.token_ids == ids and final.logprobs == lps


def test_outputs_without_logprobs_carry_none(engine):
    engine.add_request(PROMPTS[0], params(None, 3))
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    assert len(outs) == 3 and all(o.logprobs is None and o.top_logprobs is None for o in outs)
    engine.add_request(PROMPTS[1], params(0, 3))
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    assert all(len(o.logprobs) == len(o.token_ids) and o.top_logprobs is None for o in outs)


def test_list_prefix_reads_like_the_list_it_views():
    items = [10, 11, 12, 13]
    v = ListPrefix(items)
    items.extend([14, 15])  # appended later: not part of the view
    ref = [10, 11, 12, 13]
    assert len(v) == 4 and list(v) == ref and v == ref and ref == v and v != ref[:3]
    assert v != (10, 11, 12, 13) and v == ListPrefix(ref) and v != [10, 11, 12, 14]
    assert v[0] == 10 and v[-1] == 13 and v[-4] == 10
    for bad in (4, -5):
        with pytest.raises(IndexError):
            v[bad]
    for sl in (slice(1, 3), slice(None), slice(2, None), slice(-2, None), slice(None, -1),
               slice(None, None, -1), slice(3, 0, -2), slice(5, 9), slice(None, None, 2)):
        assert v[sl] == ref[sl], sl
    assert v + [1] == ref + [1] and [1] + v == [1] + ref and v + v == ref + ref
    assert 12 in v and 15 not in v and v.index(13) == 3 and v.count(11) == 1
    assert list(reversed(v)) == ref[::-1] and repr(v) == repr(ref) and v.copy() == ref
    with pytest.raises(TypeError):
        hash(v)


def test_top_logprobs_of_a_mixed_batch_are_the_samplers_rows(engine, monkeypatch):
    """Each row keeps the first k of its row of the sampler's top tensors, whatever the
    others in the batch ask for (k 0, 2, 5 and none)."""
    asks = [5, 0, 2, None]
    reqs = [engine.add_request(p, params(k)) for p, k in zip(PROMPTS, asks, strict=True)]
    real = engine.runner.run
    seen = []

    def run(chunks):
        sampled, out = real(chunks)
        seen.append([(c.request, out.top_token_ids[i].tolist(), out.top_logprobs[i].tolist(),
                      out.logprobs[i].item()) for i, c in enumerate(sampled)])
        return sampled, out

    monkeypatch.setattr(engine.runner, "run", run)
    while engine.has_unfinished():
        engine.step()
    done: dict[str, int] = {}  # rows of each request checked so far
    for step in seen:
        for req, ids, lps, lp in step:
            pos = done.get(req.request_id, 0)
            done[req.request_id] = pos + 1
            k = req.params.num_top_logprobs
            if k is None:
                assert req.logprobs == [] and req.top_logprobs == []
                continue
            assert req.logprobs[pos] == lp
            if k:
                assert req.top_logprobs[pos] == list(zip(ids[:k], lps[:k], strict=True))
            else:
                assert req.top_logprobs == []
    assert all(len(r.output_ids) == 6 for r in reqs)
    assert [len(r.top_logprobs) for r in reqs] == [6, 0, 6, 0]


def test_a_view_pickles_as_a_list_of_its_prefix_and_an_output_dict_is_json():
    """Review s50 diff-engine finding 6: a pickled view carried the whole underlying list
    (as it was at pickling time) and needed the class to load; `asdict` of an output kept
    the views, which json refused."""
    import dataclasses
    import json
    import pickle

    from kvsaga.engine.request import ListPrefix, RequestOutput

    items = [1, 2, 3]
    view = ListPrefix(items)
    items.extend(range(10_000))  # the request grew after the output was made
    got = pickle.loads(pickle.dumps(view))
    assert type(got) is list and got == [1, 2, 3]
    assert len(pickle.dumps(view)) < 100
    out = RequestOutput("r", "s", "abc", "c", view, None, 3, 0, logprobs=ListPrefix([0.5]))
    assert json.loads(json.dumps(dataclasses.asdict(out)))["token_ids"] == [1, 2, 3]
