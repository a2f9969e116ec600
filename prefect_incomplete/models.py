"""The public shape of an incomplete execution (a *record*) and its steps.

These pydantic models are the API: the store turns its rows into them and
back, and nothing outside the store sees a SQLAlchemy row.

A step's values come in two forms. The *payload* is what a resume needs
(JSON, or Prefect's pickle serializer where JSON cannot hold the value); it
may hold secrets and is never shown. The *preview* is a short text with
secrets redacted, made when the record is stored; it is all that artifacts,
events and the CLI ever show.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from prefect_incomplete.errors import Disposition

__all__ = [
    "OPEN_STATUSES",
    "Encoded",
    "FailedStep",
    "Hold",
    "IncompleteExecution",
    "Status",
    "StepOutput",
    "describe_holder",
]


class Status(enum.StrEnum):
    """Where a record stands."""

    UNRESOLVED = "unresolved"
    """Waiting for a person: correct and resume, or discard."""

    SCHEDULED = "scheduled"
    """Waiting for its next automatic retry."""

    IN_PROGRESS = "in_progress"
    """Claimed by a resume that is running now."""

    RESOLVED = "resolved"
    """A resume completed the run."""

    DISCARDED = "discarded"
    """A person gave it up."""


OPEN_STATUSES = frozenset({Status.UNRESOLVED, Status.SCHEDULED, Status.IN_PROGRESS})
"""Statuses of records that still wait for something."""


class Encoded(BaseModel):
    """A value as stored: the payload a resume needs and the preview shown."""

    model_config = ConfigDict(frozen=True)

    format: str
    """``json`` or ``pickle`` (Prefect's serializer), or ``none`` if refused."""

    payload: str
    """JSON text, or base64 of the pickled bytes; empty when refused."""

    preview: str
    """Redacted, shortened text for people."""

    fingerprint: str
    """sha256 of format and payload: equal inputs give equal fingerprints."""

    holds_secret: bool = False
    """The value quotes one of its run's secrets: it is shown only as the
    preview, in which that secret is redacted."""

    @property
    def size(self) -> int:
        """Bytes this value takes in the store."""
        return len(self.payload.encode()) + len(self.preview.encode())


class FailedStep(BaseModel):
    """A step whose failure the record is about."""

    key: str
    """Stable step key, e.g. ``push_order[3]``: step name and call number."""

    task_name: str
    task_run_id: UUID | None = None
    kind: str | None
    """Name of the error kind, or ``None`` for an unclassified failure."""

    message: str
    traceback: str
    inputs: dict[str, Encoded]
    edited: list[str] = []
    """Inputs a person corrected; a resume passes these to the step."""


class StepOutput(BaseModel):
    """A step that completed; its output is replayed by a resume."""

    key: str
    task_name: str
    task_run_id: UUID | None = None
    inputs_fingerprint: str
    """Fingerprint of the inputs it ran with: replay needs the same inputs."""

    output: Encoded


class IncompleteExecution(BaseModel):
    """A stored incomplete execution."""

    id: UUID
    flow_name: str
    flow_run_id: UUID
    """The flow run that first stored the record."""

    deployment_id: UUID | None = None
    entrypoint: str | None = None
    """``path/to/file.py:function`` or ``module:function``: how to import the flow."""

    parameters: dict[str, Encoded]
    failed_steps: list[FailedStep]
    completed_steps: list[StepOutput]
    disposition: Disposition
    status: Status
    attempts: int = 1
    """Flow runs that failed on it so far: the first run and every failed resume."""

    next_retry_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    size_bytes: int = 0
    resolved_by: UUID | None = None
    """The flow run that resolved it."""

    last_flow_run_id: UUID | None = None
    """The flow run that last failed on it."""

    claimed_by: str | None = None
    """The resume holding the claim: a flow run id, or a token until it has one."""

    lease_expires_at: datetime | None = None
    confidential: bool = False
    """Show no input, output or parameter values, only step names and kinds."""

    @property
    def kinds(self) -> list[str]:
        """Kinds of the failed steps, unclassified ones left out."""
        return [step.kind for step in self.failed_steps if step.kind]

    @property
    def short_id(self) -> str:
        """The first eight characters of the id, enough to name it in the CLI."""
        return str(self.id)[:8]

    def summary(self) -> dict[str, Any]:
        """A JSON-ready view without payloads, for ``--json`` and events.

        Values that are JSON are given as JSON, with credentials redacted as
        in their previews; others as their preview text. A confidential
        record shows no values and no error texts.
        """
        from prefect_incomplete._serialize import shown

        data = self.model_dump(mode="json")
        data["parameters"] = {
            name: shown(value, name=name) for name, value in self.parameters.items()
        }
        for step, model in zip(data["failed_steps"], self.failed_steps, strict=True):
            step["inputs"] = {k: shown(v, name=k) for k, v in model.inputs.items()}
            if self.confidential:
                step["message"] = step["traceback"] = "(confidential)"
        data["completed_steps"] = [
            {"key": s.key, "task_name": s.task_name, "output": shown(s.output)}
            for s in self.completed_steps
        ]
        return data


class Hold(BaseModel):
    """Why the plugin paused a deployment: one row per deployment and reason."""

    deployment_id: UUID
    flow_name: str
    reason: str
    """``sequential``, ``quota`` or ``consecutive-errors``."""

    detail: dict[str, Any] = {}
    """What lifts the hold, e.g. the quota that was full."""

    created_at: datetime


def describe_holder(holder: str | None) -> str:
    """Who holds a claim on a record, in words a person can look up.

    A flow run holds the claim while it runs; before it starts, the claim is
    held by a token of the `resume()` call that creates it.
    """
    try:
        return f"flow run {UUID(str(holder))}"
    except ValueError:
        return "a resume whose flow run has not started yet"
