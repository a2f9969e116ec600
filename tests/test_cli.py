"""The ``prefect-incomplete`` command line, on a real SQLite store.

No Prefect server runs here: PREFECT_API_URL points at a loopback port that
nobody listens on, so publishing artifacts fails at once and is only logged.
Resumes that would run a flow are replaced by fakes that do to the store what
a run would do; the refusals run the real `resume()`.
"""

from __future__ import annotations

import json
import pickle
import re
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from uuid import UUID, uuid4

import pytest
from prefect.events import Event
from prefect.events.clients import AssertingEventsClient
from prefect.events.worker import EventsWorker
from pydantic import SecretStr
from typer.testing import CliRunner, Result

from prefect_incomplete import _controls, artifacts, cli
from prefect_incomplete import resume as resuming
from prefect_incomplete._serialize import REDACTED, encode
from prefect_incomplete.errors import Disposition
from prefect_incomplete.models import (
    FailedStep,
    IncompleteExecution,
    Status,
    StepOutput,
)
from prefect_incomplete.resume import (
    RecordUnavailable,
    ResumeError,
    ResumeStarted,
    Typed,
)
from prefect_incomplete.store import ClaimRefused, Store, StoreError

TOKEN = "tok-4f9c1e-never-shown"
PASSWORD = "pw-77aa01-never-shown"
API_KEY = "key-c0ffee-never-shown"
SECRETS = (TOKEN, PASSWORD, API_KEY)

NOW = datetime.now(UTC)

# name: (id, flow, status, kind, created days ago, changed days ago)
SEEDS: dict[str, tuple[str, str, Status, str, float, float]] = {
    "open": ("aaaa1111", "sync_orders", Status.UNRESOLVED, "DataError", 0.04, 0.04),
    "scheduled": (
        "aaaa2222",
        "sync_orders",
        Status.SCHEDULED,
        "ConnectionError",
        0.08,
        0.08,
    ),
    "resolved": (
        "bbbb3333",
        "nightly_export",
        Status.RESOLVED,
        "InvalidAccessTokenError",
        0.12,
        40,
    ),
    "old_discarded": (
        "cccc4444",
        "nightly_export",
        Status.DISCARDED,
        "DataError",
        50,
        45,
    ),
    "discarded": ("dddd5555", "sync_orders", Status.DISCARDED, "DataError", 5, 5),
    "old_open": ("eeee6666", "sync_orders", Status.UNRESOLVED, "DataError", 60, 60),
}
NEWEST_FIRST = [
    "open",
    "scheduled",
    "resolved",
    "discarded",
    "old_discarded",
    "old_open",
]


def _uuid(prefix: str) -> UUID:
    return UUID(f"{prefix}-0000-4000-8000-{uuid4().hex[:12]}")


def _record(
    prefix: str, flow: str, status: Status, kind: str, created: float, changed: float
) -> IncompleteExecution:
    failed = FailedStep(
        key="push_order[2]",
        task_name="push_order",
        kind=kind,
        message="order 17 has no [bold]customer[/bold]",
        traceback='Traceback (most recent call last):\n  File "f.py", line 3\n',
        inputs={
            "order": encode({"id": 17, "api_key": API_KEY}, name="order"),
            "login": encode(SecretStr(PASSWORD), name="login"),
        },
    )
    done = StepOutput(
        key="fetch_orders[1]",
        task_name="fetch_orders",
        inputs_fingerprint="f" * 64,
        output=encode([{"id": 17}]),
    )
    scheduled = status is Status.SCHEDULED
    return IncompleteExecution(
        id=_uuid(prefix),
        flow_name=flow,
        flow_run_id=uuid4(),
        parameters={
            "day": encode("2026-12-01", name="day"),
            "token": encode(TOKEN, name="token"),
        },
        failed_steps=[failed],
        completed_steps=[done],
        disposition=Disposition.AUTO_RETRY if scheduled else Disposition.MANUAL,
        status=status,
        next_retry_at=NOW + timedelta(minutes=10) if scheduled else None,
        created_at=NOW - timedelta(days=created),
        updated_at=NOW - timedelta(days=changed),
    )


@pytest.fixture(autouse=True)
def closed_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """PREFECT_API_URL at a closed loopback port: no server, publishing fails fast."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield url


@pytest.fixture(autouse=True)
def captured_events() -> Iterator[None]:
    """Events go to Prefect's in-memory asserting client, not to the network."""
    AssertingEventsClient.reset()
    EventsWorker.set_client_override(AssertingEventsClient)
    try:
        yield
    finally:
        EventsWorker.drain_all()
        EventsWorker.set_client_override(None)
        AssertingEventsClient.reset()


def emitted() -> list[Event]:
    """The events emitted so far in this test."""
    EventsWorker.drain_all()
    return [event for client in AssertingEventsClient.all for event in client.events]


@pytest.fixture
def store(store_url: str) -> Store:
    """The test's own SQLite store, the one the CLI opens through the setting."""
    return Store()


@pytest.fixture
def seeded(store: Store) -> dict[str, IncompleteExecution]:
    """Six records over two flows, every status, created and changed at set ages."""
    return {name: store.add(_record(*seed)) for name, seed in SEEDS.items()}


@pytest.fixture
def runner() -> CliRunner:
    """A runner with an 80-column terminal and no forced colour."""
    return CliRunner(env={"COLUMNS": "80", "FORCE_COLOR": None})


