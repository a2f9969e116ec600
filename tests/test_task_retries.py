"""Retry decisions of resumable tasks, in real flow runs on a real Prefect server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.states import Failed

from prefect_incomplete import errors, resumable
from prefect_incomplete.errors import KINDS, StepError
from prefect_incomplete.policy import DEFAULT_POLICIES

pytestmark = pytest.mark.usefixtures("prefect_server")


def expected_runs(kind: type[StepError]) -> int:
    """Runs of a second step failing with `kind` under the default policies."""
    policy = DEFAULT_POLICIES.get(kind)
    return 1 + (policy.attempts if policy else 0)


def make_flow(
    exc: BaseException, *, is_async: bool = False
) -> tuple[Any, Counter[str]]:
    """A flow whose second step raises `exc`; the body catches it."""
    calls: Counter[str] = Counter()

    @resumable
    @task
    def fetch() -> int:
        calls["fetch"] += 1
        return 1

    if is_async:

        @resumable
        @task
        async def push(n: int) -> None:
            calls["push"] += 1
            raise exc

        @flow
        async def job_async() -> None:
            fetch()
            try:
                await push(1)
            except Exception:
                calls["caught"] += 1

        return job_async, calls

    @resumable
    @task
    def push_sync(n: int) -> None:
        calls["push"] += 1
        raise exc

    @flow
    def job() -> None:
        fetch()
        try:
            push_sync(1)
        except Exception:
            calls["caught"] += 1

    return job, calls


def run(job: Any) -> None:
    result = job()
    if asyncio.iscoroutine(result):
        asyncio.run(result)


@pytest.mark.usefixtures("fast_retries")
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_second_step_runs_as_often_as_its_kind_says(
    kind: type[StepError], is_async: bool
) -> None:
    """Each kind raised in the second step gets its policy's attempts, sync or async."""
    job, calls = make_flow(kind("boom"), is_async=is_async)

    run(job)

    assert calls["push"] == expected_runs(kind)
    assert calls["caught"] == 1


@pytest.mark.usefixtures("fast_retries")
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_first_step_is_never_retried(is_async: bool) -> None:
    """A retryable failure of the first task run of a flow run is not retried."""
    calls: Counter[str] = Counter()

    @resumable
    @task
    def trigger() -> None:
        calls["trigger"] += 1
        raise errors.ConnectionError("down")

    @resumable
    @task
    async def trigger_async() -> None:
        calls["trigger"] += 1
        raise errors.ConnectionError("down")

    @flow
    def job() -> None:
        with contextlib.suppress(ConnectionError):
            trigger()

    @flow
    async def job_async() -> None:
        with contextlib.suppress(ConnectionError):
            await trigger_async()

    run(job_async if is_async else job)

    assert calls["trigger"] == 1


@pytest.mark.usefixtures("fast_retries")
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_unclassified_error_is_never_retried(is_async: bool) -> None:
    """An exception no rule knows fails the step at once."""
    job, calls = make_flow(KeyError("missing"), is_async=is_async)

    run(job)

    assert calls["push"] == 1


@pytest.mark.usefixtures("fast_retries")
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_returned_failed_state_is_classified_like_a_raise(is_async: bool) -> None:
    """A task that returns Failed(data=exc) is retried by exc's kind."""
    calls: Counter[str] = Counter()

    @resumable
    @task
    def fetch() -> int:
        return 1

    @resumable
    @task
    def push() -> Any:
        calls["push"] += 1
        return Failed(data=errors.ConnectionError("down"), message="down")

    @resumable
    @task
    async def push_async() -> Any:
        calls["push"] += 1
        return Failed(data=errors.ConnectionError("down"), message="down")

    @flow
    def job() -> None:
        fetch()
        push(return_state=True)

    @flow
    async def job_async() -> None:
        fetch()
        await push_async(return_state=True)

    run(job_async if is_async else job)

    assert calls["push"] == expected_runs(errors.ConnectionError)


