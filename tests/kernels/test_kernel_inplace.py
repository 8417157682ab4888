"""The C++ in-place paged attention (kvsaga._paged_attn) against the torch reference."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from paged_case import GUARD, TOLERANCES, make_case

from kvsaga.kernels import inplace, reference, sdpa

pytestmark = pytest.mark.skipif(not inplace.available(), reason="kvsaga._paged_attn not built")


@pytest.fixture
def threads_via(monkeypatch):
    """set(via): run the kernel's threads in torch's OpenMP team ("team"; skipped where
    there is none) or in the kernel's own pool ("pool", as kvsaga-serve ran before the
    team and still does where torch's runtime is not libgomp), as under
    OMP_WAIT_POLICY=PASSIVE; the choice is restored after the test."""
    was = inplace._OMP_TEAM != 0

    def set_via(via: str) -> None:
        if via == "team" and not inplace.team_available():
            pytest.skip("torch's OpenMP runtime is not libgomp here")
        inplace.use_team(via == "team")
        monkeypatch.setattr(inplace, "_OMP_PASSIVE", True)

    yield set_via
    inplace.use_team(was)


PAIRS = {
    # (context, new tokens): decodes around block edges, a sequence with no token.
    "decode": [(1, 1), (15, 1), (16, 1), (17, 1), (53, 1), (300, 1), (20, 0)],
    # prefill from scratch, extends over cached prefixes, a long extend.
    "extend": [(15, 15), (16, 1), (17, 2), (53, 20), (17, 0), (300, 70), (129, 129)],
}


@pytest.mark.parametrize("head_dim", [64, 128, 40])  # the two unrolled sizes, and generic
@pytest.mark.parametrize("group", [1, 3, 8])
@pytest.mark.parametrize("kind", sorted(PAIRS))
@pytest.mark.parametrize("threads,via", [(1, "pool"), (3, "team"), (3, "pool")])
@pytest.mark.parametrize("path", sorted(inplace.PATHS))
def test_inplace_matches_reference_on_poisoned_tier(kind, group, head_dim, threads, via, path,
                                                    threads_via):
    """Strided layer views of a NaN-poisoned tier: no stray read (NaN) or write (guard).
    With 3 threads the kernel splits its tasks over torch's OpenMP team or its own pool:
    the extend cases hold enough work to split. "auto" takes the AVX-512 (else AVX2) paths for
    head sizes 64 and 128 where the CPU has them: the extend GEMM for tasks of 8 or more query heads
    (rows x group; partial lanes, causal lanes, contexts not a multiple of 16), the row
    tiles for the others (group 8 runs two tiles of heads); "rows" the row tiles alone,
    "generic" the plain loops. One thread never leaves the caller (no team, no pool)."""
    threads_via(via)
    pairs = PAIRS[kind]
    case = make_case([c for c, _ in pairs], [q for _, q in pairs], block_size=16,
                     num_kv_heads=1 if group == 8 else 2, group=group, head_dim=head_dim,
                     dtype=torch.float32, seed=len(pairs) + group + head_dim)
    assert inplace.supports(case.query, case.k_cache, case.v_cache)
    want = reference.paged_attention(case.attention_args(), case.guarded_out())
    got = case.guarded_out()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inplace.paged_attention(case.attention_args(), got, list(range(len(pairs))),
                                path=path)
    finally:
        torch.set_num_threads(before)
    n = case.query.shape[0] - case.num_pad_rows
    atol, rtol = TOLERANCES[torch.float32]
    assert not got[:n].isnan().any(), "NaN in the output: a poisoned slot was read"
    torch.testing.assert_close(got[:n], want[:n], atol=atol, rtol=rtol)
    assert (got[n:] == GUARD).all(), "padding output rows were written"


def test_inplace_runs_only_the_sequences_it_is_given():
    pairs = PAIRS["extend"]
    case = make_case([c for c, _ in pairs], [q for _, q in pairs], block_size=16,
                     num_kv_heads=2, group=3, head_dim=64, dtype=torch.float32, seed=7)
    want = reference.paged_attention(case.attention_args())
    got = case.guarded_out()
    chosen = [1, 3, 5]
    inplace.paged_attention(case.attention_args(), got, chosen)
    starts = case.query_start_loc.tolist()
    for i in range(len(pairs)):
        rows = slice(starts[i], starts[i + 1])
        if i in chosen:
            torch.testing.assert_close(got[rows], want[rows], atol=2e-5, rtol=2e-5)
        else:
            assert (got[rows] == GUARD).all(), f"sequence {i} was not asked for"


@pytest.mark.parametrize("spread", [1.0, 30.0, 1000.0])
def test_inplace_softmax_over_wide_score_ranges(spread):
    """The kernel's own exp (valid on [-87, 0], inputs clamped there first): queries scaled
    so that scores span far more than 87, where exp underflows, and a nearly one-hot
    softmax; the output still matches the reference."""
    pairs = PAIRS["decode"] + [(70, 3)]
    case = make_case([c for c, _ in pairs], [q for _, q in pairs], block_size=16,
                     num_kv_heads=2, group=3, head_dim=64, dtype=torch.float32, seed=11)
    case.query.mul_(spread)
    want = reference.paged_attention(case.attention_args(), case.guarded_out())
    got = case.guarded_out()
    inplace.paged_attention(case.attention_args(), got, list(range(len(pairs))))
    n = case.query.shape[0] - case.num_pad_rows
    atol, rtol = TOLERANCES[torch.float32]
    torch.testing.assert_close(got[:n], want[:n], atol=atol, rtol=rtol)


@pytest.mark.skipif(not inplace.available() or not inplace.tile_isa(),
                    reason="no extend GEMM here (neither AVX-512 nor AVX2 + FMA)")
def test_extend_gemm_past_the_avx512_context_cap():
    """The AVX-512 extend GEMM keeps a task's scores for every position (ctx x 16 rows x
    group floats per thread), so there `auto` runs it only up to gemm_max_context and the
    AVX2 GEMM beyond (it keeps one chunk of 64 positions and runs at any context; the row
    tiles there were 4-5x slower). A sequence wholly past the cap, one whose last task
    crosses it (its earlier tasks end at or under it) and a short extend all match the
    reference on `auto`; the rows past the cap are not the row tiles' bits (a GEMM ran,
    summing in another order) on either ISA."""
    cap = inplace._paged_attn.gemm_max_context
    pairs = [(cap + 100, 40), (cap + 16, 48), (300, 40)]
    case = make_case([c for c, _ in pairs], [q for _, q in pairs], block_size=16,
                     num_kv_heads=1, group=3, head_dim=64, dtype=torch.float32, seed=13)
    want = reference.paged_attention(case.attention_args(), case.guarded_out())
    got = {path: case.guarded_out() for path in ("auto", "rows")}
    for path, out in got.items():
        inplace.paged_attention(case.attention_args(), out, None, path=path)
    n = case.query.shape[0] - case.num_pad_rows
    atol, rtol = TOLERANCES[torch.float32]
    torch.testing.assert_close(got["auto"][:n], want[:n], atol=atol, rtol=rtol)
    starts = case.query_start_loc.tolist()
    past = [*range(starts[0], starts[1]), *range(starts[1] + 32, starts[2])]
    assert not torch.equal(got["auto"][past], got["rows"][past]), "past the cap: no GEMM"


@pytest.mark.parametrize("path", ["bogus", "Auto"])
@pytest.mark.parametrize("count_threads", [False, True], ids=["paged_attention", "threads_used"])
def test_an_unknown_path_is_refused_before_anything_runs(path, count_threads):
    """A ValueError listing the paths (before: a bare KeyError), nothing written."""
    case = make_case([9], [9], block_size=16, num_kv_heads=1, group=1, head_dim=64,
                     dtype=torch.float32, seed=1)
    out = case.guarded_out()
    run = inplace.threads_used if count_threads else inplace.paged_attention
    with pytest.raises(ValueError, match=rf"path must be one of 'auto', 'rows', 'generic', "
                                         rf"got '{path}'"):
        run(case.attention_args(), out, None, path=path)
    assert (out == GUARD).all()


def test_supports_only_fp32_cpu_with_matching_layouts():
    case = make_case([20], [1], block_size=16, num_kv_heads=2, group=2, head_dim=64,
                     dtype=torch.float32)
    assert inplace.supports(case.query, case.k_cache, case.v_cache)
    assert not inplace.supports(case.query.half(), case.k_cache.half(), case.v_cache.half())
    assert not inplace.supports(case.query, case.k_cache, case.v_cache.contiguous())


@pytest.fixture
def kernel_calls(monkeypatch) -> list:
    """The `ids` argument of every in-place kernel call the test makes (None: the whole
    batch), the kernel still running."""
    calls = []
    real = inplace.paged_attention
    monkeypatch.setattr(inplace, "paged_attention",
                        lambda *a, **k: calls.append(a[-1]) or real(*a, **k))
    return calls


@pytest.mark.parametrize("tiles", [False, True], ids=["sdpa-prefill", "whole"])
def test_sdpa_path_sends_decode_rows_to_the_kernel(tiles, kernel_calls):
    """The CPU production path runs every decode row of an fp32 batch in one kernel call,
    and the other sequences through SDPA; with `whole` (the default where the kernel has
    its AVX-512 tiles) the whole batch goes to the kernel in one call (ids None). Either
    way the output matches the reference."""
    pairs = PAIRS["extend"]
    case = make_case([c for c, _ in pairs], [q for _, q in pairs], block_size=16,
                     num_kv_heads=2, group=3, head_dim=64, dtype=torch.float32, seed=3)
    got = sdpa.paged_attention(case.attention_args(), case.guarded_out(), whole=tiles)
    want = reference.paged_attention(case.attention_args(), case.guarded_out())
    assert kernel_calls == ([None] if tiles else [[i for i, (_, q) in enumerate(pairs) if q == 1]])
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


def test_sdpa_path_runs_a_decode_step_in_one_call_without_ids(kernel_calls):
    """max_query_len == 1: every sequence in one kernel call (ids None, so no host read of
    the lengths); a sequence without a query token is skipped; matches the reference."""
    pairs = PAIRS["decode"]
    case = make_case([c for c, _ in pairs], [q for _, q in pairs], block_size=16,
                     num_kv_heads=2, group=3, head_dim=64, dtype=torch.float32, seed=5)
    args = case.attention_args(max_query_len=1, max_seq_len=300)
    got = sdpa.paged_attention(args, case.guarded_out())
    want = reference.paged_attention(args, case.guarded_out())
    assert kernel_calls == [None]
    n = case.query.shape[0] - case.num_pad_rows
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
    assert (got[n:] == GUARD).all()


def test_sdpa_path_sends_whole_batches_where_the_kernel_has_tiles(monkeypatch):
    monkeypatch.setattr(inplace, "has_tiles", lambda head_dim: head_dim == 64)
    calls = []
    monkeypatch.setattr(inplace, "paged_attention", lambda *a, **k: calls.append(a[-1]))
    for head_dim, expected in ((64, None), (40, [1])):
        calls.clear()
        case = make_case([20, 16], [20, 1], block_size=16, num_kv_heads=2, group=3,
                         head_dim=head_dim, dtype=torch.float32)
        sdpa.paged_attention(case.attention_args(max_query_len=20))
        assert calls == [expected]


@pytest.mark.parametrize("max_query_len", [1, 20])
def test_sdpa_path_without_out_zeroes_only_the_padding_rows(max_query_len):
    """With no `out`, the kernel's output buffer starts empty: every query row is written
    by the kernel and the padding rows after `query_start_loc[-1]` are zero."""
    q_lens = [1, 1] if max_query_len == 1 else [20, 1]
    case = make_case([20, 16], q_lens, block_size=16, num_kv_heads=2, group=3, head_dim=64,
                     dtype=torch.float32, num_pad_rows=3)
    args = case.attention_args(max_query_len=max_query_len, max_seq_len=20)
    got = sdpa.paged_attention(args, whole=True)
    want = reference.paged_attention(args)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
    assert (got[-3:] == 0).all()


def test_kernel_threads_follow_the_team_or_the_omp_wait_policy(monkeypatch, threads_via):
    """Torch's thread count in torch's team, whatever the policy; in the kernel's own pool
    only where OpenMP's workers sleep, one thread beside spinners."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        if inplace.team_available():
            inplace.use_team(True)
            monkeypatch.setattr(inplace, "_OMP_PASSIVE", False)
            assert inplace._kernel_threads() == 3
        inplace.use_team(False)
        monkeypatch.setattr(inplace, "_OMP_PASSIVE", False)
        assert inplace._kernel_threads() == 1
        monkeypatch.setattr(inplace, "_OMP_PASSIVE", True)
        assert inplace._kernel_threads() == 3
    finally:
        torch.set_num_threads(before)


