"""The memory cache of table versions: within its budget, least recently used first out,
files shared between versions counted once, and the same rows as Parquet.

In-process on the real Engine (real Parquet files, real DataFusion); the server-level
behaviour is in test_table_versions.py."""

from __future__ import annotations

import pyarrow as pa
import pytest

from planner.engine import Engine
from planner.table_cache import parse_memory

ROWS = 50_000


def run(engine: Engine, sql: str):
    plan = engine.prepare(sql)
    if plan.is_update:
        return engine.execute_update(plan)
    return engine.execute_query(plan).read_all()


def settle(engine: Engine, timeout: float = 10.0) -> None:
    """Wait for the background loads asked for so far."""
    done = engine.store.cache._loader.submit(lambda: None)
    done.result(timeout)


def cached(engine: Engine, name: str) -> bool:
    return engine.store.in_memory(name) is not None


def make(engine: Engine, name: str, rows: int = ROWS) -> None:
    """The table, read once: a read asks for its version to be loaded into memory."""
    run(engine, f"CREATE TABLE {name} AS SELECT v AS id, v * 0.5 AS x, 'row ' || v AS s "
                f"FROM unnest(range({rows})) AS r(v)")
    run(engine, f"SELECT count(*) FROM {name}")


def test_versions_are_cached_within_the_budget_least_recently_used_first(tmp_path):
    probe = Engine(tmp_path / "probe", cache_memory="1GiB")
    make(probe, "a")
    settle(probe)
    one_table = probe.store.cache.used_bytes()
    assert one_table > 0
    # Room for one table and a half: the second table read evicts the first.
    engine = Engine(tmp_path / "data", cache_memory=int(one_table * 1.5))
    make(engine, "a")
    make(engine, "b")
    settle(engine)
    run(engine, "SELECT count(*) FROM a")
    settle(engine)
    assert cached(engine, "a") and not cached(engine, "b")
    assert engine.store.cache.used_bytes() <= engine.store.cache.budget
    run(engine, "SELECT count(*) FROM b")
    settle(engine)
    assert cached(engine, "b") and not cached(engine, "a")
    assert engine.store.cache.used_bytes() <= engine.store.cache.budget


def test_an_append_shares_the_decoded_files_of_the_previous_version(tmp_path):
    engine = Engine(tmp_path / "data", cache_memory="1GiB")
    make(engine, "a")
    settle(engine)
    before = engine.store.cache.used_bytes()
    run(engine, "INSERT INTO a VALUES (-1, 0.0, 'new')")
    settle(engine)
    assert cached(engine, "a")
    assert engine.store.in_memory("a").num_rows == ROWS + 1
    # The old version went (no reader held it); the new one reuses its file's columns.
    assert engine.store.cache.cached_versions() == 1
    assert before <= engine.store.cache.used_bytes() < before + 1024


def test_a_version_larger_than_the_budget_is_read_from_parquet_with_the_same_rows(tmp_path):
    small = Engine(tmp_path / "small", cache_memory=10_000)
    large = Engine(tmp_path / "large", cache_memory="1GiB")
    results = []
    for engine in (small, large):
        make(engine, "a")
        settle(engine)
        results.append([run(engine, sql) for sql in (
            "SELECT * FROM a", "SELECT s, id FROM a", "SELECT count(*) AS n, sum(x) AS x FROM a",
            "SELECT * FROM a WHERE id = 4242")])
    assert not cached(small, "a") and small.store.cache.used_bytes() == 0
    assert cached(large, "a")
    for uncached, from_memory in zip(*results):
        assert uncached.sort_by([(uncached.column_names[0], "ascending")]).equals(
            from_memory.sort_by([(from_memory.column_names[0], "ascending")]))


def test_the_fast_path_serves_the_columns_held_in_memory_and_nothing_computed(tmp_path):
    from planner.sql_plans import in_memory_rows
    engine = Engine(tmp_path / "data", cache_memory="1GiB")
    make(engine, "a", rows=10)
    settle(engine)
    whole = in_memory_rows(engine, engine.ctx.sql("SELECT s, id FROM a"))
    assert whole.column_names == ["s", "id"] and sorted(whole.column("id").to_pylist()) == list(range(10))
    for sql in ["SELECT id + 1 AS id FROM a", "SELECT * FROM a WHERE id = 3", "SELECT * FROM a LIMIT 2",
                "SELECT id AS renamed FROM a", "SELECT * FROM a ORDER BY id", "SELECT count(*) FROM a"]:
        assert in_memory_rows(engine, engine.ctx.sql(sql)) is None, sql
    assert sorted(run(engine, "SELECT id + 1 AS id FROM a").column("id").to_pylist()) == list(range(1, 11))


