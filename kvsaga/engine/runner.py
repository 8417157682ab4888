"""ModelRunner: turns a scheduled batch into one forward pass and samples the next tokens."""

from __future__ import annotations

import logging

import torch

from kvsaga.engine.attn_metadata import AttentionMetadata
from kvsaga.engine.cuda_graphs import DecodeGraphs, GraphCaptureError, MixedGraphs
from kvsaga.engine.model import LlamaForCausalLM
from kvsaga.engine.sampling import Sampler, SamplerOutput
from kvsaga.engine.scheduler import ScheduledChunk
from kvsaga.manager import KVCacheManager

log = logging.getLogger("kvsaga.engine")


class ModelRunner:
    """Args:
    model: the decoder.
    kv_cache: the GPU tier tensor `[num_blocks, num_layers, 2, block_size, kv_heads, head_dim]`.
    manager: source of the block tables.
    graphs: where decode passes replay (`DecodeGraphs`); None runs them eagerly.
    mixed: where the other passes (those with prefill tokens) replay, up to its largest
        shape (`MixedGraphs`); None runs them eagerly.
    """

    def __init__(self, model: LlamaForCausalLM, kv_cache: torch.Tensor, manager: KVCacheManager,
                 graphs: DecodeGraphs | None = None, mixed: MixedGraphs | None = None):
        self.model = model
        self.kv_cache = kv_cache
        self.manager = manager
        self.sampler = Sampler()
        self.device = kv_cache.device
        self.graphs = graphs
        self.mixed = mixed

    @staticmethod
    def _graphs_off(kind: str, error: GraphCaptureError) -> None:
        """A failed capture turns that kind of graph off for good (the step at hand, and
        every later one, runs eagerly): logged once, not retried at every step."""
        log.warning("%s CUDA graphs are off, steps run eagerly: %s", kind, error)
        return None

    def capture_graphs(self, progress: bool = False) -> dict[str, int]:
        """Record every graph shape now (`capture_all` of each kind present) rather than at
        the first step that needs it. A kind whose capture fails is turned off, as at a
        step. Returns the shapes recorded per kind ("decode", "mixed")."""
        done: dict[str, int] = {}
        if self.device.type != "cuda":
            return self._capture_graphs(progress, done)
        with torch.cuda.device(self.device):
            return self._capture_graphs(progress, done)

    @torch.inference_mode()
    def _capture_graphs(self, progress: bool, done: dict[str, int]) -> dict[str, int]:
        if self.graphs is not None:
            try:
                done["decode"] = self.graphs.capture_all(progress)
            except GraphCaptureError as e:
                self.graphs = self._graphs_off("decode", e)
        if self.mixed is not None:
            try:
                done["mixed"] = self.mixed.capture_all(progress)
            except GraphCaptureError as e:
                self.mixed = self._graphs_off("mixed", e)
        return done

    def run(self, chunks: list[ScheduledChunk]
            ) -> tuple[list[ScheduledChunk], SamplerOutput | None]:
        """`_run` on the runner's device: on `cuda:N`, streams, captures, replays and Triton
        launches all act on the current device, which is not always N."""
        if self.device.type != "cuda":
            return self._run(chunks)
        with torch.cuda.device(self.device):
            return self._run(chunks)

    @torch.inference_mode()
    def _run(
        self, chunks: list[ScheduledChunk]
    ) -> tuple[list[ScheduledChunk], SamplerOutput | None]:
        """One forward pass over every chunk; sample for chunks that complete their context.

        Returns:
            The chunks that were sampled (in row order of the output) and the sampler output.
        """
        input_ids: list[int] = []
        positions: list[int] = []  # known here; meta.positions() would take ~6 tensor ops
        slots: list[int] = []
        tables, seq_lens, query_lens, logits_rows = [], [], [], []
        sampled: list[ScheduledChunk] = []
        for c in chunks:
            input_ids.extend(c.request.context_slice(c.start, c.start + c.num_tokens))
            positions.extend(range(c.start, c.start + c.num_tokens))
            slots.extend(c.slots)
            tables.append(self.manager.block_table(c.request.session_id))
            seq_lens.append(c.start + c.num_tokens)
            query_lens.append(c.num_tokens)
            if c.completes_context:
                logits_rows.append(len(input_ids) - 1)
                sampled.append(c)
        params = [c.request.params for c in sampled]
        gens = [c.request.generator for c in sampled]
        if (self.graphs is not None and len(sampled) == len(input_ids)
                and self.graphs.size_for(len(input_ids)) is not None):
            # A decode pass: one token a sequence, each sampled.
            try:
                logits = self.graphs.run(input_ids, positions, slots, tables, seq_lens)
            except GraphCaptureError as e:
                self.graphs = self._graphs_off("decode", e)
            else:
                return sampled, self.sampler(logits, params, gens)
        if self.mixed is not None and self.mixed.bucket_for(len(input_ids), len(chunks)):
            # A step with prefill tokens, within the largest mixed graph.
            try:
                logits = self.mixed.run(input_ids, positions, slots, tables, seq_lens,
                                        query_lens, logits_rows)
            except GraphCaptureError as e:
                self.mixed = self._graphs_off("mixed", e)
            else:
                return (sampled, self.sampler(logits, params, gens)) if sampled else ([], None)
        meta = AttentionMetadata.build(
            tables, seq_lens, query_lens, self.manager.block_size, self.device, logits_rows, slots
        )
        ids = torch.tensor(input_ids, dtype=torch.int64, device=self.device)
        pos = torch.tensor(positions, dtype=torch.int64, device=self.device)
        if not sampled:
            # No row is read: the last layer only writes its K/V.
            self.model.hidden_states(ids, pos, self.kv_cache, meta, ids.new_empty(0))
            return [], None
        logits = self.model(ids, pos, self.kv_cache, meta)  # [N, vocab] fp32
        return sampled, self.sampler(logits, params, gens)
