"""Resuming incomplete executions: replay, edits, claims, triggers, auto-retry."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import flows_for_resume as flows
import pytest
from _api import task_run_states
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

from prefect_incomplete import Status, _clock
from prefect_incomplete.resume import ResumeError, ResumeStarted, resume, retry_due
from prefect_incomplete.settings import DEFAULT_AUTO_RETRY_SCHEDULE
from prefect_incomplete.store import Store

pytestmark = pytest.mark.usefixtures("prefect_server", "fast_retries")


@pytest.fixture(autouse=True)
def clean_flows(store_url: str) -> None:
    """Every test starts with no recorded calls and no failure switches."""
    flows.reset()


def fix(qty: int, step: str = "price") -> dict[str, Any]:
    """The --set edit that corrects order 2's quantity."""
    return {f"{step}[2].order": {"id": 2, "qty": qty}}


def ran_once_each(**more: int) -> Counter[str]:
    """Call counts where every step ran once, but price[2] twice and `more`."""
    steps = ["fetch", "price-1", "push-1", "price-2", "push-2", "price-3", "push-3"]
    return Counter(dict.fromkeys(steps, 1) | {"price-2": 2} | more)


def first_run(job: Any = None) -> Any:
    """Run the orders flow once; it stops at price[2] (quantity 0)."""
    state = (job or flows.orders)(return_state=True)
    if asyncio.iscoroutine(state):
        state = asyncio.run(state)
    assert state.name == "Incomplete"
    (record,) = Store().list()
    return record


def test_completed_steps_are_replayed_not_rerun() -> None:
    """A resume runs each completed step's function zero more times."""
    record = first_run()
    assert record.failed_steps[0].key == "price[2]"

    started = resume(record.short_id, set_inputs=fix(3))

    assert started.state_name == "Completed"
    assert (
        Counter(
            {
                "fetch": 1,
                "price-1": 1,
                "push-1": 1,
                "price-2": 2,
                "push-2": 1,
                "price-3": 1,
                "push-3": 1,
            }
        )
        == flows.CALLS
    )
    done = Store().get(record.id)
    assert done.status is Status.RESOLVED
    assert done.resolved_by == started.flow_run_id


def test_mapped_steps_are_replayed_regression_keyerror() -> None:
    """Items of a `.map` that completed are replayed; the failed one runs again."""
    record = first_run(flows.orders_mapped)
    assert [step.key for step in record.failed_steps] == ["price[2]"]

    started = resume(record.short_id, set_inputs=fix(3))

    assert started.state_name == "Completed"
    assert ran_once_each() == flows.CALLS
    assert Store().get(record.id).status is Status.RESOLVED


def test_flow_retries_of_a_resume_replay_and_update_one_record_regression() -> None:
    """Each flow retry of a resumed run replays; the one record counts the run."""
    record = first_run(flows.orders_with_retries)
    before = Counter(flows.CALLS)
    assert before["price-1"] == 2  # Prefect's own flow retry ran it twice

    again = resume(record.short_id)

    assert again.state_name == "Incomplete"
    assert flows.CALLS - before == Counter({"price-2": 2})
    (only,) = Store().list()
    assert only.id == record.id
    assert only.attempts == 2
    assert only.status is Status.UNRESOLVED

    done = resume(record.short_id, set_inputs=fix(3))

    assert done.state_name == "Completed"
    assert done.record.status is Status.RESOLVED
    assert flows.CALLS - before == Counter(
        {"price-2": 3, "push-2": 1, "price-3": 1, "push-3": 1}
    )


def test_interrupted_resume_gives_the_claim_back_regression() -> None:
    """A resume ended by a signal leaves the record open, not claimed for an hour."""
    record = first_run()
    flows.INTERRUPTED_PUSH.add(3)

    with pytest.raises(flows.Interrupted):
        resume(record.short_id, set_inputs=fix(3))

    after = Store().get(record.id)
    assert after.status is Status.UNRESOLVED
    assert after.claimed_by is None
    assert after.attempts == 1
    flows.INTERRUPTED_PUSH.clear()
    assert resume(record.short_id).state_name == "Completed"


