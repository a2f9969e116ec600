"""Start a resume: validate edits, claim the record, start the new flow run.

`resume()` is the one entry point; the CLI's ``resume`` and ``retry`` call it.
It starts the run in one of three ways:

``local``
    Import the flow from the record's entrypoint and run it in this process.
    The default for a record whose flow has no deployment.
``deployment``
    `run_deployment` of the record's deployment (``timeout=0``, not as a
    subflow, an idempotency key per record and attempt), so the user's own
    workers run it. The default for a record from a deployment.
``event``
    Emit ``prefect-incomplete.resume-requested``; a deployment served or
    deployed with `resume_trigger()` starts the run. The run claims the record
    itself when it starts.

Before a ``local`` or ``deployment`` run starts, the record is claimed in one
atomic update; a second resume of the same record is refused with the run
that holds it. Edits are checked against the flow's and the task's signature
before anything is claimed or run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID, uuid4

from prefect_incomplete.models import IncompleteExecution, Status

__all__ = [
    "RecordUnavailable",
    "ResumeError",
    "ResumeStarted",
    "parse_assignments",
    "resume",
    "resume_trigger",
    "retry_due",
]

logger = logging.getLogger("prefect_incomplete")

Via = Literal["auto", "local", "deployment", "event"]
RESUME_EVENT = "prefect-incomplete.resume-requested"


class ResumeError(Exception):
    """A resume could not start; the record is unchanged."""


class RecordUnavailable(ResumeError):
    """Another resume holds the record, or it is closed; the record is unchanged.

    For `retry_due` this is no failure: another worker took the record first.
    """

    def __init__(self, message: str, record_id: UUID, status: Status) -> None:
        super().__init__(message)
        self.record_id = record_id
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.record_id, self.status))


@dataclass(frozen=True)
class ResumeStarted:
    """What a resume started."""

    record: IncompleteExecution
    via: str
    flow_run_id: UUID | None
    """The new flow run, when known (not for ``event``)."""

    state_name: str | None = None
    """For ``local``: the final state of the run (it ran to the end here)."""

    seconds_to_start: float | None = None


@dataclass(frozen=True)
class Typed:
    """A value typed on a command line: its JSON reading, and the text itself.

    The JSON reading is used unless the signature refuses it and takes the
    text, so ``--set quantity=2`` gives a ``str`` parameter ``"2"``.
    """

    text: str
    parsed: Any

    def candidates(self) -> list[Any]:
        return [self.parsed, self.text]


def _candidates(value: Any) -> list[Any]:
    return value.candidates() if isinstance(value, Typed) else [value]


def _plain(value: Any) -> Any:
    return value.parsed if isinstance(value, Typed) else value


def parse_assignments(items: list[str], *, what: str) -> dict[str, Any]:
    """``NAME=VALUE`` strings as a dict; VALUE is JSON if it parses, else text."""
    parsed: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise ResumeError(
                f"malformed {what} {item!r}: expected NAME=VALUE, e.g. "
                + (
                    "push_order[2].order='{\"qty\": 1}'"
                    if what == "--set"
                    else "day=2026-12-01"
                )
            )
        try:
            value: Any = Typed(text=raw, parsed=json.loads(raw))
        except ValueError:
            value = raw
        parsed[name.strip()] = value
    return parsed


def resume(
    record_id: str | UUID,
    *,
    set_inputs: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    via: Via = "auto",
    store: Any = None,
    due_by: datetime | None = None,
) -> ResumeStarted:
    """Resume an incomplete execution as a new flow run.

    `set_inputs` maps ``STEP.ARG`` (e.g. ``push_order[2].order``; ``push_order``
    alone names the step when only one failed step has that name) to a new
    value of the failed step's input; `params` maps flow parameter names to new
    values. Raises `ResumeError` with one clear sentence when the record cannot
    be resumed or an edit is wrong; nothing runs then and the record is as it was.
    With `due_by`, as automatic retries use it, the record is resumed only if
    it is still scheduled for a retry due by then (`RecordUnavailable` if not).
    """
    from prefect_incomplete.store import ClaimRefused, Store, StoreError

    store = store or Store()
    try:
        record = store.get(str(record_id))
    except StoreError as exc:
        raise ResumeError(str(exc)) from None
    _check_open(record)

    mode = _mode(record, via)
    flow: Any = _load_flow(record) if mode == "local" else _try_load_flow(record)
    step_edits = _step_edits(record, dict(set_inputs or {}), flow)
    param_edits = _param_edits(record, dict(params or {}), flow)

    if mode == "event":
        _save_edits(store, record, step_edits, param_edits, holder=None)
        return _request_by_event(record)

    from prefect_incomplete.settings import get_settings

    token = f"resume-{uuid4()}"
    try:
        record = store.claim(
            record.id,
            token,
            lease_seconds=get_settings().lease_seconds,
            due_by=due_by,
        )
    except ClaimRefused as exc:
        raise RecordUnavailable(str(exc), exc.record_id, exc.status) from exc
    try:
        record = _save_edits(store, record, step_edits, param_edits, holder=token)
        if mode == "local":
            started = _run_here(record, flow, token)
            return dataclasses.replace(started, record=_reread(store, record))
        return _run_deployment(record, token)
    except BaseException:
        _give_back(store, record, token)
        raise


def _check_open(record: IncompleteExecution) -> None:
    if record.status in (Status.RESOLVED, Status.DISCARDED):
        raise RecordUnavailable(
            f"incomplete execution {record.short_id} is {record.status.value}; "
            "there is nothing to resume",
            record.id,
            record.status,
        )


def _mode(record: IncompleteExecution, via: Via) -> str:
    if via == "auto":
        return "deployment" if record.deployment_id else "local"
    if via in ("deployment", "event") and record.deployment_id is None:
        raise ResumeError(
            f"incomplete execution {record.short_id} did not come from a deployment; "
            "resume it with --via local"
        )
    if via not in ("local", "deployment", "event"):
        raise ResumeError(
            f"unknown way to resume {via!r}; use local, deployment or event"
        )
    return via


def _load_flow(record: IncompleteExecution) -> Any:
    from prefect.flows import load_flow_from_entrypoint

    if not record.entrypoint:
        raise ResumeError(
            f"incomplete execution {record.short_id} has no entrypoint to import its "
            "flow from; resume it through its deployment"
        )
    try:
        flow: Any = load_flow_from_entrypoint(
            record.entrypoint, use_placeholder_flow=False
        )
    except Exception as exc:
        raise ResumeError(
            f"the flow of incomplete execution {record.short_id} no longer imports "
            f"from {record.entrypoint}: {type(exc).__name__}: {exc}"
        ) from None
    if not hasattr(flow.fn, "__prefect_incomplete_original__"):
        raise ResumeError(
            f"the flow at {record.entrypoint} is no longer decorated with @resumable; "
            "a resume needs it"
        )
    return flow


def _try_load_flow(record: IncompleteExecution) -> Any:
    try:
        return _load_flow(record)
    except ResumeError:
        return None


def _step_edits(
    record: IncompleteExecution, edits: dict[str, Any], flow: Any
) -> dict[str, dict[str, Any]]:
    """``STEP.ARG`` edits by step key, each checked against the step's inputs."""
    by_key: dict[str, dict[str, Any]] = {}
    for target, value in edits.items():
        step_ref, dot, arg = target.rpartition(".")
        if not dot or not step_ref or not arg:
            raise ResumeError(
                f"malformed --set target {target!r}: expected STEP.ARG, e.g. "
                f"{_example(record)}"
            )
        step = _failed_step(record, step_ref)
        if arg not in step.inputs:
            known = ", ".join(step.inputs) or "none"
            raise ResumeError(
                f"step {step.key} has no input {arg!r}; its inputs are: {known}"
            )
        by_key.setdefault(step.key, {})[arg] = _validated_input(flow, step, arg, value)
    return by_key


