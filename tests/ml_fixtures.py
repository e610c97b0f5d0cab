"""Fixtures for the ml/ tests: the shared LibriSpeech sample and small random checkpoints.

Import what a test module needs: ``from ml_fixtures import tiny_checkpoint, train_rows``;
``execute(url, sql)`` runs one statement over ADBC (rows affected, or the result as Arrow).
Nothing here touches the network: checkpoints are built from a config.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("THANOSQL_TEST_DATA",
                           REPO.parent / "shared" / "datasets" / "librispeech_data")).resolve()


def read_rows(csv_name: str) -> list[tuple[str, str]]:
    """(absolute audio path, transcript) rows of one of the sample's CSV files."""
    path = DATA / csv_name
    if not path.exists():
        pytest.fail(f"LibriSpeech sample not found at {DATA}; set THANOSQL_TEST_DATA")
    with open(path, newline="", encoding="utf-8") as f:
        return [(str(DATA / r["audio"]), r["text"]) for r in csv.DictReader(f)]


def shortest(rows, n: int):
    """The ``n`` shortest rows (fast to train on)."""
    return sorted(rows, key=lambda r: (sf.info(r[0]).duration, r[0]))[:n]


@pytest.fixture(scope="session")
def train_rows() -> list[tuple[str, str]]:
    return read_rows("librispeech_train.csv")


@pytest.fixture(scope="session")
def test_rows() -> list[tuple[str, str]]:
    return read_rows("librispeech_test.csv")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """~1.8M-parameter Wav2Vec2ForCTC, layer-norm feature encoder (takes attention masks)."""
    from ml.checkpoints import make_random_checkpoint

    return make_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_group_checkpoint(tmp_path_factory) -> str:
    """The tiny model with wav2vec2-base's group-norm feature encoder (no attention mask)."""
    from ml.checkpoints import make_random_checkpoint

    return make_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-group", size="tiny", seed=0,
                                  feat_extract_norm="group", do_stable_layer_norm=False)


def execute(url, sql, parameters=None):
    """One statement over ADBC: the rows affected, or the result as an Arrow table."""
    import adbc_driver_flightsql.dbapi as flightsql

    with flightsql.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql, parameters)
        if not cur.description:
            return cur.rowcount
        return cur.fetch_arrow_table()
