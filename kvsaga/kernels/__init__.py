"""KV kernels: paged attention, cache write, block copy and staging gather/scatter.

Each public function checks its arguments (`checks.py`) and then dispatches (`cache_write`
and `paged_attention` hand their implementation one bundle of inputs, `args.py`):
- CUDA tensors: the Triton kernel (`attention.py`, `kv_write.py`, `blocks.py`);
- CPU tensors: the torch reference (`reference.py`), except paged attention (`sdpa.py`),
  which runs the C++ kernel that reads the cache in place (`inplace.py`, where it was
  built) for decode rows, and for every row where it has its AVX-512 or AVX2 tiles, and one
  `scaled_dot_product_attention` per sequence for the other rows (several times faster than
  the reference), and cache writes, which run the C++ row copy where it was built; with
  `KVSAGA_KERNELS=triton`, the Triton kernel under Triton's interpreter (slow; that is how
  the tests run them on CPU), except in a process where the kernels (or Triton's own
  helpers, Triton having been imported without TRITON_INTERPRET=1) are compiled for the GPU
  or CUDA is available (the interpreter is process-wide): there CPU tensors keep the CPU
  path (`use_triton`);
- `KVSAGA_KERNELS=torch`: the torch reference everywhere.

Range checks (`validate`): None (default) checks the values of index tensors (slots, block
ids, lengths) on CPU, and only metadata on CUDA, where reading them would cost a device sync
and break CUDA-graph capture; pass `validate=True` to check them on CUDA too (debugging).

Triton is imported only when a Triton kernel is about to run: `import kvsaga.kernels` and
`kvsaga.kernels.reference` work without it.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from types import ModuleType

import torch

from kvsaga import envs

from . import checks, inplace, reference, sdpa
from .args import CacheWriteArgs, PagedAttentionArgs

__all__ = [
    "block_copy",
    "cache_write",
    "gather_blocks",
    "paged_attention",
    "reference",
    "scatter_blocks",
    "step_plan",
    "use_triton",
]

_TRITON_MODULES = ("attention", "kv_write", "blocks")
log = logging.getLogger("kvsaga.kernels")


def use_triton(device: torch.device) -> bool:
    """Whether a call on `device` runs the Triton kernel (else the CPU path or the reference).

    With `KVSAGA_KERNELS=triton`, CPU tensors run Triton's interpreter only where that cannot
    change how CUDA calls run (`_cpu_interprets`); else they take the CPU path of `auto`.
    """
    mode = envs.KVSAGA_KERNELS
    if mode == "torch":
        return False
    if device.type == "cuda":
        return True
    return mode == "triton" and device.type == "cpu" and _cpu_interprets()


# Whether this dispatcher set TRITON_INTERPRET=1 (for a CPU call): every Triton kernel it
# imports from then on is interpreted, so a CUDA call must not run them.
_interpret_set_here = False
_cpu_path_logged = False


def _interpreted(module: ModuleType) -> bool:
    """Whether a loaded Triton kernel module runs under Triton's interpreter: `triton.jit`
    returns a JITFunction (compiled for the GPU) or, with TRITON_INTERPRET=1 when the kernel
    was decorated, an interpreted function."""
    from triton.runtime import JITFunction  # loaded: `module` imported it

    return not any(isinstance(v, JITFunction) for v in vars(module).values())


def _compiled_for_gpu() -> list[str]:
    """The Triton kernel modules already imported compiled for the GPU, and triton.language
    where Triton was imported without TRITON_INTERPRET=1 (by the caller, another library or
    a test): its @triton.jit helpers (`tl.cdiv`, `tl.max`) were then compiled, and an
    interpreted kernel calling them fails ("Cannot call @triton.jit'd outside of the scope
    of a kernel")."""
    loaded = [(m, sys.modules.get(f"{__name__}.{m}")) for m in _TRITON_MODULES]
    loaded.append(("triton.language", sys.modules.get("triton.language.standard")))
    return [m for m, module in loaded if module is not None and not _interpreted(module)]


def _cpu_interprets() -> bool:
    """Under KVSAGA_KERNELS=triton, whether a CPU call runs Triton's interpreter.

    TRITON_INTERPRET is process-wide and read when a kernel module is imported: a module
    compiled for the GPU cannot take CPU tensors, and one imported interpreted would run
    CUDA calls interpreted too. So CPU tensors take the CPU path (logged once) where a
    kernel module is already compiled, or where CUDA is available and TRITON_INTERPRET=1 was
    not set before the first call (this process may serve CUDA tensors; set it yourself,
    before Triton is first imported, to interpret everything). Else (no CUDA) the dispatcher
    sets it (`_triton_module`).
    """
    global _cpu_path_logged
    compiled = _compiled_for_gpu()
    if not compiled and os.environ.get("TRITON_INTERPRET") == "1":
        return True
    if compiled:
        why = f"the Triton kernels {compiled} are compiled for the GPU here"
    elif torch.cuda.is_available():
        why = ("CUDA is available, and Triton's interpreter (TRITON_INTERPRET=1, "
               "process-wide) would run the CUDA calls interpreted too")
    else:
        return True
    if not _cpu_path_logged:
        _cpu_path_logged = True
        log.warning("KVSAGA_KERNELS=triton: CPU tensors run the CPU kernels (reference/C++), "
                    "not Triton's interpreter: %s. Set TRITON_INTERPRET=1 before Triton is "
                    "first imported to interpret every kernel.", why)
    return False


def _triton_module(name: str, device: torch.device) -> ModuleType:
    """Import a Triton kernel module, under the interpreter when it will run on CPU."""
    global _interpret_set_here
    qualified = f"{__name__}.{name}"
    if device.type == "cuda" and _interpret_set_here:
        raise RuntimeError(
            f"{qualified} on CUDA: an earlier KVSAGA_KERNELS=triton call on CPU tensors set "
            "TRITON_INTERPRET=1 for this process, so the Triton kernels here run "
            "interpreted; run CUDA and CPU calls in separate processes"
        )
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        loaded = _compiled_for_gpu()
        if loaded:
            raise RuntimeError(
                f"KVSAGA_KERNELS=triton on CPU needs Triton's interpreter, but {loaded} were "
                "already compiled for the GPU; set TRITON_INTERPRET=1 before Triton is first "
                "imported"
            )
        # Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when the kernel
        # module is first imported below.
        os.environ["TRITON_INTERPRET"] = "1"
        _interpret_set_here = True
    try:
        return importlib.import_module(qualified)
    except ImportError as e:
        raise RuntimeError(
            f"the Triton kernel {qualified} needs triton (pip install 'kvsaga[kernels]'): {e}"
        ) from e


def _impl(triton_module: str, device: torch.device) -> ModuleType:
    """The module whose function runs a call on `device`: the Triton launcher or the reference."""
    return _triton_module(triton_module, device) if use_triton(device) else reference


def _full(validate: bool | None, name: str, x: object) -> bool:
    """Whether to check values, from `validate` and the device of tensor `x` (argument
    `name`, checked to be a tensor first so that a wrong type gets the TypeError naming it)."""
    device = checks._tensor(name, x).device
    return device.type != "cuda" if validate is None else validate


def cache_write(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    validate: bool | None = None,
) -> None:
    """Store new K and V rows of one layer into their cache slots.

    Args:
        key: [num_tokens, num_kv_heads, head_dim], k_cache's dtype, last dim contiguous.
        value: [num_tokens, num_kv_heads, head_dim], like key.
        k_cache: [num_blocks, block_size, num_kv_heads, head_dim], e.g. `kv[:, layer, 0]` of
            a tier tensor; last dim contiguous; fp16, bf16 or fp32. Written in place.
        v_cache: like k_cache, e.g. `kv[:, layer, 1]`. Written in place.
        slot_mapping: int64 [num_tokens], contiguous; slot = block_id * block_size +
            offset; -1 skips the token (padding). Slots other than -1 must be distinct.
        validate: check slot values (host sync); default: on CPU only.
    """
    args = CacheWriteArgs(key, value, k_cache, v_cache, slot_mapping)
    checks.check_cache_write(args, full=_full(validate, "k_cache", k_cache))
    if not use_triton(k_cache.device) and envs.KVSAGA_KERNELS != "torch" and (
            inplace.supports_write(args)):
        inplace.cache_write(args)  # auto off CUDA: the C++ row copy, held to the reference
        return
    _impl("kv_write", k_cache.device).cache_write(args)


def paged_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    *,
    max_query_len: int | None = None,
    max_seq_len: int | None = None,
    out: torch.Tensor | None = None,
    validate: bool | None = None,
) -> torch.Tensor:
    """Causal attention of a varlen batch of queries over K/V read through block tables.

    Query token j of sequence i sits at position `seq_lens[i] - q_len_i + j` and attends to
    positions up to its own. K/V of every position, the new tokens included, come from the
    cache: run `cache_write` for the new tokens first. With `max_query_len == 1` the
    split-K decode kernel runs, else the prefill/extend kernel.

    Args:
        query: [num_query_tokens, num_heads, head_dim], k_cache's dtype, last dim contiguous;
            num_heads a multiple of num_kv_heads.
        k_cache: [num_blocks, block_size, num_kv_heads, head_dim]; fp16, bf16 or fp32.
        v_cache: like k_cache.
        block_tables: int32 [batch, max_blocks_per_seq]; entries past a sequence's
            `ceil(seq_len / block_size)` blocks are never read.
        seq_lens: int32 [batch], contiguous; context length of each sequence including its
            new tokens.
        query_start_loc: int32 [batch + 1], contiguous; cumulative query lengths (cu_seqlens).
        scale: softmax scale, usually head_dim ** -0.5.
        max_query_len: host-side upper bound of the query lengths; read from the device
            (a sync) when None. Must not be too small: on CUDA nothing checks it.
        max_seq_len: host-side upper bound of seq_lens; like max_query_len.
        out: optional output, shaped and typed like query, last dim contiguous, no two
            elements sharing memory (an `expand`ed view is refused); it may be query itself.
        validate: check lengths and block ids (host sync); default: on CPU only.

    Returns:
        [num_query_tokens, num_heads, head_dim] in query's dtype (`out` when given). Rows
        past `query_start_loc[-1]` are zero when `out` is None and untouched otherwise.
    """
    args = PagedAttentionArgs(
        query, k_cache, v_cache, block_tables, seq_lens, query_start_loc, scale,
        max_query_len, max_seq_len,
    )
    checks.check_paged_attention(args, out, full=_full(validate, "k_cache", k_cache))
    if use_triton(k_cache.device):
        fn = _triton_module("attention", k_cache.device).paged_attention
    elif envs.KVSAGA_KERNELS == "torch":
        fn = reference.paged_attention
    else:  # auto off CUDA: in-place kernel and per-sequence SDPA, held to the reference
        fn = sdpa.paged_attention
    return fn(args, out)


