"""The record store, on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from sqlalchemy import create_engine, func, make_url, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from prefect_incomplete import store as store_module
from prefect_incomplete.errors import Disposition
from prefect_incomplete.models import (
    Encoded,
    FailedStep,
    IncompleteExecution,
    Status,
    StepOutput,
)
from prefect_incomplete.store import (
    SCHEMA_REVISION,
    AmbiguousId,
    Base,
    ClaimLost,
    ClaimRefused,
    RecordNotFound,
    StepRow,
    Store,
    StoreError,
    migrate,
)

POSTGRES_ENV = "PREFECT_INCOMPLETE_TEST_POSTGRES_URL"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


# --- fixtures -----------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty store: a new SQLite file, or the emptied test schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"

    url: str = request.getfixturevalue("postgres_url")
    with Store(url)._db.engine.begin() as connection:
        connection.execute(text("DELETE FROM incomplete_executions"))
    return url


@pytest.fixture
def store(empty_store_url: str) -> Store:
    """An empty store."""
    return Store(empty_store_url)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts of `migrate` checks and Alembic upgrades made from now on."""
    counts = {"migrate": 0, "upgrade": 0}

    def counting(name: str, real: Callable[..., None]) -> Callable[..., None]:
        def wrapper(*args: Any) -> None:
            counts[name] += 1
            real(*args)

        return wrapper

    monkeypatch.setattr(store_module, "migrate", counting("migrate", migrate))
    monkeypatch.setattr(
        store_module, "_upgrade", counting("upgrade", store_module._upgrade)
    )
    return counts


# --- records --------------------------------------------------------------------


def value(data: Any, preview: str | None = None) -> Encoded:
    """A JSON-encoded value as the capture module would store it."""
    payload = json.dumps(data)
    fingerprint = hashlib.sha256(f"json:{payload}".encode()).hexdigest()
    return Encoded(
        format="json",
        payload=payload,
        preview=preview if preview is not None else payload[:40],
        fingerprint=fingerprint,
    )


def failed(key: str, kind: str | None = "DataError", **changes: Any) -> FailedStep:
    """A failed step called `key`."""
    fields: dict[str, Any] = {
        "key": key,
        "task_name": key.partition("[")[0],
        "kind": kind,
        "message": f"{key} failed",
        "traceback": f"Traceback (most recent call last):\n  {key}\nDataError",
        "inputs": {"order": value({"id": key})},
    }
    return FailedStep(**(fields | changes))


def completed(key: str, output: Any = None, fingerprint: str = "fp") -> StepOutput:
    """A completed step called `key` that ran with inputs of `fingerprint`."""
    return StepOutput(
        key=key,
        task_name=key.partition("[")[0],
        inputs_fingerprint=fingerprint,
        output=value(output if output is not None else key),
    )


def record(**changes: Any) -> IncompleteExecution:
    """An unresolved record of flow ``sync_orders``, with `changes` applied."""
    fields: dict[str, Any] = {
        "id": uuid4(),
        "flow_name": "sync_orders",
        "flow_run_id": uuid4(),
        "parameters": {"day": value("2025-03-01")},
        "failed_steps": [failed("push_order[1]")],
        "completed_steps": [completed("fetch_orders[0]"), completed("push_order[0]")],
        "disposition": Disposition.MANUAL,
        "status": Status.UNRESOLVED,
        "created_at": T0,
        "updated_at": T0,
    }
    return IncompleteExecution(**(fields | changes))


def full_record() -> IncompleteExecution:
    """A record in which every field holds something other than its default."""
    return record(
        deployment_id=uuid4(),
        entrypoint="flows/sync.py:sync_orders",
        parameters={
            "day": value("2025-03-01"),
            "secret": Encoded(
                format="pickle", payload="gASVAAAA", preview="***", fingerprint="p1"
            ),
            "note": value("ünïcødé ✓", preview="ünïcødé ✓"),
        },
        failed_steps=[
            failed("push_order[1]", task_run_id=uuid4()),
            failed("notify[0]", kind=None, inputs={}),
        ],
        completed_steps=[
            StepOutput(
                key="fetch_orders[0]",
                task_name="fetch_orders",
                task_run_id=uuid4(),
                inputs_fingerprint="abc",
                output=value([{"id": 1}, {"id": 2}]),
            ),
            completed("push_order[0]", output="ok"),
        ],
        disposition=Disposition.AUTO_RETRY,
        status=Status.IN_PROGRESS,
        attempts=3,
        next_retry_at=T0 + timedelta(minutes=10),
        created_at=T0,
        updated_at=T0 + timedelta(seconds=5, microseconds=123456),
        size_bytes=1,
        resolved_by=uuid4(),
        last_flow_run_id=uuid4(),
        claimed_by="run-7",
        lease_expires_at=T0 + timedelta(hours=1),
        confidential=True,
    )


def expected_size(item: IncompleteExecution) -> int:
    """Bytes of every value and error text of `item`, counted by hand."""
    size = sum(
        len(v.payload.encode()) + len(v.preview.encode())
        for v in item.parameters.values()
    )
    for step in item.failed_steps:
        size += sum(
            len(v.payload.encode()) + len(v.preview.encode())
            for v in step.inputs.values()
        )
        size += len(step.message.encode()) + len(step.traceback.encode())
    for done in item.completed_steps:
        size += len(done.output.payload.encode()) + len(done.output.preview.encode())
    return size