def run(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(cli.app, list(args))


def one_error_line(result: Result) -> str:
    """The single ``error:`` line of a refused command; asserts exit 1, no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def statuses(store: Store) -> dict[UUID, Status]:
    return {record.id: record.status for record in store.list()}


def ids_in(output: str) -> list[str]:
    return re.findall(r"\b[0-9a-f]{8}\b", output)


# --- the command list ---------------------------------------------------------


def test_help_lists_every_command_with_one_line() -> None:
    """--help lists each command with its one-line help."""
    result = CliRunner(env={"COLUMNS": "200"}).invoke(cli.app, ["--help"])

    assert result.exit_code == 0
    commands = ("ls", "show", "resume", "retry", "worker", "discard", "purge")
    for command in (*commands, "reactivate"):
        assert re.search(rf"│ {command} +\S", result.output), command


def test_no_arguments_shows_help(runner: CliRunner) -> None:
    """Called without arguments, the CLI prints its help instead of doing anything."""
    result = run(runner)

    assert result.exit_code == 0, result.output
    assert "Usage: prefect-incomplete [OPTIONS] COMMAND [ARGS]..." in result.stdout
    assert "discard" in result.stdout


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["ls", "--limit", "abc"],
            "--limit: 'abc' is not a whole number; see prefect-incomplete ls --help",
        ),
        (
            ["worker", "--interval", "abc"],
            "--interval: 'abc' is not a number; see prefect-incomplete worker --help",
        ),
        (
            ["purge"],
            "prefect-incomplete purge needs --older-than DURATION; "
            "see prefect-incomplete purge --help",
        ),
        (
            ["reactivate"],
            "prefect-incomplete reactivate needs DEPLOYMENT_ID; "
            "see prefect-incomplete reactivate --help",
        ),
        (
            ["ls", "--bogus"],
            "no such option: --bogus; see prefect-incomplete ls --help",
        ),
        (
            ["ls", "--flw", "sync_orders"],
            "no such option: --flw (did you mean --flow?); "
            "see prefect-incomplete ls --help",
        ),
        (
            ["discard", "--all", "--flow"],
            "option '--flow' requires an argument; "
            "see prefect-incomplete discard --help",
        ),
        (
            ["show", "aaaa1111", "bbbb3333"],
            "got unexpected extra argument(s) (bbbb3333); "
            "see prefect-incomplete show --help",
        ),
        (["bogus"], "no such command 'bogus'; see prefect-incomplete --help"),
    ],
)
def test_command_line_that_does_not_parse_is_one_line(
    runner: CliRunner,
    store: Store,
    seeded: dict[str, IncompleteExecution],
    args: list[str],
    line: str,
) -> None:
    """A usage error: one line saying what was wrong and where the help is, exit 1."""
    before = store.list()

    result = run(runner, *args)

    assert one_error_line(result) == f"error: {line}"
    assert "╭" not in result.output
    assert result.stdout == ""
    assert store.list() == before


@pytest.mark.parametrize(
    "command", ["ls", "show", "resume", "retry", "worker", "discard", "purge"]
)
def test_help_of_each_command_exits_0(runner: CliRunner, command: str) -> None:
    """COMMAND --help prints the command's usage on stdout and exits 0."""
    result = run(runner, command, "--help")

    assert result.exit_code == 0, result.output
    assert f"Usage: prefect-incomplete {command} [OPTIONS]" in result.stdout
    assert result.stderr == ""


# --- ls -----------------------------------------------------------------------


def test_ls_lists_newest_first_with_whole_ids(
    runner: CliRunner, seeded: dict[str, IncompleteExecution]
) -> None:
    """The table has every record, newest first, each id in 8 unbroken characters."""
    result = run(runner, "ls")

    assert result.exit_code == 0, result.output
    assert ids_in(result.stdout) == [seeded[name].short_id for name in NEWEST_FIRST]
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--flow", "nightly_export"], ["resolved", "old_discarded"]),
        (["--status", "unresolved"], ["open", "old_open"]),
        (
            ["--status", "resolved,discarded"],
            ["resolved", "discarded", "old_discarded"],
        ),
        (["-s", "scheduled", "-s", "in-progress"], ["scheduled"]),
        (
            ["--kind", "DataError", "--flow", "sync_orders"],
            ["open", "discarded", "old_open"],
        ),
        (["--kind", "invalidaccesstokenerror"], ["resolved"]),
        (["--limit", "2"], ["open", "scheduled"]),
        (["--flow", "no_such_flow"], []),
    ],
)
def test_ls_filters(
    runner: CliRunner,
    seeded: dict[str, IncompleteExecution],
    args: list[str],
    expected: list[str],
) -> None:
    """--flow, --status (repeated or comma list), --kind and --limit select records."""
    result = run(runner, "ls", "--json", *args)

    assert result.exit_code == 0, result.output
    assert [item["id"] for item in json.loads(result.stdout)] == [
        str(seeded[name].id) for name in expected
    ]


