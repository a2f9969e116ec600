"""Read what the plugin left on the Prefect server: events and artifacts."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
)
from prefect.client.schemas.sorting import ArtifactSort


def wait_for_event(
    name: str,
    *,
    resource: str | None = None,
    related: str | None = None,
    timeout: float = 20,
) -> dict[str, Any]:
    """The newest event called `name` about `resource` or `related`, from the server."""
    event_filter: dict[str, Any] = {"event": {"name": [name]}}
    if resource is not None:
        event_filter["resource"] = {"id": [resource]}
    if related is not None:
        event_filter["related"] = {"id": [related]}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            body = {"filter": event_filter, "limit": 5}
            found = client.request("POST", "/events/filter", json=body).json()
        if found.get("events"):
            event: dict[str, Any] = found["events"][0]
            return event
        time.sleep(0.5)
    raise AssertionError(f"no {name} event ({resource or related}) in {timeout} s")


def read_artifacts(key: str) -> list[Any]:
    """Every version of the artifact with `key`, newest first."""
    with get_client(sync_client=True) as client:
        return list(
            client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                sort=ArtifactSort.CREATED_DESC,
            )
        )


def task_run_states(
    flow_run_id: Any, expected: Counter[str], timeout: float = 30
) -> Counter[str]:
    """How many task runs of a flow run are in each state name, once they match
    `expected` or `timeout` has passed.

    Prefect records task runs from the events a flow run sends, a moment after
    the run ends: on a busy machine the last states arrive late.
    """
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]})
            )
        seen = Counter(str(run.state.name) for run in runs if run.state)
        if seen == expected or time.monotonic() >= deadline:
            return seen
        time.sleep(0.5)
