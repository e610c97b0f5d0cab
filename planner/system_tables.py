"""The `thanosql` schema: live views of the model registry that SQL can query.

A Python SchemaProvider answers each lookup with a snapshot of the registry, so
`SELECT * FROM thanosql.training_info` shows progress while a model trains.  A snapshot is
rebuilt only when the catalog changed since the last one (SQLite's `data_version`), so
repeated lookups between training steps cost one cheap pragma.  Snapshots are in-memory
tables (a MemTable, which plans under a sort even with no rows, unlike an empty pyarrow
dataset): nothing is written to disk.  How much `training_info` holds is bounded by the
registry (see ml/registry.py: the last runs of each model, thinned past a cap).

Looking these tables up imports `ml.registry` only: no audio libraries, no torch.
"""

from __future__ import annotations

import threading

from datafusion import SessionContext
from datafusion.catalog import SchemaProvider, Table

SYSTEM_TABLES = {
    "models": lambda registry: registry.models_table(),
    "training_info": lambda registry: registry.training_info_table(),
    "progress": lambda registry: _progress_table(),
}
LIVE_TABLES = {"progress"}  # in this process's memory: never cached by the catalog's version


def _progress_table():
    from planner import progress
    return progress.table()


def _as_table(snapshot) -> Table:
    """The snapshot as a DataFusion MemTable.

    Made on a helper thread: lookups arrive on one of DataFusion's runtime threads, where
    building a DataFrame would start a runtime inside a runtime (a panic).  A fresh context
    per snapshot, because from_arrow registers a table in the context it runs in: a
    long-lived one would keep every snapshot alive.  The view keeps only its MemTable.
    """
    box: list = []

    def build() -> None:
        try:
            box.append(SessionContext().from_arrow(snapshot).into_view())
        except BaseException as exc:  # handed to the caller
            box.append(exc)

    thread = threading.Thread(target=build, name="thanosql-system-snapshot")
    thread.start()
    thread.join()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


class RegistrySchema(SchemaProvider):
    def __init__(self, engine):
        self.engine = engine
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[int, Table]] = {}

    # DataFusion reads `table_names` as an attribute of a Python schema provider (as a
    # method, information_schema and SHOW TABLES left the system tables out).
    @property
    def table_names(self) -> list[str]:  # type: ignore[override]
        return list(SYSTEM_TABLES)

    def table(self, name: str) -> Table | None:
        producer = SYSTEM_TABLES.get(name)
        if producer is None:
            return None
        registry = self.engine.registry
        if name in LIVE_TABLES:
            return _as_table(producer(registry))
        version = registry.data_version()
        with self._lock:
            cached = self._cache.get(name)
            if cached is not None and cached[0] == version:
                return cached[1]
        table = _as_table(producer(registry))
        with self._lock:
            self._cache[name] = (version, table)
        return table

    def table_exist(self, name: str) -> bool:
        return name in SYSTEM_TABLES


def register(engine) -> None:
    from planner.engine import SYSTEM_SCHEMA
    engine.ctx.catalog().register_schema(SYSTEM_SCHEMA, RegistrySchema(engine))
