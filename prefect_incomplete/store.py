"""The record store: incomplete executions in SQLite or PostgreSQL.

`Store` is the only way in or out. It takes and returns the pydantic models of
`prefect_incomplete.models`; the SQLAlchemy rows below never leave this module.
Every method is one transaction, so a record is never half written.

Errors raised by the store::

    StoreError              the database failed; the message names the store's
    │                       URL (password masked) and what to check
    ├── RecordNotFound      no record has that id or id prefix
    ├── AmbiguousId         an id prefix names more than one record
    └── ClaimRefused        the record is being resumed by another run, or it
                            is resolved or discarded: there is nothing to do

SQLite (the default, one file under ``PREFECT_HOME``) runs in WAL mode and takes
its write lock when a write transaction begins, so claims stay atomic between
threads and processes of one machine. Use PostgreSQL when workers on several
machines share the store. The schema is versioned with Alembic and brought up to
date the first time a process opens a store.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, cast
from uuid import UUID

from pydantic import TypeAdapter
from sqlalchemy import (
    URL,
    Boolean,
    CheckConstraint,
    Connection,
    CursorResult,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Text,
    Update,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    make_url,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

from prefect_incomplete.errors import Disposition
from prefect_incomplete.models import (
    OPEN_STATUSES,
    Encoded,
    FailedStep,
    Hold,
    IncompleteExecution,
    Status,
    StepOutput,
)
from prefect_incomplete.settings import default_database_url

__all__ = [
    "SCHEMA_REVISION",
    "AmbiguousId",
    "ClaimLost",
    "ClaimRefused",
    "RecordNotFound",
    "Store",
    "StoreError",
    "migrate",
]

logger = logging.getLogger(__name__)

SCHEMA_REVISION: Final = "0001"
"""The Alembic head this version of the plugin needs; a test pins it."""

MIGRATIONS_DIR: Final = Path(__file__).with_name("migrations")

MIN_PREFIX: Final = 4
"""Fewest characters of an id that `Store.get` accepts as a prefix."""

SQLITE_BUSY_SECONDS: Final = 30.0
"""How long a SQLite connection waits for another one's write lock."""

POSTGRES_CONNECT_TIMEOUT: Final = 10
"""Seconds to wait for a PostgreSQL server, unless the URL says otherwise."""

_HINT: Final = (
    "Check PREFECT_INCOMPLETE_DATABASE_URL and that the database is reachable"
)
_LIST_HINT: Final = "list them with: prefect-incomplete ls"
_WRITE: Final = "prefect_incomplete_write"
_MIGRATION_LOCK: Final = 0x7072_6566_696E_63  # b"prefinc": the advisory lock id
_FAILED: Final = "failed"
_COMPLETED: Final = "completed"
_CLOSED: Final = (Status.RESOLVED.value, Status.DISCARDED.value)
_HEX_ID: Final = re.compile(r"[0-9a-f-]+")


class StoreError(Exception):
    """The store could not do what was asked; the message says what to do."""


class RecordNotFound(StoreError):
    """No incomplete execution has the given id or id prefix."""


class ClaimLost(StoreError):
    """A resume no longer holds its claim: another resume took the record after
    the lease ended, or a person closed it. Its outcome changes nothing."""


class AmbiguousId(StoreError):
    """An id prefix matches more than one incomplete execution."""


class ClaimRefused(StoreError):
    """The record cannot be claimed: another run holds it, or it is closed."""

    def __init__(
        self,
        record_id: UUID,
        status: Status,
        holder: str | None = None,
        *,
        action: str = "resume",
        lease_expires_at: datetime | None = None,
        message: str | None = None,
    ) -> None:
        self.record_id = record_id
        self.status = status
        self.holder = holder
        self.action = action
        self.lease_expires_at = lease_expires_at
        super().__init__(message or self._explain())

    def __reduce__(self) -> tuple[Any, ...]:
        kwargs = {
            "action": self.action,
            "lease_expires_at": self.lease_expires_at,
            "message": str(self),
        }
        args = (self.record_id, self.status, self.holder)
        return (_rebuild_refusal, (args, kwargs))

    def _explain(self) -> str:
        name = f"incomplete execution {str(self.record_id)[:8]}"
        if self.status is Status.RESOLVED:
            return f"{name} is resolved; nothing to {self.action}"
        if self.status is Status.DISCARDED:
            return f"{name} was discarded; nothing to {self.action}"

        from prefect_incomplete.models import describe_holder

        lease = "its lease has no end"
        if self.lease_expires_at is not None:
            lease = f"lease ends {self.lease_expires_at:%Y-%m-%d %H:%M:%S} UTC"
        return (
            f"{name} is already being resumed by {describe_holder(self.holder)} "
            f"({lease}); wait for that resume to end, or for its lease to end if "
            f"its process died, then {self.action} it"
        )


def _rebuild_refusal(args: tuple[Any, ...], kwargs: dict[str, Any]) -> ClaimRefused:
    return ClaimRefused(*args, **kwargs)


