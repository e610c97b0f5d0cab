"""The model registry: models, versions, training runs and progress in ``catalog.sqlite``.

Why SQLite tables (prefixed ``ml_``, beside the planner's in the same file): a restart loses
nothing, SQL can read training progress while a run is still going (``thanosql.models``,
``thanosql.training_info``), and WAL mode lets the server's threads read while the training
worker process writes.  Every operation opens its own short-lived connection, so the
registry is safe across threads and processes and can be pickled to a worker.

A training run is one version of a model.  Its weights are written to a staging folder,
renamed to ``models/<name>/v<N>/`` and only then marked ready in one transaction, so no
reader ever sees a half-written model; a server killed mid-training comes back (``recover``)
with the run marked failed, never stuck "training".
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass

import pyarrow as pa

from .errors import BadOptions, MLError, ModelBusy, ModelExists, ModelNotFound

CATALOG_FILE = "catalog.sqlite"
MODELS_DIR = "models"
STAGING_DIR = ".staging"
TRASH_DIR = ".trash"
STATUSES = ("training", "ready", "failed", "cancelled")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ml_model_versions (
    run_id       TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    version      INTEGER NOT NULL,
    class_name   TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('training', 'ready', 'failed', 'cancelled')),
    error        TEXT,
    options      TEXT NOT NULL,
    metrics      TEXT,
    base_model   TEXT,
    input_query  TEXT,
    fit_from     TEXT,
    worker_pid   INTEGER,
    created_us   INTEGER NOT NULL,
    updated_us   INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS ml_model_versions_live ON ml_model_versions (name, version)
    WHERE status IN ('training', 'ready');
CREATE INDEX IF NOT EXISTS ml_model_versions_name ON ml_model_versions (name, version);
CREATE TABLE IF NOT EXISTS ml_training_progress (
    run_id          TEXT NOT NULL REFERENCES ml_model_versions (run_id) ON DELETE CASCADE,
    step            INTEGER NOT NULL,
    epoch           REAL,
    loss            REAL,
    learning_rate   REAL,
    audio_seconds   REAL,
    elapsed_seconds REAL,
    recorded_us     INTEGER NOT NULL,
    PRIMARY KEY (run_id, step)
);
"""

_TS = pa.timestamp("us", tz="UTC")

#: ``thanosql.training_info`` keeps the progress of this many most recent runs per model
#: (older runs keep their row in ``thanosql.models``, without their step-by-step figures).
PROGRESS_RUNS_KEPT = 5
#: A run's progress rows are thinned (every other one dropped, then only every 2nd, 4th, ...
#: step recorded) whenever they reach this many, so a long training stays a few KB.
PROGRESS_ROWS_PER_RUN = 2000


def _now_us() -> int:
    return time.time_ns() // 1000


def _fmt_ts(us: int | None) -> str:
    if us is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(us / 1e6)) + " UTC"


@dataclass(frozen=True)
class RunInfo:
    """A training run just registered: train from ``base`` into ``staging_dir``."""

    name: str
    version: int
    run_id: str
    staging_dir: str
    base: str | None = None        # folder or hub id to start from (FIT: the source version's folder)
    class_name: str = ""


