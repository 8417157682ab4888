"""Which bookkeeping core a KVCacheManager runs: the C++ one or the Python reference.

The core is the block pool (with its free queue), the prefix index, the block hasher and the
manager's hot loops (`append_tokens`, `allocate_slots`, `decode_step`). Two implementations
behave identically (tests/test_core_parity.py runs them side by side):

- "python": kvsaga/pool.py, prefix.py, block_queue.py and the loops in manager.py; the
  readable reference, and the fallback wherever the C++ core was not built.
- "cpp": kvsaga._kvcore, compiled from csrc/ by the package's own build (setup.py). A
  machine without a C++17 compiler installs without it.

`KVSAGA_CORE=python|cpp` picks; unset (or "auto") means cpp when it was built, else python.
The first choice made in a process is logged once, at INFO, or at WARNING when the C++ core
is missing and the Python one stands in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kvsaga import envs
from kvsaga.block_queue import BlockQueue
from kvsaga.pool import _STATE_NAMES, BlockPool, check_pool
from kvsaga.prefix import BlockHasher, PrefixIndex

log = logging.getLogger("kvsaga")

CORES = ("python", "cpp")


@dataclass(frozen=True)
class Core:
    """One implementation of the core's classes. `ManagerCore` is None for Python, whose
    manager runs its own loops."""

    name: str
    BlockPool: type
    BlockQueue: type
    PrefixIndex: type
    BlockHasher: type
    ManagerCore: Any = None


PYTHON = Core("python", BlockPool, BlockQueue, PrefixIndex, BlockHasher)


def _load_cpp() -> Core:
    """The C++ core; ImportError when it was not built, or was built from older sources
    (a stale kvsaga/_kvcore*.so in a checkout whose Python code needs what it lacks)."""
    from kvsaga import _kvcore

    if not hasattr(_kvcore.BlockPool, "calls"):  # (the pool's call record, session 55)
        raise ImportError("kvsaga._kvcore was built from older sources (its BlockPool has no "
                          "`calls`): rebuild it (`python setup.py build_ext --inplace`)")

    class CppBlockPool(_kvcore.BlockPool):
        """kvsaga._kvcore's pool plus the Python twin's checks and names."""

        def state_name(self, block_id: int) -> str:
            return _STATE_NAMES[self.state[block_id]]

        def check_integrity(self) -> None:
            check_pool(self, self.free_ids())

    return Core(
        "cpp",
        CppBlockPool,
        _kvcore.BlockQueue,
        _kvcore.PrefixIndex,
        _kvcore.BlockHasher,
        _kvcore.ManagerCore,
    )


_cpp: Core | None = None
_cpp_error: str | None = None
_logged = False


def cpp_available() -> bool:
    """Whether the C++ core was built for this installation."""
    global _cpp, _cpp_error
    if _cpp is None and _cpp_error is None:
        try:
            _cpp = _load_cpp()
        except ImportError as e:
            _cpp_error = str(e)
    return _cpp is not None


def get_core(name: str | None = None) -> Core:
    """The core named `name` ("python" or "cpp"), or by KVSAGA_CORE when None.

    Raises:
        ValueError: an unknown name.
        RuntimeError: "cpp" asked for by name or KVSAGA_CORE, and the C++ core was not built.
    """
    global _logged
    wanted = envs.KVSAGA_CORE if name is None else name
    if wanted not in (*CORES, "auto"):
        raise ValueError(f"core must be one of {', '.join(CORES)}, got {wanted!r}")
    if wanted == "python":
        core = PYTHON
    elif cpp_available():
        core = _cpp
    elif wanted == "cpp":
        raise RuntimeError(
            f"the C++ core (kvsaga._kvcore) is not built: {_cpp_error}. Reinstall with a C++17 "
            "compiler (`pip install -e .`), or use KVSAGA_CORE=python"
        )
    else:
        if not _logged:
            log.warning(
                "bookkeeping core: python (the C++ core kvsaga._kvcore is not built: "
                "%s; a C++17 compiler at install time builds it)",
                _cpp_error,
            )
            _logged = True
        return PYTHON
    if not _logged:
        log.info("bookkeeping core: %s", core.name)
        _logged = True
    return core
