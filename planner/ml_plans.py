"""The ML statements as plan nodes over DataFusion's logical plan of their inner query.

DataFusion's Python API cannot host a custom logical node, so BuildModel, FitModel,
Predict and Evaluate are the project's own nodes: each holds the LogicalPlan of the
query after AS, states its result schema at prepare time, and at execute time streams
that plan's batches into ml/.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator

import pyarrow as pa

from planner import statements as st
from planner.copy import affected_rows
from planner.errors import (AlreadyExists, Cancelled, FailedPrecondition, Internal, InvalidInput, NotFound,
                            PlannerError, ResourceExhausted)
from planner.plans import CancelToken, Plan, param_rows, parameter_schema_of
from planner.sql_plans import READ_ONLY, CopyFromPlan, StaticRows, stream_dataframe, update_plan
from planner.storage import utf8_schema

log = logging.getLogger("thanosql.ml")

PREDICT_CHUNK_ROWS = 256  # rows per output batch: results stream while the rest is transcribed

TRAIN_RESULT_SCHEMA = pa.schema([
    ("model", pa.string()), ("version", pa.int64()), ("status", pa.string()),
    ("epochs", pa.float64()), ("steps", pa.int64()), ("train_loss", pa.float64()),
    ("audio_seconds", pa.float64()), ("seconds", pa.float64()), ("skipped_rows", pa.int64()),
])
METRICS_SCHEMA = pa.schema([pa.field("metric", pa.string(), nullable=False),
                            pa.field("score", pa.float64()), pa.field("detail", pa.string())])


@contextlib.contextmanager
def ml_errors():
    """ml/ raises its own errors (it knows no SQL); give them the planner's meaning.

    A model still training is FAILED_PRECONDITION (wait or cancel; it travels as
    UNAVAILABLE, which rightly invites a later retry).  A bad file or option, and audio over
    a length limit, are INVALID_ARGUMENT: the same request can never succeed, so nothing
    should retry it (as with the statement limits).  Anything else that
    escapes ml/ (a bug, a torch failure) is logged with its traceback and reaches the
    client as INTERNAL with its message only, never a Python exception name.
    """
    from ml import errors as ml
    try:
        yield
    except PlannerError:
        raise
    except ml.ModelNotFound as exc:
        raise NotFound(str(exc)) from None
    except ml.ModelBusy as exc:
        raise FailedPrecondition(str(exc)) from None
    except ml.ModelExists as exc:
        raise AlreadyExists(str(exc)) from None
    except ml.CheckpointUnavailable as exc:
        raise NotFound(str(exc)) from None
    except (ml.BadOptions, ml.AudioError) as exc:  # AudioTooLong included
        raise InvalidInput(str(exc)) from None
    except ml.Cancelled as exc:
        raise Cancelled(str(exc)) from None
    except ml.NoCapacity as exc:
        raise ResourceExhausted(str(exc)) from None
    except ml.MLError as exc:
        raise Internal(str(exc)) from None
    except MemoryError:
        raise ResourceExhausted("out of memory; use a smaller batch_size or shorter audio") from None
    except Exception as exc:  # noqa: BLE001 - translated, and logged with its traceback
        log.error("unexpected error in an ML statement", exc_info=True)
        raise Internal(f"the ML statement failed: {str(exc).strip() or 'unexpected error'} "
                       "(details in the server log)") from None


def plan(engine, statement: Any) -> Plan:
    with ml_errors():
        return _plan(engine, statement)


def _plan(engine, statement: Any) -> Plan:
    registry = engine.registry
    if isinstance(statement, st.ListModels):
        return _static(registry.list_models, "ListModels")
    if isinstance(statement, st.ListModelClasses):
        from ml.options import model_classes_table
        return _static(model_classes_table, "ListThanosqlModels")
    if isinstance(statement, st.ListDatasets):
        from planner import datasets
        return _static(datasets.list_datasets, "ListThanosqlDatasets")
    if isinstance(statement, st.DescribeModel):
        if not registry.known(statement.name):  # any run: one in training, or failed, is described too
            registry.model_dir(statement.name)  # NotFound now (listing the models), not at execute
        return _static(lambda: registry.describe(statement.name), f"DescribeModel: {statement.name}")
    if isinstance(statement, st.DeleteModel):
        return affected_rows(update_plan(DeleteModelPlan, statement=statement), statement.name, of="model")
    if isinstance(statement, st.CancelModel):
        return affected_rows(update_plan(CancelModelPlan, statement=statement), statement.name, of="model")
    if isinstance(statement, st.GetDataset):
        from planner import datasets
        datasets.check_request(statement.name, statement.options)
        return affected_rows(update_plan(GetDatasetPlan, statement=statement))
    if isinstance(statement, st.GetModel):
        return GetModelPlan.prepare(engine, statement)
    if isinstance(statement, (st.BuildModel, st.FitModel)):
        return TrainNode.prepare(engine, statement)
    if isinstance(statement, st.Predict):
        return PredictNode.prepare(engine, statement)
    if isinstance(statement, st.Evaluate):
        return EvaluateNode.prepare(engine, statement)
    if isinstance(statement, st.PrintAudio):
        return PrintAudioNode.prepare(engine, statement)
    raise InvalidInput(f"unsupported statement {type(statement).__name__}")  # pragma: no cover


def _static(producer, label: str) -> StaticRows:
    return StaticRows(dataset_schema=producer().schema, producer=producer, label=label)


@dataclass
class InnerQuery:
    """The query after AS: DataFusion's plan of it, made at prepare time, never run there.

    With `$n` parameters it is planned again with the bound values at execute time.
    """
    sql: str
    df: Any
    parameter_schema: pa.Schema

    def schema(self) -> pa.Schema:
        return utf8_schema(self.df.schema())

    def logical_plan(self):
        return self.df.logical_plan()

    def dataframe(self, engine, params: pa.RecordBatch | None):
        rows = param_rows(params, len(self.parameter_schema))
        if len(rows) != 1:
            raise InvalidInput(f"bind exactly one row of parameters; {len(rows)} were bound")
        if not rows[0]:
            return self.df
        return engine.run_datafusion(
            lambda: engine.ctx.sql_with_options(self.sql, READ_ONLY, param_values=rows[0]))


def _inner(engine, query: str) -> InnerQuery:
    df = engine.run_datafusion(lambda: engine.ctx.sql_with_options(query, READ_ONLY))
    return InnerQuery(query, df, parameter_schema_of(df.logical_plan()))


def _require_columns(schema: pa.Schema, columns: dict[str, str], statement: str) -> None:
    for option, name in columns.items():
        if name not in schema.names:
            raise InvalidInput(f"{statement}: column '{name}' (option {option}) is not in the query's "
                               f"result; its columns are: {', '.join(schema.names)}")


_EXPECTED = {"audio_col": "a string column of audio file paths",
             "text_col": "a string column of transcripts"}


def _is_text(dtype: pa.DataType) -> bool:
    """A string type (any width, a dictionary of strings) or NULL (every row NULL: each row's
    error says so)."""
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    return (pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype)
            or pa.types.is_null(dtype))


def _require_text_columns(schema: pa.Schema, columns: dict[str, str], statement: str) -> None:
    """At prepare time: audio_col and text_col exist and hold strings (an integer is no path,
    bytes no transcript), or InvalidInput naming the column, its type and what is expected."""
    _require_columns(schema, columns, statement)
    for option, name in columns.items():
        dtype = schema.field(name).type
        if not _is_text(dtype):
            raise InvalidInput(f"{statement}: column '{name}' (option {option}) is of type {dtype}; "
                               f"expected {_EXPECTED.get(option, 'a string column')} (a string type such as "
                               f"VARCHAR; cast it, e.g. CAST({name} AS VARCHAR), if that is what it holds)")


def _text_value(value: Any, what: str, row: int) -> None:
    """At execute time (a `$n` parameter can bind any type): a value must be a string."""
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"row {row}: the {what} is of type {type(value).__name__}, not a string")


def _explain(node_line: str, df) -> str:
    inner = df.logical_plan().display_indent().rstrip()  # df: an InnerQuery
    return node_line + "\n" + "\n".join("  " + line for line in inner.splitlines())


def _audio_paths(engine, values: list[Any], row_offset: int) -> list[str]:
    """Audio paths resolved against the data directory and confined to the allowed roots
    (symlinks resolved per file); a FIFO, socket or device is refused before it is opened."""
    paths = []
    for i, value in enumerate(values):
        _text_value(value, "audio path", row_offset + i)
        if value is None or value.strip() == "":
            raise InvalidInput(f"row {row_offset + i}: the audio path is empty")
        paths.append(str(engine.policy.audio_file(str(value), row=row_offset + i)))
    return paths


def _collect_columns(engine, df, columns: list[str], cancel: CancelToken) -> dict[str, list]:
    from datafusion import col
    selected = df.select(*[col(f'"{c}"') for c in columns])
    table = stream_dataframe(selected, cancel).read_all()  # typed even when there are no rows
    return {c: table.column(c).to_pylist() for c in columns}


@dataclass
class TrainNode(Plan):
    """BuildModel / FitModel: train on the inner query's rows in a worker process."""
    statement: Any = None
    options: dict = field(default_factory=dict)
    class_name: str = ""
    base_model: str | None = None
    df: Any = None

    @classmethod
    def prepare(cls, engine, statement) -> "TrainNode":
        from ml import options as ml_options
        registry = engine.registry
        if isinstance(statement, st.FitModel):
            class_name = registry.class_of(statement.source_model)
            options = ml_options.validate(class_name, "fit", statement.options)
            engine.runner.check("fit", options)  # scale-out options need a cluster
            base_model = str(registry.model_dir(statement.source_model))
            if statement.name != statement.source_model and registry.exists(statement.name) \
                    and not options.get("overwrite"):
                raise AlreadyExists(f"model '{statement.name}' already exists; FIT into a new name, into "
                                    f"'{statement.source_model}' itself (a new version), or set overwrite=True")
        else:
            class_name = statement.class_name
            options = ml_options.validate(class_name, "build", statement.options)
            engine.runner.check("build", options)  # scale-out options need a cluster
            base_model = options.get("base_model")
            if base_model != ml_options.default_base_model():  # named in SQL (the default is the admin's)
                base_model = engine.policy.base_model(base_model)  # a folder inside the roots, or a hub id
            if registry.exists(statement.name) and not options.get("overwrite"):
                raise AlreadyExists(f"model '{statement.name}' already exists; set OPTIONS (overwrite=True) "
                                    "to replace it, or FIT MODEL to train it further")
        df = _inner(engine, statement.query)
        _require_text_columns(df.schema(), {"audio_col": options["audio_col"], "text_col": options["text_col"]},
                              "FIT MODEL" if isinstance(statement, st.FitModel) else "BUILD MODEL")
        return cls(dataset_schema=TRAIN_RESULT_SCHEMA, statement=statement, options=options,
                   class_name=class_name, base_model=base_model, df=df,
                   parameter_schema=df.parameter_schema)

    def explain(self) -> str:
        kind = "FitModel" if isinstance(self.statement, st.FitModel) else "BuildModel"
        opts = ", ".join(f"{k}={v!r}" for k, v in sorted(self.options.items()))
        return _explain(f"{kind}: name={self.statement.name} class={self.class_name} "
                        f"base={self.base_model} options=[{opts}]", self.df)

    def run(self, engine, params, cancel):
        with ml_errors():
            return self._run(engine, params, cancel)

    def _run(self, engine, params, cancel: CancelToken):
        # Reading and checking the rows can take a while before the run exists: CANCEL MODEL
        # finds the statement meanwhile (its run id is empty) and stops it through its token.
        preparing = engine.jobs.add(self.statement.name, 0, "", cancel)
        try:
            return self._read_and_train(engine, params, cancel, preparing)
        finally:
            engine.jobs.finished(preparing)

    def _read_and_train(self, engine, params, cancel: CancelToken, preparing):
        from ml import options as ml_options
        audio_col, text_col = self.options["audio_col"], self.options["text_col"]
        data = _collect_columns(engine, self.df.dataframe(engine, params), [audio_col, text_col], cancel)
        cancel.finished_reading()  # training takes long: replaced table versions need not wait for it
        if not data[audio_col]:
            raise InvalidInput("the query after AS returned no rows to train on")
        paths = _audio_paths(engine, data[audio_col], 0)
        texts = data[text_col]
        for i, text in enumerate(texts):
            _text_value(text, f"transcript in column '{text_col}'", i)
            if text is None or not text.strip():
                raise InvalidInput(f"row {i}: the transcript in column '{text_col}' is "
                                   f"{'NULL' if text is None else 'empty'} (audio '{paths[i]}')")
        # Every file is checked from its header here, before a run is registered or a worker
        # started: a missing, corrupt, too short or too long file fails fast, naming its row.
        screen_training_rows = ml_options.resolve_class(self.class_name).implementation().screen_training_rows
        kept, _, skipped = screen_training_rows(paths, max_seconds=self.options["max_duration"],
                                                skip_long=self.options["too_long"] == "skip")
        if not kept:
            raise InvalidInput(f"all {len(paths)} rows are longer than max_duration="
                                    f"{self.options['max_duration']:g} s: nothing to train on")
        cancel.check()
        engine.jobs.check_room()
        fit_from = self.statement.source_model if isinstance(self.statement, st.FitModel) else None
        run = engine.registry.create_run(self.statement.name, self.class_name, self.options,
                                         self.base_model, self.statement.query, fit_from=fit_from,
                                         overwrite=bool(self.options.get("overwrite")))
        rows = [(paths[i], texts[i], i) for i in kept]  # the query's row numbers travel along
        if self.options.get("wait", True):
            training = engine.jobs.add(run.name, run.version, run.run_id, cancel)  # CANCEL MODEL finds it
            engine.jobs.finished(preparing)  # the run stands for the statement now
            try:
                summary = self._train(engine, run, rows, training)
            finally:
                engine.jobs.finished(training)
            row = {
                "model": self.statement.name, "version": run.version, "status": "ready",
                "epochs": summary.get("epochs"), "steps": summary.get("steps"),
                "train_loss": summary.get("final_loss"), "audio_seconds": summary.get("audio_seconds"),
                "seconds": summary.get("seconds"), "skipped_rows": len(skipped),
            }
        else:
            # wait=False: the same run, not awaited. Its own token (the statement's ends with
            # its call; its table pin was released after reading), stopped by CANCEL MODEL or
            # the server's shutdown; its outcome goes to the registry (thanosql.models).
            trainer = dataclasses.replace(self, df=None)  # not the inner query's plan (nor a cached table)
            training = engine.jobs.add(run.name, run.version, run.run_id, CancelToken(), background=True)
            engine.jobs.finished(preparing)
            try:
                engine.jobs.start_background(training, lambda: trainer._train(engine, run, rows, training))
            except BaseException as exc:
                engine.registry.fail_run(run.run_id, f"could not start the training: {exc}")
                raise
            row = {"model": self.statement.name, "version": run.version, "status": "training",
                   "skipped_rows": len(skipped)}
        table = pa.Table.from_pylist([row], schema=TRAIN_RESULT_SCHEMA)
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())

    def _train(self, engine, run, rows, training) -> dict:
        """The one place a registered run trains, waited for or in the background: the
        run ends ready (the summary is returned) or failed / cancelled in the registry
        (raised). `training` is the run's entry in engine.jobs; its `cancel` stops it."""
        from ml.errors import Cancelled as TrainingStopped
        cancel = training.cancel
        try:
            summary = engine.runner.run_training(engine.registry, run, rows, self.options, cancel)
        except BaseException as exc:
            from ml.errors import MLError
            if not isinstance(exc, MLError):  # the trainer marks its own failures; never leave a run 'training'
                why = str(exc).strip() or "unexpected error (details in the server log)"
                with contextlib.suppress(Exception):
                    engine.registry.fail_run(run.run_id, f"training failed: {why}")
            if training.reason:  # CANCEL MODEL or the shutdown: say so, in the registry and to the client
                engine.registry.note_stopped(run.run_id, training.reason)
            if isinstance(exc, TrainingStopped) and training.reason:
                raise Cancelled(f"training of model {run.name!r} (version {run.version}) was "
                                f"{training.reason}") from None
            raise
        finally:
            engine.forget_transcribers(run.name)
        return summary


