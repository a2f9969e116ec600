"""Incomplete-execution records stored by real flow runs on a real Prefect server."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from _api import read_artifacts, wait_for_event
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    LogFilter,
    LogFilterFlowRunId,
)
from pydantic import SecretStr

from prefect_incomplete import Status, errors, resumable
from prefect_incomplete._serialize import REDACTED, decode
from prefect_incomplete.artifacts import artifact_key, escape, flow_table_key
from prefect_incomplete.errors import KINDS, Disposition, StepError
from prefect_incomplete.store import Store

pytestmark = pytest.mark.usefixtures("prefect_server", "store_url", "fast_retries")


def run_state(job: Any, **parameters: Any) -> Any:
    """Run a flow and give its final state, sync or async."""
    state = job(return_state=True, **parameters)
    if asyncio.iscoroutine(state):
        state = asyncio.run(state)
    return state


def read_artifact(key: str) -> Any:
    """The newest version of the artifact with `key`, or None."""
    found = read_artifacts(key)
    return found[0] if found else None


def read_logs(flow_run_id: Any) -> str:
    """Every log line of a flow run, as the Prefect server holds them."""
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
        text = "\n".join(log.message for log in logs)
        if "Finished in state" in text:
            return text
        time.sleep(0.2)
    return text


def kind_flow(kind_exc: BaseException, *, is_async: bool = False) -> Any:
    """A flow: a first step, then a step that raises `kind_exc`, uncaught."""

    @resumable
    @task
    def fetch(day: str) -> list[int]:
        return [1, 2]

    @resumable
    @task
    def push(order: int, note: str = "x") -> int:
        raise kind_exc

    @resumable
    @task
    async def push_async(order: int, note: str = "x") -> int:
        raise kind_exc

    @resumable
    @flow(name="kind-flow")
    def job(day: str = "2026-12-01") -> None:
        for order in fetch(day):
            push(order, note=f"order {order}")

    @resumable
    @flow(name="kind-flow-async")
    async def job_async(day: str = "2026-12-01") -> None:
        for order in fetch(day):
            await push_async(order, note=f"order {order}")

    return job_async if is_async else job


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_each_kind_stores_one_record(kind: type[StepError], is_async: bool) -> None:
    """A storing kind in the second step stores one record and ends Incomplete."""
    state = run_state(kind_flow(kind("it broke"), is_async=is_async))

    records = Store().list()
    assert len(records) == 1
    record = records[0]
    assert state.name == "Incomplete"
    assert state.is_failed()
    assert record.short_id in state.message
    assert f"prefect-incomplete resume {record.short_id}" in state.message
    assert record.flow_name == ("kind-flow-async" if is_async else "kind-flow")
    assert record.flow_run_id == state.state_details.flow_run_id
    assert record.deployment_id is None
    assert record.parameters["day"].preview == '"2026-12-01"'
    assert decode(record.parameters["day"]) == "2026-12-01"
    assert [s.key for s in record.completed_steps] == ["fetch[1]"]
    assert decode(record.completed_steps[0].output) == [1, 2]
    (failed,) = record.failed_steps
    assert failed.key == "push[1]" if not is_async else failed.key == "push_async[1]"
    assert failed.kind == kind.__name__
    assert failed.message == f"{kind.__name__}: it broke"
    assert failed.task_run_id is not None
    assert "raise kind_exc" in failed.traceback
    assert decode(failed.inputs["order"]) == 1
    assert decode(failed.inputs["note"]) == "order 1"
    assert record.attempts == 1
    assert record.size_bytes > 0
    if kind.retryable():
        assert record.disposition is Disposition.AUTO_RETRY
        assert record.status is Status.SCHEDULED
        assert record.next_retry_at is not None
        wait = (record.next_retry_at - record.created_at).total_seconds()
        assert 59 <= wait <= 61
    else:
        assert record.disposition is Disposition.MANUAL
        assert record.status is Status.UNRESOLVED
        assert record.next_retry_at is None

    artifact = read_artifact(artifact_key(record))
    assert artifact is not None
    assert artifact.type == "markdown"
    assert artifact.flow_run_id == record.flow_run_id
    assert artifact.task_run_id == failed.task_run_id
    assert f"**Kind:** {kind.__name__}" in artifact.data
    assert f"prefect-incomplete resume {record.short_id}" in artifact.data
    assert "push" in artifact.data
    table = read_artifact(flow_table_key(record.flow_name))
    assert table is not None
    assert record.short_id in str(table.data)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_first_step_failure_stores_nothing(is_async: bool) -> None:
    """The first task run failing fails the run as usual, with no record."""

    @resumable
    @task
    def fetch() -> None:
        raise errors.DataError("no work today")

    @resumable
    @flow
    def job() -> None:
        fetch()

    @resumable
    @flow
    async def job_async() -> None:
        fetch()

    state = run_state(job_async if is_async else job)

    assert state.is_failed()
    assert state.name == "Failed"
    assert Store().list() == []


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_unclassified_error_stores_nothing(is_async: bool) -> None:
    """An error no rule knows fails the run as usual, with no record."""
    state = run_state(kind_flow(KeyError("nope"), is_async=is_async))

    assert state.name == "Failed"
    assert "KeyError" in state.message
    assert Store().list() == []


def test_flow_that_catches_the_error_stores_nothing() -> None:
    """The flow body's own except clause is the user's handler: no record."""

    @resumable
    @task
    def fetch() -> int:
        return 1

    @resumable
    @task
    def push() -> None:
        raise errors.DataError("bad")

    @resumable
    @flow
    def job() -> str:
        fetch()
        try:
            push()
        except errors.DataError:
            return "handled"
        return "not reached"

    state = run_state(job)

    assert state.is_completed()
    assert state.result() == "handled"
    assert Store().list() == []


def test_mapped_failures_share_one_record() -> None:
    """Several failed map items: one record with each failed step and the outputs."""

    @resumable
    @task
    def fetch() -> list[int]:
        return [1, 2, 3, 4]

    @resumable
    @task
    def push(order: int) -> int:
        if order == 2:
            raise errors.DataError(f"order {order} has no address")
        if order == 4:
            raise errors.InvalidAccessTokenError("token expired")
        return order * 10

    @resumable
    @flow
    def job() -> list[int]:
        return push.map(fetch()).result()

    state = run_state(job)

    (record,) = Store().list()
    assert state.name == "Incomplete"
    failed = {s.key: s for s in record.failed_steps}
    assert set(failed) == {"push[2]", "push[4]"}
    assert failed["push[2]"].kind == "DataError"
    assert failed["push[4]"].kind == "InvalidAccessTokenError"
    assert decode(failed["push[2]"].inputs["order"]) == 2
    assert decode(failed["push[4]"].inputs["order"]) == 4
    outputs = {s.key: decode(s.output) for s in record.completed_steps}
    assert outputs == {"fetch[1]": [1, 2, 3, 4], "push[1]": 10, "push[3]": 30}
    assert record.disposition is Disposition.MANUAL


def test_flow_retries_run_before_a_record_is_stored() -> None:
    """With flow retries, each retry runs; only the last failure is stored, once."""
    calls: Counter[str] = Counter()

    @resumable
    @task
    def fetch() -> int:
        calls["fetch"] += 1
        return 1

    @resumable
    @task
    def push() -> None:
        calls["push"] += 1
        raise errors.DataError("bad")

    @resumable
    @flow(retries=2)
    def job() -> None:
        fetch()
        push()

    state = run_state(job)

    assert calls == Counter(fetch=3, push=3)
    assert state.name == "Incomplete"
    (record,) = Store().list()
    assert record.attempts == 1


def test_storing_turned_off_fails_as_unclassified(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """store=False on the flow: the run fails as usual and nothing is stored."""

    @resumable
    @task
    def fetch() -> int:
        return 1

    @resumable
    @task
    def push() -> None:
        raise errors.DataError("bad")

    @resumable(store=False)
    @flow
    def job() -> None:
        fetch()
        push()

    state = run_state(job)

    assert state.name == "Failed"
    assert Store().list() == []


def test_healthy_flow_does_no_database_io(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run with no failure never opens the store: its path cannot even exist."""
    monkeypatch.setenv(
        "PREFECT_INCOMPLETE_DATABASE_URL", "sqlite:////proc/no/such/x.db"
    )

    @resumable
    @task
    def fetch() -> int:
        return 1

    @resumable
    @task
    def push(n: int) -> int:
        return n + 1

    @resumable
    @flow
    def job() -> int:
        return push(fetch()) + push.submit(5).result() + sum(push.map([1, 2]).result())

    state = run_state(job)

    assert state.is_completed()
    assert state.result() == 2 + 6 + 5
    assert not Path("/proc/no").exists()