def _mapped_file(address: int) -> str:
    """The file /proc/self/maps shows at `address` (a route apart from dladdr), or ""."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.rstrip("\n").split(maxsplit=5)
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= address < hi:
                return fields[5] if len(fields) == 6 else ""
    return ""


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps")
def test_team_is_the_gomp_parallel_of_torchs_libgomp():
    """Where torch runs on libgomp the kernel gets GOMP_parallel in the libgomp file that
    the process has mapped, torch's own copy where its wheel ships one (torch/lib);
    elsewhere 0, the kernel's own pool. Checked through /proc/self/maps, not the lookup's
    own dladdr."""
    found = inplace._libgomp_parallel()
    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        assert found == 0
        return
    if not found:
        pytest.skip("torch's OpenMP runtime is not libgomp here")
    path = _mapped_file(found)
    assert os.path.basename(path).startswith("libgomp") and "plugin" not in path, path
    lib = Path(torch.__file__).parent / "lib"
    shipped = [p for p in lib.glob("libgomp*.so*") if "plugin" not in p.name]
    if shipped:
        assert any(os.path.samefile(path, p) for p in shipped), (path, shipped)


def test_team_lookup_answers_nothing_without_an_openmp_libgomp(monkeypatch):
    """0 (the pool) where torch's backend is not OpenMP, libtorch_cpu is not mapped at the
    path given, or dladdr names another library (LLVM's or Intel's runtime, a libgomp
    plugin); the wheel's names of libgomp itself pass."""
    if not inplace.team_available():
        pytest.skip("torch's OpenMP runtime is not libgomp here")
    assert inplace._libgomp_parallel(torch_cpu="/nonexistent/libtorch_cpu.so") == 0
    for name in ("libomp.so", "libiomp5.so", "libgomp-plugin-nvptx.so.1"):
        monkeypatch.setattr(inplace, "_library_of", lambda address, n=name: f"/x y/{n}")
        assert inplace._libgomp_parallel() == 0, name
    for name in ("libgomp.so.1", "libgomp-a34b3233.so.1"):
        monkeypatch.setattr(inplace, "_library_of", lambda address, n=name: f"/x y/{n}")
        assert inplace._libgomp_parallel() == inplace._TEAM_FOUND, name
    monkeypatch.undo()
    monkeypatch.setattr(torch.__config__, "parallel_info",
                        lambda: "ATen parallel backend: native thread pool")
    assert inplace._libgomp_parallel() == 0


