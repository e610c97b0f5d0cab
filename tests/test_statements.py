"""Statement recognition (planner/statements.py): ThanoSQL's statements and their options."""

from __future__ import annotations

import pytest

from planner import statements as st
from planner.errors import InvalidInput, Unsupported


def test_build_model_with_python_like_options():
    parsed = st.parse("BUILD MODEL my_asr_model USING Wav2Vec2En OPTIONS (audio_col='audio', "
                      "epochs=1, learning_rate=1e-4, shift=-2, fp16=True, tags=['a', 'b'], x=None) "
                      "AS SELECT * FROM librispeech_train -- comment")
    assert parsed == st.BuildModel("my_asr_model", "Wav2Vec2En",
                                   {"audio_col": "audio", "epochs": 1, "learning_rate": 1e-4, "shift": -2,
                                    "fp16": True, "tags": ["a", "b"], "x": None},
                                   "SELECT * FROM librispeech_train -- comment")


def test_query_after_as_is_handed_over_unchanged():
    query = "SELECT \"Audio\" AS audio, 'it''s' AS text FROM t WHERE x = $1"
    parsed = st.parse(f"predict using m as {query}")
    assert parsed == st.Predict("m", {}, query)


@pytest.mark.parametrize("sql, expected", [
    ("LIST MODEL", st.ListModels()),
    ("list thanosql model", st.ListModelClasses()),
    ("LIST THANOSQL DATASET", st.ListDatasets()),
    ("LIST TABLE", st.ListTables()),
    ("DELETE MODEL m", st.DeleteModel("m")),
    ("DROP MODEL IF EXISTS m", st.DeleteModel("m", True)),
    ("DESCRIBE MODEL m", st.DescribeModel("m")),
    ("CANCEL MODEL m", st.CancelModel("m")),
    ('cancel model "My_Model";', st.CancelModel("My_Model")),
    ("GET THANOSQL DATASET librispeech_data OPTIONS (overwrite=True)",
     st.GetDataset("librispeech_data", {"overwrite": True})),
    ("COPY t OPTIONS (if_exists='replace') FROM 'a/b.csv'", st.CopyFrom("t", "a/b.csv", {"if_exists": "replace"})),
    ("DROP TABLE IF EXISTS a, \"B\"", st.Drop("table", ("a", "B"), True)),
    ("DELETE FROM t WHERE a = 1", st.Dml("DELETE FROM t WHERE a = 1")),
    ("SELECT 1;", st.Query("SELECT 1;")),
])
def test_statement_kinds(sql, expected):
    assert st.parse(sql) == expected


def test_create_statements():
    ctas = st.parse("create or replace table t as select 1")
    assert ctas.or_replace and ctas.query == "select 1"
    assert st.parse("CREATE TABLE IF NOT EXISTS t (a INT)").if_not_exists
    external = st.parse("CREATE EXTERNAL TABLE e STORED AS CSV LOCATION 'x.csv' OPTIONS ('a' 'b')")
    assert external.location == "x.csv" and external.sql_after_location == " OPTIONS ('a' 'b')"
    copy_to = st.parse("COPY (SELECT 1) TO '/tmp/out.parquet'")
    assert copy_to.path == "/tmp/out.parquet"


def test_explain_of_an_ml_statement():
    assert st.parse("EXPLAIN PREDICT USING m AS SELECT 1") == st.Explain(st.Predict("m", {}, "SELECT 1"))
    assert st.parse("EXPLAIN SELECT 1") == st.Query("EXPLAIN SELECT 1")


@pytest.mark.parametrize("sql, error, words", [
    ("SELECT 1; SELECT 2", InvalidInput, ["one statement"]),
    ("", InvalidInput, ["empty"]),
    ("BUILD MODEL m USING Wav2Vec2En OPTIONS (a=1, a=2) AS SELECT 1", InvalidInput, ["'a'", "twice"]),
    ("BUILD MODEL m USING Wav2Vec2En OPTIONS (audio_col=audio) AS SELECT 1", InvalidInput,
     ["audio_col", "quote"]),
    ("BUILD MODEL m USING Wav2Vec2En OPTIONS (epochs=1)", InvalidInput, ["AS <query>"]),
    ("PREDICT m AS SELECT 1", InvalidInput, ["USING"]),
    ("COPY t FROM path", InvalidInput, ["quoted string"]),
    ("LIST FOO", InvalidInput, ["LIST takes"]),
    ("CANCEL m", InvalidInput, ["CANCEL MODEL", "expected MODEL"]),
    ("CANCEL MODEL", InvalidInput, ["model name"]),
    ("CANCEL MODEL a b", InvalidInput, ["CANCEL MODEL", "'b'"]),
    ("EXPLAIN CANCEL MODEL m", InvalidInput, ["EXPLAIN applies"]),
    ("SET x = 1", Unsupported, ["SET"]),
    ("CREATE TEMPORARY TABLE t (a INT)", Unsupported, ["temporary"]),
    ("SELECT 'unterminated", InvalidInput, ["SQL text"]),
])
def test_errors_name_the_problem(sql, error, words):
    with pytest.raises(error) as info:
        st.parse(sql)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("value", [{"a": 1}, ["fail"], 3, None])
def test_copy_options_are_text(value):
    from planner.copy import copy_mode
    from planner.errors import InvalidInput

    with pytest.raises(InvalidInput, match="must be text"):
        copy_mode({"if_exists": value})