def step_plan(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    slot_mapping: torch.Tensor,
    scale: float,
    *,
    query_dtype: torch.dtype,
    num_query_tokens: int,
    max_query_len: int | None,
    max_seq_len: int | None = None,
) -> inplace.StepPlan | None:
    """An `inplace.StepPlan` for a forward pass whose every layer's `cache_write` and
    `paged_attention` (caches laid out as these, queries of `query_dtype` with their last
    dim contiguous, `num_query_tokens` rows, no padding rows) would run the in-place
    kernels whole; None where they would not (CUDA, Triton chosen for these tensors
    (`use_triton`: `KVSAGA_KERNELS=triton` with no GPU visible), `KVSAGA_KERNELS=torch`,
    kernel not built, other dtypes, or prefill rows where the kernel
    has no AVX-512 or AVX2 tiles): then call those two as usual. Values are not checked here: run
    the public kernels over the same metadata once first.
    """
    head_dim = k_cache.shape[-1]
    probe = k_cache.new_empty(0, 1, head_dim, dtype=query_dtype)  # stands in for the queries
    if (
        use_triton(k_cache.device)
        or envs.KVSAGA_KERNELS == "torch"
        or not inplace.supports(probe, k_cache, v_cache)
        or not slot_mapping.is_contiguous()
        or not (max_query_len == 1 or inplace.has_tiles(head_dim))
        or int(query_start_loc[-1]) != num_query_tokens
    ):
        return None
    return inplace.StepPlan(block_tables, seq_lens, query_start_loc, slot_mapping, scale,
                            max_query_len, max_seq_len)