@dataclass
class InferenceNode(Plan):
    """Shared shape of Predict / Evaluate: a stored model applied to the inner query."""
    statement: Any = None
    options: dict = field(default_factory=dict)
    model_dir: str = ""
    class_name: str = ""
    df: Any = None

    def explain(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in sorted(self.options.items()))
        name = type(self).__name__.removesuffix("Node")
        return _explain(f"{name}: model={self.statement.model} options=[{opts}]", self.df)


@dataclass
class PredictNode(InferenceNode):
    """Predict: every input column in order, plus the transcript in result_col.

    With OPTIONS (on_error='null') a row whose audio cannot be transcribed (missing,
    unreadable, refused path, too short, too long) does not stop the statement: its
    transcript is NULL and the added error_col (default predict_error) says why; error_col
    is NULL on every row that went well.  The default, on_error='fail', stops at the first
    such row with an error naming the row and the file.
    """

    @classmethod
    def prepare(cls, engine, statement) -> "PredictNode":
        from ml import options as ml_options
        class_name = engine.registry.class_of(statement.model)
        options = ml_options.validate(class_name, "predict", statement.options)
        engine.runner.check("predict", options)  # scale-out options need a cluster
        df = _inner(engine, statement.query)
        schema = df.schema()
        _require_text_columns(schema, {"audio_col": options["audio_col"]}, "PREDICT")
        added = [("result_col", options["result_col"])]
        if options["on_error"] == "null":
            added.append(("error_col", options["error_col"]))
        if len(added) == 2 and added[0][1] == added[1][1]:
            raise InvalidInput("PREDICT: result_col and error_col must differ")
        out = schema
        for option, name in added:
            if name in schema.names:
                raise InvalidInput(f"PREDICT: the query already has a column '{name}'; "
                                   f"choose another OPTIONS ({option}=...)")
            out = out.append(pa.field(name, pa.string()))
        return cls(dataset_schema=out, statement=statement, options=options, class_name=class_name,
                   model_dir=str(engine.registry.model_dir(statement.model)), df=df,
                   parameter_schema=df.parameter_schema)

    def run(self, engine, params, cancel):
        with ml_errors():
            transcriber = engine.transcriber(self.model_dir, self.class_name, self.options)
        reader = stream_dataframe(self.df.dataframe(engine, params), cancel)
        return pa.RecordBatchReader.from_batches(self.dataset_schema,
                                                 self._batches(engine, transcriber, reader, cancel))

    def _batches(self, engine, transcriber, reader, cancel) -> Iterator[pa.RecordBatch]:
        from planner import progress
        tracker = progress.Tracker("PREDICT", self.statement.model)
        try:
            yield from self._transcribed(engine, transcriber, reader, cancel, tracker)
        except BaseException:
            tracker.finish("failed")
            raise
        tracker.finish()

    def _transcribed(self, engine, transcriber, reader, cancel, tracker) -> Iterator[pa.RecordBatch]:
        from collections import deque

        from ml.transcription import transcribe_chunks
        pending: deque = deque()  # chunks sent to the transcriber, in order, awaiting transcripts
        requests = self._requests(engine, reader, tracker, pending)
        with ml_errors():
            for texts, _ in transcribe_chunks(transcriber, requests, self.options["batch_size"],
                                              should_stop=cancel.is_set, max_seconds=self.options["max_duration"],
                                              options=self.options):
                cancel.check()
                chunk, errors = pending.popleft()
                tracker.add(chunk.num_rows)
                columns = [*chunk.columns, pa.array(texts, pa.string())]
                if errors is not None:
                    columns.append(pa.array(errors, pa.string()))
                yield pa.RecordBatch.from_arrays(columns, schema=self.dataset_schema)

    def _requests(self, engine, reader, tracker, pending) -> Iterator[tuple[list, list | None, int]]:
        """(paths, errors, first row) per chunk of the input, each path checked by the path
        policy; the chunk itself waits in `pending` for its transcripts."""
        audio_col = self.options["audio_col"]
        keep_going = self.options["on_error"] == "null"
        # One output batch per transcriber batch: rows reach the client (and thanosql.progress
        # counts them) as each batch of utterances finishes.
        rows = max(1, min(PREDICT_CHUNK_ROWS, self.options["batch_size"]))
        offset = 0
        batches = iter(reader)
        upcoming = next(batches, None)  # read one ahead: the total is known when the input ends
        seen = 0
        while upcoming is not None:
            batch = upcoming
            seen += batch.num_rows
            upcoming = next(batches, None)
            if upcoming is None:
                tracker.set_total(seen)
            for start in range(0, batch.num_rows, rows):
                chunk = batch.slice(start, rows)
                values = chunk.column(audio_col).to_pylist()
                errors: list[str | None] | None = [None] * len(values) if keep_going else None
                if errors is None:
                    paths: list[str | None] = _audio_paths(engine, values, offset)
                else:
                    paths = []
                    for i, value in enumerate(values):
                        try:
                            paths.append(_audio_paths(engine, [value], offset + i)[0])
                        except PlannerError as exc:  # an empty or refused path: this row's error
                            paths.append(None)
                            errors[i] = str(exc)
                pending.append((chunk, errors))
                yield paths, errors, offset
                offset += chunk.num_rows


