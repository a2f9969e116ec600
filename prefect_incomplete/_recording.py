"""Decide whether a failed run is an incomplete execution, and store it.

Called by the flow wrapper only when the flow body raised, so the happy path
never gets here. Every step of the decision is logged in one line.
"""

from __future__ import annotations

import logging
import traceback
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext

from prefect_incomplete import _clock
from prefect_incomplete._classify import classify
from prefect_incomplete._ledger import COMPLETED, REPLAYED, Ledger, Step
from prefect_incomplete.errors import Disposition

if TYPE_CHECKING:
    from prefect_incomplete._flow import FlowConfig
    from prefect_incomplete.models import (
        FailedStep,
        IncompleteExecution,
        StepOutput,
    )

__all__ = ["flow_retries_left", "flow_run_id_of", "store_failure"]

logger = logging.getLogger("prefect_incomplete")


def store_failure(
    ledger: Ledger,
    context: FlowRunContext | None,
    config: FlowConfig,
    exc: Exception,
    step: Step | None,
) -> State[Any] | None:
    """Store the record for `exc` and give the run's final state, or None.

    None means the failure is not an incomplete execution (or could not be
    stored): the caller lets `exc` go on as it would without the plugin.
    """
    from prefect_incomplete._controls import settings_for

    log = _logger()
    settings = settings_for(config)
    why_not = _why_not_stored(context, settings, exc, step)
    if why_not:
        log.info("No incomplete execution stored: %s", why_not)
        return None
    assert step is not None
    assert context is not None
    assert context.flow_run is not None

    from prefect_incomplete._serialize import ValueTooLarge
    from prefect_incomplete.store import ClaimLost, Store, StoreError

    secret = settings.confidential
    try:
        settled = list(ledger.settled())
        secrets = _secret_texts(context, settled)
        failed = [
            _failed_step(s, secret, secrets) for s in settled if s.outcome == "failed"
        ]
        completed = [
            _step_output(s, secret, secrets) for s in settled if s.outcome in _DONE
        ]
        store = Store()
        if ledger.record is None:
            new = _new_record(context, config, failed, completed, secret, secrets)
            refused = _over_quota(store, settings, new, exc, step)
            if refused is not None:
                return refused if refused.name != "Dropped" else None
            record = store.add(new)
            _hold_if_sequential(store, settings, record)
        else:
            record = _update_record(
                store, ledger.record, context, config, failed, completed
            )
    except ClaimLost as lost:
        log.warning("This resume's failure was not recorded: %s", lost)
        return None
    except (ValueTooLarge, StoreError) as lost:
        log.error(
            "The incomplete execution of step %s was NOT stored, so it cannot be "
            "resumed: %s. The run fails with the original error.",
            step.key,
            lost,
        )
        return None

    _publish(record, "stored", step)
    if record.deployment_id is not None and record.next_retry_at is not None:
        from prefect_incomplete.resume import schedule_deployment_retry

        schedule_deployment_retry(record)
    message = _message(record, step)
    log.warning(message)
    from prefect_incomplete._flow import incomplete_state

    return incomplete_state(message, exc)


_DONE = (COMPLETED, REPLAYED)


def _over_quota(
    store: Any, settings: Any, record: IncompleteExecution, exc: Exception, step: Step
) -> State[Any] | None:
    """None if the record fits its quotas; else the run's state (or "Dropped")."""
    from prefect.states import Failed

    from prefect_incomplete._controls import hold, quota_problem
    from prefect_incomplete.store import record_size

    problem = quota_problem(store, settings, record.flow_name, record_size(record))
    if problem is None:
        return None
    log = _logger()
    if settings.data_loss:
        log.warning(
            "Incomplete execution of step %s dropped (data loss is allowed): %s",
            step.key,
            problem,
        )
        from prefect_incomplete.artifacts import emit

        emit(
            record, "dropped", flow_run_id=record.flow_run_id, extra={"reason": problem}
        )
        return Failed(name="Dropped")

    log.error("Incomplete execution of step %s NOT stored: %s", step.key, problem)
    if record.deployment_id is not None:
        detail = {
            "flow_quota_count": settings.flow_quota_count,
            "flow_quota_bytes": settings.flow_quota_bytes,
            "total_quota_count": settings.total_quota_count,
            "total_quota_bytes": settings.total_quota_bytes,
        }
        hold(store, record.deployment_id, record.flow_name, "quota", detail)
    return Failed(
        name="QuotaFull",
        message=f"{type(exc).__name__} in step {step.key} was not stored: {problem}",
        data=exc,
    )


