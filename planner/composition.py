"""ML that composes with SQL: ML statements where a table can stand, and the ML functions.

    SELECT * FROM (PREDICT USING m AS SELECT * FROM t) p WHERE length(predict_result) > 0
    WITH e AS (EVALUATE USING m AS SELECT * FROM t) SELECT score FROM e WHERE metric = 'wer'
    CREATE TABLE preds AS PREDICT USING m AS SELECT * FROM t
    SELECT speaker, wer(text, transcribe('m', audio)) FROM t GROUP BY speaker

DataFusion cannot call back into a statement of ours while it plans or runs a query (a
Python table function cannot run a query inside DataFusion's runtime), so a nested
statement runs first: on the statement's tokens, each parenthesised PREDICT, EVALUATE,
LIST or DESCRIBE MODEL is cut out and planned by the engine as the statement it is (the
same plan node, options, path checks and limits as at top level), and its place in the
text becomes a scan of its result, `(SELECT * FROM thanosql_nested.results.n1)`.  At
execute time each nested result is materialised, within NESTED_RESULT_BYTES (a clear
RESOURCE_EXHAUSTED beyond it), and the rewritten text goes to DataFusion, which plans the
joins, filters and aggregates over it.  `CREATE TABLE t AS PREDICT ...` streams the
PREDICT into the table without materialising it.

Each such statement runs in a session of its own that shares the engine's catalog (every
table, view and system table; the external-table checks of ConfinedContext apply) and adds
the nested results in a catalog only it sees, and its own instances of the ML functions,
bound to its CancelToken (planner/ml_functions.py).  Nothing of one statement is visible
to another.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from planner import ml_functions
from planner import statements as st
from planner.errors import (
    InvalidInput,
    PlannerError,
    ResourceExhausted,
    datafusion_error,
)
from planner.plans import (
    EMPTY_SCHEMA,
    CancelToken,
    Plan,
    param_rows,
    parameter_schema_of,
)
from planner.sql_plans import DML_ONLY, READ_ONLY, stream_dataframe
from planner.storage import utf8_schema

NESTED_CATALOG = "thanosql_nested"
NESTED_SCHEMA = "results"
#: Bytes (Arrow buffers) the nested results of one statement may hold together.
NESTED_RESULT_BYTES = int(os.environ.get("THANOSQL_NESTED_RESULT_BYTES", str(512 * 1024 * 1024)))
MAX_NESTED = 16  # nested ML statements in one statement
# A cheap look at the raw text before any tokenizing: a statement that holds none of
# these words cannot compose (the decision itself is always made on tokens).
_HINTS = ("predict", "evaluate", "list", "describe", "transcribe", "wer", "cer", "build", "fit", "get", "print")


@dataclass(frozen=True)
class Analysis:
    """A statement's text as DataFusion will plan it, and what was cut out of it."""
    sql: str                      # nested statements replaced by scans of their results
    nested: tuple[str, ...] = ()  # their texts, in order; the i-th is table n{i+1}
    functions: bool = False       # calls an ML function
    explain: bool = False         # EXPLAIN ...
    analyze: bool = False         # EXPLAIN ANALYZE (runs the statement)

    @property
    def composes(self) -> bool:
        return bool(self.nested) or self.functions


def nested_table(index: int) -> str:
    return f"{NESTED_CATALOG}.{NESTED_SCHEMA}.n{index + 1}"


def _word(tok) -> str:
    from sqlglot.tokens import TokenType
    if tok is None or tok.token_type in (TokenType.STRING, TokenType.IDENTIFIER):
        return ""
    return tok.text.upper()


def _closing(tokens, i: int) -> int:
    """Index of the ')' matching the '(' at tokens[i]."""
    from sqlglot.tokens import TokenType
    depth = 0
    for j in range(i, len(tokens)):
        kind = tokens[j].token_type
        if kind == TokenType.L_PAREN:
            depth += 1
        elif kind == TokenType.R_PAREN:
            depth -= 1
            if depth == 0:
                return j
    raise InvalidInput("unbalanced parentheses: a ')' is missing")


