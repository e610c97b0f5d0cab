"""Tables survive restarts; COPY loads files and audio folders; paths stay confined."""

from __future__ import annotations

import os
import shutil
import subprocess

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest


def run(url, sql, parameters=None, **kwargs):
    with flightsql.connect(url, autocommit=True, **kwargs) as conn, conn.cursor() as cur:
        cur.execute(sql, parameters)
        if not cur.description:  # an update: no result set
            return cur.rowcount
        return cur.fetch_arrow_table()


def test_tables_views_and_external_tables_survive_restart(start_server, librispeech, tmp_path):
    server = start_server()
    run(server.url, "CREATE TABLE kept AS SELECT value AS n FROM generate_series(1, 1000)")
    run(server.url, "INSERT INTO kept VALUES (5000)")
    run(server.url, "CREATE TABLE typed (a INT, b VARCHAR)")
    run(server.url, "CREATE VIEW big AS SELECT n FROM kept WHERE n > 990")
    run(server.url, f"CREATE EXTERNAL TABLE ext STORED AS CSV LOCATION "
                    f"'{librispeech / 'librispeech_test.csv'}' OPTIONS ('format.has_header' 'true')")
    run(server.url, "CREATE TABLE gone AS SELECT 1 AS x")
    run(server.url, "DROP TABLE gone")
    server.restart()
    assert run(server.url, "SELECT count(*) AS c, max(n) AS m FROM kept").to_pylist() == [{"c": 1001, "m": 5000}]
    assert run(server.url, "SELECT count(*) AS c FROM big").to_pylist() == [{"c": 11}]
    assert run(server.url, "SELECT count(*) AS c FROM ext").to_pylist() == [{"c": 20}]
    assert run(server.url, "SELECT * FROM typed").schema.names == ["a", "b"]
    listed = run(server.url, "LIST TABLE").column("table_name").to_pylist()
    assert {"kept", "typed", "big", "ext"} <= set(listed) and "gone" not in listed
    # A crash (SIGKILL) after a replace leaves the new table whole, no staging visible.
    run(server.url, "CREATE OR REPLACE TABLE kept AS SELECT 7 AS n")
    server.stop(kill=True)
    server.start()
    assert run(server.url, "SELECT n FROM kept").to_pylist() == [{"n": 7}]
    leftovers = [p.name for p in (server.data_dir / "tables").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_failed_replace_keeps_the_old_table(server):
    run(server.url, "CREATE TABLE stable AS SELECT 1 AS a")
    with pytest.raises(flightsql.Error):
        # Fails while streaming rows into the new version: the old one must stay.
        run(server.url, "CREATE OR REPLACE TABLE stable AS SELECT CAST(CASE WHEN value > 5 THEN 'x' "
                        "ELSE '1' END AS INT) AS a FROM generate_series(1, 100000)")
    assert run(server.url, "SELECT a FROM stable").to_pylist() == [{"a": 1}]


def test_copy_csv_resolves_relative_audio_paths(server, librispeech):
    csv = librispeech / "librispeech_train.csv"
    copied = run(server.url, f"COPY librispeech_train OPTIONS (if_exists='replace') FROM '{csv}'")
    assert copied.to_pylist() == [{"rows_affected": 100, "table_name": "librispeech_train"}]
    table = run(server.url, "SELECT audio, text FROM librispeech_train")
    assert table.num_rows == 100
    for path in table.column("audio").to_pylist():
        assert os.path.isabs(path) and os.path.exists(path), path
    with pytest.raises(flightsql.Error, match="already exists"):
        run(server.url, f"COPY librispeech_train FROM '{csv}'")
    run(server.url, f"COPY librispeech_train OPTIONS (if_exists='append') FROM '{csv}'")
    assert run(server.url, "SELECT count(*) AS c FROM librispeech_train").to_pylist() == [{"c": 200}]


def test_copy_relative_to_data_dir_parquet_json_and_folder(server, librispeech, tmp_path):
    data_dir = server.data_dir
    (data_dir / "incoming").mkdir()
    pq.write_table(pa.table({"x": [1, 2, 3]}), data_dir / "incoming" / "nums.parquet")
    (data_dir / "incoming" / "rows.json").write_text('{"k": "a", "v": 1}\n{"k": "b", "v": 2}\n')
    assert run(server.url, "COPY nums FROM 'incoming/nums.parquet'").column("rows_affected").to_pylist() == [3]
    assert run(server.url, "COPY rows FROM 'incoming/rows.json'").column("rows_affected").to_pylist() == [2]
    assert run(server.url, "SELECT sum(v) AS s FROM rows").to_pylist() == [{"s": 3}]
    audio = data_dir / "clips"
    audio.mkdir()
    for name in ["103-1240-0000.flac", "1034-121119-0000.flac"]:
        shutil.copy(librispeech / "audio" / name, audio / name)
    (audio / "notes.txt").write_text("not audio")
    assert run(server.url, "COPY clips FROM 'clips'").column("rows_affected").to_pylist() == [2]
    paths = run(server.url, "SELECT audio FROM clips ORDER BY audio").column("audio").to_pylist()
    assert paths == [str((audio / n).resolve()) for n in sorted(["103-1240-0000.flac", "1034-121119-0000.flac"])]


def test_paths_outside_allowed_roots_are_refused(server, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("a\n1\n")
    link = server.data_dir / "escape"
    link.symlink_to(outside)
    for sql in [f"COPY s FROM '{outside / 'secret.csv'}'",
                "COPY s FROM 'escape/secret.csv'",
                "COPY s FROM '../outside/secret.csv'",
                f"CREATE EXTERNAL TABLE s STORED AS CSV LOCATION '{outside / 'secret.csv'}'",
                f"COPY (SELECT 1) TO '{outside / 'out.csv'}'"]:
        with pytest.raises(flightsql.Error, match="PermissionDenied"):
            run(server.url, sql)
    assert not (outside / "out.csv").exists()


def test_bearer_token(start_server):
    server = start_server("--token", "tok-123")
    ok = run(server.url, "SELECT 1 AS one",
             db_kwargs={"adbc.flight.sql.authorization_header": "Bearer tok-123"})
    assert ok.to_pylist() == [{"one": 1}]
    for headers in [{"adbc.flight.sql.authorization_header": "Bearer wrong"}, {}]:
        with pytest.raises(flightsql.Error, match="Unauthenticated"):
            run(server.url, "SELECT 1", db_kwargs=headers)


def test_tls(start_server, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server = start_server("--tls-cert", str(cert), "--tls-key", str(key))
    assert server.url.startswith("grpc+tls://")
    client = flight.connect(server.url, tls_root_certs=cert.read_bytes())
    from flight_server import protocol as P
    info = client.get_flight_info(flight.FlightDescriptor.for_command(
        P.pack(P.CommandStatementQuery(query="SELECT 2 AS two"))))
    assert client.do_get(info.endpoints[0].ticket).read_all().to_pylist() == [{"two": 2}]
    with pytest.raises(flight.FlightUnavailableError):
        flight.connect(server.url.replace("grpc+tls", "grpc")).get_flight_info(
            flight.FlightDescriptor.for_command(P.pack(P.CommandStatementQuery(query="SELECT 1"))))
