"""Live progress of long statements (BUILD, FIT, PREDICT, EVALUATE), read from the server.

The statement runs on the client's connection in a background thread; a second
connection reads what the server publishes while it works: for BUILD / FIT the run in
`thanosql.models` and its steps in `thanosql.training_info`; for PREDICT / EVALUATE the
utterances transcribed so far in `thanosql.progress` (counted by the server as each batch
finishes; the inner query is never run a second time to count rows).

Nothing is drawn until the server shows the statement running, so a statement the server
refuses (unknown model, bad options) or cannot be sent (no server) fails with its error
alone. Where it is drawn depends on where the output goes:

- a Jupyter kernel: one display that is updated in place, ending as one clean line (that is
  what a saved notebook and nbconvert's HTML keep);
- a terminal: one tqdm bar on stderr;
- anything else (a log, a pipe, captured output): a plain line every LOG_SECONDS when
  something changed, and the final line; never carriage returns.

Ctrl-C (Jupyter's interrupt) cancels the statement on the server.
"""

from __future__ import annotations

import html
import json
import math
import sys
import threading
import time
from dataclasses import dataclass

from thanosql.errors import ThanoSQLError

LONG_STATEMENTS = ("BUILD", "FIT", "PREDICT", "EVALUATE")
POLL_SECONDS = 1.0
LOG_SECONDS = 5.0    # a log line at most this often
REDRAW_SECONDS = 1.0  # the notebook display's elapsed time is refreshed this often


@dataclass
class Snapshot:
    """What the server says about a running statement."""
    label: str            # "BUILD my_asr_model v1"
    done: int = 0
    total: int | None = None
    unit: str = ""        # "steps", "utterances"
    detail: str = ""      # "epoch 0.62/1, loss 3.21"
    status: str = "running"


def run_with_progress(client, statement, poll: float = POLL_SECONDS, display=None):
    """Run `statement` through `client.run`, showing the server's progress; its Result."""
    watcher = _Watcher(client, statement)  # opens its connection first: no server, no progress
    state: dict = {}
    cursors: list = []

    def work():
        try:
            state["result"] = client.run(statement, on_cursor=cursors.append)
        except BaseException as exc:  # noqa: BLE001 - handed to the foreground
            state["error"] = exc

    job = threading.Thread(target=work, name=f"thanosql-{statement.kind.lower()}", daemon=True)
    shown = None
    started = time.monotonic()
    try:
        job.start()
        while job.is_alive():
            job.join(poll)
            snap = watcher.snapshot()
            if snap is not None:
                shown = shown or display or choose_display()
                shown.update(snap, time.monotonic() - started)
        # The last state as one line; also for a statement that ended between two polls.
        # A statement refused before it ran (nothing drawn yet) shows its error only.
        if shown is not None or "error" not in state:
            snap = watcher.snapshot() or watcher.last
            if snap is not None:
                if "error" in state:
                    snap.status = "failed"
                shown = shown or display or choose_display()
                shown.close(snap, time.monotonic() - started)
    except KeyboardInterrupt:
        for cursor in cursors:
            try:
                cursor.adbc_cancel()
            except Exception:
                pass
        job.join(30)
        if shown is not None and watcher.last is not None:
            watcher.last.status = "cancelled"
            shown.close(watcher.last, time.monotonic() - started)
        raise ThanoSQLError(f"{statement.kind} cancelled") from None
    finally:
        watcher.close()
    if "error" in state:
        raise state["error"]
    return state["result"]


# --- reading the server's progress ------------------------------------------------------------