def test_ls_json_prints_summaries_without_payloads(
    runner: CliRunner, store: Store, seeded: dict[str, IncompleteExecution]
) -> None:
    """ls --json is the list of the records' summaries, newest first."""
    result = run(runner, "ls", "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [r.summary() for r in store.list()]
    assert '"payload"' not in result.stdout


def test_show_json_gives_values_as_json_redacted(
    runner: CliRunner, seeded: dict[str, IncompleteExecution]
) -> None:
    """--json gives JSON values, not their display text; credentials redacted."""
    result = run(runner, "show", seeded["open"].short_id, "--json")

    data = json.loads(result.stdout)
    assert data["parameters"] == {"day": "2026-12-01", "token": REDACTED}
    (step,) = data["failed_steps"]
    assert step["inputs"]["order"] == {"id": 17, "api_key": REDACTED}
    assert step["inputs"]["login"] == REDACTED
    assert data["completed_steps"][0]["output"] == [{"id": 17}]


def test_ls_with_nothing_to_show(runner: CliRunner, store: Store) -> None:
    """An empty store prints a sentence, and an empty JSON list with --json."""
    assert run(runner, "ls").stdout.strip() == "No incomplete executions match."
    assert json.loads(run(runner, "ls", "--json").stdout) == []


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--status", "broken"], "unresolved, scheduled, in_progress"),
        (["--status", "resolved,nope"], "resolved, discarded"),
        (["--kind", "TimeoutError"], "ConnectionError, RateLimitError"),
        (["--limit", "0"], "--limit"),
        (["--limit", "99999999999999999999999"], "from 1 to 1000000"),
    ],
)
def test_ls_bad_filter_is_one_line(
    runner: CliRunner,
    seeded: dict[str, IncompleteExecution],
    args: list[str],
    names: str,
) -> None:
    """An unknown status or kind gives one line naming the valid values, exit 1."""
    assert names in one_error_line(run(runner, "ls", *args))


# --- show ---------------------------------------------------------------------


def test_show_by_prefix_shows_the_whole_record(
    runner: CliRunner, seeded: dict[str, IncompleteExecution]
) -> None:
    """show takes a unique prefix and prints steps, previews and the resume command."""
    record = seeded["scheduled"]

    result = run(runner, "show", str(record.id)[:6])

    assert result.exit_code == 0, result.output
    for text in (
        str(record.id),
        "sync_orders",
        "scheduled",
        "auto-retry",
        "Failed step push_order[2]",
        "ConnectionError",
        "order 17 has no [bold]customer[/bold]",
        'File "f.py", line 3',
        '"2026-12-01"',
        "fetch_orders[1]",
        "[{'id': 17}]",
        f"prefect-incomplete resume {record.short_id}",
        "--set 'push_order[2].order=VALUE'",
        f"prefect-incomplete discard {record.short_id}",
    ):
        assert text in result.stdout, text


def test_show_names_the_flow_run_that_holds_the_claim(
    store: Store, seeded: dict[str, IncompleteExecution]
) -> None:
    """show of a record being resumed names the holding flow run and the lease end."""
    record = seeded["open"]
    flow_run_id = uuid4()
    claimed = store.claim(record.id, str(flow_run_id), lease_seconds=600)

    result = run(CliRunner(env={"COLUMNS": "200"}), "show", record.short_id)

    assert result.exit_code == 0, result.output
    lease_end = f"{claimed.lease_expires_at:%Y-%m-%d %H:%M:%S} UTC"
    assert re.search(
        rf"claimed by +flow run {flow_run_id} \(lease ends {lease_end}\)",
        result.stdout,
    ), result.stdout


def test_show_of_a_resolved_record_offers_no_resume(
    runner: CliRunner, seeded: dict[str, IncompleteExecution]
) -> None:
    """A resolved record shows that there is nothing to do, not a resume command."""
    result = run(runner, "show", str(seeded["resolved"].id))

    assert result.exit_code == 0, result.output
    assert "prefect-incomplete resume" not in result.stdout
    assert "nothing to do" in result.stdout


def test_show_json_is_the_summary(
    runner: CliRunner, seeded: dict[str, IncompleteExecution]
) -> None:
    """show --json prints the record's summary."""
    record = seeded["open"]

    result = run(runner, "show", record.short_id, "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == record.summary()


def test_secrets_are_never_printed(
    runner: CliRunner, store: Store, seeded: dict[str, IncompleteExecution]
) -> None:
    """Secret parameters, SecretStr inputs and secret keys show only redacted."""
    record = store.get(seeded["open"].id)
    assert TOKEN in record.parameters["token"].payload  # stored, so a resume has it

    outputs = [
        run(runner, *args)
        for args in (
            ["ls"],
            ["ls", "--json"],
            ["show", record.short_id],
            ["show", record.short_id, "--json"],
        )
    ]

    for result in outputs:
        assert result.exit_code == 0, result.output
        assert not [secret for secret in SECRETS if secret in result.output]
    assert REDACTED in outputs[2].stdout


def test_confidential_record_shows_no_values(runner: CliRunner, store: Store) -> None:
    """A confidential record shows step names and kinds, never values or messages."""
    marker = "MARKER-5d2a-CONFIDENTIAL"
    shown = _record("ffff7777", "billing", Status.UNRESOLVED, "DataError", 1, 1)
    step = shown.failed_steps[0].model_copy(
        update={
            "key": "bill[1]",
            "message": f"DataError: cannot bill {marker}",
            "traceback": f"Traceback ...\nDataError: cannot bill {marker}\n",
            "inputs": {"memo": encode(marker, name="memo")},
        }
    )
    output = shown.completed_steps[0].model_copy(update={"output": encode(marker)})
    record = store.add(
        shown.model_copy(
            update={
                "confidential": True,
                "parameters": {"customer": encode(marker, name="customer")},
                "failed_steps": [step],
                "completed_steps": [output],
            }
        )
    )

    outputs = [
        run(runner, *args)
        for args in (
            ["ls"],
            ["ls", "--json"],
            ["show", record.short_id],
            ["show", record.short_id, "--json"],
        )
    ]

    for result in outputs:
        assert result.exit_code == 0, result.output
        assert marker not in result.output
    assert "bill[1]" in outputs[2].stdout
    assert "DataError" in outputs[2].stdout
    assert json.loads(outputs[3].stdout)["failed_steps"][0]["inputs"] == {
        "memo": "(confidential)"
    }


@pytest.mark.parametrize("command", ["show", "resume", "discard", "retry"])
@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("ffff", "no incomplete execution matches 'ffff'; list them with"),
        ("zzzz", "no incomplete execution matches 'zzzz'"),
        ("aaaa", "'aaaa' matches 2 incomplete executions"),
        ("aa", "too short"),
        (str(uuid4()), "no incomplete execution matches"),
    ],
)
def test_bad_id_is_one_line(
    runner: CliRunner,
    store: Store,
    seeded: dict[str, IncompleteExecution],
    command: str,
    given: str,
    says: str,
) -> None:
    """Unknown ids, ambiguous and too-short prefixes: one line, exit 1, no change."""
    before = store.list()

    line = one_error_line(run(runner, command, given))

    assert says in line
    assert store.list() == before


