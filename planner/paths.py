"""Confinement of the server's files: the one policy for every path a statement can reach.

SQL may only touch files under the allowed roots (the data directory plus `--allow-path`s).
`PathPolicy` decides, on the parsed statement and never on its text:
- what a path names: relative paths resolve against the data directory (never the server's
  working folder); `file:` URLs (`file:/abs`, `file:///abs`, `file://localhost/abs`) are
  read as the path they name; any other URL scheme (s3://, http://, memory://...) is refused,
  so DataFusion is never handed an object-store URL;
- where it really lies: every symlink is resolved, per file, before the check;
- what it is: FIFOs, sockets and devices are refused before anything opens them (a FIFO
  would block a server thread forever);
- for writes (COPY ... TO): never through a symlink, never over the catalog, table or model
  folders of the data directory;
- external tables never read the server's own files: a LOCATION (or a file under it) that
  is, holds or lies inside the catalog, `tables/` or `models/` is refused (`protected`,
  the same rule as for COPY ... TO).

External tables are checked twice: their LOCATION when created, and every file under it
each time a statement that reads or writes them is planned (DataFusion lists the folder at
every scan, following symlinks), by `ConfinedContext`, the engine's SessionContext.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import stat
import threading
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator
from urllib.parse import unquote, urlsplit

from datafusion import DataFrame, SessionContext

from planner.errors import InvalidInput, NotFound, PermissionDenied

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_GLOB = set("*?[")
# A Hugging Face hub id: `name` or `owner/name`.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
# Folders and files of the data directory that COPY ... TO must never write into.
PROTECTED_FOLDERS = ("tables", "models")
PROTECTED_PREFIXES = ("catalog.sqlite",)
MAX_TREE_ENTRIES = 1_000_000  # a bound on one check's work; a folder this big is refused


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "a special file"


class PathPolicy:
    """Resolves paths named in SQL and refuses what lies outside the allowed roots.

    Relative paths resolve against the data directory, so the tutorial's
    `COPY ... FROM 'thanosql-dataset/...'` works whatever the server's working folder.
    Symlinks are resolved before the check, so a link cannot escape a root.
    """

    def __init__(self, data_dir: Path, allowed_roots: tuple[Path, ...] = ()):
        self.base = Path(os.path.realpath(data_dir))
        self.roots = tuple(dict.fromkeys([self.base, *(Path(os.path.realpath(r)) for r in allowed_roots)]))

    # --- what a path names ---------------------------------------------------------------

    def allowed_text(self) -> str:
        return ", ".join(str(r) for r in self.roots)

    def _refuse(self, text: str, why: str) -> PermissionDenied:
        return PermissionDenied(f"path '{text}' {why} (the server's allowed folders: {self.allowed_text()})")

    def _outside(self, text: str, resolved: Path) -> PermissionDenied:
        return PermissionDenied(f"path '{text}' resolves to {resolved}, outside the server's allowed folders "
                                f"({self.allowed_text()}); start the server with --allow-path to permit "
                                "another folder")

    def parse(self, path: str | os.PathLike, relative_to: Path | None = None) -> Path:
        """The absolute (not yet resolved) path that `path` names; refuses URLs that are not
        `file:` URLs and malformed paths."""
        text = os.fspath(path)
        if not isinstance(text, str):
            raise InvalidInput(f"a path must be text, got {text!r}")
        if not text.strip():
            raise InvalidInput("the path is empty")
        if "\x00" in text:
            raise self._refuse(text.replace("\x00", "\\0"), "contains a NUL character")
        name = text
        match = _SCHEME.match(text)
        if match:
            scheme = match.group(1).lower()
            if scheme != "file":
                raise self._refuse(text, f"is a URL with scheme '{scheme}'; only local files are reachable "
                                         "(a local name holding ':' can be written './name')")
            parts = urlsplit(text)
            if parts.netloc not in ("", "localhost"):
                raise self._refuse(text, f"is a file: URL on another host ({parts.netloc})")
            if parts.query or parts.fragment or text.endswith(("?", "#")):
                raise self._refuse(text, "is a file: URL with a query or fragment")
            name = unquote(parts.path)
            if not name.startswith("/"):
                raise self._refuse(text, "is a file: URL without an absolute path (write file:///abs/path)")
            if "\x00" in name:
                raise self._refuse(text, "contains a NUL character")
        candidate = Path(os.path.expanduser(name)) if name.startswith("~") else Path(name)
        if not candidate.is_absolute():
            candidate = (relative_to or self.base) / candidate
        return candidate

    def inside(self, resolved: Path) -> bool:
        return any(resolved == root or resolved.is_relative_to(root) for root in self.roots)

    def resolve(self, path: str | os.PathLike, relative_to: Path | None = None) -> Path:
        """The real path (every symlink resolved) of a path to read; refused outside the roots."""
        text = os.fspath(path)
        resolved = Path(os.path.realpath(self.parse(text, relative_to)))
        if not self.inside(resolved):
            raise self._outside(text, resolved)
        return resolved

    # --- reading -------------------------------------------------------------------------

    def regular_file(self, path: str | os.PathLike, relative_to: Path | None = None,
                     what: str = "file") -> Path:
        """A path that must name an existing regular file inside the roots."""
        resolved = self.resolve(path, relative_to)
        try:
            mode = os.stat(resolved).st_mode
        except FileNotFoundError:
            raise NotFound(f"no {what} at '{os.fspath(path)}' (resolved to {resolved})") from None
        if not stat.S_ISREG(mode):
            raise PermissionDenied(f"{what} '{os.fspath(path)}' ({resolved}) is {_kind(mode)}, "
                                   "not a regular file; it is not read")
        return resolved

    def audio_file(self, value: str, row: int | None = None) -> Path:
        """An audio path from a query's rows: inside the roots, and a regular file when it
        exists (a missing one is reported by the audio loader with its row)."""
        try:
            resolved = self.resolve(value)
        except PermissionDenied as exc:
            raise PermissionDenied(f"row {row}: {exc}" if row is not None else str(exc)) from None
        try:
            mode = os.stat(resolved).st_mode
        except OSError:
            return resolved
        if not stat.S_ISREG(mode):
            where = f"row {row}: " if row is not None else ""
            raise PermissionDenied(f"{where}audio path '{value}' ({resolved}) is {_kind(mode)}, "
                                   "not a regular file; it is not read")
        return resolved

    @staticmethod
    def open_regular(resolved: Path) -> BinaryIO:
        """Open a checked path for reading without blocking or following a symlink swapped in
        since the check, and refuse it unless it is (still) a regular file."""
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(resolved, flags)
        except OSError as exc:
            raise PermissionDenied(f"'{resolved}' could not be opened safely ({exc.strerror}); "
                                   "it changed since it was checked, or is not a regular file") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise PermissionDenied(f"'{resolved}' is {_kind(mode)}, not a regular file; it is not read")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def walk(self, top: Path, shown: str, wanted: Callable[[str], bool] | None = None,
             protect: bool = False) -> Iterator[Path]:
        """Every file under `top` (a folder or a file) as DataFusion's listing sees it
        (symlinked folders followed), each resolved and checked: a link resolving outside
        the roots, or a FIFO, socket or device, refuses the whole tree. `wanted(name)`
        limits the check to the files that will be read (folders are always followed).
        With `protect`, a file or folder that is, holds or lies inside one of the server's
        own files (`protected`) refuses the tree too.
        Yields the real path of each wanted regular file."""
        seen: set[str] = set()
        stack = [str(top)]
        entries = 0
        while stack:
            path = stack.pop()
            entries += 1
            if entries > MAX_TREE_ENTRIES:
                raise PermissionDenied(f"{shown} holds more than {MAX_TREE_ENTRIES} entries; "
                                       "it is not scanned")
            real = os.path.realpath(path)
            if not self.inside(Path(real)):
                raise PermissionDenied(
                    f"'{path}' (under {shown}) resolves to {real}, outside the server's allowed "
                    f"folders ({self.allowed_text()}); the statement is refused")
            if protect:
                own = self.protected(Path(real))
                if own is not None:
                    what = shown if path == str(top) else f"'{path}' (under {shown})"
                    raise PermissionDenied(f"{what} resolves to {real}, which {own}; the server's own "
                                           "files are never read as a table")
            try:
                mode = os.stat(real).st_mode
            except FileNotFoundError:
                continue  # a dangling link: nothing to read (its target was checked above)
            if stat.S_ISDIR(mode):
                if real in seen:
                    continue  # a link loop, or a folder reached twice
                seen.add(real)
                try:
                    with os.scandir(path) as it:
                        stack.extend(entry.path for entry in it)
                except OSError as exc:
                    raise PermissionDenied(f"folder '{path}' (under {shown}) cannot be listed "
                                           f"({exc.strerror})") from None
                continue
            if wanted is not None and path != str(top) and not wanted(os.path.basename(path)):
                continue
            if not stat.S_ISREG(mode):
                raise PermissionDenied(f"'{path}' (under {shown}) is {_kind(mode)}, not a regular "
                                       "file; the statement is refused")
            yield Path(real)

    def check_tree(self, top: Path, shown: str, protect: bool = False) -> None:
        for _ in self.walk(top, shown, protect=protect):
            pass

    def protected(self, real: Path) -> str | None:
        """Why the real path `real` touches the server's own files of the data directory
        (its catalog, `tables/`, `models/`), or None: it is one of them or lies inside one,
        or it is the data directory or a folder holding it. The one rule for COPY ... TO
        targets and external table locations."""
        if real == self.base or self.base.is_relative_to(real):
            where = "is" if real == self.base else "holds"
            return (f"{where} the server's data directory {self.base} (its catalog, tables/ and "
                    "models/ are the server's own)")
        if real.is_relative_to(self.base):
            first = real.relative_to(self.base).parts[0]
            if first in PROTECTED_FOLDERS or first.startswith(PROTECTED_PREFIXES):
                return f"lies in the server's own {first} in the data directory {self.base}"
        return None

    def external_location(self, location: str) -> tuple[Path, str]:
        """(checked real path, the literal to give DataFusion) for CREATE EXTERNAL TABLE's
        LOCATION: inside the roots, no glob pattern, and every file under it checked."""
        text = location
        resolved = self.resolve(text)
        if _GLOB & set(str(resolved)):
            raise InvalidInput(f"LOCATION '{text}': glob patterns (*, ?, [) are not supported; name a "
                               "folder or a file")
        own = self.protected(resolved)
        if own is not None:
            raise self._refuse(text, f"resolves to {resolved}, which {own}; an external table cannot "
                                     "read the server's own files")
        if not os.path.exists(resolved):
            raise NotFound(f"LOCATION '{text}' does not exist (resolved to {resolved})")
        self.check_tree(resolved, f"LOCATION '{text}'", protect=True)
        literal = str(resolved) + ("/" if resolved.is_dir() else "")
        return resolved, literal

    # --- writing -------------------------------------------------------------------------

    def write_target(self, path: str) -> Path:
        """The real path COPY ... TO may write (a file, or a folder for a trailing '/'):
        inside the data directory (other roots are read-only), not through a symlink, not a FIFO/socket/device, and not the
        data directory's catalog, table or model folders."""
        text = path
        candidate = self.parse(text)
        if _GLOB & set(str(candidate)):
            raise InvalidInput(f"COPY ... TO '{text}': glob characters (*, ?, [) are not allowed in the target")
        if candidate.name in ("", ".", ".."):
            target = Path(os.path.realpath(candidate))
        else:
            target = Path(os.path.realpath(candidate.parent)) / candidate.name
            if os.path.islink(target):
                raise self._refuse(text, f"is a symbolic link ({target} -> {os.readlink(target)}); "
                                         "COPY ... TO never writes through a link")
        if not (target == self.base or target.is_relative_to(self.base)):
            raise self._refuse(text, f"resolves to {target}, outside the data directory {self.base}: "
                                     "COPY ... TO writes only there (--allow-path folders are read-only)")
        try:
            mode = os.stat(target).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise self._refuse(text, f"is {_kind(mode)}; COPY ... TO writes regular files only")
        if target == self.base:
            raise self._refuse(text, "is the data directory itself; name a file or a folder inside it")
        own = self.protected(target)
        if own is not None:
            raise self._refuse(text, f"resolves to {target}, which {own}; COPY ... TO never writes "
                                     "there: choose another target")
        return target

    # --- checkpoints ---------------------------------------------------------------------

    def base_model(self, value: Any) -> Any:
        """BUILD MODEL's base_model as given in SQL: a folder inside the roots (returned as an
        absolute real path, so nothing reads it against the server's working folder) or a
        Hugging Face hub id (returned unchanged)."""
        if not isinstance(value, str) or not value.strip():
            return value  # the option validation reports it
        text = value.strip()
        path_like = (text.startswith(("/", "~", "./", "../")) or text in (".", "..")
                     or _SCHEME.match(text) is not None)
        if path_like:
            return str(self._checkpoint_folder(text))
        if ".." in text:
            raise self._refuse(text, "contains '..'; base_model is a folder (give its path) or a hub "
                                     "id such as facebook/wav2vec2-base-960h")
        if os.path.lexists(self.base / text):
            return str(self._checkpoint_folder(text))
        if os.path.lexists(text):
            # A folder relative to the server's working folder: what a loader would pick up
            # for this name. Only allowed where the roots allow it, and passed on absolute.
            return str(self._checkpoint_folder(os.path.abspath(text), shown=text))
        if not _HUB_ID.match(text):
            raise InvalidInput(f"base_model '{text}' is neither a folder inside the server's allowed "
                               f"folders ({self.allowed_text()}) nor a hub id such as "
                               "facebook/wav2vec2-base-960h")
        return text

    def _checkpoint_folder(self, text: str, shown: str | None = None) -> Path:
        try:
            resolved = self.resolve(text)
        except PermissionDenied as exc:
            raise PermissionDenied(f"base_model '{shown or text}': {exc}") from None
        if not resolved.is_dir():
            return resolved  # the checkpoint loader says what is missing
        self.check_tree(resolved, f"base_model '{shown or text}'")
        return resolved


