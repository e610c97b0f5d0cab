"""One path policy for every path a statement can reach (issue 8): COPY FROM / TO, external
tables and every file under them at scan time, audio paths, base_model, the dataset mirror.

Real server processes and the real ADBC driver. Every refused case also checks that the
file outside the allowed folders was neither written (content and mtime) nor read (its
content appears in no result or message), and the allowed variants still work.
"""

from __future__ import annotations

import csv
import os
import shutil
import threading
import time
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import pytest

from planner import datasets
from planner.errors import InvalidInput, PermissionDenied
from planner.paths import PathPolicy
from server_process import REPO, SHARED_DATA, ServerProcess

SECRET = "TOP-SECRET-LINE,do-not-leak\n"
CALL_TIMEOUT = 20  # seconds: a statement that blocks (a FIFO) fails the test, never hangs it

# A refused path is gRPC PERMISSION_DENIED, which the ADBC Flight SQL driver reports as
# "UNAUTHORIZED: [FlightSQL] <message> (PermissionDenied; <rpc>)".
REFUSED_STATUS = "(PermissionDenied;"


# --- helpers ----------------------------------------------------------------------------

def _call(url, sql, timeout=CALL_TIMEOUT):
    """Run one statement in a thread; (result or None, error or None). Fails on a hang."""
    box: dict = {}

    def work():
        try:
            with flightsql.connect(url, autocommit=True) as conn, conn.cursor() as cur:
                cur.execute(sql)
                box["result"] = cur.fetch_arrow_table() if cur.description else cur.rowcount
        except Exception as exc:  # noqa: BLE001 - returned to the caller
            box["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"statement still running after {timeout} s (blocked?): {sql}"
    return box.get("result"), box.get("error")


def ok(url, sql):
    result, error = _call(url, sql)
    assert error is None, f"{sql}: {error}"
    return result


def refused(url, sql, *words) -> str:
    """The statement fails as a refused path; returns the message for further checks."""
    result, error = _call(url, sql)
    assert error is not None, f"not refused: {sql} -> {result}"
    message = str(error)
    assert REFUSED_STATUS in message, message
    for word in words:
        assert word in message, (word, message)
    assert "TOP-SECRET" not in message
    assert "Traceback" not in message
    return message


def snapshot(path: Path):
    st = path.stat()
    return path.read_bytes(), st.st_mtime_ns, st.st_size


def make_audio(path: Path) -> Path:
    shutil.copy(SHARED_DATA / "audio" / "103-1240-0000.flac", path)
    return path


# --- one server for the whole module ------------------------------------------------------

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("paths")
    outside = root / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("victim: must stay as it is\n")
    (outside / "secret.csv").write_text("a,b\n" + SECRET)
    (outside / "sub").mkdir()
    (outside / "sub" / "more.csv").write_text("a,b\n" + SECRET)
    (outside / "ckpt").mkdir()
    (outside / "ckpt" / "config.json").write_text("{}")
    extra = root / "extra"  # an --allow-path root
    (extra / "ext").mkdir(parents=True)
    (extra / "ext" / "a.csv").write_text("a,b\n5,6\n")
    server = ServerProcess(root / "data", "--allow-path", str(SHARED_DATA), "--allow-path", str(extra))
    server.data_dir.mkdir()
    server.start()
    yield dict(server=server, url=server.url, data=server.data_dir.resolve(), outside=outside.resolve(),
               extra=extra.resolve(), victim=(outside / "victim.txt").resolve(),
               secret=(outside / "secret.csv").resolve())
    server.stop()


# --- the policy itself (in process) ------------------------------------------------------

def test_policy_parses_file_urls_and_refuses_other_schemes(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    policy = PathPolicy(data)
    base = data.resolve()
    for text in [f"file:{base}/x.csv", f"file://{base}/x.csv", f"file://localhost{base}/x.csv",
                 f"FILE:{base}/x.csv", "x.csv", "./x.csv", "sub/../x.csv", f"file://{base}/%78.csv"]:
        assert policy.resolve(text) == base / "x.csv", text
    for text in ["file:/etc/passwd", "file:///etc/passwd", "file://localhost/etc/passwd",
                 f"file://{base}/%2e%2e/x.csv", "file:/%2e%2e/etc/passwd", "../x.csv", "/etc/passwd", "~/x"]:
        with pytest.raises(PermissionDenied, match="outside the server's allowed folders"):
            policy.resolve(text)
    for text in ["s3://bucket/x.csv", "http://example.com/x.csv", "https://h/x", "gs://b/x", "memory:///x.csv",
                 "az://c/x", "hdfs://n/x", "x:y.csv", f"file://otherhost{base}/x.csv", "file:x.csv",
                 f"file:{base}/x.csv?q=1", f"file:{base}/x.csv#f", f"{base}/x\x00.csv", "file:/tmp/%00"]:
        with pytest.raises(PermissionDenied) as info:
            policy.resolve(text)
        assert str(base) in str(info.value), text  # the message names the allowed folders
    with pytest.raises(InvalidInput):
        policy.resolve("  ")


def test_policy_write_targets(tmp_path):
    data = tmp_path / "data"
    (data / "tables").mkdir(parents=True)
    policy = PathPolicy(data)
    base = data.resolve()
    assert policy.write_target("out/x.csv") == base / "out" / "x.csv"
    assert policy.write_target("dir/") == base / "dir"
    for text, word in [("catalog.sqlite", "catalog.sqlite"), ("catalog.sqlite-wal", "catalog.sqlite"),
                       ("tables/t/x.parquet", "tables"), ("models/m/v1/config.json", "models"),
                       (".", "data directory itself"), ("../x.csv", "outside"), ("a/*.csv", "glob")]:
        with pytest.raises((PermissionDenied, InvalidInput), match=word):
            policy.write_target(text)


# --- COPY ... TO ---------------------------------------------------------------------------

def test_copy_to_never_writes_outside(env):
    url, data, victim = env["url"], env["data"], env["victim"]
    before = snapshot(victim)
    v = str(victim)
    cases = [
        # the hostile tester's statement: the target literal repeated earlier in the query
        f"COPY (SELECT 'file:{v}' AS a) TO 'file:{v}' STORED AS CSV",
        f"COPY (SELECT '{v}' AS a) TO '{v}' STORED AS CSV",
        f"COPY (SELECT 'x' AS a, 'file:{v}' AS b) TO 'file:{v}' STORED AS CSV",
        f"COPY (SELECT 1 AS a) TO 'file://{v}' STORED AS CSV",
        f"COPY (SELECT 1 AS a) TO 'file:///{v.lstrip('/')}' STORED AS CSV",
        f"COPY (SELECT 1 AS a) TO 'file://localhost{v}' STORED AS CSV",
        f"COPY (SELECT 1 AS a) TO 'FILE:{v}' STORED AS CSV",
        f"COPY (SELECT 1 AS a) TO 'file://{data}/%2e%2e/outside/victim.txt' STORED AS CSV",
        f"COPY (SELECT 1 AS a) TO '{data}/../outside/victim.txt' STORED AS CSV",
        "COPY (SELECT 1 AS a) TO '../outside/victim.txt' STORED AS CSV",
        "COPY (SELECT 1 AS a) TO 'x/../../outside/victim.txt' STORED AS CSV",
        f"COPY (SELECT 1 AS a) TO '{env['outside']}/' STORED AS CSV",
        # a comment or a string holding "TO '...'" before the real TO
        f"COPY (SELECT 1 AS a /* TO 'ok.csv' */) TO '{v}' STORED AS CSV",
        f"COPY (SELECT ') TO ''ok.csv''' AS a) TO '{v}' STORED AS CSV",
    ]
    for sql in cases:
        message = refused(url, sql)
        assert str(data) in message, message  # names the allowed folders
    for sql in ["COPY (SELECT 1 AS a) TO 's3://bucket/x.csv' STORED AS CSV",
                "COPY (SELECT 1 AS a) TO 'http://example.com/x.csv' STORED AS CSV",
                "COPY (SELECT 1 AS a) TO 'gs://bucket/x.parquet' STORED AS PARQUET",
                "COPY (SELECT 1 AS a) TO 'memory:///x.csv' STORED AS CSV",
                "COPY (SELECT 1 AS a) TO 'file://otherhost/tmp/x.csv' STORED AS CSV"]:
        refused(url, sql, "URL")
    assert snapshot(victim) == before
    assert sorted(os.listdir(env["outside"])) == ["ckpt", "secret.csv", "sub", "victim.txt"]


def test_copy_to_relative_target_lands_in_the_data_dir(env):
    url, data = env["url"], env["data"]
    assert ok(url, "COPY (SELECT 1 AS a, 'x' AS b) TO 'exports/rel.csv' STORED AS CSV") == 1
    assert (data / "exports" / "rel.csv").read_text().splitlines() == ["a,b", "1,x"]
    assert not (REPO / "exports").exists()  # the server's working directory
    # file: URLs inside the data directory, a folder target, the same literal repeated
    target = data / "exports" / "url.csv"
    assert ok(url, f"COPY (SELECT '{target}' AS p) TO 'file://{target}' STORED AS CSV") == 1
    assert target.read_text().splitlines() == ["p", str(target)]
    assert ok(url, "COPY (SELECT 2 AS a) TO 'exports/folder/' STORED AS PARQUET") == 1
    written = list((data / "exports" / "folder").iterdir())
    assert written and all(p.suffix == ".parquet" for p in written), written
    assert ok(url, "COPY (SELECT 3 AS a) TO 'exports/../exports/dotdot.csv' STORED AS CSV") == 1
    assert (data / "exports" / "dotdot.csv").exists()


def test_copy_to_refuses_the_servers_own_files_symlinks_and_fifos(env):
    url, data, victim = env["url"], env["data"], env["victim"]
    before = snapshot(victim)
    catalog = snapshot(data / "catalog.sqlite")
    ok(url, "CREATE TABLE keep_me AS SELECT 1 AS a")
    for target in ["catalog.sqlite", "catalog.sqlite-wal", "tables/x.parquet", "tables/", "models/m.csv"]:
        refused(url, f"COPY (SELECT 1 AS a) TO '{target}' STORED AS CSV", "data directory")
    assert snapshot(data / "catalog.sqlite")[0][:16] == catalog[0][:16]  # still an SQLite file
    assert ok(url, "SELECT a FROM keep_me").to_pylist() == [{"a": 1}]
    links = data / "links"
    links.mkdir()
    (links / "out.csv").symlink_to(victim)
    (links / "inside.csv").symlink_to(data / "exports-target.csv")
    (links / "dir").symlink_to(env["outside"])
    os.mkfifo(links / "pipe.csv")
    refused(url, "COPY (SELECT 1 AS a) TO 'links/out.csv' STORED AS CSV", "symbolic link")
    refused(url, "COPY (SELECT 1 AS a) TO 'links/inside.csv' STORED AS CSV", "symbolic link")
    refused(url, "COPY (SELECT 1 AS a) TO 'links/dir/victim.txt' STORED AS CSV", "outside")
    refused(url, "COPY (SELECT 1 AS a) TO 'links/dir/new.csv' STORED AS CSV", "outside")
    refused(url, "COPY (SELECT 1 AS a) TO 'links/pipe.csv' STORED AS CSV", "FIFO")
    assert snapshot(victim) == before
    assert not (env["outside"] / "new.csv").exists() and not (data / "exports-target.csv").exists()


# --- external tables -----------------------------------------------------------------------

def test_external_table_files_are_checked_at_every_scan(env):
    url, data, secret = env["url"], env["data"], env["secret"]
    folder = data / "ext1"
    folder.mkdir()
    (folder / "a.csv").write_text("a,b\n1,2\n")
    ok(url, "CREATE EXTERNAL TABLE ext1 STORED AS CSV LOCATION 'ext1' OPTIONS ('format.has_header' 'true')")
    ok(url, "CREATE VIEW ext1_view AS SELECT * FROM ext1")
    assert ok(url, "SELECT * FROM ext1").to_pylist() == [{"a": 1, "b": 2}]
    # a symlink planted after CREATE: every statement that scans the table is refused,
    # also one prepared while the folder was clean (an ML node keeps its plan from prepare)
    link = folder / "evil.csv"
    prepared = "PRINT AUDIO OPTIONS (audio_col='a') AS SELECT CAST(a AS VARCHAR) AS a FROM ext1"
    with flightsql.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.adbc_prepare(prepared)
        cur.execute(prepared)
        assert cur.fetch_arrow_table().num_rows == 1
        link.symlink_to(secret)
        with pytest.raises(flightsql.Error) as info:
            cur.execute(prepared)
            cur.fetch_arrow_table()
        assert REFUSED_STATUS in str(info.value) and "TOP-SECRET" not in str(info.value)
    for sql in ["SELECT * FROM ext1", "SELECT count(*) FROM ext1", "SELECT * FROM ext1_view",
                "SELECT (SELECT max(b) FROM ext1) AS m", "SELECT 1 WHERE EXISTS (SELECT 1 FROM ext1)",
                "SELECT * FROM public.ext1", "SELECT * FROM datafusion.public.ext1",
                "WITH c AS (SELECT * FROM ext1) SELECT * FROM c",
                "CREATE TABLE stolen AS SELECT * FROM ext1", "INSERT INTO ext1 VALUES (3, 4)",
                "COPY (SELECT * FROM ext1) TO 'exports/stolen.csv' STORED AS CSV",
                "PRINT AUDIO OPTIONS (audio_col='a') AS SELECT CAST(a AS VARCHAR) AS a FROM ext1"]:
        refused(url, sql, "evil.csv", "outside")
    assert not (data / "exports" / "stolen.csv").exists()
    assert "stolen" not in ok(url, "LIST TABLE").column("table_name").to_pylist()
    link.unlink()
    # a symlinked folder leading out, and a link resolving inside the roots (allowed)
    (folder / "sub").symlink_to(env["outside"] / "sub")
    refused(url, "SELECT * FROM ext1", "outside")
    (folder / "sub").unlink()
    (folder / "shared.csv").symlink_to(env["extra"] / "ext" / "a.csv")
    assert sorted(r["a"] for r in ok(url, "SELECT a FROM ext1").to_pylist()) == [1, 5]
    (folder / "shared.csv").unlink()
    # a FIFO in the folder: refused at once, never read
    os.mkfifo(folder / "pipe.csv")
    started = time.monotonic()
    refused(url, "SELECT * FROM ext1", "FIFO")
    assert time.monotonic() - started < 10
    (folder / "pipe.csv").unlink()
    assert ok(url, "SELECT * FROM ext1_view").to_pylist() == [{"a": 1, "b": 2}]


def test_external_table_creation_checks_location_and_files(env):
    url, data, secret = env["url"], env["data"], env["secret"]
    folder = data / "ext2"
    folder.mkdir()
    (folder / "a.csv").write_text("a,b\n1,2\n")
    (folder / "evil.csv").symlink_to(secret)  # planted before CREATE: schema inference must not read it
    message = refused(url, "CREATE EXTERNAL TABLE ext2 STORED AS CSV LOCATION 'ext2' "
                           "OPTIONS ('format.has_header' 'true')", "evil.csv")
    assert "ext2" not in ok(url, "LIST TABLE").column("table_name").to_pylist(), message
    (folder / "evil.csv").unlink()
    os.mkfifo(folder / "pipe.csv")
    refused(url, "CREATE EXTERNAL TABLE ext2 STORED AS CSV LOCATION 'ext2'", "FIFO")
    (folder / "pipe.csv").unlink()
    for location in [str(secret), f"file://{secret}", f"file:{secret}", "../outside/secret.csv",
                     f"file://{data}/%2e%2e/outside/"]:
        refused(url, f"CREATE EXTERNAL TABLE ext3 STORED AS CSV LOCATION '{location}'", "outside")
    (data / "ext_link").symlink_to(env["outside"])  # the location itself a link leading out
    refused(url, "CREATE EXTERNAL TABLE ext3 STORED AS CSV LOCATION 'ext_link'", "outside")
    refused(url, "CREATE EXTERNAL TABLE ext3 STORED AS CSV LOCATION 'ext_link/secret.csv'", "outside")
    for location in ["s3://bucket/data/", "http://example.com/x.csv", "memory:///x/"]:
        refused(url, f"CREATE EXTERNAL TABLE ext3 STORED AS CSV LOCATION '{location}'", "URL")
    # the location's literal repeated in OPTIONS does not confuse the rewrite
    ok(url, "CREATE EXTERNAL TABLE ext2 STORED AS CSV OPTIONS ('format.has_header' 'true', "
            "'format.null_value' 'ext2') LOCATION 'ext2'")
    assert ok(url, "SELECT * FROM ext2").to_pylist() == [{"a": 1, "b": 2}]
    # an external table in another allowed root works; glob patterns are refused
    ok(url, f"CREATE EXTERNAL TABLE ext4 STORED AS CSV LOCATION '{env['extra'] / 'ext'}' "
            "OPTIONS ('format.has_header' 'true')")
    assert ok(url, "SELECT * FROM ext4").to_pylist() == [{"a": 5, "b": 6}]
    result, error = _call(url, f"CREATE EXTERNAL TABLE ext5 STORED AS CSV LOCATION '{data}/ext2/*.csv'")
    assert error is not None and "glob" in str(error)


def test_external_table_checked_after_restart(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("a,b\n" + SECRET)
    server = ServerProcess(tmp_path / "data", "--allow-path", str(SHARED_DATA))
    server.data_dir.mkdir()
    (server.data_dir / "ext").mkdir()
    (server.data_dir / "ext" / "a.csv").write_text("a,b\n1,2\n")
    server.start()
    try:
        ok(server.url, "CREATE EXTERNAL TABLE ext STORED AS CSV LOCATION 'ext' "
                       "OPTIONS ('format.has_header' 'true')")
        server.stop()
        (server.data_dir / "ext" / "evil.csv").symlink_to(outside / "secret.csv")
        server.start()
        _, error = _call(server.url, "SELECT * FROM ext")
        assert error is not None and "TOP-SECRET" not in str(error)
        (server.data_dir / "ext" / "evil.csv").unlink()
        assert "TOP-SECRET" not in server.server_log()
    finally:
        server.stop()


def test_policy_external_location_refuses_the_servers_own_files(tmp_path):
    """A LOCATION that is, holds or lies inside the catalog, tables/ or models/ is refused,
    whatever route leads there (relative, absolute, file: URL, '..', a link, a link inside)."""
    data = tmp_path / "data"
    part = data / "tables" / "t-0a1b" / "part-00000.parquet"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"PAR1")
    (data / "models" / "m" / "v1").mkdir(parents=True)
    (data / "models" / "m" / "v1" / "config.json").write_text("{}")
    for name in ["catalog.sqlite", "catalog.sqlite-wal"]:
        (data / name).write_bytes(b"SQLite format 3\x00")
    (data / "ext").mkdir()
    (data / "ext" / "a.csv").write_text("a\n1\n")
    policy = PathPolicy(data, (tmp_path,))  # an allowed root that holds the data directory
    base = data.resolve()
    assert policy.external_location("ext")[0] == base / "ext"
    for text in ["tables/t-0a1b/part-00000.parquet", "tables/t-0a1b", "tables/t-0a1b/", "tables", "tables/",
                 "models", "models/m/v1/config.json", "catalog.sqlite", "catalog.sqlite-wal",
                 "catalog.sqlite-missing", f"{base}/tables/t-0a1b/", f"file://{base}/catalog.sqlite",
                 "ext/../tables/t-0a1b", ".", str(base), str(tmp_path), f"{tmp_path}/"]:
        with pytest.raises(PermissionDenied) as info:
            policy.external_location(text)
        message = str(info.value)
        assert f"'{text}'" in message and ("server's own" in message or "data directory" in message), message
    (data / "tables_link").symlink_to(data / "tables" / "t-0a1b")  # the location itself a link
    (data / "ext" / "own.parquet").symlink_to(part)  # a file inside the location links in
    for text, word in [("tables_link", "server's own tables"), ("ext", "own.parquet")]:
        with pytest.raises(PermissionDenied, match=word):
            policy.external_location(text)
    (data / "ext" / "own.parquet").unlink()
    (data / "ext" / "up").symlink_to(data)  # a folder inside it links to the data directory
    with pytest.raises(PermissionDenied, match="'.*up' .* data directory"):
        policy.external_location("ext")
    (data / "ext" / "up").unlink()
    assert policy.external_location("ext")[0] == base / "ext"


def test_external_table_cannot_read_the_servers_own_files(env):
    url, data = env["url"], env["data"]
    ok(url, "CREATE TABLE own_t AS SELECT 42 AS a")
    ok(url, "INSERT INTO own_t VALUES (43)")
    folder = next(p.name for p in (data / "tables").iterdir() if p.name.startswith("own_t-"))
    part = next(p.name for p in (data / "tables" / folder).iterdir())
    tables_before = {p: snapshot(p) for p in (data / "tables" / folder).iterdir()}
    for location in [f"tables/{folder}/{part}", f"tables/{folder}/", "tables/", "catalog.sqlite",
                     "catalog.sqlite-wal", "models/", ".", str(data), f"file://{data}/tables/{folder}"]:
        for stored in ["PARQUET", "CSV"]:
            message = refused(url, f"CREATE EXTERNAL TABLE own_x STORED AS {stored} LOCATION '{location}'",
                              f"'{location}'")
            assert "server's own" in message or "data directory" in message, message
    # the same through CREATE UNBOUNDED EXTERNAL TABLE, as the tester wrote it
    refused(url, f"CREATE UNBOUNDED EXTERNAL TABLE own_w (a VARCHAR) STORED AS CSV "
                 f"LOCATION 'tables/{folder}/{part}'", "server's own")
    names = ok(url, "LIST TABLE").column("table_name").to_pylist()
    assert "own_x" not in names and "own_w" not in names
    # A link to a table's file planted in an external table's folder after CREATE: refused
    # when the table is scanned.
    ext = data / "own_ext"
    ext.mkdir()
    (ext / "a.csv").write_text("a\n1\n")
    ok(url, "CREATE EXTERNAL TABLE own_ext STORED AS CSV LOCATION 'own_ext' OPTIONS ('format.has_header' 'true')")
    (ext / "b.csv").symlink_to(data / "catalog.sqlite")
    refused(url, "SELECT * FROM own_ext", "b.csv", "server's own catalog.sqlite")
    (ext / "b.csv").unlink()
    assert ok(url, "SELECT * FROM own_ext").to_pylist() == [{"a": 1}]
    assert {p: snapshot(p) for p in (data / "tables" / folder).iterdir()} == tables_before
    assert sorted(ok(url, "SELECT a FROM own_t").column("a").to_pylist()) == [42, 43]


# --- COPY ... FROM ---------------------------------------------------------------------------

def test_copy_from_fifo_symlinks_and_escapes(env):
    url, data, secret = env["url"], env["data"], env["secret"]
    os.mkfifo(data / "pipe.csv")
    started = time.monotonic()
    refused(url, "COPY from_pipe FROM 'pipe.csv'", "FIFO")
    refused(url, "COPY from_pipe OPTIONS (format='csv') FROM 'pipe.csv'", "FIFO")
    assert time.monotonic() - started < 10
    (data / "leak.csv").symlink_to(secret)
    for sql in ["COPY s FROM 'leak.csv'", f"COPY s FROM '{secret}'", f"COPY s FROM 'file://{secret}'",
                "COPY s FROM '../outside/secret.csv'", f"COPY s FROM 'file:{data}/%2e%2e/outside/secret.csv'"]:
        refused(url, sql, "outside")
    refused(url, "COPY s FROM 's3://bucket/x.csv'", "URL")
    # a folder of audio: a symlinked file or folder leading out, or a FIFO named .wav, refuses it
    clips = data / "clips"
    clips.mkdir()
    make_audio(clips / "ok.flac")
    (clips / "evil.flac").symlink_to(secret)
    refused(url, "COPY clips FROM 'clips'", "evil.flac", "outside")
    (clips / "evil.flac").unlink()
    (clips / "more").symlink_to(env["outside"] / "sub")
    refused(url, "COPY clips FROM 'clips'", "outside")
    (clips / "more").unlink()
    os.mkfifo(clips / "pipe.wav")
    refused(url, "COPY clips FROM 'clips'", "FIFO")
    (clips / "pipe.wav").unlink()
    (clips / "shared.flac").symlink_to(SHARED_DATA / "audio" / "1034-121119-0000.flac")
    assert ok(url, "COPY clips FROM 'clips'").column("rows_affected").to_pylist() == [2]
    paths = sorted(ok(url, "SELECT audio FROM clips").column("audio").to_pylist())
    assert paths == sorted([str(clips / "ok.flac"), str(SHARED_DATA / "audio" / "1034-121119-0000.flac")])
    assert "TOP-SECRET" not in str(ok(url, "LIST TABLE").to_pylist())


# --- audio paths and base_model (BUILD MODEL: refused before any training starts) ------------

def test_audio_paths_symlinks_fifos_and_outside(env):
    url, data, secret = env["url"], env["data"], env["secret"]
    audio = data / "audio_links"
    audio.mkdir()
    make_audio(audio / "good.flac")
    (audio / "evil.flac").symlink_to(secret)
    os.mkfifo(audio / "pipe.wav")
    ok(url, f"CREATE TABLE bad_link AS SELECT '{audio / 'evil.flac'}' AS audio, 'x' AS text")
    ok(url, "CREATE TABLE bad_fifo AS SELECT 'audio_links/pipe.wav' AS audio, 'x' AS text")
    ok(url, f"CREATE TABLE bad_abs AS SELECT '{secret}' AS audio, 'x' AS text")
    ok(url, "CREATE TABLE bad_rel AS SELECT '../outside/secret.csv' AS audio, 'x' AS text")
    ok(url, f"CREATE TABLE bad_url AS SELECT 'file://{secret}' AS audio, 'x' AS text")
    for table, word in [("bad_link", "outside"), ("bad_fifo", "FIFO"), ("bad_abs", "outside"),
                        ("bad_rel", "outside"), ("bad_url", "outside")]:
        message = refused(url, f"BUILD MODEL m_{table} USING Wav2Vec2En OPTIONS (epochs=1) "
                               f"AS SELECT audio, text FROM {table}", word)
        assert "row 0" in message, message
    assert "m_bad" not in str(ok(url, "LIST MODEL").to_pylist())


def test_base_model_confined_to_the_allowed_folders(env):
    url, data = env["url"], env["data"]
    ok(url, "CREATE TABLE bm AS SELECT 'x.flac' AS audio, 'x' AS text")

    def build(base):
        return f"BUILD MODEL bm_model USING Wav2Vec2En OPTIONS (base_model='{base}') AS SELECT * FROM bm"

    for base in ["/etc", str(env["outside"] / "ckpt"), "../outside/ckpt", "~", "~/", f"file://{env['outside']}/ckpt",
                 f"{data}/../outside/ckpt", "tests"]:  # 'tests' exists in the server's working folder
        refused(url, build(base), "outside")
        refused(url, "EXPLAIN " + build(base), "outside")
    for base in ["facebook/../../etc", "a/../../outside/ckpt"]:
        refused(url, build(base), "..")
    refused(url, build("s3://bucket/ckpt"), "URL")
    # allowed: a folder inside the data directory (absolute in the plan), hub ids unchanged
    (data / "ckpts" / "tiny").mkdir(parents=True)
    (data / "ckpts" / "tiny" / "config.json").write_text("{}")
    for base in ["ckpts/tiny", "./ckpts/tiny", str(data / "ckpts" / "tiny"), f"file://{data}/ckpts/tiny"]:
        plan = ok(url, "EXPLAIN " + build(base)).column("plan").to_pylist()[0]
        assert f"base={data / 'ckpts' / 'tiny'} " in plan, plan
    plan = ok(url, "EXPLAIN " + build("facebook/wav2vec2-base-960h")).column("plan").to_pylist()[0]
    assert "base=facebook/wav2vec2-base-960h " in plan
    (data / "ckpts" / "tiny" / "weights.bin").symlink_to(env["secret"])
    refused(url, build("ckpts/tiny"), "outside")


# --- the dataset mirror (in process) ---------------------------------------------------------

def _mirror(root: Path, audio_maker) -> Path:
    mirror = root / "mirror" / "librispeech_data"
    (mirror / "audio").mkdir(parents=True)
    for table in ("librispeech_train", "librispeech_test"):
        name = f"{table}.flac"
        audio_maker(mirror / "audio" / name, table)
        with open(mirror / f"{table}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["audio", "text"])
            writer.writerow([f"audio/{name}", "hello"])
    return mirror.parent


def test_dataset_mirror_refuses_links_out_of_it_and_fifos(tmp_path):
    secret = tmp_path / "secret.flac"
    secret.write_text(SECRET)

    def linked_out(path, table):
        if table == "librispeech_test":
            path.symlink_to(secret)
        else:
            make_audio(path)

    mirror = _mirror(tmp_path / "a", linked_out)
    with pytest.raises(PermissionDenied, match="outside the dataset mirror"):
        datasets.fetch_dataset("librispeech_data", tmp_path / "data-a", mirror, overwrite=False)
    assert not (tmp_path / "data-a" / "thanosql-dataset" / "librispeech_data").exists()

    def fifo(path, table):
        os.mkfifo(path) if table == "librispeech_test" else make_audio(path)

    mirror = _mirror(tmp_path / "b", fifo)
    with pytest.raises(PermissionDenied, match="not a regular file"):
        datasets.fetch_dataset("librispeech_data", tmp_path / "data-b", mirror, overwrite=False)

    def linked_inside(path, table):
        if table == "librispeech_test":
            path.symlink_to(path.parent / "librispeech_train.flac")
        else:
            make_audio(path)

    mirror = _mirror(tmp_path / "c", linked_inside)
    csvs = datasets.fetch_dataset("librispeech_data", tmp_path / "data-c", mirror, overwrite=False)
    copied = csvs["librispeech_test"].parent / "audio" / "librispeech_test.flac"
    assert copied.is_file() and not copied.is_symlink()
