"""One client-side error type whose message is the server's, without driver noise.

ADBC wraps a server error as `NOT_FOUND: [FlightSQL] <message>. Detail: Python exception:
... (NotFound; Prepare)`; notebook users should read only `<message>`. The
`_render_traceback_` hook makes IPython show that message instead of a traceback of the
client's internals, while the cell still fails (so "Run all" stops there).
"""

from __future__ import annotations

import re

_CODE = re.compile(r"^([A-Z_]+): ")
_TRAILER = re.compile(r"\s*\(([A-Z]\w+); [^()]*\)[^()]*$")  # "(NotFound; Prepare)", "(Unavailable; ...). Vendor code: 14"

HINTS = {
    "UNAUTHENTICATED": "set the token with %thanosql API_TOKEN=<token> (or env THANOSQL_API_TOKEN)",
    "UNAVAILABLE": "is the server running? point the client at it with %thanosql grpc://host:port "
                   "(or env THANOSQL_URL)",
}


class ThanoSQLError(Exception):
    """A statement failed; `code` is the gRPC status name when the server sent one."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code

    def _render_traceback_(self) -> list[str]:
        return [f"ThanoSQL error: {self}"]


def clean_message(exc: BaseException) -> tuple[str, str | None]:
    """(message, gRPC code) of a driver error."""
    text = str(exc).strip()
    code = None
    match = _CODE.match(text)
    if match:
        code = match.group(1)
        text = text[match.end():]
    text = text.replace("[FlightSQL] ", "", 1)
    trailer = _TRAILER.search(text)
    if trailer:  # the Flight status ("Unavailable") is more precise than ADBC's class ("IO")
        code = re.sub(r"(?<!^)(?=[A-Z])", "_", trailer.group(1)).upper()
    text = _TRAILER.sub("", text)
    text = text.split(". Detail:", 1)[0].split("\nDetail:", 1)[0].strip()
    return text, code


def from_driver(exc: BaseException, url: str = "") -> ThanoSQLError:
    """The ThanoSQLError for an ADBC/Flight exception, with a hint when the fix is known."""
    message, code = clean_message(exc)
    if code in HINTS:
        where = f" ({url})" if url and code == "UNAVAILABLE" else ""
        message = f"{message}{where}; {HINTS[code]}"
    return ThanoSQLError(message, code)
