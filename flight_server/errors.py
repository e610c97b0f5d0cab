"""Project errors -> one clean client message with the right gRPC status.

Every RPC handler leaves through `translated` (DoGet streams through
`translated_batches`), so whatever a handler raises reaches the client as one message,
with the status of its class, and never with a Python exception name or traceback.

Status per class ("on the wire" is the gRPC code clients get; see "Why" below):

| project error (planner.errors) | meant status        | on the wire (pyarrow 26) | raised to pyarrow as      |
|--------------------------------|---------------------|--------------------------|---------------------------|
| InvalidInput, ProtocolError    | INVALID_ARGUMENT    | INVALID_ARGUMENT         | InvalidArgumentError      |
| NotFound                       | NOT_FOUND           | NOT_FOUND                | NotFoundError             |
| AlreadyExists                  | ALREADY_EXISTS      | INVALID_ARGUMENT *       | InvalidArgumentError      |
| PermissionDenied               | PERMISSION_DENIED   | PERMISSION_DENIED        | FlightUnauthorizedError   |
| FailedPrecondition             | FAILED_PRECONDITION | UNAVAILABLE *            | FlightUnavailableError    |
| ResourceExhausted              | RESOURCE_EXHAUSTED  | UNAVAILABLE *            | FlightUnavailableError    |
| DeadlineExceeded               | DEADLINE_EXCEEDED   | DEADLINE_EXCEEDED        | FlightTimedOutError       |
| Cancelled                      | CANCELLED           | CANCELLED                | FlightCancelledError      |
| Unsupported, NotImplementedError | UNIMPLEMENTED     | UNIMPLEMENTED            | UnimplementedError        |
| Internal                       | INTERNAL            | INTERNAL                 | FlightInternalError       |
| anything else (a bug)          | INTERNAL            | INTERNAL                 | FlightInternalError: "internal error (incident <id>)" |
| credentials (auth.py)          | UNAUTHENTICATED     | UNAUTHENTICATED          | FlightUnauthenticatedError |

InvalidArgumentError / NotFoundError / UnimplementedError subclass ValueError / KeyError /
NotImplementedError (via pa.ArrowInvalid & co.): the only exceptions pyarrow turns into
those three codes.

`*` pyarrow 26 cannot put ALREADY_EXISTS, FAILED_PRECONDITION or RESOURCE_EXHAUSTED on
the wire from Python: the first needs an Arrow `Status::AlreadyExists`, which no Python
exception converts to, and Arrow's gRPC transport has no code at all for the other two.
The nearest codes are used: INVALID_ARGUMENT for AlreadyExists (the request names
something that is taken: do not retry as is), and UNAVAILABLE for FailedPrecondition /
ResourceExhausted (exactly what Arrow's own client maps those two gRPC codes to). The
meant status still travels, as the `reason` of a `google.rpc.ErrorInfo` in the rich
status (below) and as the detail pyarrow clients print ("... . Detail: AlreadyExists").
An unexpected exception gets "internal error (incident <id>)"; the server log has the
same id with the traceback.

Why it is done this way (pyarrow 26 / Arrow C++ 26, read in _flight.pyx, error.pxi,
arrow/python/common.cc and flight/transport{.cc,/grpc/util_internal.cc}):
- Only `flight.FlightError` subclasses become a status without a Python detail; they
  give INTERNAL, DEADLINE_EXCEEDED, CANCELLED, UNKNOWN, UNAUTHENTICATED,
  PERMISSION_DENIED and UNAVAILABLE, and gRPC's message is "<msg>. Detail: <Code>".
- Any other Python exception becomes a status whose code follows the exception type
  (ValueError -> INVALID_ARGUMENT, KeyError -> NOT_FOUND, NotImplementedError ->
  UNIMPLEMENTED, everything else UNKNOWN) and carries a detail that gRPC's message
  appends: "<msg>. Detail: Python exception: <traceback.format_exception(...)>" --
  the message twice, with the traceback unless `sys.tracebacklimit` is 0.
  FlightSqlServer sets `sys.tracebacklimit = 0` for that reason (process-wide).
- The clean message therefore travels beside gRPC's message, where each client reads it:
  * `grpc-status-details-bin`: a `google.rpc.Status` with the same code and the clean
    message (gRPC's rich error model). grpc-go clients -- the ADBC Flight SQL driver --
    show that message instead of gRPC's when the codes agree. FlightErrors carry it as
    `extra_info` (pyarrow's API for this trailer); the other classes add it as a
    trailer, except for Arrow C++ clients (pyarrow.flight; user agent "grpc-c++"),
    whose Flight client turns the presence of that trailer on a non-Flight status into
    a FlightInternalError.
  * `x-arrow-status-detail-bin`: Arrow C++ clients rebuild the error from the
    `x-arrow-status*` trailers Arrow adds ("<clean msg>. Detail: <detail>"). A trailer
    we add first is the one they read, so the detail they print is the meant status
    name ("AlreadyExists") instead of the Python exception.
  * Clients that read only gRPC's own message (Java: the Flight JDBC driver) get the
    right code, and for INVALID_ARGUMENT / NOT_FOUND / UNIMPLEMENTED a message that
    still ends in ". Detail: Python exception: <class>: <msg>" (no traceback).
- Errors raised by middleware (authentication) cannot add trailers; they are
  FlightErrors with `extra_info`, so they are clean everywhere (but see GetSchema).
- Every message is `capped` at MAX_MESSAGE_CHARS characters ("... (N characters
  omitted)"), here, for every route above: an error may quote a statement or a plan.

What pyarrow 26 does not allow (left as is, on purpose):
- gRPC's raw message of INVALID_ARGUMENT / NOT_FOUND / UNIMPLEMENTED always names the
  Python exception: Arrow builds it as "<msg>. Detail: <status detail>", the status of a
  Python exception always carries a PythonErrorDetail, which prints "Python exception: "
  and `traceback.format_exception(...)` (arrow/python/common.cc), and only FlightErrors
  escape that -- none of which has those three codes. Clients that read that raw message
  see it: the JDBC driver, and pyarrow's own client on streaming RPCs (DoGet, DoPut,
  DoExchange), where it appends "<clean message>. gRPC client debug context: <gRPC's
  debug string, which quotes the raw message>. Client context: ..." (Arrow's
  GrpcClientImpl Finish). The part before ". gRPC client debug context: " is the clean
  "<msg>. Detail: NotFound", and the exception class is right (pa.ArrowKeyError...);
  unary RPCs (GetFlightInfo, DoAction, ...) are clean on pyarrow.
- GetSchema, both ends. The server callback (`_get_schema` in _flight.pyx) lacks the
  `except FlightError` every other callback has, so a FlightError raised by get_schema
  goes out as UNKNOWN (PERMISSION_DENIED, UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED,
  INTERNAL; the meant status still shows in the detail); INVALID_ARGUMENT, NOT_FOUND and
  UNIMPLEMENTED go out right. The client (`FlightClient.get_schema`) checks the status
  with `check_status` instead of `check_flight_status`, so every Flight error there is a
  plain ArrowException / OSError whose Flight detail is printed twice: a GetSchema
  refused by authentication reads "<msg>. Detail: Unauthenticated. Detail:
  Unauthenticated" although the server sends the detail once (the same refusal of a
  GetFlightInfo reads "<msg>. Detail: Unauthenticated"), and the middleware that refuses the
  call has no call context to add or drop a trailer. ADBC and the JDBC driver prepare
  statements instead of calling GetSchema.
"""