@pytest.mark.usefixtures("fast_retries")
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_users_on_failure_hook_runs_once(is_async: bool) -> None:
    """The user's own on_failure hook is kept and runs once, after the retries."""
    calls: Counter[str] = Counter()

    def on_failure(task: Any, task_run: Any, state: Any) -> None:
        calls["hook"] += 1

    @resumable
    @task
    def fetch() -> int:
        return 1

    @resumable
    @task(on_failure=[on_failure])
    def push() -> None:
        calls["push"] += 1
        raise errors.ModuleTimeoutError("slow")

    @resumable
    @task(on_failure=[on_failure])
    async def push_async() -> None:
        calls["push"] += 1
        raise errors.ModuleTimeoutError("slow")

    @flow
    def job() -> None:
        fetch()
        push(return_state=True)

    @flow
    async def job_async() -> None:
        fetch()
        await push_async(return_state=True)

    run(job_async if is_async else job)

    assert calls["push"] == expected_runs(errors.ModuleTimeoutError)
    assert calls["hook"] == 1


@pytest.mark.usefixtures("fast_retries")
def test_submit_and_map_items_are_retried_one_by_one() -> None:
    """Every submitted and mapped task run gets its own retries."""
    calls: Counter[str] = Counter()

    @resumable
    @task
    def fetch() -> list[int]:
        return [1, 2, 3]

    @resumable
    @task
    def push(n: int) -> int:
        calls[f"push-{n}"] += 1
        if n == 2:
            raise errors.ConnectionError("down")
        return n

    @flow
    def job() -> None:
        items = fetch()
        push.submit(2).wait()
        push.map(items).wait()

    job()

    assert calls["push-1"] == 1
    assert calls["push-3"] == 1
    assert calls["push-2"] == 2 * expected_runs(errors.ConnectionError)


@pytest.mark.usefixtures("fast_retries")
def test_users_own_retries_override_the_policy() -> None:
    """`@task(retries=1)` gives one retry to retryable and unclassified kinds."""
    calls: Counter[str] = Counter()

    @resumable
    @task
    def fetch() -> int:
        return 1

    @resumable
    @task(retries=1)
    def push(exc: Exception) -> None:
        calls[type(exc).__name__] += 1
        raise exc

    @flow
    def job() -> None:
        fetch()
        push(errors.ConnectionError("down"), return_state=True)
        push(KeyError("x"), return_state=True)
        push(errors.DataError("bad"), return_state=True)

    job()

    assert calls == Counter(ConnectionError=2, KeyError=2, DataError=1)


@pytest.mark.usefixtures("fast_retries")
def test_policy_per_task_and_with_options() -> None:
    """A per-task policy sets the attempts; with_options(retries=...) overrides it."""
    calls: Counter[str] = Counter()

    @resumable
    @task
    def fetch() -> int:
        return 1

    @resumable(policies={"ConnectionError": {"attempts": 1}})
    @task
    def push(tag: str) -> None:
        calls[tag] += 1
        raise errors.ConnectionError("down")

    @flow
    def job() -> None:
        fetch()
        push("policy", return_state=True)
        push.with_options(retries=4)("options", return_state=True)

    job()

    assert calls == Counter(policy=2, options=5)


@pytest.mark.usefixtures("fast_retries")
def test_global_policy_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """PREFECT_INCOMPLETE_POLICIES changes the attempts of tasks decorated after it."""
    monkeypatch.setenv(
        "PREFECT_INCOMPLETE_POLICIES", '{"OutOfSpaceError": {"attempts": 4}}'
    )
    job, calls = make_flow(errors.OutOfSpaceError("full"))

    run(job)

    assert calls["push"] == 5


def test_retry_after_is_the_shortest_delay() -> None:
    """A RateLimitError's retry-after sets the AwaitingRetry time of the task run."""
    calls: Counter[str] = Counter()
    task_run_ids: list[Any] = []

    @resumable
    @task
    def fetch() -> int:
        return 1

    @resumable(policies={"RateLimitError": {"attempts": 1, "delay": 0.0}})
    @task
    def push() -> int:
        calls["push"] += 1
        if calls["push"] == 1:
            raise errors.RateLimitError("slow down", retry_after=1.5)
        return 2

    @flow
    def job() -> None:
        fetch()
        future = push.submit()
        task_run_ids.append(future.task_run_id)
        future.result()

    started = time.monotonic()
    job()
    elapsed = time.monotonic() - started

    assert calls["push"] == 2
    assert elapsed >= 1.5
    with get_client(sync_client=True) as client:
        states = client.read_task_run_states(task_run_ids[0])
    waits = [s for s in states if s.name == "AwaitingRetry"]
    assert len(waits) == 1
    delay = (waits[0].state_details.scheduled_time - waits[0].timestamp).total_seconds()
    assert 1.4 <= delay <= 2.0