def test_unreachable_store_keeps_the_original_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A record that cannot be stored: the run fails with its error, the log says so."""
    monkeypatch.setenv(
        "PREFECT_INCOMPLETE_DATABASE_URL", "sqlite:////proc/no/such/x.db"
    )

    state = run_state(kind_flow(errors.DataError("row 7 has no price")))

    assert state.name == "Failed"
    assert "row 7 has no price" in state.message
    with pytest.raises(errors.DataError, match="row 7 has no price"):
        state.result()
    logs = read_logs(state.state_details.flow_run_id)
    assert "was NOT stored" in logs
    assert "/proc/no/such/x.db" in logs


def test_too_large_value_is_refused_naming_the_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A value over the size limit is not truncated: the record is refused, loudly."""
    monkeypatch.setenv("PREFECT_INCOMPLETE_MAX_VALUE_BYTES", "50")

    @resumable
    @task
    def fetch() -> str:
        return "x" * 10

    @resumable
    @task
    def push(blob: str) -> None:
        raise errors.MaxFileSizeExceededError("too big for the API")

    @resumable
    @flow
    def job() -> None:
        fetch()
        push("y" * 500)

    state = run_state(job)

    assert state.name == "Failed"
    assert Store().list() == []
    logs = read_logs(state.state_details.flow_run_id)
    assert "input 'blob' of step push[1]" in logs
    assert "over the limit of 50" in logs


