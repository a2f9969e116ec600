"""Show records in the Prefect UI (artifacts) and announce them (events).

Each record has a markdown artifact with the stable key
``incomplete-<record id>``, linked to the flow run and task run that failed;
every change (failed again, resumed, resolved, discarded) adds a version.
Each flow has a table artifact ``incomplete-<flow slug>`` that lists its open
records. Events ``prefect-incomplete.<what>`` carry the record as resource and
the flow run as related resource, for automations.

Everything shown comes from previews, which are redacted when stored; text
from errors, inputs, step keys and task names is escaped so that it cannot add
markdown or HTML to the page. Publishing is best effort: a failure is logged,
never raised.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from prefect_incomplete.models import IncompleteExecution, Status

__all__ = [
    "EVENTS",
    "artifact_key",
    "emit",
    "flow_table_key",
    "publish",
    "render_markdown",
    "render_table",
    "resource_id",
]

logger = logging.getLogger("prefect_incomplete")

EVENTS = ("stored", "resumed", "resolved", "discarded", "dropped", "deactivated")
"""What ``prefect-incomplete.<what>`` events exist."""

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#|~!])")


def artifact_key(record: IncompleteExecution) -> str:
    """The record's artifact key, stable over the record's life."""
    return f"incomplete-{record.id}"


def flow_table_key(flow_name: str) -> str:
    """The key of the table artifact listing a flow's open records."""
    slug = re.sub(r"[^a-z0-9]+", "-", flow_name.lower()).strip("-") or "flow"
    return f"incomplete-{slug}"


def resource_id(record_id: UUID | str) -> str:
    """The record's resource id in Prefect events."""
    return f"prefect-incomplete.record.{record_id}"


def escape(text: str) -> str:
    """`text` made inert in markdown and HTML."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", text)
    return " ".join(text.splitlines())


def _code(text: str) -> str:
    """A fenced block that `text` cannot close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def resume_command(record: IncompleteExecution) -> str:
    return f"prefect-incomplete resume {record.short_id}"


def render_markdown(record: IncompleteExecution) -> str:
    """The record's artifact: kind, message, steps, inputs, status, how to resume."""
    confidential = record.confidential
    lines = [
        f"# Incomplete execution `{record.short_id}`",
        "",
        f"**Flow:** {escape(record.flow_name)}  ",
        f"**Status:** {record.status.value}  ",
        f"**Disposition:** {record.disposition.value}  ",
        f"**Attempts:** {record.attempts}  ",
        f"**Created:** {record.created_at:%Y-%m-%d %H:%M:%S} UTC  ",
    ]
    if record.next_retry_at and record.status is Status.SCHEDULED:
        lines.append(
            f"**Next automatic retry:** {record.next_retry_at:%Y-%m-%d %H:%M:%S} UTC  "
        )
    if record.resolved_by:
        lines.append(f"**Resolved by flow run:** {record.resolved_by}  ")
    lines.append(f"**Record id:** {record.id}")

    for step in record.failed_steps:
        lines += [
            "",
            f"## Failed step {escape(step.key)}",
            "",
            f"**Kind:** {escape(step.kind or 'unclassified')}  ",
            f"**Task:** {escape(step.task_name)}  ",
            "**Message:** (confidential)" if confidential else "**Message:**",
        ]
        if not confidential:
            lines += ["", _code(step.message)]
        if not confidential and step.inputs:
            lines += ["", "| input | value |", "|---|---|"]
            lines += [
                f"| {escape(name)} | {escape(value.preview)} |"
                for name, value in step.inputs.items()
            ]

    if record.completed_steps:
        lines += ["", "## Completed steps (replayed on resume)", ""]
        lines += [f"- {escape(s.key)}" for s in record.completed_steps]

    if record.status in (Status.UNRESOLVED, Status.SCHEDULED, Status.IN_PROGRESS):
        lines += [
            "",
            "## Resume",
            "",
            _code(resume_command(record)),
            "",
            f"Correct an input with `--set '{_set_example(record)}'`, a flow parameter "
            "with `--param NAME=VALUE`; discard with "
            f"`prefect-incomplete discard {record.short_id}`.",
        ]
    return "\n".join(lines)