def test_store_that_cannot_open_is_one_line(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database URL that does not parse gives one line naming the setting."""
    monkeypatch.setenv("PREFECT_INCOMPLETE_DATABASE_URL", "not a url")

    assert "PREFECT_INCOMPLETE_DATABASE_URL" in one_error_line(run(runner, "ls"))


@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        (
            "PREFECT_INCOMPLETE_POLICIES",
            "{bad",
            "error: PREFECT_INCOMPLETE_POLICIES='{bad' is not valid (not JSON: "
            "Expecting property name enclosed in double quotes: line 1 column 2 "
            "(char 1)); set it to a JSON object of policies by kind, e.g. "
            '{"RateLimitError": {"attempts": 5}}, or unset it to use the default',
        ),
        (
            "PREFECT_INCOMPLETE_LEASE_SECONDS",
            "abc",
            "error: PREFECT_INCOMPLETE_LEASE_SECONDS='abc' is not valid (input "
            "should be a valid number, unable to parse string as a number); set it "
            "to a number more than 0 and at most 31622400, or unset it to use the "
            "default",
        ),
    ],
)
def test_bad_setting_is_one_line_naming_the_variable(
    runner: CliRunner,
    store: Store,
    seeded: dict[str, IncompleteExecution],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    line: str,
) -> None:
    """A bad PREFECT_INCOMPLETE_* value: one line naming it, exit 1, no change."""
    before = store.list()
    monkeypatch.setenv(variable, value)

    assert one_error_line(run(runner, "ls")) == line
    assert one_error_line(run(runner, "discard", seeded["open"].short_id)) == line
    monkeypatch.delenv(variable)
    assert store.list() == before


# --- discard ------------------------------------------------------------------


def test_discard_one_even_when_publishing_fails(
    runner: CliRunner,
    store: Store,
    seeded: dict[str, IncompleteExecution],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """discard ID discards it and emits the event; an unreachable API is only logged."""
    record = seeded["open"]
    before = statuses(store)

    result = run(runner, "discard", record.short_id)

    assert result.exit_code == 0, result.output
    assert f"discarded {record.short_id}" in result.stdout
    assert statuses(store) == before | {record.id: Status.DISCARDED}
    assert (
        f"Could not write the artifacts of incomplete execution {record.short_id}"
        in (caplog.text)
    )
    assert [(event.event, event.resource.id) for event in emitted()] == [
        ("prefect-incomplete.discarded", artifacts.resource_id(record.id))
    ]


class Published:
    """Stands in for `artifacts.publish` and remembers what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[UUID, Status, str]] = []

    def __call__(self, record: IncompleteExecution, what: str, **_: Any) -> None:
        self.calls.append((record.id, record.status, what))


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> Published:
    """Publishing replaced by a recorder (the real one costs 1.5 s without an API)."""
    recorder = Published()
    monkeypatch.setattr(artifacts, "publish", recorder)
    return recorder


def test_discard_publishes_each_discarded_record(
    runner: CliRunner, seeded: dict[str, IncompleteExecution], published: Published
) -> None:
    """Each discarded record is published as "discarded"; closed ones are skipped."""
    names = ("open", "scheduled", "resolved")

    result = run(runner, "discard", *(seeded[n].short_id for n in names), "--yes")

    assert result.exit_code == 0, result.output
    assert published.calls == [
        (seeded[n].id, Status.DISCARDED, "discarded") for n in ("open", "scheduled")
    ]
    assert f"{seeded['resolved'].short_id} is already resolved" in result.stdout
    assert "Discarded 2 incomplete executions." in result.stdout


def test_discard_all_of_a_flow(
    runner: CliRunner,
    store: Store,
    seeded: dict[str, IncompleteExecution],
    published: Published,
) -> None:
    """discard --all --flow F --yes discards that flow's open records and no other."""
    before = statuses(store)

    result = run(runner, "discard", "--all", "--flow", "sync_orders", "--yes")

    assert result.exit_code == 0, result.output
    gone = [seeded[n].id for n in ("old_open", "scheduled", "open")]
    assert statuses(store) == before | dict.fromkeys(gone, Status.DISCARDED)
    assert [record_id for record_id, _, _ in published.calls] == gone


def test_discard_all_skips_a_record_being_resumed(
    runner: CliRunner,
    store: Store,
    seeded: dict[str, IncompleteExecution],
    published: Published,
) -> None:
    """A record a live resume holds is left alone by discard --all and named."""
    held = seeded["open"]
    store.claim(held.id, "resume-test", lease_seconds=600)

    result = run(runner, "discard", "--all", "--flow", "sync_orders", "--yes")

    assert result.exit_code == 0, result.output
    assert f"skipped {held.short_id}: a resume is running it now" in result.stdout
    assert store.get(held.id).status is Status.IN_PROGRESS
    assert store.get(seeded["scheduled"].id).status is Status.DISCARDED


