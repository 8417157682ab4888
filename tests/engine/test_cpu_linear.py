"""kvsaga.engine.cpu_linear: fp32 linears through oneDNN and the small GEMM, both reading the
weight in place, agree with F.linear, and every case they do not cover (other dtypes,
other devices, no oneDNN) takes F.linear unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kvsaga.engine import cpu_linear
from kvsaga.engine.loader import load_model

from .helpers import forward_all

needs_onednn = pytest.mark.skipif(
    not getattr(cpu_linear.pack(torch.ones(2, 2)), "onednn", False),
    reason="this torch has no usable oneDNN linear",
)


@needs_onednn
@pytest.mark.parametrize("rows", [1, 7, 300])
@pytest.mark.parametrize("with_bias", [False, True])
def test_packed_linear_matches_f_linear(rows, with_bias):
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(96, 40, generator=g)
    b = torch.randn(96, generator=g) if with_bias else None
    x = torch.randn(rows, 40, generator=g)
    packed = cpu_linear.pack(w, b)
    assert packed is not None
    torch.testing.assert_close(cpu_linear.linear(x, w, b, packed), F.linear(x, w, b))
    # A strided input (a column slice, as split heads give) reads the same values.
    wide = torch.randn(rows, 64, generator=g)[:, 10:50]
    torch.testing.assert_close(cpu_linear.linear(wide, w, b, packed), F.linear(wide, w, b))


@pytest.mark.parametrize(
    "weight",
    [
        torch.ones(8, 4, dtype=torch.float16),
        torch.ones(8, 4, dtype=torch.bfloat16),
        torch.ones(8, dtype=torch.float32),
        torch.ones(2, 8, 4, dtype=torch.float32),
    ],
    ids=["fp16", "bf16", "1-d", "3-d"],
)
def test_pack_declines_what_it_does_not_cover(weight):
    assert cpu_linear.pack(weight) is None


def test_pack_declines_without_onednn(monkeypatch):
    """No oneDNN: the small GEMM alone where this CPU has it (many rows take F.linear),
    else nothing."""
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    g = torch.Generator().manual_seed(4)
    w = torch.randn(8, 4, generator=g)
    packed = cpu_linear.pack(w)
    if cpu_linear.ISA:
        assert packed is not None and packed.small and not packed.onednn
        for rows in (2, cpu_linear.SMALL_ROWS + 5):
            x = torch.randn(rows, 4, generator=g)
            torch.testing.assert_close(cpu_linear.linear(x, w, None, packed), F.linear(x, w))
    else:
        assert packed is None
    monkeypatch.setattr(cpu_linear, "ISA", 0)
    assert cpu_linear.pack(w) is None


def test_pack_copies_nothing():
    """The weight is held once: what `pack` returns holds no tensor."""
    packed = cpu_linear.pack(torch.randn(64, 32))
    if packed is None:
        pytest.skip("neither oneDNN nor the small GEMM runs here")
    assert not any(isinstance(f, torch.Tensor) for f in packed)
    assert not any(isinstance(f, torch.Tensor) for f in packed.source)
    assert packed.storage is None  # only "packed" holds the storage (to pin its address)


@needs_onednn
def test_non_fp32_input_takes_f_linear():
    """A model cast after packing: the stale fp32 copy is not used for bf16 inputs."""
    w = torch.randn(16, 8)
    packed = cpu_linear.pack(w)
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    out = cpu_linear.linear(x, w.to(torch.bfloat16), None, packed)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, F.linear(x, w.to(torch.bfloat16)))


@needs_onednn
@pytest.mark.parametrize("mode", ["once", "packed"])
@pytest.mark.parametrize("needs_grad", ["x", "weight", "bias"])
@pytest.mark.parametrize("rows", [4, 40], ids=["small GEMM rows", "oneDNN rows"])
def test_an_input_requiring_grad_takes_f_linear(mode, needs_grad, rows):
    """The small GEMM and oneDNN have no backward: with grad enabled and any input requiring
    grad, `linear` is F.linear, so the graph is recorded and backward gives F.linear's
    gradient (before, the result was detached or the gradient silently None)."""
    g = torch.Generator().manual_seed(6)
    w, b = torch.randn(64, 32, generator=g), torch.randn(64, generator=g)
    packed = cpu_linear.pack(w, b, mode)
    x = torch.randn(rows, 32, generator=g)
    leaf = {"x": x, "weight": w, "bias": b}[needs_grad].requires_grad_()
    F.linear(x, w, b).pow(2).sum().backward()
    want, leaf.grad = leaf.grad, None
    out = cpu_linear.linear(x, w, b, packed)
    assert out.requires_grad
    out.pow(2).sum().backward()
    assert leaf.grad is not None
    torch.testing.assert_close(leaf.grad, want)


@needs_onednn
@pytest.mark.parametrize("mode", ["once", "packed"])
@pytest.mark.parametrize("change", ["in place", "new storage", "transposed"])
@pytest.mark.parametrize("rows", [3, 20])
def test_a_weight_changed_after_packing_takes_f_linear(change, mode, rows):
    """The packed copies hold the old values, and both paths read rows: after `copy_` (as
    `load_state_dict` does), a new tensor behind the parameter, or its transpose (same
    pointer, shape and version, other strides), the forward uses the weight as it is now."""
    g = torch.Generator().manual_seed(5)
    layer = torch.nn.Linear(16, 16, bias=False)
    packed = cpu_linear.pack(layer.weight, None, mode)
    new = torch.randn(16, 16, generator=g)
    with torch.no_grad():
        if change == "in place":
            layer.weight.copy_(new)
        elif change == "new storage":
            layer.weight.data = new
        else:
            layer.weight.data = layer.weight.data.t()
    x = torch.randn(rows, 16, generator=g)
    torch.testing.assert_close(cpu_linear.linear(x, layer.weight, None, packed),
                               F.linear(x, layer.weight))


@needs_onednn
@pytest.mark.parametrize("mode", ["once", "packed"])
def test_a_new_weight_at_the_old_address_is_not_taken_for_the_packed_one(mode):
    """A new weight behind the parameter that the allocator put at the old one's address
    (same shape, strides and version): "packed" holds the old storage, so its address is not
    handed out while the copies live; "once" reads whatever is there. Without the hold, the
    (96, 40) case found the old address in each of 10 tries here."""
    for shape in [(16, 8), (96, 40), (512, 256)]:
        g = torch.Generator().manual_seed(shape[0])
        for _ in range(5):
            w = torch.nn.Parameter(torch.randn(*shape, generator=g))
            packed = cpu_linear.pack(w, None, mode)
            old = w.data_ptr()
            w.data = torch.empty(0)  # the old storage is freed unless something holds it
            pool = [torch.empty(*shape) for _ in range(8)]
            same = [t for t in pool if t.data_ptr() == old]
            assert mode == "once" or not same
            w.data = (same or pool)[0].normal_(generator=g)
            x = torch.randn(3, shape[1], generator=g)
            # A stale weight would be off by O(1); the two kernels' sums of up to 256
            # products differ in order, and oneDNN's order follows the buffers' alignment
            # (CI once read 1.2e-5 at (512, 256), over the float32 default of 1e-5).
            torch.testing.assert_close(cpu_linear.linear(x, w, None, packed), F.linear(x, w),
                                       rtol=1e-4, atol=1e-4)


@needs_onednn
@pytest.mark.parametrize("mode", ["once", "packed"])
def test_a_write_through_data_needs_pack_again(mode, tiny_model_dir):
    """A write through `.data` moves no version counter that `linear` can see (documented):
    "once" reads the weight in place, so it is right at once; "packed" is right again after
    `pack_weights()`, as the docstrings say."""
    model = load_model(tiny_model_dir("qwen2_bias_tied"), dtype=torch.float32, device="cpu",
                       progress=False).model
    model.pack_weights(mode)
    mlp = model.layers[0].mlp
    assert mlp.down_proj.data._version == 0  # a fresh alias: nothing to detect it by
    mlp.down_proj.data.mul_(2.0)
    assert mlp.down_proj._version == 0
    if mode == "packed":
        model.pack_weights(mode)
    g = torch.Generator().manual_seed(6)
    for rows in (3, 20):
        x = torch.randn(rows, mlp.down_proj.shape[1], generator=g)
        torch.testing.assert_close(cpu_linear.linear(x, mlp.down_proj, None, mlp.down_packed),
                                   F.linear(x, mlp.down_proj))


def test_inference_tensors_are_not_packed():
    """A weight made under inference_mode has no version counter to tell a later change."""
    with torch.inference_mode():
        w = torch.randn(16, 8)
    assert cpu_linear.pack(w) is None


@needs_onednn
def test_model_packs_on_load_and_matches_the_plain_path(tiny_model_dir):
    """load_weights packs every projection and the LM head; the packed forward's logits equal
    the F.linear forward's within fp32 rounding, and greedy picks agree."""
    model = load_model(tiny_model_dir("qwen2_bias_tied"), dtype=torch.float32, device="cpu",
                       progress=False).model
    packs = [model.lm_head_packed]
    for layer in model.layers:
        packs += [layer.attn.qkv_packed, layer.attn.o_packed]
        packs += [layer.mlp.gate_up_packed, layer.mlp.down_packed]
    assert all(p is not None and p.onednn for p in packs)
    assert all(p.small == (cpu_linear.ISA != 0) for p in packs)
    ids = list(range(3, 40))
    packed_logits = forward_all(model, ids)
    model.lm_head_packed = None
    for layer in model.layers:
        layer.attn.qkv_packed = layer.attn.o_packed = None
        layer.mlp.gate_up_packed = layer.mlp.down_packed = None
    plain_logits = forward_all(model, ids)
    torch.testing.assert_close(packed_logits, plain_logits, atol=2e-4, rtol=1e-4)
    assert torch.equal(packed_logits.argmax(-1), plain_logits.argmax(-1))
    model.pack_weights()
    # A few rows (decode-sized: the small GEMM where this CPU has it) match as well.
    few = forward_all(model, ids[:5])
    torch.testing.assert_close(few, plain_logits[:5], atol=2e-4, rtol=1e-4)
    assert torch.equal(few.argmax(-1), plain_logits[:5].argmax(-1))
    model.pack_weights()
    assert model.layers[0].mlp.down_packed is not None