def _set_example(record: IncompleteExecution) -> str:
    for step in record.failed_steps:
        for name in step.inputs:
            if re.fullmatch(r"[A-Za-z0-9_\[\].]+", step.key + name):
                return f"{step.key}.{name}=VALUE"
    return "STEP.ARG=VALUE"


def render_table(records: Iterable[IncompleteExecution]) -> list[dict[str, Any]]:
    """Rows of a flow's table artifact: one per open record."""
    return [
        {
            "id": record.short_id,
            "status": record.status.value,
            "kind": ", ".join(record.kinds) or "unclassified",
            "failed step": ", ".join(s.key for s in record.failed_steps),
            "attempts": record.attempts,
            "created": f"{record.created_at:%Y-%m-%d %H:%M:%S}",
            "resume": resume_command(record),
        }
        for record in records
    ]


def publish(
    record: IncompleteExecution,
    what: str,
    *,
    task_run_id: UUID | None = None,
    flow_run_id: UUID | None = None,
    store: Any = None,
) -> None:
    """Write the record's artifacts and emit ``prefect-incomplete.<what>``."""
    confidential = record.confidential
    flow_run_id = flow_run_id or record.last_flow_run_id or record.flow_run_id
    if task_run_id is None and record.failed_steps:
        task_run_id = record.failed_steps[0].task_run_id
    try:
        _write_artifacts(record, flow_run_id, task_run_id, confidential, store)
    except Exception as exc:  # the UI is a view; never fail the run over it
        logger.warning(
            "Could not write the artifacts of incomplete execution %s: %s",
            record.short_id,
            exc,
        )
    emit(record, what, flow_run_id=flow_run_id)


def emit(
    record: IncompleteExecution,
    what: str,
    *,
    flow_run_id: UUID | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Emit ``prefect-incomplete.<what>`` for `record`; never raises."""
    confidential = record.confidential
    from prefect.events import emit_event

    related = []
    if flow_run_id is not None:
        related.append(
            {
                "prefect.resource.id": f"prefect.flow-run.{flow_run_id}",
                "prefect.resource.role": "flow-run",
            }
        )
    if record.deployment_id is not None:
        related.append(
            {
                "prefect.resource.id": f"prefect.deployment.{record.deployment_id}",
                "prefect.resource.role": "deployment",
            }
        )
    payload = _event_payload(record, confidential) | (extra or {})
    try:
        emit_event(
            f"prefect-incomplete.{what}",
            resource={
                "prefect.resource.id": resource_id(record.id),
                "prefect.resource.name": f"incomplete execution {record.short_id}",
                "prefect-incomplete.flow": record.flow_name,
            },
            related=related,
            payload=payload,
        )
    except Exception as exc:  # events are fire-and-forget
        logger.warning("Could not emit prefect-incomplete.%s: %s", what, exc)


def _event_payload(record: IncompleteExecution, confidential: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "record_id": str(record.id),
        "flow_name": record.flow_name,
        "status": record.status.value,
        "disposition": record.disposition.value,
        "attempts": record.attempts,
        "failed_steps": [
            {"key": s.key, "kind": s.kind, "task_name": s.task_name}
            | ({} if confidential else {"message": s.message})
            for s in record.failed_steps
        ],
    }
    return payload


def _write_artifacts(
    record: IncompleteExecution,
    flow_run_id: UUID | None,
    task_run_id: UUID | None,
    confidential: bool,
    store: Any,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    from prefect_incomplete.models import OPEN_STATUSES

    if store is None:
        from prefect_incomplete.store import Store

        store = Store()
    open_records = [
        r for r in store.list(flow=record.flow_name) if r.status in OPEN_STATUSES
    ]
    with get_client(sync_client=True) as client:
        client.create_artifact(
            artifact=ArtifactCreate(
                key=artifact_key(record),
                type="markdown",
                data=render_markdown(record),
                description=f"Incomplete execution of {record.flow_name}",
                flow_run_id=flow_run_id,
                task_run_id=task_run_id,
            )
        )
        client.create_artifact(
            artifact=ArtifactCreate(
                key=flow_table_key(record.flow_name),
                type="table",
                data=render_table(open_records),
                description=f"Open incomplete executions of {record.flow_name}",
                flow_run_id=flow_run_id,
            )
        )
