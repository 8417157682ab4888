"""paged_attention: the reference against dense SDPA, the Triton kernels against the reference.

Shapes are tiny: under the interpreter every program runs in Python.
"""

from __future__ import annotations

import pytest
import torch
from paged_case import GUARD, TOLERANCES, PagedCase, dense_attention, make_case

import kvsaga.kernels as kernels
from kvsaga.kernels import reference

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
GROUPS = (1, 3, 4, 8)  # query heads per KV head; 8 goes with one KV head (MQA-like)


def _id(value: object) -> str | None:
    return str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else None


# Ragged context lengths around block boundaries, several blocks, and a long one.
def _ragged(block_size: int) -> list[int]:
    return [1, block_size - 1, block_size, block_size + 1, 3 * block_size + 5, 300]


def _kv_heads(group: int) -> int:
    return 1 if group == 8 else 2


def _decode_case(dtype, group, head_dim, block_size, device, seed=0) -> PagedCase:
    seq_lens = [*_ragged(block_size), 20]
    query_lens = [1] * (len(seq_lens) - 1) + [0]  # the last sequence has no token this step
    return make_case(seq_lens, query_lens, block_size=block_size, num_kv_heads=_kv_heads(group),
                     group=group, head_dim=head_dim, dtype=dtype, device=device, seed=seed)


def _extend_case(dtype, group, head_dim, block_size, device, seed=0) -> PagedCase:
    # (context, new tokens): prefill from scratch, decode inside a mixed batch, extends over
    # cached prefixes, a sequence with no new token, and a query longer than one tile (64).
    pairs = [(block_size - 1, block_size - 1), (block_size, 1), (block_size + 1, 2),
             (3 * block_size + 5, 20), (17, 0), (300, 70)]
    return make_case([c for c, _ in pairs], [q for _, q in pairs], block_size=block_size,
                     num_kv_heads=_kv_heads(group), group=group, head_dim=head_dim,
                     dtype=dtype, device=device, seed=seed)


def _assert_matches(case: PagedCase, out: torch.Tensor, expected: torch.Tensor) -> None:
    n = case.query.shape[0] - case.num_pad_rows
    atol, rtol = TOLERANCES[case.query.dtype]
    assert out.dtype == case.query.dtype
    assert not out[:n].isnan().any(), "NaN in the output: a poisoned slot was read"
    torch.testing.assert_close(out[:n].float(), expected[:n].float(), atol=atol, rtol=rtol)
    assert (out[n:] == GUARD).all(), "padding output rows were written"


@pytest.mark.parametrize("make", [_decode_case, _extend_case], ids=["decode", "extend"])
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_reference_matches_dense_sdpa(make, group, head_dim):
    case = make(torch.float32, group, head_dim, 16, "cpu", seed=group)
    out = reference.paged_attention(case.attention_args(), case.guarded_out())
    _assert_matches(case, out, dense_attention(case))


# (head_dim, block_size): each dtype x group sees two; group 4 sees all four.
SHAPES = [(64, 16), (128, 32)]
GRID = [(d, g, h, b) for d in DTYPES for g in GROUPS for h, b in SHAPES] + [
    (d, 4, h, b) for d in DTYPES for h, b in [(64, 32), (128, 16)]
]


@pytest.mark.parametrize("dtype,group,head_dim,block_size", GRID, ids=_id)
def test_decode_matches_reference(triton_device, dtype, group, head_dim, block_size):
    case = _decode_case(dtype, group, head_dim, block_size, triton_device)
    out = kernels.paged_attention(*case.args(), max_query_len=1, out=case.guarded_out())
    expected = reference.paged_attention(case.attention_args(), case.guarded_out())
    _assert_matches(case, out, expected)


EXTEND_GRID = [
    (d, g, *SHAPES[(i + j) % 2]) for i, d in enumerate(DTYPES) for j, g in enumerate(GROUPS)
]


@pytest.mark.parametrize("dtype,group,head_dim,block_size", EXTEND_GRID, ids=_id)
def test_extend_matches_reference(triton_device, dtype, group, head_dim, block_size):
    case = _extend_case(dtype, group, head_dim, block_size, triton_device)
    out = kernels.paged_attention(*case.args(), out=case.guarded_out())
    expected = reference.paged_attention(case.attention_args(), case.guarded_out())
    _assert_matches(case, out, expected)


