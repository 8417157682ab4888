"""This process's kvsaga request routers, where the gateway finds them (to tell them that a
session ended).

The set lives here and not on the router class: Ray Serve pickles the router class by value
when a deployment is configured (`RequestRouterConfig` registers the class's module,
`kvsaga.integrations.ray.router`, for pickling by value), so a process that unpickles it
holds a second class object whose class attributes are copies. A set kept on the class
split in two there: routers built from the copy registered in the copy's set, and the
gateway, importing the module, read the original's, which stayed empty. This module is
pickled by reference (by its import name), so every copy of the class adds to this one set.
"""

from __future__ import annotations

import weakref
from typing import Any


class _ProcessRouters(weakref.WeakSet):
    """A weak set that pickles empty: the routers of the process that pickles it neither can
    nor should travel (a live router in the set failed the pickle: "cannot pickle
    'weakref.ReferenceType' object")."""

    def __reduce__(self):
        return type(self), ()


ROUTERS: weakref.WeakSet[Any] = _ProcessRouters()


def routers_here() -> list[Any]:
    """The kvsaga routers alive in this process (those whose state is initialized)."""
    return [r for r in ROUTERS if hasattr(r, "kv_router")]
