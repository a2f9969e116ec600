"""Resumable tasks: a Prefect `Task` that knows the taxonomy.

`ResumableTask` is a `Task` subclass, so `.submit`, `.map` and `with_options`
work as usual. It adds two things:

- In the task run, one `retry_condition_fn` decides each retry from the
  failure's kind: retryable kinds get their policy's attempts and delays
  (never less than a Retry-After), every other kind and the first task run
  of a flow run get none. The delay reaches Prefect's engine through
  `_DelaySchedule`, a list whose items are read when the engine schedules the
  retry, so the task run shows a real ``AwaitingRetry`` until the right time.
- In the flow process, every call opens a step in the flow run's ledger, and
  a resumed run answers a step that completed before with its recorded
  output: a task run named ``Replayed`` that does not run the function.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, cast
from uuid import uuid4

from prefect import Task
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import FlowRunContext, TaskRunContext
from prefect.futures import PrefectFuture, PrefectFutureList
from prefect.states import Completed
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_incomplete._classify import Classification, classify_detail
from prefect_incomplete._ledger import Ledger, Step, current_ledger
from prefect_incomplete._states import exception_of
from prefect_incomplete.errors import StepError
from prefect_incomplete.policy import RetryPolicy, resolve_policies
from prefect_incomplete.settings import get_settings

__all__ = ["ResumableTask", "make_resumable_task"]

logger = logging.getLogger("prefect_incomplete")

_FIRST_MARK = "prefect-incomplete:first-step-taken"
"""Marks, in a flow run's context, that its first task run has started."""

_next_delay: ContextVar[float] = ContextVar(
    "prefect_incomplete_next_delay", default=0.0
)


class _DelaySchedule(list[float]):
    """Retry delays decided per failure: each read gives the latest decision."""

    def __getitem__(self, index: Any) -> Any:
        return _next_delay.get()


@dataclass(frozen=True)
class TaskConfig:
    """What `resumable` was told about one task."""

    step: str | None = None
    policies: Mapping[type[StepError], RetryPolicy] = field(default_factory=dict)
    policy_overrides: Mapping[Any, Any] | None = None
    user_retries: int | None = None
    user_delays: tuple[float, ...] | None = None
    user_condition: Callable[..., Any] | None = None

    def attempts_for(self, kind: type[StepError]) -> int:
        if self.user_retries is not None:
            return self.user_retries
        return self.policies[kind].attempts

    def max_attempts(self) -> int:
        if self.user_retries is not None:
            return self.user_retries
        return max(policy.attempts for policy in self.policies.values())