class _Watcher:
    def __init__(self, client, statement):
        self.kind = statement.kind
        self.model = statement.model or ""
        self.label = f"{self.kind} {self.model}".strip()
        self.last: Snapshot | None = None
        self.version = None
        self.epochs = None
        self.max_steps = None
        self.per_epoch = None
        self.base = 0
        self.conn = client.new_connection()  # a refused connection fails here, before drawing
        try:
            if self.kind in ("BUILD", "FIT"):
                self.base = self._scalar("SELECT coalesce(max(version), 0) FROM thanosql.models "
                                         f"WHERE name = {_quote(self.model)}") or 0
            else:
                self.base = self._scalar("SELECT coalesce(max(id), 0) FROM thanosql.progress") or 0
        except ThanoSQLError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. the server is unreachable or refuses the token
            from thanosql.errors import from_driver
            error = from_driver(exc, getattr(client, "url", "") or "")
            self.close()
            if error.code in ("UNAVAILABLE", "UNAUTHENTICATED"):
                raise error from None
            # (an older server without thanosql.progress: the statement runs without a display)

    def _rows(self, sql):
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, r)) for r in cursor.fetchall()]
        finally:
            cursor.close()

    def _scalar(self, sql):
        rows = self._rows(sql)
        return next(iter(rows[0].values())) if rows else None

    def snapshot(self, final: bool = False) -> Snapshot | None:
        """The latest state, or None while the server shows nothing of this statement yet."""
        if self.conn is None:
            return None
        try:
            snap = self._training() if self.kind in ("BUILD", "FIT") else self._inference()
        except Exception:  # progress is a nicety: never fail the statement for it
            return self.last
        if snap is not None:
            self.last = snap
        return snap

    def _inference(self) -> Snapshot | None:
        rows = self._rows(f"SELECT done, total, unit, status FROM thanosql.progress WHERE kind = "
                          f"{_quote(self.kind)} AND model = {_quote(self.model)} AND id > {int(self.base)} "
                          "ORDER BY id LIMIT 1")
        if not rows:
            return None
        row = rows[0]
        return Snapshot(self.label, int(row["done"]), row["total"], row["unit"] or "utterances",
                        status=row["status"])

    def _training(self) -> Snapshot | None:
        if self.version is None:
            runs = self._rows(f"SELECT version, options FROM thanosql.models WHERE name = {_quote(self.model)} "
                              f"AND version > {int(self.base)} ORDER BY version LIMIT 1")
            if not runs:
                return None
            self.version = runs[0]["version"]
            try:
                options = json.loads(runs[0]["options"] or "{}")
            except ValueError:
                options = {}
            self.epochs = options.get("epochs") or options.get("max_epochs")
            self.max_steps = options.get("max_steps")
        label = f"{self.label} v{self.version}"
        rows = self._rows(f"SELECT step, epoch, loss FROM thanosql.training_info WHERE model = "
                          f"{_quote(self.model)} AND version = {int(self.version)} ORDER BY step DESC LIMIT 1")
        status = "running"
        if not rows:
            return Snapshot(label, 0, None, "steps", "loading the base model and audio", status=status)
        row = rows[0]
        step, epoch = int(row["step"]), float(row["epoch"] or 0.0)
        total = None
        if 0 < epoch <= 1:  # steps per epoch, from where the first epoch stands
            self.per_epoch = max(1, round(step / epoch))
        if self.epochs and self.per_epoch:
            total = int(self.epochs) * self.per_epoch
            if self.max_steps:
                total = min(total, int(self.max_steps))
        epochs = f"/{self.epochs}" if self.epochs else ""
        detail = f"epoch {epoch:.2f}{epochs}, loss {row['loss']:.4g}"
        return Snapshot(label, step, total, "steps", detail, status=status)

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass


