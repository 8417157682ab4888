"""Small ops of a decode-sized pass on the engine thread alone (`serial_below`,
KVSAGA_CPU_SERIAL_BELOW): taken where the weight, or a layer's K/V reads, are below the
threshold, the same bits as the threaded path, and bad thresholds refused by name."""

from __future__ import annotations

import pytest
import torch

from kvsaga import envs
from kvsaga.engine import cpu_linear
from kvsaga.engine.attn_metadata import AttentionMetadata
from kvsaga.engine.model import LlamaForCausalLM
from kvsaga.engine.model_config import ModelConfig
from kvsaga.kernels import inplace

from .helpers import kv_cache, run_greedy, scale_init

needs_team = pytest.mark.skipif(
    not (cpu_linear.ISA and inplace.available() and inplace.team_available()),
    reason="needs the small GEMM, the attention kernel and torch's libgomp team")


def _model(serial_below: int) -> LlamaForCausalLM:
    # gate/up and down big enough that the small GEMM splits them over two threads
    cfg = ModelConfig(architecture="llama", vocab_size=97, hidden_size=256,
                      intermediate_size=1024, num_layers=3, num_heads=4, num_kv_heads=2,
                      head_dim=64)
    model = LlamaForCausalLM(cfg)
    scale_init(model, seed=5)
    model.pack_weights(serial_below=serial_below)
    return model


def _calls(monkeypatch) -> list[tuple[str, int]]:
    """(kernel, threads) of every small-GEMM call from now on."""
    seen: list[tuple[str, int]] = []
    small, groups = cpu_linear._small, cpu_linear._small_groups

    def spy_small(x, w, b, threads, team, isa=None):
        seen.append(("small", threads))
        return small(x, w, b, threads, team, isa)

    def spy_groups(x, rows, n, threads, team, b):
        seen.append(("groups", threads))
        return groups(x, rows, n, threads, team, b)

    monkeypatch.setattr(cpu_linear, "_small", spy_small)
    monkeypatch.setattr(cpu_linear, "_small_groups", spy_groups)
    return seen


@needs_team
@pytest.mark.parametrize("mode", ["once", "packed"])
@pytest.mark.parametrize("rows", [1, 3, 16])
def test_a_serial_weight_runs_on_one_thread_with_the_same_bits(mode, rows, two_threads,
                                                               monkeypatch):
    g = torch.Generator().manual_seed(rows)
    # 1 MiB: the kernel splits it over both threads when asked to
    w, b = torch.randn(1024, 256, generator=g), torch.randn(1024, generator=g)
    x = torch.randn(rows, 256, generator=g)
    nbytes = w.numel() * 4
    threaded = cpu_linear.pack(w, b, mode, serial_below=nbytes)  # not below: threaded
    serial = cpu_linear.pack(w, b, mode, serial_below=nbytes + 1)
    assert not threaded.serial and serial.serial
    seen = _calls(monkeypatch)
    want = cpu_linear.linear(x, w, b, threaded)
    got = cpu_linear.linear(x, w, b, serial)
    assert [t for _, t in seen] == [2, 1]
    assert torch.equal(got, want)
    # 17+ rows are not the small GEMM's: oneDNN as before, whatever the flag.
    many = torch.randn(17, 256, generator=g)
    assert torch.equal(cpu_linear.linear(many, w, b, serial),
                       cpu_linear.linear(many, w, b, threaded))
    assert len(seen) == 2


