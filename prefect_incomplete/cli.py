"""The ``prefect-incomplete`` command line: inspect, resume, retry, discard, purge.

Every command works on the store named by ``PREFECT_INCOMPLETE_DATABASE_URL``
(SQLite under ``PREFECT_HOME`` when it is unset). Tables are for people;
``--json`` prints the records' summaries for scripts. Values are only ever
shown as their previews, which were redacted when the record was stored: the
CLI never loads a payload.

Bad input and store failures print one line, ``error: ...``, on stderr and end
with exit code 1, and so does a command line that does not parse (an unknown
option, a value of the wrong type, a missing option). A resume that ran and
failed again also ends with code 1.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, Final, NoReturn, ParamSpec, TypeVar

import typer
from pydantic import ValidationError
from rich import box
from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

# click's UsageError, as the typer in use raises it: typer 0.26 and later carry
# their own copy of click, older ones use click itself. typer exports only its
# subclass BadParameter, so take the class from there rather than a private
# module.
if TYPE_CHECKING:
    from click.exceptions import UsageError
else:
    UsageError = typer.BadParameter.__bases__[0]

from prefect_incomplete import _controls, artifacts, errors
from prefect_incomplete import resume as resuming
from prefect_incomplete.models import (
    OPEN_STATUSES,
    Encoded,
    FailedStep,
    Hold,
    IncompleteExecution,
    Status,
    describe_holder,
)
from prefect_incomplete.resume import RecordUnavailable, ResumeError, ResumeStarted
from prefect_incomplete.store import Store, StoreError

__all__ = ["app", "main"]

logger = logging.getLogger("prefect_incomplete")

P = ParamSpec("P")
R = TypeVar("R")

COMMAND: Final = "prefect-incomplete"

_VIAS: Final[dict[str, resuming.Via]] = {
    "auto": "auto",
    "local": "local",
    "deployment": "deployment",
    "event": "event",
}
_UNITS: Final = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION: Final = re.compile(r"(?:\d+[wdhms])+")
_DURATION_PART: Final = re.compile(r"(\d+)([wdhms])")
_PURGED_BY_DEFAULT: Final = (Status.RESOLVED, Status.DISCARDED)
_STATUS_ORDER: Final = tuple(Status)
_CONFIDENTIAL: Final = "(confidential)"
_DEACTIVATED: Final = "consecutive-errors"
MAX_LIMIT: Final = 1_000_000
"""Most records `ls --limit` can ask for."""
MAX_INTERVAL: Final = 86_400
"""Longest pause between two passes of the worker, in seconds."""

_VALUE_PROBLEMS: Final = {
    "int_parsing": "is not a whole number",
    "float_parsing": "is not a number",
    "bool_parsing": "is not true or false",
}
_HOLD_ENDS: Final = {
    "sequential": "its flow has no open incomplete executions left",
    "quota": "resolving, discarding or purging records frees the quota",
}


class _Commands(TyperGroup):
    """The command group: a command line that does not parse is one error line."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        run = functools.partial(
            super().main,
            args,
            prog_name,
            complete_var,
            False,  # standalone_mode: the errors come here, not to typer's box
            windows_expand_args,
            **extra,
        )
        if not standalone_mode:
            return run()
        sys.exit(self._exit_code(run, args or sys.argv[1:]))

    def _exit_code(self, run: Callable[[], Any], argv: Sequence[str]) -> int:
        try:
            code = run()
        except UsageError as exc:
            given = next((arg for arg in argv if arg in self.commands), None)
            typer.echo(f"error: {_usage_problem(exc, given)}", err=True)
            return 1
        except typer.Abort:
            typer.echo("error: aborted; nothing more was done", err=True)
            return 1
        return code if isinstance(code, int) else 0


app = typer.Typer(
    name=COMMAND,
    cls=_Commands,
    help=(
        "Inspect, correct, resume and discard the incomplete executions "
        "of Prefect flows."
    ),
    invoke_without_command=True,
    pretty_exceptions_show_locals=False,  # locals may hold decoded inputs
)


@app.callback()
def _without_command(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


def main() -> None:
    """Run the ``prefect-incomplete`` command line."""
    app()


# --- output and errors ----------------------------------------------------


def _console() -> Console:
    # Made per command: the console must write to the sys.stdout of this call.
    return Console(highlight=False)


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, StoreError | ResumeError | ValueError):
        return _one_line(str(exc))
    return _one_line(f"{type(exc).__name__}: {exc}")


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {_one_line(message)}", err=True)
    raise typer.Exit(1)