# --- rows -----------------------------------------------------------------


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime, also on SQLite (which keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(
        self, value: datetime | None, dialect: Dialect
    ) -> datetime | None:
        if value is None:
            return None

        value = _utc(value)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(
        self, value: datetime | None, dialect: Dialect
    ) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Tables of the store; the Alembic migrations create the same schema."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class ExecutionRow(Base):
    """One incomplete execution; its steps live in `StepRow`."""

    __tablename__ = "incomplete_executions"
    __table_args__ = (
        Index("ix_incomplete_executions_flow_name_status", "flow_name", "status"),
        Index(
            "ix_incomplete_executions_status_next_retry_at", "status", "next_retry_at"
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    flow_name: Mapped[str] = mapped_column(String)
    flow_run_id: Mapped[str] = mapped_column(String(36))
    deployment_id: Mapped[str | None] = mapped_column(String(36))
    entrypoint: Mapped[str | None] = mapped_column(Text)
    parameters: Mapped[str] = mapped_column(Text)
    disposition: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    next_retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    size_bytes: Mapped[int] = mapped_column(Integer)
    resolved_by: Mapped[str | None] = mapped_column(String(36))
    last_flow_run_id: Mapped[str | None] = mapped_column(String(36))
    claimed_by: Mapped[str | None] = mapped_column(String)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    confidential: Mapped[bool | None] = mapped_column(Boolean, default=False)

    steps: Mapped[list[StepRow]] = relationship(
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="StepRow.position",
        lazy="selectin",
    )


class StepRow(Base):
    """A failed or a completed step of a record, in `position` order."""

    __tablename__ = "incomplete_steps"
    __table_args__ = (
        CheckConstraint(f"state IN ('{_FAILED}', '{_COMPLETED}')", name="state"),
    )

    record_id: Mapped[str] = mapped_column(
        String(36),
        ForeignKey("incomplete_executions.id", ondelete="CASCADE"),
        primary_key=True,
    )
    state: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String, primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    task_name: Mapped[str] = mapped_column(String)
    task_run_id: Mapped[str | None] = mapped_column(String(36))
    kind: Mapped[str | None] = mapped_column(String)
    message: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    inputs: Mapped[str | None] = mapped_column(Text)
    edited: Mapped[str | None] = mapped_column(Text)
    inputs_fingerprint: Mapped[str | None] = mapped_column(String)
    output: Mapped[str | None] = mapped_column(Text)


class HoldRow(Base):
    """A reason the plugin paused a deployment; the pause ends with the last one."""

    __tablename__ = "incomplete_holds"

    deployment_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32), primary_key=True)
    flow_name: Mapped[str] = mapped_column(String)
    detail: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


# --- conversion between rows and models -------------------------------------

_VALUES: Final = TypeAdapter(dict[str, Encoded])
_VALUE: Final = TypeAdapter(Encoded)
_NAMES: Final = TypeAdapter(list[str])


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    if value.utcoffset() is None:
        raise ValueError(
            f"naive datetime {value.isoformat()}: the store keeps UTC times; "
            "pass a timezone-aware datetime, e.g. datetime.now(UTC)"
        )
    return value.astimezone(UTC)


def _utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value)


def _str_or_none(value: UUID | None) -> str | None:
    return None if value is None else str(value)


def _uuid_or_none(value: str | None) -> UUID | None:
    return None if value is None else UUID(value)


def _lease_end(now: datetime, lease_seconds: float) -> datetime:
    if not lease_seconds > 0:
        raise ValueError(f"lease_seconds must be > 0, not {lease_seconds!r}")
    return now + timedelta(seconds=lease_seconds)


def _unique_keys(steps: Iterable[FailedStep | StepOutput]) -> None:
    seen: set[str] = set()
    for step in steps:
        if step.key in seen:
            raise ValueError(f"step key {step.key!r} appears twice in one record")
        seen.add(step.key)


def _size(record: IncompleteExecution) -> int:
    """Bytes of every stored value (payload and preview) and error text."""
    total = sum(value.size for value in record.parameters.values())
    for failed in record.failed_steps:
        total += sum(value.size for value in failed.inputs.values())
        total += len(failed.message.encode()) + len(failed.traceback.encode())
    return total + sum(step.output.size for step in record.completed_steps)


def record_size(record: IncompleteExecution) -> int:
    """What `record` takes in the store, in bytes: the measure quotas use."""
    return _size(record)


def _normalized(record: IncompleteExecution) -> IncompleteExecution:
    _unique_keys(record.failed_steps)
    _unique_keys(record.completed_steps)
    changes: dict[str, Any] = {
        "created_at": _utc(record.created_at),
        "updated_at": _utc(record.updated_at),
        "next_retry_at": _utc_or_none(record.next_retry_at),
        "lease_expires_at": _utc_or_none(record.lease_expires_at),
        "size_bytes": _size(record),
    }
    return record.model_copy(update=changes)


def _failed_values(step: FailedStep, position: int) -> dict[str, Any]:
    return {
        "state": _FAILED,
        "key": step.key,
        "position": position,
        "task_name": step.task_name,
        "task_run_id": _str_or_none(step.task_run_id),
        "kind": step.kind,
        "message": step.message,
        "traceback": step.traceback,
        "inputs": _VALUES.dump_json(step.inputs).decode(),
        "edited": _NAMES.dump_json(step.edited).decode(),
    }


