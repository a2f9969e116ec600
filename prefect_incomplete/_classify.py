"""Classification: which kind of `StepError` a raised exception is.

`classify_detail` walks the exception and then its explicit causes
(``raise ... from cause``), and for each one tries the rules in this order::

    exception, then exception.__cause__, then that one's __cause__, ...
    └── for each of them, the first rule that matches wins:
        1. the exception already is a kind (a StepError subclass): itself
        2. user rules from `add_rule`, newest first
        3. the default rules of `default_rules()`, in their order

The first match in that walk decides, so an outer exception beats its cause.
Implicit context (``__context__``, an exception raised while handling another)
is not followed: it is what was being handled, not why this one was raised.
An exception that no rule matches is unclassified: `classify` returns None.

Rules for third-party libraries (httpx, requests, SQLAlchemy, pydantic,
Prefect) and for smtplib and ftplib find the library's classes in
`sys.modules` when an exception is classified. This module imports none of
them: if a library was never imported, no exception can be one of its types,
and a rule for a library that is not installed is simply inactive.
"""

from __future__ import annotations

import builtins
import email.utils
import errno
import inspect
import logging
import math
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prefect_incomplete.errors import (
    KINDS,
    ConnectionError,
    DataError,
    InvalidAccessTokenError,
    InvalidConfigurationError,
    MaxFileSizeExceededError,
    ModuleTimeoutError,
    OutOfSpaceError,
    RateLimitError,
    StepError,
    UnexpectedError,
)

__all__ = [
    "Classification",
    "Rule",
    "add_rule",
    "classify",
    "classify_detail",
    "default_rules",
    "remove_rule",
]

logger = logging.getLogger(__name__)

Predicate = Callable[[BaseException], bool]
RetryAfter = Callable[[BaseException], float | None]


@dataclass(frozen=True)
class Classification:
    """The kind an exception was classified as, and why."""

    kind: type[StepError]
    retry_after: float | None
    """Seconds to wait before retrying; only ever set for `RateLimitError`."""
    rule: str
    """The description of the rule that matched, for log lines."""
    exception: BaseException
    """The exception of the chain that the rule matched."""


@dataclass(frozen=True, eq=False, kw_only=True)
class Rule:
    """One row of the table: which exceptions it matches and their kind.

    Rules compare by identity, so `remove_rule` removes exactly the rule
    that `add_rule` returned.
    """

    description: str
    kind: type[StepError]
    predicate: Predicate = field(repr=False)
    retry_after: RetryAfter | None = field(default=None, repr=False)
    note: str = ""

    def __str__(self) -> str:
        return self.description

    def matches(self, exc: BaseException) -> bool:
        """Whether the rule applies to `exc`; a predicate that raises does not."""
        try:
            return bool(self.predicate(exc))
        except Exception as error:
            logger.debug(
                "Rule %r raised %s while matching; treated as no match",
                self.description,
                type(error).__name__,
            )
            return False

    def classification(self, exc: BaseException) -> Classification:
        """The classification of `exc`, which this rule matched."""
        kind = self.kind
        if self is _ALREADY_A_KIND and isinstance(exc, StepError):
            kind = type(exc)

        retry_after = None
        if issubclass(kind, RateLimitError) and self.retry_after is not None:
            retry_after = _call_retry_after(self.retry_after, exc)

        return Classification(kind, retry_after, self.description, exc)


def classify(exc: BaseException) -> type[StepError] | None:
    """The kind of `exc`, or None when no rule classifies it."""
    found = classify_detail(exc)
    return None if found is None else found.kind


def classify_detail(exc: BaseException) -> Classification | None:
    """The kind of `exc` with the rule and exception that decided it, or None."""
    rules = (_ALREADY_A_KIND, *_user_rules(), *_TABLE)
    for link in _causes(exc):
        for rule in rules:
            if rule.matches(link):
                return rule.classification(link)

    return None


def add_rule(
    match: type[BaseException] | str | Callable[[BaseException], bool],
    kind: type[StepError],
    *,
    retry_after: Callable[[BaseException], float | None] | None = None,
) -> Rule:
    """Classify exceptions that `match` as `kind`, before every default rule.

    `match` is an exception class (the class and its subclasses match), a
    dotted class name such as ``"botocore.exceptions.ClientError"`` (the same,
    without importing anything), or a predicate that takes the exception and
    returns True when it matches. `retry_after`, only for `RateLimitError`,
    returns the seconds to wait. Returns the rule, for `remove_rule`.
    """
    _check_kind(kind)
    _check_retry_after(retry_after, kind)
    description, predicate = _matcher(match)

    rule = Rule(
        description=f"user rule: {description}",
        kind=kind,
        predicate=predicate,
        retry_after=retry_after,
    )
    with _lock:
        _added.append(rule)
    return rule