@contextmanager
def _failing_as(what: str) -> Iterator[None]:
    """Turn an unexpected failure too (an unreachable Prefect API...) into one line."""
    try:
        yield
    except (StoreError, ResumeError, ValueError):
        raise
    except Exception as exc:
        logger.debug("%s", what, exc_info=True)
        _fail(f"{what}: {_describe(exc)}")


def _reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn the errors of bad input and of the store into one line and exit 1."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (StoreError, ResumeError, ValueError) as exc:
            _fail(str(exc))

    return run


def _time(value: datetime | None) -> str:
    return "-" if value is None else f"{value.astimezone(UTC):%Y-%m-%d %H:%M}"


def _seconds(value: datetime | None) -> str:
    return "-" if value is None else f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


# --- usage errors -----------------------------------------------------------


def _usage_problem(exc: UsageError, given: str | None) -> str:
    """What was wrong with the command line, and where its help is.

    `given` is the command named on the command line, for an error that
    click raised without a context.
    """
    command = given
    if exc.ctx is not None:
        command = exc.ctx.info_name if exc.ctx.parent is not None else None
    where = f"{COMMAND} {command}" if command else COMMAND
    return f"{_what_was_wrong(exc, where)}; see {where} --help"


def _what_was_wrong(exc: UsageError, where: str) -> str:
    if isinstance(exc, typer.BadParameter) and exc.param is not None:
        if not exc.message:  # click's MissingParameter says nothing more
            return f"{where} needs {_param_usage(exc.param)}"
        return f"{_param_name(exc.param)}: {_bad_value(exc)}"

    possibilities = getattr(exc, "possibilities", None)  # click's NoSuchOption
    if possibilities:
        return f"{_sentence(exc.message)} (did you mean {' or '.join(possibilities)}?)"
    return _sentence(exc.format_message())


def _param_name(param: Any) -> str:
    if param.param_type_name == "option" and param.opts:
        return str(param.opts[0])
    return str(param.metavar or param.name.upper())


def _param_usage(param: Any) -> str:
    name = _param_name(param)
    if param.param_type_name == "option" and param.metavar:
        return f"{name} {param.metavar}"
    return name


def _bad_value(exc: typer.BadParameter) -> str:
    """The value and what is wrong with it, from typer's pydantic check if any."""
    cause = exc.__cause__
    if not isinstance(cause, ValidationError) or not cause.errors():
        return _sentence(exc.message)

    error = cause.errors()[0]
    problem = _VALUE_PROBLEMS.get(error["type"], _sentence(error["msg"]))
    return f"{error['input']!r} {problem}"


def _sentence(text: str) -> str:
    """`text` on one line, as a clause: no capital at the start, no stop at the end."""
    text = _one_line(text).rstrip(".")
    return text[:1].lower() + text[1:]


# --- parsing options --------------------------------------------------------


def _names(values: Iterable[str] | None) -> list[str]:
    """Values of a repeatable option that also takes comma lists."""
    names = [part.strip() for value in values or () for part in value.split(",")]
    return list(dict.fromkeys(name for name in names if name))


def _status(name: str) -> Status:
    try:
        return Status(name.lower().replace("-", "_"))
    except ValueError:
        valid = ", ".join(status.value for status in Status)
        raise ValueError(f"unknown status {name!r}; expected one of: {valid}") from None


def _statuses(values: Iterable[str] | None) -> list[Status]:
    return list(dict.fromkeys(_status(name) for name in _names(values)))


def _kind(name: str) -> str:
    wanted = name.strip().lower()
    for kind in errors.KINDS:
        if kind.__name__.lower() == wanted:
            return kind.__name__
    return errors.kind_named(name.strip()).__name__


def _via(value: str) -> resuming.Via:
    try:
        return _VIAS[value.strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown --via {value!r}; expected one of: {', '.join(_VIAS)}"
        ) from None


def _cutoff(text: str, now: datetime) -> datetime:
    """`now` minus a duration such as ``30d``, ``12h``, ``90m``, ``45s``, ``2w``."""
    given = text.strip().lower().replace(" ", "")
    if not _DURATION.fullmatch(given):
        raise ValueError(
            f"--older-than {text!r} is not a duration; give a number and a unit "
            "(w, d, h, m, s), e.g. 30d, 12h, 90m, 45s or 2w"
        )

    seconds = sum(int(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(given))
    try:
        return now - timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"--older-than {text!r} reaches back too far") from None


