"""The `%thanosql` / `%%thanosql` magic, as in ThanoSQL's notebooks.

    %thanosql grpc://host:port        use this server (grpc+tls:// too)
    %thanosql API_TOKEN=<token>       send `Authorization: Bearer <token>`
    %thanosql <statement>             a DataFrame; `df = %thanosql ...` captures it
    %%thanosql                        the cell is one statement

Errors raise ThanoSQLError, which IPython shows as the server's message only.
"""

from __future__ import annotations

import re

from IPython.core.magic import Magics, line_cell_magic, magics_class

from thanosql.client import Client
from thanosql.connection import SCHEMES

_TOKEN = re.compile(r"^\s*API_TOKEN\s*=\s*(\S+)\s*$", re.IGNORECASE)


def _announce(message: str) -> None:
    print(message)  # a notice, not an error: normal output


@magics_class
class ThanoSQLMagics(Magics):
    def __init__(self, shell, client: Client | None = None):
        super().__init__(shell)
        self.client = client or Client(announce=_announce)

    @line_cell_magic
    def thanosql(self, line: str, cell: str | None = None):
        """Run one ThanoSQL statement, or set the server URL / API token."""
        text = line.strip() if cell is None else f"{line}\n{cell}".strip()
        if not text:
            where = self.client.url or "not chosen yet (THANOSQL_URL, else a local server on first use)"
            print(f"thanosql: server {where}\n{__doc__.split(chr(10) + chr(10))[1]}")
            return None
        token = _TOKEN.match(text)
        if token:
            self.client.set_token(token.group(1).strip("'\""))
            print("thanosql: API token set")
            return None
        if text.lower().startswith(SCHEMES) and len(text.split()) == 1:
            self.client.set_server(text)
            answer = self.client.check()  # an unreachable server is an error now, not at the next statement
            print(f"thanosql: statements now go to {text} ({answer})")
            return None
        result = self.client.execute(text)
        from thanosql.audio import AUDIO_COL_KEY, players_for
        if AUDIO_COL_KEY in (result.table.schema.metadata or {}):  # PRINT AUDIO
            return players_for(result.table)
        frame = result.to_pandas()
        self._pictures(result, frame)
        return frame

    def _pictures(self, result, frame) -> None:
        """After BUILD / FIT the loss curve; after EVALUATE (details=True) the worst utterances."""
        from IPython.display import display

        from thanosql import pictures
        kind = result.statement.kind
        try:
            if (kind in ("BUILD", "FIT") and {"model", "version"} <= set(frame.columns) and len(frame) == 1
                    and ("status" not in frame.columns or frame["status"][0] == "ready")):  # not wait=False
                display(pictures.training_curve(self.client, str(frame["model"][0]), int(frame["version"][0])))
            elif kind == "EVALUATE" and "reference_normalized" in frame.columns:
                display(pictures.WorstUtterances(frame))
        except Exception as exc:  # noqa: BLE001 - a picture is a nicety; the result stands
            print(f"thanosql: (no picture: {exc})")