def test_discard_of_a_record_being_resumed_is_refused(
    runner: CliRunner, store: Store, seeded: dict[str, IncompleteExecution]
) -> None:
    """discard of ids, one of them held by a live resume, discards none of them."""
    held = seeded["scheduled"]
    store.claim(held.id, "resume-test", lease_seconds=600)
    before = store.list()

    line = one_error_line(
        run(runner, "discard", seeded["open"].short_id, held.short_id)
    )

    assert line == (
        f"error: incomplete execution {held.short_id} is already being resumed by "
        "a resume whose flow run has not started yet (lease ends "
        f"{store.get(held.id).lease_expires_at:%Y-%m-%d %H:%M:%S} UTC); wait for "
        "that resume to end, or for its lease to end if its process died, then "
        "discard it"
    )
    assert store.list() == before


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--all", "--flow", "sync_orders"], "add --yes"),
        (["--all", "--yes"], "add --flow FLOW"),
        (["--all"], "add --flow FLOW --yes"),
        (["--flow", "sync_orders", "--yes"], "only with --all"),
        (["aaaa1111", "--all", "--flow", "sync_orders", "--yes"], "not both"),
        ([], "give the ids to discard"),
    ],
)
def test_discard_refused_changes_nothing(
    runner: CliRunner,
    store: Store,
    seeded: dict[str, IncompleteExecution],
    args: list[str],
    says: str,
) -> None:
    """A bulk discard without --flow or --yes is refused, saying what to add."""
    before = store.list()

    assert says in one_error_line(run(runner, "discard", *args))
    assert store.list() == before


@pytest.fixture
def resumed_deployments(monkeypatch: pytest.MonkeyPatch) -> list[UUID]:
    """Deployments the plugin resumes, recorded instead of calling Prefect's API."""
    resumed: list[UUID] = []

    def resume_deployment(deployment_id: UUID, flow_name: str, reason: str) -> bool:
        resumed.append(deployment_id)
        return True

    monkeypatch.setattr(_controls, "_resume_deployment", resume_deployment)
    return resumed


def test_discard_lifts_the_sequential_hold(
    runner: CliRunner,
    store: Store,
    seeded: dict[str, IncompleteExecution],
    published: Published,
    resumed_deployments: list[UUID],
) -> None:
    """Discarding a flow's last open records resumes the deployment they held."""
    deployment_id = uuid4()
    store.add_hold(deployment_id, flow_name="sync_orders", reason="sequential")

    result = run(runner, "discard", "--all", "--flow", "sync_orders", "--yes")

    assert result.exit_code == 0, result.output
    assert store.holds() == []
    assert resumed_deployments == [deployment_id]
    assert f"resumed the schedules of deployment {deployment_id}" in result.stdout


# --- reactivate -----------------------------------------------------------------


def test_reactivate_lifts_the_consecutive_errors_hold(
    runner: CliRunner, store: Store, resumed_deployments: list[UUID]
) -> None:
    """reactivate PREFIX lifts the hold and resumes the deployment."""
    deployment_id = uuid4()
    store.add_hold(deployment_id, flow_name="f", reason="consecutive-errors")

    result = run(runner, "reactivate", str(deployment_id)[:8])

    assert result.exit_code == 0, result.output
    assert f"reactivated deployment {deployment_id}" in result.stdout
    assert store.holds() == []
    assert resumed_deployments == [deployment_id]


def test_reactivate_leaves_a_deployment_other_holds_keep_paused(
    runner: CliRunner, store: Store, resumed_deployments: list[UUID]
) -> None:
    """With a quota hold left, reactivate lifts its own hold and says what remains."""
    deployment_id = uuid4()
    store.add_hold(deployment_id, flow_name="f", reason="quota")
    store.add_hold(deployment_id, flow_name="f", reason="consecutive-errors")

    result = run(runner, "reactivate", str(deployment_id))

    assert result.exit_code == 0, result.output
    assert "it stays paused for: quota" in result.stdout
    assert [h.reason for h in store.holds()] == ["quota"]
    assert resumed_deployments == []


@pytest.mark.parametrize(
    ("given", "reason", "says"),
    [
        (str(uuid4()), None, "is paused by prefect-incomplete; nothing to reactivate"),
        ("ab", None, "too short"),
        (None, "sequential", "not paused for consecutive errors"),
    ],
)
def test_reactivate_refused(
    runner: CliRunner,
    store: Store,
    resumed_deployments: list[UUID],
    given: str | None,
    reason: str | None,
    says: str,
) -> None:
    """An unknown deployment, a short prefix or another reason: one line, exit 1."""
    deployment_id = uuid4()
    if reason is not None:
        store.add_hold(deployment_id, flow_name="f", reason=reason)

    line = one_error_line(run(runner, "reactivate", given or str(deployment_id)))

    assert says in line
    assert resumed_deployments == []


# --- purge --------------------------------------------------------------------


def test_purge_removes_old_resolved_and_discarded(
    runner: CliRunner, store: Store, seeded: dict[str, IncompleteExecution]
) -> None:
    """By default purge deletes old resolved and discarded records."""
    result = run(runner, "purge", "--older-than", "30d")

    assert result.exit_code == 0, result.output
    gone = {seeded["resolved"].id, seeded["old_discarded"].id}
    assert set(statuses(store)) == {r.id for r in seeded.values()} - gone
    assert "Purged 2 incomplete executions (resolved, discarded)" in result.stdout
    assert set(ids_in(result.stdout)) == {str(i)[:8] for i in gone}