class ResumableTask(Task[Any, Any]):
    """A Prefect task whose failures are classified, retried and recorded."""

    _incomplete: TaskConfig

    def __call__(
        self,
        *args: Any,
        return_state: bool = False,
        wait_for: Any = None,
        **kwargs: Any,
    ) -> Any:
        context = FlowRunContext.get()
        if context is None or TaskRunContext.get() is not None:
            return super().__call__(
                *args, return_state=return_state, wait_for=wait_for, **kwargs
            )

        from prefect.task_engine import run_task
        from prefect.utilities.callables import get_call_parameters

        parameters = get_call_parameters(self.fn, args, kwargs)
        step, target = self._open_step(context, parameters)
        if step is not None and step.replayed_from is not None:
            return self._replay_call(step, return_state, wait_for)

        task_run_id = uuid4()
        if step is not None:
            step.task_run_id = task_run_id
        try:
            outcome = run_task(
                task=target,
                task_run_id=task_run_id,
                parameters=parameters,
                wait_for=wait_for,
                return_type="state" if return_state else "result",
            )
        except Exception as exc:
            if step is not None:
                step.fail(exc)
            raise
        if step is None:
            return outcome
        if self.isasync:
            return _observe_async(step, outcome, return_state)
        return _observe(step, outcome, return_state)

    def submit(
        self,
        *args: Any,
        return_state: bool = False,
        wait_for: Any = None,
        **kwargs: Any,
    ) -> Any:
        context = FlowRunContext.get()
        if context is None or TaskRunContext.get() is not None:
            return super().submit(
                *args, return_state=return_state, wait_for=wait_for, **kwargs
            )

        from prefect.utilities.callables import get_call_parameters

        parameters = get_call_parameters(self.fn, args, kwargs)
        future = self._submit_step(context, parameters, wait_for, None)
        if return_state:
            future.wait()
            return future.state
        return future

    def map(
        self,
        *args: Any,
        return_state: bool = False,
        wait_for: Iterable[Any] | None = None,
        deferred: bool = False,
        **kwargs: Any,
    ) -> Any:
        context = FlowRunContext.get()
        if deferred or context is None or TaskRunContext.get() is not None:
            return super().map(
                *args,
                return_state=return_state,
                wait_for=wait_for,
                deferred=deferred,
                **kwargs,
            )

        from prefect.utilities.callables import (
            expand_mapping_parameters,
            get_call_parameters,
        )
        from prefect.utilities.engine import (
            collect_task_run_inputs_sync,
            resolve_inputs_sync,
        )

        parameters = get_call_parameters(self.fn, args, kwargs, apply_defaults=False)
        dependencies = {
            name: collect_task_run_inputs_sync(value, max_depth=0)
            for name, value in parameters.items()
        }
        parameters = resolve_inputs_sync(parameters, max_depth=0)
        futures: PrefectFutureList[Any] = PrefectFutureList(  # type: ignore[abstract]
            self._submit_step(context, item, wait_for, dependencies)
            for item in expand_mapping_parameters(self.fn, parameters)
        )
        if return_state:
            futures.wait()
            return [future.state for future in futures]
        return futures

    def with_options(self, **options: Any) -> ResumableTask:
        config = self._incomplete
        changed: dict[str, Any] = {}
        if "retries" in options:
            changed["user_retries"] = options["retries"]
        if "retry_delay_seconds" in options:
            changed["user_delays"] = _delays(options.pop("retry_delay_seconds"))
        if "retry_condition_fn" in options:
            changed["user_condition"] = options.pop("retry_condition_fn")
        base = super().with_options(**options)
        return _install(base, replace(config, **changed))

    def _open_step(
        self, context: FlowRunContext, parameters: dict[str, Any]
    ) -> tuple[Step | None, Task[Any, Any]]:
        """Open this call's step; give the task to run (no retries if first)."""
        ledger = current_ledger.get()
        if ledger is None:
            first = _FIRST_MARK not in context.task_run_dynamic_keys
            context.task_run_dynamic_keys[_FIRST_MARK] = 1
            return None, self._first_variant() if first else self

        step = ledger.open(self._incomplete.step or self.name, self.name, parameters)
        step.replayed_from = ledger.replay_for(step)
        if step.replayed_from is not None:
            step.complete(_recorded_output(step))
        return step, self._first_variant() if step.first else self

    def _submit_step(
        self,
        context: FlowRunContext,
        parameters: dict[str, Any],
        wait_for: Any,
        dependencies: Any,
    ) -> PrefectFuture[Any]:
        step, target = self._open_step(context, parameters)
        if step is not None and step.replayed_from is not None:
            # A replay takes no parameters, so it has no inputs to link either:
            # Prefect refuses dependencies for parameters a task run lacks.
            target, parameters, dependencies = _replay_task(self, step), {}, None

        future: PrefectFuture[Any] = context.task_runner.submit(
            target, parameters, wait_for, dependencies
        )
        if step is not None and step.replayed_from is None:
            step.future, step.task_run_id = future, future.task_run_id
        return future

    def _replay_call(self, step: Step, return_state: bool, wait_for: Any) -> Any:
        from prefect.task_engine import run_task

        outcome = run_task(
            task=_replay_task(self, step),
            parameters={},
            wait_for=wait_for,
            return_type="state",
        )
        if not self.isasync:
            return outcome if return_state else step.output

        async def replayed() -> Any:
            state = await cast(Any, outcome)
            return state if return_state else step.output

        return replayed()

    def _first_variant(self) -> Task[Any, Any]:
        """This task without retries: the first task run of a flow run."""
        variant = self.__dict__.get("_first")
        if variant is None:
            variant = Task.with_options(self, retries=0)
            self.__dict__["_first"] = variant
        return cast(Task[Any, Any], variant)


def _observe(step: Step, outcome: Any, return_state: bool) -> Any:
    if return_state:
        _take_state(step, outcome)
    else:
        step.complete(outcome)
    return outcome


async def _observe_async(step: Step, pending: Any, return_state: bool) -> Any:
    step.running = True
    try:
        outcome = await pending
    except Exception as exc:
        step.fail(exc)
        raise
    finally:
        step.running = False
    return _observe(step, outcome, return_state)


def _take_state(step: Step, state: State[Any]) -> None:
    from prefect_incomplete._states import value_of

    if state.is_completed():
        step.complete(value_of(state))
    elif state.is_failed() or state.is_crashed():
        step.fail(exception_of(state))


def _recorded_output(step: Step) -> Any:
    from prefect_incomplete._serialize import decode

    assert step.replayed_from is not None
    return decode(step.replayed_from.output)


def _replay_task(task: ResumableTask, step: Step) -> Task[Any, Any]:
    """A task run that completes as ``Replayed`` with the step's recorded output."""
    from prefect.cache_policies import NO_CACHE

    value = step.output
    ledger = current_ledger.get()
    record = ledger.record if isinstance(ledger, Ledger) else None
    source = f" of incomplete execution {record.short_id}" if record else ""
    message = f"Step {step.key} replayed: its output{source} was recorded before"

    def replay() -> State[Any]:
        return Completed(data=value, name="Replayed", message=message)

    async def replay_async() -> State[Any]:
        return replay()

    fn = replay_async if task.isasync else replay
    fn.__name__ = fn.__qualname__ = task.fn.__name__
    return Task(
        fn,
        name=task.name,
        task_run_name=f"{step.key} (replayed)",
        tags=set(task.tags),
        retries=0,
        cache_policy=NO_CACHE,
        persist_result=False,
    )