# --- every statement DataFusion plans -----------------------------------------------------

@functools.lru_cache(maxsize=1024)
def _location_of(sql: str) -> str | None:
    from planner import statements as st
    try:
        statement = st.parse(sql)
    except Exception:
        return None
    return statement.location if isinstance(statement, st.CreateExternalTable) else None


def referenced_tables(plan_text: str, names: list[str]) -> list[str]:
    """Which of `names` a logical plan's indented display scans or writes (subqueries and
    views included: DataFusion prints them in full)."""
    found = []
    scans, targets = [], []
    for line in plan_text.splitlines():
        line = line.strip()
        if line.startswith("TableScan: "):
            scans.append(line[len("TableScan: "):])
        elif line.startswith("Dml: "):
            targets.append(line)
    for name in names:
        qualified = (name, f"public.{name}", f"datafusion.public.{name}")
        if any(scan == q or scan.startswith(q + " ") or scan.startswith(q + ",")
               for scan in scans for q in qualified) \
                or any(f"table=[{q}]" in line for line in targets for q in qualified):
            found.append(name)
    return found


class ConfinedContext(SessionContext):
    """The engine's DataFusion SessionContext: every SQL text it plans is checked first.

    - CREATE EXTERNAL TABLE (DataFusion runs it at once, reading files to infer a schema):
      its LOCATION and every file under it, before DataFusion sees it;
    - any other statement: every external table its plan scans or writes (views and
      subqueries included), each file under its folder, as it is planned.
    `external_tables()` returns {name: location} of the stored external tables; the map is
    cached and forgotten whenever the catalog changes through this context (a table
    registered or dropped, an external table created) or `forget_external_tables()` is
    called, so a plain query costs no catalog read.
    """

    def __init__(self, config, policy: PathPolicy, external_tables: Callable[[], dict[str, str]]):
        super().__init__(config)
        self.policy = policy
        self.external_tables = external_tables
        self._lock = threading.Lock()
        self._externals: dict[str, str] | None = None
        self._generation = 0

    def sql(self, query: str, options=None, param_values=None, **named_params):  # noqa: D102
        location = _location_of(query) if "EXTERNAL" in query.upper() else None
        if location is not None:
            self.policy.external_location(location)
            self.forget_external_tables()
        try:
            df = super().sql(query, options=options, param_values=param_values, **named_params)
        finally:
            if location is not None:
                self.forget_external_tables()
        self.check_plan(df)
        # Checked again whenever it (or a frame made from it) runs: a statement prepared
        # now may run after a link was planted in a folder it scans.
        return CheckedDataFrame(df, self.check_plan)

    def register_table(self, *args, **kwargs):  # noqa: D102
        self.forget_external_tables()
        return super().register_table(*args, **kwargs)

    def deregister_table(self, *args, **kwargs):  # noqa: D102
        self.forget_external_tables()
        return super().deregister_table(*args, **kwargs)

    def forget_external_tables(self) -> None:
        with self._lock:
            self._generation += 1
            self._externals = None

    def _external_map(self) -> dict[str, str]:
        with self._lock:
            if self._externals is not None:
                return self._externals
            generation = self._generation
        try:
            fresh = self.external_tables()
        except Exception:  # the catalog is not open yet (start-up)
            return {}
        with self._lock:
            if generation == self._generation:  # nothing changed while it was read
                self._externals = fresh
        return fresh

    def check_plan(self, df) -> None:
        """Refuse `df` if an external table it reads or writes holds a file outside the roots."""
        externals = self._external_map()
        if not externals:
            return
        try:
            text = df.logical_plan().display_indent()
        except Exception:
            return  # nothing planned (e.g. a SET): nothing to scan
        for name in referenced_tables(text, sorted(externals)):
            location = externals[name]
            resolved = self.policy.resolve(location)
            self.policy.check_tree(resolved, f"external table {name} ({location})", protect=True)


