"""ThanoSQL's COPY ... FROM: a csv / parquet / json file, or a folder of audio files.

Files are read as Arrow batches (never through Python rows). A CSV's relative audio
paths are made absolute against the CSV's own folder, so a dataset folder can move.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from planner.errors import InvalidInput, NotFound
from planner.paths import PathPolicy
from planner.plans import Plan, reader_of

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus")
FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".json": "json", ".jsonl": "json",
           ".ndjson": "json"}
IF_EXISTS_MODES = {"fail": "create", "replace": "replace", "append": "create_append"}
COPY_OPTIONS = {"if_exists": "'fail' (default), 'replace' or 'append'",
                "format": "'csv', 'parquet' or 'json' (default: from the file's extension)",
                "audio_col": "name of the path column made for a folder of audio files (default 'audio')",
                "delimiter": "the CSV field delimiter (default ',')"}


# What COPY, GET THANOSQL DATASET / MODEL and DELETE MODEL return: one row per table or model
# written, as a result set (not a bare update count), so every client sees it: ADBC and
# JDBC show it as a table, the notebook as a DataFrame.
TABLE_RESULT_SCHEMA = pa.schema([pa.field("rows_affected", pa.int64(), nullable=False),
                                 pa.field("table_name", pa.string(), nullable=False)])
MODEL_RESULT_SCHEMA = pa.schema([pa.field("rows_affected", pa.int64(), nullable=False),
                                 pa.field("model_name", pa.string(), nullable=False)])


@dataclass
class AffectedRows(Plan):
    """A write reported as rows: `work` is an update node whose run returns its count (for
    the one object `name`) or a list of (name, count) pairs."""
    work: Any = None
    name: str = ""
    result: pa.Table | None = None  # once run_now has done the work
    runs_at_once = True  # the server runs it when the statement is executed, not when read

    def explain(self) -> str:
        return self.work.explain()

    def run_now(self, engine, params, cancel) -> "AffectedRows":
        """Do the write now (through the engine: its timeout applies); the plan returned
        only sends the row."""
        table = engine.execute_query(self, params, cancel).read_all()
        return AffectedRows(dataset_schema=self.dataset_schema, work=self.work, name=self.name, result=table)

    def run(self, engine, params, cancel) -> pa.RecordBatchReader:
        if self.result is not None:
            return reader_of(self.result)
        done = self.work.run(engine, params, cancel)
        pairs = done if isinstance(done, list) else [(self.name, done)]
        table = pa.table({self.dataset_schema.names[0]: [int(count) for _, count in pairs],
                          self.dataset_schema.names[1]: [str(name) for name, _ in pairs]},
                         schema=self.dataset_schema)
        return reader_of(table)


def affected_rows(work: Plan, name: str = "", of: str = "table") -> AffectedRows:
    """`work` (an update node) as a query returning (rows_affected, table_name|model_name)."""
    schema = TABLE_RESULT_SCHEMA if of == "table" else MODEL_RESULT_SCHEMA
    return AffectedRows(dataset_schema=schema, work=work, name=name, parameter_schema=work.parameter_schema)


def copy_mode(options: dict) -> str:
    unknown = sorted(set(options) - set(COPY_OPTIONS))
    if unknown:
        valid = "; ".join(f"{k}: {v}" for k, v in COPY_OPTIONS.items())
        raise InvalidInput(f"unknown COPY option(s) {', '.join(unknown)}; valid options are {valid}")
    for name, value in options.items():  # every COPY option is text ([lists] and {maps} too are literals)
        if not isinstance(value, str):
            raise InvalidInput(f"COPY option {name} must be text ({COPY_OPTIONS[name]}); got {value!r}"[:300])
    value = options.get("if_exists", "fail")
    if value not in IF_EXISTS_MODES:
        raise InvalidInput(f"if_exists must be one of 'fail', 'replace', 'append'; got {value!r}")
    return IF_EXISTS_MODES[value]


def open_source(path_text: str, options: dict, policy: PathPolicy) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The schema and batches of what `COPY ... FROM path_text` would load.

    The path is checked by the policy (inside the roots, symlinks resolved); a folder's
    audio files are each checked; a file is opened without blocking and must be a regular
    file (a FIFO, socket or device is refused before anything reads it)."""
    path = policy.resolve(path_text)
    if not os.path.lexists(path):
        raise NotFound(f"no file or folder at '{path_text}' (resolved to {path})")
    if path.is_dir():
        return _audio_folder(path, path_text, options.get("audio_col", "audio"), policy)
    path = policy.regular_file(path_text, what="COPY source")
    fmt = options.get("format") or FORMATS.get(path.suffix.lower())
    if fmt not in ("csv", "parquet", "json"):
        raise InvalidInput(f"cannot tell the format of '{path.name}': give OPTIONS (format='csv'|'parquet'|'json')")
    source = policy.open_regular(path)
    try:
        if fmt == "parquet":
            file = pq.ParquetFile(source)
            return file.schema_arrow, _closing(file.iter_batches(), source)
        with source:
            if fmt == "json":
                table = pajson.read_json(source)
            else:
                delimiter = options.get("delimiter", "\t" if path.suffix.lower() == ".tsv" else ",")
                table = pacsv.read_csv(source, parse_options=pacsv.ParseOptions(delimiter=delimiter))
        if fmt == "csv":
            table = _absolute_audio_paths(table, path.parent, policy)
    except (pa.ArrowInvalid, OSError) as exc:
        source.close()
        raise InvalidInput(f"could not read '{path_text}' as {fmt}: {exc}") from None
    return table.schema, iter(table.to_batches())


def _closing(batches: Iterator[pa.RecordBatch], source) -> Iterator[pa.RecordBatch]:
    try:
        yield from batches
    finally:
        source.close()


def _audio_folder(folder: Path, shown: str, column: str, policy: PathPolicy) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """Every audio file under `folder` (symlinked folders followed), each resolved and checked."""
    files = sorted(str(p) for p in policy.walk(folder, f"COPY source '{shown}'", wanted=_is_audio_name))
    if not files:
        raise InvalidInput(f"folder '{folder}' holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    table = pa.table({column: pa.array(files, pa.string())})
    return table.schema, iter(table.to_batches())


def _is_audio_name(name: str) -> bool:
    return name.lower().endswith(AUDIO_EXTENSIONS)


def _absolute_audio_paths(table: pa.Table, base: Path, policy: PathPolicy) -> pa.Table:
    """Columns whose values are all audio file names become absolute, checked paths."""
    for i, field in enumerate(table.schema):
        if not pa.types.is_string(field.type) or table.num_rows == 0:
            continue
        column = table.column(i)
        values = column.drop_null()
        if len(values) == 0:
            continue
        lowered = pc.utf8_lower(values)
        if not pc.all(_has_audio_extension(lowered)).as_py():
            continue
        resolved = [None if v is None else str(policy.resolve(v, relative_to=base)) for v in column.to_pylist()]
        table = table.set_column(i, field, pa.array(resolved, pa.string()))
    return table


def _has_audio_extension(values: pa.Array) -> pa.Array:
    result = pc.ends_with(values, AUDIO_EXTENSIONS[0])
    for ext in AUDIO_EXTENSIONS[1:]:
        result = pc.or_(result, pc.ends_with(values, ext))
    return result
