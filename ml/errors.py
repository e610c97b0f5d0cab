"""Errors raised by ``ml``.

One base class so the planner can map every ML failure to a Flight status in one place;
each subclass is a distinct situation a user can act on (wrong name, bad option, bad file,
no weights offline, a crashed or cancelled training).  Every class takes a single message
argument so an error raised in the training worker process can be rebuilt in the parent.
"""

from __future__ import annotations


class MLError(Exception):
    """Base class of every error raised by ``ml``."""


class ModelNotFound(MLError):
    """A statement names a model that has no ready version."""


class ModelExists(MLError):
    """BUILD (or FIT into another name) targets a name that is taken, without overwrite."""


class ModelBusy(MLError):
    """The model is being trained, so it cannot be deleted, replaced or used yet."""


class BadOptions(MLError):
    """An unknown option, a wrong type or value, an unknown model class or a bad name."""


class UnknownModelClass(BadOptions):
    """``USING <Class>`` names a class this server cannot build."""


class AudioError(MLError):
    """An audio file is missing, unreadable or empty; the message names the path and row."""

    def __init__(self, message: str, path: str | None = None, row: int | None = None):
        super().__init__(message)
        self.path = path
        self.row = row

    def __reduce__(self):  # keep path/row across pickling (worker process -> parent)
        return (type(self), (str(self), self.path, self.row))


class AudioTooLong(AudioError):
    """An audio file is longer than a limit (max_duration); the message names the option.

    Kept apart from AudioError so callers can tell a limit from a broken file (BUILD's
    too_long='skip' skips only these)."""


class CheckpointUnavailable(MLError):
    """No base checkpoint can be reached (offline, not cached, not a folder)."""


class TrainingFailed(MLError):
    """Training raised or the worker process died; nothing was registered."""


class Cancelled(MLError):
    """A statement was cancelled by its client."""


class TrainingCancelled(Cancelled):
    """Training was cancelled; the run is marked cancelled and nothing is visible."""


class NoCapacity(MLError):
    """The cluster cannot hold what a statement asked for (replicas, workers, GPUs)."""