class CheckedDataFrame(DataFrame):
    """A DataFrame whose external tables are checked again each time it runs (collect,
    stream, write...); the frames derived from it (select, filter, join...) are too."""

    def __init__(self, df: DataFrame, check: Callable[[DataFrame], None]):
        super().__init__(df.df)
        self._check = check


# DataFrame methods that run the plan (DataFusion lists the scanned folders then).
_RUNS = {"collect", "collect_column", "collect_partitioned", "cache", "show", "count", "describe",
         "to_arrow_table", "execute_stream", "execute_stream_partitioned", "to_pandas", "to_pylist",
         "to_pydict", "to_polars", "write_csv", "write_parquet", "write_parquet_with_options",
         "write_json", "write_table", "__arrow_c_stream__", "__iter__", "__aiter__"}


def _checked(name: str, original: Callable) -> Callable:
    runs = name in _RUNS

    @functools.wraps(original)
    def method(self, *args, **kwargs):
        if runs:
            self._check(self)
        result = original(self, *args, **kwargs)
        if isinstance(result, DataFrame) and not isinstance(result, CheckedDataFrame):
            result = CheckedDataFrame(result, self._check)
        return result
    return method


for _name, _value in list(vars(DataFrame).items()):
    if inspect.isfunction(_value) and (not _name.startswith("_") or _name in _RUNS or _name == "__getitem__"):
        setattr(CheckedDataFrame, _name, _checked(_name, _value))


def external_tables_of(store) -> dict[str, str]:
    """{name: location} of the external tables a TableStore holds."""
    if store is None:
        return {}
    result = {}
    for obj in store.names():
        if obj.kind == "external" and obj.sql:
            location = _location_of(obj.sql)
            if location is not None:
                result[obj.name] = location
    return result
