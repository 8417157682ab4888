"""A Llama-class decoder over flat token batches whose K/V live in a kvsaga tier tensor.

Covers llama (Llama 2/3/3.1/3.2, SmolLM, TinyLlama), mistral (within its sliding window) and
qwen2 (q/k/v bias): RMSNorm, RoPE (default, linear, llama3), GQA, SwiGLU, tied or untied
embeddings. There is no padding: the batch is one token dimension T, with per-sequence
boundaries in `AttentionMetadata`. Every layer writes its new K/V with
`kvsaga.kernels.cache_write` and attends with `kvsaga.kernels.paged_attention`.

Parameters use HF checkpoint names on load (`load_weights`), but q/k/v and gate/up are stored
fused so that each is one matmul. On CPU in fp32, `load_weights` also checks, for every
projection and the LM head, the paths that read the weight in place (oneDNN's linear and the
small-rows GEMM of decode steps, `kvsaga.engine.cpu_linear`), which the forward uses; a
model whose linear weights take up to 1 GiB also gets two faster copies of each
(`pack_weights`, KVSAGA_CPU_WEIGHTS), a larger one holds each weight once. The rows the
last layer keeps, and the checks of positions and of those rows, live in `kept_rows`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kvsaga import envs, kernels
from kvsaga.engine import cpu_linear, fused_ops
from kvsaga.engine.attn_metadata import AttentionMetadata
from kvsaga.engine.kept_rows import KeptRows, check_inputs
from kvsaga.engine.model_config import ModelConfig, ModelLoadError
from kvsaga.engine.rope import rope_cos_sin, rope_inv_freq, rotate


@dataclass(slots=True)
class StepArgs:
    """What every layer of one forward pass shares, decided once for the pass.

    Why: a decode step runs ~90 elementwise calls and 30 attentions; asking per call
    whether the C++ ops can take a tensor, and slicing each layer's caches out of the tier
    tensor, were Python work on the engine thread (bench/RESULTS.md, "The layers' Python
    between the matmuls").
    """

    cos: torch.Tensor  # [T, head_dim // 2]
    sin: torch.Tensor
    kv_cache: torch.Tensor  # the tier tensor, all layers
    meta: AttentionMetadata
    plan: kernels.inplace.StepPlan | None  # layers 1..: the in-place kernels' plan
    layers: kernels.inplace.LayerAttention | None  # layers 1..: RoPE + write + attention
    # The fused C++ elementwise ops take this pass's tensors: the embedding output and
    # every norm weight pass `fused_ops.supports`, and every tensor between them is a
    # fresh contiguous [rows, n] output of a matmul or of these ops (None: ask per call).
    fused: bool | None


def _empty(*shape: int, dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, the reduction in fp32 (as HF Llama does)."""

    def __init__(self, size: int, eps: float, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.eps = eps
        self.weight = _empty(size, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, fused: bool | None = None) -> torch.Tensor:
        # x: [T, H]; fused: `StepArgs.fused` (None: ask `supports`). fp32 on CPU: one C++
        # call (`fused_ops`, unchecked past `supports`;
        # torch's rms_norm is several ops there, each run cold between two matmuls). Else
        # one fused op for the normalisation: in fp32 the weight goes into it too (the same
        # products, so the same bits: tests/engine/test_model_ops.py); other dtypes
        # normalise in fp32 first.
        if fused is None:
            fused = fused_ops.supports(x, self.weight) and x.dim() == 2
        if fused:
            return fused_ops._rms_norm(x, self.weight, self.eps)
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        xf = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * xf.to(x.dtype)

    def add(self, x: torch.Tensor, residual: torch.Tensor,
            fused: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(self(x + residual), x + residual): a pre-norm block's residual add and the norm
        after it, one C++ call in fp32 on CPU (the sum written into `residual`), else the
        sum written into x (a sublayer's fresh output: a prefill chunk's [T, H] buffers
        are megabytes, each new one paid in page faults). a + b == b + a, bit for bit."""
        if fused is None:
            fused = fused_ops.supports(x, residual, self.weight) and x.dim() == 2
        if fused:
            return fused_ops._add_rms_norm(x, residual, self.weight, self.eps)
        residual = x.add_(residual)
        return self.forward(residual, fused), residual


class Attention(nn.Module):
    """GQA self-attention reading and writing one layer of the paged KV cache."""

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        self.q_size, self.kv_size = cfg.q_size, cfg.kv_size
        self.scale = cfg.head_dim**-0.5
        # Kernel argument checks (None: the kernels' default). Every layer gets the same
        # metadata, so the model checks it at layer 0 only (see LlamaForCausalLM).
        self.validate: bool | None = None
        qkv = cfg.q_size + 2 * cfg.kv_size
        self.qkv_proj = _empty(qkv, cfg.hidden_size, dtype=dtype, device=device)
        self.qkv_bias = _empty(qkv, dtype=dtype, device=device) if cfg.attention_bias else None
        self.o_proj = _empty(cfg.hidden_size, cfg.q_size, dtype=dtype, device=device)
        self.o_bias = (
            _empty(cfg.hidden_size, dtype=dtype, device=device) if cfg.attention_out_bias else None
        )
        self.qkv_packed: cpu_linear.Packed | None = None  # pack_weights fills them
        self.o_packed: cpu_linear.Packed | None = None

    def pack_weights(self, mode: str = "once", serial_below: int = 0) -> None:
        """(Re)check the projections' CPU paths (`cpu_linear.pack`, `mode` "once" or
        "packed", `serial_below` bytes) on the current weights."""
        self.qkv_packed = cpu_linear.pack(self.qkv_proj, self.qkv_bias, mode, serial_below)
        self.o_packed = cpu_linear.pack(self.o_proj, self.o_bias, mode, serial_below)

    def forward(self, x: torch.Tensor, step: StepArgs, i: int,
                rows: KeptRows | None = None) -> torch.Tensor:
        """Layer i's attention: [T, hidden] (every row), or with `rows` only those rows'
        [R, hidden]: every row's K/V is still written, but only the kept rows attend and
        project."""
        t = x.shape[0]
        qkv = cpu_linear.linear(x, self.qkv_proj, self.qkv_bias, self.qkv_packed)  # [T, q+2kv]
        if step.layers is not None and rows is None and i > 0:
            # RoPE, cache write and attention from the projection's output, one call.
            out = step.layers.attend(qkv, i)
            return cpu_linear.linear(out, self.o_proj, self.o_bias, self.o_packed)
        qk, v = qkv.split((self.q_size + self.kv_size, self.kv_size), dim=-1)
        # Q and K heads rotated together (in place in the projection's output on CPU).
        qk = rotate(qk.view(t, self.num_heads + self.num_kv_heads, self.head_dim),
                    step.cos, step.sin)
        q, k = qk.split((self.num_heads, self.num_kv_heads), dim=1)
        v = v.reshape(t, self.num_kv_heads, self.head_dim)
        k_cache, v_cache = step.kv_cache[:, i, 0], step.kv_cache[:, i, 1]
        meta = step.meta
        if rows is not None:
            return self._attend_rows(q, k, v, k_cache, v_cache, meta, rows)
        if step.plan is not None and i > 0:
            out = step.plan.attend(q, k, v, k_cache, v_cache).reshape(t, self.q_size)
            return cpu_linear.linear(out, self.o_proj, self.o_bias, self.o_packed)
        kernels.cache_write(k, v, k_cache, v_cache, meta.slot_mapping, validate=self.validate)
        out = kernels.paged_attention(
            q,
            k_cache,
            v_cache,
            meta.block_tables,
            meta.seq_lens,
            meta.query_start_loc,
            self.scale,
            max_query_len=meta.max_query_len,
            max_seq_len=meta.max_seq_len,
            validate=self.validate,
        )  # [T, num_heads, head_dim]
        out = out.reshape(t, self.q_size)
        return cpu_linear.linear(out, self.o_proj, self.o_bias, self.o_packed)

    def _attend_rows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
                     rows: KeptRows) -> torch.Tensor:
        """Write every row's K/V, then attend and project the kept rows only, each as a
        one-token query over its sequence up to its own position (what causal attention
        gives that row in the full batch)."""
        kernels.cache_write(k, v, k_cache, v_cache, meta.slot_mapping, validate=self.validate)
        n = rows.index.shape[0]
        if n == 0:
            return q.new_empty((0, self.o_proj.shape[0]))
        out = kernels.paged_attention(
            q[rows.index], k_cache, v_cache, rows.block_tables, rows.seq_lens,
            rows.query_start_loc, self.scale, max_query_len=1, max_seq_len=rows.max_seq_len,
            validate=self.validate,
        )
        return cpu_linear.linear(out.reshape(n, self.q_size), self.o_proj, self.o_bias,
                                 self.o_packed)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), gate and up as one matmul."""

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.intermediate_size = cfg.intermediate_size
        self.gate_up_proj = _empty(
            2 * cfg.intermediate_size, cfg.hidden_size, dtype=dtype, device=device
        )
        self.down_proj = _empty(cfg.hidden_size, cfg.intermediate_size, dtype=dtype, device=device)
        self.gate_up_packed: cpu_linear.Packed | None = None  # pack_weights fills them
        self.down_packed: cpu_linear.Packed | None = None

    def pack_weights(self, mode: str = "once", serial_below: int = 0) -> None:
        """(Re)check the projections' CPU paths (`cpu_linear.pack`, `mode` "once" or
        "packed", `serial_below` bytes) on the current weights."""
        self.gate_up_packed = cpu_linear.pack(self.gate_up_proj, None, mode, serial_below)
        self.down_packed = cpu_linear.pack(self.down_proj, None, mode, serial_below)

    def forward(self, x: torch.Tensor, fused: bool | None = None) -> torch.Tensor:
        """fused: `StepArgs.fused` (None: ask `fused_ops.supports`)."""
        gate_up = cpu_linear.linear(x, self.gate_up_proj, None, self.gate_up_packed)
        if fused is None:
            fused = fused_ops.supports(gate_up) and gate_up.dim() == 2
        if fused:
            act = fused_ops._silu_mul(gate_up)  # one C++ call, unchecked past `supports`
        else:
            gate, up = gate_up.chunk(2, dim=-1)  # [T, I] each
            act = F.silu(gate).mul_(up)  # in SiLU's fresh output: one [T, I] buffer, not two
        return cpu_linear.linear(act, self.down_proj, None, self.down_packed)


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.)).

    The residual stream travels beside the sublayers' outputs, so that each residual add
    and the norm after it are one call (`RMSNorm.add`): the layer takes the normed input
    and the residual, and returns the MLP's output and the residual without it (the next
    layer's input norm, or the model's final one, adds it).
    """

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device)
        self.attn = Attention(cfg, dtype, device)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device)
        self.mlp = MLP(cfg, dtype, device)

    def forward(self, h: torch.Tensor, residual: torch.Tensor, step: StepArgs, i: int,
                rows: KeptRows | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i. h: input_norm(residual) [T, H]. Returns (mlp output, residual before
        it), [T, H] each, or [R, H] with `rows` (only the kept rows go on past attention).
        The sublayers' `forward` is called directly: nn.Module.__call__'s hook checks are
        Python work per call on the engine thread (5 a layer), and the model sets none."""
        a = self.attn.forward(h, step, i, rows)
        if rows is not None:
            residual = residual[rows.index]
        h, residual = self.post_attn_norm.add(a, residual, step.fused)
        return self.mlp.forward(h, step.fused), residual