def _hold_if_sequential(store: Any, settings: Any, record: IncompleteExecution) -> None:
    if settings.sequential and record.deployment_id is not None:
        from prefect_incomplete._controls import hold

        hold(store, record.deployment_id, record.flow_name, "sequential", {})


def _why_not_stored(
    context: FlowRunContext | None,
    settings: Any,
    exc: Exception,
    step: Step | None,
) -> str | None:
    if context is None or context.flow_run is None:
        return "the flow is not running as a Prefect flow run"
    if step is None:
        return f"{type(exc).__name__} did not come from a resumable step"
    if step.first:
        return f"step {step.key} is the first step of the run; nothing to resume"
    kind = classify(exc)
    if kind is None:
        return f"{type(exc).__name__} in step {step.key} is not a classified error"
    if flow_retries_left(context):
        return f"{kind.__name__} in step {step.key}: the flow's own retries go first"
    if not settings.store:
        return f"{kind.__name__} in step {step.key}: storing is turned off"
    return None


def flow_retries_left(context: FlowRunContext) -> bool:
    """Whether Prefect will run this flow run again after this attempt fails."""
    flow_run = context.flow_run
    flow = context.flow
    retries = flow.retries if flow is not None else 0
    assert flow_run is not None
    return bool(retries) and flow_run.run_count <= retries


def _secret_texts(context: FlowRunContext, steps: list[Step]) -> set[str]:
    """The secrets of the run that no stored message or traceback may quote."""
    from prefect_incomplete._serialize import resolve_futures, secret_texts

    inputs = [resolve_futures(step.parameters) for step in steps]
    return secret_texts(dict(context.parameters or {}), *inputs)


def _failed_step(step: Step, confidential: bool, secrets: set[str]) -> FailedStep:
    from prefect_incomplete._serialize import encode, resolve_futures, scrub
    from prefect_incomplete.models import FailedStep

    exc = step.exception
    assert exc is not None
    kind = classify(exc)
    inputs = resolve_futures(step.parameters)
    return FailedStep(
        key=step.key,
        task_name=step.task_name,
        task_run_id=step.task_run_id,
        kind=kind.__name__ if kind else None,
        message=scrub(f"{type(exc).__name__}: {exc}", secrets),
        traceback=scrub(user_traceback(exc), secrets),
        inputs={
            name: encode(
                value,
                name=name,
                what=f"input {name!r} of step {step.key}",
                confidential=confidential,
                secrets=secrets,
            )
            for name, value in inputs.items()
        },
    )


def user_traceback(exc: BaseException) -> str:
    """The traceback of `exc` without the frames of Prefect's engine and ours."""
    import os

    import prefect

    import prefect_incomplete

    hidden = tuple(
        os.path.dirname(module.__file__ or "") + os.sep
        for module in (prefect, prefect_incomplete)
    )
    summary = traceback.TracebackException.from_exception(exc)
    kept = [frame for frame in summary.stack if not frame.filename.startswith(hidden)]
    summary.stack = traceback.StackSummary.from_list(kept or list(summary.stack))
    return "".join(summary.format())


def _step_output(step: Step, confidential: bool, secrets: set[str]) -> StepOutput:
    from prefect_incomplete._serialize import encode, fingerprint_parameters
    from prefect_incomplete.models import StepOutput

    if step.replayed_from is not None:
        return step.replayed_from
    return StepOutput(
        key=step.key,
        task_name=step.task_name,
        task_run_id=step.task_run_id,
        inputs_fingerprint=fingerprint_parameters(step.identity),
        output=encode(
            step.output,
            what=f"output of step {step.key}",
            confidential=confidential,
            secrets=secrets,
        ),
    )


def _disposition(failed: list[FailedStep]) -> Disposition:
    from prefect_incomplete.errors import kind_named

    kinds = [kind_named(s.kind) for s in failed if s.kind]
    if kinds and all(kind.retryable() for kind in kinds):
        return Disposition.AUTO_RETRY
    return Disposition.MANUAL


def next_retry(
    config: FlowConfig, disposition: Disposition, attempts: int, now: datetime
) -> datetime | None:
    """When the record is retried automatically after `attempts` failed runs."""
    from prefect_incomplete.settings import get_settings

    if disposition is not Disposition.AUTO_RETRY:
        return None
    schedule = config.auto_retry_schedule or tuple(get_settings().auto_retry_schedule)
    if attempts > len(schedule):
        return None
    return now + timedelta(seconds=schedule[attempts - 1])


