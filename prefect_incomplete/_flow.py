"""Resumable flows: the wrapper that turns a failed step into a record.

`make_resumable_flow` wraps the flow's function and builds a new `Flow` with
every option of the old one. The wrapper:

1. opens the run's ledger (and, for a resume, loads the record it resumes
   and takes over the claim on it);
2. calls the user's function;
3. on success of a resume, marks the record resolved;
4. on failure, decides whether the failure is an incomplete execution: the
   exception must be the failure of a resumable step that was not the first
   step, its kind must be a known one, and the flow's own retries must be
   used up. Then the record is stored (or, for a resume, updated) and the
   run ends in a ``Failed`` state named ``Incomplete``. Otherwise the
   exception goes on as it would without the plugin.

The wrapper adds one keyword parameter, ``incomplete_execution_id``, so that a
deployment run (from `run_deployment`, a trigger, or the UI's custom-run form)
can say which record it resumes.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect import Flow
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.states import Failed

from prefect_incomplete._ledger import Ledger, Step, current_ledger
from prefect_incomplete._recording import flow_run_id_of
from prefect_incomplete._resuming import ResumeRefused

__all__ = ["RESUME_PARAMETER", "FlowConfig", "PendingResume", "make_resumable_flow"]

logger = logging.getLogger("prefect_incomplete")

RESUME_PARAMETER = "incomplete_execution_id"
RUNNING_STEPS_GRACE_SECONDS = 60
"""How long a failed async run waits for its other running steps to end."""
CLAIM_TAG_PREFIX = "prefect-incomplete-claim:"


@dataclass(frozen=True)
class FlowConfig:
    """What `resumable` was told about one flow."""

    store: bool | None = None
    """Store incomplete executions; None follows the setting."""

    auto_retry_schedule: tuple[float, ...] | None = None
    """Seconds between automatic retries; None follows the setting."""

    sequential: bool | None = None
    data_loss: bool | None = None
    confidential: bool | None = None
    consecutive_errors: int | None = None
    flow_quota_count: int | None = None
    flow_quota_bytes: int | None = None
    """Each None follows the setting of the same name."""


@dataclass(frozen=True)
class PendingResume:
    """A resume started in this process: the record and the claim's holder."""

    record_id: UUID
    claim: str
    parameters_override: dict[str, Any] | None = None
    step_edits: dict[str, dict[str, Any]] | None = None


pending_resume: ContextVar[PendingResume | None] = ContextVar(
    "prefect_incomplete_pending_resume", default=None
)

_retrying: dict[UUID, UUID] = {}
"""Flow run id -> record id: resumed runs whose own flow retries go on.

Prefect runs a flow's retries in the same process, calling the flow's function
again. An attempt that fails with retries left puts its record here; the next
attempt takes it out, keeps the claim and replays the record again."""


def make_resumable_flow(flow: Flow[Any, Any], config: FlowConfig) -> Flow[Any, Any]:
    """A copy of `flow` whose runs keep a ledger and store incomplete executions."""
    original = getattr(flow.fn, "__prefect_incomplete_original__", flow.fn)
    try:
        signature = inspect.signature(original, eval_str=True)
    except Exception:  # annotations that do not evaluate: Prefect copes with strings
        signature = inspect.signature(original)
    if RESUME_PARAMETER in signature.parameters:
        raise ValueError(
            f"flow {flow.name!r} has a parameter named {RESUME_PARAMETER!r}, which "
            "resumable flows use to name the record they resume; rename it"
        )

    wrapper = _wrap(original, flow, config)
    wrapper.__signature__ = _with_resume_parameter(signature)  # type: ignore[attr-defined]
    wrapper.__prefect_incomplete_original__ = original  # type: ignore[attr-defined]
    wrapper.__prefect_incomplete_config__ = config  # type: ignore[attr-defined]

    shell = copy.copy(flow)
    shell.fn = wrapper
    new = shell.with_options()
    new._entrypoint = flow._entrypoint
    return new


def _with_resume_parameter(signature: inspect.Signature) -> inspect.Signature:
    extra = inspect.Parameter(
        RESUME_PARAMETER,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation="str | None",
    )
    parameters = list(signature.parameters.values())
    var_keyword = [p for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD]
    others = [p for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD]
    return signature.replace(parameters=[*others, extra, *var_keyword])


