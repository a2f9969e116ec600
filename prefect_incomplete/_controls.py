"""The flow settings of the platforms: sequential processing, quotas, data loss,
consecutive errors. Each uses Prefect's own means where one exists.

- A deployed flow is *held* by pausing its deployment (Prefect's pause, which
  stops its schedules). The store keeps one hold per deployment and reason
  (``sequential``, ``quota``, ``consecutive-errors``); the deployment is resumed
  when the last hold is lifted, so two reasons never undo each other.
- Consecutive errors are counted from Prefect's own flow runs: a run whose
  failure counts gets the tag ``prefect-incomplete-error``; a success breaks
  the streak without a write anywhere.

Nothing here runs on the happy path except the sequential check, which is
one store query per run and only when sequential processing is on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect_incomplete.models import IncompleteExecution

__all__ = [
    "ERROR_TAG",
    "FlowSettings",
    "count_error",
    "hold",
    "lift_holds",
    "quota_problem",
    "release",
]

logger = logging.getLogger("prefect_incomplete")

ERROR_TAG = "prefect-incomplete-error"
NOT_COUNTED = frozenset({"DataError", "ConnectionError", "ModuleTimeoutError"})
"""Kinds that do not count as consecutive errors, as on Make."""


@dataclass(frozen=True)
class FlowSettings:
    """The settings in force for one flow: its own, else the global ones."""

    store: bool
    sequential: bool
    data_loss: bool
    confidential: bool
    consecutive_errors: int
    flow_quota_count: int
    flow_quota_bytes: int
    total_quota_count: int
    total_quota_bytes: int


def quota_problem(
    store: Any, settings: FlowSettings, flow_name: str, size: int
) -> str | None:
    """Which quota a new record of `size` bytes would break, or None."""
    count, used = store.usage(flow_name)
    total_count, total_used = store.usage()
    limits = [
        (
            settings.flow_quota_count,
            count + 1,
            f"flow {flow_name!r} may keep",
            "records",
        ),
        (
            settings.flow_quota_bytes,
            used + size,
            f"flow {flow_name!r} may keep",
            "bytes",
        ),
        (settings.total_quota_count, total_count + 1, "the store may keep", "records"),
        (settings.total_quota_bytes, total_used + size, "the store may keep", "bytes"),
    ]
    for limit, needed, who, unit in limits:
        if limit and needed > limit:
            return (
                f"quota full: {who} {limit} {unit} of open incomplete executions and "
                f"this one would make {needed}; resolve, discard or purge records, or "
                "raise the quota"
            )
    return None


def hold(
    store: Any, deployment_id: UUID, flow_name: str, reason: str, detail: dict[str, Any]
) -> None:
    """Pause the deployment's schedules for `reason` (kept until lifted)."""
    first = store.add_hold(
        deployment_id, flow_name=flow_name, reason=reason, detail=detail
    )
    if not first:
        return
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.pause_deployment(deployment_id)
    except Exception as exc:  # the hold stays recorded; say so loudly
        logger.error(
            "Could not pause deployment %s (%s): %s", deployment_id, reason, exc
        )
        return
    logger.warning(
        "Paused the schedules of deployment %s of flow %s: %s",
        deployment_id,
        flow_name,
        reason,
    )


def lift_holds(store: Any) -> list[UUID]:
    """Lift every hold whose cause is gone; resume deployments left without one."""
    resumed: list[UUID] = []
    for held in store.holds():
        if not _cause_gone(store, held):
            continue
        if store.remove_hold(held.deployment_id, held.reason) == 0:
            _resume_deployment(held.deployment_id, held.flow_name, held.reason)
            resumed.append(held.deployment_id)
    return resumed


def _cause_gone(store: Any, held: Any) -> bool:
    if held.reason == "sequential":
        return not store.open_records(held.flow_name)
    if held.reason == "quota":
        count, used = store.usage(held.flow_name)
        total_count, total_used = store.usage()
        detail = held.detail
        return all(
            not limit or value < limit
            for limit, value in (
                (detail.get("flow_quota_count", 0), count),
                (detail.get("flow_quota_bytes", 0), used),
                (detail.get("total_quota_count", 0), total_count),
                (detail.get("total_quota_bytes", 0), total_used),
            )
        )
    return False