@dataclass
class EvaluateNode(InferenceNode):
    """Evaluate: transcribe, then WER / CER against the reference transcripts."""

    @classmethod
    def prepare(cls, engine, statement) -> "EvaluateNode":
        from ml import options as ml_options
        class_name = engine.registry.class_of(statement.model)
        options = ml_options.validate(class_name, "evaluate", statement.options)
        engine.runner.check("evaluate", options)  # scale-out options need a cluster
        df = _inner(engine, statement.query)
        _require_text_columns(df.schema(), {"audio_col": options["audio_col"], "text_col": options["text_col"]},
                              "EVALUATE")
        from ml.metrics import UTTERANCE_SCHEMA
        schema = UTTERANCE_SCHEMA if options.get("details") else METRICS_SCHEMA
        return cls(dataset_schema=schema, statement=statement, options=options, class_name=class_name,
                   model_dir=str(engine.registry.model_dir(statement.model)), df=df,
                   parameter_schema=df.parameter_schema)

    def run(self, engine, params, cancel):
        with ml_errors():
            return self._run(engine, params, cancel)

    def _run(self, engine, params, cancel):
        from ml import metrics
        audio_col, text_col = self.options["audio_col"], self.options["text_col"]
        data = _collect_columns(engine, self.df.dataframe(engine, params), [audio_col, text_col], cancel)
        cancel.finished_reading()  # training takes long: replaced table versions need not wait for it
        if not data[audio_col]:
            raise InvalidInput("the query after AS returned no rows to evaluate on")
        paths = _audio_paths(engine, data[audio_col], 0)
        # A NULL reference cannot be scored: counting it as an empty one would score any
        # transcript of that row as all insertions, silently.  An empty string is a valid
        # reference (silence) and is scored.
        for i, text in enumerate(data[text_col]):
            _text_value(text, f"reference transcript in column '{text_col}'", i)
            if text is None:
                raise InvalidInput(f"row {i}: the reference transcript in column '{text_col}' is NULL "
                                   f"(audio '{paths[i]}'); filter such rows out, e.g. WHERE {text_col} "
                                   "IS NOT NULL")
        from planner import progress
        transcriber = engine.transcriber(self.model_dir, self.class_name, self.options)
        tracker = progress.Tracker("EVALUATE", self.statement.model, total=len(paths))
        try:
            hyps, audio_seconds = self._transcribe(transcriber, paths, cancel, tracker)
        except BaseException:
            tracker.finish("failed")
            raise
        tracker.finish()
        normalizer = self.options["normalizer"]
        if self.options.get("details"):
            table = metrics.utterance_table(data[audio_col], data[text_col], hyps, normalizer=normalizer)
            return pa.RecordBatchReader.from_batches(self.dataset_schema, table.cast(self.dataset_schema).to_batches())
        scores = metrics.score(data[text_col], hyps, audio_seconds, normalizer=normalizer)
        table = metrics.metrics_table(scores, normalizer=normalizer)
        return pa.RecordBatchReader.from_batches(METRICS_SCHEMA, table.cast(METRICS_SCHEMA).to_batches())

    def _transcribe(self, transcriber, paths, cancel, tracker) -> tuple[list, float]:
        """Batch by batch, each counted in thanosql.progress as it finishes."""
        from ml.transcription import transcribe_chunks
        size = self.options["batch_size"]
        requests = ((paths[start:start + size], None, start) for start in range(0, len(paths), size))
        hyps: list = []
        audio_seconds = 0.0
        for texts, stats in transcribe_chunks(transcriber, requests, size, should_stop=cancel.is_set,
                                              max_seconds=self.options["max_duration"], options=self.options):
            cancel.check()
            hyps += texts
            audio_seconds += stats["audio_seconds"]
            tracker.add(len(texts))
        return hyps, audio_seconds


