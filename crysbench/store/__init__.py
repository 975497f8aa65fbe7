"""Sharded HDF5 graph store: ingest (:func:`write_store`), open (:func:`open_store`), splits, loader.

The torch loader lives in :mod:`crysbench.store.loader` (imported on demand).
"""

from crysbench.store.manifest import SCHEMA_VERSION, GraphSpec, StoreError
from crysbench.store.reader import Store, open_store
from crysbench.store.writer import write_store

__all__ = ["SCHEMA_VERSION", "GraphSpec", "Store", "StoreError", "open_store", "write_store"]