def _new_record(
    context: FlowRunContext,
    config: FlowConfig,
    failed: list[FailedStep],
    completed: list[StepOutput],
    confidential: bool,
    secrets: set[str],
) -> IncompleteExecution:
    from prefect_incomplete.models import IncompleteExecution, Status

    flow_run = context.flow_run
    assert flow_run is not None
    now = _clock.now()
    disposition = _disposition(failed)
    retry_at = next_retry(config, disposition, 1, now)
    return IncompleteExecution(
        id=uuid4(),
        flow_name=context.flow.name if context.flow else flow_run.name,
        flow_run_id=flow_run.id,
        last_flow_run_id=flow_run.id,
        deployment_id=flow_run.deployment_id,
        entrypoint=_entrypoint(context),
        parameters=_parameters(context, confidential, secrets),
        confidential=confidential,
        failed_steps=failed,
        completed_steps=completed,
        disposition=disposition,
        status=Status.SCHEDULED if retry_at else Status.UNRESOLVED,
        attempts=1,
        next_retry_at=retry_at,
        created_at=now,
        updated_at=now,
    )


def _update_record(
    store: Any,
    record: IncompleteExecution,
    context: FlowRunContext,
    config: FlowConfig,
    failed: list[FailedStep],
    completed: list[StepOutput],
) -> IncompleteExecution:
    from prefect_incomplete.models import Status

    flow_run = context.flow_run
    assert flow_run is not None
    disposition = _disposition(failed)
    retry_at = next_retry(config, disposition, record.attempts + 1, _clock.now())
    updated: IncompleteExecution = store.record_failure(
        record.id,
        holder=str(flow_run.id),
        flow_run_id=flow_run.id,
        failed_steps=failed,
        completed_steps=completed,
        status=Status.SCHEDULED if retry_at else Status.UNRESOLVED,
        next_retry_at=retry_at,
        disposition=disposition,
    )
    return updated


def _parameters(
    context: FlowRunContext, confidential: bool, secrets: set[str]
) -> dict[str, Any]:
    from prefect_incomplete._flow import RESUME_PARAMETER
    from prefect_incomplete._serialize import encode

    parameters = dict(context.parameters or {})
    parameters.pop(RESUME_PARAMETER, None)
    return {
        name: encode(
            value,
            name=name,
            what=f"flow parameter {name!r}",
            confidential=confidential,
            secrets=secrets,
        )
        for name, value in parameters.items()
    }


def _entrypoint(context: FlowRunContext) -> str | None:
    """How to import the flow again: ``module:function`` or ``file.py:function``."""
    import inspect
    import sys

    flow = context.flow
    if flow is None:
        return None
    fn = getattr(flow.fn, "__prefect_incomplete_original__", flow.fn)
    module = fn.__module__
    qualname = fn.__qualname__
    if module and module != "__main__" and not module.startswith("__prefect_loader"):
        loaded = sys.modules.get(module)
        if loaded is not None and getattr(loaded, "__spec__", None) is not None:
            return f"{module}.{qualname}"
    try:
        return f"{inspect.getfile(fn)}:{qualname}"
    except TypeError:
        return None


def _message(record: IncompleteExecution, step: Step) -> str:
    failed = record.failed_steps[0] if record.failed_steps else None
    what = f"{failed.kind} in step {failed.key}" if failed else f"step {step.key}"
    more = len(record.failed_steps) - 1
    if more > 0:
        what += f" (and {more} more failed step{'s' if more > 1 else ''})"
    done = "stored" if record.attempts == 1 else f"updated (attempt {record.attempts})"
    head = f"Incomplete execution {record.short_id} {done}: {what}."
    if record.next_retry_at is not None:
        when = record.next_retry_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        head += f" It is retried automatically at {when}."
    return f"{head} Resume it with: prefect-incomplete resume {record.short_id}"


def _publish(record: IncompleteExecution, event: str, step: Step) -> None:
    from prefect_incomplete.artifacts import publish

    publish(record, event, task_run_id=step.task_run_id)


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logger


def flow_run_id_of(context: FlowRunContext | None) -> UUID | None:
    """The id of the flow run in `context`, if any."""
    if context is None or context.flow_run is None:
        return None
    return context.flow_run.id
