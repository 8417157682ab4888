"""Forward passes replayed from CUDA graphs: one launch for the whole pass.

A step of a small model on a fast GPU is bound by the host, not the GPU. SmolLM2-135M
launches about 840 kernels a step (30 layers of linears, norms, RoPE, the K/V write and two
attention kernels). On an H200 the GPU works about 2 ms of a 19-23 ms eager step; the rest
is Python and kernel launches (`python bench/engine_cuda_profile.py`). A graph records the
forward pass, from the embedding to the logits, once per padded shape; a step then costs a
few small host-to-device copies and one `replay`. Two kinds of graph share one memory pool:

  * `DecodeGraphs`: pure-decode steps (one sampled token a sequence), one graph per padded
    batch size (`SIZES`).
  * `MixedGraphs`: every other step of bounded size, i.e. steps that carry a prefill chunk
    (an agent step starts by prefilling the tool's output, next to other sequences'
    decode rows). One graph per (padded token count T, padded row count R): T from
    `TOKEN_SIZES` up to `max_tokens` (the engine passes min(`MIXED_TOKEN_CAP` = 512, its
    `max_num_batched_tokens`)), R from `SIZES` up to `max_batch`, R <= T.

A graph replays the same kernels on the same addresses with the same host arguments, so:
  * Inputs live in static device buffers, sized for the largest shape; each step copies its
    ids, positions, slots, lengths, query starts (and for mixed steps the logits rows) into
    them with one copy, and its block tables with a second. A step runs the graph of the
    smallest captured shape that holds it.
  * Padding tokens (N..T-1) have slot -1 (the cache write skips them) and lie past
    `query_start_loc[-1]` = N, outside every sequence's query, so no attention row reads
    or writes them; their linears run on id 0 and nobody reads their outputs.
  * Padding rows (B..R-1) have context length 0 and an empty query (`query_start_loc`
    stays at N), so the attention kernels skip them too.
  * The host-side bounds the kernels take are those of the worst case: `max_query_len` 1
    for decode, T for mixed steps, and `max_seq_len` the engine's `max_model_len`. The
    decode kernel's split grid thus covers any context, and each row cuts its own context
    into those splits (a split past its last partition stores nothing), so a graph keeps
    the split parallelism of an eager call; the prefill kernel's grid covers any query of
    the bucket (a query tile past its row's query exits at once).
  * A mixed step's logits come from `R` kept rows (`KeptRows`, a static index buffer):
    the step's sampled rows, then padding entries that point at token 0 (a real token;
    their logits are sliced off). The logits land in one static buffer all mixed graphs
    share, so a graph's own output memory returns to the pool after its capture.
  * Block tables are `max_model_len / block_size` wide; entries past a sequence's blocks
    are never read (its length bounds them), so rows are not cleared between steps. The
    host copy keeps each row's last table and rewrites only the entries that changed
    (`_Tables`): a decode step usually appends nothing.

Graphs are captured lazily, at the first step of each shape: a warm-up pass (Triton
compiles), then the capture, into the one shared pool. Worst case, `len(sizes)` decode
graphs plus `MixedGraphs.worst_case_graphs()` mixed ones: 9 + 48 with the engine's defaults
(max_num_seqs 64, max_num_batched_tokens >= 512). A lazy capture stalls the step that
meets a new shape (its warm-up compiles Triton kernels); `capture_all()` records every
shape up front instead, largest first so that the smaller graphs' scratch fits in memory
the pool already holds (`LLMEngine(graph_capture="startup")`, kvsaga-serve's default). It
records a dummy step (`_IDLE`): one token of id 0 at position 0 in a row of its own, with
K/V slot -1, so the passes write no K/V; the rest is padding. (A step of padding alone
would not do: a mixed pass's kept rows look up the sequence of token 0, and with no row
holding it that lookup indexes past the block tables.) A graph does not depend on the
values staged when it was recorded, only on the buffers' addresses and the host bounds,
which are the worst case.

A capture that fails (its warm-up or the capture itself raises) raises `GraphCaptureError`;
the runner logs it once, turns that kind of graph off and runs the step eagerly. The runner
runs every step under `torch.cuda.device` of its KV cache, so an engine on `cuda:N` captures
and replays on N whatever the current device.

Steps above the largest shape (more tokens than `max_tokens`, more rows than
`max_batch`) run eagerly. The same padded passes run eagerly off CUDA (`capture=False`),
which is how the CPU tests check the padding.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from kvsaga.engine.attn_metadata import AttentionMetadata

SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128)
# Token counts of the mixed-step graphs. Powers of two: a step pads at most to twice its
# tokens, which costs GPU time a host-bound step has to spare, and each doubling is one
# more set of graphs.
TOKEN_SIZES = (16, 32, 64, 128, 256, 512, 1024, 2048)
# The engine's default bound on a mixed graph's tokens. Why 512: the graphs a token size
# adds (up to len(SIZES)) and their capture time grow with every size, while a step's GPU
# work grows with its tokens, so the share of the step that launches cost (what a graph
# saves) shrinks. Not yet measured on a GPU; `LLMEngine(max_graph_tokens=...)` moves it.
MIXED_TOKEN_CAP = 512
# When graphs are recorded (`LLMEngine(graph_capture=...)`): at the first step of each shape,
# or every shape when the engine starts (`capture_all`).
GRAPH_CAPTURE = ("lazy", "startup")
# The step `capture_all` stages: one row, one token (id 0, position 0, K/V slot -1, so no
# K/V is written), an empty block table (the row's device entries stay as they are: valid
# block ids, of which attention only reads) and its logits. As `run`'s keyword arguments.
_IDLE = dict(input_ids=[0], positions=[0], slots=[-1], tables=[[]], seq_lens=[1],
             query_lens=[1], logits_rows=[0])


def graphs_apply(device: torch.device, enforce_eager: bool) -> bool:
    """Whether an engine on `device` replays CUDA graphs: on CUDA, unless `enforce_eager`
    or `KVSAGA_KERNELS=torch`. The torch reference kernels read sequence lengths on the host
    (a device-to-host copy each call), which a capture cannot hold; the Triton kernels take
    host bounds only."""
    from kvsaga import kernels  # the kernels' own rule for which runs where

    return device.type == "cuda" and not enforce_eager and kernels.use_triton(device)


class GraphCaptureError(RuntimeError):
    """Recording a graph failed (its warm-up pass or the capture). The runner then turns
    that kind of graph off and runs the step, and every later one, eagerly."""


def _capture(forward: Callable[[], torch.Tensor | None],
             pool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor | None]:
    """Record `forward()` into `pool`: a warm-up call on a side stream (Triton compiles, the
    allocator's blocks), then the capture. The staged step is written twice (warm-up, then
    capture) with the same K/V; the replay that follows writes it a third time.

    Raises:
        GraphCaptureError: from any failure of either, the cause chained.
    """
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            forward()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: a host-tier copy on another thread (kvsaga.offload) during the
        # capture must not invalidate it; only this thread's calls are restricted.
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            out = forward()
    except Exception as e:  # noqa: BLE001  (whatever broke, eager still serves the step)
        raise GraphCaptureError(f"recording a CUDA graph failed: {type(e).__name__}: {e}") from e
    return graph, out


class _Tables:
    """The block tables of a padded pass: a device tensor [rows, width] and its host copy.

    A step's tables are mostly last step's: the same sequences in the same rows, a block
    appended now and then. The host copy remembers each row's last table: a row whose last
    table is a prefix of its new one (a list compare in C, no tensor built) gets only the
    new entries, any other row is rewritten whole. Then one copy moves the rows in use to
    the device.
    """

    def __init__(self, rows: int, width: int, device: torch.device, pin: bool) -> None:
        self.width = width
        self.on_device = torch.zeros((rows, width), dtype=torch.int32, device=device)
        self.host = torch.zeros((rows, width), dtype=torch.int32, pin_memory=pin)
        self._last: list[list[int]] = [[] for _ in range(rows)]
        self.entries_written = 0  # host entries rewritten, all steps (tests read it)

    def stage(self, tables: Sequence[Sequence[int]]) -> None:
        host, last = self.host, self._last
        width = 0
        for i, table in enumerate(tables):
            table = list(table)
            prev = last[i]
            keep = len(prev) if table[: len(prev)] == prev else 0
            if keep < len(table):
                host[i, keep: len(table)] = torch.tensor(table[keep:], dtype=torch.int32)
                self.entries_written += len(table) - keep
            last[i] = table
            width = max(width, len(table))
        b = len(tables)
        if b and width:
            self.on_device[:b, :width].copy_(host[:b, :width])


def _int64(values: list[int]) -> torch.Tensor:
    """A CPU int64 tensor over `values`, through an `array` (3-4x faster than
    `torch.tensor` on a list of Python ints: bench/graph_stage.py)."""
    return torch.frombuffer(array("q", values), dtype=torch.int64)


def _check_tables(tables: Sequence[Sequence[int]], width: int, max_model_len: int) -> None:
    too_wide = [len(t) for t in tables if len(t) > width]
    if too_wide:
        raise ValueError(f"block table of {too_wide[0]} blocks exceeds the {width} "
                         f"of max_model_len {max_model_len}")


class _PaddedPass:
    """What both kinds of graph hold: the model and KV cache they record, and the static
    inputs of a padded pass. One int64 buffer a step fills with one copy (ids, positions and
    slots, `tokens` each; context lengths, `rows`; query starts, `rows + 1`; then `extra`
    entries a subclass names), the int32 lengths and starts the kernels take (the pass
    converts them inside the graph, so a replay does too), and the block tables."""

    def _setup(self, model: torch.nn.Module, kv_cache: torch.Tensor, block_size: int,
               max_model_len: int, tokens: int, rows: int, extra: int, capture: bool,
               pool) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.capture = capture
        device = kv_cache.device
        t, r = tokens, rows
        self.width = -(-max_model_len // block_size)
        self._packed = torch.zeros(3 * t + 2 * r + 1 + extra, dtype=torch.int64, device=device)
        self.input_ids, self.positions, self.slots = (self._packed[i * t:(i + 1) * t]
                                                      for i in range(3))
        self._seq_lens64 = self._packed[3 * t: 3 * t + r]
        self._starts64 = self._packed[3 * t + r: 3 * t + 2 * r + 1]
        self._extra = self._packed[3 * t + 2 * r + 1:]
        self.seq_lens = torch.zeros(r, dtype=torch.int32, device=device)
        self.query_start_loc = torch.zeros(r + 1, dtype=torch.int32, device=device)
        self._tables = _Tables(r, self.width, device, pin=capture)
        self.block_tables = self._tables.on_device
        if pool is None and capture:
            pool = torch.cuda.graph_pool_handle()
        self.pool = pool
        self.replays = 0  # passes that ran from a graph (or the padded eager path) and returned

    def _record_all(self, shapes: Sequence, graphs: dict, forward: Callable,
                    progress: bool, what: str, keep_output: bool) -> int:
        """`capture_all` for either kind: `shapes` largest first, each recorded into
        `graphs[shape]` by `forward(shape)` unless already there (the graph with its output,
        or the graph alone where `keep_output` is False); off CUDA each shape's padded pass
        runs once eagerly instead. Returns how many shapes it recorded (ran)."""
        todo = [s for s in shapes if s not in graphs]
        bar = tqdm(todo, desc=f"capturing {what} CUDA graphs", unit="graph",
                   disable=not progress, leave=False)
        for shape in bar:
            if self.capture:
                graph, out = _capture(lambda shape=shape: forward(shape), self.pool)
                graphs[shape] = (graph, out) if keep_output else graph
            else:
                forward(shape)
        return len(todo)


class DecodeGraphs(_PaddedPass):
    """Args:
    model: the decoder (`LlamaForCausalLM`); called as `model(ids, positions, kv_cache, meta)`.
    kv_cache: the GPU tier tensor the passes read and write (its address is recorded).
    block_size: tokens per KV block.
    max_model_len: the longest context a sequence may reach.
    max_batch: the most sequences a step holds; sizes above the smallest size that covers it
        are not kept.
    capture: record CUDA graphs (CUDA only); False runs the padded pass eagerly (tests, CPU).
    pool: the CUDA graph memory pool to record into (`pool` of another instance, so that
        every graph shares one); default: a new one.
    """

    def __init__(self, model: torch.nn.Module, kv_cache: torch.Tensor, block_size: int,
                 max_model_len: int, max_batch: int, capture: bool = True,
                 pool=None) -> None:
        if capture and kv_cache.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA KV cache, got {kv_cache.device}")
        if max_batch < 1 or max_model_len < 1:
            raise ValueError(f"need max_batch >= 1 and max_model_len >= 1, got {max_batch}, "
                             f"{max_model_len}")
        cover = bisect.bisect_left(SIZES, max_batch)
        self.sizes = SIZES[: cover + 1]
        n = self.sizes[-1]  # rows are tokens: one a sequence
        self._setup(model, kv_cache, block_size, max_model_len, n, n, 0, capture, pool)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    @property
    def max_batch(self) -> int:
        return self.sizes[-1]

    def size_for(self, batch: int) -> int | None:
        """The padded size a batch of `batch` rows runs at, None above the largest."""
        i = bisect.bisect_left(self.sizes, batch)
        return self.sizes[i] if batch >= 1 and i < len(self.sizes) else None

    def captured_sizes(self) -> list[int]:
        return sorted(self._graphs)

    def capture_all(self, progress: bool = False) -> int:
        """Record a graph for every batch size not yet recorded, largest first, from a
        staged dummy step (`_IDLE`: no K/V written). Off CUDA (`capture=False`) each size's
        padded pass runs once eagerly instead. Returns how many sizes it recorded.

        Raises:
            GraphCaptureError: a capture failed; the sizes recorded before it are kept.
        """
        self._stage(*(_IDLE[k] for k in ("input_ids", "positions", "slots", "tables",
                                          "seq_lens")))
        return self._record_all(self.sizes[::-1], self._graphs, self._forward, progress,
                                "decode", keep_output=True)

    def _meta(self, size: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slots[:size], block_tables=self.block_tables[:size],
            seq_lens=self.seq_lens[:size], query_start_loc=self.query_start_loc[: size + 1],
            max_query_len=1, max_seq_len=self.max_model_len, logits_indices=None,
        )

    def _forward(self, size: int) -> torch.Tensor:
        self.seq_lens[:size].copy_(self._seq_lens64[:size])
        self.query_start_loc[: size + 1].copy_(self._starts64[: size + 1])
        return self.model(self.input_ids[:size], self.positions[:size], self.kv_cache,
                          self._meta(size))

    def _stage(self, input_ids: Sequence[int], positions: Sequence[int], slots: Sequence[int],
               tables: Sequence[Sequence[int]], seq_lens: Sequence[int]) -> None:
        """Copy one batch into the static buffers (two copies); rows past it are padding."""
        n, b = self.max_batch, len(input_ids)
        pad = [0] * (n - b)
        packed = (list(input_ids) + pad + list(positions) + pad + list(slots) + [-1] * (n - b)
                  + list(seq_lens) + pad + list(range(b + 1)) + [b] * (n - b))
        self._packed.copy_(_int64(packed))
        self._tables.stage(tables)

    def run(self, input_ids: Sequence[int], positions: Sequence[int], slots: Sequence[int],
            tables: Sequence[Sequence[int]], seq_lens: Sequence[int]) -> torch.Tensor:
        """One decode pass: each row is one sequence's newest token.

        Args:
            input_ids / positions / slots: per row, its token, its position and its K/V slot.
            tables / seq_lens: per row, its block table and its context length (position + 1).

        Returns:
            fp32 [B, vocab] logits, a view of the graph's output: read it before the next
            run of any graph sharing its pool (that memory may be another graph's scratch).

        Raises:
            ValueError: mismatched lengths, a batch above `max_batch`, or a block table
                wider than `max_model_len` allows; the buffers are then unchanged.
        """
        b = len(input_ids)
        if not (b == len(positions) == len(slots) == len(tables) == len(seq_lens)):
            raise ValueError("input_ids, positions, slots, tables and seq_lens need one entry "
                             "per row")
        size = self.size_for(b)
        if size is None:
            raise ValueError(f"a decode batch of {b} rows exceeds the largest graph "
                             f"({self.max_batch})")
        _check_tables(tables, self.width, self.max_model_len)
        self._stage(input_ids, positions, slots, tables, seq_lens)
        if not self.capture:
            out = self._forward(size)
        else:
            if size not in self._graphs:
                self._graphs[size] = _capture(lambda: self._forward(size), self.pool)
            graph, out = self._graphs[size]
            graph.replay()
        self.replays += 1  # after it ran: a failed capture (GraphCaptureError) is no replay
        return out[:b]


class MixedGraphs(_PaddedPass):
    """Steps that carry prefill tokens (or any step that is not pure decode), replayed from
    graphs of padded shape (T tokens, R rows); see the module docstring.

    Args:
    model, kv_cache, block_size, max_model_len, capture, pool: as `DecodeGraphs`.
    max_batch: the most sequences a step holds (rows sizes from `SIZES` up to the smallest
        that covers it).
    max_tokens: the most tokens a step replayed from a graph holds (at most
        `TOKEN_SIZES[-1]`): a larger step runs eagerly, even where the largest token size
        (from `TOKEN_SIZES`, the smallest that covers `max_tokens`) would hold it.
    """

    def __init__(self, model: torch.nn.Module, kv_cache: torch.Tensor, block_size: int,
                 max_model_len: int, max_batch: int, max_tokens: int, capture: bool = True,
                 pool=None) -> None:
        if capture and kv_cache.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA KV cache, got {kv_cache.device}")
        if max_batch < 1 or max_model_len < 1 or max_tokens < 1:
            raise ValueError(f"need max_batch, max_tokens and max_model_len >= 1, got "
                             f"{max_batch}, {max_tokens}, {max_model_len}")
        if max_tokens > TOKEN_SIZES[-1]:
            raise ValueError(f"max_tokens {max_tokens} exceeds the largest token size "
                             f"{TOKEN_SIZES[-1]}")
        self.max_tokens = max_tokens
        self.token_sizes = TOKEN_SIZES[: bisect.bisect_left(TOKEN_SIZES, max_tokens) + 1]
        # No row size above what `max_tokens` can fill: a row holds at least one token.
        rows = SIZES[: bisect.bisect_left(SIZES, min(max_batch, max_tokens)) + 1]
        self.row_sizes = rows
        t, r = self.token_sizes[-1], self.row_sizes[-1]
        # The extra entries of the packed buffer: the logits rows (r).
        self._setup(model, kv_cache, block_size, max_model_len, t, r, r, capture, pool)
        self.logits_rows = self._extra
        # Every mixed graph writes its logits here (outside the pool): a graph's own output
        # is then a temporary that later captures may reuse.
        vocab = model.config.vocab_size
        self.logits = torch.zeros((r, vocab), dtype=torch.float32, device=kv_cache.device)
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}

    @property
    def max_batch(self) -> int:
        return self.row_sizes[-1]

    def bucket_for(self, tokens: int, rows: int) -> tuple[int, int] | None:
        """The padded (T, R) a step of `tokens` tokens over `rows` sequences runs at, None
        above `max_tokens` or the largest row size (or for an impossible step: no rows, or
        more rows than tokens)."""
        if not 1 <= rows <= tokens <= self.max_tokens:
            return None
        i = bisect.bisect_left(self.token_sizes, tokens)
        j = bisect.bisect_left(self.row_sizes, rows)
        if i == len(self.token_sizes) or j == len(self.row_sizes):
            return None
        return self.token_sizes[i], self.row_sizes[j]

    def worst_case_graphs(self) -> int:
        """How many graphs lazy capture can reach: every (T, R) with R <= T."""
        return sum(1 for t in self.token_sizes for r in self.row_sizes if r <= t)

    def captured(self) -> list[tuple[int, int]]:
        return sorted(self._graphs)

    def capture_all(self, progress: bool = False) -> int:
        """Record a graph for every (T, R) shape not yet recorded (R <= T), largest first,
        from a staged dummy step (`_IDLE`: no K/V written). Off CUDA (`capture=False`) each
        shape's padded pass runs once eagerly instead. Returns how many shapes it recorded.

        Raises:
            GraphCaptureError: a capture failed; the shapes recorded before it are kept.
        """
        shapes = [(t, r) for t in self.token_sizes[::-1] for r in self.row_sizes[::-1]
                  if r <= t]
        self._stage(**_IDLE)
        # A mixed graph's output is the shared logits buffer: keep the graph only.
        return self._record_all(shapes, self._graphs, lambda tr: self._forward(*tr),
                                progress, "mixed", keep_output=False)

    def _forward(self, t: int, r: int) -> None:
        self.seq_lens[:r].copy_(self._seq_lens64[:r])
        self.query_start_loc[: r + 1].copy_(self._starts64[: r + 1])
        meta = AttentionMetadata(
            slot_mapping=self.slots[:t], block_tables=self.block_tables[:r],
            seq_lens=self.seq_lens[:r], query_start_loc=self.query_start_loc[: r + 1],
            max_query_len=t, max_seq_len=self.max_model_len,
            logits_indices=self.logits_rows[:r],
        )
        self.logits[:r].copy_(self.model(self.input_ids[:t], self.positions[:t],
                                         self.kv_cache, meta))

    def _stage(self, input_ids: Sequence[int], positions: Sequence[int], slots: Sequence[int],
               tables: Sequence[Sequence[int]], seq_lens: Sequence[int],
               query_lens: Sequence[int], logits_rows: Sequence[int]) -> None:
        """Copy one step into the static buffers (two copies); the rest is padding."""
        t, r = self.token_sizes[-1], self.max_batch
        n, b, s = len(input_ids), len(seq_lens), len(logits_rows)
        pad_t = [0] * (t - n)
        starts = [0]
        for q in query_lens:
            starts.append(starts[-1] + q)
        packed = (list(input_ids) + pad_t + list(positions) + pad_t + list(slots)
                  + [-1] * (t - n) + list(seq_lens) + [0] * (r - b) + starts + [n] * (r - b)
                  + list(logits_rows) + [0] * (r - s))
        self._packed.copy_(_int64(packed))
        self._tables.stage(tables)

    def run(self, input_ids: Sequence[int], positions: Sequence[int], slots: Sequence[int],
            tables: Sequence[Sequence[int]], seq_lens: Sequence[int],
            query_lens: Sequence[int], logits_rows: Sequence[int]) -> torch.Tensor:
        """One forward pass over a flat batch of N tokens from B sequences.

        Args:
            input_ids / positions / slots: per token, its id, its position and its K/V slot.
            tables / seq_lens / query_lens: per sequence, its block table, its context length
                (new tokens included) and its new tokens (its rows are the next
                `query_lens[i]` tokens of the flat batch).
            logits_rows: the tokens whose logits are wanted (at most B), in order.

        Returns:
            fp32 [len(logits_rows), vocab] logits, a view of a buffer every mixed pass
            writes: read it before the next run.

        Raises:
            ValueError: mismatched lengths, a query length outside 1..seq_len or lengths
                that do not add up to N, a logits row outside the batch, a step above
                `max_tokens` or the largest row size, or a block table too wide for
                `max_model_len` or too short for its sequence; the buffers are then
                unchanged.
        """
        n, b = len(input_ids), len(seq_lens)
        if not (n == len(positions) == len(slots)):
            raise ValueError("input_ids, positions and slots need one entry per token")
        if not (b == len(tables) == len(query_lens)):
            raise ValueError("tables, seq_lens and query_lens need one entry per sequence")
        for i, (q, sl, table) in enumerate(zip(query_lens, seq_lens, tables, strict=True)):
            if not 0 < q <= sl:
                raise ValueError(f"sequence {i}: need 0 < query_len <= seq_len, got {q}, {sl}")
            if len(table) * self.block_size < sl:
                raise ValueError(f"sequence {i}: {len(table)} blocks of {self.block_size} "
                                 f"tokens cannot hold {sl} tokens")
        if sum(query_lens) != n:
            raise ValueError(f"query lengths add up to {sum(query_lens)}, not the {n} tokens")
        if len(logits_rows) > b or any(not 0 <= x < n for x in logits_rows):
            raise ValueError(f"logits_rows must be at most {b} rows of the {n} tokens, got "
                             f"{list(logits_rows)}")
        bucket = self.bucket_for(n, b)
        if bucket is None:
            raise ValueError(f"a step of {n} tokens over {b} sequences exceeds the graphs' "
                             f"bounds ({self.max_tokens} tokens, {self.max_batch} sequences)")
        _check_tables(tables, self.width, self.max_model_len)
        self._stage(input_ids, positions, slots, tables, seq_lens, query_lens, logits_rows)
        t, r = bucket
        if not self.capture:
            self._forward(t, r)
        else:
            if bucket not in self._graphs:
                self._graphs[bucket] = _capture(lambda: self._forward(t, r), self.pool)[0]
            self._graphs[bucket].replay()
        self.replays += 1  # after it ran: a failed capture (GraphCaptureError) is no replay
        return self.logits[: len(logits_rows)]
