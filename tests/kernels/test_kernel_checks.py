"""The dispatcher rejects bad arguments with a typed error naming the argument and value."""

from __future__ import annotations

import pytest
import torch

import kvsaga.kernels as kernels

BS, HKV, D, NB = 16, 2, 64, 5


@pytest.fixture
def kv() -> torch.Tensor:
    return torch.zeros(NB, 2, 2, BS, HKV, D)


def _kv_rows(n: int, dtype=torch.float32) -> torch.Tensor:
    return torch.zeros(n, HKV, D, dtype=dtype)


def _slots(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


@pytest.mark.parametrize(
    "change,error,match",
    [
        (dict(key=_kv_rows(2, torch.float64)), TypeError, r"key.dtype torch.float64 != k_cache"),
        (dict(key=_kv_rows(2, torch.float16)), TypeError, r"key.dtype torch.float16 != k_cache"),
        (dict(key=torch.zeros(2, HKV, D + 1)), ValueError, r"key shape \(2, 2, 65\)"),
        (dict(value=torch.zeros(2, HKV, 2 * D)[..., ::2]), ValueError, r"value must be contig"),
        # The range messages are matched up to "-1 skips", which only the Python check
        # writes: the C++ row copy's own check says the rest too (review s50 tests 2).
        (dict(slot_mapping=_slots(3, 80)), ValueError,
         r"slot_mapping\[1\] = 80 is out of range: the cache has 80 slots \(5 blocks of 16\); "
         r"-1 skips"),
        (dict(slot_mapping=_slots(-2, 0)), ValueError,
         r"slot_mapping\[0\] = -2 is out of range: .*; -1 skips"),
        (dict(slot_mapping=_slots(5, 5)), ValueError, r"slot 5 more than once"),
        (dict(slot_mapping=_slots(0, 0)), ValueError, r"slot 0 more than once"),
        (dict(slot_mapping=_slots(1, 2).int()), TypeError, r"slot_mapping.dtype is torch.int32"),
        (dict(slot_mapping=_slots(1)), ValueError, r"slot_mapping has 1 entries, expected 2"),
        (dict(key=torch.zeros(2, HKV, D, device="meta")), ValueError, r"key is on meta"),
        (dict(key=[[0.0]]), TypeError, r"key must be a torch.Tensor, got list"),
        (dict(k_cache=[[0.0]]), TypeError, r"k_cache must be a torch.Tensor, got list"),
        (dict(k_cache=torch.zeros(NB, 0, HKV, D), v_cache=torch.zeros(NB, 0, HKV, D),
              slot_mapping=_slots(-1, -1)),
         ValueError, r"k_cache has block_size 0 \(shape \(5, 0, 2, 64\)\)"),
    ],
)
@pytest.mark.parametrize("mode", ["auto", "torch", "triton"])
def test_cache_write_rejects(kv, monkeypatch, mode, change, error, match):
    """On every dispatch path the dispatcher's check refuses the call before any kernel runs:
    the kernels are replaced by a failure here, so a check that lets a bad call through
    fails the test rather than reaching a kernel (the C++ copy's own range check, whose
    message looks the same; the torch reference's IndexError; Triton's out-of-bounds write,
    a segfault under the interpreter)."""
    monkeypatch.setenv("KVSAGA_KERNELS", mode)
    _no_cache_write_kernel(monkeypatch)
    args = dict(key=_kv_rows(2), value=_kv_rows(2), k_cache=kv[:, 0, 0], v_cache=kv[:, 0, 1],
                slot_mapping=_slots(0, 17))
    args.update(change)
    with pytest.raises(error, match=match):
        kernels.cache_write(**args)


def _no_cache_write_kernel(monkeypatch) -> None:
    def reached(*args, **kwargs):
        pytest.fail("a cache_write kernel ran: the dispatcher's check let the call through")

    monkeypatch.setattr(kernels.inplace, "cache_write", reached)
    monkeypatch.setattr(kernels.reference, "cache_write", reached)
    monkeypatch.setattr(kernels, "_triton_module", reached)


@pytest.mark.parametrize("mode", ["auto", "torch", "triton"])
def test_cache_write_skips_repeated_padding(kv, monkeypatch, mode):
    """Slots other than -1 must be distinct; -1 (a padding token, skipped) may repeat."""
    monkeypatch.setenv("KVSAGA_KERNELS", mode)
    kernels.cache_write(_kv_rows(3) + 1, _kv_rows(3) + 2, kv[:, 0, 0], kv[:, 0, 1],
                        _slots(-1, 17, -1))
    assert bool((kv[1, 0, 0, 1] == 1).all()) and bool((kv[1, 0, 1, 1] == 2).all())
    assert int(kv.ne(0).sum()) == 2 * HKV * D  # that one row of K and of V


def test_cache_write_with_a_repeated_slot_writes_nothing(kv):
    """The auto path's real kernels: the C++ row copy checks only the range of each slot
    (with validation off, the later layers, it is the memory guard), so the dispatcher's
    check refuses a repeated slot before it runs, slot 0 included."""
    with pytest.raises(ValueError, match=r"slot_mapping holds slot 0 more than once"):
        kernels.cache_write(_kv_rows(3) + 1, _kv_rows(3) + 2, kv[:, 0, 0], kv[:, 0, 1],
                            _slots(0, 17, 0))
    assert not kv.any()


def test_cache_write_cache_strides(kv):
    every_other = torch.zeros(NB, BS, HKV, 2 * D)[..., ::2]  # last-dim stride 2
    with pytest.raises(ValueError, match=r"k_cache must be contiguous in its last dim"):
        kernels.cache_write(_kv_rows(1), _kv_rows(1), every_other, every_other, _slots(0))


def _attention_args(kv, **change):
    args = dict(
        query=torch.zeros(3, 2 * HKV, D),
        k_cache=kv[:, 1, 0],
        v_cache=kv[:, 1, 1],
        block_tables=torch.tensor([[4, 0], [2, -1]], dtype=torch.int32),
        seq_lens=torch.tensor([20, 3], dtype=torch.int32),
        query_start_loc=torch.tensor([0, 2, 3], dtype=torch.int32),
        scale=0.125,
    )
    args.update(change)
    return args


@pytest.mark.parametrize(
    "change,error,match",
    [
        (dict(block_tables=torch.tensor([[4, 9], [2, -1]], dtype=torch.int32)), ValueError,
         r"block_tables\[0, 1\] = 9 is out of range for a cache of 5 blocks"),
        (dict(block_tables=torch.tensor([[4, -1], [2, -1]], dtype=torch.int32)), ValueError,
         r"block_tables\[0, 1\] = -1"),
        (dict(seq_lens=torch.tensor([33, 3], dtype=torch.int32)), ValueError,
         r"seq_lens\[0\] = 33 must .* fit its block table of 2 blocks"),
        (dict(seq_lens=torch.tensor([20, 0], dtype=torch.int32)), ValueError,
         r"seq_lens\[1\] = 0 must be at least its query length 1"),
        (dict(seq_lens=torch.tensor([20, 3])), TypeError, r"seq_lens.dtype is torch.int64"),
        (dict(query_start_loc=torch.tensor([0, 2], dtype=torch.int32)), ValueError,
         r"query_start_loc has 2 entries, expected batch \+ 1 = 3"),
        (dict(query_start_loc=torch.tensor([0, 2, 4], dtype=torch.int32)), ValueError,
         r"query_start_loc\[-1\] = 4 exceeds the 3 query tokens"),
        (dict(query_start_loc=torch.tensor([1, 2, 3], dtype=torch.int32)), ValueError,
         r"query_start_loc\[0\] = 1"),
        (dict(query=torch.zeros(3, 3, D)), ValueError,
         r"num_heads 3 is not a multiple of num_kv_heads 2"),
        (dict(query=torch.zeros(3, 4, 32)), ValueError, r"query head_dim 32 != k_cache"),
        (dict(query=torch.zeros(3, 4, D, dtype=torch.float16)), TypeError, r"query.dtype"),
        (dict(max_query_len=1), ValueError, r"max_query_len = 1 < the longest query 2"),
        (dict(max_seq_len=19), ValueError, r"max_seq_len = 19 < the longest sequence 20"),
        (dict(max_seq_len=-1), ValueError, r"max_seq_len must be a non-negative int"),
        (dict(out=torch.zeros(3, 4, D, dtype=torch.float16)), TypeError, r"out.dtype"),
        (dict(out=torch.zeros(2, 4, D)), ValueError, r"out shape \(2, 4, 64\)"),
        (dict(scale="0.1"), TypeError, r"scale must be a float, got str"),
        (dict(out=torch.zeros(3, 1, D).expand(-1, 4, -1)), ValueError,
         r"out overlaps itself \(shape \(3, 4, 64\), strides \(64, 0, 1\)\)"),
        (dict(out=torch.zeros(1, 4, D).expand(3, -1, -1)), ValueError,
         r"out overlaps itself \(shape \(3, 4, 64\), strides \(0, 64, 1\)\)"),
        (dict(out=torch.zeros(416).as_strided((3, 4, D), (2 * D, D // 2, 1))), ValueError,
         r"out overlaps itself .*strides \(128, 32, 1\)"),  # heads half overlap
        (dict(k_cache=[0.0]), TypeError, r"k_cache must be a torch.Tensor, got list"),
        (dict(k_cache=torch.zeros(NB, 0, HKV, D), v_cache=torch.zeros(NB, 0, HKV, D)),
         ValueError, r"k_cache has block_size 0 \(shape \(5, 0, 2, 64\)\)"),
    ],
)
def test_paged_attention_rejects(kv, change, error, match):
    with pytest.raises(error, match=match):
        kernels.paged_attention(**_attention_args(kv, **change))


def test_paged_attention_accepts_the_baseline(kv):
    assert kernels.paged_attention(**_attention_args(kv)).shape == (3, 4, D)


def test_out_may_be_the_query_or_a_head_strided_view(kv):
    """Only an `out` overlapping itself is refused: the query itself (written over) and a
    view with padded head rows are not overlaps."""
    g = torch.Generator().manual_seed(0)
    kv.copy_(torch.randn(kv.shape, generator=g))
    query = torch.randn(3, 2 * HKV, D, generator=g)
    want = kernels.paged_attention(**_attention_args(kv, query=query.clone()))
    padded = torch.zeros(3, 2 * HKV + 1, D)[:, 1:]
    kernels.paged_attention(**_attention_args(kv, query=query.clone(), out=padded))
    torch.testing.assert_close(padded, want)
    kernels.paged_attention(**_attention_args(kv, query=query, out=query))
    torch.testing.assert_close(query, want)


def test_validate_false_skips_value_checks_only(kv):
    bad = torch.tensor([[4, 0], [2, -1]], dtype=torch.int32)
    args = _attention_args(kv, block_tables=bad, max_seq_len=3)  # max_seq_len too small
    kernels.paged_attention(**args, validate=False)  # values unchecked
    with pytest.raises(TypeError, match="seq_lens.dtype"):  # metadata still checked
        kernels.paged_attention(**{**args, "seq_lens": args["seq_lens"].long()}, validate=False)


def _ids(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


@pytest.mark.parametrize(
    "src,dst,error,match",
    [
        (_ids(0, 1), _ids(2, 5), ValueError, r"dst_block_ids\[1\] = 5 is out of range"),
        (_ids(-1), _ids(2), ValueError, r"src_block_ids\[0\] = -1 is out of range"),
        (_ids(0, 1), _ids(2, 2), ValueError, r"dst_block_ids holds block 2 more than once"),
        (_ids(0, 1), _ids(1, 2), ValueError, r"dst_block_ids\[0\] = 1 is also a source"),
        (_ids(0, 1), _ids(2), ValueError, r"dst_block_ids has 1 entries, expected 2"),
        (_ids(0).int(), _ids(2), TypeError, r"src_block_ids.dtype is torch.int32"),
    ],
)
def test_block_copy_rejects(kv, src, dst, error, match):
    with pytest.raises(error, match=match):
        kernels.block_copy(kv, src, dst)


@pytest.mark.parametrize("tier", [[[0.0]], None, "numpy"], ids=["list", "None", "ndarray"])
def test_block_copies_name_a_tier_that_is_no_tensor(tier):
    """The tier is checked before its device is read (which a list, None or an ndarray,
    whose `.device` is a string, would fail on with an AttributeError)."""
    if tier == "numpy":
        tier = pytest.importorskip("numpy").zeros((2, 3))
    name = type(tier).__name__
    with pytest.raises(TypeError, match=rf"kv must be a torch.Tensor, got {name}"):
        kernels.block_copy(tier, _ids(0), _ids(1))
    with pytest.raises(TypeError, match=rf"kv must be a torch.Tensor, got {name}"):
        kernels.gather_blocks(tier, _ids(0))
    with pytest.raises(TypeError, match=rf"kv must be a torch.Tensor, got {name}"):
        kernels.scatter_blocks(torch.zeros(1, 3), tier, _ids(0))


def test_block_copies_need_contiguous_blocks(kv):
    with pytest.raises(ValueError, match=r"kv must be contiguous within each block"):
        kernels.block_copy(kv.transpose(1, 2), _ids(0), _ids(1))
    with pytest.raises(ValueError, match=r"block_ids\[0\] = 5 is out of range"):
        kernels.gather_blocks(kv, _ids(5))
    with pytest.raises(ValueError, match=r"out shape"):
        kernels.gather_blocks(kv, _ids(1, 2), out=torch.zeros(1, *kv.shape[1:]))
    with pytest.raises(TypeError, match=r"out.dtype"):
        kernels.gather_blocks(kv, _ids(1), out=torch.zeros(1, *kv.shape[1:]).half())
    staging = torch.zeros(2, *kv.shape[1:])
    with pytest.raises(ValueError, match=r"block_ids holds block 3 more than once"):
        kernels.scatter_blocks(staging, kv, _ids(3, 3))
    with pytest.raises(ValueError, match=r"staging must be contiguous"):
        kernels.scatter_blocks(staging.transpose(1, 2).contiguous().transpose(1, 2), kv, _ids(0, 1))


def test_triton_rejects_unsupported_head_dim(triton_device):
    kv = torch.zeros(3, 1, 2, 16, 1, 96, device=triton_device)
    rows = torch.zeros(1, 1, 96, device=triton_device)
    slots = torch.zeros(1, dtype=torch.int64, device=triton_device)
    with pytest.raises(ValueError, match=r"head_dim 96 is not supported by the Triton kernels"):
        kernels.cache_write(rows, rows, kv[:, 0, 0], kv[:, 0, 1], slots)


def _every_other(*values: int, dtype=torch.int64, filler: int = -1,
                 device: str = "cpu") -> torch.Tensor:
    """`values` as a strided view (stride 2), like `meta[:, 0]` of a [n, 2] tensor on `device`.
    The view is taken there: moving a CPU view (`.to(device)`) copies it contiguous."""
    pairs = torch.tensor([[v, filler] for v in values], dtype=dtype)
    assert pairs[:, 0].tolist() == list(values)
    view = pairs.to(device)[:, 0]
    assert view.stride() == (2,)
    return view


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_every_other_is_strided_on_its_device(device):
    """On CUDA the Triton test below got a contiguous copy and nothing to refuse; the meta
    device stands in for any other device here."""
    view = _every_other(3, 17, 40, device=device)
    assert view.device.type == device and view.stride() == (2,)


def _strided_calls(kv):
    """(argument name, call) for each 1-D index argument, given a stride-2 view of it."""
    k, v = kv[:, 0, 0], kv[:, 0, 1]
    staging = torch.zeros(2, *kv.shape[1:])
    attn = _attention_args(kv)
    return [
        ("slot_mapping", lambda **kw: kernels.cache_write(
            _kv_rows(2), _kv_rows(2), k, v, _every_other(0, 17), **kw)),
        ("seq_lens", lambda **kw: kernels.paged_attention(
            **{**attn, "seq_lens": _every_other(20, 3, dtype=torch.int32)}, **kw)),
        ("query_start_loc", lambda **kw: kernels.paged_attention(
            **{**attn, "query_start_loc": _every_other(0, 2, 3, dtype=torch.int32)}, **kw)),
        ("src_block_ids", lambda **kw: kernels.block_copy(kv, _every_other(0, 1), _ids(2, 3),
                                                          **kw)),
        ("dst_block_ids", lambda **kw: kernels.block_copy(kv, _ids(0, 1), _every_other(2, 3),
                                                          **kw)),
        ("block_ids", lambda **kw: kernels.gather_blocks(kv, _every_other(1, 2), **kw)),
        ("block_ids", lambda **kw: kernels.scatter_blocks(staging, kv, _every_other(1, 2),
                                                          **kw)),
    ]


@pytest.mark.parametrize("mode", ["auto", "torch"])
@pytest.mark.parametrize("validate", [None, False])
@pytest.mark.parametrize("case", range(7))
def test_strided_index_vectors_are_refused(kv, monkeypatch, mode, validate, case):
    """The Triton kernels read 1-D index tensors without a stride, so every backend refuses a
    strided one (structurally: also with validate=False, the CUDA default) and names it."""
    monkeypatch.setenv("KVSAGA_KERNELS", mode)
    before = kv.clone()
    name, call = _strided_calls(kv)[case]
    with pytest.raises(ValueError, match=rf"{name} must be contiguous \(stride 1\), got "
                                         rf"stride \(2,\)"):
        call(validate=validate)
    assert torch.equal(kv, before)  # nothing written


def test_strided_slot_mapping_refused_under_triton(kv, triton_device):
    """The Triton path, where the review's repro wrote slots 3, 17, 100, 101 for [3, 17, 40, 77]."""
    kv = kv.to(triton_device)
    slots = _every_other(3, 17, 40, 77, device=triton_device)
    assert slots.stride() == (2,)
    rows = _kv_rows(4).to(triton_device) + 1
    with pytest.raises(ValueError, match=r"slot_mapping must be contiguous"):
        kernels.cache_write(rows, rows, kv[:, 0, 0], kv[:, 0, 1], slots)
    assert not kv.any()


def test_one_entry_views_are_contiguous(kv):
    """A view of one entry reads the same at any stride: it is accepted."""
    kernels.cache_write(_kv_rows(1) + 1, _kv_rows(1) + 2, kv[:, 0, 0], kv[:, 0, 1],
                        _every_other(17))
    assert bool((kv[1, 0, 0, 1] == 1).all()) and bool((kv[1, 0, 1, 1] == 2).all())
