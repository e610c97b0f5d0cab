"""The `thanosql` schema: live views of the model registry that SQL can query.

A Python SchemaProvider answers each lookup with a fresh snapshot, so
`SELECT * FROM thanosql.training_info` shows progress while a model trains.
"""

from __future__ import annotations

import os
import tempfile

import pyarrow.dataset as ds
import pyarrow.parquet as pq
from datafusion.catalog import SchemaProvider, Table

SYSTEM_TABLES = {
    "models": lambda registry: registry.models_table(),
    "training_info": lambda registry: registry.training_info_table(),
}


class RegistrySchema(SchemaProvider):
    def __init__(self, engine):
        self.engine = engine
        self._empty_dir = tempfile.mkdtemp(prefix="thanosql-system-")

    def table_names(self) -> set[str]:
        return set(SYSTEM_TABLES)

    def table(self, name: str) -> Table | None:
        producer = SYSTEM_TABLES.get(name)
        if producer is None:
            return None
        snapshot = producer(self.engine.registry)
        if snapshot.num_rows == 0:
            # An in-memory dataset of no rows has no fragments, which DataFusion cannot
            # plan under a sort (SanityCheckPlan); an empty Parquet file is one fragment.
            return Table(ds.dataset(self._empty_file(name, snapshot.schema)))
        return Table(ds.dataset(snapshot))

    def _empty_file(self, name: str, schema) -> str:
        path = os.path.join(self._empty_dir, f"{name}.parquet")
        if not os.path.exists(path):
            pq.write_table(schema.empty_table(), path)
        return path

    def table_exist(self, name: str) -> bool:
        return name in SYSTEM_TABLES


def register(engine) -> None:
    from planner.engine import SYSTEM_SCHEMA
    engine.ctx.catalog().register_schema(SYSTEM_SCHEMA, RegistrySchema(engine))