@pytest.mark.usefixtures("fast_retries")
def test_prefect_task_timeout_is_a_module_timeout() -> None:
    """Prefect's own task timeout is classified as ModuleTimeoutError and retried."""
    calls: Counter[str] = Counter()

    @resumable
    @task
    def fetch() -> int:
        return 1

    @resumable
    @task(timeout_seconds=0.2)
    def slow() -> None:
        calls["slow"] += 1
        time.sleep(2)

    @flow
    def job() -> None:
        fetch()
        slow(return_state=True)

    job()

    assert calls["slow"] == expected_runs(errors.ModuleTimeoutError)


def test_testing_switch_makes_delays_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """PREFECT_INCOMPLETE_TESTING=true runs retries at once despite a long policy."""
    monkeypatch.setenv("PREFECT_INCOMPLETE_TESTING", "true")
    monkeypatch.setenv(
        "PREFECT_INCOMPLETE_POLICIES", '{"ConnectionError": {"delay": 30}}'
    )
    job, calls = make_flow(errors.ConnectionError("down"))

    started = time.monotonic()
    run(job)

    assert calls["push"] == expected_runs(errors.ConnectionError)
    assert time.monotonic() - started < 15


class TestBadInputFailsAtDecoration:
    """Misuse is an error when the decorator runs, not when the flow runs."""

    def test_negative_retry_count(self) -> None:
        """A policy with a negative attempt count is refused."""
        with pytest.raises(ValueError, match="attempts"):
            resumable(policies={"ConnectionError": {"attempts": -1}})(task(lambda: 1))

    def test_policy_for_unknown_kind(self) -> None:
        """A policy for a kind that does not exist names the valid kinds."""
        with pytest.raises(ValueError, match="unknown error kind 'NetworkError'"):
            resumable(policies={"NetworkError": {"attempts": 1}})(task(lambda: 1))

    def test_policy_for_a_kind_that_is_not_retried(self) -> None:
        """DataError waits for a person: it cannot get a retry policy."""
        with pytest.raises(ValueError, match="DataError is never retried"):
            resumable(policies={errors.DataError: {"attempts": 1}})(task(lambda: 1))

    def test_negative_retries_on_the_task(self) -> None:
        """A negative `retries` given through with_options is refused."""
        decorated = resumable(task(lambda: 1))
        with pytest.raises(ValueError, match="retries must be >= 0"):
            decorated.with_options(retries=-2)

    def test_not_a_task_or_flow(self) -> None:
        """resumable on a plain function says where it belongs."""
        with pytest.raises(TypeError, match="above @task or @flow"):
            resumable(lambda: 1)

    def test_task_options_on_a_flow(self) -> None:
        """A task's option given to a flow is refused with the reason."""
        with pytest.raises(TypeError, match="option of a resumable task"):
            resumable(step="x")(flow(lambda: 1))

    @pytest.mark.parametrize(
        "step", ["", "push.order", "push[2]", "push]", "a=b", "push order", "a\nb", 3]
    )
    def test_step_name_that_set_cannot_name(self, step: object) -> None:
        """A step name --set STEP[N].ARG=VALUE could not parse is refused."""
        with pytest.raises(ValueError, match="cannot name a step") as caught:
            resumable(step=step)(task(lambda: 1))

        assert str(caught.value) == (
            f"resumable(step={step!r}) cannot name a step: use letters, digits, _ "
            "and - only, as prefect-incomplete resume --set STEP[N].ARG=VALUE names "
            "the step by it"
        )

    @pytest.mark.parametrize("step", ["push_order", "push-order-2", "étape"])
    def test_step_names_that_set_can_name(self, step: str) -> None:
        """Letters, digits, _ and - make a step name."""
        decorated = resumable(step=step)(task(lambda: 1))

        assert decorated._incomplete.step == step

    def test_bad_global_setting(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A global policy for an unknown kind fails when a task is decorated."""
        monkeypatch.setenv("PREFECT_INCOMPLETE_POLICIES", '{"Nope": {}}')
        with pytest.raises(ValueError, match="unknown error kind 'Nope'"):
            resumable(task(lambda: 1))