@needs_team
def test_decode_passes_take_the_serial_ops_with_the_same_bits(two_threads, monkeypatch):
    """A decode pass under the threshold runs its linears and its bound attention on one
    thread; an extend-sized pass keeps the kernels' own count; logits are the same bits."""
    layer_bytes = 2 * 2 * 64 * 4  # K and V of one position, 2 KV heads of 64
    threaded, serial = _model(0), _model(1 << 30)  # the same weights (one seed)
    bound: list[int] = []
    bind = inplace.StepPlan.bind_layers

    def spy_bind(self, *a, **k):
        out = bind(self, *a, **k)
        bound.append(None if out is None else out.threads)
        return out

    monkeypatch.setattr(inplace.StepPlan, "bind_layers", spy_bind)
    seen = _calls(monkeypatch)
    prompts = [list(range(3, 40)), list(range(50, 70)), list(range(7, 90))]
    want = run_greedy(threaded, prompts, 4)
    n_threaded = len(seen)
    got = run_greedy(serial, prompts, 4)
    assert got[0] == want[0]
    for a, b in zip(got[1], want[1], strict=True):
        assert torch.equal(a, b)
    assert {t for _, t in seen[:n_threaded]} == {2}
    assert {t for _, t in seen[n_threaded:]} == {1}
    # The prefill pass (140 rows) keeps the kernel's threads, each decode pass takes one.
    half = len(bound) // 2
    assert bound[:half] == [2] * half
    assert bound[half] == 2 and bound[half + 1:] == [1] * (half - 1)
    # Above the K/V threshold a decode pass's attention keeps its threads again.
    serial.pack_weights(serial_below=layer_bytes * 10)
    meta = AttentionMetadata.build([list(range(8))], [40], [1], 16)
    assert serial._attention_threads(kv_cache(serial, 8, 16), meta, torch.zeros(1, 256)) is None
    meta = AttentionMetadata.build([list(range(8))], [9], [1], 16)
    assert serial._attention_threads(kv_cache(serial, 8, 16), meta, torch.zeros(1, 256)) == 1


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "4MiB"])
def test_a_bad_threshold_in_the_environment_fails_the_load_by_name(value, monkeypatch):
    model = _model(0)
    packed = model.layers[0].attn.qkv_packed
    monkeypatch.setenv("KVSAGA_CPU_SERIAL_BELOW", value)
    with pytest.raises(ValueError, match="KVSAGA_CPU_SERIAL_BELOW"):
        model.pack_weights()
    assert model.serial_below == 0 and model.layers[0].attn.qkv_packed is packed


def test_the_threshold_reads_the_environment_on_cpu_fp32_only(monkeypatch):
    monkeypatch.setenv("KVSAGA_CPU_SERIAL_BELOW", "12345")
    assert envs.KVSAGA_CPU_SERIAL_BELOW == 12345
    model = _model(0)
    model.pack_weights()
    assert model.serial_below == 12345
    monkeypatch.setenv("KVSAGA_CPU_SERIAL_BELOW", "")
    assert envs.KVSAGA_CPU_SERIAL_BELOW == 0  # unset or empty: the default, every op threaded
    monkeypatch.setenv("KVSAGA_CPU_SERIAL_BELOW", "bad")
    half = LlamaForCausalLM(model.config, dtype=torch.bfloat16)
    half.pack_weights()  # not read outside fp32 on CPU: a bad value cannot fail it
    assert half.serial_below == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_bad_thresholds_and_thread_counts_are_refused(bad):
    model = _model(0)
    with pytest.raises(ValueError, match="serial_below"):
        model.pack_weights(serial_below=bad)
    assert model.serial_below == 0
    with pytest.raises(ValueError, match="serial_below"):
        cpu_linear.pack(torch.ones(4, 4), serial_below=bad)


@pytest.mark.skipif(not inplace.available(), reason="kvsaga._paged_attn not built")
@pytest.mark.parametrize("bad", [0, -2, 1.0, True])
def test_bind_layers_refuses_a_bad_thread_count(bad):
    kv = torch.zeros(16, 3, 2, 8, 2, 64)
    meta = AttentionMetadata.build([[0, 1]], [2], [2], 8)
    plan = inplace.StepPlan(meta.block_tables, meta.seq_lens, meta.query_start_loc,
                            meta.slot_mapping, 0.125, 2, 2)
    cos, sin = torch.ones(2, 32), torch.zeros(2, 32)
    with pytest.raises(ValueError, match="threads must be"):
        plan.bind_layers(kv, cos, sin, 6, bad)
    assert plan.bind_layers(kv, cos, sin, 6, 1).threads == 1