class ModelRegistry:
    """Models and their versions under ``data_dir`` (thread- and process-safe)."""

    def __init__(self, data_dir):
        self.data_dir = os.path.abspath(os.fspath(data_dir))
        self.db_path = os.path.join(self.data_dir, CATALOG_FILE)
        self.models_root = os.path.join(self.data_dir, MODELS_DIR)
        os.makedirs(self.models_root, exist_ok=True)
        self._watch = None
        self._watch_lock = threading.Lock()
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            _migrate(con)
            con.executescript(_SCHEMA)

    def data_version(self) -> int:
        """A number that changes whenever another connection commits to the catalog.

        SQLite's ``PRAGMA data_version`` on one long-lived read-only connection: cheap enough
        to ask on every lookup of a ``thanosql.*`` table, so their snapshots are rebuilt only
        after a change.
        """
        with self._watch_lock:
            if self._watch is None:
                self._watch = sqlite3.connect(self.db_path, timeout=60, isolation_level=None,
                                              check_same_thread=False)
            return int(self._watch.execute("PRAGMA data_version").fetchone()[0])

    # Pickled as its data directory only (connections are per operation anyway).
    def __getstate__(self):
        return {"data_dir": self.data_dir}

    def __setstate__(self, state):
        self.__init__(state["data_dir"])

    def __repr__(self):
        return f"ModelRegistry({self.data_dir!r})"

    # ------------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def _connect(self):
        con = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        try:
            con.execute("PRAGMA busy_timeout=60000")
            con.execute("PRAGMA foreign_keys=ON")
            con.execute("PRAGMA synchronous=NORMAL")
            con.row_factory = sqlite3.Row
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def _write(self):
        """A connection inside BEGIN IMMEDIATE ... COMMIT (rolled back on error)."""
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def _staging(self, run_id: str) -> str:
        return os.path.join(self.models_root, STAGING_DIR, run_id)

    def _version_dir(self, name: str, version: int) -> str:
        return os.path.join(self.models_root, name, f"v{version}")

    @staticmethod
    def _check_name(name: str) -> str:
        if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
            raise BadOptions(f"invalid model name {name!r}: use letters, digits, '_', '.' or '-' "
                             "(up to 128 characters, not starting with '.' or '-')")
        return name

    def _remove_tree(self, path: str) -> None:
        """Move ``path`` aside (atomic), then delete it; a crash leaves only trash."""
        if not os.path.lexists(path):
            return
        trash = os.path.join(self.models_root, TRASH_DIR)
        os.makedirs(trash, exist_ok=True)
        target = os.path.join(trash, uuid.uuid4().hex)
        try:
            os.rename(path, target)
        except OSError:
            target = path
        shutil.rmtree(target, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(trash)  # only if empty (another thread may be using it)

    def _names(self, con) -> list[str]:
        return [r[0] for r in con.execute(
            "SELECT DISTINCT name FROM ml_model_versions WHERE status = 'ready' ORDER BY name")]

    def _not_found(self, con, name: str, what: str | None = None) -> ModelNotFound:
        names = self._names(con)
        listing = ("existing models: " + ", ".join(names)) if names else "no models exist yet"
        return ModelNotFound(f"{what or f'model {name!r} not found'}; {listing}")

    # ------------------------------------------------------------------ training runs
    def create_run(self, name: str, class_name: str, options: dict, base_model: str | None,
                   input_query: str | None, fit_from: str | None = None,
                   overwrite: bool = False) -> RunInfo:
        """Register a new version of ``name`` in status 'training' and make its staging folder.

        BUILD (``fit_from`` None) of a taken name raises ModelExists unless ``overwrite``;
        overwrite adds a version, older ones stay until DELETE.  FIT from ``fit_from`` into the
        same name adds a version; into another taken name it needs ``overwrite`` too.
        """
        self._check_name(name)
        run_id = uuid.uuid4().hex
        now = _now_us()
        if fit_from is None and not base_model:
            from .options import default_base_model
            base_model = default_base_model()
        base = base_model
        with self._write() as con:
            if fit_from is not None:
                src = con.execute(
                    "SELECT version, class_name FROM ml_model_versions WHERE name = ? AND status = 'ready' "
                    "ORDER BY version DESC LIMIT 1", (fit_from,)).fetchone()
                if src is None:
                    raise self._not_found(con, fit_from)
                base = self._version_dir(fit_from, src["version"])
                base_model = base_model or f"{fit_from} v{src['version']}"
            if fit_from != name:
                busy = con.execute(
                    "SELECT version, status FROM ml_model_versions WHERE name = ? AND status IN "
                    "('ready', 'training') ORDER BY version DESC LIMIT 1", (name,)).fetchone()
                if busy is not None and not overwrite:
                    if busy["status"] == "training":
                        raise ModelBusy(f"model {name!r} is being trained (version {busy['version']}); "
                                        f"wait for it, stop it with CANCEL MODEL {name}, or use OPTIONS "
                                        "(overwrite=True)")
                    raise ModelExists(f"model {name!r} already exists (version {busy['version']}); use "
                                      f"OPTIONS (overwrite=True) to replace it, or FIT MODEL {name} USING "
                                      f"{name} to train a new version of it")
            # Failed and cancelled runs do not use up a version number: the next run gets the
            # number after the last ready (or training) version.
            version = con.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM ml_model_versions "
                                  "WHERE name = ? AND status IN ('ready', 'training')", (name,)).fetchone()[0]
            con.execute(
                "DELETE FROM ml_training_progress WHERE run_id IN (SELECT run_id FROM ml_model_versions "
                "WHERE name = ? ORDER BY created_us DESC, rowid DESC LIMIT -1 OFFSET ?)", (name, PROGRESS_RUNS_KEPT - 1))
            con.execute(
                "INSERT INTO ml_model_versions (run_id, name, version, class_name, status, options, "
                "base_model, input_query, fit_from, created_us, updated_us) "
                "VALUES (?, ?, ?, ?, 'training', ?, ?, ?, ?, ?, ?)",
                (run_id, name, version, class_name, json.dumps(options, default=str), base_model,
                 input_query, fit_from, now, now))
        staging = self._staging(run_id)
        os.makedirs(staging, exist_ok=True)
        return RunInfo(name=name, version=version, run_id=run_id, staging_dir=staging,
                       base=base, class_name=class_name)

    def register_folder(self, name: str, class_name: str, fill, options: dict, base_model: str | None,
                        overwrite: bool = False, input_query: str | None = None) -> tuple[int, str]:
        """Register a ready version of ``name`` whose folder ``fill(staging_dir)`` writes
        (pretrained weights: GET THANOSQL MODEL).  Same rules and atomicity as a training run:
        a taken name needs ``overwrite`` (then a new version), the folder becomes visible
        only complete, and a failure leaves nothing.  ``fill`` returns the metrics to record.
        Returns (version, folder)."""
        run = self.create_run(name, class_name, options, base_model, input_query, overwrite=overwrite)
        try:
            metrics = fill(run.staging_dir)
        except BaseException as exc:
            self.fail_run(run.run_id, f"could not write the model's files: {exc}")
            raise
        return run.version, self.finish_run(run.run_id, metrics)

    def record_progress(self, run_id: str, step: int, epoch: float, loss: float, learning_rate: float,
                        audio_seconds: float, elapsed: float) -> None:
        """Append one optimizer step's figures (readable at once through training_info_table)."""
        with self._write() as con:
            con.execute("INSERT OR REPLACE INTO ml_training_progress VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (run_id, int(step), float(epoch), float(loss), float(learning_rate),
                         float(audio_seconds), float(elapsed), _now_us()))

    def progress_rows(self, run_id: str) -> int:
        with self._connect() as con:
            return con.execute("SELECT COUNT(*) FROM ml_training_progress WHERE run_id = ?", (run_id,)).fetchone()[0]

    def thin_progress(self, run_id: str, stride: int) -> int:
        """Keep only the progress rows of ``run_id`` whose step is a multiple of ``stride``
        (and its latest row); returns how many remain."""
        with self._write() as con:
            con.execute("DELETE FROM ml_training_progress WHERE run_id = ? AND step % ? != 0 AND step < "
                        "(SELECT MAX(step) FROM ml_training_progress WHERE run_id = ?)",
                        (run_id, int(stride), run_id))
            return con.execute("SELECT COUNT(*) FROM ml_training_progress WHERE run_id = ?",
                               (run_id,)).fetchone()[0]

    def set_worker_pid(self, run_id: str, pid: int | None) -> None:
        """Remember which process trains ``run_id`` (for operators and tests)."""
        with self._write() as con:
            con.execute("UPDATE ml_model_versions SET worker_pid = ? WHERE run_id = ?", (pid, run_id))

    def get_run(self, run_id: str) -> dict:
        """The run's row as a dict (options/metrics decoded); ModelNotFound if unknown."""
        with self._connect() as con:
            row = con.execute("SELECT * FROM ml_model_versions WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise ModelNotFound(f"no training run {run_id!r}")
        out = dict(row)
        out["options"] = json.loads(out["options"]) if out["options"] else {}
        out["metrics"] = json.loads(out["metrics"]) if out["metrics"] else None
        return out

    def finish_run(self, run_id: str, metrics: dict | None = None) -> str:
        """Publish the staged version: fsync, rename into place, mark ready; returns its folder."""
        run = self.get_run(run_id)
        staging = self._staging(run_id)
        if run["status"] != "training":
            self._remove_tree(staging)
            raise MLError(f"run {run_id} of model {run['name']!r} is {run['status']}, not training")
        if not os.path.isdir(staging) or not os.listdir(staging):
            raise MLError(f"run {run_id} of model {run['name']!r} wrote nothing to {staging}")
        _fsync_tree(staging)
        final = self._version_dir(run["name"], run["version"])
        os.makedirs(os.path.dirname(final), exist_ok=True)
        self._remove_tree(final)  # a leftover of a crash between rename and commit
        os.rename(staging, final)
        _fsync_dir(os.path.dirname(final))
        try:
            with self._write() as con:
                cur = con.execute(
                    "UPDATE ml_model_versions SET status = 'ready', metrics = ?, error = NULL, "
                    "updated_us = ? WHERE run_id = ? AND status = 'training'",
                    (json.dumps(metrics or {}, default=str), _now_us(), run_id))
                if cur.rowcount != 1:
                    raise MLError(f"run {run_id} of model {run['name']!r} stopped being a training run")
        except BaseException:
            self._remove_tree(final)
            raise
        return final

    def fail_run(self, run_id: str, error: str, status: str = "failed") -> None:
        """Mark a training run failed or cancelled and drop its staging folder."""
        if status not in ("failed", "cancelled"):
            raise ValueError("status must be 'failed' or 'cancelled'")
        with self._write() as con:
            con.execute("UPDATE ml_model_versions SET status = ?, error = ?, updated_us = ? "
                        "WHERE run_id = ? AND status = 'training'", (status, str(error), _now_us(), run_id))
        self._remove_tree(self._staging(run_id))

    def note_stopped(self, run_id: str, error: str) -> None:
        """Say why a cancelled run was stopped (CANCEL MODEL, the server's shutdown), in
        place of the trainer's generic reason."""
        with self._write() as con:
            con.execute("UPDATE ml_model_versions SET error = ?, updated_us = ? WHERE run_id = ? AND "
                        "status = 'cancelled'", (str(error), _now_us(), run_id))

    def latest_run(self, name: str) -> dict:
        """The most recent run of ``name`` (whatever its status) as a dict; ModelNotFound
        if the model has none."""
        with self._connect() as con:
            row = con.execute("SELECT run_id, version, status, error FROM ml_model_versions WHERE name = ? "
                              "ORDER BY created_us DESC, rowid DESC LIMIT 1", (name,)).fetchone()
            if row is None:
                raise self._not_found(con, name)
        return dict(row)

    def recover(self) -> int:
        """Start-up clean-up: runs left 'training' become failed, unpublished folders go.

        Call once when the server starts, before any training; returns how many runs were
        marked failed.
        """
        with self._write() as con:
            cur = con.execute("UPDATE ml_model_versions SET status = 'failed', error = "
                              "'server stopped during training', updated_us = ? WHERE status = 'training'",
                              (_now_us(),))
            stuck = cur.rowcount
            ready = {(r[0], r[1]) for r in con.execute(
                "SELECT name, version FROM ml_model_versions WHERE status = 'ready'")}
        for special in (STAGING_DIR, TRASH_DIR):
            shutil.rmtree(os.path.join(self.models_root, special), ignore_errors=True)
        for name in os.listdir(self.models_root):
            model_root = os.path.join(self.models_root, name)
            if name.startswith(".") or not os.path.isdir(model_root):
                continue
            for entry in os.listdir(model_root):
                m = re.fullmatch(r"v(\d+)", entry)
                if not m or (name, int(m.group(1))) not in ready:
                    self._remove_tree(os.path.join(model_root, entry))
            if not os.listdir(model_root):
                os.rmdir(model_root)
        return stuck

    # ------------------------------------------------------------------ models
    def exists(self, name: str) -> bool:
        """True when ``name`` has a ready version."""
        with self._connect() as con:
            return con.execute("SELECT 1 FROM ml_model_versions WHERE name = ? AND status = 'ready' LIMIT 1",
                               (name,)).fetchone() is not None

    def known(self, name: str) -> bool:
        """True when ``name`` has any version, whatever its status (what DELETE MODEL removes)."""
        with self._connect() as con:
            return con.execute("SELECT 1 FROM ml_model_versions WHERE name = ? LIMIT 1", (name,)).fetchone() is not None

    def class_of(self, name: str) -> str:
        """The class of the latest ready version (ModelNotFound otherwise)."""
        return self._latest_ready(name)["class_name"]

    def _latest_ready(self, name: str, version: int | None = None):
        with self._connect() as con:
            if version is None:
                row = con.execute("SELECT * FROM ml_model_versions WHERE name = ? AND status = 'ready' "
                                  "ORDER BY version DESC LIMIT 1", (name,)).fetchone()
                if row is None:
                    last = con.execute("SELECT version, status, error FROM ml_model_versions WHERE name = ? "
                                       "ORDER BY created_us DESC LIMIT 1", (name,)).fetchone()
                    if last is not None and last["status"] == "training":
                        raise ModelBusy(f"model {name!r} is still being trained (version {last['version']}) "
                                        "and has no ready version yet; wait for its BUILD to finish (its "
                                        "status is in thanosql.models)")
                    if last is not None:
                        raise self._not_found(con, name, f"model {name!r} has no ready version: its last run "
                                              f"was {last['status']} ({last['error'] or 'no message'}); "
                                              f"BUILD it again or DELETE MODEL {name}")
                    raise self._not_found(con, name)
                return row
            row = con.execute("SELECT * FROM ml_model_versions WHERE name = ? AND version = ?",
                              (name, int(version))).fetchone()
            if row is None or row["status"] != "ready":
                versions = [f"{r[0]} ({r[1]})" for r in con.execute(
                    "SELECT version, status FROM ml_model_versions WHERE name = ? ORDER BY version", (name,))]
                if not versions:
                    raise self._not_found(con, name)
                raise ModelNotFound(f"model {name!r} has no ready version {version}; versions: "
                                    + ", ".join(versions))
            return row

    def model_dir(self, name: str, version: int | None = None) -> str:
        """Folder of the latest ready version of ``name`` (or of ``version``)."""
        row = self._latest_ready(name, version)
        return self._version_dir(row["name"], row["version"])

    def delete(self, name: str) -> None:
        """Remove every version of ``name`` (rows, progress and folders).

        ModelNotFound if it has none; ModelBusy while one of its runs is training.
        """
        with self._write() as con:
            rows = con.execute("SELECT status, version FROM ml_model_versions WHERE name = ?",
                               (name,)).fetchall()
            if not rows:
                raise self._not_found(con, name)
            training = [r["version"] for r in rows if r["status"] == "training"]
            if training:
                raise ModelBusy(f"model {name!r} is being trained (version {training[0]}); "
                                f"stop it (CANCEL MODEL {name}) before deleting the model")
            con.execute("DELETE FROM ml_model_versions WHERE name = ?", (name,))
        if _NAME.match(name):
            self._remove_tree(os.path.join(self.models_root, name))

    def list_models(self) -> pa.Table:
        """LIST MODEL: name, class_name, last_updated_utc and status of every model with a
        ready version or a run in training (ThanoSQL's three columns, then ours).

        status is 'training' while a run of the model trains (a BUILD / FIT, waited for or
        OPTIONS (wait=False)), else 'ready'; class and time are those of its latest ready
        version, or of the training run while it has none (thanosql.models has every run)."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT v.name, v.class_name, v.updated_us, (SELECT COUNT(*) FROM ml_model_versions t "
                "WHERE t.name = v.name AND t.status = 'training') AS training FROM ml_model_versions v "
                "WHERE v.rowid = (SELECT w.rowid FROM ml_model_versions w WHERE w.name = v.name AND "
                "w.status IN ('ready', 'training') ORDER BY w.status = 'ready' DESC, w.version DESC, "
                "w.created_us DESC LIMIT 1) ORDER BY v.name").fetchall()
        return pa.table({
            "name": pa.array([r[0] for r in rows], pa.string()),
            "class_name": pa.array([r[1] for r in rows], pa.string()),
            "last_updated_utc": pa.array([r[2] for r in rows], _TS),
            "status": pa.array(["training" if r[3] else "ready" for r in rows], pa.string()),
        })

    def models_table(self) -> pa.Table:
        """``thanosql.models``: one row per version, whatever its status."""
        with self._connect() as con:
            rows = con.execute("SELECT * FROM ml_model_versions ORDER BY name, version").fetchall()
        col = lambda key: [r[key] for r in rows]  # noqa: E731
        return pa.table({
            "name": pa.array(col("name"), pa.string()),
            "class_name": pa.array(col("class_name"), pa.string()),
            "version": pa.array(col("version"), pa.int64()),
            "status": pa.array(col("status"), pa.string()),
            "error": pa.array(col("error"), pa.string()),
            "options": pa.array(col("options"), pa.string()),
            "metrics": pa.array(col("metrics"), pa.string()),
            "base_model": pa.array(col("base_model"), pa.string()),
            "input_query": pa.array(col("input_query"), pa.string()),
            "created_utc": pa.array(col("created_us"), _TS),
            "updated_utc": pa.array(col("updated_us"), _TS),
        })

    def training_info_table(self) -> pa.Table:
        """``thanosql.training_info``: one row per recorded optimizer step of the last
        PROGRESS_RUNS_KEPT runs of each model (thinned past PROGRESS_ROWS_PER_RUN per run)."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT v.name, v.version, p.step, p.epoch, p.loss, p.learning_rate, p.audio_seconds, "
                "p.elapsed_seconds, p.recorded_us, v.status, v.run_id, "
                "COALESCE(json_extract(v.options, '$.num_workers'), 1) FROM ml_training_progress p "
                "JOIN ml_model_versions v ON v.run_id = p.run_id "
                "ORDER BY v.name, v.version, v.created_us, p.step").fetchall()
        # status and run_id tell runs apart: a failed run keeps the version number it tried for;
        # workers is the run's data-parallel worker count (a step trains on workers x batch_size).
        names = ["model", "version", "step", "epoch", "loss", "learning_rate", "audio_seconds",
                 "elapsed_seconds", "recorded_utc", "status", "run_id", "workers"]
        types = [pa.string(), pa.int64(), pa.int64(), pa.float64(), pa.float64(), pa.float64(),
                 pa.float64(), pa.float64(), _TS, pa.string(), pa.string(), pa.int64()]
        return pa.table({n: pa.array([r[i] for r in rows], t) for i, (n, t) in enumerate(zip(names, types))})

    def describe(self, name: str) -> pa.Table:
        """DESCRIBE MODEL: property/value rows for the latest ready (else latest) version."""
        with self._connect() as con:
            rows = con.execute("SELECT * FROM ml_model_versions WHERE name = ? ORDER BY version",
                               (name,)).fetchall()
            if not rows:
                raise self._not_found(con, name)
        ready = [r for r in rows if r["status"] == "ready"]
        cur = ready[-1] if ready else rows[-1]
        versions = ", ".join(f"v{r['version']} {r['status']}" + (f" ({r['error']})" if r["error"] else "")
                             for r in rows)
        props = [
            ("name", name),
            ("class_name", cur["class_name"]),
            ("version", str(cur["version"])),
            ("status", cur["status"]),
            ("versions", versions),
            ("base_model", cur["base_model"] or ""),
            ("options", cur["options"] or "{}"),
            ("metrics", cur["metrics"] or "{}"),
            ("input_query", cur["input_query"] or ""),
            ("created_utc", _fmt_ts(rows[0]["created_us"])),
            ("updated_utc", _fmt_ts(cur["updated_us"])),
            ("path", self._version_dir(name, cur["version"]) if cur["status"] == "ready" else ""),
        ]
        return pa.table({"property": pa.array([p for p, _ in props], pa.string()),
                         "value": pa.array([v for _, v in props], pa.string())})