def _purge_statuses(
    values: list[str] | None, include_open: bool, yes: bool
) -> list[Status]:
    chosen = _statuses(values)
    if not chosen:
        chosen = list(_PURGED_BY_DEFAULT)
        if include_open:
            chosen += [s for s in _STATUS_ORDER if s in OPEN_STATUSES]

    open_ones = [status.value for status in chosen if status in OPEN_STATUSES]
    flags = (("--include-open", include_open), ("--yes", yes))
    missing = [flag for flag, given in flags if not given]
    if open_ones and missing:
        raise ValueError(
            f"purging {', '.join(open_ones)} records deletes incomplete executions "
            "that still wait for a person or a retry; to do it, add "
            + " ".join(missing)
        )
    return chosen


# --- selecting records -------------------------------------------------------


def _claim_is_live(record: IncompleteExecution, now: datetime) -> bool:
    if record.status is not Status.IN_PROGRESS:
        return False
    return record.lease_expires_at is None or record.lease_expires_at >= now


def _by_ids(store: Store, ids: Iterable[str]) -> list[IncompleteExecution]:
    """The records named by ids or id prefixes, each once, in the order given."""
    records: dict[str, IncompleteExecution] = {}
    for given in ids:
        record = store.get(given)
        records.setdefault(str(record.id), record)
    return list(records.values())


def _open_of_flow(
    store: Store, flow: str
) -> tuple[list[IncompleteExecution], list[IncompleteExecution]]:
    """The flow's open records that are free, and those a live resume holds."""
    now = datetime.now(UTC)
    records = store.open_records(flow)
    free = [r for r in records if not _claim_is_live(r, now)]
    held = [r for r in records if _claim_is_live(r, now)]
    return free, held


def _check_bulk(
    command: str,
    ids: list[str],
    all_: bool,
    flow: str | None,
    *,
    yes: bool | None = None,
) -> None:
    """Refuse a mix of ids and --all, and an --all without what it needs.

    `yes` is None for a command whose --all needs no confirmation.
    """
    if ids and all_:
        raise ValueError(f"{command}: give ids or --all --flow FLOW, not both")
    if flow is not None and not all_:
        raise ValueError(
            f"{command}: --flow selects records only with --all; add --all, "
            "or give ids instead"
        )
    if not all_:
        return

    missing = ["--flow FLOW"] if flow is None else []
    missing += ["--yes"] if yes is False else []
    if missing:
        raise ValueError(
            f"{command} --all works on every open incomplete execution of one "
            f"flow; add {' '.join(missing)}"
        )


# --- ls -----------------------------------------------------------------------


def _kinds(record: IncompleteExecution) -> str:
    return ", ".join(dict.fromkeys(record.kinds)) or "unclassified"


def _failed_keys(record: IncompleteExecution) -> str:
    return ", ".join(step.key for step in record.failed_steps) or "-"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _relative(value: datetime | None, now: datetime) -> str:
    """A short time for tables, such as ``in 10m`` or ``3d ago``."""
    if value is None:
        return "-"

    seconds = (value - now).total_seconds()
    if seconds > 0:
        return f"in {_span(seconds)}"
    return f"{_span(-seconds)} ago"


def _next_retry(record: IncompleteExecution, now: datetime) -> str:
    if record.status is not Status.SCHEDULED:
        return "-"
    if record.next_retry_at is not None and record.next_retry_at <= now:
        return "due"
    return _relative(record.next_retry_at, now)


def _table(records: Iterable[IncompleteExecution], width: int) -> Table:
    now = datetime.now(UTC)
    table = Table(
        title="Incomplete executions",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1 if width >= 100 else 0, 0, 0),  # narrow: one space between
    )
    table.add_column("id", style="cyan", no_wrap=True, min_width=8)
    table.add_column("flow", overflow="fold", min_width=6)
    table.add_column("status", no_wrap=True)
    table.add_column("kind", overflow="fold", min_width=6)
    table.add_column("failed step", overflow="fold", min_width=6)
    table.add_column("attempts", justify="right")
    table.add_column("next retry")
    table.add_column("created")
    for record in records:
        cells = (
            record.short_id,
            record.flow_name,
            record.status.value,
            _kinds(record),
            _failed_keys(record),
            str(record.attempts),
            _next_retry(record, now),
            _relative(record.created_at, now),
        )
        table.add_row(*(Text(cell) for cell in cells))
    return table


