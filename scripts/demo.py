"""The demo's driver; run it with scripts/demo, which sets up the environment.

It starts the loopback services of `flows.services`, runs the example flow
`flows.sync_orders` for two days in this process (as a scheduler would), and
then does what a person would do, with the ``prefect-incomplete`` command
line: list and show the records, let the automatic retry resolve one, correct
and resume the other. At the end it checks, from the orders API's own log,
that every order was posted exactly once, and exits 1 if anything is not as
the demo says.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import prefect_incomplete  # noqa: E402
from flows.services import MailServer, OrdersAPI  # noqa: E402  (needs ROOT first)
from flows.sync_orders import ORDERS_CSV, sync_orders  # noqa: E402
from prefect_incomplete import IncompleteExecution, Status  # noqa: E402
from prefect_incomplete.store import Store  # noqa: E402

DAY_ONE, DAY_TWO = "2026-12-01", "2026-12-02"
OUTAGE_SECONDS = 10.0
CLI = Path(sys.executable).with_name("prefect-incomplete")
WIDTH = min(shutil.get_terminal_size((100, 24)).columns, 110)
INDENT = "   "


class DemoFailed(Exception):
    """Something was not as the demo says: the demo exits 1."""


# --- printing -------------------------------------------------------------


def say(text: str = "", *, hang: int = 0) -> None:
    """A paragraph of explanation, wrapped and indented under its step."""
    for paragraph in text.split("\n"):
        print(
            textwrap.fill(
                paragraph,
                WIDTH,
                initial_indent=INDENT,
                subsequent_indent=INDENT + " " * hang,
                break_on_hyphens=False,
            )
            if paragraph
            else ""
        )


def step(number: int, title: str) -> None:
    """A numbered step's heading."""
    print(f"\n{number}. {title}\n{'-' * min(WIDTH, len(title) + 4)}")


def note(text: str) -> None:
    """A line of the demo's own, set apart from command output."""
    print(f"{INDENT}> {text}")


class PluginLines(logging.Handler):
    """Show the plugin's own decisions while a flow runs in this process.

    Prefect's console handler is turned down (PREFECT_LOGGING_HANDLERS_CONSOLE_
    LEVEL=CRITICAL, set by scripts/demo); this shows only the log lines that
    prefect-incomplete writes. Every line still reaches the Prefect API.
    """

    def __init__(self) -> None:
        super().__init__()
        self.plugin_dir = str(Path(prefect_incomplete.__file__).parent)

    def emit(self, record: logging.LogRecord) -> None:
        if not record.pathname.startswith(self.plugin_dir):
            return
        text = " ".join(record.getMessage().split())
        print(
            textwrap.fill(
                text,
                WIDTH,
                initial_indent=f"{INDENT}  plugin: ",
                subsequent_indent=f"{INDENT}          ",
            )
        )


# --- running things ---------------------------------------------------------


