"""The ML SQL functions: transcribe() as a scalar function, wer() / cer() as aggregates.

    SELECT speaker, wer(text, transcribe('my_whisper', audio)) FROM utterances GROUP BY speaker

- ``transcribe(model, audio)`` and ``transcribe(model, audio, 'name=literal, ...')``: the
  transcript of each row's audio file with a registered model of any class.  DataFusion
  hands the function whole Arrow batches, so inference stays batched (``batch_size`` files
  per forward pass, as in PREDICT), through the engine's cached transcribers, with the same
  option schema as PREDICT (``batch_size``, ``max_duration``, ``on_error``, the class's
  decoding options) and every path through the same PathPolicy.  A NULL audio gives NULL;
  with ``on_error='null'`` a file that cannot be transcribed gives NULL too.
- ``wer(reference, hypothesis)`` / ``cer(...)``: corpus-level rates over the group (edits
  summed over the rows, divided by the reference words or characters summed over the rows,
  like EVALUATE, never an average of per-row rates), after EVALUATE's default normaliser
  (Whisper's English normaliser).  Rows where either side is NULL are skipped, as SQL
  aggregates skip NULLs.  ``wer_row`` / ``cer_row`` are the per-row rates.

DataFusion's Python UDFs have exact signatures (no optional argument, no overloading), so
the three-argument transcribe is registered as ``transcribe_options`` and a statement's
``transcribe(a, b, c)`` is renamed to it on its tokens (planner/composition.py).

Each statement that calls these functions gets its own instances bound to its CancelToken
(planner/composition.py makes a per-statement session): a cancel or the statement timeout
stops the running inference between batches, and an error met inside a function is kept
so the statement fails with the clean message (naming the row and the file), not
DataFusion's wrapping of a Python exception.  The instances registered on the engine's
shared session serve what reaches DataFusion without naming a function in its own text (a
view's query, the query after an ML statement's AS): they are bound to no statement, so a
cancel stops them only once their current batch is done, their row numbers count from 0 in
each batch, and their errors reach the client as DataFusion wraps them.
"""

from __future__ import annotations

import threading

import pyarrow as pa
from datafusion import Accumulator, udaf, udf

from planner.errors import InvalidInput, PlannerError
from planner.plans import CancelToken

TRANSCRIBE = "transcribe"
TRANSCRIBE_OPTIONS = "transcribe_options"  # the three-argument form (see the module docstring)
#: Names whose call routes a statement through planner/composition.py.
FUNCTION_NAMES = frozenset({TRANSCRIBE, TRANSCRIBE_OPTIONS, "wer", "cer", "wer_row", "cer_row"})
NORMALIZER = "whisper"  # EVALUATE's default