from __future__ import annotations

import functools
import logging
import re
import secrets
import traceback

import pyarrow as pa
import pyarrow.flight as flight
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from flight_server.protocol import ProtocolError
from planner import errors as pe

log = logging.getLogger("thanosql.server")

# gRPC status codes (grpc/include/grpcpp/support/status_code_enum.h).
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
ALREADY_EXISTS = 6
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16

# The CamelCase names gRPC clients print (and ADBC shows in "(InvalidArgument; ...)").
CODE_NAMES = {
    CANCELLED: "Cancelled", UNKNOWN: "Unknown", INVALID_ARGUMENT: "InvalidArgument",
    DEADLINE_EXCEEDED: "DeadlineExceeded", NOT_FOUND: "NotFound", ALREADY_EXISTS: "AlreadyExists",
    PERMISSION_DENIED: "PermissionDenied", RESOURCE_EXHAUSTED: "ResourceExhausted",
    FAILED_PRECONDITION: "FailedPrecondition", UNIMPLEMENTED: "Unimplemented",
    INTERNAL: "Internal", UNAVAILABLE: "Unavailable", UNAUTHENTICATED: "Unauthenticated",
}
# ErrorInfo reasons are UPPER_SNAKE_CASE: the status names of the gRPC specification.
REASONS = {code: re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper() for code, name in CODE_NAMES.items()}
ERROR_DOMAIN = "thanosql"