@dataclass
class PrintAudioNode(Plan):
    """PRINT AUDIO: the query's rows; the notebook client renders the audio column."""
    audio_col: str = "audio"
    df: Any = None

    @classmethod
    def prepare(cls, engine, statement) -> "PrintAudioNode":
        unknown = set(statement.options) - {"audio_col"}
        if unknown:
            raise InvalidInput(f"unknown PRINT AUDIO option(s) {', '.join(sorted(unknown))}; valid: audio_col")
        audio_col = statement.options.get("audio_col", "audio")
        if not isinstance(audio_col, str) or not audio_col.strip():
            raise InvalidInput(f"PRINT AUDIO: option audio_col must be a column name as a non-empty string, "
                               f"got {audio_col!r}"[:300])
        df = _inner(engine, statement.query)
        schema = df.schema()
        _require_text_columns(schema, {"audio_col": audio_col}, "PRINT AUDIO")
        return cls(dataset_schema=schema.with_metadata({"thanosql.audio_col": audio_col}),
                   audio_col=audio_col, df=df, parameter_schema=df.parameter_schema)

    def explain(self) -> str:
        return _explain(f"PrintAudio: audio_col={self.audio_col}", self.df)

    def run(self, engine, params, cancel):
        reader = stream_dataframe(self.df.dataframe(engine, params), cancel)
        return pa.RecordBatchReader.from_batches(self.dataset_schema, reader)


