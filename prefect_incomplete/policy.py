"""Retry policies: how often and how soon a failed step is tried again in-run.

Only the retryable kinds (disposition ``auto-retry``) have a policy. Each
kind has a default; settings (``PREFECT_INCOMPLETE_POLICIES``) override it
globally and `resumable(policies=...)` per task. A delay grows by ``backoff``
per attempt up to ``max_delay``, is spread by ``jitter`` (a fraction of the
delay, added at random) and is never shorter than a rate limit's Retry-After.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prefect_incomplete import errors
from prefect_incomplete.errors import StepError

__all__ = ["DEFAULT_POLICIES", "RetryPolicy", "resolve_policies"]


class RetryPolicy(BaseModel):
    """In-run retries of one kind."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attempts: int = Field(ge=0, le=50, description="Retries after the first try.")
    delay: float = Field(ge=0, description="Seconds before the first retry.")
    backoff: float = Field(default=2.0, ge=1, description="Growth factor per retry.")
    max_delay: float = Field(default=60.0, ge=0, description="Longest delay, seconds.")
    jitter: float = Field(default=0.25, ge=0, le=1, description="Random share added.")

    def delay_for(
        self,
        retry: int,
        *,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> float:
        """Seconds to wait before retry number `retry` (1 for the first)."""
        base = min(self.delay * self.backoff ** (retry - 1), self.max_delay)
        spread = base * self.jitter * (rng or random).random()
        return max(base + spread, retry_after or 0.0)


DEFAULT_POLICIES: Mapping[type[StepError], RetryPolicy] = {
    errors.ConnectionError: RetryPolicy(attempts=3, delay=1.0),
    errors.RateLimitError: RetryPolicy(attempts=3, delay=2.0, max_delay=120.0),
    errors.OutOfSpaceError: RetryPolicy(attempts=2, delay=5.0),
    errors.ModuleTimeoutError: RetryPolicy(attempts=2, delay=2.0),
}
"""The defaults: a few retries with short, jittered, growing delays."""


def resolve_policies(
    *overrides: Mapping[Any, RetryPolicy | Mapping[str, Any]] | None,
) -> dict[type[StepError], RetryPolicy]:
    """The defaults with each mapping of `overrides` laid over them, in order.

    A key is a kind (class or name); a value is a `RetryPolicy` or a mapping of
    the fields to change. Raises `ValueError` for an unknown or non-retryable
    kind and for a field that is out of range.
    """
    policies = dict(DEFAULT_POLICIES)
    for layer in overrides:
        for key, value in (layer or {}).items():
            kind = _retryable_kind(key)
            policies[kind] = _merge(policies[kind], value, kind)
    return policies


def _retryable_kind(key: object) -> type[StepError]:
    if isinstance(key, str):
        kind = errors.kind_named(key)
    elif isinstance(key, type) and issubclass(key, StepError) and key in errors.KINDS:
        kind = key
    else:
        raise ValueError(f"a retry policy needs an error kind, not {key!r}")
    if not kind.retryable():
        retryable = ", ".join(k.__name__ for k in DEFAULT_POLICIES)
        raise ValueError(
            f"{kind.__name__} is never retried in the run (it waits for a person); "
            f"policies exist for: {retryable}"
        )
    return kind


def _merge(
    base: RetryPolicy, value: RetryPolicy | Mapping[str, Any], kind: type[StepError]
) -> RetryPolicy:
    if isinstance(value, RetryPolicy):
        return value
    try:
        return RetryPolicy.model_validate({**base.model_dump(), **dict(value)})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"bad retry policy for {kind.__name__}: {problems}") from None
