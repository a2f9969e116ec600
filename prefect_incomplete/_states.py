"""Read what a Prefect state holds, safely from sync and async code alike."""

from __future__ import annotations

from typing import Any

from prefect.client.schemas.objects import State

__all__ = ["exception_of", "value_of"]


def value_of(state: State[Any]) -> Any:
    """The value of a completed state, without an event loop's help."""
    return state.result(raise_on_failure=False, _sync=True)  # type: ignore[call-overload]


def exception_of(state: State[Any]) -> BaseException:
    """The exception behind a failed or crashed state."""
    if isinstance(state.data, BaseException):
        return state.data
    try:
        value = state.result(raise_on_failure=False, _sync=True)  # type: ignore[call-overload]
    except BaseException as exc:  # loading the result failed: that is the error
        return exc
    if isinstance(value, BaseException):
        return value
    return RuntimeError(state.message or f"the step ended in state {state.name}")