def _summary(record: IncompleteExecution) -> dict[str, Any]:
    """`record.summary()`; a confidential record's values and error texts left out."""
    data = record.summary()
    if not record.confidential:
        return data

    data["parameters"] = dict.fromkeys(data["parameters"], _CONFIDENTIAL)
    for step in data["failed_steps"]:
        step["inputs"] = dict.fromkeys(step["inputs"], _CONFIDENTIAL)
        step["message"] = step["traceback"] = _CONFIDENTIAL
    for step in data["completed_steps"]:
        step["output"] = _CONFIDENTIAL
    return data


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


@app.command("ls")
@_reports_errors
def list_records(
    flow: Annotated[
        str | None,
        typer.Option(
            "--flow", "-f", metavar="FLOW", help="Only the records of this flow."
        ),
    ] = None,
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            "-s",
            metavar="STATUS",
            help=(
                "Only records with this status: unresolved, scheduled, in_progress, "
                "resolved, discarded. Repeat it or give a comma list."
            ),
        ),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind",
            "-k",
            metavar="KIND",
            help="Only records with a failed step of this error kind.",
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", "-n", metavar="N", help="Show at most this many."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the records' summaries as JSON.")
    ] = False,
) -> None:
    """List incomplete executions, newest first."""
    statuses = _statuses(status) or None
    kind_name = _kind(kind) if kind is not None else None
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"--limit must be from 1 to {MAX_LIMIT}, not {limit}")

    records = Store().list(flow=flow, statuses=statuses, kind=kind_name, limit=limit)

    if as_json:
        _print_json([_summary(record) for record in records])
    elif not records:
        typer.echo("No incomplete executions match.")
    else:
        console = _console()
        console.print(_table(records, console.width))


# --- show ---------------------------------------------------------------------


