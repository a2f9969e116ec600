"""The error taxonomy: ten kinds of step failure and what happens to each.

Every kind subclasses `StepError`. Where Python has a matching built-in, the
kind subclasses it too, so existing ``except`` clauses keep catching it::

    StepError
    ├── retried in the run, then stored with auto-retry
    │   ├── ConnectionError          (also builtins.ConnectionError)
    │   ├── RateLimitError           (carries retry_after, in seconds)
    │   ├── OutOfSpaceError          (also builtins.OSError)
    │   └── ModuleTimeoutError       (also builtins.TimeoutError)
    └── not retried, stored for a person
        ├── DataError                (also builtins.ValueError)
        ├── InvalidConfigurationError
        ├── InvalidAccessTokenError
        ├── UnexpectedError
        ├── MaxFileSizeExceededError
        └── MaxResultsExceededError

A failure of the first task run of a flow run, and an exception that no rule
classifies, are outside the taxonomy's reach: the run fails as it would
without the plugin.
"""

from __future__ import annotations

import builtins
import enum
from typing import ClassVar

__all__ = [
    "KINDS",
    "ConnectionError",
    "DataError",
    "Disposition",
    "InvalidAccessTokenError",
    "InvalidConfigurationError",
    "MaxFileSizeExceededError",
    "MaxResultsExceededError",
    "ModuleTimeoutError",
    "OutOfSpaceError",
    "RateLimitError",
    "StepError",
    "UnexpectedError",
    "kind_named",
]


class Disposition(enum.StrEnum):
    """What the plugin does with a failure of a given kind."""

    AUTO_RETRY = "auto-retry"
    """Retried in the run; once retries are used up, stored with auto-retry."""

    MANUAL = "manual"
    """Not retried; stored for a person to correct and resume."""


class StepError(Exception):
    """A step failed in a way the taxonomy knows."""

    disposition: ClassVar[Disposition] = Disposition.MANUAL

    @classmethod
    def retryable(cls) -> bool:
        """Whether the kind is retried in the run and auto-retried once stored."""
        return cls.disposition is Disposition.AUTO_RETRY


class ConnectionError(StepError, builtins.ConnectionError):
    """The service could not be reached. Retried, then stored with auto-retry."""

    disposition = Disposition.AUTO_RETRY


class RateLimitError(StepError):
    """The service asked to slow down. Retried no sooner than it asked."""

    disposition = Disposition.AUTO_RETRY

    def __init__(self, message: str = "", *, retry_after: float | None = None):
        super().__init__(message)
        if retry_after is not None and retry_after < 0:
            retry_after = 0.0
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_rate_limit, (str(self), self.retry_after))


def _rebuild_rate_limit(message: str, retry_after: float | None) -> RateLimitError:
    return RateLimitError(message, retry_after=retry_after)


class OutOfSpaceError(StepError, builtins.OSError):
    """A disk or quota is full. Retried, then stored with auto-retry."""

    disposition = Disposition.AUTO_RETRY


class ModuleTimeoutError(StepError, builtins.TimeoutError):
    """A step took too long. Retried, then stored with auto-retry."""

    disposition = Disposition.AUTO_RETRY


class DataError(StepError, builtins.ValueError):
    """The step's input is wrong. Stored for a person to correct."""


class InvalidConfigurationError(StepError):
    """The step is set up wrongly. Stored for a person to fix the setup."""


class InvalidAccessTokenError(StepError):
    """Credentials were refused or have expired. Stored until renewed."""


class UnexpectedError(StepError):
    """The service answered in a way the step did not expect. Stored."""


class MaxFileSizeExceededError(StepError):
    """A file is larger than the service accepts. Stored."""


class MaxResultsExceededError(StepError):
    """More results came back than the step may handle. Stored."""


KINDS: tuple[type[StepError], ...] = (
    ConnectionError,
    RateLimitError,
    OutOfSpaceError,
    ModuleTimeoutError,
    DataError,
    InvalidConfigurationError,
    InvalidAccessTokenError,
    UnexpectedError,
    MaxFileSizeExceededError,
    MaxResultsExceededError,
)
"""Every kind, retryable ones first, in the order of the documentation."""

_BY_NAME = {kind.__name__: kind for kind in KINDS}


def kind_named(name: str) -> type[StepError]:
    """The kind called `name`, or a `ValueError` that lists the valid names."""
    try:
        return _BY_NAME[name]
    except KeyError:
        valid = ", ".join(_BY_NAME)
        raise ValueError(
            f"unknown error kind {name!r}; expected one of: {valid}"
        ) from None