@pytest.mark.parametrize(
    ("args", "gone"),
    [
        (["--older-than", "2w", "--status", "resolved"], {"resolved"}),
        (
            ["--older-than", "4d", "--status", "discarded"],
            {"discarded", "old_discarded"},
        ),
        (
            ["--older-than", "1d", "--include-open", "--yes"],
            set(SEEDS) - {"open", "scheduled"},
        ),
        (
            ["--older-than", "55d", "-s", "unresolved", "--include-open", "--yes"],
            {"old_open"},
        ),
        (["--older-than", "90d"], set()),
    ],
)
def test_purge_selects_by_status_and_age(
    runner: CliRunner,
    store: Store,
    seeded: dict[str, IncompleteExecution],
    args: list[str],
    gone: set[str],
) -> None:
    """--status and --include-open --yes choose what goes; age decides within them."""
    result = run(runner, "purge", *args)

    assert result.exit_code == 0, result.output
    left = {seeded[n].id for n in SEEDS if n not in gone}
    assert set(statuses(store)) == left


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--older-than", "30"], "not a duration"),
        (["--older-than", "30x"], "not a duration"),
        (["--older-than", "d30"], "not a duration"),
        (["--older-than", "-5d"], "not a duration"),
        (["--older-than", "1.5d"], "not a duration"),
        (["--older-than", ""], "not a duration"),
        (["--older-than", "99999999999w"], "too far"),
        (["--older-than", "1d", "--status", "finished"], "unknown status 'finished'"),
        (["--older-than", "1d", "--status", "unresolved"], "add --include-open --yes"),
        (
            ["--older-than", "1d", "--status", "scheduled", "--yes"],
            "add --include-open",
        ),
        (["--older-than", "1d", "--include-open"], "add --yes"),
    ],
)
def test_purge_refused_deletes_nothing(
    runner: CliRunner,
    store: Store,
    seeded: dict[str, IncompleteExecution],
    args: list[str],
    says: str,
) -> None:
    """A bad duration, an unknown status or open records without the flags: exit 1."""
    before = store.list()

    assert says in one_error_line(run(runner, "purge", *args))
    assert store.list() == before


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30d", 30 * 86400),
        ("12h", 43200),
        ("90m", 5400),
        ("45s", 45),
        ("2w", 1209600),
        ("1d12h", 129600),
        (" 2H ", 7200),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    """--older-than takes w, d, h, m and s, alone or summed, in any case."""
    assert cli._cutoff(text, NOW) == NOW - timedelta(seconds=seconds)


# --- resume -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "args", "says"),
    [
        ("resolved", [], "is resolved; there is nothing to resume"),
        ("old_discarded", [], "is discarded; there is nothing to resume"),
        ("open", ["--set", "push_order[2].order"], "malformed --set"),
        ("open", ["--param", "=1"], "malformed --param"),
        ("open", ["--via", "carrier-pigeon"], "unknown --via 'carrier-pigeon'"),
        ("open", ["--via", "deployment"], "did not come from a deployment"),
        ("open", [], "has no entrypoint to import its flow from"),
    ],
)
def test_resume_refused_leaves_the_record_unchanged(
    runner: CliRunner,
    store: Store,
    seeded: dict[str, IncompleteExecution],
    name: str,
    args: list[str],
    says: str,
) -> None:
    """A resume that cannot start prints one line, exits 1 and changes nothing."""
    record = seeded[name]
    before = store.get(record.id)

    assert says in one_error_line(run(runner, "resume", record.short_id, *args))
    assert store.get(record.id) == before


class FakeResume:
    """Stands in for `resume.resume`: does to the store what the run would do."""

    def __init__(self, outcomes: dict[UUID, str]) -> None:
        self.outcomes = outcomes
        self.calls: list[dict[str, Any]] = []

    def __call__(
        self, record_id: str | UUID, *, store: Store, **options: Any
    ) -> ResumeStarted:
        record = store.get(record_id)
        self.calls.append({"record_id": record.id, **options})
        outcome = self.outcomes.get(record.id, "resolved")
        run_id = uuid4()
        if outcome == "refused":
            raise ResumeError(f"incomplete execution {record.short_id} is refused")
        if outcome == "crash":
            raise RuntimeError("the Prefect API is unreachable\nat 127.0.0.1")
        if outcome == "deployment":
            return ResumeStarted(record=record, via="deployment", flow_run_id=run_id)
        if outcome == "resolved":
            store.resolve(record.id, flow_run_id=run_id)
            return ResumeStarted(record, "local", run_id, state_name="Completed")
        store.record_failure(
            record.id,
            flow_run_id=run_id,
            failed_steps=record.failed_steps,
            completed_steps=record.completed_steps,
            status=Status.UNRESOLVED,
            next_retry_at=None,
            disposition=record.disposition,
        )
        return ResumeStarted(record, "local", run_id, state_name="Incomplete")


def fake_resume(
    monkeypatch: pytest.MonkeyPatch, outcomes: dict[UUID, str] | None = None
) -> FakeResume:
    fake = FakeResume(outcomes or {})
    monkeypatch.setattr(resuming, "resume", fake)
    return fake


