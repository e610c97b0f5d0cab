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


TEXT_COLUMNS = ("text", "transcript", "predict_result")  # shown under each player when present


class AudioPlayers(list):
    """The rows' `IPython.display.Audio` objects (None for unreadable files), shown labelled,
    with the row's transcripts (`texts`: column name -> values) under each player."""

    def __init__(self, paths: list[str | None], limit: int = MAX_PLAYERS, texts: dict | None = None):
        from IPython.display import Audio
        self.paths = list(paths)
        self.texts = dict(texts or {})
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
            lines = [(name, values[i]) for name, values in self.texts.items() if values[i] is not None]
            if lines:
                display({"text/plain": "\n".join(f"{name}: {value}" for name, value in lines),
                         "text/html": "".join(f'<div style="margin:0 0 0.8em 0.5em"><span style="color:#777">'
                                              f'{html.escape(name)}</span> {html.escape(str(value))}</div>'
                                              for name, value in lines)}, raw=True)
        hidden = len(self.paths) - len(self)
        if hidden > 0:
            display({"text/plain": f"... {hidden} more rows not shown (LIMIT the query)"}, raw=True)

    def __repr__(self) -> str:
        return f"<AudioPlayers: {len(self)} of {len(self.paths)} rows>"


def players_for(table: pa.Table) -> AudioPlayers:
    column = audio_column(table)
    texts = {name: table.column(name).to_pylist() for name in TEXT_COLUMNS
             if name in table.column_names and name != column}
    return AudioPlayers(table.column(column).to_pylist() if column in table.column_names else [], texts=texts)
