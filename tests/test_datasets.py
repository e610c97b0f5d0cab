"""GET / LIST THANOSQL DATASET: through a real server from the shared mirror, and the
fetching itself (mirror layouts, overwrite, the checksum-verified download) in process."""

from __future__ import annotations

import csv
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

import thanosql
from planner import datasets
from planner.errors import InvalidInput, NotFound
from server_process import SHARED_DATA

GET = "GET THANOSQL DATASET librispeech_data"


@pytest.fixture
def client(start_server, librispeech):
    server = start_server("--dataset-mirror", str(librispeech))
    with thanosql.Client(server.url) as c:
        c.data_dir = server.data_dir
        yield c


def test_get_dataset_creates_the_tutorial_tables(client):
    got = client.query(GET)  # one row per table, through every client
    assert got.to_dict("records") == [{"rows_affected": 100, "table_name": "librispeech_train"},
                                      {"rows_affected": 20, "table_name": "librispeech_test"}]
    train = client.query("SELECT * FROM librispeech_train")
    test = client.query("SELECT * FROM librispeech_test")
    assert (len(train), len(test)) == (100, 20)
    assert list(train.columns) == ["audio", "text"]
    folder = (client.data_dir / "thanosql-dataset" / "librispeech_data").resolve()
    for path in list(train["audio"]) + list(test["audio"]):
        assert Path(path).is_file() and Path(path).is_relative_to(folder)
    assert all(text == text.lower() for text in train["text"])
    # The tutorial's own COPY works from the fetched files (relative to the data directory).
    copied = client.query("COPY tutorial_copy OPTIONS (if_exists='replace') "
                          "FROM 'thanosql-dataset/librispeech_data/librispeech_train.csv'")
    assert copied.to_dict("records") == [{"rows_affected": 100, "table_name": "tutorial_copy"}]


def test_overwrite_semantics(client):
    client.query(GET)
    with pytest.raises(thanosql.ThanoSQLError, match="already exist.*overwrite=True"):
        client.query(GET)  # without overwrite, existing tables are kept and it says so
    client.query("COPY librispeech_test OPTIONS (if_exists='append') "
                 "FROM 'thanosql-dataset/librispeech_data/librispeech_test.csv'")
    assert client.query("SELECT count(*) AS n FROM librispeech_test")["n"].tolist() == [40]
    assert client.query(GET + " OPTIONS (overwrite=True)")["rows_affected"].tolist() == [100, 20]
    assert client.query("SELECT count(*) AS n FROM librispeech_test")["n"].tolist() == [20]
    leftovers = [p.name for p in (client.data_dir / "thanosql-dataset").iterdir()]
    assert leftovers == ["librispeech_data"]


def test_list_and_errors(client):
    listed = client.query("LIST THANOSQL DATASET")
    assert {"name", "data_type"} <= set(listed.columns)
    assert listed[["name", "data_type"]].values.tolist() == [["librispeech_data", "audio"]]
    with pytest.raises(thanosql.ThanoSQLError, match="unknown dataset 'nope'.*librispeech_data") as err:
        client.query("GET THANOSQL DATASET nope")
    assert err.value.code == "NOT_FOUND"
    with pytest.raises(thanosql.ThanoSQLError, match="unknown GET THANOSQL DATASET option.*overwrite"):
        client.query(GET + " OPTIONS (overwite=True)")


# --- fetching, in process ---------------------------------------------------------------


def test_mirror_may_be_the_dataset_folder_or_its_parent(tmp_path, librispeech):
    for i, mirror in enumerate([librispeech, librispeech.parent]):
        csvs = datasets.fetch_dataset("librispeech_data", tmp_path / f"d{i}", mirror, overwrite=False)
        assert set(csvs) == {"librispeech_train", "librispeech_test"}
        rows = list(csv.DictReader(open(csvs["librispeech_test"], encoding="utf-8")))
        assert len(rows) == 20 and all((csvs["librispeech_test"].parent / r["audio"]).is_file() for r in rows)
    # Only the audio the tables name is brought over (not the mirror's extra files).
    assert len(list((tmp_path / "d0/thanosql-dataset/librispeech_data/audio").iterdir())) == 120


def test_overwrite_swaps_atomically_and_failures_keep_the_old_copy(tmp_path, librispeech, monkeypatch):
    csvs = datasets.fetch_dataset("librispeech_data", tmp_path, librispeech, overwrite=False)
    marker = csvs["librispeech_train"].parent / "marker"
    marker.write_text("old")
    datasets.fetch_dataset("librispeech_data", tmp_path, librispeech, overwrite=False)
    assert marker.exists()  # reused as it is
    datasets.fetch_dataset("librispeech_data", tmp_path, librispeech, overwrite=True)
    assert not marker.exists() and csvs["librispeech_train"].is_file()
    marker.write_text("old")

    def broken(*args):
        raise OSError("disk full")
    monkeypatch.setattr(datasets, "_copy_from_mirror", broken)
    with pytest.raises(OSError):
        datasets.fetch_dataset("librispeech_data", tmp_path, librispeech, overwrite=True)
    assert marker.exists() and csvs["librispeech_test"].is_file()
    assert sorted(p.name for p in (tmp_path / "thanosql-dataset").iterdir()) == ["librispeech_data"]