# Run in a fresh interpreter: the pool's threads, once started, live as long as the process.
_OBSERVE = """
import json, sys, torch
sys.path[:0] = [{tests!r}, {bench!r}]
if {nothing!r}:  # as on a torch whose parallel backend is not OpenMP
    torch.__config__.parallel_info = lambda: "ATen parallel backend: native thread pool"
from generate import kernel_pool_threads
from kvsaga.kernels import inplace
from test_kernel_inplace import _threaded_case
torch.set_num_threads(2)
case, want = _threaded_case(seed=3, context=4000)
most, err = 0, 0.0
for _ in range(300):  # until a call's tasks ran on 2 threads (a busy core may delay one)
    got = case.guarded_out()
    most = max(most, inplace.threads_used(case.attention_args(), got, None))
    err = max(err, float((got - want).abs().max()))
    if most > 1:
        break
print(json.dumps({{"team": inplace.team_available(), "most": most, "err": err,
                  "pool": len(kernel_pool_threads())}}))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc/self/task")
@pytest.mark.parametrize("nothing", [False, True], ids=["team", "lookup-finds-nothing"])
def test_tasks_run_on_torchs_team_not_the_pool(nothing):
    """In torch's team a threaded call's tasks run on more than one thread and no pool
    thread (kvsaga-attn) ever starts; where the lookup finds nothing, the pool runs them
    on more than one thread. The output matches the reference either way."""
    if not nothing and not inplace.team_available():
        pytest.skip("torch's OpenMP runtime is not libgomp here")
    here = Path(__file__).resolve().parent
    code = _OBSERVE.format(tests=str(here), bench=str(here.parents[1] / "bench"),
                           nothing=nothing)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["most"] > 1 and seen["err"] < 1e-4, seen
    assert seen["team"] is (not nothing)
    assert (seen["pool"] > 0) is nothing, seen


def test_use_team_refuses_where_there_is_none(monkeypatch):
    """use_team(True) without a team is a ValueError that leaves the pool in place."""
    monkeypatch.setattr(inplace, "_TEAM_FOUND", 0)  # as the lookup answers without libgomp
    monkeypatch.setattr(inplace, "_OMP_TEAM", 0)
    with pytest.raises(ValueError, match="not a libgomp"):
        inplace.use_team(True)
    assert inplace._OMP_TEAM == 0 and not inplace.team_available()


def _threaded_case(seed: int, context: int = 300):
    """A decode batch with enough work for the kernel to use several threads, and the
    reference's output for it."""
    pairs = [(context + 37 * i, 1) for i in range(12)]
    case = make_case([c for c, _ in pairs], [q for _, q in pairs], block_size=16,
                     num_kv_heads=2, group=3, head_dim=64, dtype=torch.float32, seed=seed)
    want = reference.paged_attention(case.attention_args(), case.guarded_out())
    return case, want