def remove_rule(rule: Rule) -> None:
    """Remove a rule that `add_rule` returned."""
    with _lock:
        for index, added in enumerate(_added):
            if added is rule:
                del _added[index]
                return

    if any(rule is default for default in _DEFAULT_RULES):
        raise ValueError(
            f"{rule.description!r} is a default rule and cannot be removed; "
            "add a rule with add_rule() to classify those exceptions otherwise"
        )
    raise ValueError(f"{rule.description!r} is not a rule added with add_rule()")


def default_rules() -> tuple[Rule, ...]:
    """The default rules in their order; user rules go after the first one."""
    return _DEFAULT_RULES


# User rules ----------------------------------------------------------------

_lock = threading.Lock()
_added: list[Rule] = []


def _user_rules() -> tuple[Rule, ...]:
    with _lock:
        return tuple(reversed(_added))


def _check_kind(kind: object) -> None:
    if isinstance(kind, type) and issubclass(kind, StepError) and kind is not StepError:
        return

    names = ", ".join(k.__name__ for k in KINDS)
    if kind is StepError:
        problem = "StepError, the base of all kinds, which is not a kind itself"
    else:
        problem = repr(kind)
    raise TypeError(
        f"add_rule() kind must be a kind from prefect_incomplete.errors "
        f"({names}) or a subclass of one; got {problem}"
    )


def _check_retry_after(retry_after: object, kind: type[StepError]) -> None:
    if retry_after is None:
        return

    if not callable(retry_after):
        raise TypeError(
            "add_rule() retry_after must be a function that takes the exception "
            f"and returns seconds or None; got {retry_after!r}"
        )
    if not issubclass(kind, RateLimitError):
        raise TypeError(
            f"add_rule() retry_after applies only to RateLimitError; "
            f"the kind given is {kind.__name__}"
        )


def _matcher(match: object) -> tuple[str, Predicate]:
    if isinstance(match, type):
        return _type_matcher(match)
    if isinstance(match, str):
        return _name_matcher(match)
    if callable(match) and not inspect.iscoroutinefunction(match):
        name = getattr(match, "__qualname__", None) or repr(match)
        module = getattr(match, "__module__", None)
        return f"{module}.{name}(exc)" if module else f"{name}(exc)", match

    raise TypeError(
        "add_rule() match must be an exception class, a dotted class name such "
        "as 'botocore.exceptions.ClientError', or a plain (not async) function "
        f"that takes the exception and returns a bool; got {match!r}"
    )


def _type_matcher(match: type) -> tuple[str, Predicate]:
    if not issubclass(match, BaseException):
        raise TypeError(
            f"add_rule() match {match!r} is a class but not an exception class; "
            "pass an exception class, a dotted class name or a predicate"
        )

    exc_type: type[BaseException] = match
    return _dotted(exc_type), lambda exc: isinstance(exc, exc_type)


def _name_matcher(name: str) -> tuple[str, Predicate]:
    parts = name.split(".")
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        raise ValueError(
            f"add_rule() match {name!r} is not a dotted class name; write the "
            "module and the class, e.g. 'builtins.KeyError' or "
            "'httpx.HTTPStatusError'"
        )

    return name, lambda exc: _is_a(exc, name)


# Matching by name, without importing ---------------------------------------


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_a(exc: BaseException, *names: str) -> bool:
    """Whether `exc` is an instance of a class called one of `names`.

    A name matches a class of ``type(exc).__mro__`` by its defining module
    and qualified name, or by resolving it through modules already in
    `sys.modules`, which finds classes a library re-exports from a private
    module (``requests.HTTPError`` is defined in ``requests.exceptions``) and
    classes whose ``__module__`` a library rewrote (httpx sets ``"httpx"``).
    """
    defined = {_dotted(cls) for cls in type(exc).__mro__}
    for name in names:
        if name in defined:
            return True
        cls = _resolve(name)
        if cls is not None and isinstance(exc, cls):
            return True

    return False


