"""The resumed run's side of a resume: take the claim, replay, resolve.

A resume is a new flow run of the same flow. When it starts, the flow
wrapper calls `take_over`: the run loads its record, takes over the claim
that `resume()` made for it (or claims the record itself, when a trigger or
the UI's custom-run form started it), and fills the ledger with the recorded
outputs to replay, the corrected inputs, and the record's parameters.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from uuid import UUID

from prefect.context import FlowRunContext

from prefect_incomplete._ledger import Ledger

if TYPE_CHECKING:
    from prefect_incomplete._flow import PendingResume

__all__ = [
    "ResumeRefused",
    "parse_record_reference",
    "release",
    "resolved",
    "take_over",
]

logger = logging.getLogger("prefect_incomplete")


class ResumeRefused(RuntimeError):
    """This run may not resume the record it names; it did no work."""


def parse_record_reference(value: Any) -> str:
    """A record id (or prefix) from a parameter, an event resource id or a UUID."""
    text = str(value).strip()
    return text.removeprefix("prefect-incomplete.record.")


def take_over(
    ledger: Ledger,
    context: FlowRunContext | None,
    record_reference: Any,
    pending: PendingResume | None,
    *,
    sequential: bool = False,
) -> None:
    """Claim the record for this run and fill `ledger` with what it replays."""
    from prefect_incomplete._flow import CLAIM_TAG_PREFIX
    from prefect_incomplete.settings import get_settings
    from prefect_incomplete.store import ClaimRefused, Store, StoreError

    if context is None or context.flow_run is None:
        raise ResumeRefused("a resume must run as a Prefect flow run")
    flow_run = context.flow_run
    store = Store()
    lease = get_settings().lease_seconds

    token: str | None
    if pending is not None:
        record_id, token = pending.record_id, pending.claim
    else:
        try:
            record_id = store.get(parse_record_reference(record_reference)).id
        except StoreError as exc:  # unknown, ambiguous or too short an id
            raise ResumeRefused(f"{exc}; this run did nothing") from exc
        tags = [t for t in flow_run.tags if t.startswith(CLAIM_TAG_PREFIX)]
        token = tags[0].removeprefix(CLAIM_TAG_PREFIX) if tags else None

    holder = str(flow_run.id)
    if sequential:
        _oldest_first(store, record_id, context)
    if store.renew(record_id, holder, lease_seconds=lease):
        pass  # this run holds the claim already: Prefect is retrying the flow run
    elif token is not None:
        if not store.transfer_claim(record_id, token, holder, lease_seconds=lease):
            raise ResumeRefused(
                f"the claim on incomplete execution {str(record_id)[:8]} was lost "
                "(its lease expired and another resume took it); this run did nothing"
            )
    else:
        try:
            store.claim(record_id, holder, lease_seconds=lease)
        except ClaimRefused as exc:
            raise ResumeRefused(f"{exc}; this run did nothing") from exc

    record = store.get(record_id)
    _fill(ledger, record)
    ledger.lease = LeaseKeeper(store, record_id, holder, lease)
    _log(context).info(
        "Resuming incomplete execution %s after %d failed run(s): %d step(s) to replay",
        record.short_id,
        record.attempts,
        len(ledger.replay),
    )
    from prefect_incomplete.artifacts import publish

    publish(record, "resumed", flow_run_id=flow_run.id, store=store)


def _oldest_first(store: Any, record_id: UUID, context: FlowRunContext) -> None:
    """With sequential processing, only the oldest open record may be resumed."""
    flow_name = context.flow.name if context.flow else ""
    waiting = [r for r in store.open_records(flow_name) if r.id != record_id]
    record = store.get(record_id)
    older = [r for r in waiting if r.created_at < record.created_at]
    if older:
        raise ResumeRefused(
            f"flow {flow_name} uses sequential processing: resume its oldest open "
            f"incomplete execution first, {older[0].short_id}"
        )


def _fill(ledger: Ledger, record: Any) -> None:
    from prefect_incomplete._serialize import decode

    ledger.record = record
    ledger.replay = {step.key: step for step in record.completed_steps}
    ledger.edits = {
        step.key: {name: decode(step.inputs[name]) for name in step.edited}
        for step in record.failed_steps
        if step.edited
    }
    try:
        ledger.parameters = {k: decode(v) for k, v in record.parameters.items()}
    except (LookupError, ValueError) as exc:
        raise ResumeRefused(
            f"the flow parameters of incomplete execution {record.short_id} cannot "
            f"be loaded: {exc}"
        ) from exc


def resolved(ledger: Ledger, context: FlowRunContext | None) -> None:
    """The resumed run succeeded: the record is resolved."""
    from prefect_incomplete.artifacts import publish
    from prefect_incomplete.store import ClaimLost, Store, StoreError

    record = ledger.record
    flow_run_id = _flow_run_id(context)
    assert record is not None
    assert flow_run_id is not None
    store = Store()
    try:
        done = store.resolve(
            record.id, flow_run_id=flow_run_id, holder=str(flow_run_id)
        )
    except ClaimLost as exc:
        _log(context).warning(
            "The run succeeded, but %s; the record was left as it is", exc
        )
        return
    except StoreError as exc:
        _log(context).error(
            "The run succeeded but incomplete execution %s could not be marked "
            "resolved: %s. It stays in progress until its claim's lease ends "
            "(PREFECT_INCOMPLETE_LEASE_SECONDS after this run's last renewal); "
            "then discard it with: prefect-incomplete discard %s",
            record.short_id,
            exc,
            record.short_id,
        )
        return
    _log(context).info("Incomplete execution %s resolved", done.short_id)
    publish(done, "resolved", flow_run_id=flow_run_id, store=store)
    from prefect_incomplete._controls import lift_holds

    lift_holds(store)


def release(
    ledger: Ledger, context: FlowRunContext | None, *, crashed: bool = False
) -> None:
    """The resumed run ended without storing a failure: give the claim back.

    After an error that is not stored, the record waits for a person. After a
    crash (a signal, an interrupt) nothing was decided: the record goes back
    to what it was, a scheduled one keeping its retry time.
    """
    from prefect_incomplete.models import Status
    from prefect_incomplete.store import Store, StoreError

    record = ledger.record
    flow_run_id = _flow_run_id(context)
    assert record is not None
    status, retry_at = Status.UNRESOLVED, None
    if crashed and record.next_retry_at is not None:
        status, retry_at = Status.SCHEDULED, record.next_retry_at
    try:
        released = Store().release(
            record.id, str(flow_run_id), status=status, next_retry_at=retry_at
        )
    except StoreError as exc:
        _log(context).error(
            "Could not release incomplete execution %s: %s; it can be resumed again "
            "once its claim's lease ends",
            record.short_id,
            exc,
        )
        return
    if not released:
        _log(context).warning(
            "This run no longer held its claim on incomplete execution %s (another "
            "resume took it, or a person closed it); the record was left as it is",
            record.short_id,
        )
        return
    why = "was interrupted" if crashed else "failed with an error that is not stored"
    _log(context).warning(
        "The resume of incomplete execution %s %s; the record is %s again",
        record.short_id,
        why,
        status.value,
    )


def _flow_run_id(context: FlowRunContext | None) -> UUID | None:
    if context is None or context.flow_run is None:
        return None
    return context.flow_run.id


def _log(
    context: FlowRunContext | None,
) -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    from prefect.logging import get_run_logger

    if context is None:
        return logger
    return get_run_logger(context)


class LeaseKeeper:
    """Renews a resumed run's claim while the run lasts, so a long run keeps it.

    A thread renews the lease every third of its length; `stop` ends it.
    If the run's process dies, renewals stop and the lease runs out.
    """

    def __init__(self, store: Any, record_id: UUID, holder: str, seconds: float):
        import threading

        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._renew,
            args=(store, record_id, holder, seconds),
            name=f"prefect-incomplete-lease-{str(record_id)[:8]}",
            daemon=True,
        )
        self._thread.start()

    def _renew(self, store: Any, record_id: UUID, holder: str, seconds: float) -> None:
        while not self._stopped.wait(seconds / 3):
            try:
                if not store.renew(record_id, holder, lease_seconds=seconds):
                    logger.warning(
                        "The claim on incomplete execution %s was lost; another "
                        "resume may run it",
                        str(record_id)[:8],
                    )
                    return
            except Exception as exc:  # the store may come back before the lease ends
                logger.warning("Could not renew the claim on %s: %s", record_id, exc)

    def stop(self) -> None:
        self._stopped.set()