def step_rows(store: Store, record_id: UUID) -> int:
    """How many step rows the database holds for `record_id`."""
    with store._db.engine.connect() as connection:
        count = select(func.count()).where(StepRow.record_id == str(record_id))
        return int(connection.execute(count).scalar_one())


# --- storing and reading ----------------------------------------------------------


def test_add_then_get_returns_every_field(store: Store) -> None:
    """Every field of a record survives a round trip, size_bytes computed."""
    original = full_record()
    defaults = IncompleteExecution.model_fields
    for name, field in defaults.items():
        if not field.is_required():
            assert getattr(original, name) != field.default, name

    stored = store.add(original)

    assert stored == original.model_copy(update={"size_bytes": expected_size(original)})
    assert store.get(original.id) == stored


def test_add_returns_times_in_utc(store: Store) -> None:
    """Aware times in another zone come back as the same instant in UTC."""
    plus_two = timezone(timedelta(hours=2))
    original = record(
        created_at=datetime(2025, 3, 1, 14, 0, tzinfo=plus_two),
        updated_at=datetime(2025, 3, 1, 14, 0, tzinfo=plus_two),
        next_retry_at=datetime(2025, 3, 1, 15, 0, tzinfo=plus_two),
    )

    stored = store.add(original)
    fetched = store.get(original.id)

    assert fetched.created_at == T0
    assert fetched.created_at.utcoffset() == timedelta(0)
    assert fetched.next_retry_at == T0 + timedelta(hours=1)
    assert fetched == stored


def test_add_refuses_naive_datetimes(store: Store) -> None:
    """A naive datetime is a ValueError before anything is written."""
    original = record(created_at=datetime(2025, 3, 1, 12, 0))

    with pytest.raises(ValueError, match="timezone-aware"):
        store.add(original)

    assert store.list() == []


def test_size_bytes_counts_utf8_bytes(store: Store) -> None:
    """size_bytes counts UTF-8 bytes of payloads, previews, messages, tracebacks."""
    original = record(
        parameters={
            "p": Encoded(format="json", payload='"é"', preview="é", fingerprint="x")
        },
        failed_steps=[failed("s[0]", message="✓", traceback="tb", inputs={})],
        completed_steps=[],
    )

    stored = store.add(original)

    assert stored.size_bytes == (4 + 2) + (3 + 2)
    assert store.get(original.id).size_bytes == 11


def test_add_same_id_twice_is_refused(store: Store) -> None:
    """A second record with a stored id is refused and the first is kept."""
    first = store.add(record())

    with pytest.raises(StoreError, match="already stored"):
        store.add(record(id=first.id, flow_name="other"))

    assert store.get(first.id) == first


def test_add_refuses_duplicate_step_keys(store: Store) -> None:
    """Two completed steps with one key are a ValueError, nothing is stored."""
    original = record(completed_steps=[completed("a[0]"), completed("a[0]")])

    with pytest.raises(ValueError, match="a\\[0\\]"):
        store.add(original)

    assert store.list() == []


def test_add_stores_record_without_steps(store: Store) -> None:
    """A record with no steps at all round-trips."""
    original = record(failed_steps=[], completed_steps=[], parameters={})

    stored = store.add(original)

    assert store.get(original.id) == stored
    assert stored.size_bytes == 0


def test_add_keeps_step_order(store: Store) -> None:
    """Steps come back in the order they were given, not sorted by key."""
    keys = ["z[0]", "a[0]", "m[0]", "b[10]", "b[2]"]
    original = record(completed_steps=[completed(key) for key in keys])

    store.add(original)

    assert [step.key for step in store.get(original.id).completed_steps] == keys


def test_get_by_unique_prefix(store: Store) -> None:
    """A unique prefix of 4+ characters finds the record, in any case."""
    wanted = store.add(record(id=UUID("abcd1234-0000-4000-8000-000000000001")))
    store.add(record(id=UUID("abce1234-0000-4000-8000-000000000002")))

    assert store.get("abcd") == wanted
    assert store.get("ABCD12") == wanted
    assert store.get(" abcd1234-0000 ") == wanted
    assert store.get(wanted.id) == wanted
    assert store.get(str(wanted.id).upper()) == wanted


def test_get_ambiguous_prefix(store: Store) -> None:
    """A prefix of several records raises AmbiguousId listing them."""
    store.add(record(id=UUID("abcd1234-0000-4000-8000-000000000001")))
    store.add(record(id=UUID("abcd1234-5000-4000-8000-000000000002")))
    store.add(record(id=UUID("ffff0000-0000-4000-8000-000000000003")))

    with pytest.raises(AmbiguousId) as caught:
        store.get("abcd")

    assert str(caught.value) == (
        "'abcd' matches 2 incomplete executions "
        "(abcd1234-0..., abcd1234-5...); give more characters"
    )


def test_get_too_short_prefix(store: Store) -> None:
    """Fewer than 4 characters is a StoreError that says how many to give."""
    store.add(record(id=UUID("abcd1234-0000-4000-8000-000000000001")))

    with pytest.raises(StoreError, match="at least 4 characters") as caught:
        store.get("abc")

    assert type(caught.value) is StoreError


