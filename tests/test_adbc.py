"""The Python ADBC driver against a real server process."""

from __future__ import annotations

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pytest


@pytest.fixture
def conn(server):
    connection = flightsql.connect(server.url, autocommit=True)
    yield connection
    connection.close()


def test_select_and_fetch_df(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT 1 AS one, 'a' AS letter")
        df = cur.fetch_df()
    assert df.to_dict("list") == {"one": [1], "letter": ["a"]}


def test_strings_are_plain_utf8(conn):
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE words AS SELECT 'x' AS w UNION ALL SELECT 'yy'")
        cur.execute("SELECT w, upper(w) AS u FROM words ORDER BY w")
        table = cur.fetch_arrow_table()
    assert table.schema.field("w").type == pa.string()
    assert table.schema.field("u").type == pa.string()
    assert table.column("u").to_pylist() == ["X", "YY"]


def test_large_result_streams(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT value AS id, value * 0.5 AS half FROM generate_series(1, 1000000)")
        reader = cur.fetch_record_batch()
        batches = 0
        rows = 0
        total = 0
        for batch in reader:
            batches += 1
            rows += batch.num_rows
            total += pa.compute.sum(batch.column("id")).as_py()
    assert rows == 1_000_000
    assert total == 1_000_000 * 1_000_001 // 2
    assert batches > 1  # streamed as many batches, not one materialised table


def test_ddl_dml_counts_and_prepared_parameters(conn):
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE people (id BIGINT, name VARCHAR)")
        cur.execute("INSERT INTO people VALUES (1, 'ann'), (2, 'bob'), (3, 'cy')")
        assert cur.rowcount == 3
        cur.execute("INSERT INTO people VALUES ($1, $2)", parameters=(4, "dee"))
        assert cur.rowcount == 1
        cur.execute("SELECT name FROM people WHERE id >= $1 ORDER BY id", parameters=(3,))
        assert [r[0] for r in cur.fetchall()] == ["cy", "dee"]
        cur.adbc_prepare("SELECT name FROM people WHERE id = $1")
        for wanted, name in [(1, "ann"), (2, "bob")]:
            cur.execute("SELECT name FROM people WHERE id = $1", parameters=(wanted,))
            assert cur.fetchall() == [(name,)]
        cur.execute("CREATE TABLE adults AS SELECT * FROM people WHERE id > 1")
        cur.execute("SELECT count(*) FROM adults")
        assert cur.fetchone() == (3,)
        cur.execute("DROP TABLE adults")
        with pytest.raises(flightsql.Error, match="adults"):
            cur.execute("SELECT * FROM adults")


def test_metadata(conn):
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE meta_t (a BIGINT, b VARCHAR, c DOUBLE)")
        cur.execute("CREATE VIEW meta_v AS SELECT a FROM meta_t")
    schema = conn.adbc_get_table_schema("meta_t")
    assert schema.names == ["a", "b", "c"]
    assert schema.field("b").type == pa.string()
    assert {"TABLE", "VIEW"} <= set(conn.adbc_get_table_types())
    info = conn.adbc_get_info()
    assert info["vendor_name"] == "thanosql-flight"
    assert info["vendor_arrow_version"] == pa.__version__
    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    tables = {}
    for catalog in objects:
        for db_schema in catalog["catalog_db_schemas"]:
            for table in db_schema["db_schema_tables"]:
                tables[(db_schema["db_schema_name"], table["table_name"])] = table
    assert tables[("public", "meta_t")]["table_type"] == "TABLE"
    assert [c["column_name"] for c in tables[("public", "meta_t")]["table_columns"]] == ["a", "b", "c"]
    assert tables[("public", "meta_v")]["table_type"] == "VIEW"
    assert ("thanosql", "models") in tables
    filtered = conn.adbc_get_objects(depth="tables", table_name_filter="meta%").read_all().to_pylist()
    names = {t["table_name"] for c in filtered for s in c["catalog_db_schemas"] or []
             for t in s["db_schema_tables"] or []}
    assert names == {"meta_t", "meta_v"}


def test_ingest_create_append_replace(conn):
    data = pa.table({"k": pa.array([1, 2, 3], pa.int64()), "v": ["a", "b", "c"]})
    with conn.cursor() as cur:
        assert cur.adbc_ingest("ingested", data, mode="create") == 3
        with pytest.raises(flightsql.Error, match="already exists"):
            cur.adbc_ingest("ingested", data, mode="create")
        cur.adbc_ingest("ingested", data.slice(0, 1), mode="append")
        cur.execute("SELECT count(*) FROM ingested")
        assert cur.fetchone() == (4,)
        cur.adbc_ingest("ingested", data.slice(1, 2), mode="replace")
        cur.execute("SELECT k FROM ingested ORDER BY k")
        assert cur.fetchall() == [(2,), (3,)]
        cur.adbc_ingest("fresh", data, mode="create_append")
        cur.execute("SELECT v FROM fresh ORDER BY k")
        assert [r[0] for r in cur.fetchall()] == ["a", "b", "c"]


def test_polars_and_pandas_read(conn):
    polars = pytest.importorskip("polars")
    with conn.cursor() as cur:
        cur.execute("SELECT value AS n FROM generate_series(1, 5)")
        frame = polars.from_arrow(cur.fetch_arrow_table())
    assert frame["n"].sum() == 15


def test_concurrent_clients(server):
    import concurrent.futures

    def work(i):
        with flightsql.connect(server.url, autocommit=True) as c, c.cursor() as cur:
            cur.execute(f"SELECT sum(value) FROM generate_series(1, {1000 * (i + 1)})")
            return cur.fetchone()[0]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(8)))
    assert results == [n * (n + 1) // 2 for n in (1000 * (i + 1) for i in range(8))]