def make_resumable_task(
    task: Task[Any, Any],
    *,
    step: str | None = None,
    policies: Mapping[Any, Any] | None = None,
) -> ResumableTask:
    """`task` as a `ResumableTask`, its own retry options kept as overrides."""
    if isinstance(task, ResumableTask):
        config = replace(
            task._incomplete,
            step=step or task._incomplete.step,
            policy_overrides=policies or task._incomplete.policy_overrides,
        )
        return _install(task, config)

    from prefect.settings import get_current_settings

    defaults = get_current_settings().tasks
    user_retries = task.retries if task.retries != defaults.default_retries else None
    user_delays = None
    if task.retry_delay_seconds not in (None, defaults.default_retry_delay_seconds):
        user_delays = _delays(task.retry_delay_seconds)
    config = TaskConfig(
        step=step,
        policy_overrides=policies,
        user_retries=user_retries,
        user_delays=user_delays,
        user_condition=task.retry_condition_fn,
    )
    return _install(task, config)


def _install(task: Task[Any, Any], config: TaskConfig) -> ResumableTask:
    settings = get_settings()
    config = replace(
        config,
        policies=resolve_policies(settings.policies, config.policy_overrides),
    )
    if config.user_retries is not None and config.user_retries < 0:
        raise ValueError(
            f"task {task.name!r}: retries must be >= 0, not {config.user_retries}"
        )
    if config.step is not None and not config.step.strip():
        raise ValueError(f"task {task.name!r}: a step name cannot be empty")

    attempts = config.max_attempts()
    new: Any = Task.with_options(
        task,
        retries=attempts,
        retry_delay_seconds=_DelaySchedule([0.0] * max(attempts, 1)),
        retry_jitter_factor=cast(Any, None),
        retry_condition_fn=_should_retry,
    )
    new.__class__ = ResumableTask
    cast(ResumableTask, new)._incomplete = config
    return cast(ResumableTask, new)


def _delays(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return (float(value),)
    return tuple(float(v) for v in value)


def _should_retry(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect's retry condition for a resumable task: the kind decides."""
    config: TaskConfig = getattr(task, "_incomplete", TaskConfig())
    detail = classify_detail(exception_of(state))
    retry = task_run.run_count
    log = _run_logger()

    if detail is None:
        if config.user_retries is None:
            log.info("%s: unclassified failure, not retried", task.name)
            return False
        if retry > config.user_retries:
            return False
        return _user_allows(config, task, task_run, state, detail, retry, log)

    kind = detail.kind
    if not kind.retryable():
        log.info(
            "%s: %s%s, not retried: it waits for a person",
            task.name,
            kind.__name__,
            _why(detail),
        )
        return False

    attempts = config.attempts_for(kind)
    if retry > attempts:
        log.info("%s: %s, %d retries used up", task.name, kind.__name__, attempts)
        return False
    return _user_allows(config, task, task_run, state, detail, retry, log)


def _user_allows(
    config: TaskConfig,
    task: Task[Any, Any],
    task_run: TaskRun,
    state: State[Any],
    detail: Classification | None,
    retry: int,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> bool:
    if config.user_condition is not None:
        allowed = config.user_condition(task, task_run, state)
        if hasattr(allowed, "__await__"):
            allowed = run_coro_as_sync(allowed)
        if not allowed:
            log.info(
                "%s: not retried: the task's own retry condition said no", task.name
            )
            return False

    delay = _delay(config, detail, retry)
    _next_delay.set(delay)
    kind = detail.kind.__name__ if detail else "unclassified failure"
    log.info(
        "%s: %s%s, retry %d of %d in %.1f s",
        task.name,
        kind,
        _why(detail),
        retry,
        config.attempts_for(detail.kind) if detail else config.user_retries or 0,
        delay,
    )
    return True


def _why(detail: Classification | None) -> str:
    """The rule that chose the kind, unless the exception was the kind itself."""
    if detail is None or isinstance(detail.exception, StepError):
        return ""
    return f" ({detail.rule})"


def _delay(config: TaskConfig, detail: Classification | None, retry: int) -> float:
    if get_settings().testing:
        return 0.0
    retry_after = detail.retry_after if detail else None
    if config.user_delays:
        chosen = config.user_delays[min(retry, len(config.user_delays)) - 1]
        return max(chosen, retry_after or 0.0)
    if detail is None:
        return 0.0
    return config.policies[detail.kind].delay_for(retry, retry_after=retry_after)


def _run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logger
