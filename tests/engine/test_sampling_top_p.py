"""top_p through the Sampler: batches where no row sets top_k, and the exact top_p boundary.

Every draw here is seeded (one generator per row, seed = row index), so each test draws the
same tokens on every run. The assertions also hold for any seeds: a token outside a row's
top-p set gets probability exactly 0 (its logit is -inf), and the Sampler's draw, the argmax
of probs / noise with positive noise, never picks a 0-probability token while one above 0
remains.
"""

from __future__ import annotations

import torch

from kvsaga.engine.sampling import Sampler, SamplingParams, _top_k_top_p

ROWS = 2000
PROBS = [0.6, 0.3, 0.1]


def _draw(logits: torch.Tensor, params: list[SamplingParams]) -> list[int]:
    """One seeded draw per row; row i's generator is seeded with `params[i].seed`."""
    out = Sampler()(logits, params, [p.make_generator() for p in params])
    return out.token_ids.tolist()


def test_a_top_p_only_batch_draws_only_inside_the_top_p_set():
    """No row sets top_k (the OpenAI default shape, top_p alone): top_p 0.5 over
    0.6/0.3/0.1 keeps only the first token. Review s50 tests 1: a gate that ran the top-p
    pass only when some row set top_k drew [1263, 542, 195] of 2000 here."""
    logits = torch.log(torch.tensor([PROBS])).repeat(ROWS, 1)
    top_p = [SamplingParams(temperature=1.0, top_p=0.5, seed=i) for i in range(ROWS)]
    assert set(_draw(logits, top_p)) == {0}
    # The same seeds without top_p reach the other tokens, so the set above was cut.
    plain = [SamplingParams(temperature=1.0, seed=i) for i in range(ROWS)]
    assert set(_draw(logits, plain)) == {0, 1, 2}


def test_a_top_p_row_beside_a_plain_row_is_cut_and_the_plain_row_is_not():
    """Alternate top_p 0.5 rows with plain rows (top_p 1, top_k 0): the top_p rows keep only
    the first token; each plain row draws what it draws with its seed alone."""
    logits = torch.log(torch.tensor([PROBS])).repeat(ROWS, 1)
    params = [SamplingParams(temperature=1.0, top_p=0.5 if i % 2 == 0 else 1.0, seed=i)
              for i in range(ROWS)]
    drawn = _draw(logits, params)
    assert set(drawn[0::2]) == {0}
    plain = params[1::2]
    alone = [_draw(logits[:1], [p])[0] for p in plain]
    assert drawn[1::2] == alone
    assert set(alone) == {0, 1, 2}  # the plain rows do reach the tail


def test_a_prefix_mass_equal_to_top_p_ends_the_set():
    """top_p keeps "the smallest set whose probability reaches top_p": on 4 equal logits
    (each token 0.25, every prefix mass exact in binary) top_p 0.5 keeps 2 tokens, not 3
    (review s50 tests 6: `before > p` kept the third token, whose prefix mass is exactly
    0.5)."""
    logits = torch.zeros(4, 4)
    top_ps = [0.25, 0.5, 0.75, 1.0]
    probs = torch.softmax(logits, dim=-1)
    assert probs.eq(0.25).all()  # exact: the boundary below is an equality, not a rounding
    kept = torch.isfinite(_top_k_top_p(logits, [0] * 4, top_ps)).sum(dim=-1)
    assert kept.tolist() == [1, 2, 3, 4]
    # Two equal tokens, top_p 0.5: one of them reaches it alone.
    assert torch.isfinite(_top_k_top_p(torch.zeros(1, 2), [0], [0.5])).sum().item() == 1

