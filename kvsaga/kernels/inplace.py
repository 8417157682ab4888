"""In-place paged attention and cache write for CPU: kvsaga._paged_attn (csrc/paged_attn.cpp).

The SDPA path (`sdpa.py`) copies each sequence's K/V out of the cache through its block
table in every layer; for decode that copy is most of the step (docs/engine_profiles.md).
This kernel reads K/V where they lie, one call per layer
for every sequence it is given, the `group` query heads of a KV head together; head sizes
64 and 128 take an AVX-512 path where the CPU has it (else an AVX2 + FMA twin of it,
csrc/paged_attn_avx2.h), and there a prefill or extend task of 8 or more query heads runs
as two small GEMMs over the task's heads (docs/engine_profiles_history_1.md, "The agent
step's extend attention"). fp32 only. `cache_write` stores a
layer's new K/V rows with one memcpy per (token, KV head): the reference's indexed
assignment took 0.4 ms per decode-sized call. Both are optional (built by setup.py where a
C++17 compiler exists), and `available()` says whether they were built.
"""

from __future__ import annotations

import ctypes
import os
import re

import torch

from .args import CacheWriteArgs, PagedAttentionArgs

try:
    from kvsaga import _paged_attn
except ImportError:  # not built: the SDPA path runs everything
    _paged_attn = None
# Asked once: `has_tiles` runs in every layer's attention call. "avx512", "avx2" or "".
_TILE_ISA: str = "" if _paged_attn is None else _paged_attn.tile_isa()


def _kernel_threads() -> int:
    """Threads the kernel runs on: torch's count in torch's own team (`_OMP_TEAM`); without
    it, torch's count only where OpenMP's workers sleep.

    The kernel's own pool (the fallback) adds threads beside torch's: with OpenMP's
    default wait policy torch's workers spin for a while after each op and compete with
    them for the cores: on 2 cores, 2 threads there made a 16-sequence decode batch
    slower than one (`python bench/generate.py --prompts mixed --peer none --threads 2`,
    against the SDPA path). Under OMP_WAIT_POLICY=PASSIVE torch's workers sleep, and the
    kernel's threads run; kvsaga-serve's `--cpu-host dedicated` adds a spin of
    GOMP_SPINCOUNT=10000 before that sleep, short beside libgomp's default of 300,000.
    """
    return torch.get_num_threads() if _OMP_TEAM or _OMP_PASSIVE else 1


class _DlInfo(ctypes.Structure):
    """dladdr's answer (<dlfcn.h>, Dl_info)."""

    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _library_of(address: int) -> str:
    """The file name of the mapped library that holds `address` (dladdr), or ""."""
    try:
        dladdr = ctypes.CDLL(None).dladdr
    except (OSError, AttributeError):  # no dladdr (Windows)
        return ""
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    info = _DlInfo()
    if not dladdr(address, ctypes.byref(info)) or not info.dli_fname:
        return ""
    return os.fsdecode(info.dli_fname)


# GNU libgomp as torch's Linux wheels ship it (torch/lib/libgomp.so.1, or auditwheel's
# libgomp-<hash>.so.1), or a system copy; not libgomp-plugin-nvptx.so.1 and the like.
_LIBGOMP = re.compile(r"libgomp(-[0-9A-Za-z]+)?\.so(\.[0-9]+)*")


