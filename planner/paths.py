"""Confinement of the server's files: SQL may only reach paths under allowed roots."""

from __future__ import annotations

import os
from pathlib import Path

from planner.errors import PermissionDenied


class PathPolicy:
    """Resolves paths named in SQL and refuses those outside the allowed roots.

    Relative paths resolve against the data directory, so the tutorial's
    `COPY ... FROM 'thanosql-dataset/...'` works whatever the server's working folder.
    Symlinks are resolved before the check, so a link cannot escape a root.
    """

    def __init__(self, data_dir: Path, allowed_roots: tuple[Path, ...] = ()):
        self.base = Path(data_dir).resolve()
        self.roots = tuple(dict.fromkeys([self.base, *(Path(r).resolve() for r in allowed_roots)]))

    def resolve(self, path: str | os.PathLike, relative_to: Path | None = None) -> Path:
        text = os.fspath(path)
        if text.startswith("file://"):
            text = text[len("file://"):]
        candidate = Path(os.path.expanduser(text))
        if not candidate.is_absolute():
            candidate = (relative_to or self.base) / candidate
        resolved = candidate.resolve()
        if not any(resolved == root or resolved.is_relative_to(root) for root in self.roots):
            allowed = ", ".join(str(r) for r in self.roots)
            raise PermissionDenied(
                f"path '{text}' is outside the server's allowed folders ({allowed}); "
                "start the server with --allow-path to permit another folder"
            )
        return resolved