def block_copy(
    kv: torch.Tensor,
    src_block_ids: torch.Tensor,
    dst_block_ids: torch.Tensor,
    *,
    validate: bool | None = None,
) -> None:
    """Copy whole blocks within one tier tensor: `kv[dst[i]] = kv[src[i]]`.

    Args:
        kv: [num_blocks, ...], e.g. a tier tensor; each block contiguous (dims 1..).
        src_block_ids: int64 [n], contiguous.
        dst_block_ids: int64 [n], contiguous, distinct and disjoint from the sources
            (checked only with validation: overlapping copies would race on the GPU).
        validate: check the ids (host sync); default: on CPU only.
    """
    checks.check_block_copy(kv, src_block_ids, dst_block_ids, full=_full(validate, "kv", kv))
    _impl("blocks", kv.device).block_copy(kv, src_block_ids, dst_block_ids)


def gather_blocks(
    kv: torch.Tensor,
    block_ids: torch.Tensor,
    out: torch.Tensor | None = None,
    *,
    validate: bool | None = None,
) -> torch.Tensor:
    """Gather blocks of a tier tensor into a contiguous staging buffer (for host transfers).

    Args:
        kv: [num_blocks, ...], each block contiguous.
        block_ids: int64 [n], contiguous.
        out: optional contiguous [n, *kv.shape[1:]] buffer, kv's dtype and device.
        validate: check the ids (host sync); default: on CPU only.

    Returns:
        [n, *kv.shape[1:]] contiguous (`out` when given).
    """
    checks.check_gather_blocks(kv, block_ids, out, full=_full(validate, "kv", kv))
    return _impl("blocks", kv.device).gather_blocks(kv, block_ids, out)


def scatter_blocks(
    staging: torch.Tensor,
    kv: torch.Tensor,
    block_ids: torch.Tensor,
    *,
    validate: bool | None = None,
) -> None:
    """Scatter a contiguous staging buffer into blocks: `kv[block_ids[i]] = staging[i]`.

    Args:
        staging: [n, *kv.shape[1:]] contiguous, kv's dtype and device.
        kv: [num_blocks, ...], each block contiguous. Written in place.
        block_ids: int64 [n], contiguous, distinct.
        validate: check the ids (host sync); default: on CPU only.
    """
    checks.check_scatter_blocks(staging, kv, block_ids, full=_full(validate, "kv", kv))
    _impl("blocks", kv.device).scatter_blocks(staging, kv, block_ids)