def test_secrets_reach_no_artifact_log_or_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """SecretStr parameters and token= inputs are redacted everywhere but the store."""
    from typer.testing import CliRunner

    from prefect_incomplete.cli import app

    secret = "hunter2-PARAM-7f3a"
    token = "tok-INPUT-91bc"

    @resumable
    @task
    def fetch(api_key: SecretStr) -> list[dict[str, Any]]:
        return [{"id": 1, "password": "pw-OUTPUT-55de"}]

    @resumable
    @task
    def push(order: dict[str, Any], token: str) -> None:
        raise errors.InvalidAccessTokenError("the API refused the credentials")

    @resumable
    @flow(name="secret-flow")
    def job(api_key: SecretStr) -> None:
        for order in fetch(api_key):
            push(order, token=token)

    state = run_state(job, api_key=SecretStr(secret))

    (record,) = Store().list()
    assert state.name == "Incomplete"
    stored = decode(record.parameters["api_key"])
    assert isinstance(stored, SecretStr)
    assert stored.get_secret_value() == secret
    assert decode(record.failed_steps[0].inputs["token"]) == token

    artifact = read_artifact(artifact_key(record))
    table = read_artifact(flow_table_key("secret-flow"))
    logs = read_logs(state.state_details.flow_run_id)
    runner = CliRunner()
    shown = runner.invoke(app, ["show", record.short_id]).output
    listed = runner.invoke(app, ["ls", "--json"]).output
    for text in (artifact.data, str(table.data), logs, shown, listed):
        assert secret not in text
        assert token not in text
        assert "pw-OUTPUT-55de" not in text
    assert escape(REDACTED) in artifact.data


def test_error_messages_quoting_secrets_are_scrubbed_regression() -> None:
    """A message or URL that quotes a secret is stored and shown redacted."""
    import httpx
    from _servers import HTTPServer
    from typer.testing import CliRunner

    from prefect_incomplete.cli import app

    secret = "sk-PARAM-c4d1"
    token = "tok-QUERY-8e2f"

    @resumable
    @task
    def fetch(api_key: SecretStr) -> list[str]:
        return ["order-1"]

    @resumable
    @task
    def push(order: str, url: str, api_key: SecretStr, note: str) -> None:
        if order == "order-1":
            raise errors.InvalidAccessTokenError(
                f"refused key {api_key.get_secret_value()}"
            )
        httpx.get(url).raise_for_status()

    @resumable
    @flow(name="quoting-flow")
    def job(api_key: SecretStr, url: str) -> None:
        note = f"signed with {api_key.get_secret_value()}"  # a secret, plainly named
        orders = [*fetch(api_key), "order-2"]
        pushes = [push.submit(o, url, api_key, note) for o in orders]
        for future in pushes:
            future.wait()
        for future in pushes:
            future.result()

    with HTTPServer() as http:
        url = http.reply(f"/orders?access_token={token}", 401)
        state = run_state(job, api_key=SecretStr(secret), url=url)

    (record,) = Store().list()
    assert state.name == "Incomplete"
    assert [s.kind for s in record.failed_steps] == ["InvalidAccessTokenError"] * 2
    assert record.failed_steps[0].message == (
        f"InvalidAccessTokenError: refused key {REDACTED}"
    )
    assert f"access_token={REDACTED}" in record.failed_steps[1].message
    assert decode(record.parameters["url"]) == url
    assert decode(record.failed_steps[0].inputs["note"]) == f"signed with {secret}"
    assert record.failed_steps[0].inputs["note"].preview == f'"signed with {REDACTED}"'

    artifact = read_artifact(artifact_key(record))
    runner = CliRunner()
    shown = runner.invoke(app, ["show", record.short_id]).output
    listed = runner.invoke(app, ["ls", "--json"]).output
    for text in (
        artifact.data,
        shown,
        listed,
        *(s.traceback for s in record.failed_steps),
    ):
        assert secret not in text
        assert token not in text


