"""SamplingParams validation and the batched sampler."""

from __future__ import annotations

import re

import pytest
import torch

from kvsaga.engine.sampling import Sampler, SamplingParams, _top_k_top_p
from kvsaga.errors import InvalidRequest


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2.0}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"top_k": -2}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": "7"}, "seed"),
        ({"seed": 2**70}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"stop": [""]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"stop": b"###"}, "stop"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"stop_token_ids": 5}, "stop_token_ids"),
        ({"logprobs": -1}, "logprobs"),
        ({"ignore_eos": "false"}, "ignore_eos"),
        ({"ignore_eos": None}, "ignore_eos"),
        ({"ignore_eos": 1}, "ignore_eos"),
        ({"n": 0}, "n"),
    ],
)
def test_params_reject_bad_values_naming_them(kwargs, name):
    message = rf"SamplingParams\.{name} .*got {re.escape(repr(kwargs[name]))}"
    with pytest.raises(InvalidRequest, match=message):
        SamplingParams(**kwargs)


def test_seeds_at_the_int64_bounds_make_generators():
    for seed in (2**63 - 1, -(2**63), 0, -1, 2**32 - 1):
        g = SamplingParams(seed=seed).make_generator()
        assert g is not None
        if -(2**32) <= seed < 2**32:  # passed as is (above, the high half is mixed in)
            assert g.initial_seed() == seed % 2**64


def test_params_normalise():
    p = SamplingParams(stop="###", stop_token_ids=[5], top_k=-1, logprobs=True)
    assert p.stop == ("###",) and p.stop_token_ids == (5,) and p.top_k == 0
    assert p.num_top_logprobs == 0
    assert SamplingParams(logprobs=3).num_top_logprobs == 3
    assert SamplingParams().num_top_logprobs is None
    assert SamplingParams(temperature=0).greedy


def _logits(b: int = 4, v: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, v, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_rows_take_argmax_and_report_logprobs():
    logits = _logits()
    out = Sampler()(logits, [SamplingParams(temperature=0)] * 4)
    assert out.token_ids.tolist() == logits.argmax(-1).tolist()
    expected = torch.log_softmax(logits, -1).max(-1).values
    torch.testing.assert_close(out.logprobs, expected)
    assert out.top_token_ids is None


def test_top_logprobs_sized_by_largest_request():
    logits = _logits()
    params = [SamplingParams(temperature=0, logprobs=k) for k in (None, 2, 5, True)]
    out = Sampler()(logits, params)
    assert out.top_token_ids.shape == (4, 5)
    assert out.top_token_ids[:, 0].tolist() == logits.argmax(-1).tolist()


def test_top_k_top_p_mask():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]]))
    masked = _top_k_top_p(logits, [2, 0], [1.0, 0.7])
    kept = torch.isfinite(masked)
    assert kept[0].tolist() == [True, True, False, False]  # top-2
    assert kept[1].tolist() == [True, True, False, False]  # 0.5 < 0.7, 0.8 >= 0.7: stop
    # the most likely token survives even a tiny top_p
    assert torch.isfinite(_top_k_top_p(logits[:1], [0], [0.01])).tolist() == [
        [True, False, False, False]
    ]


def test_sampling_respects_top_k_and_follows_distribution():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]])).repeat(4000, 1)
    params = [SamplingParams(temperature=1.0, top_k=2, seed=None)] * 4000
    out = Sampler()(logits, params)
    counts = torch.bincount(out.token_ids, minlength=3).float() / 4000
    assert counts[2] == 0
    assert abs(counts[0].item() - 2 / 3) < 0.04


def test_seeded_rows_are_reproducible_regardless_of_batch():
    logits = _logits(b=3)
    seeded = SamplingParams(temperature=1.0, seed=1234)
    other = SamplingParams(temperature=1.0)
    sampler = Sampler()
    alone = [
        sampler(logits[1:2], [seeded], [seeded.make_generator()]).token_ids.item() for _ in range(5)
    ]
    in_batch = [
        sampler(logits, [other, seeded, other], [None, seeded.make_generator(), None])
        .token_ids[1]
        .item()
        for _ in range(5)
    ]
    assert alone == in_batch
    # One generator kept across steps continues its stream (draws differ between steps).
    g = seeded.make_generator()
    flat = torch.zeros(1, 1000)
    draws = {sampler(flat, [seeded], [g]).token_ids.item() for _ in range(10)}
    assert len(draws) > 1


def test_a_top_p_one_row_keeps_its_tail_beside_a_top_k_row():
    """A top_p=1.0 row ("keep all") lost every token whose fp32 prefix mass rounded to 1
    (13,019 of 128,256 here) whenever a neighbour's top-k made the top-k/top-p pass run,
    so a seeded request's token depended on its batch (review s48 engine 3). Seed 15826
    draws token 71721 (p ~ 7e-10) alone; beside a top_k=50 row it drew 54507."""
    logits = torch.randn(2, 128256, generator=torch.Generator().manual_seed(0)) * 4.0
    assert torch.isfinite(_top_k_top_p(logits, [0, 50], [1.0, 1.0])[0]).all()
    seeded = SamplingParams(temperature=1.0, seed=15826)
    sampler = Sampler()
    alone = sampler(logits[:1], [seeded], [seeded.make_generator()]).token_ids[0].item()
    beside = sampler(logits, [seeded, SamplingParams(temperature=1.0, top_k=50)],
                     [seeded.make_generator(), None]).token_ids[0].item()
    assert torch.softmax(logits[0], -1)[alone] < 1e-8  # the case still reaches the tail
    assert beside == alone


def test_mismatched_batch_is_rejected():
    with pytest.raises(InvalidRequest, match="4 rows, 3 params"):
        Sampler()(_logits(), [SamplingParams()] * 3)


@pytest.mark.parametrize("temperature", [1e-6, 1e-20, 1e-38, 1e-40, 5e-324])
def test_a_temperature_below_the_epsilon_is_greedy(temperature):
    # Before the fix logits / 1e-38 overflowed to inf, softmax gave NaN and every such row
    # drew token 0 (review repro t17); the argmax is the limit as the temperature falls.
    logits = _logits(b=3, v=1000, seed=7)
    assert logits.argmax(-1).ne(0).all()
    tiny = [SamplingParams(temperature=temperature),
            SamplingParams(temperature=temperature, top_p=0.9, top_k=50)]
    out = Sampler()(logits, [*tiny, SamplingParams(temperature=1.0, seed=3)])
    assert out.token_ids[:2].tolist() == logits[:2].argmax(-1).tolist()
    assert torch.isfinite(out.logprobs).all()
    assert all(p.greedy for p in tiny)


def test_the_greedy_epsilon_is_vllms():
    from kvsaga.engine.sampling import GREEDY_TEMPERATURE

    assert GREEDY_TEMPERATURE == 1e-5
    assert SamplingParams(temperature=0.99e-5).greedy
    assert not SamplingParams(temperature=1e-5).greedy
    # Just above it, the division stays finite and sampling works as before.
    logits = _logits(b=2, v=1000, seed=7)
    out = Sampler()(logits, [SamplingParams(temperature=1e-5, seed=1)] * 2)
    assert out.token_ids.tolist() == logits.argmax(-1).tolist()