def test_get_unknown_id_or_prefix(store: Store) -> None:
    """An id or prefix that matches nothing raises RecordNotFound with the ls hint."""
    store.add(record())

    with pytest.raises(RecordNotFound) as caught:
        store.get("0000ffff")
    assert str(caught.value) == (
        "no incomplete execution matches '0000ffff'; "
        "list them with: prefect-incomplete ls"
    )
    with pytest.raises(RecordNotFound):
        store.get(uuid4())
    with pytest.raises(RecordNotFound):
        store.get("zz%_")


def test_list_filters_and_orders_newest_first(store: Store) -> None:
    """list() filters by flow, statuses and failed kind, newest first, with limit."""
    old = store.add(record(created_at=T0))
    mid = store.add(
        record(
            created_at=T0 + timedelta(minutes=1),
            status=Status.SCHEDULED,
            failed_steps=[failed("a[0]", kind="RateLimitError")],
        )
    )
    new = store.add(
        record(
            created_at=T0 + timedelta(minutes=2),
            flow_name="other",
            status=Status.RESOLVED,
        )
    )
    store.add(
        record(
            created_at=T0 + timedelta(minutes=3),
            failed_steps=[],
            completed_steps=[completed("RateLimitError[0]")],
        )
    )

    everything = store.list()
    assert [item.id for item in everything][1:] == [new.id, mid.id, old.id]
    assert [item.id for item in store.list(limit=2)] == [everything[0].id, new.id]
    assert [item.id for item in store.list(flow="other")] == [new.id]
    assert {
        item.id for item in store.list(statuses=[Status.SCHEDULED, Status.RESOLVED])
    } == {
        mid.id,
        new.id,
    }
    assert store.list(statuses=[]) == []
    assert store.list(kind="RateLimitError") == [mid]
    assert store.list(kind="RateLimitError", flow="other") == []
    assert store.list(
        flow="sync_orders", statuses=[Status.UNRESOLVED], kind="DataError"
    ) == [old]


def test_open_records_oldest_first(store: Store) -> None:
    """open_records() holds the flow's open records, oldest first."""
    second = store.add(
        record(created_at=T0 + timedelta(hours=1), status=Status.SCHEDULED)
    )
    first = store.add(record(created_at=T0))
    third = store.add(
        record(created_at=T0 + timedelta(hours=2), status=Status.IN_PROGRESS)
    )
    store.add(record(status=Status.RESOLVED))
    store.add(record(status=Status.DISCARDED))
    store.add(record(flow_name="other"))

    assert store.open_records("sync_orders") == [first, second, third]


# --- a resumed run's outcome ------------------------------------------------------


def test_record_failure_replaces_failed_and_merges_completed(store: Store) -> None:
    """A new failure replaces failed steps, merges completed ones, counts it."""
    original = store.add(
        record(
            status=Status.IN_PROGRESS,
            claimed_by="run-1",
            lease_expires_at=T0 + timedelta(hours=1),
            failed_steps=[failed("push_order[1]"), failed("notify[0]")],
            completed_steps=[
                completed("fetch_orders[0]", output="orders", fingerprint="f1"),
                completed("push_order[0]", output="first", fingerprint="p0"),
            ],
        )
    )
    resumed_run = uuid4()

    updated = store.record_failure(
        original.id,
        flow_run_id=resumed_run,
        failed_steps=[failed("push_order[2]", kind="RateLimitError")],
        completed_steps=[
            completed("fetch_orders[0]", output="replayed", fingerprint="f1"),
            completed("push_order[0]", output="changed", fingerprint="p0-new"),
            completed("push_order[1]", output="now ok", fingerprint="p1"),
        ],
        status=Status.SCHEDULED,
        next_retry_at=T0 + timedelta(minutes=10),
        disposition=Disposition.AUTO_RETRY,
    )

    assert updated.attempts == 2
    assert [step.key for step in updated.failed_steps] == ["push_order[2]"]
    assert updated.failed_steps[0].kind == "RateLimitError"
    assert [(s.key, json.loads(s.output.payload)) for s in updated.completed_steps] == [
        ("fetch_orders[0]", "orders"),
        ("push_order[0]", "changed"),
        ("push_order[1]", "now ok"),
    ]
    assert updated.completed_steps[1].inputs_fingerprint == "p0-new"
    assert updated.last_flow_run_id == resumed_run
    assert updated.flow_run_id == original.flow_run_id
    assert updated.status is Status.SCHEDULED
    assert updated.next_retry_at == T0 + timedelta(minutes=10)
    assert updated.disposition is Disposition.AUTO_RETRY
    assert updated.claimed_by is None
    assert updated.lease_expires_at is None
    assert updated.updated_at > original.updated_at
    assert updated.size_bytes == expected_size(updated)
    assert store.get(original.id) == updated
    assert step_rows(store, original.id) == 4


def test_record_failure_keeps_outputs_across_resumes(store: Store) -> None:
    """A later failure still holds every output recorded since the first run."""
    original = store.add(record(completed_steps=[completed("a[0]")]))
    for attempt, key in enumerate(["b[0]", "c[0]"], start=2):
        updated = store.record_failure(
            original.id,
            flow_run_id=uuid4(),
            failed_steps=[failed("d[0]")],
            completed_steps=[completed(key)],
            status=Status.UNRESOLVED,
            next_retry_at=None,
            disposition=Disposition.MANUAL,
        )
        assert updated.attempts == attempt

    assert [step.key for step in store.get(original.id).completed_steps] == [
        "a[0]",
        "b[0]",
        "c[0]",
    ]


