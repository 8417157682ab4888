"""Fixtures for the engine tests: the real default model (loaded once), its HF twin, and tiny
random HF model directories."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from kvsaga.engine.loader import LoadedModel, default_model_path, load_model
from kvsaga.engine.model_config import ModelLoadError
from tests.helpers_models import build_tiny_model

if not torch.cuda.is_available():
    # Triton decides interpreted-or-compiled when `triton.language` is first imported, and
    # building HF models imports it (through torch) long before the first KVSAGA_KERNELS=triton
    # call could set this; without a GPU, only the interpreter can run the kernels anyway.
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: on a small shared machine, OpenMP threads spin-waiting for a
    descheduled sibling make these matmul-bound tests 20x slower, not 2x faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    try:
        return default_model_path()
    except ModelLoadError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def smollm(gguf_path: Path) -> LoadedModel:
    """Our SmolLM2-135M-Instruct in fp32 on CPU."""
    return load_model(gguf_path, dtype=torch.float32, device="cpu", progress=False)


@pytest.fixture(scope="session")
def hf_tokenizer(gguf_path: Path):
    """transformers' tokenizer built from the same GGUF file (vocabulary, merges, special
    tokens, decoder: its own conversion), with SmolLM2's pre-tokenizer put back.

    transformers' GGUF conversion gives every GPT-2-style vocabulary a plain ByteLevel
    pre-tokenizer, dropping the digit split of llama.cpp's pre-type "smollm" (`\\p{N}`, then
    GPT-2's regex) that SmolLM2's own HF tokenizer.json holds as Sequence[Digits(individual),
    ByteLevel]: it then split whitespace before a digit differently (">x\\n 7460": "\\n", " "
    where SmolLM2 and kvsaga give "\\n "), so the parity tests could hold no such text."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import pre_tokenizers

    from kvsaga.engine.gguf_file import GGUFFile

    tok = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    if GGUFFile(gguf_path).metadata.get("tokenizer.ggml.pre") == "smollm":
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ])
    return tok


@pytest.fixture(scope="session")
def hf_smollm(gguf_path: Path):
    """transformers' model loaded by its own GGUF code from the same file, fp32."""
    transformers = pytest.importorskip("transformers")
    try:
        import accelerate  # noqa: F401  (from_pretrained needs it for GGUF)
    except ImportError:
        # The same transformers GGUF conversion, without accelerate's loading path.
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        config = transformers.AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        parsed = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)
        model.load_state_dict(parsed["tensors"], strict=False)
        model.tie_weights()
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Factory: name in TINY_VARIANTS -> an HF directory (config, safetensors, tokenizer),
    built once per session with transformers and random weights."""
    pytest.importorskip("transformers")
    built: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in built:
            built[name] = build_tiny_model(name, tmp_path_factory.mktemp(name))
        return built[name]

    return make


@pytest.fixture
def two_threads():
    """The test's thread on two torch threads (the engine tests run one), and the count it
    had put back after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