def _fields(rows: Iterable[tuple[str, str]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for name, value in rows:
        grid.add_row(Text(name), Text(value))
    return grid


def _heading(text: str) -> Text:
    return Text(f"\n{text}", style="bold")


def _indented(renderable: RenderableType) -> Padding:
    return Padding(renderable, (0, 0, 0, 2), expand=False)


def _about(record: IncompleteExecution) -> Table:
    rows = [
        ("flow", record.flow_name),
        ("status", record.status.value),
        ("disposition", record.disposition.value),
        ("attempts", str(record.attempts)),
        ("created", _seconds(record.created_at)),
        ("updated", _seconds(record.updated_at)),
    ]
    if record.status is Status.SCHEDULED:
        rows.append(("next retry", _seconds(record.next_retry_at)))
    if record.claimed_by is not None:
        until = _seconds(record.lease_expires_at)
        holder = describe_holder(record.claimed_by)
        rows.append(("claimed by", f"{holder} (lease ends {until})"))
    rows.append(("flow run", str(record.flow_run_id)))
    if record.last_flow_run_id and record.last_flow_run_id != record.flow_run_id:
        rows.append(("last failed run", str(record.last_flow_run_id)))
    if record.resolved_by is not None:
        rows.append(("resolved by", str(record.resolved_by)))
    if record.deployment_id is not None:
        rows.append(("deployment", str(record.deployment_id)))
    if record.entrypoint:
        rows.append(("entrypoint", record.entrypoint))
    rows.append(("size", f"{record.size_bytes} bytes"))
    if record.confidential:
        rows.append(("confidential", "values and error texts are not shown"))
    return _fields(rows)


def _previews(
    record: IncompleteExecution, values: dict[str, Encoded]
) -> list[tuple[str, str]]:
    if record.confidential:
        return [(name, _CONFIDENTIAL) for name in values]
    return [(name, value.preview) for name, value in values.items()]


def _failed_step(record: IncompleteExecution, step: FailedStep) -> list[RenderableType]:
    inputs = [
        (name + (" (edited)" if name in step.edited else ""), preview)
        for name, preview in _previews(record, step.inputs)
    ]
    message = _CONFIDENTIAL if record.confidential else step.message
    parts: list[RenderableType] = [
        _heading(f"Failed step {step.key}"),
        _indented(
            _fields(
                [
                    ("task", step.task_name),
                    ("kind", step.kind or "unclassified"),
                    ("message", message),
                ]
            )
        ),
    ]
    if inputs:
        parts += [
            _indented(Text("inputs", style="bold")),
            _indented(_indented(_fields(inputs))),
        ]
    if step.traceback.strip() and not record.confidential:
        parts += [
            _indented(Text("traceback", style="bold")),
            _indented(_indented(Text(step.traceback.rstrip()))),
        ]
    return parts


def _next_steps(record: IncompleteExecution) -> list[RenderableType]:
    name = record.short_id
    if record.status is Status.RESOLVED:
        return [_heading(f"Resolved by flow run {record.resolved_by}; nothing to do.")]
    if record.status is Status.DISCARDED:
        return [_heading("Discarded; nothing to resume.")]

    rows = [("resume", f"{COMMAND} resume {name}")]
    step = next((s for s in record.failed_steps if s.inputs), None)
    if step is not None:
        example = f"--set '{step.key}.{next(iter(step.inputs))}=VALUE'"
        rows.append(("correct an input", example))
    if record.parameters:
        rows.append(
            ("change a parameter", f"--param {next(iter(record.parameters))}=VALUE")
        )
    rows.append(("discard", f"{COMMAND} discard {name}"))
    return [_heading("Next"), _indented(_fields(rows))]


def _details(record: IncompleteExecution) -> Group:
    parts: list[RenderableType] = [
        Text(f"Incomplete execution {record.id}", style="bold"),
        _indented(_about(record)),
    ]
    if record.parameters:
        params = _previews(record, record.parameters)
        parts += [_heading("Parameters"), _indented(_fields(params))]
    for step in record.failed_steps:
        parts += _failed_step(record, step)
    if record.completed_steps:
        done = _previews(record, {s.key: s.output for s in record.completed_steps})
        parts += [
            _heading("Completed steps (replayed on resume)"),
            _indented(_fields(done)),
        ]
    return Group(*parts, *_next_steps(record))


@app.command()
@_reports_errors
def show(
    record_id: Annotated[
        str, typer.Argument(metavar="ID", help="The record's id or a unique prefix.")
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the record's summary as JSON.")
    ] = False,
) -> None:
    """Show one incomplete execution: its error, steps, inputs and how to resume it."""
    record = Store().get(record_id)

    if as_json:
        _print_json(_summary(record))
    else:
        _console().print(_details(record))


# --- resume and retry -----------------------------------------------------------


def _outcome(store: Store, started: ResumeStarted) -> tuple[str, str]:
    """One line about a resume that started, and whether it resolved the record."""
    before = started.record
    name = before.short_id
    if started.via == "event":
        return (
            f"requested a resume of {name} by event {resuming.RESUME_EVENT}; "
            "the deployment's trigger starts the run",
            "started",
        )
    if started.via == "deployment":
        return (
            f"resuming {name} as flow run {started.flow_run_id} of deployment "
            f"{before.deployment_id}",
            "started",
        )

    after = store.get(before.id)
    ran = f"flow run {started.flow_run_id} ended {started.state_name}"
    if after.status is Status.RESOLVED:
        return f"resumed {name}: {ran}; the record is resolved", "resolved"
    if after.attempts > before.attempts:
        state = f"record updated (attempt {after.attempts}, {after.status.value})"
    else:
        state = f"the record is {after.status.value}"
    return (
        f"resume of {name} failed again: {ran}; {state}; see: {COMMAND} show {name}",
        "failed again",
    )


@app.command()
@_reports_errors
def resume(
    record_id: Annotated[
        str, typer.Argument(metavar="ID", help="The record's id or a unique prefix.")
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="STEP.ARG=VALUE",
            help=(
                "A corrected input of the failed step, e.g. "
                "push_order[2].order='{\"qty\": 1}'. VALUE is JSON, or text. "
                "Repeat for more."
            ),
        ),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            metavar="NAME=VALUE",
            help="A new value of a flow parameter (JSON, or text). Repeat for more.",
        ),
    ] = None,
    via: Annotated[
        str,
        typer.Option(
            metavar="MODE",
            help=(
                "How to start the run: local (in this process), deployment "
                "(the record's deployment), event (its resume trigger), or auto: "
                "deployment if the record has one, else local."
            ),
        ),
    ] = "auto",
) -> None:
    """Resume an incomplete execution as a new flow run, with corrected inputs."""
    mode = _via(via)
    set_inputs = resuming.parse_assignments(set_ or [], what="--set")
    params = resuming.parse_assignments(param or [], what="--param")
    store = Store()

    with _failing_as(f"could not resume {record_id}"):
        started = resuming.resume(
            record_id, set_inputs=set_inputs, params=params, via=mode, store=store
        )
    line, result = _outcome(store, started)

    if result == "failed again":
        _fail(line)
    typer.echo(line)


