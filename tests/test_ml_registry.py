"""ml.registry: versions made visible atomically, system tables, recovery after a crash."""

from __future__ import annotations

import json
import os
import sqlite3
import threading

import pyarrow as pa
import pytest

from ml.errors import BadOptions, ModelBusy, ModelExists, ModelNotFound
from ml.registry import ModelRegistry


def _stage(run, payload="weights"):
    with open(os.path.join(run.staging_dir, "model.safetensors"), "w") as f:
        f.write(payload)


def _build(reg, name, **kw):
    run = reg.create_run(name, "Wav2Vec2En", {"epochs": 1}, "/base", "SELECT * FROM t", **kw)
    _stage(run)
    reg.record_progress(run.run_id, 1, 0.5, 3.0, 1e-4, 10.0, 1.5)
    reg.finish_run(run.run_id, {"final_loss": 3.0})
    return run


def test_lifecycle(tmp_path):
    reg = ModelRegistry(tmp_path)
    assert reg.list_models().num_rows == 0 and not reg.exists("asr")
    run = reg.create_run("asr", "Wav2Vec2En", {"epochs": 1}, "/base", "SELECT * FROM t")
    assert (run.name, run.version, run.base) == ("asr", 1, "/base") and os.path.isdir(run.staging_dir)
    assert not reg.exists("asr")  # training: not usable yet
    assert [(r["name"], r["class_name"], r["status"]) for r in reg.list_models().to_pylist()] == [
        ("asr", "Wav2Vec2En", "training")]  # but LIST MODEL shows it training
    assert reg.latest_run("asr")["status"] == "training"
    with pytest.raises(ModelBusy, match="still being trained"):  # FAILED_PRECONDITION, not NOT_FOUND
        reg.model_dir("asr")
    with pytest.raises(ModelBusy, match="being trained"):
        reg.create_run("asr", "Wav2Vec2En", {}, "/base", "q")
    with pytest.raises(ModelBusy):
        reg.delete("asr")
    _stage(run)
    for step in (1, 2):
        reg.record_progress(run.run_id, step, step / 2, 4.0 - step, 1e-4, 10.0 * step, 1.5 * step)
    info = reg.training_info_table()
    assert info.num_rows == 2 and info.column("model").to_pylist() == ["asr", "asr"]
    assert info.column_names == ["model", "version", "step", "epoch", "loss", "learning_rate",
                                 "audio_seconds", "elapsed_seconds", "recorded_utc", "status", "run_id", "workers"]
    assert info.column("workers").to_pylist() == [1, 1]  # a run's data-parallel worker count (1 if not given)
    final = reg.finish_run(run.run_id, {"final_loss": 2.0})
    assert final == str(tmp_path / "models" / "asr" / "v1") and reg.model_dir("asr") == final
    assert os.listdir(final) == ["model.safetensors"] and not os.path.exists(run.staging_dir)
    assert reg.exists("asr")

    listed = reg.list_models()
    assert listed.column_names == ["name", "class_name", "last_updated_utc", "status"]
    assert listed.column("name").to_pylist() == ["asr"] and listed.column("status").to_pylist() == ["ready"]
    assert listed.schema.field("last_updated_utc").type == pa.timestamp("us", tz="UTC")
    models = reg.models_table()
    assert models.column_names == ["name", "class_name", "version", "status", "error", "options", "metrics",
                                   "base_model", "input_query", "created_utc", "updated_utc"]
    row = models.to_pylist()[0]
    assert row["status"] == "ready" and json.loads(row["options"]) == {"epochs": 1}
    assert json.loads(row["metrics"]) == {"final_loss": 2.0} and row["input_query"] == "SELECT * FROM t"

    with pytest.raises(ModelExists, match="overwrite=True"):
        reg.create_run("asr", "Wav2Vec2En", {}, "/base", "q")
    # FIT into the same name: a new version trained from the latest one.
    fit = reg.create_run("asr", "Wav2Vec2En", {}, None, "q2", fit_from="asr")
    assert fit.version == 2 and fit.base == final
    _stage(fit, "v2")
    reg.finish_run(fit.run_id, {})
    assert reg.model_dir("asr").endswith("v2") and reg.model_dir("asr", 1) == final
    # FIT into a new name, from a model that does not exist.
    with pytest.raises(ModelNotFound, match="existing models: asr"):
        reg.create_run("other", "Wav2Vec2En", {}, None, "q", fit_from="nope")
    over = reg.create_run("asr", "Wav2Vec2En", {}, "/base", "q", overwrite=True)
    assert [(r["name"], r["status"]) for r in reg.list_models().to_pylist()] == [("asr", "training")]
    reg.fail_run(over.run_id, "boom")
    reg.note_stopped(over.run_id, "cancelled by CANCEL MODEL")  # only a cancelled run's reason is replaced
    assert reg.list_models().column("status").to_pylist() == ["ready"]
    assert reg.model_dir("asr").endswith("v2") and not os.path.exists(over.staging_dir)
    assert reg.get_run(over.run_id)["status"] == "failed" and reg.get_run(over.run_id)["error"] == "boom"

    desc = dict(zip(*[reg.describe("asr").column(c).to_pylist() for c in ("property", "value")]))
    assert desc["class_name"] == "Wav2Vec2En" and desc["version"] == "2"
    assert desc["versions"] == "v1 ready, v2 ready, v3 failed (boom)"

    reg.delete("asr")
    assert not reg.exists("asr") and not os.path.exists(tmp_path / "models" / "asr")
    assert reg.models_table().num_rows == 0 and reg.training_info_table().num_rows == 0
    with pytest.raises(ModelNotFound, match="no models exist yet"):
        reg.delete("asr")