def _example(record: IncompleteExecution) -> str:
    if record.failed_steps and record.failed_steps[0].inputs:
        step = record.failed_steps[0]
        return f"{step.key}.{next(iter(step.inputs))}=VALUE"
    return "push_order[2].order=VALUE"


def _failed_step(record: IncompleteExecution, ref: str) -> Any:
    matches = [s for s in record.failed_steps if s.key == ref]
    if not matches:
        matches = [s for s in record.failed_steps if s.key.rsplit("[", 1)[0] == ref]
    if len(matches) == 1:
        return matches[0]
    failed = ", ".join(s.key for s in record.failed_steps)
    if not matches:
        raise ResumeError(
            f"incomplete execution {record.short_id} has no failed step {ref!r}; "
            f"its failed steps are: {failed}"
        )
    raise ResumeError(
        f"{ref!r} names several failed steps ({failed}); give the full key"
    )


def _validated_input(flow: Any, step: Any, arg: str, value: Any) -> Any:
    task = _find_task(flow, step.task_name) if flow is not None else None
    if task is None:
        return _plain(value)
    import inspect

    from pydantic import TypeAdapter, ValidationError

    parameter = inspect.signature(task.fn).parameters.get(arg)
    if parameter is None or parameter.annotation is inspect.Parameter.empty:
        return _plain(value)
    annotation = parameter.annotation
    if isinstance(annotation, str):
        hints = _type_hints(task.fn)
        annotation = hints.get(arg, Any)
    problem = ""
    for candidate in _candidates(value):
        try:
            TypeAdapter(annotation).validate_python(candidate)
        except ValidationError as exc:
            problem = problem or exc.errors()[0]["msg"]
            continue
        return candidate
    raise ResumeError(
        f"--set {step.key}.{arg}: {_plain(value)!r} is not a valid {arg!r} for task "
        f"{step.task_name}: {problem}"
    )