def test_pack_declines_a_kernel_that_disagrees(monkeypatch):
    """The probe: a oneDNN that runs but computes something else leaves F.linear in place."""

    class WrongOps:
        @staticmethod
        def _reorder_linear_weight(w, rows):
            return w

        @staticmethod
        def _linear_pointwise(x, w, bias, *_):
            return F.linear(x, w, bias) * 1.01

    monkeypatch.setattr(cpu_linear, "_onednn_linear", lambda: WrongOps)
    packed = cpu_linear.pack(torch.randn(16, 8))
    assert packed is None or (packed.small and not packed.onednn)
    monkeypatch.setattr(cpu_linear, "ISA", 0)
    assert cpu_linear.pack(torch.randn(16, 8)) is None


@needs_onednn
def test_smollm_packs_every_projection(smollm):
    """On the real checkpoint every weight passes the probe (a too-strict probe once left
    one layer's down projection on F.linear)."""
    model = smollm.model
    assert model.lm_head_packed is not None
    for layer in model.layers:
        packs = (layer.attn.qkv_packed, layer.attn.o_packed, layer.mlp.gate_up_packed,
                 layer.mlp.down_packed)
        assert all(p is not None for p in packs)


needs_small_gemm = pytest.mark.skipif(
    cpu_linear.ISA == 0, reason="no small-GEMM tiles on this CPU (or not built)")