def test_input_no_pickle_can_hold_keeps_the_record_regression() -> None:
    """A client passed to steps is not stored; the record is, and replays by type."""
    flows.BROKEN_PUSH.add(2)
    state = flows.orders_with_client(return_state=True)

    assert state.name == "Incomplete"
    (record,) = Store().list()
    assert record.failed_steps[0].key == "send[2]"
    assert record.failed_steps[0].inputs["client"].format == "none"
    assert record.failed_steps[0].message == "DataError: order 2 was refused"

    flows.BROKEN_PUSH.clear()
    assert resume(record.short_id).state_name == "Completed"
    assert Counter({"order_ids": 1, "send-1": 1, "send-2": 2}) == flows.CALLS


def test_stored_pickle_runs_again_when_pickles_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pickled output is not loaded once pickles are refused: its step reruns."""
    flows.BROKEN_PUSH.add(10)
    state = flows.orders_by_date(return_state=True)
    assert state.name == "Incomplete"
    (record,) = Store().list()
    (dates,) = [s for s in record.completed_steps if s.key == "order_dates[1]"]
    assert dates.output.format == "pickle"

    monkeypatch.setenv("PREFECT_INCOMPLETE_ALLOW_PICKLE", "false")
    flows.BROKEN_PUSH.clear()
    started = resume(record.short_id)

    assert started.state_name == "Completed"
    assert flows.CALLS["order_dates"] == 2


def test_gathered_steps_that_end_after_the_failure_are_replayed_regression() -> None:
    """A step of asyncio.gather that completes after its sibling failed is kept."""
    record = first_run(flows.orders_gathered)
    assert [s.key for s in record.failed_steps] == ["price_later[2]"]
    assert "price_later[3]" in [s.key for s in record.completed_steps]

    started = resume(record.short_id, set_inputs=fix(3, step="price_later"))

    assert started.state_name == "Completed"
    assert (
        Counter(
            {"fetch": 1, "later-1": 1, "later-2": 2, "later-3": 1}
            | {"price-1": 1, "price-2": 2, "price-3": 1}
        )
        == flows.CALLS
    )


def test_replayed_steps_show_as_replayed_task_runs() -> None:
    """Replayed steps are completed task runs named Replayed in the Prefect API."""
    record = first_run()
    started = resume(record.short_id, set_inputs=fix(3))

    expected = Counter({"Replayed": 3, "Completed": 4})
    assert task_run_states(started.flow_run_id, expected) == expected


def test_edit_reaches_the_failed_step() -> None:
    """--set gives the failed step the corrected input, and it is kept in the record."""
    record = first_run()

    resume(record.short_id, set_inputs=fix(7))

    assert {"id": 2, "qty": 7, "total": 70} in flows.RECEIVED


def test_divergent_path_runs_for_real() -> None:
    """A changed parameter changes fetch's input: it runs again; equal inputs replay."""
    record = first_run()

    resume(
        record.short_id,
        params={"day": "2026-12-02"},
        set_inputs=fix(1),
    )

    assert flows.CALLS["fetch"] == 2
    assert flows.CALLS["price-1"] == 1


def test_chained_failures_end_resolved() -> None:
    """Fail, resume, fail later, resume: each success ran once, each failure per try."""
    flows.BROKEN_PUSH.add(3)
    record = first_run()

    again = resume(record.short_id, set_inputs=fix(1))
    after_second = Store().get(record.id)
    flows.BROKEN_PUSH.clear()
    final = resume(record.short_id)

    assert again.state_name == "Incomplete"
    assert after_second.attempts == 2
    assert [s.key for s in after_second.failed_steps] == ["push[3]"]
    assert final.state_name == "Completed"
    assert Store().get(record.id).status is Status.RESOLVED
    assert (
        Counter(
            {
                "fetch": 1,
                "price-1": 1,
                "push-1": 1,
                "price-2": 2,
                "push-2": 1,
                "price-3": 1,
                "push-3": 2,
            }
        )
        == flows.CALLS
    )