# An ML statement starts with one of these words followed by one of its next words: a
# column or function named `predict` or `list` in parentheses is not taken for one.
_STARTS = {"PREDICT": ("USING",), "EVALUATE": ("USING",), "DESCRIBE": ("MODEL",),
           "LIST": ("MODEL", "MODELS", "TABLE", "TABLES", "THANOSQL"),
           # not nestable (they change state): recognised to say so
           "BUILD": ("MODEL",), "FIT": ("MODEL",), "GET": ("THANOSQL",), "PRINT": ("AUDIO",)}


def _nestable_at(tokens, i: int) -> bool:
    if i + 1 >= len(tokens):
        return False
    return _word(tokens[i + 1]) in _STARTS.get(_word(tokens[i]), ())


def analyse(sql: str, whole: bool = False, tokens: tuple = ()) -> Analysis:
    """Find the nested ML statements and ML function calls of `sql`, on its tokens (lexed
    here unless the parser's are given).

    With `whole` (the query of CREATE TABLE ... AS), a text that is itself one ML
    statement is nested whole."""
    from sqlglot.tokens import TokenType
    if not any(hint in sql.lower() for hint in _HINTS):
        return Analysis(sql)
    tokens = list(tokens) or st.tokenize(sql)
    if tokens[0].token_type == TokenType.COMMAND and tokens[0].text.upper() == "EXPLAIN":
        # sqlglot reads EXPLAIN as a command swallowing the rest: the rest is read again.
        prefix, rest = sql[:tokens[0].end + 1], sql[tokens[0].end + 1:]
        inner = analyse(rest)
        rest_tokens = st.tokenize(rest)
        return Analysis(prefix + " " + inner.sql, inner.nested, inner.functions, explain=True,
                        analyze=_word(rest_tokens[0]) == "ANALYZE")
    if whole and _nestable_at(tokens, 0):
        return Analysis(f"SELECT * FROM {nested_table(0)}", (sql.strip(),))
    splices: list[tuple[int, int, str]] = []
    nested: list[str] = []
    functions = False
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.token_type == TokenType.L_PAREN and _nestable_at(tokens, i + 1):
            j = _closing(tokens, i)
            if j == i + 1:
                raise InvalidInput("empty parentheses")
            nested.append(sql[tokens[i + 1].start:tokens[j].start].strip())
            if len(nested) > MAX_NESTED:
                raise InvalidInput(f"a statement may hold at most {MAX_NESTED} nested ML statements")
            splices.append((tok.start, tokens[j].end + 1, f"(SELECT * FROM {nested_table(len(nested) - 1)})"))
            i = j + 1
            continue
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        if (tok.token_type in (TokenType.VAR, TokenType.IDENTIFIER) and following is not None
                and following.token_type == TokenType.L_PAREN):
            name = tok.text if tok.token_type == TokenType.IDENTIFIER else tok.text.lower()
            if name in ml_functions.FUNCTION_NAMES:
                functions = True
                if name == ml_functions.TRANSCRIBE and _arguments(tokens, i + 1) == 3:
                    splices.append((tok.start, tok.end + 1, ml_functions.TRANSCRIBE_OPTIONS))
        i += 1
    out, last = [], 0
    for start, end, text in splices:
        out.append(sql[last:start])
        out.append(text)
        last = end
    out.append(sql[last:])
    return Analysis("".join(out), tuple(nested), functions)


def _arguments(tokens, i: int) -> int:
    """How many arguments the call whose '(' is tokens[i] has (commas at its own depth)."""
    from sqlglot.tokens import TokenType
    j = _closing(tokens, i)
    if j == i + 1:
        return 0
    depth, count = 0, 1
    for tok in tokens[i + 1:j]:
        if tok.token_type in (TokenType.L_PAREN, TokenType.L_BRACKET):
            depth += 1
        elif tok.token_type in (TokenType.R_PAREN, TokenType.R_BRACKET):
            depth -= 1
        elif tok.token_type == TokenType.COMMA and depth == 0:
            count += 1
    return count