@needs_onednn
@needs_small_gemm
def test_few_rows_take_the_small_gemm_and_more_take_onednn(monkeypatch):
    """Up to SMALL_ROWS rows (a decode step's) through kvsaga's small GEMM, more through
    oneDNN; both agree with F.linear."""
    g = torch.Generator().manual_seed(11)
    w, b = torch.randn(96, 40, generator=g), torch.randn(96, generator=g)
    packed = cpu_linear.pack(w, b)
    assert packed.small and packed.onednn
    calls = []
    real = cpu_linear._small
    monkeypatch.setattr(cpu_linear, "_small", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    for rows in (1, cpu_linear.SMALL_ROWS, cpu_linear.SMALL_ROWS + 1):
        x = torch.randn(rows, 40, generator=g)
        torch.testing.assert_close(cpu_linear.linear(x, w, b, packed), F.linear(x, w, b))
    assert calls == [1, cpu_linear.SMALL_ROWS]
    # A column slice (rows with a stride) still takes it; a weight changed since packing
    # does not (F.linear on the weight as it is).
    wide = torch.randn(3, 64, generator=g)[:, 10:50]
    torch.testing.assert_close(cpu_linear.linear(wide, w, b, packed), F.linear(wide, w, b))
    assert calls[-1] == 3
    with torch.no_grad():
        w.mul_(2)
    x = torch.randn(2, 40, generator=g)
    torch.testing.assert_close(cpu_linear.linear(x, w, b, packed), F.linear(x, w, b))
    assert len(calls) == 3


@needs_onednn
@needs_small_gemm
def test_more_threads_without_a_team_keep_onednn(monkeypatch):
    """With more than one thread and no OpenMP team to join, the small GEMM would run on
    the caller alone: oneDNN (which has its threads) runs instead."""
    w = torch.randn(64, 32)
    packed = cpu_linear.pack(w)
    monkeypatch.setattr(cpu_linear.inplace, "team_address", lambda: 0)
    monkeypatch.setattr(cpu_linear, "_small", lambda *a: pytest.fail("small GEMM taken"))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(3, 32)
        torch.testing.assert_close(cpu_linear.linear(x, w, None, packed), F.linear(x, w))
    finally:
        torch.set_num_threads(before)


@needs_onednn
@needs_small_gemm
def test_pack_keeps_onednn_when_the_small_gemm_disagrees(monkeypatch):
    """The small GEMM gets the same probe as oneDNN: a kernel computing something else
    leaves that weight on oneDNN."""
    real = cpu_linear._small
    monkeypatch.setattr(cpu_linear, "_small", lambda *a: real(*a) * 1.01)
    packed = cpu_linear.pack(torch.randn(16, 8))
    assert packed is not None and packed.onednn and not packed.small


@needs_onednn
@needs_small_gemm
def test_the_small_gemm_uses_the_bias_as_it_is_now(monkeypatch):
    """The bias is read at each call, not from pack time: changed in place after packing,
    or None where the weight was packed with one, a few rows give F.linear's result."""
    g = torch.Generator().manual_seed(12)
    w, b = torch.randn(96, 40, generator=g), torch.randn(96, generator=g)
    packed = cpu_linear.pack(w, b)
    assert packed.small
    calls = []
    real = cpu_linear._small
    monkeypatch.setattr(cpu_linear, "_small", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(2, 40, generator=g)
    with torch.no_grad():
        b.add_(1)
    torch.testing.assert_close(cpu_linear.linear(x, w, b, packed), F.linear(x, w, b))
    torch.testing.assert_close(cpu_linear.linear(x, w, None, packed), F.linear(x, w))
    # a bias the kernel cannot read (another dtype, or a stride) is copied or left to oneDNN
    strided = torch.randn(192, generator=g)[::2]
    torch.testing.assert_close(cpu_linear.linear(x, w, strided, packed),
                               F.linear(x, w, strided))
    assert len(calls) == 3


@needs_onednn
@pytest.mark.parametrize("mode", ["once", "packed"])
@pytest.mark.parametrize("view", [(4, 8), (8, 16), (4, 32)])
@pytest.mark.parametrize("rows", [3, 20])
def test_a_weight_reshaped_after_packing_takes_f_linear(view, rows, mode):
    """A `.data` view of the same storage keeps the pointer and the version counter but
    changes N or K: the packed copies (laid out for the old shape) are not used."""
    layer = torch.nn.Linear(8, 16, bias=False)
    packed = cpu_linear.pack(layer.weight, None, mode)
    layer.weight.data = layer.weight.data.view(-1)[:view[0] * view[1]].view(view)
    x = torch.randn(rows, view[1])
    torch.testing.assert_close(cpu_linear.linear(x, layer.weight, None, packed),
                               F.linear(x, layer.weight))


def test_weights_mode_reads_the_environment(monkeypatch):
    """Unset: packed up to PACKED_MAX_BYTES of linear weights, once past it; the variable
    overrides either way; anything else is refused by name."""
    monkeypatch.delenv(cpu_linear.WEIGHTS_ENV, raising=False)
    assert cpu_linear.weights_mode(cpu_linear.PACKED_MAX_BYTES) == "packed"
    assert cpu_linear.weights_mode(cpu_linear.PACKED_MAX_BYTES + 1) == "once"
    monkeypatch.setenv(cpu_linear.WEIGHTS_ENV, "once")
    assert cpu_linear.weights_mode(1) == "once"
    monkeypatch.setenv(cpu_linear.WEIGHTS_ENV, "packed")
    assert cpu_linear.weights_mode(1 << 40) == "packed"
    monkeypatch.setenv(cpu_linear.WEIGHTS_ENV, "")  # set but empty: as unset
    assert cpu_linear.weights_mode(cpu_linear.PACKED_MAX_BYTES + 1) == "once"
    monkeypatch.setenv(cpu_linear.WEIGHTS_ENV, "twice")
    with pytest.raises(ValueError, match="KVSAGA_CPU_WEIGHTS.*'twice'"):
        cpu_linear.weights_mode(1)
    with pytest.raises(ValueError, match="mode"):
        cpu_linear.pack(torch.randn(4, 4), None, "twice")


@needs_onednn
@pytest.mark.parametrize("rows", [1, cpu_linear.SMALL_ROWS, cpu_linear.SMALL_ROWS + 1, 300])
def test_packed_mode_copies_and_matches_f_linear(rows):
    """"packed": oneDNN's reordered copy and (with tiles) the column-group copy are made
    and used; every row count still gives F.linear's result."""
    g = torch.Generator().manual_seed(21)
    w, b = torch.randn(96, 40, generator=g), torch.randn(96, generator=g)
    packed = cpu_linear.pack(w, b, "packed")
    assert packed.tensor is not None and packed.tensor.is_mkldnn
    assert (packed.rows is not None) == (cpu_linear.GROUP != 0)
    x = torch.randn(rows, 40, generator=g)
    torch.testing.assert_close(cpu_linear.linear(x, w, b, packed), F.linear(x, w, b))


@needs_onednn
def test_model_modes_agree(tiny_model_dir):
    """The same model held once and packed: logits within fp32 rounding, the same greedy
    picks; "once" holds no copy, "packed" one of each per weight."""
    model = load_model(tiny_model_dir("qwen2_bias_tied"), dtype=torch.float32, device="cpu",
                       progress=False).model
    ids = list(range(3, 40))
    out = {}
    for mode in ("once", "packed"):
        model.pack_weights(mode)
        assert model.weights_mode == mode
        packs = [model.lm_head_packed] + [p for layer in model.layers for p in (
            layer.attn.qkv_packed, layer.attn.o_packed, layer.mlp.gate_up_packed,
            layer.mlp.down_packed)]
        assert all((p.tensor is not None) == (mode == "packed") for p in packs)
        out[mode] = (forward_all(model, ids), forward_all(model, ids[:5]))
    for a, b in zip(out["once"], out["packed"], strict=True):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)
        assert torch.equal(a.argmax(-1), b.argmax(-1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_weights_env_is_read_only_where_it_applies(monkeypatch, tiny_model_dir, dtype):
    """KVSAGA_CPU_WEIGHTS chooses how fp32 CPU weights are held; a half-precision model
    packs nothing, so a bad value does not fail its load (an fp32 load names it)."""
    monkeypatch.setenv(cpu_linear.WEIGHTS_ENV, "twice")
    model = load_model(tiny_model_dir("qwen2_bias_tied"), dtype=dtype, device="cpu",
                       progress=False).model
    assert model.weights_mode == "once" and model.lm_head_packed is None
    with pytest.raises(ValueError, match="KVSAGA_CPU_WEIGHTS"):
        load_model(tiny_model_dir("qwen2_bias_tied"), dtype=torch.float32, device="cpu",
                   progress=False)