@dataclass
class DeleteModelPlan(Plan):
    statement: Any = None

    def run(self, engine, params, cancel):
        with ml_errors():
            # Any model with a row goes: ready, failed or cancelled (a failed BUILD leaves one).
            if not engine.registry.known(self.statement.name):
                if self.statement.if_exists:
                    return 0
                engine.registry.model_dir(self.statement.name)  # raises NotFound listing the models
            engine.registry.delete(self.statement.name)
        engine.forget_transcribers(self.statement.name)
        return 1


@dataclass
class CancelModelPlan(Plan):
    """CANCEL MODEL name: stop the model's training running in this server, whether its
    BUILD / FIT waits on another connection or runs in the background (wait=False); return
    once its run is marked cancelled. 1 per run cancelled."""
    statement: Any = None

    def run(self, engine, params, cancel):
        from planner import jobs
        name = self.statement.name
        with ml_errors():
            trainings = engine.jobs.cancel(name)
            if not trainings:
                self._not_training(engine, name)
            cancelled = 0
            for training in trainings:
                if not training.done.wait(jobs.STOP_WAIT_S):
                    log.warning("CANCEL MODEL %s: version %s has not stopped yet", name, training.version)
                    cancelled += 1  # asked to stop: it is marked cancelled when it does
                elif not training.run_id:
                    cancelled += int(training.reason != "")  # stopped while reading its rows: no run
                elif engine.registry.get_run(training.run_id)["status"] == "cancelled":
                    cancelled += 1  # (0 for a run that finished before the cancel reached it)
        return cancelled

    @staticmethod
    def _not_training(engine, name: str) -> None:
        """No BUILD / FIT of `name` runs here (a BUILD is in engine.jobs from its first row
        read to its run's end): NotFound for an unknown model, FailedPrecondition saying its
        status otherwise."""
        latest = engine.registry.latest_run(name)  # ModelNotFound for a model never built
        state = {"ready": "is ready", "failed": "failed", "cancelled": "was cancelled"}.get(latest["status"])
        if state is None:  # training in the registry, by nothing this server can stop
            raise FailedPrecondition(f"model {name!r} version {latest['version']} is being written by a "
                                     "statement that cannot be cancelled (GET THANOSQL MODEL); wait for it")
        raise FailedPrecondition(f"model {name!r} is not training (its latest version {latest['version']} "
                                 f"{state})")


