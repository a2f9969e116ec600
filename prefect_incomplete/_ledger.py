"""The step ledger: what a flow run's steps received and gave back, in memory.

A resumable flow keeps one ledger per run. A resumable task, when called in
that run, opens a *step* in it: a stable key (step name and call number), the
inputs, and later the outcome (output, or exception) or a future that will
tell it. Nothing is serialized or written until a record is stored, so the
happy path costs a few dictionary operations per call.

What the flow process sees is the ground truth: the inputs of the call and
the result or exception that its future or call gives back, also when the
task ran in another process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    from prefect.futures import PrefectFuture

    from prefect_incomplete.models import IncompleteExecution, StepOutput

__all__ = ["Ledger", "Step", "current_ledger"]

PENDING, COMPLETED, FAILED, REPLAYED = "pending", "completed", "failed", "replayed"


@dataclass(eq=False)
class Step:
    """One call of a resumable task in a flow run."""

    key: str
    name: str
    task_name: str
    parameters: dict[str, Any]
    first: bool
    position: int
    outcome: str = PENDING
    output: Any = None
    exception: BaseException | None = None
    task_run_id: UUID | None = None
    future: PrefectFuture[Any] | None = None
    replayed_from: StepOutput | None = None
    called_with: dict[str, Any] | None = None
    """The inputs the flow passed, when a person's edits replaced some of them."""

    running: bool = False
    """An async step whose coroutine has started and not yet ended."""

    @property
    def identity(self) -> dict[str, Any]:
        """The inputs that identify the call for replay: the flow's, not the edits."""
        return self.called_with if self.called_with is not None else self.parameters

    def complete(self, output: Any) -> None:
        self.outcome, self.output = COMPLETED, output

    def fail(self, exception: BaseException) -> None:
        self.outcome, self.exception = FAILED, exception

    def settle(self) -> None:
        """Wait for the step's future, if any, and take its outcome."""
        if self.future is None or self.outcome is not PENDING:
            return
        from prefect_incomplete._states import exception_of, value_of

        self.future.wait()
        state = self.future.state
        if state.is_completed():
            self.complete(value_of(state))
        elif state.is_failed() or state.is_crashed():
            self.fail(exception_of(state))


@dataclass(eq=False)
class Ledger:
    """The steps of one flow run, and what a resume may replay."""

    record: IncompleteExecution | None = None
    """The record this run resumes, if it is a resume."""

    replay: dict[str, StepOutput] = field(default_factory=dict)
    edits: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Corrected inputs of failed steps, by step key, applied when they run."""

    parameters: dict[str, Any] | None = None
    """The flow parameters a resume runs with (the record's, with edits)."""

    lease: Any = None
    """A resume's `LeaseKeeper`, stopped when the run ends."""

    steps: list[Step] = field(default_factory=list)
    _calls: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self, name: str, task_name: str, parameters: dict[str, Any]) -> Step:
        """Open the next step called `name`; the first step of the run is marked."""
        with self._lock:
            number = self._calls.get(name, 0) + 1
            self._calls[name] = number
            step = Step(
                key=f"{name}[{number}]",
                name=name,
                task_name=task_name,
                parameters=parameters,
                first=not self.steps,
                position=len(self.steps),
            )
            self.steps.append(step)
        edits = self.edits.get(step.key)
        if edits:
            step.called_with = dict(parameters)
            parameters.update(edits)
        return step

    def replay_for(self, step: Step) -> StepOutput | None:
        """The recorded output of `step`, if it ran before with the same inputs."""
        recorded = self.replay.get(step.key)
        if recorded is None or not _loadable(recorded):
            return None
        from prefect_incomplete._serialize import fingerprint_parameters

        if fingerprint_parameters(step.identity) != recorded.inputs_fingerprint:
            return None
        return recorded

    def settled(self) -> Iterator[Step]:
        """Every step, each waited for until its outcome is known."""
        for step in list(self.steps):
            step.settle()
            yield step

    async def finish_running(self, seconds: float) -> list[Step]:
        """Let async steps still running end, for up to `seconds`.

        When one step of ``asyncio.gather`` fails, the others go on running:
        waiting for them records the ones that complete, so a resume replays
        them instead of running them twice. Gives the steps still running.
        """
        import asyncio

        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            running = [s for s in self.steps if s.running and s.outcome is PENDING]
            if not running or loop.time() >= deadline:
                return running
            await asyncio.sleep(0.02)

    def step_of(self, exception: BaseException) -> Step | None:
        """The step whose failure `exception` is, if any."""
        for step in self.steps:
            if step.exception is exception:
                return step
        return None


def _loadable(recorded: StepOutput) -> bool:
    """Whether the recorded output can be given back: it was stored, and is
    not a pickle while the settings refuse pickles."""
    from prefect_incomplete.settings import get_settings

    fmt = recorded.output.format
    if fmt == "none":
        return False
    return fmt != "pickle" or get_settings().allow_pickle


current_ledger: ContextVar[Ledger | None] = ContextVar(
    "prefect_incomplete_ledger", default=None
)
"""The ledger of the resumable flow run in progress, if any."""