@pytest.mark.parametrize("num_splits", [1, 3, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_id)
def test_decode_split_k(triton_device, dtype, num_splits):
    """Partitions of the context reduced across programs give the same answer."""
    case = make_case([300, 129, 64, 5], [1, 1, 1, 1], block_size=16, num_kv_heads=2, group=4,
                     head_dim=64, dtype=dtype, device=triton_device, seed=num_splits)
    attention = kernels._triton_module("attention", torch.device(triton_device))
    out = attention.paged_attention(case.attention_args(max_query_len=1), case.guarded_out(),
                                    num_splits=num_splits)
    _assert_matches(case, out, reference.paged_attention(case.attention_args(), case.guarded_out()))


def test_decode_rows_take_their_own_partitions(triton_device, monkeypatch):
    """Each row cuts its own context into min(grid splits, ceil(seq_len / `_MIN_PARTITION`))
    partitions of whole tiles, whatever the host bound: with `max_seq_len` 4,096 (a CUDA
    graph's `max_model_len`) a 300-token row still spreads over 5 partitions of 64 tokens,
    where a partition fixed by the bound (4,096 / 16 = 256) gave it 2. The count rounds up
    (what attention.py and docs/architecture.md state): a 129-token row takes 3, the last
    of 1 token, not 2 of at least `_MIN_PARTITION`. The
    partials each split writes are read from the split kernel's launch; the answer is the
    reference's."""
    attention = kernels._triton_module("attention", torch.device(triton_device))
    monkeypatch.setattr(attention, "_MIN_PARTITION", 64)
    monkeypatch.setattr(attention, "decode_num_splits", lambda *a: (16, None))
    written = {}
    kernel = attention._decode_split_kernel

    class Spy:  # records which (row, split) partials the split kernel stored
        def __getitem__(self, grid):
            def launch(*args, **kw):
                part_ml = args[7].fill_(float("nan"))
                kernel[grid](*args, **kw)
                written["splits"] = (~part_ml[:, 0, :, 0].isnan()).sum(dim=1).tolist()
            return launch

    monkeypatch.setattr(attention, "_decode_split_kernel", Spy())
    lens = [300, 129, 64, 5, 0]
    case = make_case(lens, [1, 1, 1, 1, 0], block_size=16, num_kv_heads=2, group=4,
                     head_dim=64, dtype=torch.float32, device=triton_device, seed=3)
    out = attention.paged_attention(case.attention_args(max_query_len=1, max_seq_len=4096),
                                    case.guarded_out())
    _assert_matches(case, out, reference.paged_attention(case.attention_args(), case.guarded_out()))
    block_n = attention.decode_config(64, torch.float32).BLOCK_N
    assert block_n == 64
    splits = written["splits"]  # per query token: the 4 rows', then padding tokens'
    assert splits[:4] == [5, 3, 1, 1] and not any(splits[4:])


@pytest.mark.parametrize("kind", ["decode", "extend"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_id)
def test_graph_bounds_and_padding(triton_device, dtype, kind):
    """What a CUDA graph replays (kvsaga/engine/cuda_graphs.py): host bounds of the worst
    case (`max_query_len` the token bucket, 1 for decode; `max_seq_len` a `max_model_len`
    far above every context), padding rows of length 0 with an empty query at the end, and
    padding query tokens past `query_start_loc[-1]` (NaN here: outside every row)."""
    if kind == "decode":
        pairs, bucket = [(5, 1), (300, 1), (17, 1)], 1
    else:  # decode rows, extends over cached prefixes, a fresh prompt longer than one tile
        pairs, bucket = [(9, 1), (40, 23), (70, 70), (300, 1)], 128
    tokens = sum(q for _, q in pairs)
    pairs += [(0, 0), (0, 0), (0, 0)]  # padding rows
    case = make_case([c for c, _ in pairs], [q for _, q in pairs], block_size=16,
                     num_kv_heads=2, group=4, head_dim=64, dtype=dtype, device=triton_device,
                     seed=7, num_pad_rows=4 if kind == "decode" else bucket - tokens)
    out = kernels.paged_attention(*case.args(), max_query_len=bucket, max_seq_len=4096,
                                  out=case.guarded_out())
    expected = reference.paged_attention(case.attention_args(), case.guarded_out())
    _assert_matches(case, out, expected)


def test_defaults_without_host_lengths_or_out(triton_device):
    """No max_query_len / max_seq_len / out: the launcher reads them; padding rows are 0."""
    case = _extend_case(torch.float16, 4, 64, 16, triton_device, seed=5)
    out = kernels.paged_attention(*case.args())
    expected = reference.paged_attention(case.attention_args())
    n = case.query.shape[0] - case.num_pad_rows
    atol, rtol = TOLERANCES[torch.float16]
    torch.testing.assert_close(out, expected, atol=atol, rtol=rtol)
    assert (out[n:] == 0).all()


def test_interpreter_is_used_on_cpu(triton_device, monkeypatch):
    """CPU tensors run the interpreted Triton launcher, not the CPU path: checking only that
    TRITON_INTERPRET=1 passed even where Triton's helpers were already compiled and the CPU
    path ran instead (kvsaga/kernels/__init__.py `_compiled_for_gpu`)."""
    if triton_device != "cpu":
        pytest.skip("CUDA present: the compiled kernels run instead")
    assert kernels.use_triton(torch.device("cpu")), kernels._compiled_for_gpu()
    attention = kernels._triton_module("attention", torch.device("cpu"))
    assert attention.INTERPRETED
    launched = []

    def launcher(args, out):
        launched.append(args.max_query_len)
        return real(args, out)

    real = attention.paged_attention
    monkeypatch.setattr(attention, "paged_attention", launcher)
    case = _decode_case(torch.float32, 1, 64, 16, "cpu")
    out = kernels.paged_attention(*case.args(), max_query_len=1, out=case.guarded_out())
    assert launched == [1]
    _assert_matches(case, out, reference.paged_attention(case.attention_args(),
                                                         case.guarded_out()))


@pytest.mark.gpu
@pytest.mark.parametrize("query_lens", [[1, 1, 1], [256, 1, 17]], ids=["decode", "extend"])
def test_llama_shapes_on_cuda(monkeypatch, query_lens):
    """Llama-3-8B heads (32 query, 8 KV, head_dim 128), bf16, contexts up to 4k, compiled."""
    monkeypatch.setenv("KVSAGA_KERNELS", "triton")
    case = make_case([4096, 1000, 17], query_lens, block_size=16, num_kv_heads=8, group=4,
                     head_dim=128, dtype=torch.bfloat16, device="cuda", seed=7)
    out = kernels.paged_attention(*case.args(), max_query_len=max(query_lens),
                                  max_seq_len=4096, out=case.guarded_out(), validate=True)
    _assert_matches(case, out, reference.paged_attention(case.attention_args(), case.guarded_out()))