class FunctionState:
    """What one statement's function instances share: its token, the first error met
    inside a function, and a running count of the rows transcribe() has seen (the row
    numbers its errors give)."""

    def __init__(self, engine, cancel: CancelToken | None = None):
        self.engine = engine
        self.cancel = cancel
        self.error: PlannerError | None = None
        self._rows = 0
        self._lock = threading.Lock()

    def take_rows(self, n: int) -> int:
        """The number of the first of `n` rows: counted over the statement's calls, or from 0
        in each call for the engine-wide instances (they serve every statement at once)."""
        if self.cancel is None:
            return 0
        with self._lock:
            start = self._rows
            self._rows += n
            return start

    def fail(self, exc: PlannerError) -> PlannerError:
        with self._lock:
            if self.error is None:
                self.error = exc
        return exc

    def should_stop(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


def register(ctx, engine, cancel: CancelToken | None = None) -> FunctionState:
    """Register the functions on `ctx`, bound to `cancel`; returns their shared state."""
    state = FunctionState(engine, cancel)
    ctx.register_udf(udf(lambda models, audio: _transcribe(state, models, audio, None),
                         [pa.string(), pa.string()], pa.string(), "stable", name=TRANSCRIBE))
    ctx.register_udf(udf(lambda models, audio, options: _transcribe(state, models, audio, options),
                         [pa.string(), pa.string(), pa.string()], pa.string(), "stable", name=TRANSCRIBE_OPTIONS))
    for unit in ("word", "char"):
        name = "wer" if unit == "word" else "cer"
        ctx.register_udaf(udaf(lambda unit=unit: _RateAccumulator(state, unit), [pa.string(), pa.string()],
                               pa.float64(), [pa.int64(), pa.int64()], "immutable", name=name))
        ctx.register_udf(udf(lambda refs, hyps, unit=unit: _row_rates(state, unit, refs, hyps),
                             [pa.string(), pa.string()], pa.float64(), "immutable", name=f"{name}_row"))
    return state


# --- transcribe ----------------------------------------------------------------------------

def _transcribe(state: FunctionState, models: pa.Array, audio: pa.Array, options: pa.Array | None) -> pa.Array:
    """One DataFusion batch: the rows grouped by (model, options), each group transcribed in
    one call (batched inside), results back in row order."""
    offset = state.take_rows(len(audio))
    try:
        if state.should_stop():
            raise state.cancel.error()
        results: list[str | None] = [None] * len(audio)
        groups: dict[tuple[str, str], list[int]] = {}
        model_values, audio_values = models.to_pylist(), audio.to_pylist()
        option_values = options.to_pylist() if options is not None else [""] * len(audio)
        for i, (model, path) in enumerate(zip(model_values, audio_values)):
            if path is None:
                continue  # NULL in, NULL out
            if model is None:
                raise InvalidInput(f"transcribe(): row {offset + i}: the model name is NULL")
            groups.setdefault((model, option_values[i] or ""), []).append(i)
        for (model, option_text), rows in groups.items():
            texts = _transcribe_group(state, model, option_text, [audio_values[i] for i in rows],
                                      [offset + i for i in rows])
            for i, text in zip(rows, texts):
                results[i] = text
        return pa.array(results, pa.string())
    except PlannerError as exc:
        if state.should_stop():  # cancelled or timed out: say which, as any statement does
            raise state.fail(state.cancel.error()) from None
        raise state.fail(_named(exc)) from None


def _named(exc: PlannerError) -> PlannerError:
    message = str(exc)
    if message.startswith("transcribe()"):
        return exc
    return type(exc)(f"transcribe(): {message}")


def _transcribe_group(state: FunctionState, model: str, option_text: str, paths: list[str],
                      rows: list[int]) -> list[str | None]:
    from ml import options as ml_options
    from planner import statements as st
    from planner.ml_plans import ml_errors
    engine = state.engine
    with ml_errors():
        class_name = engine.registry.class_of(model)
        model_dir = str(engine.registry.model_dir(model))
        options = ml_options.validate(class_name, "predict",
                                      st.parse_options_text(option_text, f"transcribe() options {option_text!r}"))
        engine.runner.check("predict", options)
    keep_going = options["on_error"] == "null"
    errors: list[str | None] | None = [None] * len(paths) if keep_going else None
    checked: list[str | None] = []
    for i, (value, row) in enumerate(zip(paths, rows)):
        try:
            if not value.strip():
                raise InvalidInput(f"row {row}: the audio path is empty")
            checked.append(str(engine.policy.audio_file(value, row=row)))
        except PlannerError as exc:  # a refused path: this row's error, or the statement's
            if errors is None:
                raise
            checked.append(None)
            errors[i] = str(exc)
    if not any(p is not None for p in checked):
        return [None] * len(paths)
    with ml_errors():
        transcriber = engine.transcriber(model_dir, class_name, options)
    # The transcriber numbers rows from row_offset in input order; rows of one group are
    # not contiguous when several models or option strings are mixed, so each file is
    # numbered by the row it came from through a single-row call in that (rare) case.
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return _run(state, transcriber, checked, options, rows[0], errors)
    out: list[str | None] = []
    for i, (path, row) in enumerate(zip(checked, rows)):
        one_error = [errors[i]] if errors is not None else None
        out.extend(_run(state, transcriber, [path], options, row, one_error))
    return out


def _run(state: FunctionState, transcriber, paths, options, row_offset, errors) -> list[str | None]:
    from planner.ml_plans import ml_errors
    with ml_errors():
        texts = transcriber.transcribe(paths, options["batch_size"], row_offset=row_offset,
                                       should_stop=state.should_stop if state.cancel is not None else None,
                                       max_seconds=options["max_duration"], errors=errors, options=options)
    if state.should_stop():
        raise state.cancel.error()
    return texts


# --- wer / cer -------------------------------------------------------------------------------

def edit_counts(references: list[str], hypotheses: list[str], unit: str) -> list[tuple[int, int]]:
    """(edits, reference units) per pair, after EVALUATE's default normaliser: summed over
    rows they give exactly EVALUATE's corpus rate (jiwer's corpus counts are these sums)."""
    from ml.metrics import normalizer_function
    norm = normalizer_function(NORMALIZER)
    refs = [norm(r) for r in references]
    hyps = [norm(h) for h in hypotheses]
    if unit == "word":
        sizes = [len(r.split()) for r in refs]
    else:
        sizes = [len(r) for r in refs]
    counts = [(0, size) for size in sizes]
    todo = [i for i in range(len(refs)) if refs[i] or hyps[i]]
    empty_ref = [i for i in todo if not refs[i]]
    for i in empty_ref:  # nothing to recognise: every emitted unit is an insertion
        counts[i] = (len(hyps[i].split()) if unit == "word" else len(hyps[i]), 0)
    todo = [i for i in todo if refs[i]]
    if todo:
        import jiwer
        process = jiwer.process_words if unit == "word" else jiwer.process_characters
        out = process([refs[i] for i in todo], [hyps[i] for i in todo])
        for i, chunks in zip(todo, out.alignments):
            edits = 0
            for chunk in chunks:
                if chunk.type in ("substitute", "delete"):
                    edits += chunk.ref_end_idx - chunk.ref_start_idx
                elif chunk.type == "insert":
                    edits += chunk.hyp_end_idx - chunk.hyp_start_idx
            counts[i] = (edits, sizes[i])
    return counts


def _rate(edits: int, units: int) -> float:
    if units == 0:  # as EVALUATE: perfect only if nothing was emitted
        return 0.0 if edits == 0 else 1.0
    return edits / units


def _pairs(refs: pa.Array, hyps: pa.Array) -> tuple[list[int], list[str], list[str]]:
    r, h = refs.to_pylist(), hyps.to_pylist()
    kept = [i for i in range(len(r)) if r[i] is not None and h[i] is not None]
    return kept, [r[i] for i in kept], [h[i] for i in kept]


def _guarded(state: FunctionState, name: str, call):
    try:
        return call()
    except PlannerError as exc:
        raise state.fail(exc) from None
    except Exception as exc:  # noqa: BLE001 - a metric that cannot be computed is the statement's error
        raise state.fail(InvalidInput(f"{name}(): {str(exc).strip() or type(exc).__name__}")) from None


def _row_rates(state: FunctionState, unit: str, refs: pa.Array, hyps: pa.Array) -> pa.Array:
    def compute():
        kept, r, h = _pairs(refs, hyps)
        out: list[float | None] = [None] * len(refs)
        for i, (edits, units) in zip(kept, edit_counts(r, h, unit)):
            out[i] = _rate(edits, units)
        return pa.array(out, pa.float64())
    return _guarded(state, ("wer" if unit == "word" else "cer") + "_row", compute)


class _RateAccumulator(Accumulator):
    """Edits and reference units summed over the group; the rate at the end."""

    def __init__(self, functions: FunctionState, unit: str):
        self.functions, self.unit = functions, unit
        self.edits = self.units = 0
        self.rows = 0

    def update(self, refs: pa.Array, hyps: pa.Array) -> None:
        def compute():
            _, r, h = _pairs(refs, hyps)
            for edits, units in edit_counts(r, h, self.unit):
                self.edits += edits
                self.units += units
            self.rows += len(r)
        _guarded(self.functions, "wer" if self.unit == "word" else "cer", compute)

    def merge(self, states: list[pa.Array]) -> None:
        for edits, units in zip(states[0].to_pylist(), states[1].to_pylist()):
            if units is None:  # a partition that saw no row
                continue
            self.edits += edits
            self.units += units
            self.rows += 1

    def state(self) -> list[pa.Scalar]:
        if not self.rows:
            return [pa.scalar(None, pa.int64()), pa.scalar(None, pa.int64())]
        return [pa.scalar(self.edits, pa.int64()), pa.scalar(self.units, pa.int64())]

    def evaluate(self) -> pa.Scalar:
        if not self.rows:  # no row with both sides: NULL, as AVG of nothing
            return pa.scalar(None, pa.float64())
        return pa.scalar(_rate(self.edits, self.units), pa.float64())


def translate_error(exc: BaseException, state: FunctionState | None) -> PlannerError | None:
    """The clean error a function met, if `exc` (DataFusion's wrapping) came from one."""
    if state is not None and state.error is not None:
        return state.error
    if state is not None and state.should_stop():
        return state.cancel.error()
    return None