def _quote(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


# --- drawing --------------------------------------------------------------------------------

def describe(snap: Snapshot, elapsed: float) -> str:
    """One plain line: 'BUILD m v1: 13/13 steps, epoch 1.00/1, loss 3.2 [41 s]'."""
    count = f"{snap.done}/{snap.total} {snap.unit}" if snap.total is not None else f"{snap.done} {snap.unit}"
    if snap.unit == "steps" and snap.done == 0 and snap.detail:
        count = ""
    parts = ", ".join(p for p in (count, snap.detail) if p)
    ending = f" ({snap.status})" if snap.status in ("failed", "cancelled") else ""
    return f"{snap.label}: {parts} [{_seconds(elapsed)}]{ending}"


def _seconds(elapsed: float) -> str:
    if elapsed < 60:
        return f"{elapsed:.1f} s"
    minutes, seconds = divmod(int(elapsed), 60)
    return f"{minutes}:{seconds:02d}"


def choose_display():
    """The display that suits where output goes (see the module's docstring)."""
    if _in_kernel():
        return NotebookDisplay()
    if getattr(sys.stderr, "isatty", lambda: False)():
        return TerminalDisplay()
    return LogDisplay()


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class NotebookDisplay:
    """One display, updated in place (update_display_data): a saved notebook keeps its last state."""

    def __init__(self):
        self.handle = None
        self.drawn = (None, 0.0)

    def _bundle(self, snap: Snapshot, elapsed: float) -> dict:
        line = describe(snap, elapsed)
        value = snap.done if snap.total else (snap.done if snap.status in ("ready", "done") else None)
        if snap.status in ("ready", "done") and snap.total is None:
            value, maximum = 1, 1
        else:
            maximum = snap.total or 1
        bar = (f'<progress value="{value}" max="{maximum}" style="width:16em;vertical-align:middle"></progress> '
               if value is not None else '<progress style="width:16em;vertical-align:middle"></progress> ')
        colour = "#b00020" if snap.status in ("failed", "cancelled") else "inherit"
        return {"text/plain": line,
                "text/html": f'<div style="font-family:monospace;color:{colour}">{bar}{html.escape(line)}</div>'}

    def update(self, snap: Snapshot, elapsed: float) -> None:
        from IPython.display import display
        key = (snap.done, snap.total, snap.detail, snap.status)
        if self.handle is None:
            self.handle = display(self._bundle(snap, elapsed), raw=True, display_id=True)
        elif key != self.drawn[0] or elapsed - self.drawn[1] >= REDRAW_SECONDS:
            self.handle.update(self._bundle(snap, elapsed), raw=True)
        else:
            return
        self.drawn = (key, elapsed)

    def close(self, snap: Snapshot, elapsed: float) -> None:
        if self.handle is None:
            self.update(snap, elapsed)
        else:
            self.handle.update(self._bundle(snap, elapsed), raw=True)


class TerminalDisplay:
    """One tqdm bar on stderr, redrawn in place."""

    def __init__(self):
        self.bar = None

    def update(self, snap: Snapshot, elapsed: float) -> None:
        from tqdm import tqdm
        if self.bar is None:
            self.bar = tqdm(total=snap.total, desc=snap.label, unit=f" {snap.unit}", file=sys.stderr,
                            dynamic_ncols=True, mininterval=0.2)
        if snap.total is not None and self.bar.total != snap.total:
            self.bar.total = snap.total
        self.bar.n = snap.done
        self.bar.set_postfix_str(snap.detail, refresh=False)
        self.bar.refresh()

    def close(self, snap: Snapshot, elapsed: float) -> None:
        self.update(snap, elapsed)
        self.bar.close()


class LogDisplay:
    """Plain lines on stderr: one when something changed, at most every LOG_SECONDS, and the last."""

    def __init__(self, stream=None, every: float = LOG_SECONDS):
        self.stream = stream or sys.stderr
        self.every = every
        self.written: tuple = (None, -math.inf)

    def update(self, snap: Snapshot, elapsed: float) -> None:
        key = (snap.done, snap.total, snap.detail, snap.status)
        if key != self.written[0] and elapsed - self.written[1] >= self.every:
            self._write(describe(snap, elapsed))
            self.written = (key, elapsed)

    def close(self, snap: Snapshot, elapsed: float) -> None:
        self._write(describe(snap, elapsed))

    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)