def _libgomp_parallel(torch_cpu: str | None = None) -> int:
    """The address of `GOMP_parallel` in the libgomp torch runs its ops on, or 0.

    Why: with it the kernel runs its tasks on the threads of torch's own OpenMP team, the
    ones that run the step's matmuls, instead of a pool of its own beside them
    (docs/engine_profiles_history_2.md, "One team of threads"). The symbol is looked up through the
    handle of `torch_cpu` (default: torch/lib/libtorch_cpu.so, the library whose ATen ops
    call it; RTLD_NOLOAD, so only the copy already mapped), which searches that library's
    own dependencies; it counts only where dladdr says a libgomp provides it, no other
    definition would take precedence in the process (an LD_PRELOADed runtime), and
    torch's parallel backend is OpenMP. Anything else (LLVM's libomp on macOS, Intel's
    libiomp, a torch built otherwise) is 0, so the kernel's own pool: two OpenMP runtimes
    would be two teams again, and other runtimes are not what was measured.
    """
    if _paged_attn is None or not hasattr(os, "RTLD_NOLOAD"):
        return 0
    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return 0
    if torch_cpu is None:
        torch_cpu = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        lib = ctypes.CDLL(torch_cpu, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        found = ctypes.cast(lib.GOMP_parallel, ctypes.c_void_p).value or 0
    except (OSError, AttributeError):  # not mapped here, or no GOMP_parallel under it
        return 0
    try:  # the definition a global lookup finds first, if any: it must be the same one
        first = ctypes.cast(ctypes.CDLL(None).GOMP_parallel, ctypes.c_void_p).value or 0
    except (OSError, AttributeError):
        first = 0
    if not found or first not in (0, found):
        return 0
    return found if _LIBGOMP.fullmatch(os.path.basename(_library_of(found))) else 0


def _leave_team() -> None:
    """In a forked child: the kernel's own pool from now on. libgomp's team is not
    fork-safe: a child of a parent that ran a parallel region hangs in its next one, the
    kernel's and torch's own ops alike, unless the child calls torch.set_num_threads(1)
    before its first op (tests/kernels/test_kernel_inplace.py, the forked child)."""
    global _OMP_TEAM, _TEAM_FOUND
    _OMP_TEAM = _TEAM_FOUND = 0


# Read once, as OpenMP itself does when torch first starts its workers.
_OMP_PASSIVE = os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"
_TEAM_FOUND = _libgomp_parallel()  # torch's team, 0 where none (or in a forked child)
_OMP_TEAM = _TEAM_FOUND  # the team the kernel runs in now, 0: its own pool
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_leave_team)


def team_available() -> bool:
    """Whether the kernel can run its tasks in torch's OpenMP team here (`_libgomp_parallel`)."""
    return _TEAM_FOUND != 0


def use_team(on: bool) -> bool:
    """Run the kernel's tasks in torch's OpenMP team (on, the default where there is one)
    or in the kernel's own pool; returns the previous choice. Why: bench/engine_threads.py
    and the tests hold the two side by side. ValueError for on where `team_available()`
    is False, the choice left as it was."""
    global _OMP_TEAM
    if on and not _TEAM_FOUND:
        raise ValueError("use_team(True): torch's OpenMP runtime here is not a libgomp the "
                         "kernel can join (or this is a forked child); the pool runs")
    was = _OMP_TEAM != 0
    _OMP_TEAM = _TEAM_FOUND if on else 0
    return was


def team_address() -> int:
    """The GOMP_parallel of the team the kernels run in now (`use_team`), 0 for none: other
    C++ ops of the engine (kvsaga/engine/fused_ops.py) split their rows in the same team."""
    return _OMP_TEAM


def available() -> bool:
    """Whether the C++ kernel was built."""
    return _paged_attn is not None


def tile_isa() -> str:
    """The tiles the kernel runs for head sizes 64 and 128 on this CPU: "avx512", "avx2"
    (AVX2 + FMA without AVX-512) or "" (the generic loops only)."""
    return _TILE_ISA


def has_tiles(head_dim: int) -> bool:
    """Whether the kernel runs its AVX-512 or AVX2 tiles for this head size on this CPU;
    `sdpa.py` then sends it every row. Measured (bench/cpu_attention.py, RESULTS): with
    AVX-512 it beats SDPA on prefill and extend rows; with AVX2 the first GEMM beat SDPA
    on prefill (1.30-1.50x) and was level with it at best on extend (0.79-1.05x, four
    runs); the chunked AVX2 GEMM that replaced it (docs/engine_profiles_history_1.md, "The agent
    step's extend attention") has no context cap."""
    return head_dim in (64, 128) and _TILE_ISA != ""


