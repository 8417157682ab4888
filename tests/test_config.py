import pytest

from kvsaga.config import KVSpec, PoolConfig, parse_bytes


def test_bytes_per_token_matches_published_figures():
    # Llama-3.1-8B: 32 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes = 128 KiB per token.
    llama8b = KVSpec(num_layers=32, num_kv_heads=8, head_dim=128, dtype="bfloat16")
    assert llama8b.bytes_per_token == 128 * 1024
    assert llama8b.bytes_per_block == 16 * 128 * 1024
    smol = KVSpec(num_layers=30, num_kv_heads=3, head_dim=64, dtype="float16")
    assert smol.bytes_per_token == 23040
    assert smol.block_shape == (30, 2, 16, 3, 64)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"num_layers": 0}, "num_layers"),
        ({"num_kv_heads": -1}, "num_kv_heads"),
        ({"head_dim": 64.0}, "head_dim"),
        ({"block_size": True}, "block_size"),
        ({"dtype": "int8"}, "'int8'"),
    ],
)
def test_kvspec_rejects_bad_values(kwargs, needle):
    args = {"num_layers": 2, "num_kv_heads": 2, "head_dim": 64} | kwargs
    with pytest.raises(ValueError, match=needle):
        KVSpec(**args)


def test_pool_config_sizes_tiers():
    spec = KVSpec(2, 2, 64, "float16", 16)  # 16 KiB... per block: 2*2*2*64*2*16
    assert spec.bytes_per_block == 16384
    cfg = PoolConfig(kv_memory_bytes=10 * 16384 + 5, host_memory_bytes=3 * 16384)
    assert cfg.num_gpu_blocks(spec) == 10
    assert cfg.num_host_blocks(spec) == 3
    frac = PoolConfig(kv_memory_fraction=0.5)
    assert frac.num_gpu_blocks(spec, free_device_bytes=40 * 16384) == 20
    with pytest.raises(ValueError, match="free_device_bytes"):
        frac.num_gpu_blocks(spec)
    with pytest.raises(ValueError, match="holds no KV block"):
        PoolConfig(kv_memory_bytes=100).num_gpu_blocks(spec)


def test_a_host_budget_below_one_block_is_refused_as_the_gpu_budget_is():
    """A host budget above 0 that holds no block was taken as "no host tier", unsaid; 0 still
    means no host tier. check_budgets refuses either budget, leaving a fraction unchecked."""
    spec = KVSpec(2, 2, 64, "float16", 16)
    with pytest.raises(ValueError, match="^host_memory_bytes=1 holds no KV block of 16384 bytes$"):
        PoolConfig(host_memory_bytes=1).num_host_blocks(spec)
    assert PoolConfig(host_memory_bytes=0).num_host_blocks(spec) == 0
    assert PoolConfig(host_memory_bytes=16384).num_host_blocks(spec) == 1
    with pytest.raises(ValueError, match="^host_memory_bytes=16383 holds no KV block"):
        PoolConfig(kv_memory_fraction=0.5, host_memory_bytes=16383).check_budgets(spec)
    with pytest.raises(ValueError, match="^kv_memory_bytes=16383 holds no KV block"):
        PoolConfig(kv_memory_bytes=16383, host_memory_bytes=16384).check_budgets(spec)
    PoolConfig(kv_memory_bytes=16384, host_memory_bytes=0).check_budgets(spec)
    PoolConfig().check_budgets(spec)  # by fraction: sized (and checked) once loaded


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"kv_memory_bytes": 1, "kv_memory_fraction": 0.5}, "not both"),
        ({"kv_memory_fraction": 1.5}, "1.5"),
        ({"kv_memory_bytes": -3}, "-3"),
        ({"host_memory_bytes": -1}, "-1"),
    ],
)
def test_pool_config_rejects_bad_values(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        PoolConfig(**kwargs)


def test_parse_bytes():
    assert parse_bytes("512M") == 512 * 2**20
    assert parse_bytes("1.5GiB") == 3 * 2**29
    assert parse_bytes("4096") == 4096
    with pytest.raises(ValueError, match="12Q"):
        parse_bytes("12Q")
    # No unit and a fraction: "1.5" meant 1.5G, not 1 byte (it was read as 1).
    with pytest.raises(ValueError, match=r"'1.5' is a fraction of a byte; give a unit, e.g. 1.5G"):
        parse_bytes("1.5")
    assert parse_bytes("1.5K") == 1536 and parse_bytes("2.0G") == 2 * 2**30