GET_MODEL_OPTIONS = {"model_name": "name of the model to register (default: the pretrained model's name)",
                     "overwrite": "True to register a new version when the name is taken",
                     "base_model": "other weights, with a class name (GET THANOSQL MODEL whisper OPTIONS "
                                   "(base_model=...)): a folder inside the allowed folders or a hub id"}


@dataclass
class GetModelPlan(Plan):
    """GET THANOSQL MODEL: register packaged pretrained weights as a ready model version."""
    statement: Any = None
    model_name: str = ""
    overwrite: bool = False
    base_model: str | None = None  # resolved by the path policy: an absolute folder or a hub id

    @classmethod
    def prepare(cls, engine, statement) -> "GetModelPlan":
        from ml.options import base_model_class, pretrained_class
        opts = {str(k).lower(): v for k, v in statement.options.items()}
        unknown = sorted(set(opts) - set(GET_MODEL_OPTIONS))
        if unknown:
            raise InvalidInput(f"unknown GET THANOSQL MODEL option(s) {', '.join(unknown)}; valid: "
                               + ", ".join(GET_MODEL_OPTIONS))
        base_model = None
        with ml_errors():
            if "base_model" in opts:
                base_model_class(statement.name)
                if not isinstance(opts["base_model"], str) or not opts["base_model"].strip():
                    raise InvalidInput("GET THANOSQL MODEL: base_model must be a non-empty string (a folder or a "
                                       "hub id)")
                base_model = str(engine.policy.base_model(opts["base_model"]))  # PERMISSION_DENIED outside
            else:
                pretrained_class(statement.name)  # an unknown name fails now, listing the known ones
        name = opts.get("model_name", statement.name)
        overwrite = opts.get("overwrite", False)
        if not isinstance(name, str) or not name.strip():
            raise InvalidInput("GET THANOSQL MODEL: model_name must be a non-empty string")
        if not isinstance(overwrite, bool):
            raise InvalidInput("GET THANOSQL MODEL: overwrite must be True or False")
        if not overwrite and engine.registry.exists(name.strip()):
            raise AlreadyExists(f"model '{name.strip()}' already exists; use GET THANOSQL MODEL {statement.name} "
                                "OPTIONS (overwrite=True) for a new version of it, or model_name='...' for another name")
        return affected_rows(update_plan(cls, statement=statement, model_name=name.strip(), overwrite=overwrite,
                                         base_model=base_model), name.strip(), of="model")

    def run(self, engine, params, cancel):
        from ml.options import base_model_class, pretrained_class
        with ml_errors():
            if self.base_model is not None:
                cls = base_model_class(self.statement.name)
                impl = cls.implementation()
                engine.registry.register_folder(
                    self.model_name, cls.name, lambda staging: impl.install_base_model(self.base_model, staging),
                    options={"base_model": self.base_model}, base_model=self.base_model,
                    overwrite=self.overwrite,
                    input_query=f"GET THANOSQL MODEL {self.statement.name} OPTIONS (base_model='{self.base_model}')")
            else:
                cls = pretrained_class(self.statement.name)
                impl = cls.implementation()
                engine.registry.register_folder(
                    self.model_name, cls.name, lambda staging: impl.install_pretrained(self.statement.name, staging),
                    options={"pretrained": self.statement.name}, base_model=self.statement.name,
                    overwrite=self.overwrite, input_query=f"GET THANOSQL MODEL {self.statement.name}")
        engine.forget_transcribers(self.model_name)
        return 1


@dataclass
class GetDatasetPlan(Plan):
    """GET THANOSQL DATASET: fetch the files, then COPY each of its tables."""
    statement: Any = None

    def run(self, engine, params, cancel):
        from planner import datasets
        overwrite = bool(self.statement.options.get("overwrite", False))
        tables = datasets.fetch_dataset(self.statement.name, engine.data_dir, engine.dataset_mirror,
                                        overwrite=overwrite)
        existing = [t for t in tables if engine.object_exists(t)]
        if existing and not overwrite:
            raise AlreadyExists(f"table(s) {', '.join(existing)} already exist; use GET THANOSQL DATASET "
                                f"{self.statement.name} OPTIONS (overwrite=True) to replace them")
        counts = []
        for table, csv_path in tables.items():
            copy = st.CopyFrom(table, str(csv_path), {"if_exists": "replace" if overwrite else "fail"})
            node = update_plan(CopyFromPlan, statement=copy, mode="replace" if overwrite else "create")
            counts.append((table, node.run(engine, None, cancel)))
        return counts  # one (table, rows) per table

