"""Progress bars for long statements, fed by the server while the statement runs.

The statement runs in a background thread on the client's connection; the foreground
draws a tqdm bar (stderr, which Jupyter shows live) and, for BUILD / FIT, polls
`thanosql.models` and `thanosql.training_info` on a second connection: step out of
total steps, epoch, loss. PREDICT counts streamed rows; EVALUATE shows elapsed time.
Ctrl-C (Jupyter's interrupt) cancels the statement on the server.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time

from thanosql.errors import ThanoSQLError

LONG_STATEMENTS = ("BUILD", "FIT", "PREDICT", "EVALUATE")
POLL_SECONDS = 0.5
TICK_SECONDS = 5.0  # redraw an unchanged bar this often (elapsed time), not every poll
BAR_FORMAT_STEPS = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps [{elapsed}<{remaining}{postfix}]"


def run_with_progress(client, statement, poll: float = POLL_SECONDS):
    """Run `statement` through `client.run` under a live bar; returns its Result."""
    from tqdm import tqdm

    state: dict = {"rows": 0}
    cursors: list = []

    def work():
        try:
            state["result"] = client.run(statement, on_rows=lambda n: state.__setitem__("rows", state["rows"] + n),
                                         on_cursor=cursors.append)
        except BaseException as exc:  # noqa: BLE001 - handed to the foreground
            state["error"] = exc

    watcher = _Watcher(client, statement)
    job = threading.Thread(target=work, name=f"thanosql-{statement.kind.lower()}", daemon=True)
    bar = tqdm(total=watcher.total_rows, desc=watcher.label, file=sys.stderr, ncols=100,
               unit="rows" if statement.kind == "PREDICT" else "it", mininterval=0.2,
               bar_format=None if statement.kind == "PREDICT" else "{desc} [{elapsed}{postfix}]")
    try:
        job.start()
        while job.is_alive():
            job.join(poll)
            watcher.update(bar, state["rows"])
        watcher.update(bar, state["rows"])
    except KeyboardInterrupt:
        for cursor in cursors:
            try:
                cursor.adbc_cancel()
            except Exception:
                pass
        job.join(30)
        raise ThanoSQLError(f"{statement.kind} cancelled") from None
    finally:
        bar.close()
        watcher.close()
    if "error" in state:
        raise state["error"]
    return state["result"]


class _Watcher:
    """What the bar shows; for training, read from the server's progress tables."""

    def __init__(self, client, statement):
        self.kind = statement.kind
        self.model = statement.model or ""
        self.label = f"{self.kind} {self.model}".strip()
        self.conn = None
        self.total_rows = None
        self.base_version = 0
        self.version = None
        self.total_steps = None
        self.epochs = None
        try:
            self.conn = client.new_connection()
            if statement.query:
                self.total_rows = self._scalar(f"SELECT count(*) FROM ({statement.query}) AS q")
            if self.kind in ("BUILD", "FIT"):
                self.base_version = self._scalar(
                    f"SELECT coalesce(max(version), 0) FROM thanosql.models WHERE name = {_quote(self.model)}") or 0
        except Exception:  # progress is a nicety: never fail the statement for it
            self.close()
        if self.kind == "EVALUATE" and self.total_rows is not None:
            self.label += f": transcribing {self.total_rows} rows"
        self.switched = False
        self.shown, self.drawn = None, 0.0

    def _scalar(self, sql):
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql)
            row = cursor.fetchone()
            return None if row is None else row[0]
        finally:
            cursor.close()

    def _rows(self, sql):
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, r)) for r in cursor.fetchall()]
        finally:
            cursor.close()

    def update(self, bar, rows: int) -> None:
        if self.kind == "PREDICT":
            bar.n = rows
        elif self.kind in ("BUILD", "FIT") and self.conn is not None:
            try:
                self._training(bar)
            except Exception:
                pass
        shown = (bar.n, bar.desc, bar.postfix)
        now = time.monotonic()
        if shown != self.shown or now - self.drawn >= TICK_SECONDS:
            bar.refresh()
            self.shown, self.drawn = shown, now

    def _training(self, bar) -> None:
        if self.version is None:
            runs = self._rows(f"SELECT version, status, options FROM thanosql.models WHERE name = "
                              f"{_quote(self.model)} AND version > {int(self.base_version)} "
                              "ORDER BY version DESC LIMIT 1")
            if not runs:
                bar.set_description_str(f"{self.label}: starting", refresh=False)
                return
            self.version = runs[0]["version"]
            self._plan(runs[0]["options"])
        latest = self._rows(f"SELECT step, epoch, loss FROM thanosql.training_info WHERE model = "
                            f"{_quote(self.model)} AND version = {int(self.version)} "
                            "ORDER BY step DESC LIMIT 1")
        if not latest:
            bar.set_description_str(f"{self.label} v{self.version}: loading the base model and audio",
                                    refresh=False)
            return
        row = latest[0]
        if not self.switched:  # from the elapsed-only format to a bar over the steps
            bar.bar_format = BAR_FORMAT_STEPS if self.total_steps else "{desc} [{elapsed}{postfix}]"
            bar.total = self.total_steps
            self.switched = True
        bar.n = row["step"]
        epochs = f"/{self.epochs}" if self.epochs else ""
        bar.set_description_str(f"{self.label} v{self.version}: epoch {row['epoch']:.2f}{epochs}", refresh=False)
        bar.set_postfix_str(f"step {row['step']}, loss {row['loss']:.4g}", refresh=False)

    def _plan(self, options_json: str | None) -> None:
        try:
            options = json.loads(options_json or "{}")
        except ValueError:
            options = {}
        self.epochs = options.get("epochs") or options.get("max_epochs")
        batch = options.get("batch_size")
        if self.total_rows and batch and self.epochs:
            self.total_steps = int(self.epochs) * math.ceil(self.total_rows / int(batch))
            if options.get("max_steps"):
                self.total_steps = min(self.total_steps, int(options["max_steps"]))

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass


def _quote(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"