def _type_hints(fn: Any) -> dict[str, Any]:
    import typing

    try:
        return typing.get_type_hints(fn)
    except Exception:  # hints that do not resolve: validate nothing
        return {}


def _find_task(flow: Any, task_name: str) -> Any:
    import sys

    from prefect import Task

    original = getattr(flow.fn, "__prefect_incomplete_original__", flow.fn)
    module = sys.modules.get(original.__module__)
    for value in vars(module).values() if module else ():
        if isinstance(value, Task) and value.name == task_name:
            return value
    return None


def _param_edits(
    record: IncompleteExecution, edits: dict[str, Any], flow: Any
) -> dict[str, Any]:
    from prefect_incomplete._flow import RESUME_PARAMETER

    if not edits:
        return {}
    unknown = [name for name in edits if name not in record.parameters]
    if flow is not None:
        import inspect

        original = flow.fn.__prefect_incomplete_original__
        names = inspect.signature(original).parameters
        unknown = [
            name for name in edits if name not in names or name == RESUME_PARAMETER
        ]
    if unknown:
        known = ", ".join(record.parameters) or "none"
        raise ResumeError(
            f"flow {record.flow_name} has no parameter {unknown[0]!r}; its parameters "
            f"are: {known}"
        )
    if flow is None:
        return {name: _plain(value) for name, value in edits.items()}
    from prefect.exceptions import ParameterTypeError

    current = _decoded_parameters(record)
    chosen: dict[str, Any] = {}
    for name, value in edits.items():
        problem: Exception | None = None
        for candidate in _candidates(value):
            try:
                with _quiet_parameter_log():
                    valid = flow.validate_parameters(
                        {**current, **chosen, name: candidate}
                    )
            except ParameterTypeError as exc:
                problem = problem or exc
                continue
            # The value as the signature makes it (a `SecretStr` from text, say):
            # a resume passes the record's parameters to the flow as they are.
            chosen[name] = valid.get(name, candidate)
            break
        else:
            raise ResumeError(
                f"--param rejected by flow {record.flow_name}: {_refusal_line(problem)}"
            )
    return chosen