def test_record_failure_of_same_step_again(store: Store) -> None:
    """The same step failing again replaces its inputs and error in place."""
    original = store.add(record(failed_steps=[failed("push_order[1]")]))
    again = failed("push_order[1]", message="still broken", inputs={"order": value(7)})

    updated = store.record_failure(
        original.id,
        flow_run_id=uuid4(),
        failed_steps=[again],
        completed_steps=[],
        status=Status.UNRESOLVED,
        next_retry_at=None,
        disposition=Disposition.MANUAL,
    )

    assert updated.failed_steps == [again]
    assert updated.completed_steps == original.completed_steps
    assert store.get(original.id) == updated


def test_record_failure_of_unknown_record(store: Store) -> None:
    """record_failure on an unknown id raises RecordNotFound."""
    with pytest.raises(RecordNotFound):
        store.record_failure(
            uuid4(),
            flow_run_id=uuid4(),
            failed_steps=[],
            completed_steps=[],
            status=Status.UNRESOLVED,
            next_retry_at=None,
            disposition=Disposition.MANUAL,
        )


def test_resolve_clears_claim(store: Store) -> None:
    """resolve() marks the record resolved by the run and clears claim and retry."""
    original = store.add(
        record(
            status=Status.IN_PROGRESS,
            claimed_by="run-1",
            lease_expires_at=T0,
            next_retry_at=T0,
        )
    )
    run = uuid4()

    resolved = store.resolve(original.id, flow_run_id=run)

    assert resolved.status is Status.RESOLVED
    assert resolved.resolved_by == run
    assert (resolved.claimed_by, resolved.lease_expires_at, resolved.next_retry_at) == (
        None,
        None,
        None,
    )
    assert store.get(original.id) == resolved
    with pytest.raises(RecordNotFound):
        store.resolve(uuid4(), flow_run_id=run)


# --- claims -------------------------------------------------------------------------


def test_claim_takes_open_record(store: Store) -> None:
    """claim() puts an open record in progress with the holder and a lease."""
    original = store.add(record(status=Status.SCHEDULED))
    now = datetime.now(UTC)

    claimed = store.claim(original.id, "token-1", lease_seconds=60, now=now)

    assert claimed.status is Status.IN_PROGRESS
    assert claimed.claimed_by == "token-1"
    assert claimed.lease_expires_at == now + timedelta(seconds=60)
    assert store.get(original.id) == claimed


def test_claim_refused_while_in_progress(store: Store) -> None:
    """A second claim names the holder and leaves the first claim alone."""
    original = store.add(record())
    first = store.claim(original.id, "run-a", lease_seconds=60, now=T0)

    with pytest.raises(ClaimRefused) as caught:
        store.claim(
            original.id, "run-b", lease_seconds=60, now=T0 + timedelta(seconds=59)
        )

    refusal = caught.value
    assert (refusal.record_id, refusal.status, refusal.holder) == (
        original.id,
        Status.IN_PROGRESS,
        "run-a",
    )
    assert str(refusal) == (
        f"incomplete execution {original.short_id} is already being resumed "
        "by a resume whose flow run has not started yet (lease ends 2025-03-01 "
        "12:01:00 UTC); wait for that resume to end, or for its lease to end if "
        "its process died, then resume it"
    )
    assert store.get(original.id) == first


def test_claim_held_by_a_flow_run_names_the_run(store: Store) -> None:
    """A claim a running flow run holds is refused naming that flow run's id."""
    original = store.add(record())
    flow_run_id = uuid4()
    store.claim(original.id, str(flow_run_id), lease_seconds=60, now=T0)

    with pytest.raises(ClaimRefused) as caught:
        store.claim(original.id, "run-b", lease_seconds=60, now=T0)

    assert str(caught.value) == (
        f"incomplete execution {original.short_id} is already being resumed "
        f"by flow run {flow_run_id} (lease ends 2025-03-01 12:01:00 UTC); wait "
        "for that resume to end, or for its lease to end if its process died, "
        "then resume it"
    )


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (Status.RESOLVED, "is resolved; nothing to resume"),
        (Status.DISCARDED, "was discarded; nothing to resume"),
    ],
)
def test_claim_refused_when_closed(store: Store, status: Status, message: str) -> None:
    """A resolved or discarded record cannot be claimed."""
    original = store.add(record(status=status))

    with pytest.raises(ClaimRefused) as caught:
        store.claim(original.id, "run-b", lease_seconds=60)

    assert str(caught.value) == f"incomplete execution {original.short_id} {message}"
    assert caught.value.status is status
    assert store.get(original.id) == original


def test_claim_after_lease_expired(store: Store) -> None:
    """A claim whose lease has run out can be taken by another resume."""
    original = store.add(record())
    store.claim(original.id, "dead-run", lease_seconds=60, now=T0)
    later = T0 + timedelta(seconds=61)

    claimed = store.claim(original.id, "new-run", lease_seconds=60, now=later)

    assert claimed.claimed_by == "new-run"
    assert claimed.lease_expires_at == later + timedelta(seconds=60)


