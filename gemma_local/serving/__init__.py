"""Serving many models from one process: which model a request names, and which are loaded.

    catalog.py      ModelCatalog: the models a server offers (store + embedded, or one), and
                    how a request's ``model`` resolves to one (names, aliases, file names,
                    family ids, the hosted id's stated substitution)
    manager.py      ModelManager: load on demand (once, however many ask), keep-alive,
                    least-recently-used eviction under a memory budget, leases per request
    keep_alive.py   the ``5m`` / ``0`` / ``-1`` durations of --keep-alive and ``keep_alive``

Nothing here knows HTTP: the server asks the manager for a lease on a pipeline, and the
engine loading itself is a :class:`~gemma_local.serving.manager.ModelLoader` given by the
caller (``serve`` gives one built on the memory planner).
"""

from gemma_local.serving.catalog import ModelCatalog, ModelEntry, Resolution
from gemma_local.serving.keep_alive import FOREVER, parse_keep_alive
from gemma_local.serving.manager import Lease, LoadedModel, LoadPlan, ModelLoader, ModelManager, ModelState

__all__ = [
    "FOREVER",
    "Lease",
    "LoadPlan",
    "LoadedModel",
    "ModelCatalog",
    "ModelEntry",
    "ModelLoader",
    "ModelManager",
    "ModelState",
    "Resolution",
    "parse_keep_alive",
]