def _completed_values(step: StepOutput, position: int) -> dict[str, Any]:
    return {
        "state": _COMPLETED,
        "key": step.key,
        "position": position,
        "task_name": step.task_name,
        "task_run_id": _str_or_none(step.task_run_id),
        "inputs_fingerprint": step.inputs_fingerprint,
        "output": _VALUE.dump_json(step.output).decode(),
    }


def _fill(row: StepRow, values: dict[str, Any]) -> StepRow:
    for name, value in values.items():
        setattr(row, name, value)
    return row


def _step_values(record: IncompleteExecution) -> builtins.list[dict[str, Any]]:
    record_id = str(record.id)
    steps = [_failed_values(s, i) for i, s in enumerate(record.failed_steps)]
    steps += [_completed_values(s, i) for i, s in enumerate(record.completed_steps)]
    return [{"record_id": record_id, **values} for values in steps]


def _record_values(record: IncompleteExecution) -> dict[str, Any]:
    return {
        "id": str(record.id),
        "flow_name": record.flow_name,
        "flow_run_id": str(record.flow_run_id),
        "deployment_id": _str_or_none(record.deployment_id),
        "entrypoint": record.entrypoint,
        "parameters": _VALUES.dump_json(record.parameters).decode(),
        "disposition": record.disposition.value,
        "status": record.status.value,
        "attempts": record.attempts,
        "next_retry_at": record.next_retry_at,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "size_bytes": record.size_bytes,
        "resolved_by": _str_or_none(record.resolved_by),
        "last_flow_run_id": _str_or_none(record.last_flow_run_id),
        "claimed_by": record.claimed_by,
        "lease_expires_at": record.lease_expires_at,
        "confidential": record.confidential,
    }


def _to_failed(row: StepRow) -> FailedStep:
    return FailedStep(
        key=row.key,
        task_name=row.task_name,
        task_run_id=_uuid_or_none(row.task_run_id),
        kind=row.kind,
        message=row.message or "",
        traceback=row.traceback or "",
        inputs=_VALUES.validate_json(row.inputs or "{}"),
        edited=_NAMES.validate_json(row.edited or "[]"),
    )


def _to_completed(row: StepRow) -> StepOutput:
    return StepOutput(
        key=row.key,
        task_name=row.task_name,
        task_run_id=_uuid_or_none(row.task_run_id),
        inputs_fingerprint=row.inputs_fingerprint or "",
        output=_VALUE.validate_json(row.output or "{}"),
    )


def _to_record(row: ExecutionRow) -> IncompleteExecution:
    steps = sorted(row.steps, key=lambda step: step.position)
    return IncompleteExecution(
        id=UUID(row.id),
        flow_name=row.flow_name,
        flow_run_id=UUID(row.flow_run_id),
        deployment_id=_uuid_or_none(row.deployment_id),
        entrypoint=row.entrypoint,
        parameters=_VALUES.validate_json(row.parameters),
        failed_steps=[_to_failed(step) for step in steps if step.state == _FAILED],
        completed_steps=[
            _to_completed(step) for step in steps if step.state == _COMPLETED
        ],
        disposition=Disposition(row.disposition),
        status=Status(row.status),
        attempts=row.attempts,
        next_retry_at=row.next_retry_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        size_bytes=row.size_bytes,
        resolved_by=_uuid_or_none(row.resolved_by),
        last_flow_run_id=_uuid_or_none(row.last_flow_run_id),
        claimed_by=row.claimed_by,
        lease_expires_at=row.lease_expires_at,
        confidential=bool(row.confidential),
    )


def _replace_failed(row: ExecutionRow, steps: builtins.list[FailedStep]) -> None:
    old = {step.key: step for step in row.steps if step.state == _FAILED}
    new = [
        _fill(old.get(step.key) or StepRow(), _failed_values(step, position))
        for position, step in enumerate(steps)
    ]
    row.steps = [step for step in row.steps if step.state != _FAILED] + new


def _merge_completed(row: ExecutionRow, steps: builtins.list[StepOutput]) -> None:
    known = {step.key: step for step in row.steps if step.state == _COMPLETED}
    position = max((step.position for step in known.values()), default=-1) + 1
    for step in steps:
        current = known.get(step.key)
        if current is None:
            row.steps.append(_fill(StepRow(), _completed_values(step, position)))
            position += 1
        elif current.inputs_fingerprint != step.inputs_fingerprint:
            _fill(current, _completed_values(step, current.position))


def _check_edit(row: ExecutionRow, holder: str | None, now: datetime) -> None:
    if row.status in _CLOSED or (holder is None and _claim_is_live(row, now)):
        raise _refuse(row, "edit")
    if holder is None or (row.status, row.claimed_by) == (Status.IN_PROGRESS, holder):
        return

    raise ClaimRefused(
        UUID(row.id),
        Status(row.status),
        row.claimed_by,
        action="edit",
        lease_expires_at=row.lease_expires_at,
        message=(
            f"incomplete execution {row.id[:8]} is no longer claimed by {holder}; "
            "claim it again before you edit it"
        ),
    )