def fail_again(store: Store, record_id: UUID, *, holder: str) -> None:
    """Record a failed resume of `record_id` by `holder`, as a resumed run does."""
    store.record_failure(
        record_id,
        holder=holder,
        flow_run_id=uuid4(),
        failed_steps=[failed("push_order[2]")],
        completed_steps=[],
        status=Status.UNRESOLVED,
        next_retry_at=None,
        disposition=Disposition.MANUAL,
    )


def test_lost_claim_changes_nothing_regression(store: Store) -> None:
    """A resume whose claim was taken over can neither record nor resolve."""
    original = store.add(record())
    store.claim(original.id, "stalled-run", lease_seconds=60, now=T0)
    taken = store.claim(
        original.id, "new-run", lease_seconds=60, now=T0 + timedelta(seconds=61)
    )

    with pytest.raises(ClaimLost, match="claimed by another resume"):
        fail_again(store, original.id, holder="stalled-run")
    with pytest.raises(ClaimLost):
        store.resolve(original.id, flow_run_id=uuid4(), holder="stalled-run")

    assert store.get(original.id) == taken


def test_closed_record_is_not_reopened_by_its_old_resume(store: Store) -> None:
    """A record discarded after its resume's lease ended stays discarded."""
    original = store.add(record())
    store.claim(original.id, "stalled-run", lease_seconds=60, now=T0)
    (discarded,) = store.discard([original.id])

    with pytest.raises(ClaimLost, match="the record is discarded now"):
        fail_again(store, original.id, holder="stalled-run")

    assert store.get(original.id) == discarded


def test_holder_of_the_claim_resolves(store: Store) -> None:
    """The resume that holds the claim resolves the record."""
    original = store.add(record())
    store.claim(original.id, "the-run", lease_seconds=60)

    done = store.resolve(original.id, flow_run_id=uuid4(), holder="the-run")

    assert done.status is Status.RESOLVED
    assert done.claimed_by is None


def test_due_claim_refuses_a_record_retried_in_the_meantime(store: Store) -> None:
    """A worker that listed a record as due cannot claim it once another retried it."""
    original = store.add(
        record(
            status=Status.SCHEDULED,
            disposition=Disposition.AUTO_RETRY,
            next_retry_at=T0,
        )
    )
    due_by = T0 + timedelta(seconds=1)
    store.claim(original.id, "worker-a", lease_seconds=60, due_by=due_by)
    store.release(
        original.id,
        "worker-a",
        status=Status.SCHEDULED,
        next_retry_at=T0 + timedelta(minutes=10),
    )
    rescheduled = store.get(original.id)

    with pytest.raises(ClaimRefused, match="no longer due") as caught:
        store.claim(original.id, "worker-b", lease_seconds=60, due_by=due_by)

    assert caught.value.status is Status.SCHEDULED
    assert store.get(original.id) == rescheduled


def test_claim_unknown_record(store: Store) -> None:
    """Claiming an unknown id raises RecordNotFound."""
    with pytest.raises(RecordNotFound):
        store.claim(uuid4(), "run", lease_seconds=60)


def test_claim_needs_positive_lease(store: Store) -> None:
    """A lease of zero seconds is a ValueError."""
    original = store.add(record())

    with pytest.raises(ValueError, match="lease_seconds"):
        store.claim(original.id, "run", lease_seconds=0)


