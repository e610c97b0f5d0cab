"""Project errors -> Flight errors carrying the right gRPC status and a clean message.

pyarrow sends INVALID_ARGUMENT / NOT_FOUND / UNIMPLEMENTED only for Arrow / Python
exception types, and appends the Python traceback to their message unless
`sys.tracebacklimit` is 0; the server's entry point sets that (see cli.py), and logs
unexpected errors itself with their full traceback.
"""

from __future__ import annotations

import logging
import traceback

import pyarrow as pa
import pyarrow.flight as flight

from flight_server.protocol import ProtocolError
from planner import errors as pe

log = logging.getLogger("thanosql.server")

_BY_TYPE = [
    (pe.InvalidInput, pa.ArrowInvalid),
    (pe.AlreadyExists, pa.ArrowInvalid),  # pyarrow has no ALREADY_EXISTS mapping
    (pe.NotFound, pa.ArrowKeyError),
    (pe.Unsupported, NotImplementedError),
    (pe.PermissionDenied, flight.FlightUnauthorizedError),
    (pe.Cancelled, flight.FlightCancelledError),
    (pe.Internal, flight.FlightInternalError),
    (ProtocolError, pa.ArrowInvalid),
]


def to_flight_error(exc: BaseException) -> BaseException:
    """The exception to raise to the client for `exc`."""
    if isinstance(exc, (flight.FlightError, NotImplementedError)):
        return exc
    for source, target in _BY_TYPE:
        if isinstance(exc, source):
            return target(str(exc))
    if isinstance(exc, (pa.ArrowInvalid, pa.ArrowKeyError, pa.ArrowNotImplementedError)):
        return type(exc)(str(exc).split(". Detail:")[0])
    log.error("unexpected error: %s", "".join(traceback.format_exception(exc, limit=64)))
    return flight.FlightInternalError(f"internal error: {type(exc).__name__}: {exc}")


def translated(method):
    """Decorator for RPC handlers: every exception leaves as a clean Flight error."""
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the point is to catch everything
            raise to_flight_error(exc) from None
    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


def translated_batches(batches):
    """Wrap a batch iterator so errors raised mid-stream are translated too."""
    try:
        yield from batches
    except Exception as exc:  # noqa: BLE001
        raise to_flight_error(exc) from None