def test_async_flow_resumes() -> None:
    """An async flow with async tasks is replayed and resolved the same way."""
    record = first_run(flows.orders_async)

    started = resume(record.short_id, set_inputs=fix(2, "price_async"))

    assert started.state_name == "Completed"
    assert flows.CALLS["fetch"] == 1
    assert flows.CALLS["price-1"] == 1
    assert Store().get(record.id).status is Status.RESOLVED


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_two_concurrent_resumes_only_one_runs(
    database: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two resumes of one record at once: one runs, the other is refused."""
    if database == "postgresql":
        url = request.getfixturevalue("postgres_url")
        monkeypatch.setenv("PREFECT_INCOMPLETE_DATABASE_URL", url)
    record = first_run()
    flows.SLOW_PUSH_SECONDS[0] = 1.5
    barrier = threading.Barrier(2)
    outcomes: list[ResumeStarted | ResumeError] = []

    def attempt() -> None:
        barrier.wait()
        try:
            outcomes.append(resume(record.id, set_inputs=fix(1)))
        except ResumeError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    started = [o for o in outcomes if isinstance(o, ResumeStarted)]
    refused = [o for o in outcomes if isinstance(o, ResumeError)]
    assert len(started) == 1
    assert len(refused) == 1
    assert "already being resumed by" in str(refused[0])
    assert flows.CALLS["price-2"] == 2
    assert Store().get(record.id).status is Status.RESOLVED


def test_expired_lease_can_be_resumed() -> None:
    """A claim whose run died is taken again once its lease has run out."""
    record = first_run()
    store = Store()
    long_ago = datetime.now(UTC) - timedelta(hours=3)
    store.claim(record.id, "resume-of-a-dead-run", lease_seconds=60, now=long_ago)

    started = resume(record.short_id, set_inputs=fix(1))

    assert started.state_name == "Completed"
    assert store.get(record.id).status is Status.RESOLVED


def test_live_claim_refuses_a_resume() -> None:
    """While a lease is live, a resume names who holds the record, changing nothing."""
    record = first_run()
    store = Store()
    store.claim(record.id, "resume-elsewhere", lease_seconds=600)
    before = store.get(record.id)

    with pytest.raises(
        ResumeError,
        match=r"already being resumed by a resume whose flow run has not started yet",
    ):
        resume(record.short_id, set_inputs=fix(1))

    assert store.get(record.id) == before


class TestBadInputChangesNothing:
    """A resume that cannot start says why in one sentence and leaves the record."""

    def test_unknown_record(self) -> None:
        """An id that matches nothing."""
        with pytest.raises(
            ResumeError, match="no incomplete execution matches 'ffffffff'"
        ):
            resume("ffffffff")

    def test_resolved_and_discarded(self) -> None:
        """Resolved and discarded records have nothing to resume."""
        record = first_run()
        store = Store()
        store.discard([record.id])

        with pytest.raises(
            ResumeError, match="is discarded; there is nothing to resume"
        ):
            resume(record.short_id)

    @pytest.mark.parametrize(
        ("edits", "message"),
        [
            ({"price[9].order": 1}, "has no failed step 'price\\[9\\]'"),
            ({"price[2].nope": 1}, "step price\\[2\\] has no input 'nope'"),
            ({"price[2].order": "not a dict"}, "is not a valid 'order'"),
            ({"noDot": 1}, "malformed --set target"),
        ],
    )
    def test_bad_step_edit(self, edits: dict[str, Any], message: str) -> None:
        """Unknown step, unknown input, a value the signature rejects, no dot."""
        record = first_run()
        before = Store().get(record.id)

        with pytest.raises(ResumeError, match=message):
            resume(record.short_id, set_inputs=edits)

        assert Store().get(record.id) == before
        assert flows.CALLS["price-2"] == 1

    def test_bad_parameter_edit(self) -> None:
        """A parameter the flow does not have, and a value its signature rejects."""
        record = first_run()
        before = Store().get(record.id)

        with pytest.raises(ResumeError, match="has no parameter 'month'"):
            resume(record.short_id, params={"month": "12"})
        with pytest.raises(ResumeError, match="--param rejected"):
            resume(record.short_id, params={"day": {"not": "a string"}})

        assert Store().get(record.id) == before

    def test_refused_parameter_is_one_line_and_logs_no_value(self) -> None:
        """Prefect's refusal log, which lists every parameter, is kept quiet."""
        import logging

        record = first_run(flows.orders_signed)
        seen: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda entry: seen.append(entry.getMessage())  # type: ignore[method-assign]
        logging.getLogger("prefect.flows").addHandler(handler)
        try:
            with pytest.raises(ResumeError) as refused:
                resume(record.short_id, params={"batch": "many"})
        finally:
            logging.getLogger("prefect.flows").removeHandler(handler)

        message = str(refused.value)
        assert "\n" not in message
        assert message.startswith("--param rejected by flow orders-signed: ")
        assert "batch: Input should be a valid integer" in message
        assert not [line for line in seen if "pw-SECRET-5150" in line]

    def test_edited_secret_parameter_keeps_its_type_regression(self) -> None:
        """--param api_key=TEXT reaches a `SecretStr` parameter as a SecretStr."""
        from pydantic import SecretStr

        from prefect_incomplete._serialize import decode

        record = first_run(flows.orders_keyed)

        started = resume(
            record.short_id, set_inputs=fix(3), params={"api_key": "key-77-new"}
        )

        assert started.state_name == "Completed"
        assert flows.CALLS["signed-with-key-77-new"] == 1
        stored = decode(Store().get(record.id).parameters["api_key"])
        assert isinstance(stored, SecretStr)
        assert stored.get_secret_value() == "key-77-new"

    def test_entrypoint_that_no_longer_imports(self) -> None:
        """A record whose flow cannot be imported any more is refused, unchanged."""
        record = first_run()
        store = Store()
        with store._transaction("test: break the entrypoint") as session:  # test-only
            row = store._locked(session, record.id)
            row.entrypoint = "flows_that_were_deleted.orders"
        before = store.get(record.id)

        with pytest.raises(
            ResumeError, match="no longer imports from flows_that_were_deleted"
        ):
            resume(record.short_id)

        assert store.get(record.id) == before


def test_auto_retry_follows_the_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """A retryable record is retried at 1 min, 10 min ... 3 h, then waits for people."""
    flows.BROKEN_PUSH.add(2)
    clock = [datetime(2026, 12, 1, 8, 0, tzinfo=UTC)]
    monkeypatch.setattr(_clock, "now", lambda: clock[0])
    state = flows.flaky_orders(return_state=True)
    (record,) = Store().list()
    assert state.name == "Incomplete"
    assert record.status is Status.SCHEDULED

    waits = []
    for _ in DEFAULT_AUTO_RETRY_SCHEDULE:
        due_at = Store().get(record.id).next_retry_at
        assert due_at is not None
        waits.append((due_at - clock[0]).total_seconds())
        clock[0] = due_at - timedelta(seconds=1)
        assert retry_due(now=clock[0]) == []
        clock[0] = due_at
        (outcome,) = retry_due(now=clock[0])
        assert isinstance(outcome, ResumeStarted)

    final = Store().get(record.id)
    assert waits == list(DEFAULT_AUTO_RETRY_SCHEDULE)
    assert final.status is Status.UNRESOLVED
    assert final.next_retry_at is None
    assert final.attempts == 1 + len(DEFAULT_AUTO_RETRY_SCHEDULE)
    assert flows.CALLS["flaky-2"] == final.attempts * 4
    assert flows.CALLS["order_ids"] == 1
    assert flows.CALLS["flaky-1"] == 1


def test_auto_retry_resolves_when_the_service_is_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A due retry of a record whose service came back resolves it."""
    flows.BROKEN_PUSH.add(2)
    state = flows.flaky_orders(return_state=True)
    (record,) = Store().list()
    flows.BROKEN_PUSH.clear()

    assert state.name == "Incomplete"
    assert retry_due(now=datetime.now(UTC)) == []
    (outcome,) = retry_due(now=datetime.now(UTC) + timedelta(minutes=2))

    assert isinstance(outcome, ResumeStarted)
    assert outcome.state_name == "Completed"
    assert Store().get(record.id).status is Status.RESOLVED


def test_trigger_path_starts_a_run_of_the_deployment() -> None:
    """--via event emits the resume event; the deployment's trigger starts a run."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.flow_engine import run_flow

    from prefect_incomplete.resume import resume_trigger

    deployment_id = flows.orders.to_deployment(
        name="orders-resumable", triggers=[resume_trigger(flows.orders)]
    ).apply()
    with get_client(sync_client=True) as client:
        created: FlowRun = client.create_flow_run_from_deployment(deployment_id)
    state = run_flow(flows.orders, flow_run=created, return_type="state")
    (record,) = Store().list()
    assert state.name == "Incomplete"
    assert record.deployment_id == deployment_id

    started = resume(record.short_id, via="event", set_inputs=fix(4))

    assert started.via == "event"
    run = wait_for_run(deployment_id, exclude=created.id)
    assert (
        run.parameters["incomplete_execution_id"]
        == f"prefect-incomplete.record.{record.id}"
    )
    final = run_flow(flows.orders, flow_run=run, return_type="state")
    assert final.is_completed()
    assert Store().get(record.id).status is Status.RESOLVED
    assert flows.CALLS["price-2"] == 2
    assert flows.CALLS["price-1"] == 1


def wait_for_run(deployment_id: Any, *, exclude: Any, timeout: float = 30) -> Any:
    """The first flow run of the deployment other than `exclude`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    id=DeploymentFilterId(any_=[deployment_id])
                )
            )
        fresh = [run for run in runs if run.id != exclude]
        if fresh:
            return fresh[0]
        time.sleep(0.5)
    raise AssertionError(
        f"the trigger started no run of {deployment_id} in {timeout} s"
    )


def deployed_first_run(job: Any, name: str) -> tuple[Any, Any]:
    """Deploy `job` and run one flow run of it here; give (deployment, record)."""
    from prefect.flow_engine import run_flow

    deployment_id = job.to_deployment(name=name).apply()
    with get_client(sync_client=True) as client:
        created = client.create_flow_run_from_deployment(deployment_id)
    state = run_flow(job, flow_run=created, return_type="state")
    assert state.name == "Incomplete"
    (record,) = Store().list()
    assert record.deployment_id == deployment_id
    return deployment_id, record


def test_deployment_path_claims_then_creates_the_run() -> None:
    """A deployed record resumes through run_deployment; the run resolves it."""
    from prefect.flow_engine import run_flow

    deployment_id, record = deployed_first_run(flows.orders, "orders-run-deployment")

    started = resume(record.short_id, set_inputs=fix(2))
    claimed = Store().get(record.id)
    with pytest.raises(ResumeError, match="already being resumed"):
        resume(record.short_id)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(started.flow_run_id)
    final = run_flow(flows.orders, flow_run=run, return_type="state")

    assert started.via == "deployment"
    assert run.deployment_id == deployment_id
    assert run.parameters["incomplete_execution_id"] == str(record.id)
    assert claimed.status is Status.IN_PROGRESS
    assert final.is_completed()
    assert Store().get(record.id).resolved_by == run.id
    assert flows.CALLS["price-1"] == 1
    assert flows.CALLS["price-2"] == 2


def test_deployed_auto_retry_is_a_scheduled_run_on_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A retryable record of a deployment gets a scheduled run at its retry time."""
    from prefect.flow_engine import run_flow

    monkeypatch.setenv("PREFECT_INCOMPLETE_AUTO_RETRY_SCHEDULE", "[2]")
    flows.BROKEN_PUSH.add(2)
    deployment_id, record = deployed_first_run(flows.flaky_orders, "flaky-auto-retry")
    assert record.status is Status.SCHEDULED

    run = wait_for_run(deployment_id, exclude=record.flow_run_id)
    assert run.state.is_scheduled()
    assert run.parameters["incomplete_execution_id"] == str(record.id)
    scheduled = run.state.state_details.scheduled_time
    assert abs((scheduled - record.next_retry_at).total_seconds()) < 1
    assert retry_due(now=record.next_retry_at + timedelta(seconds=1)) == []

    flows.BROKEN_PUSH.clear()
    final = run_flow(flows.flaky_orders, flow_run=run, return_type="state")

    assert final.is_completed()
    assert Store().get(record.id).status is Status.RESOLVED


def test_a_run_for_a_closed_record_does_nothing() -> None:
    """A run started for a resolved record ends NotResumed and runs no step."""
    record = first_run()
    resume(record.short_id, set_inputs=fix(1))
    calls_before = Counter(flows.CALLS)

    state = flows.orders(return_state=True, incomplete_execution_id=str(record.id))

    assert state.name == "NotResumed"
    assert "resolved" in state.message
    assert calls_before == flows.CALLS


@pytest.mark.parametrize("reference", ["2e", "not-a-record", "0000"])
def test_a_run_for_a_bad_record_id_does_nothing(reference: str) -> None:
    """A too short, malformed or unknown id ends the run NotResumed, no step run."""
    state = flows.orders(return_state=True, incomplete_execution_id=reference)

    assert state.name == "NotResumed"
    assert "this run did nothing" in state.message
    assert not flows.CALLS


def test_command_line_values_keep_their_text_when_the_type_wants_it() -> None:
    """`--param day=20261202` stays the text "20261202" for a `day: str` parameter."""
    from prefect_incomplete.resume import parse_assignments

    record = first_run()
    params = parse_assignments(["day=20261202"], what="--param")
    edits = parse_assignments(['price[2].order={"id": 2, "qty": 5}'], what="--set")

    started = resume(record.short_id, params=params, set_inputs=edits)

    assert started.state_name == "Completed"
    assert decode_parameter(Store().get(record.id), "day") == "20261202"
    assert {"id": 2, "qty": 5, "total": 50} in flows.RECEIVED


def decode_parameter(record: Any, name: str) -> Any:
    from prefect_incomplete._serialize import decode

    return decode(record.parameters[name])


def test_a_long_resume_keeps_its_claim(monkeypatch: pytest.MonkeyPatch) -> None:
    """A resumed run renews its lease: a second resume after the first lease ends
    is still refused while the run goes on."""
    record = first_run()
    monkeypatch.setenv("PREFECT_INCOMPLETE_LEASE_SECONDS", "0.9")
    flows.SLOW_PUSH_SECONDS[0] = 2.0
    outcomes: list[Any] = []

    def resume_now() -> None:
        outcomes.append(resume(record.short_id, set_inputs=fix(1)))

    first = threading.Thread(target=resume_now)
    first.start()
    time.sleep(2.5)
    with pytest.raises(ResumeError, match="already being resumed"):
        resume(record.short_id, set_inputs=fix(1))
    first.join(timeout=60)

    assert outcomes[0].state_name == "Completed"
    assert flows.CALLS["price-2"] == 2


def test_flow_survives_cloudpickle_as_serve_sends_it(
    store_url: str, tmp_path: Any
) -> None:
    """`serve` hands a flow to its run process with cloudpickle: that must work."""
    import os
    import subprocess
    import sys

    import cloudpickle
    from prefect.settings import PREFECT_API_URL

    pickled = tmp_path / "flow.pkl"
    pickled.write_bytes(cloudpickle.dumps(flows.orders))
    script = (
        "import cloudpickle, sys\n"
        f"job = cloudpickle.loads(open({str(pickled)!r}, 'rb').read())\n"
        "print(job(return_state=True).name)\n"
    )
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PYTHONPATH": os.path.dirname(flows.__file__),
    }

    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "Incomplete"
    (record,) = Store().list()
    assert record.failed_steps[0].key == "price[2]"