def supports(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """Whether the kernel can run these tensors: built, CPU, fp32, K and V laid out alike."""
    return (
        _paged_attn is not None
        and query.device.type == "cpu"
        and query.dtype == k_cache.dtype == v_cache.dtype == torch.float32
        and k_cache.stride() == v_cache.stride()
        and k_cache.stride(-1) == 1
        and query.stride(-1) == 1
    )


# The kernel's paths (csrc/paged_attn.cpp, `path`): every tiled path (AVX-512, else AVX2)
# where it applies, the row tiles without the extend GEMM, the generic loops alone; or'ed
# with AVX2_ONLY, auto and rows take the AVX2 tiles even on an AVX-512 CPU (`isa="avx2"`).
PATHS = {"auto": 0, "rows": 1, "generic": 2}
AVX2_ONLY = 4


def paged_attention(args: PagedAttentionArgs, out: torch.Tensor, seq_ids: list[int] | None,
                    *, path: str = "auto", isa: str | None = None) -> None:
    """Causal paged attention of the sequences `seq_ids` of the batch (None: all of them),
    written into `out`.

    Arguments as `kvsaga.kernels.paged_attention` (already checked there), with `out`
    required (rows of other sequences are left as they are) and `supports(...)` true.
    `path`: "auto", or "rows" (no extend GEMM) or "generic" (no vector tiles at all), which
    the tests and bench/cpu_attention.py hold beside it. `isa`: None (this CPU's best
    tiles) or "avx2", the AVX2 + FMA tiles even where AVX-512 is there, so that the tests
    run the tiles an AVX2-only CPU gets on any AVX2 host (ValueError on a CPU without).
    """
    _attend(args, out, seq_ids, path, isa)


def threads_used(args: PagedAttentionArgs, out: torch.Tensor, seq_ids: list[int] | None,
                 *, path: str = "auto") -> int:
    """`paged_attention`, returning how many distinct threads ran its tasks (0: no task).
    Why: the tests see through it that the tasks ran on torch's team or the pool, not on
    the caller alone."""
    return _attend(args, out, seq_ids, path)


def last_sequence_tasks() -> int:
    """How many tasks of the last `paged_attention` call on this process ran a whole decoding
    sequence (every KV head, csrc/paged_attn_seq.h) rather than one (sequence, KV head). Both
    give the same bits, so the tests read this to know which ran."""
    return _paged_attn.last_sequence_tasks()


def _attend(args: PagedAttentionArgs, out: torch.Tensor, seq_ids: list[int] | None,
            path: str, isa: str | None = None) -> int:
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(map(repr, PATHS))}, got {path!r}")
    if isa not in (None, "avx2") or (isa and path == "generic"):
        raise ValueError(f"isa must be None or 'avx2' (with path auto or rows), got {isa!r} "
                         f"with path {path!r}")
    if seq_ids is not None and not seq_ids:
        return 0
    query, k_cache, v_cache = args.query, args.k_cache, args.v_cache
    tables = args.block_tables.to(torch.int32).contiguous()
    lens = args.seq_lens.to(torch.int32).contiguous()
    starts = args.query_start_loc.to(torch.int32).contiguous()
    ids = None if seq_ids is None else torch.tensor(seq_ids, dtype=torch.int32)
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    return _paged_attn.paged_attention(
        out.data_ptr(), query.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
        tables.data_ptr(), lens.data_ptr(), starts.data_ptr(),
        0 if ids is None else ids.data_ptr(), lens.shape[0] if ids is None else ids.shape[0],
        num_kv_heads, query.shape[1] // num_kv_heads, head_dim,
        k_cache.shape[1], tables.stride(0), query.stride(0), query.stride(1),
        out.stride(0), out.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        float(args.scale), _kernel_threads(), PATHS[path] | (AVX2_ONLY if isa else 0), _OMP_TEAM,
    )


def supports_write(args: CacheWriteArgs) -> bool:
    """Whether `cache_write` can run these tensors: built, CPU, the caches laid out alike,
    every last dim contiguous (any dtype: rows are copied as bytes)."""
    tensors = (args.key, args.value, args.k_cache, args.v_cache)
    return (
        _paged_attn is not None
        and args.k_cache.device.type == "cpu"
        and args.k_cache.stride() == args.v_cache.stride()
        and all(t.stride(-1) == 1 for t in tensors)
        and args.slot_mapping.is_contiguous()
    )


def cache_write(args: CacheWriteArgs) -> None:
    """As `reference.cache_write` (arguments checked by `kvsaga.kernels.cache_write`,
    `supports_write(args)` true); ValueError, nothing written, for a slot out of range."""
    key, value, k_cache, v_cache = args.key, args.value, args.k_cache, args.v_cache
    size = k_cache.element_size()
    _paged_attn.cache_write(
        key.data_ptr(), value.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
        args.slot_mapping.data_ptr(), key.shape[0], k_cache.shape[2], k_cache.shape[3] * size,
        key.stride(0) * size, key.stride(1) * size, value.stride(0) * size,
        value.stride(1) * size, k_cache.stride(0) * size, k_cache.stride(1) * size,
        k_cache.stride(2) * size, k_cache.shape[1], k_cache.shape[0],
    )