def test_claim_race_between_threads(store: Store) -> None:
    """Eight threads claim one record at once: one wins, seven name the winner."""
    original = store.add(record())
    barrier = threading.Barrier(8)
    outcomes: dict[str, str | None] = {}

    def race(holder: str) -> None:
        barrier.wait()
        try:
            store.claim(original.id, holder, lease_seconds=60)
            outcomes[holder] = None
        except ClaimRefused as exc:
            outcomes[holder] = exc.holder

    threads = [threading.Thread(target=race, args=(f"run-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    winners = [holder for holder, beaten_by in outcomes.items() if beaten_by is None]
    assert len(outcomes) == 8
    assert len(winners) == 1
    assert set(outcomes.values()) == {None, winners[0]}
    assert store.get(original.id).claimed_by == winners[0]


CLAIMER = textwrap.dedent(
    """
    import json, sys
    from uuid import UUID
    from prefect_incomplete.store import ClaimRefused, Store

    url, record_id, holder = sys.argv[1:]
    store = Store(url)
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        store.claim(UUID(record_id), holder, lease_seconds=60)
        print(json.dumps({"won": True}), flush=True)
    except ClaimRefused as exc:
        print(json.dumps({"won": False, "holder": exc.holder}), flush=True)
    """
)


def test_claim_race_between_processes(store: Store, empty_store_url: str) -> None:
    """Three processes claim one record at once: one wins, two name the winner."""
    original = store.add(record())
    holders = [f"process-{i}" for i in range(3)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, empty_store_url, str(original.id), holder],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for holder in holders
    ]
    for process in processes:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()

    results = [json.loads(process.communicate(timeout=120)[0]) for process in processes]

    winners = [h for h, result in zip(holders, results, strict=True) if result["won"]]
    assert len(winners) == 1
    assert [r["holder"] for r in results if not r["won"]] == [winners[0]] * 2
    assert store.get(original.id).claimed_by == winners[0]


def test_transfer_claim_and_renew(store: Store) -> None:
    """A token hands its claim to a flow run, which then renews it."""
    original = store.add(record())
    store.claim(original.id, "token", lease_seconds=1, now=T0)

    assert store.transfer_claim(original.id, "token", "flow-run", lease_seconds=60)
    moved = store.get(original.id)
    assert moved.claimed_by == "flow-run"
    assert moved.lease_expires_at is not None
    assert moved.lease_expires_at > datetime.now(UTC) + timedelta(seconds=50)

    assert not store.transfer_claim(original.id, "token", "other", lease_seconds=60)
    assert not store.renew(original.id, "token", lease_seconds=60)
    assert store.renew(original.id, "flow-run", lease_seconds=600)
    renewed = store.get(original.id)
    assert renewed.lease_expires_at is not None
    assert renewed.lease_expires_at > moved.lease_expires_at
    assert not store.renew(uuid4(), "flow-run", lease_seconds=60)


def test_release_gives_claim_back(store: Store) -> None:
    """release() by the holder reopens the record; anyone else gets False."""
    original = store.add(record())
    store.claim(original.id, "run-1", lease_seconds=60)
    retry_at = T0 + timedelta(minutes=1)

    assert not store.release(original.id, "run-2", status=Status.UNRESOLVED)
    assert store.release(
        original.id, "run-1", status=Status.SCHEDULED, next_retry_at=retry_at
    )

    released = store.get(original.id)
    assert released.status is Status.SCHEDULED
    assert released.next_retry_at == retry_at
    assert (released.claimed_by, released.lease_expires_at) == (None, None)
    assert not store.release(original.id, "run-1", status=Status.UNRESOLVED)
    with pytest.raises(ValueError, match="unresolved or scheduled"):
        store.release(original.id, "run-1", status=Status.RESOLVED)


def test_claim_refused_pickles(store: Store) -> None:
    """ClaimRefused survives pickling with its attributes and message."""
    refusal = ClaimRefused(uuid4(), Status.IN_PROGRESS, "run-1", lease_expires_at=T0)

    copy = pickle.loads(pickle.dumps(refusal))

    assert (copy.record_id, copy.status, copy.holder) == (
        refusal.record_id,
        refusal.status,
        refusal.holder,
    )
    assert str(copy) == str(refusal)
    assert "(lease ends 2025-03-01 12:00:00 UTC)" in str(copy)


# --- a person's decisions -------------------------------------------------------


def test_edit_replaces_named_values(store: Store) -> None:
    """edit() by the claim's holder replaces the named parameters and inputs."""
    original = store.add(
        record(
            parameters={"day": value("2025-03-01"), "limit": value(10)},
            failed_steps=[failed("push_order[1]"), failed("notify[0]")],
        )
    )
    store.claim(original.id, "token", lease_seconds=60)

    edited = store.edit(
        original.id,
        holder="token",
        parameters={"day": value("2025-03-02")},
        step_inputs={"push_order[1]": {"order": value({"id": 9}), "extra": value(1)}},
    )

    assert edited.parameters == {"day": value("2025-03-02"), "limit": value(10)}
    assert edited.failed_steps[0].inputs == {
        "order": value({"id": 9}),
        "extra": value(1),
    }
    assert edited.failed_steps[1] == original.failed_steps[1]
    assert edited.size_bytes == expected_size(edited)
    assert edited.claimed_by == "token"
    assert store.get(original.id) == edited


def test_edit_without_claim(store: Store) -> None:
    """edit() without a holder works only while no resume holds the record."""
    original = store.add(record())

    edited = store.edit(original.id, holder=None, parameters={"day": value("x")})
    assert edited.parameters["day"] == value("x")

    store.claim(original.id, "run-1", lease_seconds=600)
    with pytest.raises(ClaimRefused) as caught:
        store.edit(original.id, holder=None, parameters={"day": value("y")})
    assert caught.value.holder == "run-1"
    assert store.get(original.id).parameters["day"] == value("x")


def test_edit_refusals(store: Store) -> None:
    """A lost claim, a closed record or an unknown step changes nothing."""
    original = store.add(record())
    store.claim(original.id, "run-1", lease_seconds=600)

    with pytest.raises(ClaimRefused, match="no longer claimed by token"):
        store.edit(original.id, holder="token", parameters={"day": value("y")})
    with pytest.raises(ValueError, match="no failed step 'nope\\[0\\]'"):
        store.edit(
            original.id,
            holder="run-1",
            parameters={"day": value("y")},
            step_inputs={"nope[0]": {}},
        )
    store.resolve(original.id, flow_run_id=uuid4())
    with pytest.raises(ClaimRefused, match="is resolved; nothing to edit"):
        store.edit(original.id, holder="run-1", parameters={"day": value("y")})

    assert store.get(original.id).parameters == original.parameters


def test_discard_open_records(store: Store) -> None:
    """discard() closes open and lapsed records, leaves resolved ones out."""
    unresolved = store.add(record())
    lapsed = store.add(
        record(status=Status.IN_PROGRESS, claimed_by="dead", lease_expires_at=T0)
    )
    resolved = store.add(record(status=Status.RESOLVED))

    changed = store.discard([unresolved.id, lapsed.id, resolved.id, unresolved.id])

    assert [item.id for item in changed] == [unresolved.id, lapsed.id]
    assert all(item.status is Status.DISCARDED for item in changed)
    assert store.get(lapsed.id).claimed_by is None
    assert store.get(resolved.id).status is Status.RESOLVED
    assert store.discard([]) == []


def test_discard_is_all_or_nothing(store: Store) -> None:
    """One held or unknown id among many discards nothing at all."""
    first = store.add(record())
    held = store.add(record())
    store.claim(held.id, "run-1", lease_seconds=600)

    with pytest.raises(ClaimRefused) as caught:
        store.discard([first.id, held.id])
    assert caught.value.holder == "run-1"
    assert str(caught.value).endswith("if its process died, then discard it")

    with pytest.raises(RecordNotFound):
        store.discard([first.id, uuid4()])

    assert store.get(first.id).status is Status.UNRESOLVED
    assert store.get(held.id).status is Status.IN_PROGRESS


def test_schedule_sets_next_retry(store: Store) -> None:
    """schedule() sets status and retry time, and refuses held or closed records."""
    original = store.add(record())
    at = T0 + timedelta(minutes=30)

    scheduled = store.schedule(original.id, status=Status.SCHEDULED, next_retry_at=at)

    assert (scheduled.status, scheduled.next_retry_at) == (Status.SCHEDULED, at)
    assert store.get(original.id) == scheduled
    with pytest.raises(ValueError, match="needs next_retry_at"):
        store.schedule(original.id, status=Status.SCHEDULED, next_retry_at=None)

    store.claim(original.id, "run-1", lease_seconds=600)
    with pytest.raises(ClaimRefused):
        store.schedule(original.id, status=Status.UNRESOLVED, next_retry_at=None)
    store.resolve(original.id, flow_run_id=uuid4())
    with pytest.raises(ClaimRefused, match="is resolved; nothing to retry"):
        store.schedule(original.id, status=Status.SCHEDULED, next_retry_at=at)


def test_due_oldest_retry_first(store: Store) -> None:
    """due() lists scheduled records whose time has come, earliest retry first."""
    late = store.add(
        record(status=Status.SCHEDULED, next_retry_at=T0 + timedelta(minutes=5))
    )
    early = store.add(
        record(status=Status.SCHEDULED, next_retry_at=T0 - timedelta(hours=1))
    )
    exact = store.add(record(status=Status.SCHEDULED, next_retry_at=T0))
    store.add(record(status=Status.SCHEDULED, next_retry_at=T0 + timedelta(hours=1)))
    store.add(record(status=Status.UNRESOLVED, next_retry_at=T0 - timedelta(hours=2)))

    now = T0 + timedelta(minutes=5)

    assert [item.id for item in store.due(now=now)] == [early.id, exact.id, late.id]
    assert [item.id for item in store.due(now=now, limit=1)] == [early.id]


def test_purge_removes_exactly_old_closed_records(store: Store) -> None:
    """purge() deletes records of the statuses updated before the cut, with steps."""
    cut = T0 + timedelta(days=30)
    old_resolved = store.add(record(status=Status.RESOLVED, updated_at=T0))
    old_discarded = store.add(record(status=Status.DISCARDED, updated_at=T0))
    store.add(record(status=Status.RESOLVED, updated_at=cut))
    store.add(record(status=Status.UNRESOLVED, updated_at=T0))

    purged = store.purge(older_than=cut, statuses=[Status.RESOLVED, Status.DISCARDED])

    assert {item.id for item in purged} == {old_resolved.id, old_discarded.id}
    assert old_resolved in purged
    assert len(store.list()) == 2
    for gone in (old_resolved, old_discarded):
        with pytest.raises(RecordNotFound):
            store.get(gone.id)
        assert step_rows(store, gone.id) == 0
    assert store.purge(older_than=cut, statuses=[]) == []


def test_usage_counts_open_records(store: Store) -> None:
    """usage() counts records and bytes that are not resolved or discarded."""
    a = store.add(record())
    b = store.add(record(status=Status.SCHEDULED, next_retry_at=T0))
    c = store.add(record(flow_name="other", status=Status.IN_PROGRESS))
    store.add(record(status=Status.RESOLVED))
    store.add(record(status=Status.DISCARDED))

    assert store.usage() == (3, a.size_bytes + b.size_bytes + c.size_bytes)
    assert store.usage("sync_orders") == (2, a.size_bytes + b.size_bytes)
    assert store.usage("nobody") == (0, 0)


# --- opening the store ------------------------------------------------------------


def test_store_url_masks_password(postgres_url: str) -> None:
    """Store.url shows the URL without its password."""
    url = make_url(postgres_url).set(password="s3cret")

    store = Store(url.render_as_string(hide_password=False))

    assert "s3cret" not in store.url
    assert store.url == url.render_as_string(hide_password=True)
    assert "s3cret" not in repr(store)


def test_default_url_from_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Store() opens PREFECT_INCOMPLETE_DATABASE_URL, creating missing directories."""
    url = f"sqlite:///{tmp_path / 'nested' / 'dirs' / 'store.db'}"
    monkeypatch.setenv("PREFECT_INCOMPLETE_DATABASE_URL", url)

    store = Store()

    assert store.url == url
    assert (tmp_path / "nested" / "dirs" / "store.db").exists()


def test_memory_store_is_one_database() -> None:
    """Every Store of sqlite:// and every thread sees the same in-memory database."""
    added: list[IncompleteExecution] = []

    def add() -> None:
        for _ in range(20):
            added.append(Store("sqlite://").add(record()))

    threads = [threading.Thread(target=add) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    reader = Store("sqlite://")
    assert len(added) == 80
    assert all(reader.get(item.id) == item for item in added)


def test_unopenable_sqlite_url(tmp_path: Path) -> None:
    """A SQLite path that cannot be created gives a StoreError naming the URL."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    url = f"sqlite:///{blocker / 'store.db'}"

    with pytest.raises(StoreError) as caught:
        Store(url)

    assert str(caught.value).startswith(
        f"cannot open the incomplete-execution store at {url}: "
    )
    assert "PREFECT_INCOMPLETE_DATABASE_URL" in str(caught.value)


def test_unreachable_postgres_url() -> None:
    """A server that refuses connections gives a StoreError, password masked."""
    url = "postgresql+psycopg://postgres:s3cret@127.0.0.1:1/test"

    with pytest.raises(StoreError) as caught:
        Store(url)

    message = str(caught.value)
    assert message.startswith(
        "cannot open the incomplete-execution store at "
        "postgresql+psycopg://postgres:***@127.0.0.1:1/test: "
    )
    assert "s3cret" not in message
    assert isinstance(caught.value.__cause__, SQLAlchemyError)


def test_unparsable_url() -> None:
    """A string that is no SQLAlchemy URL gives a StoreError, password masked."""
    with pytest.raises(StoreError, match="cannot open") as caught:
        Store("not a url://user:s3cret@host")

    assert "s3cret" not in str(caught.value)


def test_database_error_during_use_names_store(tmp_path: Path) -> None:
    """An SQL error in a method is a StoreError naming the URL, chained."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    with store._db.engine.begin() as connection:
        connection.execute(text("DROP TABLE incomplete_steps"))

    with pytest.raises(StoreError) as caught:
        store.add(record())

    assert f"in the incomplete-execution store at {url}: " in str(caught.value)
    assert "no such table" in str(caught.value)
    assert isinstance(caught.value.__cause__, SQLAlchemyError)


# --- migrations -------------------------------------------------------------------


def test_migration_runs_once_per_url(tmp_path: Path, counted: dict[str, int]) -> None:
    """The first Store of a URL migrates; a second one does not check again."""
    url = f"sqlite:///{tmp_path / 'store.db'}"

    Store(url)
    assert counted == {"migrate": 1, "upgrade": 1}

    Store(url)
    assert counted == {"migrate": 1, "upgrade": 1}


def test_migrate_at_head_is_a_no_op(store: Store, counted: dict[str, int]) -> None:
    """migrate() on a database already at head runs no upgrade."""
    migrate(store._db.engine)

    assert counted["upgrade"] == 0
    with store._db.engine.connect() as connection:
        versions = connection.execute(text("SELECT version_num FROM alembic_version"))
        assert versions.scalars().all() == [SCHEMA_REVISION]


def test_migration_after_process_restart(
    empty_store_url: str, counted: dict[str, int]
) -> None:
    """A fresh engine cache (a new process) on a migrated database only checks."""
    Store(empty_store_url)
    store_module._databases.pop(empty_store_url).engine.dispose()
    counted.update(migrate=0, upgrade=0)

    Store(empty_store_url)

    assert counted == {"migrate": 1, "upgrade": 0}


OPENER = textwrap.dedent(
    """
    import sys
    from prefect_incomplete.store import Store

    print("ready", flush=True)
    sys.stdin.readline()
    Store(sys.argv[1])
    print("opened", flush=True)
    """
)


@pytest.fixture(params=["sqlite", "postgresql"])
def unmigrated_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database the store has never seen: no tables at all."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'new.db'}"
        return

    base = make_url(request.getfixturevalue("postgres_url"))
    schema = f"prefect_incomplete_new_{uuid4().hex[:12]}"
    admin = create_engine(base, poolclass=NullPool)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = base.update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)

    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def test_processes_migrate_a_new_database_together(unmigrated_url: str) -> None:
    """Three processes opening a new database at once all succeed, migrated once."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, unmigrated_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for process in processes:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()

    outputs = [process.communicate(timeout=120) for process in processes]

    assert [
        (out.strip(), process.returncode)
        for (out, _), process in zip(outputs, processes, strict=True)
    ] == [("opened", 0)] * 3, [err for _, err in outputs]
    engine = create_engine(unmigrated_url, poolclass=NullPool)
    with engine.connect() as connection:
        versions = connection.execute(text("SELECT version_num FROM alembic_version"))
        assert versions.scalars().all() == [SCHEMA_REVISION]
    engine.dispose()


def test_schema_revision_is_alembic_head() -> None:
    """SCHEMA_REVISION, which the cheap check compares, is the migrations' head."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(store_module.MIGRATIONS_DIR))

    assert ScriptDirectory.from_config(config).get_heads() == [SCHEMA_REVISION]


def test_migrations_match_the_models(store: Store) -> None:
    """The migrated schema is the one the SQLAlchemy models describe."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with store._db.engine.connect() as connection:
        differences = compare_metadata(
            MigrationContext.configure(connection), Base.metadata
        )

    assert differences == []
