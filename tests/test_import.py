"""`import kvsaga` and the bookkeeping core need neither torch nor Triton."""

import subprocess
import sys

CODE = """
import sys
sys.modules["torch"] = None      # any `import torch` now raises ImportError
sys.modules["triton"] = None
import kvsaga
from kvsaga import KVCacheManager, KVSpec
import kvsaga.sim
m = KVCacheManager(KVSpec(2, 2, 8, block_size=4), 8, policy="graph")
st = m.begin_step("s", list(range(9)))
m.allocate_slots("s", 9)
m.finish_step("s", tool="grep")
m.check_integrity()
assert "torch" not in sys.modules or sys.modules["torch"] is None
print("ok")
"""


def test_core_imports_without_torch_or_triton():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_lazy_llm_export():
    import kvsaga
    from kvsaga.engine.llm import LLM
    from kvsaga.engine.sampling import SamplingParams

    assert kvsaga.LLM is LLM
    assert kvsaga.SamplingParams is SamplingParams