def supports_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Whether `rope_` can rotate x [T, heads, head_dim] by cos/sin [T, head_dim // 2]:
    built, all fp32 on CPU, x's last dim and cos/sin contiguous, shapes matching."""
    return (
        _paged_attn is not None
        and x.device.type == "cpu"
        and x.dtype == cos.dtype == sin.dtype == torch.float32
        and x.dim() == 3
        and x.stride(-1) == 1
        and cos.is_contiguous()
        and sin.is_contiguous()
        and cos.shape == sin.shape == (x.shape[0], x.shape[2] // 2)
        and x.shape[2] % 2 == 0
    )


def rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x in place as `kvsaga.engine.rope.apply_rope` does (the same float products
    and sums, so the same bits) and return it; `supports_rope(x, cos, sin)` must hold."""
    _paged_attn.rope(x.data_ptr(), cos.data_ptr(), sin.data_ptr(), x.shape[0], x.shape[1],
                     x.shape[2] // 2, x.stride(0), x.stride(1))
    return x


class StepPlan:
    """One forward pass's cache write and paged attention for every layer, the shared
    arguments converted once and no per-call checks or dispatch.

    Why: a decode step calls both kernels once per layer, and their checks, dispatch and
    argument conversion were Python work on the engine thread, with the other core idle
    (`python bench/generate.py --prompts chat --peer none --profile decode`). Build it with
    `kvsaga.kernels.step_plan`, which says when the in-place kernels take every row; the
    caller must have passed the same metadata through the checked public kernels once
    (the model does so at layer 0), since nothing here checks values.
    """

    def __init__(self, block_tables: torch.Tensor, seq_lens: torch.Tensor,
                 query_start_loc: torch.Tensor, slot_mapping: torch.Tensor, scale: float,
                 max_query_len: int | None, max_seq_len: int | None) -> None:
        self.tables = block_tables.to(torch.int32).contiguous()
        self.lens = seq_lens.to(torch.int32).contiguous()
        self.starts = query_start_loc.to(torch.int32).contiguous()
        self.slots = slot_mapping
        self.scale = scale
        self.bounds = (max_query_len, max_seq_len)

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        """Write key/value [T, kv_heads, head_dim] into the caches, then return causal
        attention of query [T, heads, head_dim] over them: `kvsaga.kernels.cache_write`
        and `kvsaga.kernels.paged_attention` on the same tensors, the same bits."""
        cache_write(CacheWriteArgs(key, value, k_cache, v_cache, self.slots))
        out = torch.empty_like(query)
        paged_attention(PagedAttentionArgs(query, k_cache, v_cache, self.tables, self.lens,
                                           self.starts, self.scale, *self.bounds), out, None)
        return out

    def bind_layers(self, kv_cache: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    num_heads: int, threads: int | None = None) -> LayerAttention | None:
        """This plan for a model's every layer at once (`LayerAttention`), over the tier
        tensor `kv_cache` [blocks, layers, 2, block_size, kv_heads, head_dim] and RoPE's
        cos/sin [T, head_dim // 2] of the pass; None where `LayerAttention` cannot take
        them (then call `attend` per layer). `threads`: the attention's thread count (1:
        the caller alone, no parallel region; its tasks give the same bits at any count,
        tests/kernels/test_kernel_seq.py), None the kernel's own (`_kernel_threads`);
        ValueError for anything but None or an int >= 1."""
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise ValueError(f"threads must be None or an int >= 1, got {threads!r}")
        if not (kv_cache.dim() == 6 and kv_cache.shape[2] == 2
                and kv_cache.dtype == torch.float32 and kv_cache.device.type == "cpu"
                and kv_cache.stride(-1) == 1 and num_heads % kv_cache.shape[4] == 0
                and cos.dtype == sin.dtype == torch.float32 and cos.is_cpu and sin.is_cpu
                and cos.is_contiguous() and sin.is_contiguous() and cos.shape == sin.shape
                and cos.dim() == 2 and cos.shape[1] * 2 == kv_cache.shape[5]
                and int(self.starts[-1]) == cos.shape[0]):
            return None
        return LayerAttention(self, kv_cache, cos, sin, num_heads, threads)


class LayerAttention:
    """A `StepPlan` bound to one pass's tier tensor and RoPE angles: per layer, one call
    takes the fused q|k|v projection's output [T, (heads + 2 kv_heads) * head_dim], rotates
    its Q and K heads in place, writes its K/V rows into that layer's cache and returns the
    attention output [T, heads * head_dim].

    Why: per layer the model otherwise splits and views the projection's output, slices
    the layer's K and V out of the tier tensor, builds the kernels' argument records and
    converts the plan's tensors, a few microseconds of Python each on the engine thread
    (bench/RESULTS.md, "The layers' Python between the matmuls"). Here every argument that
    does not change within the pass (the caches' addresses per layer, strides, the tables,
    cos/sin) is computed once; `attend` makes the same three kernel calls `rope_`,
    `StepPlan.attend` would make on the same memory, so the same bits.

    The returned tensor is one buffer reused by every layer: read it (the output
    projection does) before the next `attend`.
    """

    def __init__(self, plan: StepPlan, kv_cache: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor, num_heads: int, threads: int | None = None) -> None:
        num_blocks, layers, _, block_size, kv_heads, head_dim = kv_cache.shape
        size = kv_cache.element_size()
        c_block, c_layer, c_kv, c_tok, c_head, _ = kv_cache.stride()
        tokens = cos.shape[0]
        self.width = (num_heads + 2 * kv_heads) * head_dim
        self._keep = (plan, kv_cache, cos, sin)  # the addresses below point into these
        self.out = torch.empty(tokens, num_heads * head_dim, dtype=torch.float32)
        base = kv_cache.data_ptr()
        self.k_at = [base + i * c_layer * size for i in range(layers)]
        self.v_off = c_kv * size
        self.q_bytes = num_heads * head_dim * size  # K's offset in a projection row
        self.kv_bytes = kv_heads * head_dim * size
        self.tokens = tokens
        row = self.width  # the projection's row stride (it must be contiguous)
        self.rope_args = (cos.data_ptr(), sin.data_ptr(), tokens, num_heads + kv_heads,
                          head_dim // 2, row, head_dim)
        self.write_args = (plan.slots.data_ptr(), tokens, kv_heads, head_dim * size,
                           row * size, head_dim * size, row * size, head_dim * size,
                           c_block * size, c_tok * size, c_head * size, block_size, num_blocks)
        self.attn_head = (plan.tables.data_ptr(), plan.lens.data_ptr(), plan.starts.data_ptr(),
                          0, plan.lens.shape[0], kv_heads, num_heads // kv_heads, head_dim,
                          block_size, plan.tables.stride(0), row, head_dim,
                          self.out.stride(0), head_dim, c_block, c_tok, c_head)
        self.threads = _kernel_threads() if threads is None else threads
        self.attn_tail = (float(plan.scale), self.threads, PATHS["auto"], _OMP_TEAM)

    def attend(self, qkv: torch.Tensor, layer: int) -> torch.Tensor:
        """Layer `layer`'s RoPE, cache write and attention over qkv (contiguous fp32
        [T, width] on the CPU, as the projection returns it) for `layer` in [0, layers);
        ValueError otherwise, nothing written (a negative layer would index the list from
        its end and write another layer's cache)."""
        if not 0 <= layer < len(self.k_at):
            raise ValueError(f"layer {layer} is out of range for {len(self.k_at)} layers")
        if (qkv.shape != (self.tokens, self.width) or not qkv.is_contiguous()
                or qkv.dtype != torch.float32 or not qkv.is_cpu):
            raise ValueError(f"qkv must be contiguous fp32 [{self.tokens}, {self.width}] on "
                             f"the CPU, got {qkv.dtype} {tuple(qkv.shape)} on {qkv.device}")
        q = qkv.data_ptr()
        k_cache = self.k_at[layer]
        _paged_attn.rope(q, *self.rope_args)
        _paged_attn.cache_write(q + self.q_bytes, q + self.q_bytes + self.kv_bytes, k_cache,
                                k_cache + self.v_off, *self.write_args)
        _paged_attn.paged_attention(self.out.data_ptr(), q, k_cache, k_cache + self.v_off,
                                    *self.attn_head, *self.attn_tail)
        return self.out
