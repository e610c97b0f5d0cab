"""PRINT AUDIO's rendering: one labelled audio player per row, in the notebook.

The server returns the query's rows and names the audio column in the schema metadata
(`thanosql.audio_col`); the players read the files here, so they work when the client
shares the server's disk (the local server, the demo) and say so plainly otherwise.
"""

from __future__ import annotations

import html
import os

import pyarrow as pa

AUDIO_COL_KEY = b"thanosql.audio_col"
MAX_PLAYERS = 100  # each player embeds its file in the notebook


def audio_column(table: pa.Table, default: str = "audio") -> str:
    metadata = table.schema.metadata or {}
    return metadata.get(AUDIO_COL_KEY, default.encode()).decode()


class AudioPlayers(list):
    """The rows' `IPython.display.Audio` objects (None for unreadable files), shown labelled."""

    def __init__(self, paths: list[str | None], limit: int = MAX_PLAYERS):
        from IPython.display import Audio
        self.paths = list(paths)
        self.problems: dict[int, str] = {}
        players = []
        for i, path in enumerate(self.paths[:limit]):
            try:
                players.append(Audio(filename=os.fspath(path)))
            except (OSError, TypeError, ValueError) as exc:
                players.append(None)
                self.problems[i] = f"cannot read {path} on this machine ({type(exc).__name__})"
        super().__init__(players)

    def _ipython_display_(self) -> None:
        from IPython.display import display
        for i, player in enumerate(self):
            path = str(self.paths[i])
            note = self.problems.get(i)
            label = f"{path}: {note}" if note else path
            display({"text/plain": label, "text/html": f"<code>{html.escape(label)}</code>"}, raw=True)
            if player is not None:
                display(player)
        hidden = len(self.paths) - len(self)
        if hidden > 0:
            display({"text/plain": f"... {hidden} more rows not shown (LIMIT the query)"}, raw=True)

    def __repr__(self) -> str:
        return f"<AudioPlayers: {len(self)} of {len(self.paths)} rows>"


def players_for(table: pa.Table) -> AudioPlayers:
    column = audio_column(table)
    return AudioPlayers(table.column(column).to_pylist() if column in table.column_names else [])
