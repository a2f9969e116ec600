"""`resumable`: the one decorator, for tasks and flows alike."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from prefect import Flow, Task

__all__ = ["resumable"]

T = TypeVar("T", bound="Task[Any, Any] | Flow[Any, Any]")

_TASK_OPTIONS = ("step", "policies")
_STEP_NAME = re.compile(r"[\w-]+")
"""What `--set STEP[N].ARG=VALUE` can name: no '.', '[', ']', '=' or spaces."""
_FLOW_OPTIONS = (
    "store",
    "auto_retry_schedule",
    "sequential",
    "data_loss",
    "confidential",
    "consecutive_errors",
    "flow_quota_count",
    "flow_quota_bytes",
)


@overload
def resumable(obj: T, /) -> T: ...


@overload
def resumable(
    *,
    step: str | None = None,
    policies: Mapping[Any, Any] | None = None,
    store: bool | None = None,
    auto_retry_schedule: list[float] | tuple[float, ...] | None = None,
    sequential: bool | None = None,
    data_loss: bool | None = None,
    confidential: bool | None = None,
    consecutive_errors: int | None = None,
    flow_quota_count: int | None = None,
    flow_quota_bytes: int | None = None,
) -> Callable[[T], T]: ...


def resumable(obj: Any = None, /, **options: Any) -> Any:
    """Make a Prefect task or flow resumable; put it above ``@task``/``@flow``.

    On a task: failures are classified and retried by kind. ``step`` names the
    step (default: the task's name); ``policies`` overrides retry policies per
    kind, e.g. ``{"RateLimitError": {"attempts": 5}}`` or a `RetryPolicy`.
    The task's own ``retries``/``retry_delay_seconds`` override the policies'
    attempts and delays.

    On a flow: a failed step that a person must look at is stored as an
    incomplete execution and the run ends ``Incomplete``. Its options, each
    overriding the ``PREFECT_INCOMPLETE_*`` setting of the same name: ``store``,
    ``auto_retry_schedule`` (seconds between automatic retries),
    ``sequential``, ``data_loss``, ``confidential``, ``consecutive_errors``,
    ``flow_quota_count`` and ``flow_quota_bytes``.

    Misuse (a negative count, a policy for an unknown or non-retryable kind,
    a task option on a flow, a ``step`` name that is not letters, digits, ``_``
    and ``-``) raises at decoration time.
    """
    unknown = sorted(set(options) - {*_TASK_OPTIONS, *_FLOW_OPTIONS})
    if unknown:
        raise TypeError(
            f"resumable() got an unknown option {unknown[0]!r}; it takes "
            f"{', '.join(_TASK_OPTIONS)} for tasks and {', '.join(_FLOW_OPTIONS)} "
            "for flows"
        )
    _check_step(options.get("step"))
    if obj is None:
        return lambda target: _apply(target, options)
    return _apply(obj, options)


def _check_step(step: Any) -> None:
    if step is None or (isinstance(step, str) and _STEP_NAME.fullmatch(step)):
        return
    raise ValueError(
        f"resumable(step={step!r}) cannot name a step: use letters, digits, _ and "
        "- only, as prefect-incomplete resume --set STEP[N].ARG=VALUE names the "
        "step by it"
    )


def _apply(obj: Any, options: dict[str, Any]) -> Any:
    given = {name for name, value in options.items() if value is not None}
    if isinstance(obj, Task):
        misplaced = sorted(given & set(_FLOW_OPTIONS))
        if misplaced:
            raise TypeError(
                f"{misplaced[0]} is an option of a resumable flow, not of task "
                f"{obj.name!r}"
            )
        from prefect_incomplete._task import make_resumable_task

        return make_resumable_task(
            obj, step=options.get("step"), policies=options.get("policies")
        )

    if isinstance(obj, Flow):
        misplaced = sorted(given & set(_TASK_OPTIONS))
        if misplaced:
            raise TypeError(
                f"{misplaced[0]} is an option of a resumable task, not of flow "
                f"{obj.name!r}"
            )
        from prefect_incomplete._flow import make_resumable_flow

        return make_resumable_flow(obj, _flow_config(options))

    raise TypeError(
        "resumable applies to a Prefect task or flow: put it above @task or "
        f"@flow, not on {type(obj).__name__} {getattr(obj, '__name__', obj)!r}"
    )


def _flow_config(options: dict[str, Any]) -> Any:
    from prefect_incomplete._flow import FlowConfig

    for name in ("consecutive_errors", "flow_quota_count", "flow_quota_bytes"):
        value = options.get(name)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be a whole number >= 0, not {value!r}")
    schedule = options.get("auto_retry_schedule")
    if schedule is not None and any(delay < 0 for delay in schedule):
        raise ValueError("auto_retry_schedule delays must be >= 0 seconds")
    values = {name: options.get(name) for name in _FLOW_OPTIONS}
    if schedule is not None:
        values["auto_retry_schedule"] = tuple(schedule)
    return FlowConfig(**values)