def test_model_not_found_lists_models_and_versions(tmp_path):
    reg = ModelRegistry(tmp_path)
    _build(reg, "a")
    _build(reg, "b")
    with pytest.raises(ModelNotFound, match="'c' not found; existing models: a, b"):
        reg.model_dir("c")
    with pytest.raises(ModelNotFound, match="no ready version 5; versions: 1 \\(ready\\)"):
        reg.model_dir("a", 5)
    with pytest.raises(BadOptions, match="invalid model name"):
        reg.create_run("../evil", "Wav2Vec2En", {}, "/base", "q")


def test_cancelled_run_leaves_nothing_and_name_stays_free(tmp_path):
    reg = ModelRegistry(tmp_path)
    run = reg.create_run("m", "Wav2Vec2En", {}, "/base", "q")
    _stage(run)
    reg.fail_run(run.run_id, "cancelled by the client", status="cancelled")
    reg.note_stopped(run.run_id, "cancelled by CANCEL MODEL")
    assert reg.get_run(run.run_id)["error"] == "cancelled by CANCEL MODEL"
    assert reg.latest_run("m")["status"] == "cancelled"
    assert not reg.exists("m") and reg.list_models().num_rows == 0
    assert reg.models_table().column("status").to_pylist() == ["cancelled"]
    assert not os.path.exists(tmp_path / "models" / "m")
    again = reg.create_run("m", "Wav2Vec2En", {}, "/base", "q")  # no overwrite needed
    assert again.version == 1  # a cancelled run does not use up its version number


def test_recover_after_a_crash(tmp_path):
    reg = ModelRegistry(tmp_path)
    _build(reg, "good")
    stuck = reg.create_run("stuck", "Wav2Vec2En", {}, "/base", "q")
    _stage(stuck)
    # A crash between the rename and the commit leaves an unpublished version folder.
    half = reg.create_run("good", "Wav2Vec2En", {}, None, "q", fit_from="good")
    os.makedirs(tmp_path / "models" / "good" / "v2")

    fresh = ModelRegistry(tmp_path)  # the restarted server
    assert fresh.recover() == 2
    for run_id in (stuck.run_id, half.run_id):
        run = fresh.get_run(run_id)
        assert run["status"] == "failed" and run["error"] == "server stopped during training"
    assert not os.path.exists(tmp_path / "models" / ".staging")
    assert sorted(os.listdir(tmp_path / "models")) == ["good"]
    assert os.listdir(tmp_path / "models" / "good") == ["v1"]
    assert fresh.model_dir("good").endswith("v1") and not fresh.exists("stuck")
    assert fresh.recover() == 0


def test_shares_the_catalog_file_in_wal_mode(tmp_path):
    ModelRegistry(tmp_path)
    con = sqlite3.connect(tmp_path / "catalog.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables and all(t.startswith("ml_") for t in tables)


def test_concurrent_threads(tmp_path):
    reg = ModelRegistry(tmp_path)
    run = reg.create_run("m", "Wav2Vec2En", {}, "/base", "q")
    errors = []

    def writer(offset):
        try:
            for step in range(offset, offset + 50):
                reg.record_progress(run.run_id, step, 0.0, 1.0, 1e-4, 0.0, 0.0)
                reg.training_info_table()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i * 100,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and reg.training_info_table().num_rows == 200
