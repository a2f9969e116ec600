"""Flow settings with real deployments: sequential processing, quotas, data loss,
consecutive errors and confidential data."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any
from uuid import UUID

import pytest
from _api import read_artifacts, wait_for_event
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.flow_engine import run_flow
from typer.testing import CliRunner

from prefect_incomplete import Status, errors, resumable
from prefect_incomplete._serialize import decode
from prefect_incomplete.artifacts import artifact_key
from prefect_incomplete.resume import resume
from prefect_incomplete.store import Store

pytestmark = pytest.mark.usefixtures("prefect_server", "store_url", "fast_retries")

CALLS: Counter[str] = Counter()
FAILURE: list[BaseException | None] = [None]


@pytest.fixture(autouse=True)
def reset_calls() -> None:
    """Every test starts with no calls and no failure."""
    CALLS.clear()
    FAILURE[0] = None


@resumable
@task
def fetch(day: str) -> list[int]:
    CALLS["fetch"] += 1
    return [1, 2]


@resumable
@task
def push(order: int) -> str:
    CALLS[f"push-{order}"] += 1
    if order == 2 and FAILURE[0] is not None:
        raise FAILURE[0]
    return f"pushed-{order}"


def job_body(day: str) -> list[str]:
    return [push(order) for order in fetch(day)]


@resumable(sequential=True)
@flow(name="sequential-orders")
def sequential_orders(day: str = "2026-12-01") -> list[str]:
    return job_body(day)


@resumable
@flow(name="quota-orders")
def quota_orders(day: str = "2026-12-01") -> list[str]:
    return job_body(day)


@resumable(data_loss=True)
@flow(name="lossy-orders")
def lossy_orders(day: str = "2026-12-01") -> list[str]:
    return job_body(day)


@resumable(consecutive_errors=3)
@flow(name="erroring-orders")
def erroring_orders(day: str = "2026-12-01") -> list[str]:
    return job_body(day)


def deploy(job: Any, name: str) -> UUID:
    """A deployment of `job` with a schedule, as `serve` or `deploy` would make it."""
    deployment_id: UUID = job.to_deployment(name=name, interval=3600).apply()
    return deployment_id


def run_deployed(job: Any, deployment_id: UUID) -> Any:
    """Create a flow run of the deployment and run it here, as a worker would."""
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(deployment_id)
    return run_flow(job, flow_run=flow_run, return_type="state")


def paused(deployment_id: UUID) -> bool:
    with get_client(sync_client=True) as client:
        return bool(client.read_deployment(deployment_id).paused)


def test_sequential_processing_holds_runs_and_pauses_schedules() -> None:
    """An open record pauses schedules and holds new runs; resolving resumes them."""
    deployment_id = deploy(sequential_orders, "sequential")
    FAILURE[0] = errors.DataError("order 2 has no address")

    first = run_deployed(sequential_orders, deployment_id)
    (record,) = Store().list()
    calls_before = Counter(CALLS)
    held = run_deployed(sequential_orders, deployment_id)
    held_here = sequential_orders(return_state=True)

    assert first.name == "Incomplete"
    assert paused(deployment_id)
    assert held.name == "Held"
    assert record.short_id in held.message
    assert held_here.name == "Held"
    assert calls_before == CALLS

    FAILURE[0] = None
    started = resume(record.short_id)
    with get_client(sync_client=True) as client:
        resumed_run = client.read_flow_run(started.flow_run_id)
    final = run_flow(sequential_orders, flow_run=resumed_run, return_type="state")

    assert final.is_completed()
    assert Store().get(record.id).status is Status.RESOLVED
    assert not paused(deployment_id)
    assert Store().holds() == []
    assert run_deployed(sequential_orders, deployment_id).is_completed()


def test_full_quota_without_data_loss_fails_loudly_and_pauses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full quota: the run fails naming it, schedules pause until space is freed."""
    monkeypatch.setenv("PREFECT_INCOMPLETE_FLOW_QUOTA_COUNT", "1")
    deployment_id = deploy(quota_orders, "quota")
    FAILURE[0] = errors.DataError("order 2 has no address")

    first = run_deployed(quota_orders, deployment_id)
    second = run_deployed(quota_orders, deployment_id)
    (record,) = Store().list()

    assert first.name == "Incomplete"
    assert second.name == "QuotaFull"
    assert "flow 'quota-orders' may keep 1 records" in second.message
    with pytest.raises(errors.DataError):
        second.result()
    assert paused(deployment_id)

    from prefect_incomplete.cli import app

    result = CliRunner().invoke(app, ["discard", record.short_id, "--yes"])

    assert result.exit_code == 0, result.output
    assert not paused(deployment_id)
    assert Store().holds() == []


