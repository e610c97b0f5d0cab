"""Plan nodes: what a prepared statement will do, known before anything runs.

Every node states its `dataset_schema`, `parameter_schema` and `is_update` at prepare
time (what Flight SQL clients ask for), and does its work only in `run`. Queries return
a RecordBatchReader; updates return an affected-row count.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pyarrow as pa

from planner.errors import Cancelled, DeadlineExceeded, InvalidInput, PlannerError

EMPTY_SCHEMA = pa.schema([])


class CancelToken(threading.Event):
    """Set by CancelFlightInfo; `is_set` also asks whether the client went away (or its
    gRPC deadline passed) and whether the statement ran past its timeout."""

    def __init__(self, probe: Callable[[], bool] | None = None):
        super().__init__()
        self.probe = probe
        self.deadline: float | None = None
        self.timeout = 0.0
        self.timed_out = False
        self.release_tables: Callable[[], None] | None = None  # set by the engine (its pin)

    def finished_reading(self) -> None:
        """The statement holds every table row it needs (BUILD, before it trains for
        hours): the table versions it pinned may go now."""
        release, self.release_tables = self.release_tables, None
        if release is not None:
            release()

    def start_timer(self, seconds: float) -> None:
        """Make the statement stop once it has run `seconds` (0: no limit)."""
        if seconds > 0:
            self.timeout = seconds
            self.deadline = time.monotonic() + seconds

    def is_set(self) -> bool:  # noqa: D401 - Event API
        if super().is_set():
            return True
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.timed_out = True
            self.set()
            return True
        if self.probe is not None and self.probe():
            self.set()
            return True
        return False

    def check(self) -> None:
        if self.is_set():
            raise self.error()

    def error(self) -> PlannerError:
        """What stopped the statement: its timeout, or a cancel."""
        if self.timed_out:
            return DeadlineExceeded(f"the statement ran past the server's statement timeout "
                                    f"({self.timeout:g} s) and was stopped")
        return Cancelled("the statement was cancelled")


@dataclass
class Plan:
    """Base node. `children` are DataFusion logical plans shown by EXPLAIN."""
    dataset_schema: pa.Schema
    is_update: bool = False
    parameter_schema: pa.Schema = field(default_factory=lambda: EMPTY_SCHEMA)

    def explain(self) -> str:
        return type(self).__name__

    def run(self, engine: Any, params: pa.RecordBatch | None, cancel: CancelToken) -> Any:
        """Queries: a RecordBatchReader, or a pa.Table when the rows are in memory already;
        updates: the affected-row count."""
        raise NotImplementedError


def explain_table(text: str) -> pa.Table:
    return pa.table({"plan_type": pa.array(["logical_plan"]), "plan": pa.array([text])})


def reader_of(table: pa.Table) -> pa.RecordBatchReader:
    return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())


def guarded(schema: pa.Schema, batches: Iterator[pa.RecordBatch], cancel: CancelToken) -> pa.RecordBatchReader:
    """A reader that stops with Cancelled between batches once the statement is cancelled."""
    def gen():
        for batch in batches:
            cancel.check()
            yield batch
    return pa.RecordBatchReader.from_batches(schema, gen())


# --- parameters --------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r'Placeholder \{ id: "\$(\d+)", field: (?:Some\(Field \{ name: "[^"]*", data_type: (\w+))?')
_DEBUG_TYPES = {"Int8": pa.int8(), "Int16": pa.int16(), "Int32": pa.int32(), "Int64": pa.int64(),
                "UInt8": pa.uint8(), "UInt16": pa.uint16(), "UInt32": pa.uint32(), "UInt64": pa.uint64(),
                "Float32": pa.float32(), "Float64": pa.float64(), "Utf8": pa.string(),
                "Utf8View": pa.string(), "LargeUtf8": pa.string(), "Boolean": pa.bool_(),
                "Date32": pa.date32(), "Binary": pa.binary()}


def parameter_schema_of(logical_plan: Any) -> pa.Schema:
    """Types DataFusion inferred for `$n` placeholders, read from the plan's debug form.

    DataFusion's Python API exposes no `get_parameter_types`; its plan's Debug text names
    each placeholder's inferred field. Unknown types become null (any value binds).
    """
    found: dict[int, pa.DataType] = {}
    for number, type_name in _PLACEHOLDER.findall(_debug_text(logical_plan)):
        dtype = _DEBUG_TYPES.get(type_name, pa.null())
        if found.get(int(number), pa.null()) == pa.null():
            found[int(number)] = dtype
    if not found:
        return EMPTY_SCHEMA
    count = max(found)
    return pa.schema([pa.field(f"${i}", found.get(i, pa.null())) for i in range(1, count + 1)])


def _debug_text(logical_plan: Any) -> str:
    """Debug text of every node (some variants, like DmlStatement, omit their inputs)."""
    parts, stack = [], [logical_plan]
    while stack:
        node = stack.pop()
        try:
            parts.append(repr(node.to_variant()))
        except Exception:  # a variant the bindings cannot convert: its children still count
            pass
        stack.extend(node.inputs())
    return "\n".join(parts)


def param_rows(params: pa.RecordBatch | None, expected: int) -> list[dict[str, Any]]:
    """One `param_values` dict per bound row, after checking the parameter count."""
    if params is None or params.num_columns == 0:
        if expected:
            raise InvalidInput(f"the statement has {expected} parameter(s) ($1..${expected}) but none were bound")
        return [{}]
    if params.num_columns != expected:
        raise InvalidInput(f"the statement has {expected} parameter(s) but {params.num_columns} value(s) "
                           "were bound per row")
    if params.num_rows == 0:
        return []
    return [{str(i + 1): params.column(i)[r] for i in range(params.num_columns)}
            for r in range(params.num_rows)]