def _resolve(name: str) -> type[BaseException] | None:
    """The exception class called `name` in an imported module, or None.

    Only namespaces are read, never a module's ``__getattr__``, so nothing is
    imported; a name a library provides lazily resolves once it was used.
    """
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        found: object = sys.modules.get(".".join(parts[:split]))
        for part in parts[split:]:
            found = getattr(found, "__dict__", {}).get(part)
        if isinstance(found, type) and issubclass(found, BaseException):
            return found

    return None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then its `__cause__`, then that one's, each exception once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__


# Retry-After ---------------------------------------------------------------


def _call_retry_after(retry_after: RetryAfter, exc: BaseException) -> float | None:
    try:
        return _seconds(retry_after(exc))
    except Exception as error:
        logger.debug(
            "retry_after raised %s; classified without a delay",
            type(error).__name__,
        )
        return None


def _seconds(value: object) -> float | None:
    """`value` as a delay in seconds: finite and never negative, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value):
        return None
    return max(float(value), 0.0)


def _parse_retry_after(value: str) -> float | None:
    """A Retry-After value, in seconds or as an HTTP date, as seconds from now."""
    text = value.strip()
    try:
        return _seconds(float(text))
    except ValueError:
        pass

    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return _seconds((when - datetime.now(UTC)).total_seconds())


# HTTP responses ------------------------------------------------------------

_HTTP_ERRORS = ("httpx.HTTPStatusError", "requests.exceptions.HTTPError")


def _http_response(exc: BaseException) -> object | None:
    # Compare with None only: a requests Response with an error status is falsy.
    if _is_a(exc, *_HTTP_ERRORS):
        response: object | None = getattr(exc, "response", None)
        return response
    return None


def _http_status(exc: BaseException) -> int | None:
    status = getattr(_http_response(exc), "status_code", None)
    return status if isinstance(status, int) else None


def _retry_after_header(exc: BaseException) -> float | None:
    headers = getattr(_http_response(exc), "headers", None)
    if headers is None:
        return None

    value = headers.get("Retry-After")
    return _parse_retry_after(value) if isinstance(value, str) else None


def _status(*codes: int) -> Predicate:
    return lambda exc: _http_status(exc) in codes


def _status_4xx(exc: BaseException) -> bool:
    status = _http_status(exc)
    return status is not None and 400 <= status <= 499


def _any_status(exc: BaseException) -> bool:
    return _http_status(exc) is not None


def _503_with_retry_after(exc: BaseException) -> bool:
    return _http_status(exc) == 503 and _retry_after_header(exc) is not None


# smtplib and ftplib --------------------------------------------------------

_SMTP_REFUSALS = (
    "smtplib.SMTPSenderRefused",
    "smtplib.SMTPRecipientsRefused",
    "smtplib.SMTPDataError",
)


def _smtp_reply_codes(exc: BaseException) -> list[int]:
    recipients = getattr(exc, "recipients", None)
    if isinstance(recipients, dict):
        return [code for code, _ in recipients.values() if isinstance(code, int)]

    code = getattr(exc, "smtp_code", None)
    return [code] if isinstance(code, int) else []


def _smtp_temporary_refusal(exc: BaseException) -> bool:
    if not _is_a(exc, *_SMTP_REFUSALS):
        return False

    codes = _smtp_reply_codes(exc)
    return bool(codes) and all(400 <= code <= 499 for code in codes)


def _ftp_not_logged_in(exc: BaseException) -> bool:
    return _is_a(exc, "ftplib.error_perm") and str(exc).startswith("530")


# Plain OSErrors by errno ---------------------------------------------------

_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN}
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _errno_in(codes: set[int]) -> Predicate:
    return lambda exc: isinstance(exc, OSError) and exc.errno in codes


# The default table ---------------------------------------------------------


def _named(*names: str) -> Predicate:
    return lambda exc: _is_a(exc, *names)


def _already_a_kind(exc: BaseException) -> bool:
    return isinstance(exc, StepError)


def _own_retry_after(exc: BaseException) -> float | None:
    return _seconds(getattr(exc, "retry_after", None))


_ALREADY_A_KIND = Rule(
    description="an exception that already is a kind (a StepError subclass)",
    kind=StepError,
    predicate=_already_a_kind,
    retry_after=_own_retry_after,
    note="Tried before user rules; a RateLimitError keeps its retry_after.",
)

_TABLE: tuple[Rule, ...] = (
    Rule(
        description="HTTP 429 (httpx.HTTPStatusError, requests.HTTPError)",
        kind=RateLimitError,
        predicate=_status(429),
        retry_after=_retry_after_header,
        note="retry_after from Retry-After, in seconds or as an HTTP date; "
        "None when absent or unparsable.",
    ),
    Rule(
        description="HTTP 503 with a usable Retry-After header",
        kind=RateLimitError,
        predicate=_503_with_retry_after,
        retry_after=_retry_after_header,
        note="The service said when to come back; the retry waits that long.",
    ),
    Rule(
        description="HTTP 502, 503 or 504",
        kind=ConnectionError,
        predicate=_status(502, 503, 504),
        note="A gateway or the service is down for now.",
    ),
    Rule(
        description="HTTP 408",
        kind=ModuleTimeoutError,
        predicate=_status(408),
        note="The server gave up waiting for the request.",
    ),
    Rule(
        description="HTTP 401, 403 or 407",
        kind=InvalidAccessTokenError,
        predicate=_status(401, 403, 407),
        note="Credentials (407: the proxy's) missing, refused or expired.",
    ),
    Rule(
        description="HTTP 413",
        kind=MaxFileSizeExceededError,
        predicate=_status(413),
        note="The request body is larger than the service accepts.",
    ),
    Rule(
        description="HTTP 507",
        kind=OutOfSpaceError,
        predicate=_status(507),
        note="The service's storage is full.",
    ),
    Rule(
        description="any other HTTP 4xx",
        kind=DataError,
        predicate=_status_4xx,
        note="400, 404, 409, 422...: what the step sent is wrong.",
    ),
    Rule(
        description="any other HTTP status",
        kind=UnexpectedError,
        predicate=_any_status,
        note="500, 501, 505 and up, 1xx, 3xx. A requests.HTTPError without a "
        "response is not classified.",
    ),
    Rule(
        description="httpx.TimeoutException",
        kind=ModuleTimeoutError,
        predicate=_named("httpx.TimeoutException"),
        note="ConnectTimeout, ReadTimeout, WriteTimeout, PoolTimeout.",
    ),
    Rule(
        description="httpx.NetworkError, httpx.RemoteProtocolError",
        kind=ConnectionError,
        predicate=_named("httpx.NetworkError", "httpx.RemoteProtocolError"),
        note="ConnectError (also TLS failures), ReadError, WriteError, "
        "CloseError; the server broke the connection.",
    ),
    Rule(
        description="httpx.UnsupportedProtocol, httpx.InvalidURL",
        kind=InvalidConfigurationError,
        predicate=_named("httpx.UnsupportedProtocol", "httpx.InvalidURL"),
        note="The URL the step is set up with cannot be used.",
    ),
    Rule(
        description="requests.Timeout",
        kind=ModuleTimeoutError,
        predicate=_named("requests.exceptions.Timeout"),
        note="ConnectTimeout, ReadTimeout. A ConnectTimeout is also a "
        "requests.ConnectionError: the timeout wins.",
    ),
    Rule(
        description="requests.ConnectionError, requests.exceptions."
        "ChunkedEncodingError",
        kind=ConnectionError,
        predicate=_named(
            "requests.exceptions.ConnectionError",
            "requests.exceptions.ChunkedEncodingError",
        ),
        note="Includes SSLError and ProxyError; the server broke the connection.",
    ),
    Rule(
        description="requests.exceptions.InvalidURL, MissingSchema, InvalidSchema",
        kind=InvalidConfigurationError,
        predicate=_named(
            "requests.exceptions.InvalidURL",
            "requests.exceptions.MissingSchema",
            "requests.exceptions.InvalidSchema",
        ),
        note="The URL the step is set up with cannot be used.",
    ),
    Rule(
        description="smtplib.SMTPConnectError, smtplib.SMTPServerDisconnected",
        kind=ConnectionError,
        predicate=_named("smtplib.SMTPConnectError", "smtplib.SMTPServerDisconnected"),
        note="The server refused the session or hung up. A closed port is a "
        "ConnectionRefusedError (built-in row below).",
    ),
    Rule(
        description="smtplib.SMTPAuthenticationError",
        kind=InvalidAccessTokenError,
        predicate=_named("smtplib.SMTPAuthenticationError"),
        note="Login refused.",
    ),
    Rule(
        description="smtplib.SMTPNotSupportedError",
        kind=InvalidConfigurationError,
        predicate=_named("smtplib.SMTPNotSupportedError"),
        note="The server lacks what the step uses, such as AUTH or SMTPUTF8.",
    ),
    Rule(
        description="smtplib.SMTPSenderRefused, SMTPRecipientsRefused, "
        "SMTPDataError with only 4xx replies",
        kind=ConnectionError,
        predicate=_smtp_temporary_refusal,
        note="A temporary refusal, such as 451 or 452: retried.",
    ),
    Rule(
        description="smtplib.SMTPSenderRefused, SMTPRecipientsRefused, "
        "SMTPDataError otherwise",
        kind=DataError,
        predicate=_named(*_SMTP_REFUSALS),
        note="A permanent refusal (5xx) of a sender, recipient or message.",
    ),
    Rule(
        description="ftplib.error_temp",
        kind=ConnectionError,
        predicate=_named("ftplib.error_temp"),
        note="A 4xx reply, such as 421 service not available.",
    ),
    Rule(
        description="ftplib.error_perm with reply 530",
        kind=InvalidAccessTokenError,
        predicate=_ftp_not_logged_in,
        note="Not logged in: the login was refused.",
    ),
    Rule(
        description="ftplib.error_perm",
        kind=DataError,
        predicate=_named("ftplib.error_perm"),
        note="Any other 5xx reply, such as 550 no such file.",
    ),
    Rule(
        description="ftplib.error_proto, ftplib.error_reply",
        kind=UnexpectedError,
        predicate=_named("ftplib.error_proto", "ftplib.error_reply"),
        note="A reply that is not FTP, or not the one the command expects.",
    ),
    Rule(
        description="sqlalchemy.exc.OperationalError, "
        "sqlalchemy.exc.DisconnectionError",
        kind=ConnectionError,
        predicate=_named(
            "sqlalchemy.exc.OperationalError", "sqlalchemy.exc.DisconnectionError"
        ),
        note="The database cannot be reached or opened. SQLite also reports a "
        "missing table or a locked file this way.",
    ),
    Rule(
        description="sqlalchemy.exc.TimeoutError",
        kind=ModuleTimeoutError,
        predicate=_named("sqlalchemy.exc.TimeoutError"),
        note="No connection came free in the pool in time.",
    ),
    Rule(
        description="sqlalchemy.exc.IntegrityError",
        kind=DataError,
        predicate=_named("sqlalchemy.exc.IntegrityError"),
        note="A unique, foreign key or NOT NULL constraint refused the row.",
    ),
    Rule(
        description="pydantic_core.ValidationError",
        kind=DataError,
        predicate=_named("pydantic_core.ValidationError"),
        note="pydantic.ValidationError: a model refused the data.",
    ),
    Rule(
        description="prefect.task_engine.TaskRunTimeoutError",
        kind=ModuleTimeoutError,
        predicate=_named("prefect.task_engine.TaskRunTimeoutError"),
        note="A task ran longer than its timeout_seconds.",
    ),
    Rule(
        description="builtins.ConnectionError, socket.gaierror, socket.herror",
        kind=ConnectionError,
        predicate=lambda exc: isinstance(
            exc, (builtins.ConnectionError, socket.gaierror, socket.herror)
        ),
        note="And subclasses: ConnectionRefusedError, ConnectionResetError, "
        "BrokenPipeError...; a host name that does not resolve.",
    ),
    Rule(
        description="OSError with errno ENETUNREACH, EHOSTUNREACH, ENETDOWN "
        "or EHOSTDOWN",
        kind=ConnectionError,
        predicate=_errno_in(_UNREACHABLE),
        note="No route to the service.",
    ),
    Rule(
        description="builtins.TimeoutError",
        kind=ModuleTimeoutError,
        predicate=lambda exc: isinstance(exc, TimeoutError),
        note="Also asyncio.TimeoutError and socket.timeout.",
    ),
    Rule(
        description="OSError with errno ENOSPC or EDQUOT",
        kind=OutOfSpaceError,
        predicate=_errno_in(_NO_SPACE),
        note="No space left on the device, or the disk quota is used up.",
    ),
)

_DEFAULT_RULES = (_ALREADY_A_KIND, *_TABLE)