def test_check_request():
    assert datasets.check_request("librispeech_data", {"overwrite": True}).name == "librispeech_data"
    with pytest.raises(InvalidInput, match="overwrite"):
        datasets.check_request("librispeech_data", {"overwrite": "yes"})
    with pytest.raises(NotFound, match="librispeech_data"):
        datasets.check_request("cifar10", {})


def _fake_librispeech(tmp_path: Path, speakers: int = 5, per_speaker: int = 3) -> Path:
    """A dev-clean-shaped tarball made of real sample recordings."""
    flacs = sorted(SHARED_DATA.glob("audio/*.flac"))[:speakers * per_speaker]
    tarball = tmp_path / "dev-clean.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for s in range(speakers):
            spk, chapter = str(100 + s), "42"
            lines = []
            for u in range(per_speaker):
                utt = f"{spk}-{chapter}-{u:04d}"
                tar.add(flacs[s * per_speaker + u], f"LibriSpeech/dev-clean/{spk}/{chapter}/{utt}.flac")
                lines.append(f"{utt} HELLO SPEAKER {s} UTTERANCE {u}")
            data = ("\n".join(lines) + "\n").encode()
            info = tarfile.TarInfo(f"LibriSpeech/dev-clean/{spk}/{chapter}/{spk}-{chapter}.trans.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return tarball


def _use_archive(monkeypatch, tarball: Path, sha256: str, urls=None):
    archive = datasets.Archive("dev-clean.tar.gz", tuple(urls or [tarball.as_uri()]), sha256, 1)
    spec = datasets.Dataset("librispeech_data", "audio", "test",
                            {"librispeech_train": 8, "librispeech_test": 3}, archive)
    monkeypatch.setitem(datasets.DATASETS, "librispeech_data", spec)


def test_download_verifies_and_samples_the_official_layout(tmp_path, monkeypatch, capsys):
    tarball = _fake_librispeech(tmp_path)
    _use_archive(monkeypatch, tarball, hashlib.sha256(tarball.read_bytes()).hexdigest())
    csvs = datasets.fetch_dataset("librispeech_data", tmp_path / "data", None, overwrite=False)
    assert "downloading dev-clean.tar.gz" in capsys.readouterr().err  # the progress bar
    tables = {t: list(csv.DictReader(open(p, encoding="utf-8"))) for t, p in csvs.items()}
    assert (len(tables["librispeech_train"]), len(tables["librispeech_test"])) == (8, 3)
    speakers = {t: {r["audio"].split("/")[1].split("-")[0] for r in rows} for t, rows in tables.items()}
    assert not speakers["librispeech_train"] & speakers["librispeech_test"]
    for rows in tables.values():
        for row in rows:
            assert row["text"].startswith("hello speaker ")
            assert (csvs["librispeech_train"].parent / row["audio"]).stat().st_size > 1000
    cached = tmp_path / "data/thanosql-dataset/.downloads/dev-clean.tar.gz"
    assert cached.is_file()  # a second overwrite extracts again without downloading
    tarball.unlink()
    datasets.fetch_dataset("librispeech_data", tmp_path / "data", None, overwrite=True)


def test_download_refuses_a_wrong_checksum(tmp_path, monkeypatch):
    tarball = _fake_librispeech(tmp_path, speakers=4, per_speaker=3)
    _use_archive(monkeypatch, tarball, "0" * 64)
    with pytest.raises(NotFound, match="checksum mismatch"):
        datasets.fetch_dataset("librispeech_data", tmp_path / "data", None, overwrite=False)
    assert not (tmp_path / "data/thanosql-dataset/librispeech_data").exists()


def test_offline_without_mirror_fails_with_a_clear_message(tmp_path, monkeypatch):
    _use_archive(monkeypatch, tmp_path / "none.tar.gz", "0" * 64,
                 urls=["http://127.0.0.1:9/resources/12/dev-clean.tar.gz"])
    with pytest.raises(NotFound) as err:
        datasets.fetch_dataset("librispeech_data", tmp_path / "data", tmp_path / "empty-mirror", overwrite=False)
    message = str(err.value)
    assert "--dataset-mirror" in message and "THANOSQL_DATASET_MIRROR" in message
    assert "openslr.org/12" in message and "127.0.0.1:9" in message


def test_official_archive_is_pinned():
    archive = datasets.DATASETS["librispeech_data"].archive
    assert archive.urls[0] == "https://www.openslr.org/resources/12/dev-clean.tar.gz"
    assert len(archive.sha256) == 64