def _wrap(
    original: Callable[..., Any], flow: Flow[Any, Any], config: FlowConfig
) -> Callable[..., Any]:
    """The flow's new function. It refers to nothing but its closure and an
    import, so that cloudpickle (which ``serve`` uses to hand a flow to its run
    process) can copy it by value."""
    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            from prefect_incomplete._flow import call_async

            return await call_async(config, original, args, kwargs)

        return run_async

    @functools.wraps(original)
    def run_sync(*args: Any, **kwargs: Any) -> Any:
        from prefect_incomplete._flow import call_sync

        return call_sync(config, original, args, kwargs)

    return run_sync


def call_sync(
    config: FlowConfig,
    original: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """One run of a sync resumable flow: ledger, the user's function, outcome."""
    record_id = kwargs.pop(RESUME_PARAMETER, None)
    try:
        run = _Run.begin(config, original, record_id)
    except ResumeRefused as refused:
        return not_resumed(refused)
    held = run.held()
    if held is not None:
        return held
    token = current_ledger.set(run.ledger)
    try:
        args, kwargs = run.arguments(args, kwargs)
        result = original(*args, **kwargs)
    except Exception as exc:
        return run.failed(exc)
    except BaseException:
        run.crashed()
        raise
    finally:
        current_ledger.reset(token)
        run.stop_lease()
    run.succeeded()
    return result


async def call_async(
    config: FlowConfig,
    original: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """One run of an async resumable flow, as `call_sync` for sync ones."""
    record_id = kwargs.pop(RESUME_PARAMETER, None)
    try:
        run = _Run.begin(config, original, record_id)
    except ResumeRefused as refused:
        return not_resumed(refused)
    held = run.held()
    if held is not None:
        return held
    token = current_ledger.set(run.ledger)
    try:
        args, kwargs = run.arguments(args, kwargs)
        result = await original(*args, **kwargs)
    except Exception as exc:
        await run.finish_running()
        return run.failed(exc)
    except BaseException:
        run.crashed()
        raise
    finally:
        current_ledger.reset(token)
        run.stop_lease()
    run.succeeded()
    return result


class _Run:
    """One run of a resumable flow, as the wrapper sees it."""

    def __init__(
        self,
        config: FlowConfig,
        original: Callable[..., Any],
        ledger: Ledger,
        context: FlowRunContext | None,
    ) -> None:
        self.config = config
        self.original = original
        self.ledger = ledger
        self.context = context

    @classmethod
    def begin(
        cls, config: FlowConfig, original: Callable[..., Any], record_id: Any
    ) -> _Run:
        context = FlowRunContext.get()
        ledger = Ledger()
        pending = pending_resume.get()
        if pending is not None:
            pending_resume.set(None)
        retried = _retrying.pop(flow_run_id_of(context), None)  # type: ignore[arg-type]  # None is never a key
        if record_id is None and pending is None:
            record_id = retried
        if record_id or pending is not None:
            from prefect_incomplete._controls import settings_for
            from prefect_incomplete._resuming import take_over

            sequential = settings_for(config).sequential
            take_over(ledger, context, record_id, pending, sequential=sequential)
        return cls(config, original, ledger, context)

    def held(self) -> State[Any] | None:
        """With sequential processing, the state of a run that must not start."""
        from prefect_incomplete._controls import record_blocking, settings_for

        if self.ledger.record is not None or self.context is None:
            return None
        if not settings_for(self.config).sequential:
            return None
        from prefect.states import Cancelled

        from prefect_incomplete.store import Store

        flow = self.context.flow
        flow_name = flow.name if flow else ""
        store = Store()
        blocking = record_blocking(store, flow_name)
        if blocking is None:
            return None
        flow_run = self.context.flow_run
        if flow_run is not None and flow_run.deployment_id is not None:
            from prefect_incomplete._controls import hold

            hold(store, flow_run.deployment_id, flow_name, "sequential", {})
        message = (
            f"Held by sequential processing: flow {flow_name} has an open incomplete "
            f"execution, {blocking.short_id} ({blocking.status.value}); no task ran. "
            f"Resume it with: prefect-incomplete resume {blocking.short_id}, or "
            f"discard it with: prefect-incomplete discard {blocking.short_id}"
        )
        logger.warning(message)
        return Cancelled(name="Held", message=message)

    def arguments(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """What to call the flow's function with: a resume takes the record's
        parameters (with any edits), whatever the run was started with."""
        if self.ledger.parameters is None:
            return args, kwargs
        return (), dict(self.ledger.parameters)

    async def finish_running(self) -> None:
        """Before deciding on a failure, let the async steps still running end."""
        late = await self.ledger.finish_running(RUNNING_STEPS_GRACE_SECONDS)
        if late:
            logger.warning(
                "%d step(s) still running %d s after the failure (%s) are not "
                "recorded as completed; a resume runs them again",
                len(late),
                RUNNING_STEPS_GRACE_SECONDS,
                ", ".join(step.key for step in late),
            )

    def stop_lease(self) -> None:
        if self.ledger.lease is not None:
            self.ledger.lease.stop()

    def succeeded(self) -> None:
        self.stop_lease()
        if self.ledger.record is None:
            return
        from prefect_incomplete._resuming import resolved

        resolved(self.ledger, self.context)

    def failed(self, exc: Exception) -> State[Any]:
        """The run's final state for `exc`; raises `exc` when nothing is stored."""
        from prefect_incomplete._recording import store_failure

        self.stop_lease()
        step = self._step_that_failed(exc)
        state = store_failure(self.ledger, self.context, self.config, exc, step)
        note = self._count_error(exc, step)
        if state is None:
            self._after_unstored_failure()
            if note is None:
                raise exc
            return Failed(message=f"{type(exc).__name__}: {exc}. {note}", data=exc)
        if note is not None:
            state.message = f"{state.message} {note}"
        return state

    def _after_unstored_failure(self) -> None:
        """A resume failed without storing: keep the claim for the flow's own
        next retry, else give it back."""
        from prefect_incomplete._recording import flow_retries_left
        from prefect_incomplete._resuming import release

        record, context = self.ledger.record, self.context
        if record is None or context is None or context.flow_run is None:
            return
        if flow_retries_left(context):
            _retrying[context.flow_run.id] = record.id  # read by the next attempt
            return
        release(self.ledger, context)

    def crashed(self) -> None:
        """The run is ending by a signal or an interrupt: give the claim back."""
        self.stop_lease()
        if self.ledger.record is None:
            return
        from prefect_incomplete._resuming import release

        release(self.ledger, self.context, crashed=True)

    def _count_error(self, exc: Exception, step: Step | None) -> str | None:
        """Count the failure toward the deployment's consecutive-errors limit."""
        context = self.context
        if context is None or context.flow_run is None:
            return None
        if context.flow_run.deployment_id is None:
            return None
        from prefect_incomplete._classify import classify
        from prefect_incomplete._controls import (
            count_error,
            counts_as_error,
            settings_for,
        )
        from prefect_incomplete.store import Store

        kind = classify(exc) if step is not None else None
        first = step is None or step.first
        if not counts_as_error(kind.__name__ if kind else None, first):
            return None
        return count_error(context, settings_for(self.config), Store)

    def _step_that_failed(self, exc: Exception) -> Step | None:
        """The step whose failure reached the flow body as `exc`, if any."""
        from prefect.exceptions import UpstreamTaskError

        failed = [s for s in self.ledger.settled() if s.exception is not None]
        for step in failed:
            if step.exception is exc:
                return step
        for step in failed:
            same = type(step.exception) is type(exc) and str(step.exception) == str(exc)
            if same or isinstance(exc, UpstreamTaskError):
                return step
        return None


def not_resumed(refused: Exception) -> State[Any]:
    """The final state of a resume that found its record taken or closed."""
    from prefect.states import Cancelled

    logger.warning("Not resumed: %s", refused)
    return Cancelled(name="NotResumed", message=str(refused))


def incomplete_state(message: str, exc: BaseException) -> State[Any]:
    """The final state of a run that stored a record."""
    return Failed(name="Incomplete", message=message, data=exc)