def test_step_and_task_names_cannot_break_the_artifact() -> None:
    """A task name with backticks and newlines is escaped in headings and lists."""
    name = "push `x`\n# Owned [y](z)"

    @resumable
    @task(name=name)
    def fetch() -> int:
        return 1

    @resumable
    @task(name=name)
    def push(order: int) -> None:
        raise errors.DataError("bad order")

    @resumable
    @flow
    def job() -> None:
        push(fetch())

    state = run_state(job)

    (record,) = Store().list()
    lines = read_artifact(artifact_key(record)).data.splitlines()
    shown = r"push \`x\` \# Owned \[y\]\(z\)"
    assert state.name == "Incomplete"
    assert [s.key for s in record.failed_steps] == [f"{name}[2]"]
    assert f"## Failed step {shown}\\[2\\]" in lines
    assert f"**Task:** {shown}  " in lines
    assert f"- {shown}\\[1\\]" in lines
    assert [line for line in lines if line.startswith("# ")] == [
        f"# Incomplete execution `{record.short_id}`"
    ]


def test_error_text_cannot_inject_markup() -> None:
    """Markup in an error message or an input stays inert text in the artifact."""
    evil = "<script>alert(1)</script> **bold** [x](y) ```"

    @resumable
    @task
    def fetch() -> int:
        return 1

    @resumable
    @task
    def push(note: str) -> None:
        raise errors.DataError(evil)

    @resumable
    @flow
    def job() -> None:
        fetch()
        push(evil)

    state = run_state(job)

    (record,) = Store().list()
    artifact = read_artifact(artifact_key(record))
    assert state.name == "Incomplete"
    fence = "````"
    opened = artifact.data.index(fence + "text\n")
    closed = artifact.data.index("\n" + fence, opened + 1)
    inside, outside = (
        artifact.data[opened:closed],
        artifact.data.replace(artifact.data[opened:closed], ""),
    )
    assert evil in inside
    assert "<script>" not in outside
    assert "&lt;script&gt;" in outside
    assert "**bold**" not in outside
    assert "[x](y)" not in outside


def test_values_json_cannot_hold_are_pickled_or_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tuple input is pickled by default, and not stored when pickle is refused."""

    @resumable
    @task
    def fetch() -> int:
        return 1

    @resumable
    @task
    def push(pair: tuple[int, int]) -> None:
        raise errors.DataError("bad pair")

    @resumable
    @flow
    def job() -> None:
        fetch()
        push((1, 2))

    run_state(job)
    (pickled,) = Store().list()
    monkeypatch.setenv("PREFECT_INCOMPLETE_ALLOW_PICKLE", "false")
    run_state(job)
    refused = next(r for r in Store().list() if r.id != pickled.id)

    assert pickled.failed_steps[0].inputs["pair"].format == "pickle"
    monkeypatch.setenv("PREFECT_INCOMPLETE_ALLOW_PICKLE", "true")
    assert decode(pickled.failed_steps[0].inputs["pair"]) == (1, 2)
    assert refused.failed_steps[0].inputs["pair"].format == "none"
    assert refused.failed_steps[0].inputs["pair"].preview == "(1, 2)"


def test_stored_event_names_record_and_flow_run() -> None:
    """prefect-incomplete.stored is emitted with the record and the flow run."""
    state = run_state(kind_flow(errors.DataError("bad")))
    (record,) = Store().list()

    event = wait_for_event(
        "prefect-incomplete.stored", resource=f"prefect-incomplete.record.{record.id}"
    )

    assert (
        event["resource"]["prefect.resource.id"]
        == f"prefect-incomplete.record.{record.id}"
    )
    related = {r["prefect.resource.id"] for r in event["related"]}
    assert f"prefect.flow-run.{state.state_details.flow_run_id}" in related
    assert event["payload"]["failed_steps"][0]["kind"] == "DataError"