@pytest.mark.parametrize("text, expected", [("0", 0), ("512MiB", 512 << 20), ("2GB", 2_000_000_000),
                                            ("50%", 1 << 29), ("1.5G", 3 << 29)])
def test_cache_memory_sizes(text, expected):
    assert parse_memory(text, total=1 << 30) == expected


@pytest.mark.parametrize("text", ["", "lots", "-1", "150%", "12XB"])
def test_cache_memory_refuses_what_is_not_a_size(text):
    with pytest.raises(ValueError, match="memory size"):
        parse_memory(text, total=1 << 30)


def test_a_read_of_an_uncached_version_is_served_from_parquet_and_asks_for_a_load(tmp_path):
    engine = Engine(tmp_path / "data", cache_memory="1GiB")
    make(engine, "a")
    settle(engine)
    engine.store.cache.drop(str(engine.store._current["a"]))  # as if evicted
    assert not cached(engine, "a")
    assert run(engine, "SELECT count(*) AS n FROM a").column("n").to_pylist() == [ROWS]
    settle(engine)
    assert cached(engine, "a")


def test_many_small_appends_keep_a_version_to_a_bounded_number_of_files(tmp_path):
    from planner.storage import MAX_FILES_PER_VERSION
    engine = Engine(tmp_path / "data", cache_memory=0)
    run(engine, "CREATE TABLE t (k BIGINT, v VARCHAR)")
    for k in range(MAX_FILES_PER_VERSION + 10):
        run(engine, f"INSERT INTO t VALUES ({k}, 'row {k}')")
    (folder,) = (tmp_path / "data" / "tables").iterdir()
    assert len(list(folder.iterdir())) <= MAX_FILES_PER_VERSION
    rows = run(engine, "SELECT k, v FROM t ORDER BY k").to_pylist()
    assert rows == [{"k": k, "v": f"row {k}"} for k in range(MAX_FILES_PER_VERSION + 10)]


def test_dotted_names_never_take_the_fast_path_to_another_table(tmp_path):
    engine = Engine(tmp_path / "data", cache_memory="1GiB")
    run(engine, "CREATE TABLE t AS SELECT 1 AS a")
    run(engine, 'CREATE TABLE "public.t" AS SELECT 999 AS a')
    run(engine, 'CREATE TABLE "information_schema.tables" AS SELECT \'spoof\' AS table_name')
    for name in ("t", "public.t", "information_schema.tables"):
        engine.store.warm([name])
    settle(engine)
    assert run(engine, "SELECT * FROM public.t").to_pylist() == [{"a": 1}]
    assert run(engine, 'SELECT * FROM "public.t"').to_pylist() == [{"a": 999}]
    names = run(engine, "SELECT table_name FROM information_schema.tables").column("table_name").to_pylist()
    assert "spoof" not in names and "t" in names


def test_wide_rows_among_narrow_ones_are_sent_in_slices_under_the_grpc_limit(tmp_path):
    from planner.table_cache import MAX_BATCH_BYTES, sized_for_grpc
    wide = pa.table({"id": pa.array(range(2000)),
                     "s": pa.array(["x" * 30_000 if i < 400 else "y" for i in range(2000)])})
    sliced = sized_for_grpc(wide)
    assert sliced.num_rows == 2000 and sliced.equals(wide)
    assert all(b.nbytes <= MAX_BATCH_BYTES for b in sliced.to_batches())


def test_a_reader_dropped_unread_releases_its_pin(tmp_path):
    import gc
    engine = Engine(tmp_path / "data", cache_memory=0)
    make(engine, "a")
    reader = engine.execute_query(engine.prepare("SELECT id, x, s FROM a WHERE id >= 0"))  # over 1 MiB: streamed
    assert engine.store.pins.running() == 1
    run(engine, "CREATE OR REPLACE TABLE a AS SELECT 1 AS id")
    assert engine.store.pins.waiting() == 1  # the old version is kept for the reader
    del reader
    gc.collect()
    assert engine.store.pins.running() == 0 and engine.store.pins.waiting() == 0
    assert len(list((tmp_path / "data" / "tables").iterdir())) == 1