def test_resume_passes_the_edits_and_reports_the_resolved_run(
    runner: CliRunner,
    store: Store,
    seeded: dict[str, IncompleteExecution],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--set, --param and --via reach resume(); a resolved run exits 0."""
    fake = fake_resume(monkeypatch)
    record = seeded["open"]

    result = run(
        runner,
        "resume",
        record.short_id,
        "--set",
        'push_order[2].order={"id": 17, "customer": "c-9"}',
        "--param",
        "day=2026-12-02",
        "--via",
        "local",
    )

    assert result.exit_code == 0, result.output
    assert fake.calls == [
        {
            "record_id": record.id,
            "set_inputs": {
                "push_order[2].order": Typed(
                    text='{"id": 17, "customer": "c-9"}',
                    parsed={"id": 17, "customer": "c-9"},
                )
            },
            "params": {"day": "2026-12-02"},
            "via": "local",
        }
    ]
    assert f"resumed {record.short_id}" in result.stdout
    assert "the record is resolved" in result.stdout


def test_resume_that_fails_again_exits_1(
    runner: CliRunner,
    store: Store,
    seeded: dict[str, IncompleteExecution],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A local resume that fails again says the record was updated and exits 1."""
    record = seeded["open"]
    fake_resume(monkeypatch, {record.id: "failed again"})

    line = one_error_line(run(runner, "resume", record.short_id))

    assert f"resume of {record.short_id} failed again" in line
    assert "ended Incomplete" in line
    assert "record updated (attempt 2, unresolved)" in line


def test_resume_through_a_deployment_reports_the_run(
    runner: CliRunner,
    seeded: dict[str, IncompleteExecution],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A resume started through a deployment names the new flow run and exits 0."""
    record = seeded["open"]
    fake_resume(monkeypatch, {record.id: "deployment"})

    result = run(runner, "resume", record.short_id)

    assert result.exit_code == 0, result.output
    assert f"resuming {record.short_id} as flow run" in result.stdout


def test_resume_that_crashes_is_one_line(
    runner: CliRunner,
    store: Store,
    seeded: dict[str, IncompleteExecution],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unexpected failure to start, say an unreachable API, is one line too."""
    record = seeded["open"]
    fake_resume(monkeypatch, {record.id: "crash"})

    line = one_error_line(run(runner, "resume", record.short_id))

    assert line == (
        f"error: could not resume {record.short_id}: "
        "RuntimeError: the Prefect API is unreachable at 127.0.0.1"
    )


# --- retry and worker -----------------------------------------------------------


def test_retry_by_ids_reports_each_and_exits_1_if_one_did_not_start(
    runner: CliRunner,
    seeded: dict[str, IncompleteExecution],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """retry ID... prints one line per record; a refusal makes the exit code 1."""
    ok, again, refused = seeded["open"], seeded["scheduled"], seeded["old_open"]
    fake_resume(monkeypatch, {again.id: "failed again", refused.id: "refused"})

    result = run(runner, "retry", ok.short_id, again.short_id, refused.short_id)

    assert result.exit_code == 1
    assert f"resumed {ok.short_id}" in result.stdout
    assert f"resume of {again.short_id} failed again" in result.stdout
    assert f"could not resume {refused.short_id}" in result.stderr
    assert "3 incomplete executions: 1 resolved, 1 failed again, 1 not started" in (
        result.stdout
    )


def test_retry_all_of_a_flow_takes_its_open_records(
    runner: CliRunner,
    seeded: dict[str, IncompleteExecution],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """retry --all --flow F resumes that flow's open records, oldest first."""
    fake = fake_resume(monkeypatch)

    result = run(runner, "retry", "--all", "--flow", "sync_orders")

    assert result.exit_code == 0, result.output
    assert [call["record_id"] for call in fake.calls] == [
        seeded[n].id for n in ("old_open", "scheduled", "open")
    ]


def test_retry_of_a_real_record_that_cannot_start(
    runner: CliRunner, store: Store, seeded: dict[str, IncompleteExecution]
) -> None:
    """The real resume() refuses a record without an entrypoint; nothing changes."""
    before = store.list()

    result = run(runner, "retry", seeded["open"].short_id)

    assert result.exit_code == 1
    assert "has no entrypoint" in result.stderr
    assert store.list() == before


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "say which records"),
        (["--all"], "add --flow FLOW"),
        (["--flow", "sync_orders"], "only with --all"),
        (["--due", "aaaa1111"], "only one"),
        (["aaaa1111", "--all", "--flow", "sync_orders"], "not both"),
    ],
)
def test_retry_selection_errors(
    runner: CliRunner,
    seeded: dict[str, IncompleteExecution],
    args: list[str],
    says: str,
) -> None:
    """retry needs exactly one of: ids, --all --flow F, --due."""
    assert says in one_error_line(run(runner, "retry", *args))


def test_retry_due_reports_every_outcome(
    runner: CliRunner,
    store: Store,
    seeded: dict[str, IncompleteExecution],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """retry --due prints what retry_due() did and exits 1 if one did not start."""
    record = seeded["scheduled"]

    def due(*, store: Store) -> list[ResumeStarted | ResumeError]:
        store.resolve(record.id, flow_run_id=uuid4())
        started = ResumeStarted(record, "local", uuid4(), state_name="Completed")
        return [started, ResumeError("incomplete execution 12345678 is refused")]

    monkeypatch.setattr(resuming, "retry_due", due)

    result = run(runner, "retry", "--due")

    assert result.exit_code == 1
    assert f"resumed {record.short_id}" in result.stdout
    assert "could not resume: incomplete execution 12345678 is refused" in result.stderr


def due_record(store: Store) -> IncompleteExecution:
    """A scheduled record whose retry is due, with a flow the real resume() imports."""
    record = _record("abcd9999", "orders", Status.SCHEDULED, "ConnectionError", 1, 1)
    return store.add(
        record.model_copy(
            update={
                "entrypoint": "flows_for_resume.orders",
                "next_retry_at": NOW - timedelta(minutes=1),
            }
        )
    )


def taken_once_listed(
    monkeypatch: pytest.MonkeyPatch, take: Callable[[Store, UUID], object]
) -> list[object]:
    """Another worker takes each due record right after this one listed it.

    Returns what each take left in the store, in order.
    """
    listed, taken = Store.due, []

    def due(self: Store, **options: Any) -> list[IncompleteExecution]:
        records = listed(self, **options)
        taken.extend(take(self, record.id) for record in records)
        return records

    monkeypatch.setattr(Store, "due", due)
    return taken


def claim_elsewhere(store: Store, record_id: UUID) -> object:
    return store.claim(record_id, "resume-elsewhere", lease_seconds=600)


def resolve_elsewhere(store: Store, record_id: UUID) -> object:
    return store.resolve(record_id, flow_run_id=uuid4())


@pytest.mark.parametrize(
    ("take", "skipped"),
    [
        (claim_elsewhere, "a resume is running it now"),
        (resolve_elsewhere, "it was resolved in the meantime"),
    ],
)
@pytest.mark.parametrize("command", [["retry", "--due"], ["worker", "--once"]])
def test_due_record_another_worker_took_is_skipped(
    runner: CliRunner,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    take: Callable[[Store, UUID], object],
    skipped: str,
    command: list[str],
) -> None:
    """retry --due and worker skip a record another worker took first, and exit 0."""
    record = due_record(store)
    taken = taken_once_listed(monkeypatch, take)

    result = run(runner, *command)

    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d " if command[0] == "worker" else ""
    expected = [
        f"skipped {record.short_id}: {skipped}",
        "1 incomplete execution: 1 skipped",
    ]
    lines = result.stdout.splitlines()
    assert len(lines) == len(expected), result.stdout
    for line, text in zip(lines, expected, strict=True):
        assert re.fullmatch(stamp + re.escape(text), line), line
    assert [store.get(record.id)] == taken


def test_retry_by_id_of_a_record_being_resumed_is_an_error(
    runner: CliRunner, store: Store
) -> None:
    """retry ID of a record another resume holds: not started, exit 1, unchanged."""
    record = due_record(store)
    claim_elsewhere(store, record.id)
    before = store.get(record.id)

    result = run(runner, "retry", record.short_id)

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"could not resume {record.short_id}: incomplete execution "
        f"{record.short_id} is already being resumed by a resume whose flow run "
        "has not started yet (lease ends "
        f"{before.lease_expires_at:%Y-%m-%d %H:%M:%S} UTC); wait for that resume "
        "to end, or for its lease to end if its process died, then resume it"
    ]
    assert result.stdout == "1 incomplete execution: 1 not started\n"
    assert store.get(record.id) == before


def test_refusal_of_a_taken_record_says_which_and_why(store: Store) -> None:
    """resume() of a record another resume holds raises RecordUnavailable, picklable."""
    record = due_record(store)
    claim_elsewhere(store, record.id)

    with pytest.raises(RecordUnavailable) as caught:
        resuming.resume(record.id, store=store)

    refusal = caught.value
    assert (refusal.record_id, refusal.status) == (record.id, Status.IN_PROGRESS)
    assert isinstance(refusal.__cause__, ClaimRefused)
    copy = pickle.loads(pickle.dumps(refusal))
    assert (type(copy), str(copy), copy.record_id, copy.status) == (
        RecordUnavailable,
        str(refusal),
        record.id,
        Status.IN_PROGRESS,
    )


def test_worker_once_with_nothing_due(runner: CliRunner, store: Store) -> None:
    """worker --once makes one pass of the real retry_due() and exits 0."""
    result = run(runner, "worker", "--once")

    assert result.exit_code == 0, result.output
    assert result.stdout == ""


def test_worker_survives_a_failed_pass_and_stops_on_ctrl_c(
    runner: CliRunner, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass that fails is reported and retried; Ctrl-C stops the worker cleanly."""
    passes: list[float] = []

    def due(*, store: Store) -> list[ResumeStarted | ResumeError]:
        passes.append(0)
        raise StoreError("the database is away")

    def sleep(seconds: float) -> None:
        passes[-1] = seconds
        if len(passes) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(resuming, "retry_due", due)
    monkeypatch.setattr(cli, "time", SimpleNamespace(sleep=sleep))

    result = run(runner, "worker", "--interval", "5")

    assert result.exit_code == 0, result.output
    assert passes == [5, 5]
    assert result.stderr.count("error: retry pass failed: the database is away") == 2
    assert result.stdout.strip().endswith("Stopped.")


@pytest.mark.parametrize("interval", ["0", "-1", "1e400"])
def test_worker_refuses_a_bad_interval(
    runner: CliRunner, store: Store, interval: str
) -> None:
    """--interval must be positive and at most a day."""
    assert "--interval" in one_error_line(run(runner, "worker", "--interval", interval))


def test_worker_purges_on_schedule(
    runner: CliRunner,
    store: Store,
    seeded: dict[str, IncompleteExecution],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With PREFECT_INCOMPLETE_PURGE_AFTER, a worker pass purges old closed records."""
    monkeypatch.setenv("PREFECT_INCOMPLETE_PURGE_AFTER", "30d")

    result = run(runner, "worker", "--once")

    assert result.exit_code == 0, result.output
    gone = {seeded["resolved"].id, seeded["old_discarded"].id}
    assert set(statuses(store)) == {r.id for r in seeded.values()} - gone
    assert result.stdout.count("purged ") == 2