def _edit_inputs(row: ExecutionRow, edits: dict[str, dict[str, Encoded]]) -> None:
    failed = {step.key: step for step in row.steps if step.state == _FAILED}
    unknown = [key for key in edits if key not in failed]
    if unknown:
        known = ", ".join(failed) or "none"
        raise ValueError(
            f"incomplete execution {row.id[:8]} has no failed step {unknown[0]!r}; "
            f"its failed steps are: {known}"
        )

    for key, inputs in edits.items():
        step = failed[key]
        step.inputs = _VALUES.dump_json(
            _VALUES.validate_json(step.inputs or "{}") | inputs
        ).decode()
        edited = _NAMES.validate_json(step.edited or "[]")
        edited += [name for name in inputs if name not in edited]
        step.edited = _NAMES.dump_json(edited).decode()


# --- engines, one per URL per process ---------------------------------------


def _display(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def _masked(raw: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", raw)


def _reason(exc: BaseException) -> str:
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


def _is_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or url.query.get("mode") == "memory"


def _make_parent_dir(url: URL) -> None:
    database = url.database or ""
    if database.startswith("file:"):
        return
    Path(database).parent.mkdir(parents=True, exist_ok=True)


def _on_sqlite_connect(memory: bool) -> Callable[[Any, Any], None]:
    def configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # BEGIN is emitted by _begin_sqlite
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        if not memory:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    return configure


def _begin_sqlite(connection: Connection) -> None:
    write = connection.get_execution_options().get(_WRITE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _create_engine(url: URL) -> Engine:
    options: dict[str, Any] = {}
    backend = url.get_backend_name()
    memory = backend == "sqlite" and _is_memory(url)
    if memory:
        options["poolclass"] = StaticPool
        options["connect_args"] = {"check_same_thread": False}
    elif backend == "sqlite":
        _make_parent_dir(url)
        options["connect_args"] = {"timeout": SQLITE_BUSY_SECONDS}
    else:
        options["pool_pre_ping"] = True
        if backend == "postgresql" and "connect_timeout" not in url.query:
            options["connect_args"] = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT}

    engine = create_engine(url, **options)
    if backend == "sqlite":
        event.listen(engine, "connect", _on_sqlite_connect(memory))
        event.listen(engine, "begin", _begin_sqlite)
    return engine


class _Database:
    """An engine and its session factories, shared by every `Store` of a URL."""

    def __init__(self, raw_url: str) -> None:
        try:
            url = make_url(raw_url)
        except (ArgumentError, ValueError) as exc:
            raise StoreError(_open_failure(_masked(raw_url), exc)) from exc

        self.display = _display(url)
        try:
            self.engine = _create_engine(url)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(_open_failure(self.display, exc)) from exc

        self.memory = url.get_backend_name() == "sqlite" and _is_memory(url)
        self.lock: AbstractContextManager[Any] = (
            threading.RLock() if self.memory else nullcontext()
        )
        self.readers = sessionmaker(self.engine, expire_on_commit=False)
        self.writers = sessionmaker(
            self.engine.execution_options(**{_WRITE: True}), expire_on_commit=False
        )
        self.migrated = False


_databases: dict[str, _Database] = {}
_databases_lock = threading.Lock()


def _open(raw_url: str) -> _Database:
    database = _databases.get(raw_url)
    if database is not None and database.migrated:
        return database

    with _databases_lock:
        database = _databases.get(raw_url)
        if database is None:
            database = _databases[raw_url] = _Database(raw_url)
        if not database.migrated:
            with database.lock:
                migrate(database.engine)
            database.migrated = True
    return database


def _after_fork_in_child() -> None:
    """Give a forked process its own connections; the parent's stay the parent's."""
    for database in _databases.values():
        if not database.memory:
            database.engine.dispose(close=False)


os.register_at_fork(after_in_child=_after_fork_in_child)


# --- schema migrations ------------------------------------------------------


def _open_failure(shown: str, exc: BaseException) -> str:
    return (
        f"cannot open the incomplete-execution store at {shown}: "
        f"{_reason(exc)}. {_HINT}"
    )


def _schema_revision(connection: Connection) -> str | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    revision = connection.execute(text("SELECT version_num FROM alembic_version"))
    return cast("str | None", revision.scalar())


def migrate(engine: Engine) -> None:
    """Bring the store's schema to `SCHEMA_REVISION` with Alembic, if needed.

    A database already at that revision costs two cheap queries and is left
    alone. Concurrent processes migrate one at a time: SQLite's write lock or a
    PostgreSQL advisory lock is held while the revision is checked again.
    """
    shown = _display(engine.url)
    try:
        with engine.connect() as connection:
            if _schema_revision(connection) == SCHEMA_REVISION:
                return

        with engine.execution_options(**{_WRITE: True}).begin() as connection:
            if connection.dialect.name == "postgresql":
                lock = text("SELECT pg_advisory_xact_lock(:key)")
                connection.execute(lock, {"key": _MIGRATION_LOCK})
            found = _schema_revision(connection)
            if found != SCHEMA_REVISION:
                _upgrade(connection, shown, found)
    except SQLAlchemyError as exc:
        raise StoreError(_open_failure(shown, exc)) from exc


def _upgrade(connection: Connection, shown: str, found: str | None) -> None:
    from alembic import command
    from alembic.config import Config
    from alembic.util import CommandError

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    try:
        command.upgrade(config, "head")
    except CommandError as exc:
        raise StoreError(
            f"cannot open the incomplete-execution store at {shown}: its schema "
            f"revision {found!r} is unknown to this version of prefect-incomplete "
            f"({exc}). Upgrade prefect-incomplete, or point "
            "PREFECT_INCOMPLETE_DATABASE_URL at another database"
        ) from exc

    logger.info(
        "Upgraded the incomplete-execution store at %s to schema %s",
        shown,
        SCHEMA_REVISION,
    )


# --- the store --------------------------------------------------------------


def _not_found(what: str) -> RecordNotFound:
    return RecordNotFound(f"no incomplete execution matches {what!r}; {_LIST_HINT}")


def _rowcount(session: Session, statement: Update) -> int:
    statement = statement.execution_options(synchronize_session=False)
    result = cast("CursorResult[Any]", session.execute(statement))
    return result.rowcount


def _claim_is_live(row: ExecutionRow, now: datetime) -> bool:
    if row.status != Status.IN_PROGRESS:
        return False
    return row.lease_expires_at is None or row.lease_expires_at >= now


_WAITING = (Status.UNRESOLVED.value, Status.SCHEDULED.value)


def _check_holder(row: ExecutionRow, holder: str | None) -> None:
    """Raise `ClaimLost` unless `holder` (if given) holds the row's claim."""
    if holder is None:
        return
    if row.status == Status.IN_PROGRESS.value and row.claimed_by == holder:
        return
    now = (
        row.status
        if row.status != Status.IN_PROGRESS.value
        else "claimed by another resume"
    )
    raise ClaimLost(
        f"the claim on incomplete execution {row.id[:8]} was lost: the record is "
        f"{now} now"
    )


def _refuse(row: ExecutionRow, action: str) -> ClaimRefused:
    return ClaimRefused(
        UUID(row.id),
        Status(row.status),
        row.claimed_by,
        action=action,
        lease_expires_at=row.lease_expires_at,
    )


def _distinct_prefixes(ids: builtins.list[str], given: str) -> builtins.list[str]:
    """The ids cut to the fewest characters (at least 8) that tell them apart."""
    for length in range(max(8, len(given) + 1), 37):
        if len({record_id[:length] for record_id in ids}) == len(ids):
            return [f"{record_id[:length]}..." for record_id in ids]
    return ids


class Store:
    """Incomplete executions in a SQL database, by SQLAlchemy URL.

    Cheap to create: the engine is made, and the schema migrated, once per URL
    per process. `None` means `default_database_url()`.
    """

    def __init__(self, url: str | None = None) -> None:
        self._db = _open(url if url is not None else default_database_url())

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    @property
    def url(self) -> str:
        """The store's URL, with any password masked."""
        return self._db.display

    # --- transactions ---

    @contextmanager
    def _transaction(self, action: str, *, write: bool = True) -> Iterator[Session]:
        factory = self._db.writers if write else self._db.readers
        try:
            with self._db.lock, factory.begin() as session:
                yield session
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot {action} in the incomplete-execution store at "
                f"{self.url}: {_reason(exc)}. {_HINT}, then try again"
            ) from exc

    @staticmethod
    def _load(session: Session, record_id: str, *, lock: bool) -> ExecutionRow | None:
        statement = select(ExecutionRow).where(ExecutionRow.id == record_id)
        if lock:
            statement = statement.with_for_update()
        return session.scalars(statement).one_or_none()

    def _locked(self, session: Session, record_id: UUID) -> ExecutionRow:
        row = self._load(session, str(record_id), lock=True)
        if row is None:
            raise _not_found(str(record_id))
        return row

    def _select(
        self, action: str, statement: Select[ExecutionRow]
    ) -> builtins.list[IncompleteExecution]:
        with self._transaction(action, write=False) as session:
            return [_to_record(row) for row in session.scalars(statement)]

    # --- storing and reading ---

    def add(self, record: IncompleteExecution) -> IncompleteExecution:
        """Store a new record with its steps; returns it with `size_bytes` set."""
        record = _normalized(record)
        values, steps = _record_values(record), _step_values(record)
        with self._transaction(f"store incomplete execution {record.id}") as session:
            taken = select(ExecutionRow.id).where(ExecutionRow.id == values["id"])
            if session.scalar(taken) is not None:
                raise StoreError(
                    f"incomplete execution {record.id} is already stored; "
                    "give a new record a new id"
                )
            session.execute(insert(ExecutionRow), [values])
            if steps:
                session.execute(insert(StepRow), steps)

        logger.debug("Stored incomplete execution %s", record.id)
        return record

    def get(self, id_or_prefix: str | UUID) -> IncompleteExecution:
        """The record with this id, or the only one whose id starts with it."""
        given = str(id_or_prefix).strip().lower()
        try:
            exact: str | None = str(UUID(given))
        except ValueError:
            exact = None

        if exact is None and len(given) < MIN_PREFIX:
            raise StoreError(
                f"{given!r} is too short to name an incomplete execution; "
                f"give at least {MIN_PREFIX} characters of its id"
            )
        if exact is None and not _HEX_ID.fullmatch(given):
            raise _not_found(given)

        with self._transaction("read incomplete executions", write=False) as session:
            if exact is not None:
                row = self._load(session, exact, lock=False)
                if row is None:
                    raise _not_found(given)
                return _to_record(row)

            ids = builtins.list(
                session.scalars(
                    select(ExecutionRow.id)
                    .where(ExecutionRow.id.startswith(given, autoescape=True))
                    .order_by(ExecutionRow.id)
                )
            )
            if not ids:
                raise _not_found(given)
            if len(ids) > 1:
                shown = _distinct_prefixes(ids[:5], given)
                more = ", ..." if len(ids) > 5 else ""
                raise AmbiguousId(
                    f"{given!r} matches {len(ids)} incomplete executions "
                    f"({', '.join(shown)}{more}); give more characters"
                )
            row = self._load(session, ids[0], lock=False)
            if row is None:
                raise _not_found(given)
            return _to_record(row)

    def list(
        self,
        *,
        flow: str | None = None,
        statuses: Iterable[Status] | None = None,
        kind: str | None = None,
        limit: int | None = None,
    ) -> builtins.list[IncompleteExecution]:
        """Records, newest first; `kind` matches any failed step's kind."""
        statement = select(ExecutionRow).order_by(
            ExecutionRow.created_at.desc(), ExecutionRow.id.desc()
        )
        if flow is not None:
            statement = statement.where(ExecutionRow.flow_name == flow)
        if statuses is not None:
            wanted = [Status(status).value for status in statuses]
            statement = statement.where(ExecutionRow.status.in_(wanted))
        if kind is not None:
            failed_of_kind = (StepRow.state == _FAILED) & (StepRow.kind == kind)
            statement = statement.where(ExecutionRow.steps.any(failed_of_kind))
        if limit is not None:
            statement = statement.limit(limit)
        return self._select("list incomplete executions", statement)

    def open_records(self, flow: str) -> builtins.list[IncompleteExecution]:
        """The flow's records that still wait for something, oldest first."""
        statement = (
            select(ExecutionRow)
            .where(ExecutionRow.flow_name == flow)
            .where(ExecutionRow.status.in_([status.value for status in OPEN_STATUSES]))
            .order_by(ExecutionRow.created_at, ExecutionRow.id)
        )
        return self._select("list open incomplete executions", statement)

    def due(
        self, *, now: datetime, limit: int | None = None
    ) -> builtins.list[IncompleteExecution]:
        """Scheduled records whose retry time has come, the longest-waiting first."""
        statement = (
            select(ExecutionRow)
            .where(ExecutionRow.status == Status.SCHEDULED.value)
            .where(ExecutionRow.next_retry_at <= _utc(now))
            .order_by(ExecutionRow.next_retry_at, ExecutionRow.created_at)
        )
        if limit is not None:
            statement = statement.limit(limit)
        return self._select("list due incomplete executions", statement)

    # --- holds on deployments ---

    def add_hold(
        self,
        deployment_id: UUID,
        *,
        flow_name: str,
        reason: str,
        detail: dict[str, Any] | None = None,
    ) -> bool:
        """Record why a deployment is paused; True if it held nothing before."""
        key = str(deployment_id)
        with self._transaction(f"hold deployment {key}") as session:
            held = session.scalars(
                select(HoldRow.reason).where(HoldRow.deployment_id == key)
            ).all()
            if reason not in held:
                session.add(
                    HoldRow(
                        deployment_id=key,
                        reason=reason,
                        flow_name=flow_name,
                        detail=json.dumps(detail or {}),
                        created_at=_now(),
                    )
                )
        return not held

    def remove_hold(self, deployment_id: UUID, reason: str) -> int:
        """Forget one reason for a pause; gives how many reasons remain."""
        key = str(deployment_id)
        with self._transaction(f"release deployment {key}") as session:
            session.execute(
                delete(HoldRow).where(
                    HoldRow.deployment_id == key, HoldRow.reason == reason
                )
            )
            remaining = session.scalar(
                select(func.count()).where(HoldRow.deployment_id == key)
            )
        return int(remaining or 0)

    def holds(self) -> builtins.list[Hold]:
        """Every reason the plugin holds a deployment paused, oldest first."""
        with self._transaction("read holds", write=False) as session:
            rows = session.scalars(select(HoldRow).order_by(HoldRow.created_at)).all()
            return [
                Hold(
                    deployment_id=UUID(row.deployment_id),
                    flow_name=row.flow_name,
                    reason=row.reason,
                    detail=json.loads(row.detail),
                    created_at=row.created_at,
                )
                for row in rows
            ]

    def usage(self, flow: str | None = None) -> tuple[int, int]:
        """How many records are not resolved or discarded, and their bytes."""
        statement = select(
            func.count(), func.coalesce(func.sum(ExecutionRow.size_bytes), 0)
        ).where(ExecutionRow.status.not_in(_CLOSED))
        if flow is not None:
            statement = statement.where(ExecutionRow.flow_name == flow)

        with self._transaction("measure the store", write=False) as session:
            count, size = session.execute(statement).one()
        return int(count), int(size)

    # --- a resumed run's outcome ---

    def record_failure(
        self,
        record_id: UUID,
        *,
        flow_run_id: UUID,
        failed_steps: builtins.list[FailedStep],
        completed_steps: builtins.list[StepOutput],
        status: Status,
        next_retry_at: datetime | None,
        disposition: Disposition,
        holder: str | None = None,
    ) -> IncompleteExecution:
        """A resumed run failed again: count the attempt and update the steps.

        The failed steps are replaced by `failed_steps`. `completed_steps` are
        merged: a new key is added, a known key keeps its recorded output unless
        it now ran with other inputs (another fingerprint). The claim is released.
        With `holder`, raises `ClaimLost` and changes nothing unless `holder`
        still holds the claim.
        """
        _unique_keys(failed_steps)
        _unique_keys(completed_steps)
        next_retry_at = _utc_or_none(next_retry_at)
        action = f"update incomplete execution {record_id}"
        with self._transaction(action) as session:
            row = self._locked(session, record_id)
            _check_holder(row, holder)
            _replace_failed(row, failed_steps)
            _merge_completed(row, completed_steps)
            row.attempts += 1
            row.last_flow_run_id = str(flow_run_id)
            row.status = Status(status).value
            row.next_retry_at = next_retry_at
            row.disposition = Disposition(disposition).value
            row.claimed_by = None
            row.lease_expires_at = None
            row.updated_at = _now()
            row.size_bytes = 0

            record = _to_record(row)
            row.size_bytes = record.size_bytes = _size(record)

        logger.debug("Recorded attempt %d of %s", record.attempts, record_id)
        return record

    def resolve(
        self, record_id: UUID, *, flow_run_id: UUID, holder: str | None = None
    ) -> IncompleteExecution:
        """Mark the record resolved by `flow_run_id` and clear its claim.

        With `holder`, raises `ClaimLost` and changes nothing unless `holder`
        still holds the claim.
        """
        with self._transaction(f"resolve incomplete execution {record_id}") as session:
            row = self._locked(session, record_id)
            _check_holder(row, holder)
            row.status = Status.RESOLVED.value
            row.resolved_by = str(flow_run_id)
            row.next_retry_at = None
            row.claimed_by = None
            row.lease_expires_at = None
            row.updated_at = _now()
            record = _to_record(row)

        logger.debug("Resolved incomplete execution %s", record_id)
        return record

    # --- claims ---

    def claim(
        self,
        record_id: UUID,
        holder: str,
        *,
        lease_seconds: float,
        now: datetime | None = None,
        due_by: datetime | None = None,
    ) -> IncompleteExecution:
        """Take the record for one resume, atomically, or raise `ClaimRefused`.

        An unresolved or scheduled record can be claimed, and so can one in
        progress whose lease ended before `now`. With `due_by` (an automatic
        retry), only a scheduled record whose retry is due by then can: one
        that another worker retried in the meantime is refused.
        """
        now = _utc(now) if now is not None else _now()
        lease_end = _lease_end(now, lease_seconds)
        lapsed = ExecutionRow.lease_expires_at.is_(None) | (
            ExecutionRow.lease_expires_at < now
        )
        claimable = or_(
            ExecutionRow.status.in_(_WAITING),
            (ExecutionRow.status == Status.IN_PROGRESS.value) & lapsed,
        )
        if due_by is not None:
            claimable = (ExecutionRow.status == Status.SCHEDULED.value) & (
                ExecutionRow.next_retry_at <= _utc(due_by)
            )
        statement = (
            update(ExecutionRow)
            .where(ExecutionRow.id == str(record_id), claimable)
            .values(
                status=Status.IN_PROGRESS.value,
                claimed_by=holder,
                lease_expires_at=lease_end,
                updated_at=now,
            )
        )
        with self._transaction(f"claim incomplete execution {record_id}") as session:
            won = _rowcount(session, statement) == 1
            row = self._load(session, str(record_id), lock=False)

        if row is None:
            raise _not_found(str(record_id))
        if not won and due_by is not None and row.status in _WAITING:
            raise ClaimRefused(
                UUID(row.id),
                Status(row.status),
                message=f"incomplete execution {row.id[:8]} is no longer due: "
                "another worker retried it in the meantime",
            )
        if not won:
            raise _refuse(row, "resume")

        logger.debug("Claimed incomplete execution %s for %s", record_id, holder)
        return _to_record(row)

    def _move_claim(
        self, record_id: UUID, holder: str, values: dict[str, Any], action: str
    ) -> bool:
        statement = (
            update(ExecutionRow)
            .where(
                ExecutionRow.id == str(record_id),
                ExecutionRow.status == Status.IN_PROGRESS.value,
                ExecutionRow.claimed_by == holder,
            )
            .values(updated_at=_now(), **values)
        )
        with self._transaction(f"{action} incomplete execution {record_id}") as session:
            return _rowcount(session, statement) == 1

    def transfer_claim(
        self, record_id: UUID, token: str, holder: str, *, lease_seconds: float
    ) -> bool:
        """Hand the claim held by `token` to `holder`; False if `token` lost it."""
        values = {
            "claimed_by": holder,
            "lease_expires_at": _lease_end(_now(), lease_seconds),
        }
        return self._move_claim(record_id, token, values, "transfer the claim on")

    def renew(self, record_id: UUID, holder: str, *, lease_seconds: float) -> bool:
        """Extend `holder`'s lease; False if it no longer holds the claim."""
        values = {"lease_expires_at": _lease_end(_now(), lease_seconds)}
        return self._move_claim(record_id, holder, values, "renew the claim on")

    def release(
        self,
        record_id: UUID,
        holder: str,
        *,
        status: Status,
        next_retry_at: datetime | None = None,
    ) -> bool:
        """Give the claim back without a failure (the resume could not start).

        `status` is `UNRESOLVED` or `SCHEDULED`. False if `holder` no longer
        holds the claim.
        """
        status = _reopened(status, next_retry_at)
        values = {
            "status": status.value,
            "next_retry_at": _utc_or_none(next_retry_at),
            "claimed_by": None,
            "lease_expires_at": None,
        }
        return self._move_claim(record_id, holder, values, "release the claim on")

    # --- a person's decisions ---

    def edit(
        self,
        record_id: UUID,
        *,
        holder: str | None,
        parameters: dict[str, Encoded] | None = None,
        step_inputs: dict[str, dict[str, Encoded]] | None = None,
    ) -> IncompleteExecution:
        """Correct flow parameters and failed steps' inputs before a resume.

        `parameters` and each step's inputs in `step_inputs` (by failed step key)
        replace the values of the same names; other values stay. With a `holder`,
        that resume must hold the claim; without one, no resume may hold it.
        Either way `ClaimRefused` says why not; an unknown step key is a
        `ValueError`.
        """
        now = _now()
        with self._transaction(f"edit incomplete execution {record_id}") as session:
            row = self._locked(session, record_id)
            _check_edit(row, holder, now)

            if parameters:
                values = _VALUES.validate_json(row.parameters) | parameters
                row.parameters = _VALUES.dump_json(values).decode()
            _edit_inputs(row, step_inputs or {})
            row.updated_at = now
            record = _to_record(row)
            row.size_bytes = record.size_bytes = _size(record)

        logger.debug("Edited incomplete execution %s", record_id)
        return record

    def schedule(
        self, record_id: UUID, *, status: Status, next_retry_at: datetime | None
    ) -> IncompleteExecution:
        """Set when (`SCHEDULED`) or whether (`UNRESOLVED`) the record is retried.

        Refused with `ClaimRefused` while a resume holds the record, and for a
        resolved or discarded record.
        """
        status = _reopened(status, next_retry_at)
        next_retry_at = _utc_or_none(next_retry_at)
        now = _now()
        with self._transaction(f"schedule incomplete execution {record_id}") as session:
            row = self._locked(session, record_id)
            if row.status in _CLOSED or _claim_is_live(row, now):
                raise _refuse(row, "retry")
            row.status = status.value
            row.next_retry_at = next_retry_at
            row.claimed_by = None
            row.lease_expires_at = None
            row.updated_at = now
            return _to_record(row)

    def discard(self, record_ids: Iterable[UUID]) -> builtins.list[IncompleteExecution]:
        """Discard the open records among `record_ids`, all or none of them.

        Resolved and already discarded records are left as they are and not
        returned. An unknown id raises `RecordNotFound`, and a record a resume
        holds raises `ClaimRefused`; then nothing is discarded.
        """
        wanted = builtins.list(
            dict.fromkeys(str(record_id) for record_id in record_ids)
        )
        if not wanted:
            return []

        now = _now()
        statement = (
            select(ExecutionRow).where(ExecutionRow.id.in_(wanted)).with_for_update()
        )
        with self._transaction("discard incomplete executions") as session:
            rows = {row.id: row for row in session.scalars(statement)}
            missing = [record_id for record_id in wanted if record_id not in rows]
            if missing:
                raise _not_found(", ".join(missing))

            changed = []
            for record_id in wanted:
                row = rows[record_id]
                if row.status in _CLOSED:
                    continue
                if _claim_is_live(row, now):
                    raise _refuse(row, "discard")
                row.status = Status.DISCARDED.value
                row.next_retry_at = None
                row.claimed_by = None
                row.lease_expires_at = None
                row.updated_at = now
                changed.append(_to_record(row))

        logger.debug("Discarded %d incomplete executions", len(changed))
        return changed

    def purge(
        self, *, older_than: datetime, statuses: Iterable[Status]
    ) -> builtins.list[IncompleteExecution]:
        """Delete the records with these statuses last updated before `older_than`."""
        wanted = [Status(status).value for status in statuses]
        statement = (
            select(ExecutionRow)
            .where(ExecutionRow.updated_at < _utc(older_than))
            .where(ExecutionRow.status.in_(wanted))
            .order_by(ExecutionRow.updated_at, ExecutionRow.id)
            .with_for_update()
        )
        with self._transaction("purge incomplete executions") as session:
            rows = builtins.list(session.scalars(statement))
            purged = [_to_record(row) for row in rows]
            ids = [row.id for row in rows]
            if ids:
                session.execute(
                    delete(ExecutionRow)
                    .where(ExecutionRow.id.in_(ids))
                    .execution_options(synchronize_session=False)
                )

        logger.debug("Purged %d incomplete executions", len(purged))
        return purged


def _reopened(status: Status, next_retry_at: datetime | None) -> Status:
    status = Status(status)
    if status not in (Status.UNRESOLVED, Status.SCHEDULED):
        raise ValueError(f"status must be unresolved or scheduled, not {status.value}")
    if status is Status.SCHEDULED and next_retry_at is None:
        raise ValueError("a scheduled record needs next_retry_at")
    return status