def release(store: Any, deployment_id: UUID, reason: str) -> bool:
    """Lift one hold by hand (e.g. consecutive errors); True if the deployment runs."""
    holds = [h for h in store.holds() if h.deployment_id == deployment_id]
    matching = [h for h in holds if h.reason == reason]
    if not matching:
        return False
    if store.remove_hold(deployment_id, reason) == 0:
        return _resume_deployment(deployment_id, matching[0].flow_name, reason)
    return False


def _resume_deployment(deployment_id: UUID, flow_name: str, reason: str) -> bool:
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.resume_deployment(deployment_id)
    except Exception as exc:  # the user can resume it by hand; say how
        logger.error(
            "Could not resume deployment %s: %s. Resume it with: prefect deployment "
            "resume <flow>/<deployment>",
            deployment_id,
            exc,
        )
        return False
    logger.info(
        "Resumed the schedules of deployment %s of flow %s", deployment_id, flow_name
    )
    return True


def counts_as_error(kind: str | None, first_step: bool) -> bool:
    """Whether a failed run counts toward the consecutive-errors limit."""
    return first_step or kind is None or kind not in NOT_COUNTED


def count_error(context: Any, settings: FlowSettings, store_factory: Any) -> str | None:
    """Tag this failed run; deactivate its deployment after N in a row.

    Gives the sentence to add to the run's message when it deactivated it.
    """
    flow_run = context.flow_run
    limit = settings.consecutive_errors
    if flow_run is None or flow_run.deployment_id is None or not limit:
        return None
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, tags=[*flow_run.tags, ERROR_TAG])
            earlier = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(not_any_=[flow_run.id]),
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(
                            any_=[
                                StateType.COMPLETED,
                                StateType.FAILED,
                                StateType.CRASHED,
                            ]
                        )
                    ),
                ),
                deployment_filter=DeploymentFilter(
                    id=DeploymentFilterId(any_=[flow_run.deployment_id])
                ),
                sort=FlowRunSort.START_TIME_DESC,
                limit=limit - 1,
            )
    except Exception as exc:  # counting is best effort; never hide the failure
        logger.warning("Could not count consecutive errors: %s", exc)
        return None

    streak = 1 + len([run for run in earlier if ERROR_TAG in run.tags])
    if len(earlier) < limit - 1 or streak < limit:
        return None
    return _deactivate(context, settings, store_factory(), limit)


def _deactivate(context: Any, settings: FlowSettings, store: Any, limit: int) -> str:
    from prefect.events import emit_event

    flow_run = context.flow_run
    flow_name = context.flow.name if context.flow else flow_run.name
    reason = f"{limit} consecutive failed runs"
    hold(
        store,
        flow_run.deployment_id,
        flow_name,
        "consecutive-errors",
        {"consecutive_errors": limit},
    )
    emit_event(
        "prefect-incomplete.deactivated",
        resource={
            "prefect.resource.id": f"prefect.deployment.{flow_run.deployment_id}"
        },
        related=[
            {
                "prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
                "prefect.resource.role": "flow-run",
            }
        ],
        payload={"reason": reason, "flow_name": flow_name, "limit": limit},
    )
    return (
        f"Deployment paused after {reason} (consecutive errors limit {limit}); "
        "fix the cause, then run: prefect-incomplete reactivate "
        f"{flow_run.deployment_id}"
    )


def settings_for(config: Any) -> FlowSettings:
    """The flow's own settings laid over the global ones."""
    from prefect_incomplete.settings import get_settings

    settings = get_settings()

    def pick(name: str) -> Any:
        own = getattr(config, name, None)
        return own if own is not None else getattr(settings, name)

    return FlowSettings(
        store=pick("store"),
        sequential=pick("sequential"),
        data_loss=pick("data_loss"),
        confidential=pick("confidential"),
        consecutive_errors=pick("consecutive_errors"),
        flow_quota_count=pick("flow_quota_count"),
        flow_quota_bytes=pick("flow_quota_bytes"),
        total_quota_count=settings.total_quota_count,
        total_quota_bytes=settings.total_quota_bytes,
    )


def record_blocking(store: Any, flow_name: str) -> IncompleteExecution | None:
    """The oldest open record of the flow, which holds its new runs back."""
    records: list[IncompleteExecution] = store.open_records(flow_name)
    return records[0] if records else None