@contextlib.contextmanager
def _quiet_parameter_log() -> Iterator[None]:
    """Keep Prefect from logging every parameter value (secrets too) when a
    value is refused; the refusal itself is the error the user sees."""
    flows_logger = logging.getLogger("prefect.flows")

    def drop(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Parameter validation failed")

    flows_logger.addFilter(drop)
    try:
        yield
    finally:
        flows_logger.removeFilter(drop)


def _refusal_line(problem: Exception | None) -> str:
    """Prefect's multi-line refusal as one line."""
    lines = [line.strip(" -") for line in str(problem).splitlines()]
    head, *reasons = [line for line in lines if line]
    return f"{head.rstrip(':')}: {'; '.join(reasons)}" if reasons else head


def _decoded_parameters(record: IncompleteExecution) -> dict[str, Any]:
    from prefect_incomplete._serialize import decode

    try:
        return {name: decode(value) for name, value in record.parameters.items()}
    except (LookupError, ValueError) as exc:
        raise ResumeError(
            f"the flow parameters of incomplete execution {record.short_id} cannot be "
            f"loaded: {exc}"
        ) from None


def _save_edits(
    store: Any,
    record: IncompleteExecution,
    step_edits: dict[str, dict[str, Any]],
    param_edits: dict[str, Any],
    *,
    holder: str | None,
) -> IncompleteExecution:
    if not step_edits and not param_edits:
        return record
    from prefect_incomplete._serialize import ValueTooLarge, encode

    try:
        parameters = {
            name: encode(value, name=name, what=f"flow parameter {name!r}")
            for name, value in param_edits.items()
        }
        inputs = {
            key: {
                arg: encode(value, name=arg, what=f"input {arg!r} of step {key}")
                for arg, value in args.items()
            }
            for key, args in step_edits.items()
        }
    except ValueTooLarge as exc:
        raise ResumeError(str(exc)) from None
    edited: IncompleteExecution = store.edit(
        record.id, holder=holder, parameters=parameters, step_inputs=inputs
    )
    return edited


def _run_here(record: IncompleteExecution, flow: Any, token: str) -> ResumeStarted:
    from prefect_incomplete._flow import PendingResume, pending_resume

    parameters = _decoded_parameters(record)
    marker = pending_resume.set(PendingResume(record_id=record.id, claim=token))
    started = time.monotonic()
    try:
        state = flow(**parameters, return_state=True)
        if hasattr(state, "__await__"):
            from prefect.utilities.asyncutils import run_coro_as_sync

            state = run_coro_as_sync(state)
    finally:
        pending_resume.reset(marker)
    flow_run_id = state.state_details.flow_run_id
    return ResumeStarted(
        record=record,
        via="local",
        flow_run_id=flow_run_id,
        state_name=state.name,
        seconds_to_start=time.monotonic() - started,
    )


def _reread(store: Any, record: IncompleteExecution) -> IncompleteExecution:
    """The record as the run left it, or as it was if the store cannot say."""
    from prefect_incomplete.store import StoreError

    try:
        return store.get(record.id)  # type: ignore[no-any-return]
    except StoreError:
        return record


def _run_deployment(record: IncompleteExecution, token: str) -> ResumeStarted:
    from prefect.deployments import run_deployment

    from prefect_incomplete._flow import CLAIM_TAG_PREFIX, RESUME_PARAMETER

    parameters = {**_decoded_parameters(record), RESUME_PARAMETER: str(record.id)}
    flow_run: Any = run_deployment(
        name=record.deployment_id,  # type: ignore[arg-type]
        parameters=parameters,
        timeout=0,
        as_subflow=False,
        idempotency_key=f"prefect-incomplete-{record.id}-{record.attempts}",
        tags=[f"{CLAIM_TAG_PREFIX}{token}"],
    )
    return ResumeStarted(record=record, via="deployment", flow_run_id=flow_run.id)


def _request_by_event(record: IncompleteExecution) -> ResumeStarted:
    from prefect.events import emit_event

    from prefect_incomplete.artifacts import resource_id

    event = emit_event(
        RESUME_EVENT,
        resource={
            "prefect.resource.id": resource_id(record.id),
            "prefect-incomplete.flow": record.flow_name,
        },
        related=[
            {
                "prefect.resource.id": f"prefect.deployment.{record.deployment_id}",
                "prefect.resource.role": "deployment",
            }
        ],
        payload={"record_id": str(record.id), "attempt": record.attempts + 1},
    )
    if event is None:
        raise ResumeError(
            "the resume event could not be emitted: events are turned off"
        )
    return ResumeStarted(record=record, via="event", flow_run_id=None)


def _give_back(store: Any, record: IncompleteExecution, token: str) -> None:
    status = Status.SCHEDULED if record.next_retry_at else Status.UNRESOLVED
    try:
        store.release(
            record.id, token, status=status, next_retry_at=record.next_retry_at
        )
    except Exception as exc:  # the lease still ends the claim in time
        logger.warning("Could not release the claim on %s: %s", record.short_id, exc)


def schedule_deployment_retry(record: IncompleteExecution) -> UUID | None:
    """Create the next automatic retry of a deployed record as a scheduled run.

    The run is created on the Prefect server at the record's next retry time,
    so the deployment's own workers run it; it claims the record when it
    starts. Gives the run's id, or None (logged) when it could not be created.
    """
    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    from prefect_incomplete._flow import RESUME_PARAMETER

    if record.deployment_id is None or record.next_retry_at is None:
        return None
    parameters = {
        name: json.loads(value.payload)
        for name, value in record.parameters.items()
        if value.format == "json"
    }
    try:
        with get_client(sync_client=True) as client:
            flow_run = client.create_flow_run_from_deployment(
                record.deployment_id,
                parameters={**parameters, RESUME_PARAMETER: str(record.id)},
                state=Scheduled(scheduled_time=record.next_retry_at),
                idempotency_key=f"prefect-incomplete-{record.id}-auto-{record.attempts}",
                tags=["prefect-incomplete-retry"],
            )
    except Exception as exc:  # the record stays scheduled: retry --due can run it
        logger.warning(
            "Could not schedule the automatic retry of %s on the Prefect server: %s",
            record.short_id,
            exc,
        )
        return None
    return flow_run.id


def resume_trigger(flow: Any, **options: Any) -> Any:
    """A `DeploymentEventTrigger` that resumes `flow`'s records on request.

    Pass it to ``flow.serve(triggers=[resume_trigger(flow)])`` or
    ``flow.deploy(..., triggers=[...])``; ``prefect-incomplete resume ID --via
    event`` then starts the deployment's run for that record.
    """
    from prefect.events import DeploymentEventTrigger

    from prefect_incomplete._flow import RESUME_PARAMETER

    name = flow if isinstance(flow, str) else flow.name
    return DeploymentEventTrigger(
        name=options.pop("name", f"prefect-incomplete resume {name}"),
        expect={RESUME_EVENT},
        match={
            "prefect.resource.id": "prefect-incomplete.record.*",
            "prefect-incomplete.flow": name,
        },
        parameters={RESUME_PARAMETER: "{{ event.resource.id }}"},
        **options,
    )


def retry_due(
    *, now: datetime | None = None, store: Any = None, limit: int | None = None
) -> list[ResumeStarted | ResumeError]:
    """Resume every due record of an undeployed flow, at most N per flow at once.

    Records from a deployment are skipped: their automatic retries are
    scheduled flow runs on the Prefect server, run by the deployment's workers.
    """
    from prefect_incomplete.settings import get_settings
    from prefect_incomplete.store import Store

    store = store or Store()
    from prefect_incomplete import _clock

    now = now or _clock.now()
    concurrency = get_settings().auto_retry_concurrency
    outcomes: list[ResumeStarted | ResumeError] = []
    for record in store.due(now=now, limit=limit):
        if record.deployment_id is not None:
            continue  # its retry is a scheduled run on the Prefect server
        running = [
            r
            for r in store.list(flow=record.flow_name, statuses=[Status.IN_PROGRESS])
            if r.lease_expires_at is None or r.lease_expires_at > now
        ]
        if len(running) >= concurrency:
            continue
        try:
            outcomes.append(resume(record.id, store=store, due_by=now))
        except ResumeError as exc:
            outcomes.append(exc)
        except Exception as exc:  # one record's failure must not stop the pass
            outcomes.append(
                ResumeError(f"{record.short_id}: {type(exc).__name__}: {exc}")
            )
    return outcomes
