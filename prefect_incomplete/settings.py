"""Settings, read from ``PREFECT_INCOMPLETE_*`` environment variables.

Each field's description is its user documentation; the README's settings
table lists the same fields. Read them with `get_settings()`, which reads the
environment again whenever a ``PREFECT_INCOMPLETE_*`` variable has changed,
so tests and long-running workers see what is set now. A variable it cannot
use raises `InvalidSettingError`, naming the variable and what it expects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, get_origin

from pydantic import Field, ValidationError, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

__all__ = [
    "InvalidSettingError",
    "Settings",
    "default_database_url",
    "get_settings",
    "parse_duration",
]

PREFIX = "PREFECT_INCOMPLETE_"

DEFAULT_AUTO_RETRY_SCHEDULE = (60, 600, 600, 1800, 1800, 1800, 10800, 10800)
"""Seconds between automatic retries of a stored record, as on the platforms."""


MAX_LEASE_SECONDS = 366 * 24 * 3600
"""The longest claim lease the store can keep: a year."""


class Settings(BaseSettings):
    """Every setting of the plugin, with its default."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore")

    database_url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL of the record store. Unset: SQLite at "
            "PREFECT_HOME/incomplete.db, created on first use. Use PostgreSQL "
            "(postgresql+psycopg://...) when several workers share the store."
        ),
    )
    store: bool = Field(
        default=True,
        description=(
            "Store incomplete executions. False: a failure that would be stored "
            "fails the run as an unclassified error would; retries still apply."
        ),
    )
    sequential: bool = Field(
        default=False,
        description=(
            "Sequential processing (Make's 'Sequential processing'): while a flow "
            "has an open record, its new runs end at once in a state named Held, "
            "and a deployed flow's schedules are paused until the last open record "
            "is resolved or discarded. Costs one store query at the start of a run."
        ),
    )
    data_loss: bool = Field(
        default=False,
        description=(
            "Make's 'Enable data loss': "
            "when a quota is full, drop the new record with a warning "
            "and a prefect-incomplete.dropped event. False: the run fails naming the "
            "quota and a deployed flow's schedules are paused until space is freed."
        ),
    )
    flow_quota_count: int = Field(
        default=1000,
        ge=0,
        description="Most open records one flow may have; 0: no limit.",
    )
    flow_quota_bytes: int = Field(
        default=100_000_000,
        ge=0,
        description="Most bytes of open records one flow may have; 0: no limit.",
    )
    total_quota_count: int = Field(
        default=10_000, ge=0, description="Most open records in the store; 0: no limit."
    )
    total_quota_bytes: int = Field(
        default=1_000_000_000,
        ge=0,
        description="Most bytes of open records in the store; 0: no limit.",
    )
    consecutive_errors: int = Field(
        default=3,
        ge=0,
        description=(
            "Make's 'Number of consecutive errors': after this many failed runs in "
            "a row of a deployed flow, its schedules are paused and a "
            "prefect-incomplete.deactivated event says why. DataError, "
            "ConnectionError and ModuleTimeoutError do not count; 0 turns it off."
        ),
    )
    confidential: bool = Field(
        default=False,
        description=(
            "Fusion's 'Data is confidential': records keep what a resume needs, "
            "but artifacts, events and the CLI show no parameter, input or output "
            "values and no error messages, only step names and kinds."
        ),
    )
    purge_after: str | None = Field(
        default=None,
        description=(
            "Retention: the auto-retry worker deletes resolved and discarded "
            "records last changed longer ago than this (e.g. 30d, 12h)."
        ),
    )
    testing: bool = Field(
        default=False,
        description=(
            "For your own test suites: every retry delay is zero and, unless "
            "database_url is set, records go to an in-memory SQLite store."
        ),
    )
    policies: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description=(
            'Retry policy overrides per kind, as JSON: {"RateLimitError": '
            '{"attempts": 5, "delay": 2}}. Fields: attempts, delay, backoff, '
            "max_delay, jitter."
        ),
    )
    allow_pickle: bool = Field(
        default=True,
        description=(
            "Store values that JSON cannot hold with Prefect's pickle serializer "
            "(loading pickled data runs code: only load a store you trust). "
            "False: such values are not stored; a resume runs their step again, "
            "and pickled values already stored are never loaded."
        ),
    )
    max_value_bytes: int = Field(
        default=1_000_000,
        ge=1,
        description=(
            "Largest stored input or output value, in bytes. A larger value "
            "fails the store with an error naming the step."
        ),
    )
    auto_retry_schedule: list[float] = Field(
        default_factory=lambda: [float(d) for d in DEFAULT_AUTO_RETRY_SCHEDULE],
        description=(
            "Seconds before each automatic retry of a stored record, as a JSON "
            "list. When it is used up, the record waits for a person."
        ),
    )
    auto_retry_concurrency: int = Field(
        default=3,
        ge=1,
        description="Most resumes of one flow that run at once.",
    )
    lease_seconds: float = Field(
        default=3600,
        gt=0,
        le=MAX_LEASE_SECONDS,
        description=(
            "How long a resume's claim on a record lasts without renewal. A "
            "claim whose run died can be taken again after this time."
        ),
    )

    @field_validator("policies")
    @classmethod
    def _known_kinds(
        cls, value: dict[str, dict[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        from prefect_incomplete.policy import resolve_policies

        resolve_policies(value)  # unknown kinds and out-of-range fields refused
        return value

    @field_validator("purge_after")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("auto_retry_schedule")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(delay < 0 for delay in value):
            raise ValueError("auto_retry_schedule delays must be >= 0 seconds")
        return value


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30d``, ``12h``, ``90m``, ``45s`` or ``2w``."""
    value = text.strip().lower()
    number, unit = value[:-1], value[-1:]
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if unit not in _UNITS or amount < 0:
        raise ValueError(
            f"cannot read the duration {text!r}: use a number and a unit, "
            "e.g. 30d, 12h, 90m, 45s or 2w"
        )
    return amount * _UNITS[unit]


class InvalidSettingError(ValueError):
    """A ``PREFECT_INCOMPLETE_*`` variable holds a value the plugin cannot use."""


_SHAPES: dict[Any, str] = {
    bool: "true or false",
    int: "a whole number",
    float: "a number",
    list[float]: "a JSON list of seconds, e.g. [60, 600, 1800]",
    dict[str, dict[str, Any]]: (
        'a JSON object of policies by kind, e.g. {"RateLimitError": {"attempts": 5}}'
    ),
}
_SHAPES_BY_NAME = {"purge_after": "a duration such as 30d, 12h, 90m, 45s or 2w"}
_SHOWN_CHARS = 60

_cache: tuple[tuple[tuple[str, str], ...], Settings] | None = None


def get_settings() -> Settings:
    """The current settings, read again only when the environment changed.

    Raises `InvalidSettingError` naming the variable when one cannot be used.
    """
    global _cache
    snapshot = tuple(
        sorted((k, v) for k, v in os.environ.items() if k.startswith(PREFIX))
    )
    if _cache is None or _cache[0] != snapshot:
        _cache = (snapshot, _read())
    return _cache[1]


def _read() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise InvalidSettingError(_invalid_values(exc)) from exc
    except SourceError as exc:  # pydantic-settings could not parse a JSON value
        raise InvalidSettingError(_unparsed_json(exc)) from exc


def _invalid_values(exc: ValidationError) -> str:
    first: dict[str, ErrorDetails] = {}
    for error in exc.errors():
        first.setdefault(str(error["loc"][0]), error)
    return "; also ".join(
        _invalid(name, error["msg"].removeprefix("Value error, "))
        for name, error in first.items()
    )


def _unparsed_json(exc: SourceError) -> str:
    for name, field in Settings.model_fields.items():
        raw = _raw(name)
        if raw is None or get_origin(field.annotation) not in (dict, list):
            continue
        try:
            json.loads(raw)
        except ValueError as bad:
            return _invalid(name, f"not JSON: {bad}")
    return f"a {PREFIX}* variable cannot be read: {exc}"


def _invalid(name: str, problem: str) -> str:
    """One sentence: the variable, its value, what is wrong, what it expects."""
    variable = f"{PREFIX}{name.upper()}"
    raw = _raw(name) or ""
    shown = raw if len(raw) <= _SHOWN_CHARS else raw[:_SHOWN_CHARS] + "..."
    return (
        f"{variable}={shown!r} is not valid ({problem[:1].lower()}{problem[1:]}); "
        f"set it to {_expected(name)}, or unset it to use the default"
    )


def _expected(name: str) -> str:
    field = Settings.model_fields[name]
    shape = _SHAPES_BY_NAME.get(name) or _SHAPES.get(field.annotation, "text")
    bounds = [f"of {m.ge:g} or more" for m in field.metadata if hasattr(m, "ge")]
    bounds += [f"more than {m.gt:g}" for m in field.metadata if hasattr(m, "gt")]
    bounds += [f"at most {m.le:.0f}" for m in field.metadata if hasattr(m, "le")]
    return " ".join([shape, " and ".join(bounds)] if bounds else [shape])


def _raw(name: str) -> str | None:
    """The variable's value as set; pydantic-settings reads names in any case."""
    wanted = f"{PREFIX}{name.upper()}"
    return next((v for k, v in os.environ.items() if k.upper() == wanted), None)


def default_database_url(settings: Settings | None = None) -> str:
    """The store's URL: the setting, or SQLite under PREFECT_HOME."""
    settings = settings or get_settings()
    if settings.database_url:
        return settings.database_url
    if settings.testing:
        return "sqlite://"
    from prefect.settings import get_current_settings

    home = Path(get_current_settings().home).expanduser()
    return f"sqlite:///{home / 'incomplete.db'}"