# --- the statement's own session -------------------------------------------------------------

@dataclass
class Session:
    """A DataFusion session for one statement: the engine's catalog, the nested results,
    the ML functions bound to the statement's token."""
    ctx: Any
    functions: ml_functions.FunctionState
    results: Any  # the nested results' schema (a memory schema of NESTED_CATALOG)

    def register(self, index: int, table: pa.Table) -> None:
        from datafusion import SessionContext
        # A scratch context makes the MemTable: from_arrow names a table in the context it
        # runs in, and the engine's catalog is shared with this session.
        view = SessionContext().from_arrow(table, name=f"n{index + 1}").into_view()
        self.results.register_table(f"n{index + 1}", view)

    def translated(self, exc: Exception) -> PlannerError:
        """A DataFusion error, or the clean error an ML function met underneath it."""
        if isinstance(exc, PlannerError) and self.functions.error is None:
            return exc
        found = ml_functions.translate_error(exc, self.functions)
        if found is not None:
            return found
        return exc if isinstance(exc, PlannerError) else datafusion_error(exc)

    def plan(self, sql: str, options, param_values: dict | None = None):
        try:
            if param_values:
                return self.ctx.sql_with_options(sql, options, param_values=param_values)
            return self.ctx.sql_with_options(sql, options)
        except Exception as exc:  # noqa: BLE001 - DataFusion's errors, translated
            raise self.translated(exc) from None

    def batches(self, reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
        try:
            yield from reader
        except Exception as exc:  # noqa: BLE001 - DataFusion's errors, translated
            raise self.translated(exc) from None


def session(engine, cancel: CancelToken | None) -> Session:
    from datafusion.catalog import Catalog, Schema

    from planner.engine import DEFAULT_CATALOG
    from planner.paths import ConfinedContext
    ctx = ConfinedContext(engine.config, engine.policy, engine.ctx.external_tables)
    ctx.register_catalog_provider(DEFAULT_CATALOG, engine.ctx.catalog(DEFAULT_CATALOG))
    catalog, results = Catalog.memory_catalog(), Schema.memory_schema()
    catalog.register_schema(NESTED_SCHEMA, results)
    ctx.register_catalog_provider(NESTED_CATALOG, catalog)
    return Session(ctx, ml_functions.register(ctx, engine, cancel), results)


# --- planning --------------------------------------------------------------------------------

def plan(engine, statement: Any) -> Plan | None:
    """The plan of a statement that composes, or None for one that does not."""
    if isinstance(statement, st.Query):
        analysis = analyse(statement.sql, tokens=statement.tokens)
        return ComposedQuery.prepare(engine, analysis) if analysis.composes else None
    if isinstance(statement, st.CreateTable) and statement.query is not None:
        analysis = analyse(statement.query, whole=True)
        return ComposedCreateTable.prepare(engine, statement, analysis) if analysis.composes else None
    if isinstance(statement, st.Dml):
        analysis = analyse(statement.sql, tokens=statement.tokens)
        return ComposedInsert.prepare(engine, analysis) if analysis.composes else None
    return None


@dataclass
class NestedStatement:
    text: str
    node: Plan


def _prepare_nested(engine, analysis: Analysis) -> list[NestedStatement]:
    nested = []
    for text in analysis.nested:
        statement = st.parse(text)
        if not isinstance(statement, st.NESTABLE_STATEMENTS):
            raise InvalidInput(f"only PREDICT, EVALUATE, LIST and DESCRIBE MODEL can stand where a table can, "
                               f"not {' '.join(text.split()[:2]).upper()}")
        if analyse(text).nested:
            raise InvalidInput("an ML statement inside a query cannot itself hold one: write the inner one "
                               "to a table first (CREATE TABLE t AS PREDICT ...)")
        nested.append(NestedStatement(text, engine.prepare(text)))
    return nested


def _merged_parameters(*schemas: pa.Schema) -> pa.Schema:
    """One `$n` schema for the whole text: the outer query and each nested statement are
    planned apart, and see the same bound values."""
    count = max((len(s) for s in schemas), default=0)
    fields = []
    for i in range(count):
        dtype = pa.null()
        for s in schemas:
            if i < len(s) and dtype == pa.null():
                dtype = s.field(i).type
        fields.append(pa.field(f"${i + 1}", dtype))
    return pa.schema(fields) if fields else EMPTY_SCHEMA


def _empty_results(sess: Session, nested: list[NestedStatement]) -> None:
    for i, item in enumerate(nested):
        sess.register(i, item.node.dataset_schema.empty_table())


def _materialise(engine, sess: Session, nested: list[NestedStatement], params, cancel: CancelToken) -> None:
    """Run each nested statement and register its result, within NESTED_RESULT_BYTES."""
    used = 0
    for i, item in enumerate(nested):
        reader = item.node.run(engine, params, cancel)
        batches = []
        for batch in reader:
            cancel.check()
            used += batch.nbytes
            if used > NESTED_RESULT_BYTES:
                raise ResourceExhausted(
                    f"the results of the ML statements nested in this query passed "
                    f"{NESTED_RESULT_BYTES / 2**20:g} MiB (they are held in memory while the query runs); "
                    f"write the statement's result to a table first, e.g. CREATE TABLE t AS "
                    f"{item.text.split()[0].upper()} ..., which streams it, and query that table")
            batches.append(batch)
        sess.register(i, pa.Table.from_batches(batches, schema=reader.schema))


def _one_row(params, parameter_schema) -> dict:
    rows = param_rows(params, len(parameter_schema))
    if len(rows) != 1:
        raise InvalidInput(f"bind exactly one row of parameters; {len(rows)} were bound")
    return rows[0]


def _outer_values(values: dict, outer: pa.Schema) -> dict:
    """The bound values the outer query itself uses (a nested statement may use more)."""
    return {k: v for k, v in values.items() if int(k) <= len(outer)}


def _explain_nested(nested: list[NestedStatement]) -> str:
    return "\n".join(f"{nested_table(i)} := {item.node.explain()}" for i, item in enumerate(nested))


@dataclass
class ComposedQuery(Plan):
    """A query over nested ML statements' results and/or calling the ML functions."""
    analysis: Analysis = None
    nested: list = field(default_factory=list)
    outer_parameters: pa.Schema = EMPTY_SCHEMA

    @classmethod
    def prepare(cls, engine, analysis: Analysis) -> ComposedQuery:
        nested = _prepare_nested(engine, analysis)
        sess = session(engine, None)
        _empty_results(sess, nested)
        df = sess.plan(analysis.sql, READ_ONLY)
        outer = parameter_schema_of(df.logical_plan())
        schema = utf8_schema(df.schema())
        return cls(dataset_schema=schema, analysis=analysis, nested=nested, outer_parameters=outer,
                   parameter_schema=_merged_parameters(outer, *[n.node.parameter_schema for n in nested]))

    def explain(self) -> str:
        lines = ["ComposedQuery: nested ML statements run first, their results scanned by DataFusion's plan"]
        if self.nested:
            lines.append(_explain_nested(self.nested))
        lines.append(f"DataFusion: {self.analysis.sql}")
        return "\n".join(lines)

    def run(self, engine, params, cancel):
        values = _one_row(params, self.parameter_schema)
        sess = session(engine, cancel)
        if self.analysis.explain and not self.analysis.analyze:
            _empty_results(sess, self.nested)  # EXPLAIN shows the plan; nothing runs
        else:
            _materialise(engine, sess, self.nested, params, cancel)
        df = sess.plan(self.analysis.sql, READ_ONLY, _outer_values(values, self.outer_parameters))
        reader = stream_dataframe(df, cancel)
        batches = sess.batches(reader)
        if self.analysis.explain and self.nested:
            rows = pa.table({"plan_type": [f"ml_statement {nested_table(i)}" for i in range(len(self.nested))],
                             "plan": [n.node.explain() for n in self.nested]}).cast(reader.schema)
            batches = _chain(rows.to_batches(), batches)
        return pa.RecordBatchReader.from_batches(reader.schema, batches)


def _chain(first, rest):
    yield from first
    yield from rest


@dataclass
class ComposedCreateTable(Plan):
    """CREATE TABLE ... AS over nested ML statements or ML functions; `CREATE TABLE t AS
    PREDICT ...` (the query one ML statement) streams it into the table."""
    statement: Any = None
    analysis: Analysis = None
    nested: list = field(default_factory=list)

    @classmethod
    def prepare(cls, engine, statement, analysis: Analysis) -> ComposedCreateTable:
        nested = _prepare_nested(engine, analysis)
        sess = session(engine, None)
        _empty_results(sess, nested)
        df = sess.plan(analysis.sql, READ_ONLY)
        parameters = _merged_parameters(parameter_schema_of(df.logical_plan()),
                                        *[n.node.parameter_schema for n in nested])
        if len(parameters):
            raise InvalidInput("CREATE TABLE ... AS takes no $n parameters")
        return cls(dataset_schema=EMPTY_SCHEMA, is_update=True, statement=statement, analysis=analysis,
                   nested=nested)

    def explain(self) -> str:
        return f"ComposedCreateTable: {self.statement.name}\n{_explain_nested(self.nested)}"

    def run(self, engine, params, cancel):
        from planner.sql_plans import declared_schema, table_exists, write_created
        stmt = self.statement
        if table_exists(engine, stmt):  # before any inference; again when writing
            return 0
        declared = declared_schema(engine, stmt.columns) if stmt.columns is not None else None
        sess = session(engine, cancel)
        whole = len(self.nested) == 1 and self.analysis.sql == f"SELECT * FROM {nested_table(0)}"
        if whole and declared is None:
            reader = self.nested[0].node.run(engine, params, cancel)  # streamed, never held whole
        else:
            _materialise(engine, sess, self.nested, params, cancel)
            reader = stream_dataframe(sess.plan(self.analysis.sql, READ_ONLY), cancel)
        schema = utf8_schema(reader.schema)
        # Inference can take long: the rows are written without the store's lock.
        return write_created(engine, stmt, (b.cast(schema) for b in sess.batches(reader)), schema, declared)


@dataclass
class ComposedInsert(Plan):
    """INSERT INTO a stored table from a query over nested ML statements or ML functions;
    the target is checked and written as for any INSERT (planner/sql_plans.py)."""
    analysis: Analysis = None
    nested: list = field(default_factory=list)
    outer_parameters: pa.Schema = EMPTY_SCHEMA

    @classmethod
    def prepare(cls, engine, analysis: Analysis) -> ComposedInsert:
        nested = _prepare_nested(engine, analysis)
        sess = session(engine, None)
        _empty_results(sess, nested)
        df = sess.plan(analysis.sql, DML_ONLY)
        outer = parameter_schema_of(df.logical_plan())
        return cls(dataset_schema=EMPTY_SCHEMA, is_update=True, analysis=analysis, nested=nested,
                   outer_parameters=outer,
                   parameter_schema=_merged_parameters(outer, *[n.node.parameter_schema for n in nested]))

    def explain(self) -> str:
        return f"ComposedInsert: {self.analysis.sql}\n{_explain_nested(self.nested)}"

    def run(self, engine, params, cancel):
        from planner.sql_plans import insert_target
        values = _outer_values(_one_row(params, self.parameter_schema), self.outer_parameters)
        sess = session(engine, cancel)
        _materialise(engine, sess, self.nested, params, cancel)
        df = sess.plan(self.analysis.sql, DML_ONLY, values)
        target = insert_target(engine, df.logical_plan())
        try:
            source = sess.ctx.create_dataframe_from_logical_plan(df.logical_plan().inputs()[0])
        except Exception as exc:  # noqa: BLE001
            raise sess.translated(exc) from None
        reader = stream_dataframe(source, cancel)
        return engine.store.write_table(target, sess.batches(reader), reader.schema, "append")
