"""Finding a checkpoint and streaming its weights: HF directories (safetensors) and GGUF files.

`open_checkpoint(path)` tells the two apart and returns a `Checkpoint`: its `ModelConfig` and
an iterator of (HF name, tensor) pairs that `LlamaForCausalLM.load_weights` consumes, one
tensor at a time, so peak memory stays near the model's own size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from kvsaga.engine.gguf_file import GGUFFile
from kvsaga.engine.model_config import ModelConfig, ModelLoadError

__all__ = ["Checkpoint", "ModelLoadError", "open_checkpoint", "safetensors_files"]


@dataclass
class Checkpoint:
    """A model on disk, opened but not yet read.

    Attributes:
        path: the HF directory or the .gguf file.
        format: "hf" or "gguf".
        config: the architecture.
        gguf: the opened GGUF file (format "gguf" only), shared with the tokenizer loader.
    """

    path: Path
    format: str
    config: ModelConfig
    gguf: GGUFFile | None = None

    def num_tensors(self) -> int:
        if self.gguf is not None:
            return self.gguf.num_tensors
        from safetensors import safe_open

        total = 0
        for f in safetensors_files(self.path):
            with safe_open(str(f), framework="pt") as st:
                total += len(list(st.keys()))
        return total

    def weights(self, progress: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (HF name, tensor) pairs, with a progress bar on stderr.

        Args:
            progress: show a tqdm bar.
        """
        source = self.gguf.weights() if self.gguf is not None else _safetensors_weights(self.path)
        bar = tqdm(
            source,
            total=self.num_tensors(),
            desc=f"Loading {self.path.name}",
            unit="tensor",
            disable=not progress,
            leave=False,
        )
        yield from bar


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open an HF model directory or a GGUF file and read its config.

    Args:
        path: a directory with `config.json` and `*.safetensors`, a `.gguf` file, or a
            directory holding exactly one `.gguf` file.

    Returns:
        The checkpoint, weights not yet read.

    Raises:
        ModelLoadError: nothing loadable at `path`, an unsupported architecture, or a
            malformed config.
    """
    if not str(path).strip():  # Path("") is ".": an unset $MODEL loaded whatever was there
        raise ModelLoadError(f"the model path is empty ({str(path)!r}); pass a GGUF file or "
                             "an HF directory")
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"model path does not exist: {p}")
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise ModelLoadError(
                f"{p} is a file but not a .gguf file; pass a GGUF file or an HF directory"
            )
        gguf = GGUFFile(p)
        return Checkpoint(p, "gguf", gguf.config, gguf)
    if (p / "config.json").is_file():
        cfg = _read_json(p / "config.json")
        gen_path = p / "generation_config.json"
        gen = _read_json(gen_path) if gen_path.is_file() else None
        config = ModelConfig.from_hf_config(cfg, gen)
        safetensors_files(p)  # fail now, not after the tokenizer loaded
        return Checkpoint(p, "hf", config)
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
        return open_checkpoint(ggufs[0])
    if len(ggufs) > 1:
        raise ModelLoadError(
            f"{p} holds several GGUF files ({[g.name for g in ggufs]}); pass one of them"
        )
    raise ModelLoadError(f"{p} has no config.json and no .gguf file: not a model directory")


def safetensors_files(directory: Path) -> list[Path]:
    """The safetensors shards of an HF directory, from its index when there is one.

    Raises:
        ModelLoadError: no shard, or a shard named by the index is missing.
    """
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map") or {}
        files = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(
                f"{directory}: shards named by {index.name} are missing: {missing}"
            )
        if not files:
            raise ModelLoadError(f"{index} has an empty weight_map")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        bins = sorted(f.name for f in directory.glob("*.bin"))
        hint = f" (found {bins}: only safetensors are supported)" if bins else ""
        raise ModelLoadError(f"{directory}: no *.safetensors weights{hint}")
    return files


def _safetensors_weights(directory: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for f in safetensors_files(directory):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, st.get_tensor(name)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from e
