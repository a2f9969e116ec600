"""The example flow end to end: its records are stored, retried, corrected, resolved.

The flow runs against the loopback services of `flows.services`, and the
orders API's own log is the witness that a resume replays what was posted
instead of posting it again.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from _api import task_run_states

from prefect_incomplete import IncompleteExecution, Status
from prefect_incomplete.resume import ResumeStarted, resume, retry_due
from prefect_incomplete.store import Store

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the example lives in flows/, beside the package

from flows.services import MailServer, OrdersAPI  # noqa: E402  (needs ROOT first)
from flows.sync_orders import ORDERS_CSV, sync_orders  # noqa: E402

pytestmark = pytest.mark.usefixtures("prefect_server", "fast_retries", "store_url")

DAY_ONE, DAY_TWO = "2026-12-01", "2026-12-02"
VALIDATED = [f"validate_order[{n}]" for n in range(1, 5)]
CORRECTIONS = {
    "validate_order[2].quantity": "2",
    "validate_order[3].customer_email": "gus@example.com",
}


@pytest.fixture
def api() -> Iterator[OrdersAPI]:
    """The orders API: one 429, then down after two orders until told otherwise."""
    with OrdersAPI(rate_limited=1, outage_after=2) as api:
        yield api


@pytest.fixture
def mail() -> Iterator[MailServer]:
    """A mail server whose port stays closed until the test starts it."""
    with MailServer() as mail:
        yield mail


@pytest.fixture
def receipts(tmp_path: Path) -> Path:
    """Where the flow writes its receipt files."""
    return tmp_path / "receipts"


def sync(day: str, api: OrdersAPI, mail: MailServer, receipts: Path) -> Any:
    """Run the example flow for `day`; its final state."""
    return sync_orders(
        csv_path=str(ORDERS_CSV),
        api_url=api.url,
        receipts_dir=str(receipts),
        smtp_port=mail.port,
        day=day,
        return_state=True,
    )


def only_record() -> IncompleteExecution:
    """The one record in the store."""
    (record,) = Store().list()
    return record


def in_minutes(minutes: float) -> datetime:
    """A time `minutes` from now, to ask which records are due then."""
    return datetime.now(UTC) + timedelta(minutes=minutes)


def test_outage_is_stored_with_auto_retry(
    api: OrdersAPI, mail: MailServer, receipts: Path
) -> None:
    """A 503 that outlasts the in-run retries stores a scheduled ConnectionError."""
    state = sync(DAY_ONE, api, mail, receipts)

    record = only_record()
    assert state.name == "Incomplete"
    assert record.status is Status.SCHEDULED
    assert record.disposition.value == "auto-retry"
    assert record.next_retry_at is not None
    assert [(s.key, s.kind) for s in record.failed_steps] == [
        ("post_order[3]", "ConnectionError")
    ]
    assert [s.key for s in record.completed_steps] == [
        "read_orders[1]",
        *VALIDATED,
        "post_order[1]",
        "write_receipt[1]",
        "post_order[2]",
        "write_receipt[2]",
    ]
    assert api.answers("A-1001") == [429, 201]
    assert api.answers("A-1003") == [503, 503, 503, 503]
    assert api.posts() == Counter({"A-1001": 1, "A-1002": 1})


def test_bad_rows_are_stored_for_a_person(
    api: OrdersAPI, mail: MailServer, receipts: Path
) -> None:
    """Two rows the model refuses make one unresolved record with two DataErrors."""
    state = sync(DAY_TWO, api, mail, receipts)

    record = only_record()
    assert state.name == "Incomplete"
    assert record.status is Status.UNRESOLVED
    assert record.disposition.value == "manual"
    assert record.next_retry_at is None
    assert [(s.key, s.kind) for s in record.failed_steps] == [
        ("validate_order[2]", "DataError"),
        ("validate_order[3]", "DataError"),
    ]
    quantity, email = (
        record.failed_steps[0].inputs["quantity"],
        record.failed_steps[1].inputs["customer_email"],
    )
    assert (quantity.preview, email.preview) == ('"zero"', '""')
    assert [s.key for s in record.completed_steps] == [
        "read_orders[1]",
        "validate_order[1]",
        "validate_order[4]",
    ]
    assert api.requests == []


def test_auto_retry_resolves_once_the_services_are_back(
    api: OrdersAPI, mail: MailServer, receipts: Path
) -> None:
    """Retry with the mail still down fails again; the next retry resolves."""
    sync(DAY_ONE, api, mail, receipts)
    api.end_outage()

    (again,) = retry_due(now=in_minutes(2))
    after_second = only_record()
    mail.start()
    (final,) = retry_due(now=in_minutes(60))

    assert isinstance(again, ResumeStarted)
    assert again.state_name == "Incomplete"
    assert after_second.status is Status.SCHEDULED
    assert after_second.attempts == 2
    assert [(s.key, s.kind) for s in after_second.failed_steps] == [
        ("send_summary[1]", "ConnectionError")
    ]
    assert isinstance(final, ResumeStarted)
    assert final.state_name == "Completed"
    done = only_record()
    assert done.status is Status.RESOLVED
    assert done.resolved_by == final.flow_run_id
    expected = Counter({"Replayed": 13, "Completed": 1})
    assert task_run_states(final.flow_run_id, expected) == expected
    assert api.posts() == Counter(
        dict.fromkeys(["A-1001", "A-1002", "A-1003", "A-1004"], 1)
    )
    assert api.answers("A-1003") == [503, 503, 503, 503, 201]
    assert [m["Subject"] for m in mail.messages] == ["Orders of 2026-12-01: 4 synced"]
    assert len(list(receipts.glob("*.txt"))) == 4


def test_corrected_rows_are_resumed_and_each_order_posted_once(
    api: OrdersAPI, mail: MailServer, receipts: Path
) -> None:
    """--set edits of both failed steps resolve the record; every order posts once."""
    api.end_outage()
    mail.start()
    sync(DAY_TWO, api, mail, receipts)
    record = only_record()

    started = resume(record.short_id, set_inputs=CORRECTIONS)

    assert started.state_name == "Completed"
    assert only_record().status is Status.RESOLVED
    expected = Counter({"Replayed": 3, "Completed": 11})
    assert task_run_states(started.flow_run_id, expected) == expected
    assert api.posts() == Counter(
        dict.fromkeys(["A-1005", "A-1006", "A-1007", "A-1008"], 1)
    )
    posted = {order["order_id"]: order for order in api.accepted}
    assert posted["A-1006"]["quantity"] == 2
    assert posted["A-1007"]["customer_email"] == "gus@example.com"
    assert 409 not in [request.status for request in api.requests]
    assert [m["Subject"] for m in mail.messages] == ["Orders of 2026-12-02: 4 synced"]