def test_full_quota_with_data_loss_drops_the_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Data loss on: the record is dropped with an event, and schedules go on."""
    monkeypatch.setenv("PREFECT_INCOMPLETE_FLOW_QUOTA_COUNT", "1")
    deployment_id = deploy(lossy_orders, "lossy")
    FAILURE[0] = errors.DataError("order 2 has no address")

    first = run_deployed(lossy_orders, deployment_id)
    second = run_deployed(lossy_orders, deployment_id)

    assert first.name == "Incomplete"
    assert second.name == "Failed"
    assert len(Store().list()) == 1
    assert not paused(deployment_id)
    event = wait_for_event(
        "prefect-incomplete.dropped",
        related=run_resource(second.state_details.flow_run_id),
    )
    assert "quota full" in event["payload"]["reason"]


def test_consecutive_errors_deactivate_the_deployment() -> None:
    """Three failed runs in a row pause the schedules and emit deactivated."""
    deployment_id = deploy(erroring_orders, "erroring")
    FAILURE[0] = KeyError("price list missing")

    states = [run_deployed(erroring_orders, deployment_id) for _ in range(3)]

    assert [s.name for s in states] == ["Failed", "Failed", "Failed"]
    assert "Deployment paused after 3 consecutive failed runs" in states[2].message
    assert "Deployment paused" not in states[1].message
    assert paused(deployment_id)
    event = wait_for_event(
        "prefect-incomplete.deactivated",
        related=run_resource(states[2].state_details.flow_run_id),
    )
    assert event["payload"]["limit"] == 3

    from prefect_incomplete.cli import app

    result = CliRunner().invoke(app, ["reactivate", str(deployment_id)])
    assert result.exit_code == 0, result.output
    assert not paused(deployment_id)


def test_a_success_resets_and_data_errors_do_not_count() -> None:
    """Fail, fail, succeed, fail: no pause; three DataError runs: no pause either."""
    deployment_id = deploy(erroring_orders, "erroring-reset")

    for failure in (KeyError("x"), KeyError("x"), None, KeyError("x")):
        FAILURE[0] = failure
        run_deployed(erroring_orders, deployment_id)
    assert not paused(deployment_id)

    FAILURE[0] = errors.DataError("bad row")
    for _ in range(3):
        assert run_deployed(erroring_orders, deployment_id).name == "Incomplete"
    assert not paused(deployment_id)


def test_confidential_flow_shows_no_values() -> None:
    """Confidential: no value or message reaches artifacts, events or the CLI."""
    marker = "MARKER-7c1e-CONFIDENTIAL"

    @resumable
    @task
    def load(customer: str) -> dict[str, str]:
        return {"customer": customer, "note": marker}

    @resumable
    @task
    def bill(account: dict[str, str], memo: str) -> None:
        raise errors.DataError(f"cannot bill {memo}")

    @resumable(confidential=True)
    @flow(name="confidential-billing")
    def billing(customer: str) -> None:
        bill(load(customer), memo=marker)

    state = billing(customer=marker, return_state=True)
    (record,) = Store().list()

    assert state.name == "Incomplete"
    assert decode(record.parameters["customer"]) == marker
    assert decode(record.failed_steps[0].inputs["memo"]) == marker
    from prefect_incomplete.cli import app

    runner = CliRunner()
    shown = [
        runner.invoke(app, ["show", record.short_id]).output,
        runner.invoke(app, ["show", record.short_id, "--json"]).output,
        runner.invoke(app, ["ls", "--json"]).output,
        runner.invoke(app, ["ls"]).output,
        read_artifact_text(artifact_key(record)),
        json.dumps(
            wait_for_event(
                "prefect-incomplete.stored",
                related=run_resource(record.flow_run_id),
            )
        ),
        state.message,
    ]
    for text in shown:
        assert marker not in text
    assert "bill[1]" in shown[0]
    assert "DataError" in shown[0]


def test_negative_quota_is_refused() -> None:
    """A negative quota is an error when the flow is decorated."""
    with pytest.raises(
        ValueError, match="flow_quota_count must be a whole number >= 0"
    ):
        resumable(flow_quota_count=-1)(flow(lambda: None))


def test_negative_quota_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A negative quota in the environment names the setting."""
    from pydantic import ValidationError

    from prefect_incomplete.settings import Settings

    monkeypatch.setenv("PREFECT_INCOMPLETE_TOTAL_QUOTA_BYTES", "-5")
    with pytest.raises(ValidationError, match="total_quota_bytes"):
        Settings()


def run_resource(flow_run_id: Any) -> str:
    return f"prefect.flow-run.{flow_run_id}"


def read_artifact_text(key: str) -> str:
    return "\n".join(str(artifact.data) for artifact in read_artifacts(key))
