"""Errors that speak to the user.

Each carries one sentence saying what is wrong and how to fix it. The launchers print that
sentence as the last line and exit with `exit_code`: 2 for usage errors (config name, key,
type), 1 for data, checkpoint and training errors.
"""


class ProtojaxError(Exception):
    """Base class of the errors a launcher reports as one sentence."""

    exit_code = 1


class UsageError(ProtojaxError, ValueError):
    """A bad config name, key or value type."""

    exit_code = 2


class DataError(ProtojaxError):
    """A missing, empty or unreadable dataset, or data of the wrong shape or dtype."""


class CheckpointError(ProtojaxError):
    """A corrupt checkpoint, or one that does not match the model being run."""


class WorkdirError(ProtojaxError):
    """A work directory written by a run with another configuration."""


class NonFiniteError(ProtojaxError):
    """A loss term or parameter became NaN or infinite during training."""
