"""A pool of more than 2^31 elements: every kernel on blocks near its end.

A missing int64 cast in offset math wraps the address, which crashes the process rather
than failing an assertion, so the kernels run in a subprocess. The 4 GiB pool comes from
torch.empty, which Linux backs lazily: only the few blocks touched cost memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import torch
    import kvsaga.kernels as K
    from kvsaga.kernels import reference as R
    from kvsaga.kernels.args import PagedAttentionArgs

    device = "cuda" if torch.cuda.is_available() else "cpu"
    nb, bs, d = 2**20 + 8, 16, 64
    kv = torch.empty((nb, 1, 2, bs, 1, d), dtype=torch.float16, device=device)
    assert kv.numel() > 2**31, kv.numel()
    k_cache, v_cache = kv[:, 0, 0], kv[:, 0, 1]
    gen = torch.Generator().manual_seed(0)
    blocks = [nb - 3, nb - 1]
    key = torch.randn(20, 1, d, generator=gen).half().to(device)
    value = torch.randn(20, 1, d, generator=gen).half().to(device)
    slots = torch.tensor([blocks[t // bs] * bs + t % bs for t in range(20)], device=device)
    K.cache_write(key, value, k_cache, v_cache, slots)
    assert torch.equal(k_cache[nb - 3], key[:16]) and torch.equal(v_cache[nb - 1, :4], value[16:])

    tables = torch.tensor([blocks], dtype=torch.int32, device=device)
    seq_lens = torch.tensor([20], dtype=torch.int32, device=device)
    for q_len in (1, 5):
        q = torch.randn(q_len, 2, d, generator=gen).half().to(device)
        qsl = torch.tensor([0, q_len], dtype=torch.int32, device=device)
        args = (q, k_cache, v_cache, tables, seq_lens, qsl, d**-0.5)
        out = K.paged_attention(*args, max_query_len=q_len)
        want = R.paged_attention(PagedAttentionArgs(*args))
        torch.testing.assert_close(out, want, atol=2e-3, rtol=2e-3)

    ids = lambda *v: torch.tensor(v, dtype=torch.int64, device=device)
    K.block_copy(kv, ids(nb - 1), ids(nb - 2))
    assert torch.equal(kv[nb - 2, 0, :, :4], kv[nb - 1, 0, :, :4])
    staging = K.gather_blocks(kv, ids(nb - 1, nb - 3))
    assert torch.equal(staging[:, 0, :, :4], kv[[nb - 1, nb - 3], 0, :, :4])
    K.scatter_blocks(staging, kv, ids(nb - 5, nb - 4))
    assert torch.equal(kv[nb - 4, 0, :, :4], kv[nb - 3, 0, :, :4])
    print("ok")
    """
)


def test_pool_over_2_31_elements(triton_device):
    if triton_device == "cuda" and torch.cuda.mem_get_info()[0] < 6 * 2**30:
        pytest.skip("needs 6 GiB of free GPU memory")
    env = dict(os.environ, KVSAGA_KERNELS="triton")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("ok")