def _retry_record(store: Store, record: IncompleteExecution) -> tuple[str, str]:
    try:
        started = resuming.resume(record.id, store=store)
    except Exception as exc:  # one record's failure must not stop the others
        logger.debug("Could not resume %s", record.short_id, exc_info=True)
        return f"could not resume {record.short_id}: {_describe(exc)}", "not started"
    return _outcome(store, started)


def _due_outcome(store: Store, outcome: ResumeStarted | ResumeError) -> tuple[str, str]:
    if isinstance(outcome, RecordUnavailable):  # another worker took it first
        return _skipped(outcome), "skipped"
    if isinstance(outcome, ResumeError):
        return f"could not resume: {_describe(outcome)}", "not started"
    return _outcome(store, outcome)


def _skipped(taken: RecordUnavailable) -> str:
    name = str(taken.record_id)[:8]
    if taken.status is Status.IN_PROGRESS:
        return f"skipped {name}: a resume is running it now"
    return f"skipped {name}: it was {taken.status.value} in the meantime"


def _retry_due(store: Store) -> list[tuple[str, str]]:
    outcomes = resuming.retry_due(store=store)
    return [_due_outcome(store, outcome) for outcome in outcomes]


def _tally(results: Iterable[str]) -> str:
    counts: dict[str, int] = {}
    for result in results:
        counts[result] = counts.get(result, 0) + 1
    total = sum(counts.values())
    parts = ", ".join(f"{count} {result}" for result, count in counts.items())
    plural = "" if total == 1 else "s"
    return f"{total} incomplete execution{plural}: {parts}"


def _report(lines: list[tuple[str, str]], *, stamp: bool = False) -> int:
    """Print one line per record and the tally; how many did not start."""
    prefix = f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} " if stamp else ""
    for line, result in lines:
        typer.echo(prefix + line, err=result == "not started")
    if lines:
        typer.echo(prefix + _tally(result for _, result in lines))
    return sum(result == "not started" for _, result in lines)


def _retry_targets(
    store: Store, ids: list[str], flow: str | None
) -> list[IncompleteExecution]:
    if ids:
        return _by_ids(store, ids)

    assert flow is not None  # _check_bulk asked for --flow
    free, held = _open_of_flow(store, flow)
    for record in held:
        typer.echo(f"skipped {record.short_id}: a resume is running it now")
    return free