class InvalidArgumentError(pa.ArrowInvalid):
    """Raised to pyarrow for INVALID_ARGUMENT (a ValueError is the only route)."""


class NotFoundError(pa.ArrowKeyError):
    """Raised to pyarrow for NOT_FOUND (a KeyError is the only route)."""


class UnimplementedError(pa.ArrowNotImplementedError):
    """Raised to pyarrow for UNIMPLEMENTED (a NotImplementedError is the only route)."""


# (project class, the status it means, the code that goes on the wire)
_RULES: list[tuple[type[BaseException], int, int]] = [
    (pe.InvalidInput, INVALID_ARGUMENT, INVALID_ARGUMENT),
    (ProtocolError, INVALID_ARGUMENT, INVALID_ARGUMENT),
    (pe.NotFound, NOT_FOUND, NOT_FOUND),
    (pe.AlreadyExists, ALREADY_EXISTS, INVALID_ARGUMENT),
    (pe.PermissionDenied, PERMISSION_DENIED, PERMISSION_DENIED),
    (pe.FailedPrecondition, FAILED_PRECONDITION, UNAVAILABLE),
    (pe.ResourceExhausted, RESOURCE_EXHAUSTED, UNAVAILABLE),
    (pe.DeadlineExceeded, DEADLINE_EXCEEDED, DEADLINE_EXCEEDED),
    (pe.Cancelled, CANCELLED, CANCELLED),
    (pe.Unsupported, UNIMPLEMENTED, UNIMPLEMENTED),
    (pe.Internal, INTERNAL, INTERNAL),
]

# FlightErrors the server may raise or pass through, and their wire codes.
_FLIGHT_CODES: list[tuple[type[flight.FlightError], int]] = [
    (flight.FlightUnauthenticatedError, UNAUTHENTICATED),
    (flight.FlightUnauthorizedError, PERMISSION_DENIED),
    (flight.FlightUnavailableError, UNAVAILABLE),
    (flight.FlightCancelledError, CANCELLED),
    (flight.FlightTimedOutError, DEADLINE_EXCEEDED),
    (flight.FlightInternalError, INTERNAL),
]

# Wire code -> the exception pyarrow turns into it.
_RAISE = {
    INVALID_ARGUMENT: InvalidArgumentError,
    NOT_FOUND: NotFoundError,
    UNIMPLEMENTED: UnimplementedError,
    PERMISSION_DENIED: flight.FlightUnauthorizedError,
    UNAVAILABLE: flight.FlightUnavailableError,
    DEADLINE_EXCEEDED: flight.FlightTimedOutError,
    CANCELLED: flight.FlightCancelledError,
    INTERNAL: flight.FlightInternalError,
    UNAUTHENTICATED: flight.FlightUnauthenticatedError,
}


# --- google.rpc.Status / google.rpc.ErrorInfo (the rich error model) ------------------