@pytest.mark.parametrize("via", ["team", "pool"])
def test_inplace_calls_from_several_threads_at_once(via, threads_via):
    """The kernel releases the GIL, so Python threads can be in it together: in torch's
    team each calling thread leads a team of its own; with the pool one uses the workers,
    the others run on their own thread; every result matches the reference."""
    from concurrent.futures import ThreadPoolExecutor

    threads_via(via)
    cases = [_threaded_case(seed) for seed in range(4)]

    def run(i: int) -> float:
        case, want = cases[i % len(cases)]
        got = case.guarded_out()
        inplace.paged_attention(case.attention_args(), got, None)
        return float((got - want).abs().max())

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with ThreadPoolExecutor(4) as pool:
            errors = list(pool.map(run, range(32)))
    finally:
        torch.set_num_threads(before)
    assert max(errors) < 1e-4


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("via", ["team", "pool"])
def test_inplace_in_a_forked_child_starts_its_own_workers(via, threads_via):
    """A child forked after the parent's threads ran the kernel (in torch's team or the
    pool) has none of them: the kernel must start its own there (a forked child leaves
    libgomp's team, which would hang), not wait forever on the parent's."""
    threads_via(via)
    case, want = _threaded_case(seed=9)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        inplace.paged_attention(case.attention_args(), case.guarded_out(), None)  # pool up
        pid = os.fork()
        if pid == 0:  # the child: only the kernel and elementwise ops on small tensors
            status = 2  # it raised: without os._exit here the exception went on into a
            try:        # second pytest, which ran the rest of the suite beside this one
                got = case.guarded_out()
                inplace.paged_attention(case.attention_args(), got, None)
                status = 0 if float((got - want).abs().max()) < 1e-4 else 1
            finally:
                os._exit(status)
    finally:
        torch.set_num_threads(before)
    deadline = time.monotonic() + 120
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung in the kernel")
    code = os.waitstatus_to_exitcode(done[1])
    assert code != 2, "the kernel raised in the forked child"
    assert code == 0, "the child's output differs"