@app.command()
@_reports_errors
def retry(
    ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="ID", help="Ids or unique id prefixes."),
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Every open record of --flow.")
    ] = False,
    flow: Annotated[
        str | None,
        typer.Option("--flow", "-f", metavar="FLOW", help="The flow, with --all."),
    ] = None,
    due: Annotated[
        bool,
        typer.Option("--due", help="The records whose automatic retry is due now."),
    ] = False,
) -> None:
    """Resume incomplete executions in bulk: by id, all of a flow, or those due."""
    ids = ids or []
    if due and (ids or all_ or flow):
        raise ValueError("retry: give ids, --all --flow FLOW, or --due; only one")
    if not (due or ids or all_ or flow):
        raise ValueError("retry: say which records: ids, --all --flow FLOW, or --due")
    _check_bulk("retry", ids, all_, flow)
    store = Store()

    if due:
        with _failing_as("could not retry the due records"):
            lines = _retry_due(store)
    else:
        lines = [_retry_record(store, r) for r in _retry_targets(store, ids, flow)]

    if not lines:
        typer.echo("Nothing to retry.")
    if _report(lines):
        raise typer.Exit(1)


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """Let SIGTERM stop the worker as Ctrl-C does, so claims are given back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
@_reports_errors
def worker(
    interval: Annotated[
        float,
        typer.Option(
            "--interval", metavar="SECONDS", help="Seconds between two passes."
        ),
    ] = 30.0,
    once: Annotated[
        bool,
        typer.Option(
            "--once", help="Make one pass and exit (1 if a retry could not start)."
        ),
    ] = False,
) -> None:
    """Retry the due incomplete executions, every --interval seconds until stopped."""
    if not 0 < interval <= MAX_INTERVAL:
        raise ValueError(
            f"--interval must be more than 0 and at most {MAX_INTERVAL} seconds "
            f"(a day), not {interval:g}"
        )
    store = Store()

    if once:
        with _failing_as("could not retry the due records"):
            lines = _retry_due(store) + _scheduled_purge(store)
        if _report(lines, stamp=True):
            raise typer.Exit(1)
        return

    typer.echo(
        f"Retrying due incomplete executions every {interval:g}s; press Ctrl-C to stop."
    )
    try:
        with _sigterm_stops():
            _serve(store, interval)
    except KeyboardInterrupt:
        typer.echo("Stopped.")


def _scheduled_purge(store: Store) -> list[tuple[str, str]]:
    """With PREFECT_INCOMPLETE_PURGE_AFTER set, delete old closed records."""
    from prefect_incomplete.settings import get_settings, parse_duration

    after = get_settings().purge_after
    if after is None:
        return []
    cutoff = datetime.now(UTC) - timedelta(seconds=parse_duration(after))
    purged = store.purge(
        older_than=cutoff, statuses=[Status.RESOLVED, Status.DISCARDED]
    )
    return [
        (
            f"purged {record.short_id} ({record.status.value}, older than {after})",
            "purged",
        )
        for record in purged
    ]


def _serve(store: Store, interval: float) -> NoReturn:
    while True:
        try:
            _report(_retry_due(store) + _scheduled_purge(store), stamp=True)
        except Exception as exc:  # the worker outlives one failed pass
            logger.debug("Retry pass failed", exc_info=True)
            typer.echo(
                f"error: retry pass failed: {_describe(exc)}; "
                f"trying again in {interval:g}s",
                err=True,
            )
        time.sleep(interval)


# --- discard ------------------------------------------------------------------


def _discard_targets(
    store: Store, ids: list[str], flow: str | None
) -> list[IncompleteExecution]:
    if not ids:
        assert flow is not None  # _check_bulk asked for --flow
        free, held = _open_of_flow(store, flow)
        for record in held:
            typer.echo(f"skipped {record.short_id}: a resume is running it now")
        return free

    records = _by_ids(store, ids)
    for record in records:
        if record.status not in OPEN_STATUSES:
            typer.echo(
                f"{record.short_id} is already {record.status.value}; left as is"
            )
    return [record for record in records if record.status in OPEN_STATUSES]


def _confirmed(records: list[IncompleteExecution], yes: bool) -> bool:
    if yes or not sys.stdin.isatty():
        return True
    plural = "" if len(records) == 1 else "s"
    names = ", ".join(record.short_id for record in records)
    return typer.confirm(
        f"Discard {len(records)} incomplete execution{plural} ({names})?"
    )


@app.command()
@_reports_errors
def discard(
    ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="ID", help="Ids or unique id prefixes."),
    ] = None,
    all_: Annotated[
        bool,
        typer.Option("--all", help="Every open record of --flow (needs --yes)."),
    ] = False,
    flow: Annotated[
        str | None,
        typer.Option("--flow", "-f", metavar="FLOW", help="The flow, with --all."),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")
    ] = False,
) -> None:
    """Discard incomplete executions: give them up; they will not be resumed."""
    ids = ids or []
    _check_bulk("discard", ids, all_, flow, yes=yes)
    if not ids and not all_:
        raise ValueError(
            f"discard: give the ids to discard, e.g. {COMMAND} discard 1a2b3c4d, "
            "or --all --flow FLOW --yes for every open one of a flow"
        )
    store = Store()

    records = _discard_targets(store, ids, flow)
    if not records:
        typer.echo("Nothing to discard.")
        return
    if not _confirmed(records, yes):
        _fail("nothing discarded")

    discarded = store.discard([record.id for record in records])
    for record in discarded:
        artifacts.publish(record, "discarded", store=store)
        typer.echo(
            f"discarded {record.short_id} ({record.flow_name}, "
            f"{_failed_keys(record)}: {_kinds(record)})"
        )
    plural = "" if len(discarded) == 1 else "s"
    typer.echo(f"Discarded {len(discarded)} incomplete execution{plural}.")
    _lift_holds(store)


def _lift_holds(store: Store) -> None:
    """Resume the deployments that records held paused, if nothing holds them now."""
    try:
        resumed = _controls.lift_holds(store)
    except Exception as exc:  # the records changed; the next change lifts them
        typer.echo(
            f"warning: could not lift the holds on deployments: {_describe(exc)}",
            err=True,
        )
        return
    for deployment_id in resumed:
        typer.echo(f"resumed the schedules of deployment {deployment_id}")


# --- purge --------------------------------------------------------------------


@app.command()
@_reports_errors
def purge(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="DURATION",
            help=(
                "Delete records last changed longer ago than this: 30d, 12h, 90m, "
                "45s, 2w, or a sum such as 1d12h."
            ),
        ),
    ],
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            "-s",
            metavar="STATUS",
            help=(
                "Statuses to delete (default: resolved,discarded). Repeat it or "
                "give a comma list."
            ),
        ),
    ] = None,
    include_open: Annotated[
        bool,
        typer.Option(
            "--include-open",
            help=(
                "Also delete open records (unresolved, scheduled, in_progress), "
                "even one a resume is running; needs --yes."
            ),
        ),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Confirm deleting open records.")
    ] = False,
) -> None:
    """Delete old resolved and discarded incomplete executions for good."""
    cutoff = _cutoff(older_than, datetime.now(UTC))
    statuses = _purge_statuses(status, include_open, yes)
    which = ", ".join(status.value for status in statuses)

    store = Store()
    purged = store.purge(older_than=cutoff, statuses=statuses)

    when = f"last changed before {_seconds(cutoff)}"
    if not purged:
        typer.echo(f"Nothing to purge: no {which} incomplete execution {when}.")
        return
    plural = "" if len(purged) == 1 else "s"
    typer.echo(f"Purged {len(purged)} incomplete execution{plural} ({which}) {when}:")
    for record in purged:
        typer.echo(
            f"  {record.short_id}  {record.flow_name}  {record.status.value}  "
            f"changed {_time(record.updated_at)}"
        )
    _lift_holds(store)


# --- reactivate ---------------------------------------------------------------


def _holds_of(store: Store, given: str) -> list[Hold]:
    """The holds on the one deployment whose id is or starts with `given`."""
    wanted = given.strip().lower()
    if len(wanted) < 4:
        raise ValueError(
            f"{given!r} is too short to name a deployment; give at least 4 "
            "characters of its id"
        )

    holds = [h for h in store.holds() if str(h.deployment_id).startswith(wanted)]
    deployments = {h.deployment_id for h in holds}
    if not deployments:
        raise ValueError(
            f"no deployment {given!r} is paused by prefect-incomplete; "
            "nothing to reactivate"
        )
    if len(deployments) > 1:
        shown = ", ".join(sorted(str(d) for d in deployments))
        raise ValueError(f"{given!r} names several paused deployments ({shown})")
    return holds


@app.command()
@_reports_errors
def reactivate(
    deployment: Annotated[
        str,
        typer.Argument(
            metavar="DEPLOYMENT_ID",
            help="The paused deployment's id, or a unique prefix of it.",
        ),
    ],
) -> None:
    """Resume a deployment paused after consecutive errors, once the cause is fixed."""
    store = Store()
    holds = _holds_of(store, deployment)
    deployment_id = holds[0].deployment_id

    if _DEACTIVATED not in {h.reason for h in holds}:
        ends = "; ".join(
            f"{h.reason}: it runs again once {_HOLD_ENDS.get(h.reason, 'it is lifted')}"
            for h in holds
        )
        raise ValueError(
            f"deployment {deployment_id} is not paused for consecutive errors, "
            f"so there is nothing to reactivate ({ends})"
        )

    with _failing_as(f"could not reactivate deployment {deployment_id}"):
        runs = _controls.release(store, deployment_id, _DEACTIVATED)
    if runs:
        typer.echo(f"reactivated deployment {deployment_id}: its schedules run again")
        return

    left = ", ".join(h.reason for h in holds if h.reason != _DEACTIVATED)
    if not left:
        _fail(
            f"the consecutive-errors hold on deployment {deployment_id} is lifted, "
            "but Prefect did not resume it (see the log above); resume it with: "
            "prefect deployment resume FLOW/DEPLOYMENT"
        )
    typer.echo(
        f"lifted the consecutive-errors hold on deployment {deployment_id}; "
        f"it stays paused for: {left}"
    )
