"""Fixtures for the tests against the real vLLM (skipped where vLLM is not installed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from tests.bench_scripts import load_bench  # noqa: E402


@pytest.fixture(scope="session")
def hf_model_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as an HF directory, written from the shipped GGUF by kvsaga's
    exporter (reused from $KVSAGA_VLLM_MODEL_DIR when that directory holds one)."""
    cached = os.environ.get("KVSAGA_VLLM_MODEL_DIR")
    if cached and (Path(cached) / "config.json").is_file():
        return Path(cached)  # kvsaga's engine (and its kernels) not needed then
    from kvsaga.engine.export import export_hf
    from kvsaga.engine.loader import default_model_path
    from kvsaga.engine.model_config import ModelLoadError

    try:
        gguf = default_model_path()
    except ModelLoadError as e:
        pytest.skip(str(e))
    return export_hf(gguf, Path(cached) if cached else tmp_path_factory.mktemp("smollm2"))


@pytest.fixture(scope="module")
def sim():
    """bench/vllm_offload_sim.py, loaded once a module (the offload tests drive its runs)."""
    return load_bench("vllm_offload_sim")


@pytest.fixture(scope="module")
def replay_mod():
    """bench/vllm_scheduler_replay.py, loaded once a module."""
    return load_bench("vllm_scheduler_replay")