def _rpc_messages():
    """google.rpc.Status and google.rpc.ErrorInfo, declared here (no googleapis package).

    `details` is declared with its own message of Any's two fields, which is the same
    on the wire as google.protobuf.Any and keeps this file free of imports."""
    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="thanosql/google_rpc_status.proto",
                                            package="google.rpc", syntax="proto3")
    status = fd.message_type.add(name="Status")
    detail = status.nested_type.add(name="Detail")  # == google.protobuf.Any on the wire
    detail.field.add(name="type_url", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    detail.field.add(name="value", number=2, type=F.TYPE_BYTES, label=F.LABEL_OPTIONAL)
    status.field.add(name="code", number=1, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    status.field.add(name="message", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    status.field.add(name="details", number=3, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                     type_name=".google.rpc.Status.Detail")
    info = fd.message_type.add(name="ErrorInfo")  # field 3 (metadata map) left out: unused
    info.field.add(name="reason", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    info.field.add(name="domain", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()  # private: clear of any other google.rpc copy
    pool.AddSerializedFile(fd.SerializeToString())
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.ErrorInfo")))


RpcStatus, ErrorInfo = _rpc_messages()


def rpc_status(code: int, message: str, meant: int | None = None) -> bytes:
    """A serialized google.rpc.Status of `code`, with an ErrorInfo whose reason names the
    status the error means (which differs from `code` where pyarrow cannot send it)."""
    status = RpcStatus(code=code, message=message)
    info = ErrorInfo(reason=REASONS[code if meant is None else meant], domain=ERROR_DOMAIN)
    status.details.add(type_url="type.googleapis.com/google.rpc.ErrorInfo",
                       value=info.SerializeToString())
    return status.SerializeToString()


# --- classification -----------------------------------------------------------------

def _clean(message: str) -> str:
    """An Arrow message without the ". Detail: ..." Arrow appends to some."""
    return message.split(". Detail: ", 1)[0]


# Every client-visible message is cut to this many characters (plus a note saying how
# many were left out): an error may echo a statement or a nested plan of any size.
MAX_MESSAGE_CHARS = 2000


def capped(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`message`, or its first `limit` characters and "... (N characters omitted)"."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]}... ({len(message) - limit} characters omitted)"


def classify(exc: BaseException) -> tuple[int, int, str]:
    """(meant status, wire status, client message) for an exception; logs unexpected ones.
    The message is `capped`."""
    meant, wire, message = _classify(exc)
    return meant, wire, capped(message)


def _classify(exc: BaseException) -> tuple[int, int, str]:
    for source, meant, wire in _RULES:
        if isinstance(exc, source):
            if meant == INTERNAL:
                log.error("internal error: %s\n%s", exc, _format(exc))
            return meant, wire, str(exc)
    if isinstance(exc, flight.FlightError):
        for source, code in _FLIGHT_CODES:
            if isinstance(exc, source):
                return code, code, str(exc)
    if isinstance(exc, pa.ArrowInvalid):
        return INVALID_ARGUMENT, INVALID_ARGUMENT, _clean(str(exc))
    if isinstance(exc, pa.ArrowKeyError):
        return NOT_FOUND, NOT_FOUND, _clean(str(exc))
    if isinstance(exc, NotImplementedError):
        return UNIMPLEMENTED, UNIMPLEMENTED, _clean(str(exc)) or "not implemented"
    if isinstance(exc, pa.ArrowCancelled):
        return CANCELLED, CANCELLED, _clean(str(exc))
    incident = secrets.token_hex(6)
    log.error("incident %s: unexpected error\n%s", incident, _format(exc))
    return INTERNAL, INTERNAL, f"internal error (incident {incident}); the server log has the details"


def _format(exc: BaseException) -> str:
    # An explicit limit: sys.tracebacklimit is 0 in the server (see FlightSqlServer).
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=64))


def flight_error(code: int, message: str, meant: int | None = None) -> flight.FlightError:
    """A FlightError for one of the FlightError wire codes, clean for every client."""
    message = capped(message)
    return _RAISE[code](message, rpc_status(code, message, meant))


def client_error(exc: BaseException, context=None) -> BaseException:
    """The exception to raise to pyarrow for `exc`, with its trailers added to `context`."""
    meant, wire, message = classify(exc)
    if context is not None:
        try:
            # Read first by Arrow C++ clients, ahead of the detail Arrow adds.
            context.add_trailer("x-arrow-status-detail-bin", CODE_NAMES[meant])
            if wire in (INVALID_ARGUMENT, NOT_FOUND, UNIMPLEMENTED) and _reads_rich_status(context):
                context.add_trailer("grpc-status-details-bin", rpc_status(wire, message, meant))
        except Exception:  # noqa: BLE001 - a call already finished: the status still goes out
            pass
    if wire in (INVALID_ARGUMENT, NOT_FOUND, UNIMPLEMENTED):
        return _RAISE[wire](message)
    return flight_error(wire, message, meant)


def _reads_rich_status(context) -> bool:
    call = context.get_middleware("auth")
    return bool(call is not None and getattr(call, "reads_rich_status", False))


# Not errors of a request: let them through. Everything else is translated, including
# BaseExceptions that are not Exceptions (pyo3's PanicException, a Rust panic in DataFusion).
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)


def translated(method):
    """Decorator for RPC handlers `(self, context, ...)`: every exception leaves clean."""
    @functools.wraps(method)
    def wrapper(self, context, *args):
        try:
            return method(self, context, *args)
        except _PASS_THROUGH:
            raise
        except BaseException as exc:  # noqa: BLE001 - the point is to catch everything
            raise client_error(exc, context) from None
    wrapper.translated = True
    return wrapper


def translated_batches(batches, context=None):
    """Wrap a batch iterator so errors raised mid-stream are translated too."""
    try:
        yield from batches
    except _PASS_THROUGH:
        raise
    except BaseException as exc:  # noqa: BLE001
        raise client_error(exc, context) from None