class LlamaForCausalLM(nn.Module):
    """The decoder plus its LM head.

    Args:
        config: the architecture.
        dtype: compute and weight dtype (fp32 on CPU; bf16 or fp16 on CUDA).
        device: where the weights live.

    Parameters are uninitialised until `load_weights` fills them.
    """

    def __init__(
        self,
        config: ModelConfig,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        device = torch.device(device)
        self.config = config
        self.dtype = dtype
        self.embed_tokens = _empty(
            config.vocab_size, config.hidden_size, dtype=dtype, device=device
        )
        self.layers = nn.ModuleList(
            DecoderLayer(config, dtype, device) for _ in range(config.num_layers)
        )
        for layer in list(self.layers)[1:]:
            layer.attn.validate = False
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, device)
        self.lm_head = (
            self.embed_tokens
            if config.tie_word_embeddings
            else _empty(config.vocab_size, config.hidden_size, dtype=dtype, device=device)
        )
        self.lm_head_packed: cpu_linear.Packed | None = None  # pack_weights fills it
        self.weights_mode = "once"  # pack_weights sets it: "once" or "packed"
        self.serial_below = 0  # pack_weights sets it (`pack_weights`' docstring)
        inv_freq = rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling)
        self.register_buffer("inv_freq", inv_freq.to(device), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.device

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: AttentionMetadata,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the decoder over a flat batch, writing its K/V into the cache.

        Args:
            input_ids: int64 [T].
            positions: int64 [T]; position of each token in its sequence (RoPE's; the
                attention takes each row's context from `attn_metadata`).
            kv_cache: [num_blocks, num_layers, 2, block_size, num_kv_heads, head_dim], the
                tier tensor; written in place at `attn_metadata.slot_mapping`.
            attn_metadata: sequence boundaries, block tables and slots of the batch.
            rows: int64 [R], the only rows whose hidden states are wanted (None: all; empty:
                none, only the K/V are written); the last layer skips the others (`KeptRows`).

        Returns:
            [T, hidden_size] (or [R, hidden_size], `rows`' in their order) final-normed
            hidden states in the model dtype.

        Raises:
            ValueError: a kv_cache of the wrong shape, positions not [T], or (where the
                kernels check values: on CPU) a row outside [0, T); nothing is written.
        """
        return self._hidden(input_ids, positions, kv_cache, attn_metadata, rows, "rows")

    @torch.inference_mode()
    def _hidden(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: AttentionMetadata,
                rows: torch.Tensor | None, rows_name: str) -> torch.Tensor:
        """`hidden_states`; `rows_name` is what its errors call `rows` (the caller's name)."""
        if kv_cache.dim() != 6 or kv_cache.shape[1] != len(self.layers):
            raise ValueError(
                f"kv_cache must be [num_blocks, {len(self.layers)}, 2, block_size, "
                f"{self.config.num_kv_heads}, {self.config.head_dim}], got {tuple(kv_cache.shape)}"
            )
        check_inputs(input_ids, positions, rows, rows_name,
                     self.layers[0].attn.validate if len(self.layers) else None)
        x = F.embedding(input_ids, self.embed_tokens)  # [T, H]
        cos, sin = rope_cos_sin(positions, self.inv_freq, x.dtype)  # [T, hd/2] each
        plan = self._step_plan(kv_cache, attn_metadata, x)
        layers = (None if plan is None
                  else plan.bind_layers(kv_cache, cos, sin, self.config.num_heads,
                                        self._attention_threads(kv_cache, attn_metadata, x)))
        step = StepArgs(cos, sin, kv_cache, attn_metadata, plan, layers, self._fused(x))
        kept = None if rows is None else KeptRows.build(rows, attn_metadata)
        last = len(self.layers) - 1
        residual, h = x, None
        for i, layer in enumerate(self.layers):
            # Layer 0 runs the checked kernels (they check the metadata's values once); the
            # others take the plan where there is one. The last keeps only `rows`.
            if h is None:
                h = layer.input_norm.forward(residual, step.fused)
            else:
                h, residual = layer.input_norm.add(h, residual, step.fused)
            h, residual = layer.forward(h, residual, step, i, kept if i == last else None)
        if h is None:  # no layers
            return self.norm.forward(residual, step.fused)
        return self.norm.add(h, residual, step.fused)[0]

    def _fused(self, x: torch.Tensor) -> bool | None:
        """`StepArgs.fused` for a pass whose embedding output is x: True where the C++ ops
        take it and every norm weight, else None (each call asks)."""
        weights = [self.norm.weight]
        for layer in self.layers:
            weights += (layer.input_norm.weight, layer.post_attn_norm.weight)
        if x.dim() == 2 and fused_ops.supports(x, *weights):
            return True
        return None

    def _attention_threads(self, kv_cache: torch.Tensor, meta: AttentionMetadata,
                           x: torch.Tensor) -> int | None:
        """1 where a pass of up to `cpu_linear.SMALL_ROWS` tokens (a decode step) reads
        fewer K/V bytes a layer than `serial_below`: its attention runs on the engine thread
        alone, with the tasks and bits of a threaded call. None: the kernels' own count."""
        if not self.serial_below or x.shape[0] > cpu_linear.SMALL_ROWS:
            return None
        per_pos = 2 * kv_cache.shape[4] * kv_cache.shape[5] * kv_cache.element_size()
        return 1 if int(meta.seq_lens.sum()) * per_pos < self.serial_below else None

    def _step_plan(self, kv_cache: torch.Tensor, meta: AttentionMetadata,
                   x: torch.Tensor) -> kernels.inplace.StepPlan | None:
        """The in-place kernels' plan for this pass (`kvsaga.kernels.step_plan`), or None."""
        if len(self.layers) < 2:
            return None
        return kernels.step_plan(
            kv_cache[:, 0, 0], kv_cache[:, 0, 1], meta.block_tables, meta.seq_lens,
            meta.query_start_loc, meta.slot_mapping, self.layers[0].attn.scale,
            query_dtype=x.dtype, num_query_tokens=x.shape[0],
            max_query_len=meta.max_query_len, max_seq_len=meta.max_seq_len)

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Args: hidden [N, hidden_size]. Returns: fp32 logits [N, vocab_size]."""
        return cpu_linear.linear(hidden, self.lm_head, None, self.lm_head_packed).float()

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """Decoder plus LM head on the rows that need logits.

        Args: as `hidden_states`.

        Returns:
            fp32 [N, vocab_size] logits of the rows `attn_metadata.logits_indices` (all T rows
            when it is None).
        """
        hidden = self._hidden(input_ids, positions, kv_cache, attn_metadata,
                              attn_metadata.logits_indices, "attn_metadata.logits_indices")
        return self.compute_logits(hidden)

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors (HF names) into the parameters, converting dtype and device.

        Args:
            weights: (name, tensor) pairs in HF Llama naming, e.g.
                `model.layers.0.self_attn.q_proj.weight`, plus the optional `rope_freqs.weight`
                (llama.cpp's RoPE frequency divisors).

        Raises:
            ModelLoadError: a tensor whose shape differs from the config, an unknown name, or
                parameters the checkpoint did not provide.
        """
        # Rows of each parameter filled so far (fused ones fill in several pieces).
        rows = {n: 0 for n, _ in self.named_parameters()}
        for name, tensor in weights:
            if name == "rope_freqs.weight":
                self._set_freq_factors(tensor)
                continue
            target = self._target(name)
            if target is None:
                if name == "lm_head.weight" and self.config.tie_word_embeddings:
                    continue  # some checkpoints store the tied head twice
                if name.endswith("rotary_emb.inv_freq"):
                    continue  # old checkpoints saved the RoPE buffer
                raise ModelLoadError(
                    f"unexpected tensor {name!r} for a {self.config.architecture} model"
                )
            param_name, shard = target
            param = self.get_parameter(param_name)
            dest = param.data if shard is None else param.data.narrow(0, *shard)
            if tuple(tensor.shape) != tuple(dest.shape):
                raise ModelLoadError(
                    f"tensor {name!r} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(dest.shape)} "
                    "from the model config"
                )
            dest.copy_(tensor)
            rows[param_name] += dest.shape[0]
        missing = [n for n, p in self.named_parameters() if rows[n] < p.shape[0]]
        if missing:
            raise ModelLoadError(f"checkpoint lacks weights for: {sorted(missing)[:8]}")
        self.pack_weights()

    def pack_weights(self, mode: str | None = None, serial_below: int | None = None) -> None:
        """Check every projection's and the LM head's CPU paths (`cpu_linear.pack`; None,
        so `F.linear`, off CPU, outside fp32 or with neither oneDNN nor the small GEMM).
        `mode`: "once" (the parameters alone), "packed" (two copies of each beside it, for
        speed), or None: on CPU in fp32, `cpu_linear.weights_mode` of these weights' bytes
        (the KVSAGA_CPU_WEIGHTS environment variable, else "packed" up to
        `cpu_linear.PACKED_MAX_BYTES`); elsewhere "once" (nothing is packed there, and the
        variable is not read, so a bad value cannot fail a CUDA or bf16 load).
        `load_weights` calls it; call it again after changing weights any other way: until
        then the forward takes `F.linear` for every weight changed since (`cpu_linear.linear`
        checks), except a write through `.data`, which "packed" does not see (its copies
        stay stale until this runs again; `cpu_linear`'s module docstring).
        `serial_below` (bytes): a linear of up to `cpu_linear.SMALL_ROWS` rows whose
        weight takes fewer bytes, and in a pass of up to that many tokens (a decode step)
        the bound attention of layers 1.. where a layer's K/V reads take fewer, run on the
        engine thread alone (no OpenMP region, so no sleeping worker woken:
        docs/engine_profiles_history_2.md, "Fewer wake-ups a decode step"), with the same bits; 0:
        none; None: on CPU in fp32 the KVSAGA_CPU_SERIAL_BELOW environment variable
        (ValueError naming it for a bad value), elsewhere 0. ValueError, nothing changed,
        for a negative or non-integer value.
        """
        cpu32 = self.device.type == "cpu" and self.dtype == torch.float32
        if serial_below is None:
            serial_below = envs.KVSAGA_CPU_SERIAL_BELOW if cpu32 else 0
        if (isinstance(serial_below, bool) or not isinstance(serial_below, int)
                or serial_below < 0):
            raise ValueError(f"serial_below must be an int >= 0 (bytes), got {serial_below!r}")
        if mode is None and not cpu32:
            mode = "once"
        if mode is None:
            weights = [self.lm_head]
            for layer in self.layers:
                weights += [layer.attn.qkv_proj, layer.attn.o_proj, layer.mlp.gate_up_proj,
                            layer.mlp.down_proj]
            mode = cpu_linear.weights_mode(sum(w.numel() * w.element_size() for w in weights))
        if mode not in ("once", "packed"):
            raise ValueError(f"mode must be 'once', 'packed' or None, got {mode!r}")
        self.weights_mode = mode
        self.serial_below = serial_below
        for layer in self.layers:
            layer.attn.pack_weights(mode, serial_below)
            layer.mlp.pack_weights(mode, serial_below)
        self.lm_head_packed = cpu_linear.pack(self.lm_head, None, mode, serial_below)

    def _set_freq_factors(self, factors: torch.Tensor) -> None:
        c = self.config
        if tuple(factors.shape) != (c.head_dim // 2,):
            raise ModelLoadError(
                f"rope_freqs has shape {tuple(factors.shape)}, expected ({c.head_dim // 2},)"
            )
        inv_freq = rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling, factors)
        self.inv_freq = inv_freq.to(self.device)

    _LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")

    def _target(self, name: str) -> tuple[str, tuple[int, int] | None] | None:
        """Our parameter (and row range of it, for fused ones) holding an HF tensor."""
        top = {
            "model.embed_tokens.weight": "embed_tokens",
            "model.norm.weight": "norm.weight",
        }
        if name in top:
            return top[name], None
        if name == "lm_head.weight" and not self.config.tie_word_embeddings:
            return "lm_head", None
        m = self._LAYER.fullmatch(name)
        if m is None or int(m.group(1)) >= len(self.layers):
            return None
        prefix, rest = f"layers.{m.group(1)}.", m.group(2)
        c = self.config
        q, kv, inter = c.q_size, c.kv_size, c.intermediate_size
        plain = {
            "input_layernorm.weight": "input_norm.weight",
            "post_attention_layernorm.weight": "post_attn_norm.weight",
            "self_attn.o_proj.weight": "attn.o_proj",
            "mlp.down_proj.weight": "mlp.down_proj",
        }
        if c.attention_out_bias:
            plain["self_attn.o_proj.bias"] = "attn.o_bias"
        fused = {
            "self_attn.q_proj.weight": ("attn.qkv_proj", (0, q)),
            "self_attn.k_proj.weight": ("attn.qkv_proj", (q, kv)),
            "self_attn.v_proj.weight": ("attn.qkv_proj", (q + kv, kv)),
            "mlp.gate_proj.weight": ("mlp.gate_up_proj", (0, inter)),
            "mlp.up_proj.weight": ("mlp.gate_up_proj", (inter, inter)),
        }
        if c.attention_bias:
            fused["self_attn.q_proj.bias"] = ("attn.qkv_bias", (0, q))
            fused["self_attn.k_proj.bias"] = ("attn.qkv_bias", (q, kv))
            fused["self_attn.v_proj.bias"] = ("attn.qkv_bias", (q + kv, kv))
        if rest in plain:
            return prefix + plain[rest], None
        if rest in fused:
            param, shard = fused[rest]
            return prefix + param, shard
        return None
