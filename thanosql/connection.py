"""Connecting: which server (argument, THANOSQL_URL, else a local one) and which token.

The result is a plain ADBC DB-API connection, so anything that speaks DB-API or Arrow
(pandas, polars, the magic) can use it without this package in the way.
"""

from __future__ import annotations

import os
import sys

from thanosql.errors import ThanoSQLError, from_driver

SCHEMES = ("grpc://", "grpc+tcp://", "grpc+tls://", "grpc+unix://")


def check_url(url: str) -> str:
    url = url.strip()
    if not url.lower().startswith(SCHEMES):
        raise ThanoSQLError(f"server URL {url!r} must start with one of {', '.join(SCHEMES)}")
    return url


def resolve_url(url: str | None = None, announce=None) -> str:
    """`url`, else env THANOSQL_URL, else a local server started on first use."""
    if url:
        return check_url(url)
    if os.environ.get("THANOSQL_URL"):
        return check_url(os.environ["THANOSQL_URL"])
    from thanosql.local_server import shared_server
    return shared_server(announce or (lambda msg: print(msg, file=sys.stderr))).url


def resolve_token(token: str | None = None) -> str | None:
    return token or os.environ.get("THANOSQL_API_TOKEN") or None


def connect(url: str | None = None, token: str | None = None):
    """An ADBC (DB-API 2.0) connection in autocommit mode, sending `Bearer <token>` if given."""
    import adbc_driver_flightsql.dbapi as flightsql

    url = resolve_url(url)
    token = resolve_token(token)
    db_kwargs = {"adbc.flight.sql.authorization_header": f"Bearer {token}"} if token else {}
    try:
        return flightsql.connect(url, db_kwargs=db_kwargs, autocommit=True)
    except Exception as exc:  # the driver's errors all derive from Exception
        raise from_driver(exc, url) from None