def cli(*args: str, ok: tuple[int, ...] = (0,), cut_tracebacks: bool = False) -> str:
    """Run ``prefect-incomplete ARGS`` as a user would, and print what it says."""
    print(f"\n{INDENT}$ {shlex.join(['prefect-incomplete', *args])}")
    env = {**os.environ, "COLUMNS": str(WIDTH - len(INDENT))}
    done = subprocess.run(
        [str(CLI), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    output = done.stdout + done.stderr
    shown = _without_tracebacks(output) if cut_tracebacks else output
    print(textwrap.indent(shown.rstrip("\n"), INDENT))
    if done.returncode not in ok:
        raise DemoFailed(
            f"prefect-incomplete {' '.join(args)} exited {done.returncode}"
        )
    return output


def _without_tracebacks(output: str) -> str:
    """`show` output with each traceback replaced by a line that says so."""
    kept: list[str] = []
    skipping = 0
    for line in output.splitlines():
        depth = len(line) - len(line.lstrip())
        if skipping and line.strip() and depth > skipping:
            continue
        skipping = 0
        if line.strip() == "traceback":
            skipping = depth
            kept.append(f"{line}  (left out by the demo)")
            continue
        kept.append(line)
    return "\n".join(kept) + "\n"


def run_day(day: str, api: OrdersAPI, mail: MailServer) -> IncompleteExecution:
    """Run the sync for one day in this process; the record it stored."""
    print(f"\n{INDENT}sync_orders(day={day!r}, ...)")
    state = sync_orders(
        csv_path=str(ORDERS_CSV),
        api_url=api.url,
        receipts_dir=str(RECEIPTS),
        smtp_port=mail.port,
        day=day,
        return_state=True,
    )
    note(f"the flow run ended {state.name}")
    if state.name != "Incomplete":
        raise DemoFailed(f"the run of {day} ended {state.name}, not Incomplete")

    flow_run_id = state.state_details.flow_run_id
    (record,) = [r for r in Store().list() if r.flow_run_id == flow_run_id]
    return record


def wait_until(when: datetime | None, why: str) -> None:
    """Sleep until `when`, saying why."""
    if when is None:
        raise DemoFailed(f"nothing to wait for: {why}")
    wait((when - datetime.now(UTC)).total_seconds(), why)


def wait(seconds: float, why: str) -> None:
    """Sleep `seconds` (if more than none), saying why."""
    if seconds > 0:
        note(f"waiting {seconds:.0f} s {why}")
        time.sleep(seconds + 0.2)


def expect(record_id: Any, status: Status, attempts: int) -> IncompleteExecution:
    """The record, checked to have `status` after `attempts` failed runs."""
    record = Store().get(str(record_id))
    if record.status is not status or record.attempts != attempts:
        raise DemoFailed(
            f"record {record.short_id} is {record.status.value} after "
            f"{record.attempts} attempts; expected {status.value} after {attempts}"
        )
    return record


# --- what the services saw ------------------------------------------------


def api_log(api: OrdersAPI, expected: dict[str, list[int]], since: int = 0) -> int:
    """Print the API's requests after the first `since`, checked; how many so far."""
    requests = api.requests[since:]
    by_order: dict[str, list[int]] = {}
    for request in requests:
        by_order.setdefault(request.order_id, []).append(request.status)
    if not by_order:
        note("the orders API got no request: every post was replayed")
    else:
        note("the orders API's own log (status of each request, per order):")
        for order_id, statuses in by_order.items():
            print(f"{INDENT}    {order_id}  {' -> '.join(map(str, statuses))}")
    if by_order != expected:
        raise DemoFailed(f"the orders API saw {by_order}, expected {expected}")
    return since + len(requests)


def task_runs(flow_run_id: Any, replayed: int, ran: dict[str, int]) -> None:
    """Print, checked, how many task runs of a flow run were Replayed and ran.

    Prefect records task runs from events, a moment after they happen: wait
    up to 20 s for the server to show what the demo expects.
    """
    deadline = time.monotonic() + 20
    seen = _task_runs(flow_run_id)
    while seen != (replayed, ran) and time.monotonic() < deadline:
        time.sleep(0.5)
        seen = _task_runs(flow_run_id)
    count, by_name = seen
    note(
        f"in Prefect, that flow run has {count} task runs Replayed (their "
        f"recorded outputs, not run again) and {sum(by_name.values())} that ran: "
        + (", ".join(f"{name} x{n}" for name, n in sorted(by_name.items())) or "-")
    )
    if seen != (replayed, ran):
        raise DemoFailed(
            f"Prefect shows {count} Replayed and {by_name} that ran; "
            f"expected {replayed} Replayed and {ran}"
        )


def _task_runs(flow_run_id: Any) -> tuple[int, dict[str, int]]:
    """How many task runs of a flow run are Replayed, and the others by task."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]})
        )
    replayed = [run for run in runs if run.state and run.state.name == "Replayed"]
    ran = Counter(run.name.rsplit("-", 1)[0] for run in runs if run not in replayed)
    return len(replayed), dict(ran)


# --- the demo -------------------------------------------------------------

RECEIPTS = ROOT / ".demo" / "receipts"


def introduce(api: OrdersAPI, mail: MailServer) -> None:
    print("prefect-incomplete demo: an order sync that fails the way integrations do")
    print("=" * min(WIDTH, 74))
    say(
        "flows/sync_orders.py is an ordinary Prefect flow with @resumable above "
        "each @task and the @flow. For one day of flows/orders.csv it reads the "
        "rows (the trigger step), validates each row with a pydantic model, posts "
        "each order to an orders API, writes a receipt file per order and mails a "
        "summary. Two services on 127.0.0.1 stand in for the real ones:"
    )
    say(
        f"- orders API  {api.url}: answers its first request with 429 "
        f"(Retry-After: 1), and is down (503) for {OUTAGE_SECONDS:g} s once it has "
        "accepted 2 orders; it refuses a duplicate order id with 409, and logs "
        "every request.",
        hang=14,
    )
    say(
        f"- mail server 127.0.0.1:{mail.port}: not started yet, so a connection "
        "is refused.",
        hang=14,
    )
    say(
        "Prefect: scripts/demo started a Prefect server on "
        f"{os.environ['PREFECT_API_URL'].removesuffix('/api')} with PREFECT_HOME="
        f"{os.environ['PREFECT_HOME']}, the same as `prefect server start`, and "
        "stops it at the end. The records go to the plugin's default store, "
        "PREFECT_HOME/incomplete.db. Waits are shortened only by the plugin's "
        "settings: PREFECT_INCOMPLETE_AUTO_RETRY_SCHEDULE="
        f"{os.environ.get('PREFECT_INCOMPLETE_AUTO_RETRY_SCHEDULE')} and "
        "PREFECT_INCOMPLETE_POLICIES="
        f"{os.environ.get('PREFECT_INCOMPLETE_POLICIES')}."
    )


def first_runs(api: OrdersAPI, mail: MailServer) -> tuple[Any, Any]:
    step(1, "The runs: one day meets an outage, the other has bad rows")
    say(
        f"{DAY_ONE}: four good rows. The first post gets a 429 and is retried in "
        "the run after the Retry-After; the third post meets the outage, is "
        "retried in the run, and the outage outlasts those retries: the run "
        "stops there and is stored as an incomplete execution WITH auto-retry."
    )
    outage = run_day(DAY_ONE, api, mail)
    api_log(api, {"A-1001": [429, 201], "A-1002": [201], "A-1003": [503, 503, 503]})

    say(
        f"\n{DAY_TWO}: row A-1006 has the quantity 'zero' and row A-1007 no "
        "email. The model refuses both: a pydantic ValidationError is a "
        "DataError, never retried. The rows are validated side by side, so the "
        "one record of this run holds both failed steps; it waits for a person "
        "(no auto-retry). Nothing was posted."
    )
    posted_before = len(api.requests)
    bad_rows = run_day(DAY_TWO, api, mail)
    if len(api.requests) != posted_before:
        raise DemoFailed(f"the run of {DAY_TWO} posted orders, though rows were bad")

    expect(outage.id, Status.SCHEDULED, 1)
    expect(bad_rows.id, Status.UNRESOLVED, 1)
    return outage, bad_rows


def inspect_records(outage: Any, bad_rows: Any) -> None:
    step(2, "The records, as a person finds them")
    say(
        "Each record holds the failed steps with their inputs and error, the "
        "outputs of the steps that completed (a resume replays them) and the "
        "flow's parameters. The same shows in the Prefect UI as an artifact."
    )
    cli("ls")
    cli("show", outage.short_id, cut_tracebacks=True)
    cli("show", bad_rows.short_id, cut_tracebacks=True)


def auto_retry(api: OrdersAPI, mail: MailServer, outage: Any, seen: int) -> int:
    step(3, "The automatic retry resolves its record by itself")
    say(
        "A scheduled record is retried when due by `prefect-incomplete retry "
        "--due` (from cron) or a long-running `prefect-incomplete worker`. A "
        "retry is a resume: a new flow run that replays the completed steps."
    )
    record = Store().get(str(outage.id))
    if api.outage_started is None:
        raise DemoFailed("the outage never started")
    wait(
        api.outage_started + OUTAGE_SECONDS - time.monotonic(), "for the outage to end"
    )
    wait_until(record.next_retry_at, f"for the retry of {record.short_id} to be due")
    cli("retry", "--due", ok=(0, 1))
    seen = api_log(api, {"A-1003": [201], "A-1004": [201]}, seen)
    record = expect(outage.id, Status.SCHEDULED, 2)
    say(
        "\nThe API is back: A-1003 and A-1004 were posted, A-1001 and A-1002 "
        "were not posted again. But the mail server still refuses connections "
        "(ConnectionRefusedError: a ConnectionError), so the same record counts "
        "a second attempt and is scheduled again."
    )
    cli("ls", "--status", "scheduled")

    mail.start()
    note(f"the mail server is up now on 127.0.0.1:{mail.port}")
    wait_until(record.next_retry_at, f"for the retry of {record.short_id} to be due")
    cli("worker", "--once")
    seen = api_log(api, {}, seen)
    record = expect(outage.id, Status.RESOLVED, 2)
    task_runs(record.resolved_by, replayed=13, ran={"send_summary": 1})
    note(f"mail received: {[m['Subject'] for m in mail.messages]}")
    return seen


def correct_and_resume(api: OrdersAPI, mail: MailServer, bad_rows: Any) -> None:
    step(4, "A person corrects the bad rows and resumes")
    say(
        f"Record {bad_rows.short_id} waits for a person. --set STEP.ARG=VALUE "
        "corrects an input of a failed step (VALUE is JSON, or text; the CSV "
        'cells are text, hence "2"). The resume replays read_orders and the two '
        "good rows' validation, runs the corrected steps, and then the steps "
        "that never ran: the posts, the receipts and the mail."
    )
    cli(
        "resume",
        bad_rows.short_id,
        "--set",
        "validate_order[2].quantity=2",
        "--set",
        "validate_order[3].customer_email=gus@example.com",
    )
    record = expect(bad_rows.id, Status.RESOLVED, 1)
    task_runs(
        record.resolved_by,
        replayed=3,
        ran={
            "post_order": 4,
            "send_summary": 1,
            "validate_order": 2,
            "write_receipt": 4,
        },
    )
    cli("ls")

    say(
        "\nThe orders API's own log over the whole demo: every request it got, "
        "and how often it accepted each order."
    )
    everything = {f"A-{n}": [201] for n in range(1001, 1009)}
    everything |= {"A-1001": [429, 201], "A-1003": [503, 503, 503, 201]}
    api_log(api, everything)
    posts = api.posts()
    note(
        "accepted, per order: "
        + ", ".join(f"{order_id} x{count}" for order_id, count in sorted(posts.items()))
    )
    if sorted(posts.values()) != [1] * 8:
        raise DemoFailed(f"expected each of the 8 orders accepted once: {posts}")
    note("each order was posted exactly once; no duplicate was ever sent (no 409)")

    receipts = sorted(path.name for path in RECEIPTS.glob("*.txt"))
    subjects = [message["Subject"] for message in mail.messages]
    note(f"receipts in .demo/receipts: {len(receipts)}; mails: {subjects}")
    if len(receipts) != 8 or len(subjects) != 2:
        raise DemoFailed("expected 8 receipts and 2 mails")


def where_to_look() -> None:
    step(5, "Look at it in the Prefect UI")
    home = Path(os.environ["PREFECT_HOME"])
    shown = home.relative_to(ROOT) if home.is_relative_to(ROOT) else home
    say(
        "Every run, task run (the Replayed ones too), log line and record "
        "artifact is in the demo's Prefect database. The demo's server stops "
        "with the demo; start one on the same database:"
    )
    print(f"\n{INDENT}  PREFECT_HOME={shown} .venv/bin/prefect server start\n")
    say(
        "and open http://127.0.0.1:4200/artifacts: each record has an artifact "
        "incomplete-<record id> (a version per change: stored, resumed, "
        "resolved), and incomplete-sync-orders lists the flow's open records."
    )


def main() -> int:
    began = time.monotonic()
    logging.getLogger().addHandler(PluginLines())
    api = OrdersAPI(rate_limited=1, outage_after=2, outage_seconds=OUTAGE_SECONDS)
    mail = MailServer()
    with api, mail:
        introduce(api, mail)
        try:
            outage, bad_rows = first_runs(api, mail)
            inspect_records(outage, bad_rows)
            auto_retry(api, mail, outage, len(api.requests))
            correct_and_resume(api, mail, bad_rows)
        except DemoFailed as failure:
            print(f"\ndemo: FAILED: {failure}", file=sys.stderr)
            return 1
    where_to_look()
    print(f"\nThe demo took {time.monotonic() - began:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
