"""An empty --model or (with --raw) an empty prompt is refused before anything loads.

`--model ""` (an unset `$MODEL`) was read as the current directory and loaded whatever model
was there; `generate "" --raw` loaded the model before finding the prompt empty."""

from __future__ import annotations

import pytest

from kvsaga import cli
from kvsaga.engine import llm as llm_module
from kvsaga.engine.model_config import ModelLoadError
from kvsaga.engine.weights import open_checkpoint


@pytest.fixture
def no_load(monkeypatch: pytest.MonkeyPatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(llm_module, "LLMEngine", refuse)


@pytest.mark.parametrize("path", ["", "  "])
def test_an_empty_model_path_is_refused_not_read_as_here(path, tmp_path, monkeypatch):
    (tmp_path / "only.gguf").write_bytes(b"GGUF")  # what "." would have found
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="the model path is empty"):
        open_checkpoint(path)


def test_generate_with_an_empty_model_fails_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "only.gguf").write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["generate", "hi", "--model", "", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvsaga: error: the model path is empty ('')") and err.count("\n") == 1


def test_an_empty_raw_prompt_is_refused_before_the_model_loads(capsys, no_load):
    assert cli.main(["generate", "", "--raw", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvsaga: error: the prompt is empty") and err.count("\n") == 1
