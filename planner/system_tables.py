"""The `thanosql` schema: live views of the model registry that SQL can query.

A Python SchemaProvider answers each lookup with a fresh snapshot, so
`SELECT * FROM thanosql.training_info` shows progress while a model trains.
"""

from __future__ import annotations

import pyarrow.dataset as ds
from datafusion.catalog import SchemaProvider, Table

SYSTEM_TABLES = {
    "models": lambda registry: registry.models_table(),
    "training_info": lambda registry: registry.training_info_table(),
}


class RegistrySchema(SchemaProvider):
    def __init__(self, engine):
        self.engine = engine

    def table_names(self) -> set[str]:
        return set(SYSTEM_TABLES)

    def table(self, name: str) -> Table | None:
        producer = SYSTEM_TABLES.get(name)
        if producer is None:
            return None
        return Table(ds.dataset(producer(self.engine.registry)))

    def table_exist(self, name: str) -> bool:
        return name in SYSTEM_TABLES


def register(engine) -> None:
    from planner.engine import SYSTEM_SCHEMA
    engine.ctx.catalog().register_schema(SYSTEM_SCHEMA, RegistrySchema(engine))
