"""`resumable`: the one decorator, for tasks and flows alike."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from prefect import Flow, Task

__all__ = ["resumable"]

T = TypeVar("T", bound="Task[Any, Any] | Flow[Any, Any]")


@overload
def resumable(obj: T, /) -> T: ...


@overload
def resumable(
    *,
    step: str | None = None,
    policies: Mapping[Any, Any] | None = None,
    store: bool | None = None,
    auto_retry_schedule: list[float] | tuple[float, ...] | None = None,
) -> Callable[[T], T]: ...


def resumable(
    obj: Any = None,
    /,
    *,
    step: str | None = None,
    policies: Mapping[Any, Any] | None = None,
    store: bool | None = None,
    auto_retry_schedule: list[float] | tuple[float, ...] | None = None,
) -> Any:
    """Make a Prefect task or flow resumable; use it above ``@task``/``@flow``.

    On a task: failures are classified and retried by kind. ``step`` names the
    step (default: the task's name); ``policies`` overrides retry policies per
    kind, e.g. ``{"RateLimitError": {"attempts": 5}}`` or a `RetryPolicy`.
    The task's own ``retries``/``retry_delay_seconds`` override the policies'
    attempts and delays.

    On a flow: a failed step that a person must look at is stored as an
    incomplete execution and the run ends ``Incomplete``. ``store`` turns
    storing on or off for this flow; ``auto_retry_schedule`` gives the
    seconds between automatic retries of its records.

    Misuse (a negative retry count, a policy for an unknown or non-retryable
    kind, a task option on a flow) raises at decoration time.
    """
    if obj is None:
        return lambda target: _apply(target, step, policies, store, auto_retry_schedule)
    return _apply(obj, step, policies, store, auto_retry_schedule)


def _apply(
    obj: Any,
    step: str | None,
    policies: Mapping[Any, Any] | None,
    store: bool | None,
    schedule: list[float] | tuple[float, ...] | None,
) -> Any:
    if isinstance(obj, Task):
        if store is not None or schedule is not None:
            raise TypeError(
                "store and auto_retry_schedule are options of a resumable flow, "
                f"not of task {obj.name!r}"
            )
        from prefect_incomplete._task import make_resumable_task

        return make_resumable_task(obj, step=step, policies=policies)

    if isinstance(obj, Flow):
        if step is not None or policies is not None:
            raise TypeError(
                "step and policies are options of a resumable task, "
                f"not of flow {obj.name!r}"
            )
        from prefect_incomplete._flow import FlowConfig, make_resumable_flow

        if schedule is not None and any(d < 0 for d in schedule):
            raise ValueError("auto_retry_schedule delays must be >= 0 seconds")
        config = FlowConfig(
            store=store,
            auto_retry_schedule=tuple(schedule) if schedule is not None else None,
        )
        return make_resumable_flow(obj, config)

    raise TypeError(
        "resumable applies to a Prefect task or flow: put it above @task or "
        f"@flow, not on {type(obj).__name__} {getattr(obj, '__name__', obj)!r}"
    )
