"""Errors the planner raises; each maps to one gRPC status in flight_server.errors.

They carry a message meant for the client: short, naming the offending thing, and
listing what would have been valid where that helps.
"""


class PlannerError(Exception):
    """Base class: a request failed for a reason the client should see."""


class InvalidInput(PlannerError):
    """Bad SQL, bad options, wrong parameters (INVALID_ARGUMENT)."""


class NotFound(PlannerError):
    """An unknown table, model or file (NOT_FOUND)."""


class AlreadyExists(PlannerError):
    """A table or model that must not exist does (ALREADY_EXISTS)."""


class PermissionDenied(PlannerError):
    """A path outside the allowed roots (PERMISSION_DENIED)."""


class Cancelled(PlannerError):
    """The client cancelled the statement (CANCELLED)."""


class Unsupported(PlannerError):
    """A statement this server does not implement (UNIMPLEMENTED)."""


class Internal(PlannerError):
    """An unexpected failure; the message is safe to show (INTERNAL)."""


class FailedPrecondition(PlannerError):
    """The object is in the wrong state for the request, e.g. a model still training
    (FAILED_PRECONDITION)."""


class ResourceExhausted(PlannerError):
    """A limit was hit: statement size or depth, audio length, disk full, too many failed
    logins (RESOURCE_EXHAUSTED)."""


class DeadlineExceeded(PlannerError):
    """The statement ran past its timeout (DEADLINE_EXCEEDED)."""


def datafusion_error(exc: Exception) -> PlannerError:
    """DataFusion's message, without its Rust-side prefixes, as the right planner error."""
    message = str(exc).strip()
    for prefix in ("DataFusion error: ", "Execution error: "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    lowered = message.lower()
    if ("not found" in lowered and ("table" in lowered or "schema" in lowered)):
        return NotFound(message)
    if "not implemented" in lowered or "unsupported" in lowered:
        return Unsupported(message)
    return InvalidInput(message)
