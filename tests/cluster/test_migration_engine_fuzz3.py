"""`kvsaga.migration.import_session(engine, export)` with an export that is not one, or
whose K/V is not a tensor: an InvalidRequest, and the engine unchanged (they raised
AttributeError from `export.kv.shape`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from kvsaga import InvalidRequest  # noqa: E402
from kvsaga.engine.engine import LLMEngine  # noqa: E402
from kvsaga.engine.sampling import SamplingParams  # noqa: E402
from kvsaga.migration import export_session, import_session  # noqa: E402
from tests.helpers_models import build_tiny_model  # noqa: E402

GREEDY = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model("llama_gqa4_untied", tmp_path_factory.mktemp("migrate-fuzz3"))


def test_malformed_engine_imports_are_refused(tiny_dir: Path):
    a = LLMEngine(tiny_dir, device="cpu", progress=False, kv_memory_bytes=2**20)
    b = LLMEngine(tiny_dir, device="cpu", progress=False, kv_memory_bytes=2**20)
    req = a.add_request(list(range(5, 45)), GREEDY, session_id="s")
    while not req.finished:
        a.step()
    good = export_session(a, "s")
    before = (b.manager.stats(), sorted(b.manager.sessions), b.storage.kv.clone())
    for bad in ({"session_id": "s"}, None,
                dataclasses.replace(good, kv=good.kv.tolist()),
                dataclasses.replace(good, kv=good.kv.numpy())):
        with pytest.raises(InvalidRequest, match="SessionExport|K/V"):
            import_session(b, bad)
        stats, sessions, kv = before
        assert b.manager.stats() == stats and sorted(b.manager.sessions) == sessions
        assert torch.equal(b.storage.kv, kv)
    assert import_session(b, good) == good.num_tokens
    b.manager.check_integrity()