def _migrate(con) -> None:
    """Catalogs made before failed runs stopped using up version numbers declare
    ``UNIQUE (name, version)`` on every row; rebuild that table without it (the partial
    index in _SCHEMA keeps live versions unique).  Progress rows are kept."""
    row = con.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'ml_model_versions'").fetchone()
    if row is None or "UNIQUE (name, version)" not in row[0]:
        return
    con.execute("PRAGMA foreign_keys=OFF")  # or dropping the old table cascades to progress
    try:
        con.execute("BEGIN IMMEDIATE")
        try:
            # SQLite's recipe: create the new table, copy, drop the old, rename the new (a
            # rename of the old one would re-point ml_training_progress's foreign key).
            table_sql = _SCHEMA[_SCHEMA.index("CREATE TABLE IF NOT EXISTS ml_model_versions"):
                                _SCHEMA.index("CREATE UNIQUE INDEX")]
            con.execute(table_sql.replace("IF NOT EXISTS ml_model_versions", "ml_model_versions_new"))
            con.execute("INSERT INTO ml_model_versions_new SELECT * FROM ml_model_versions")
            con.execute("DROP TABLE ml_model_versions")
            con.execute("ALTER TABLE ml_model_versions_new RENAME TO ml_model_versions")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        con.execute("PRAGMA foreign_keys=ON")


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    """Flush a staged model to disk before it is published (a crash must not publish garbage)."""
    for folder, _, files in os.walk(root):
        for f in files:
            try:
                with open(os.path.join(folder, f), "rb") as handle:
                    os.fsync(handle.fileno())
            except OSError:
                pass
        _fsync_dir(folder)
