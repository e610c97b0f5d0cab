"""Errors the planner raises; each maps to one gRPC status in flight_server.errors.

They carry a message meant for the client: short, naming the offending thing, and
listing what would have been valid where that helps.
"""

import ast
import re


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


# A Python exception raised inside a Python function DataFusion called (an ML SQL
# function reached through a view, say) comes back as Rust's Debug form of it.
_PYERR = re.compile(r"PyErr \{ type: <class '(?:[\w.]*\.)?(\w+)'>, value: \w+\((.*)\), traceback: ", re.S)
_NOT_FOUND_NAMES = ("NotFound", "ModelNotFound", "FileNotFoundError")


def datafusion_error(exc: Exception) -> PlannerError:
    """DataFusion's message, without its Rust-side prefixes, as the right planner error."""
    message = str(exc).strip()
    for prefix in ("DataFusion error: ", "Execution error: "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    raised = _PYERR.search(message)
    if raised is not None:
        return _python_error(raised.group(1), raised.group(2))
    lowered = message.lower()
    if ("not found" in lowered and ("table" in lowered or "schema" in lowered)):
        return NotFound(message)
    if "not implemented" in lowered or "unsupported" in lowered:
        return Unsupported(message)
    return InvalidInput(message)


def _python_error(name: str, args_text: str) -> PlannerError:
    """The planner error a Python exception inside DataFusion stands for: its own class
    when it is one of ours, its message without the Python class name or traceback."""
    try:
        args = ast.literal_eval(f"({args_text},)")
        message = str(args[0]) if args else name
    except (ValueError, SyntaxError):
        message = args_text.strip("'\"")
    cls = globals().get(name)
    if isinstance(cls, type) and issubclass(cls, PlannerError):
        return cls(message)
    if name in _NOT_FOUND_NAMES:
        return NotFound(message)
    return InvalidInput(message)
