"""Classification of real failures from real libraries, against loopback servers."""

from __future__ import annotations

import asyncio
import email.utils
import errno
import ftplib
import smtplib
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
import requests
import sqlalchemy
import sqlalchemy.exc
from _servers import (
    HOST,
    HTTPServer,
    LineServer,
    closed_port,
    smtp_server,
    unaccepting_port,
)
from aiosmtpd.smtp import AuthResult
from prefect.task_engine import TaskRunTimeoutError
from sqlalchemy.pool import QueuePool

from prefect_incomplete import errors
from prefect_incomplete._classify import (
    Classification,
    Rule,
    add_rule,
    classify,
    classify_detail,
    default_rules,
    remove_rule,
)

ROOT = Path(__file__).resolve().parents[1]


# Fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def http() -> Iterator[HTTPServer]:
    with HTTPServer() as server:
        yield server


@pytest.fixture
def rules() -> Iterator[Callable[..., Rule]]:
    """`add_rule`, with every rule added removed again after the test."""
    added: list[Rule] = []

    def add(*args: Any, **kwargs: Any) -> Rule:
        rule = add_rule(*args, **kwargs)
        added.append(rule)
        return rule

    yield add
    for rule in added:
        remove_rule(rule)


def httpx_error(url: str) -> BaseException:
    with httpx.Client(trust_env=False, timeout=5) as client:
        try:
            client.post(url, content=b"x" * 1024).raise_for_status()
        except httpx.HTTPError as exc:
            return exc
    raise AssertionError(f"no error from {url}")


def requests_error(url: str) -> BaseException:
    with requests.Session() as session:
        session.trust_env = False
        try:
            session.post(url, data=b"x" * 1024, timeout=5).raise_for_status()
        except requests.RequestException as exc:
            return exc
    raise AssertionError(f"no error from {url}")


@pytest.fixture(params=["httpx", "requests"])
def http_error(request: pytest.FixtureRequest) -> Callable[[str], BaseException]:
    """The exception a real httpx or requests client raises for a URL."""
    fetchers = {"httpx": httpx_error, "requests": requests_error}
    return fetchers[request.param]


def refused_connection() -> ConnectionRefusedError:
    with socket.socket() as client:
        try:
            client.connect((HOST, closed_port()))
        except ConnectionRefusedError as exc:
            return exc
    raise AssertionError("the closed port accepted a connection")


def raised(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except BaseException as exc:
        return exc
    raise AssertionError(f"{call!r} did not raise")


def http_date(offset: timedelta) -> str:
    return email.utils.format_datetime(datetime.now(UTC) + offset, usegmt=True)


# HTTP statuses, through httpx and requests ---------------------------------

STATUSES = [
    pytest.param(429, {"Retry-After": "7"}, errors.RateLimitError, 7.0, id="429-s"),
    pytest.param(429, {"Retry-After": "1.5"}, errors.RateLimitError, 1.5, id="429-f"),
    pytest.param(429, {"Retry-After": "-3"}, errors.RateLimitError, 0.0, id="429-neg"),
    pytest.param(429, {"Retry-After": "soon"}, errors.RateLimitError, None, id="429-?"),
    pytest.param(429, {"Retry-After": "nan"}, errors.RateLimitError, None, id="429-N"),
    pytest.param(429, {}, errors.RateLimitError, None, id="429-none"),
    pytest.param(503, {"Retry-After": "12"}, errors.RateLimitError, 12.0, id="503-s"),
    pytest.param(503, {"Retry-After": "soon"}, errors.ConnectionError, None, id="503?"),
    pytest.param(503, {}, errors.ConnectionError, None, id="503"),
    pytest.param(502, {}, errors.ConnectionError, None, id="502"),
    pytest.param(504, {}, errors.ConnectionError, None, id="504"),
    pytest.param(408, {}, errors.ModuleTimeoutError, None, id="408"),
    pytest.param(401, {}, errors.InvalidAccessTokenError, None, id="401"),
    pytest.param(403, {}, errors.InvalidAccessTokenError, None, id="403"),
    pytest.param(407, {}, errors.InvalidAccessTokenError, None, id="407"),
    pytest.param(413, {}, errors.MaxFileSizeExceededError, None, id="413"),
    pytest.param(507, {}, errors.OutOfSpaceError, None, id="507"),
    pytest.param(400, {}, errors.DataError, None, id="400"),
    pytest.param(404, {}, errors.DataError, None, id="404"),
    pytest.param(422, {}, errors.DataError, None, id="422"),
    pytest.param(500, {}, errors.UnexpectedError, None, id="500"),
    pytest.param(501, {}, errors.UnexpectedError, None, id="501"),
    pytest.param(599, {}, errors.UnexpectedError, None, id="599"),
]


@pytest.mark.parametrize(("status", "headers", "kind", "retry_after"), STATUSES)
def test_http_status(
    http: HTTPServer,
    http_error: Callable[[str], BaseException],
    status: int,
    headers: dict[str, str],
    kind: type[errors.StepError],
    retry_after: float | None,
) -> None:
    """An HTTP error status from httpx or requests gets the kind of its row."""
    path = f"/{status}/{'-'.join(headers.values()) or 'plain'}"
    exc = http_error(http.reply(path, status, headers=headers))

    detail = classify_detail(exc)

    assert detail is not None
    assert detail == Classification(kind, retry_after, detail.rule, exc)


@pytest.mark.parametrize(("offset", "expected"), [(30, 30.0), (-30, 0.0)])
def test_retry_after_http_date(
    http: HTTPServer,
    http_error: Callable[[str], BaseException],
    offset: int,
    expected: float,
) -> None:
    """A Retry-After HTTP date becomes seconds from now, never negative."""
    headers = {"Retry-After": http_date(timedelta(seconds=offset))}
    exc = http_error(http.reply(f"/429/date/{offset}", 429, headers=headers))

    detail = classify_detail(exc)

    assert detail is not None
    assert detail.kind is errors.RateLimitError
    assert detail.retry_after == pytest.approx(expected, abs=2)


def test_http_redirect_status_is_unexpected(http: HTTPServer) -> None:
    """A 3xx that httpx raises for (not following redirects) is UnexpectedError."""
    url = http.reply("/302", 302, headers={"Location": "/elsewhere"})

    exc = httpx_error(url)

    assert isinstance(exc, httpx.HTTPStatusError)
    assert classify(exc) is errors.UnexpectedError


async def test_async_httpx_status(http: HTTPServer) -> None:
    """An httpx.AsyncClient error status classifies like the sync client's."""
    url = http.reply("/async/429", 429, headers={"Retry-After": "4"})

    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        response = await client.get(url)
    exc = raised(response.raise_for_status)

    detail = classify_detail(exc)
    assert detail is not None
    assert (detail.kind, detail.retry_after) == (errors.RateLimitError, 4.0)


async def test_async_httpx_connect_refused() -> None:
    """An httpx.AsyncClient refused connection is ConnectionError."""
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.get(f"http://{HOST}:{closed_port()}/")

    assert classify(caught.value) is errors.ConnectionError


def test_requests_http_error_without_response_is_unclassified() -> None:
    """A requests.HTTPError built without a response has no status to go by."""
    assert classify(requests.HTTPError("no response")) is None


# HTTP transport failures ---------------------------------------------------


def test_httpx_connect_refused() -> None:
    """httpx.ConnectError from a closed port is ConnectionError."""
    exc = httpx_error(f"http://{HOST}:{closed_port()}/")

    assert type(exc) is httpx.ConnectError
    assert classify(exc) is errors.ConnectionError


def test_requests_connect_refused() -> None:
    """requests.ConnectionError from a closed port is ConnectionError."""
    exc = requests_error(f"http://{HOST}:{closed_port()}/")

    assert type(exc) is requests.ConnectionError
    assert classify(exc) is errors.ConnectionError


def test_httpx_read_timeout(http: HTTPServer) -> None:
    """httpx.ReadTimeout from a server that answers too late is ModuleTimeoutError."""
    url = http.reply("/slow/httpx", 200, delay=5)

    with httpx.Client(trust_env=False, timeout=0.2) as client:
        exc = raised(lambda: client.get(url))

    assert type(exc) is httpx.ReadTimeout
    assert classify(exc) is errors.ModuleTimeoutError


def test_requests_read_timeout(http: HTTPServer) -> None:
    """requests.ReadTimeout from a server answering too late is ModuleTimeoutError."""
    url = http.reply("/slow/requests", 200, delay=5)

    with requests.Session() as session:
        session.trust_env = False
        exc = raised(lambda: session.get(url, timeout=0.2))

    assert type(exc) is requests.ReadTimeout
    assert classify(exc) is errors.ModuleTimeoutError


def test_httpx_connect_timeout() -> None:
    """httpx.ConnectTimeout from a port that never accepts is ModuleTimeoutError."""
    with unaccepting_port() as port, httpx.Client(trust_env=False) as client:
        exc = raised(lambda: client.get(f"http://{HOST}:{port}/", timeout=0.2))

    assert type(exc) is httpx.ConnectTimeout
    assert classify(exc) is errors.ModuleTimeoutError


def test_requests_connect_timeout_is_a_timeout_not_a_connection_error() -> None:
    """requests.ConnectTimeout, also a requests.ConnectionError: the timeout wins."""
    with unaccepting_port() as port, requests.Session() as session:
        session.trust_env = False
        exc = raised(lambda: session.get(f"http://{HOST}:{port}/", timeout=0.2))

    assert type(exc) is requests.ConnectTimeout
    assert isinstance(exc, requests.ConnectionError)
    assert classify(exc) is errors.ModuleTimeoutError


def test_httpx_body_cut_short(http: HTTPServer) -> None:
    """httpx.RemoteProtocolError from a body cut short is ConnectionError."""
    url = http.reply("/cut/httpx", 200, body=b"partial", truncate=True)

    with httpx.Client(trust_env=False, timeout=5) as client:
        exc = raised(lambda: client.get(url))

    assert type(exc) is httpx.RemoteProtocolError
    assert classify(exc) is errors.ConnectionError


def test_requests_body_cut_short(http: HTTPServer) -> None:
    """requests' ChunkedEncodingError from a body cut short is ConnectionError."""
    url = http.reply("/cut/requests", 200, body=b"partial", truncate=True)

    with requests.Session() as session:
        session.trust_env = False
        exc = raised(lambda: session.get(url, timeout=5))

    assert type(exc) is requests.exceptions.ChunkedEncodingError
    assert classify(exc) is errors.ConnectionError


@pytest.mark.parametrize(
    ("url", "exc_type"),
    [
        ("ftp://127.0.0.1/file", httpx.UnsupportedProtocol),
        ("127.0.0.1/no-scheme", httpx.UnsupportedProtocol),
        ("http://[::1", httpx.InvalidURL),
    ],
)
def test_httpx_unusable_url(url: str, exc_type: type[Exception]) -> None:
    """An httpx URL that cannot be used is InvalidConfigurationError."""
    with httpx.Client(trust_env=False) as client:
        exc = raised(lambda: client.get(url))

    assert type(exc) is exc_type
    assert classify(exc) is errors.InvalidConfigurationError


@pytest.mark.parametrize(
    ("url", "exc_type"),
    [
        ("ftp://127.0.0.1/file", requests.exceptions.InvalidSchema),
        ("127.0.0.1/no-scheme", requests.exceptions.MissingSchema),
        ("http://", requests.exceptions.InvalidURL),
    ],
)
def test_requests_unusable_url(url: str, exc_type: type[Exception]) -> None:
    """A requests URL that cannot be used is InvalidConfigurationError."""
    with requests.Session() as session:
        session.trust_env = False
        exc = raised(lambda: session.get(url))

    assert type(exc) is exc_type
    assert classify(exc) is errors.InvalidConfigurationError


# smtplib -------------------------------------------------------------------


class Refusing:
    """An aiosmtpd handler that refuses a sender, recipients or the message."""

    def __init__(self, mail: str = "", rcpt: str = "", data: str = "") -> None:
        self.mail, self.rcpt, self.data = mail, rcpt, data

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        envelope.mail_from = address
        return self.mail or "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        envelope.rcpt_tos.append(address)
        return self.rcpt or "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return self.data or "250 OK"


def refuse_login(*args: Any) -> AuthResult:
    return AuthResult(success=False, handled=False)


def send(port: int) -> BaseException:
    with smtplib.SMTP(HOST, port, timeout=5) as client:
        return raised(lambda: client.sendmail("from@example.org", ["to@a.test"], "Hi"))


def test_smtp_closed_port() -> None:
    """smtplib to a closed port raises ConnectionRefusedError: ConnectionError."""
    exc = raised(lambda: smtplib.SMTP(HOST, closed_port(), timeout=5))

    assert type(exc) is ConnectionRefusedError
    assert classify(exc) is errors.ConnectionError


def test_smtp_greeting_refused() -> None:
    """smtplib.SMTPConnectError from a 554 greeting is ConnectionError."""
    with LineServer("554 No service here") as server:
        exc = raised(lambda: smtplib.SMTP(HOST, server.port, timeout=5))

    assert type(exc) is smtplib.SMTPConnectError
    assert classify(exc) is errors.ConnectionError


def test_smtp_server_hangs_up() -> None:
    """smtplib.SMTPServerDisconnected from a server that hangs up: ConnectionError."""
    with LineServer(greeting=None) as server:
        exc = raised(lambda: smtplib.SMTP(HOST, server.port, timeout=5))

    assert type(exc) is smtplib.SMTPServerDisconnected
    assert classify(exc) is errors.ConnectionError


def test_smtp_login_refused() -> None:
    """smtplib.SMTPAuthenticationError from aiosmtpd is InvalidAccessTokenError."""
    options = {"authenticator": refuse_login, "auth_require_tls": False}
    with smtp_server(Refusing(), **options) as port, smtplib.SMTP(HOST, port) as client:
        exc = raised(lambda: client.login("user", "wrong"))

    assert type(exc) is smtplib.SMTPAuthenticationError
    assert classify(exc) is errors.InvalidAccessTokenError


def test_smtp_login_not_supported() -> None:
    """smtplib.SMTPNotSupportedError (no AUTH offered) is InvalidConfigurationError."""
    with smtp_server(Refusing()) as port, smtplib.SMTP(HOST, port) as client:
        exc = raised(lambda: client.login("user", "secret"))

    assert type(exc) is smtplib.SMTPNotSupportedError
    assert classify(exc) is errors.InvalidConfigurationError


@pytest.mark.parametrize(
    ("handler", "exc_type", "kind"),
    [
        pytest.param(
            Refusing(rcpt="550 No such user"),
            smtplib.SMTPRecipientsRefused,
            errors.DataError,
            id="rcpt-550",
        ),
        pytest.param(
            Refusing(rcpt="451 Try again later"),
            smtplib.SMTPRecipientsRefused,
            errors.ConnectionError,
            id="rcpt-451",
        ),
        pytest.param(
            Refusing(mail="553 Sender not allowed"),
            smtplib.SMTPSenderRefused,
            errors.DataError,
            id="mail-553",
        ),
        pytest.param(
            Refusing(mail="451 Try again later"),
            smtplib.SMTPSenderRefused,
            errors.ConnectionError,
            id="mail-451",
        ),
        pytest.param(
            Refusing(data="554 Message rejected"),
            smtplib.SMTPDataError,
            errors.DataError,
            id="data-554",
        ),
        pytest.param(
            Refusing(data="452 Insufficient storage"),
            smtplib.SMTPDataError,
            errors.ConnectionError,
            id="data-452",
        ),
    ],
)
def test_smtp_refusals(
    handler: Refusing, exc_type: type[Exception], kind: type[errors.StepError]
) -> None:
    """An SMTP refusal is ConnectionError when temporary (4xx), else DataError."""
    with smtp_server(handler) as port:
        exc = send(port)

    assert type(exc) is exc_type
    assert classify(exc) is kind


# ftplib --------------------------------------------------------------------

LOGGED_IN = {"USER": "331 Password required.", "PASS": "230 Logged in."}


def ftp(port: int) -> ftplib.FTP:
    client = ftplib.FTP()
    client.connect(HOST, port, timeout=5)
    return client


def test_ftp_temporary_reply() -> None:
    """ftplib.error_temp from a 421 greeting is ConnectionError."""
    with LineServer("421 Too many users, try later.") as server:
        exc = raised(lambda: ftp(server.port))

    assert type(exc) is ftplib.error_temp
    assert classify(exc) is errors.ConnectionError


def test_ftp_not_logged_in() -> None:
    """ftplib.error_perm 530 on login is InvalidAccessTokenError."""
    with LineServer("220 Ready", {"USER": "530 Login incorrect."}) as server:
        client = ftp(server.port)
        exc = raised(lambda: client.login("user", "wrong"))
        client.close()

    assert type(exc) is ftplib.error_perm
    assert classify(exc) is errors.InvalidAccessTokenError


def test_ftp_permanent_reply() -> None:
    """ftplib.error_perm 550 (no such file) is DataError."""
    replies = {**LOGGED_IN, "CWD": "550 No such directory."}
    with LineServer("220 Ready", replies) as server:
        client = ftp(server.port)
        client.login("user", "secret")
        exc = raised(lambda: client.cwd("missing"))
        client.close()

    assert type(exc) is ftplib.error_perm
    assert classify(exc) is errors.DataError


@pytest.mark.parametrize(
    ("reply", "exc_type"),
    [("999 What is this", ftplib.error_proto), ("331 Odd", ftplib.error_reply)],
)
def test_ftp_unexpected_reply(reply: str, exc_type: type[Exception]) -> None:
    """ftplib.error_proto and error_reply (a reply out of place) are UnexpectedError."""
    with LineServer("220 Ready", {"NOOP": reply}) as server:
        client = ftp(server.port)
        exc = raised(lambda: client.voidcmd("NOOP"))
        client.close()

    assert type(exc) is exc_type
    assert classify(exc) is errors.UnexpectedError


# Built-in OS errors --------------------------------------------------------


def test_connection_refused() -> None:
    """A real ConnectionRefusedError is ConnectionError."""
    exc = refused_connection()

    assert classify(exc) is errors.ConnectionError


def test_connection_reset() -> None:
    """A real ConnectionResetError (the peer sent RST) is ConnectionError."""
    with socket.create_server((HOST, 0)) as listener, socket.socket() as client:
        client.connect(listener.getsockname())
        peer, _ = listener.accept()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        exc = raised(lambda: client.recv(1))

    assert type(exc) is ConnectionResetError
    assert classify(exc) is errors.ConnectionError


@pytest.mark.parametrize(
    "exc",
    [
        socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        socket.herror(1, "Unknown host"),
    ],
)
def test_name_resolution_failure(exc: OSError) -> None:
    """socket.gaierror and herror are ConnectionError (built: no DNS is queried)."""
    assert classify(exc) is errors.ConnectionError


@pytest.mark.parametrize("code", [errno.ENETUNREACH, errno.EHOSTUNREACH])
def test_no_route(code: int) -> None:
    """An OSError for no route is ConnectionError (built: loopback always routes)."""
    assert classify(OSError(code, "No route")) is errors.ConnectionError


def test_socket_timeout() -> None:
    """A real socket timeout (TimeoutError) is ModuleTimeoutError."""
    with (
        LineServer("220 Ready") as server,
        socket.create_connection((HOST, server.port)) as client,
    ):
        client.recv(100)
        client.settimeout(0.05)
        exc = raised(lambda: client.recv(100))

    assert type(exc) is TimeoutError
    assert classify(exc) is errors.ModuleTimeoutError


async def test_asyncio_timeout() -> None:
    """A real asyncio.wait_for timeout is ModuleTimeoutError."""
    with pytest.raises(asyncio.TimeoutError) as caught:
        await asyncio.wait_for(asyncio.sleep(5), timeout=0.01)

    assert classify(caught.value) is errors.ModuleTimeoutError


def test_prefect_task_run_timeout() -> None:
    """Prefect's TaskRunTimeoutError is ModuleTimeoutError (built: flows test it)."""
    exc = TaskRunTimeoutError("Scope timed out after 1 second(s).")

    detail = classify_detail(exc)

    assert detail is not None
    assert detail.kind is errors.ModuleTimeoutError
    assert detail.rule == "prefect.task_engine.TaskRunTimeoutError"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_disk_full() -> None:
    """Writing to /dev/full raises ENOSPC: OutOfSpaceError."""
    with open("/dev/full", "wb", buffering=0) as full:
        exc = raised(lambda: full.write(b"x"))

    assert isinstance(exc, OSError)
    assert exc.errno == errno.ENOSPC
    assert classify(exc) is errors.OutOfSpaceError


def test_quota_exceeded() -> None:
    """An EDQUOT OSError is OutOfSpaceError (built: this machine has no quotas)."""
    exc = OSError(errno.EDQUOT, "Disk quota exceeded")

    assert classify(exc) is errors.OutOfSpaceError


# SQLAlchemy and pydantic ---------------------------------------------------


def test_sqlite_cannot_open(tmp_path: Path) -> None:
    """sqlalchemy OperationalError (database cannot be opened) is ConnectionError."""
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'missing' / 'db'}")

    exc = raised(engine.connect)
    engine.dispose()

    assert type(exc) is sqlalchemy.exc.OperationalError
    assert classify(exc) is errors.ConnectionError


def test_sqlalchemy_disconnection() -> None:
    """sqlalchemy DisconnectionError is ConnectionError.

    Built, not raised: the pool catches it from checkout handlers and retries.
    """
    exc = sqlalchemy.exc.DisconnectionError("connection dropped")

    assert classify(exc) is errors.ConnectionError


def test_sqlalchemy_pool_timeout(tmp_path: Path) -> None:
    """sqlalchemy TimeoutError (no pooled connection free) is ModuleTimeoutError."""
    engine = sqlalchemy.create_engine(
        f"sqlite:///{tmp_path / 'db'}",
        poolclass=QueuePool,
        pool_size=1,
        max_overflow=0,
        pool_timeout=0.05,
    )

    with engine.connect():
        exc = raised(engine.connect)
    engine.dispose()

    assert type(exc) is sqlalchemy.exc.TimeoutError
    assert classify(exc) is errors.ModuleTimeoutError


def test_sqlalchemy_integrity() -> None:
    """sqlalchemy IntegrityError (a unique constraint) is DataError."""
    engine = sqlalchemy.create_engine("sqlite://")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (id INTEGER UNIQUE)")
        connection.exec_driver_sql("INSERT INTO t VALUES (1)")
        exc = raised(lambda: connection.exec_driver_sql("INSERT INTO t VALUES (1)"))
    engine.dispose()

    assert type(exc) is sqlalchemy.exc.IntegrityError
    assert classify(exc) is errors.DataError


class Row(pydantic.BaseModel):
    id: int
    email: str


def test_pydantic_validation() -> None:
    """A pydantic model rejecting a row is DataError."""
    exc = raised(lambda: Row.model_validate({"id": "one", "email": None}))

    assert type(exc) is pydantic.ValidationError
    assert classify(exc) is errors.DataError


# Our own kinds -------------------------------------------------------------


class BadRowError(errors.DataError):
    """A user's own, more precise DataError."""


@pytest.mark.parametrize(
    "exc",
    [errors.DataError("bad row"), errors.OutOfSpaceError("full"), BadRowError("x")],
)
def test_own_kind_is_itself(exc: errors.StepError) -> None:
    """An exception that already is a kind classifies as its own class."""
    assert classify(exc) is type(exc)


def test_own_rate_limit_keeps_retry_after() -> None:
    """A raised RateLimitError keeps its retry_after."""
    exc = errors.RateLimitError("slow down", retry_after=5)

    assert classify_detail(exc) == Classification(
        errors.RateLimitError, 5.0, default_rules()[0].description, exc
    )


def test_own_kind_beats_user_rules(rules: Callable[..., Rule]) -> None:
    """A user rule for ValueError does not reclassify DataError, a ValueError."""
    rules(ValueError, errors.ConnectionError)

    assert classify(errors.DataError("bad row")) is errors.DataError


# Chains --------------------------------------------------------------------


def test_own_kind_raised_from_http_error(http: HTTPServer) -> None:
    """`raise DataError from an httpx error` is the DataError: the outer wins."""
    cause = httpx_error(http.reply("/chain/503", 503))
    exc = errors.DataError("the service refused the row")
    exc.__cause__ = cause

    detail = classify_detail(exc)

    assert detail is not None
    assert (detail.kind, detail.exception) == (errors.DataError, exc)


def test_cause_classifies_unclassified_wrapper() -> None:
    """`raise RuntimeError() from ConnectionRefusedError()` classifies by cause."""
    cause = refused_connection()
    exc = raised(lambda: _raise(RuntimeError("wrapped"), cause))

    detail = classify_detail(exc)

    assert detail is not None
    assert (detail.kind, detail.exception) == (errors.ConnectionError, cause)


def test_cause_of_cause() -> None:
    """The walk goes past an unclassified cause to the next one."""
    root = refused_connection()
    middle = KeyError("lookup")
    middle.__cause__ = root
    exc = RuntimeError("outer")
    exc.__cause__ = middle

    assert classify(exc) is errors.ConnectionError


def test_outer_beats_cause() -> None:
    """An outer exception a rule matches wins over its cause."""
    exc = TimeoutError("gave up")
    exc.__cause__ = refused_connection()

    assert classify(exc) is errors.ModuleTimeoutError


def raise_while_handling(error: BaseException) -> None:
    try:
        raise error
    except type(error):
        raise RuntimeError("while handling")  # noqa: B904  # the context is the point


def test_context_is_not_followed() -> None:
    """An exception raised while handling another is not classified by it."""
    with pytest.raises(RuntimeError) as caught:
        raise_while_handling(refused_connection())

    assert isinstance(caught.value.__context__, ConnectionRefusedError)
    assert caught.value.__cause__ is None
    assert classify(caught.value) is None


def test_cause_cycle_ends() -> None:
    """A cycle of causes ends the walk instead of looping."""
    first, second = RuntimeError("first"), KeyError("second")
    first.__cause__, second.__cause__ = second, first

    assert classify(first) is None


def test_unclassified() -> None:
    """An exception no rule matches is unclassified: None."""
    assert classify(KeyError("missing")) is None
    assert classify_detail(KeyError("missing")) is None


def _raise(exc: BaseException, cause: BaseException) -> None:
    raise exc from cause


# User rules ----------------------------------------------------------------


class TeapotError(KeyError):
    """A KeyError subclass, to match by a base class."""


def test_user_rule_by_type(rules: Callable[..., Rule]) -> None:
    """A rule for a type matches it and its subclasses."""
    rule = rules(KeyError, errors.DataError)

    assert classify(KeyError("k")) is errors.DataError
    assert classify(TeapotError("t")) is errors.DataError
    assert str(rule) == rule.description == "user rule: builtins.KeyError"


def test_user_rule_by_name(rules: Callable[..., Rule]) -> None:
    """A rule for a dotted name matches that class and its subclasses."""
    rules("builtins.KeyError", errors.DataError)

    assert classify(KeyError("k")) is errors.DataError
    assert classify(TeapotError("t")) is errors.DataError


def test_user_rule_by_reexported_name(
    http: HTTPServer, rules: Callable[..., Rule]
) -> None:
    """A name a library re-exports (requests.HTTPError) matches its class."""
    assert requests.HTTPError.__module__ == "requests.exceptions"
    rules("requests.HTTPError", errors.MaxResultsExceededError)

    exc = requests_error(http.reply("/named/500", 500))

    assert classify(exc) is errors.MaxResultsExceededError


def test_user_rule_by_reexported_name_of_private_module(
    rules: Callable[..., Rule],
) -> None:
    """pydantic_core.ValidationError, defined in pydantic_core._pydantic_core."""
    assert pydantic.ValidationError.__module__ == "pydantic_core._pydantic_core"
    rules("pydantic_core.ValidationError", errors.MaxResultsExceededError)

    exc = raised(lambda: Row.model_validate({"id": "one"}))

    assert classify(exc) is errors.MaxResultsExceededError


def test_user_rule_by_defining_module_name(rules: Callable[..., Rule]) -> None:
    """The defining module's name matches where a library renames __module__."""
    assert httpx.ConnectError.__module__ == "httpx"  # httpx rewrites it
    rules("httpx._exceptions.ConnectError", errors.InvalidConfigurationError)

    exc = httpx_error(f"http://{HOST}:{closed_port()}/")

    assert classify(exc) is errors.InvalidConfigurationError


def test_user_rule_for_missing_library_is_inactive(rules: Callable[..., Rule]) -> None:
    """A name in a library that is not installed matches nothing."""
    rules("not_a_library_here.Error", errors.DataError)

    assert classify(KeyError("k")) is None
    assert "not_a_library_here" not in sys.modules


def test_user_rule_by_predicate(rules: Callable[..., Rule]) -> None:
    """A predicate rule matches when it returns True."""
    rule = rules(lambda exc: "quota" in str(exc), errors.OutOfSpaceError)

    assert classify(RuntimeError("quota used up")) is errors.OutOfSpaceError
    assert classify(RuntimeError("other")) is None
    assert rule.description.startswith("user rule: ")
    assert rule.description.endswith("by_predicate.<locals>.<lambda>(exc)")


def test_raising_predicate_is_no_match(rules: Callable[..., Rule]) -> None:
    """A predicate that raises does not match; the defaults still apply."""
    rules(lambda exc: exc.response.status_code == 418, errors.DataError)

    assert classify(refused_connection()) is errors.ConnectionError


def test_user_rule_beats_default(rules: Callable[..., Rule]) -> None:
    """A user rule is tried before the defaults."""
    rule = rules(ConnectionRefusedError, errors.InvalidConfigurationError)
    exc = refused_connection()

    assert classify_detail(exc) == Classification(
        errors.InvalidConfigurationError, None, rule.description, exc
    )


def test_newest_user_rule_first(rules: Callable[..., Rule]) -> None:
    """Of two user rules that match, the newer one wins."""
    rules(KeyError, errors.DataError)
    rules(KeyError, errors.UnexpectedError)

    assert classify(KeyError("k")) is errors.UnexpectedError


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(lambda exc: 3, 3.0), (lambda exc: -1, 0.0), (lambda exc: 1 / 0, None)],
)
def test_user_rule_retry_after(
    rules: Callable[..., Rule],
    retry_after: Callable[[BaseException], float],
    expected: float | None,
) -> None:
    """A user RateLimitError rule's retry_after gives seconds, never negative."""
    rules(KeyError, errors.RateLimitError, retry_after=retry_after)

    detail = classify_detail(KeyError("k"))

    assert detail is not None
    assert (detail.kind, detail.retry_after) == (errors.RateLimitError, expected)


def test_remove_rule() -> None:
    """A removed rule no longer applies; removing it twice is a ValueError."""
    rule = add_rule(KeyError, errors.DataError)
    remove_rule(rule)

    assert classify(KeyError("k")) is None
    with pytest.raises(ValueError, match="not a rule added"):
        remove_rule(rule)


def test_default_rule_cannot_be_removed() -> None:
    """Removing a default rule is a ValueError that says what to do instead."""
    with pytest.raises(ValueError, match=r"default rule.*add a rule"):
        remove_rule(default_rules()[1])


async def _async_predicate(exc: BaseException) -> bool:
    return True


@pytest.mark.parametrize(
    ("match", "kind", "options", "message"),
    [
        (42, errors.DataError, {}, "exception class, a dotted class name"),
        (int, errors.DataError, {}, "not an exception class"),
        (KeyError("k"), errors.DataError, {}, "exception class, a dotted class name"),
        (_async_predicate, errors.DataError, {}, r"plain \(not async\) function"),
        (KeyError, errors.StepError, {}, "base of all kinds"),
        (KeyError, ValueError, {}, "kind must be a kind"),
        (KeyError, "DataError", {}, "kind must be a kind"),
        (KeyError, errors.DataError, {"retry_after": 5}, "retry_after must be"),
        (KeyError, errors.DataError, {"retry_after": float}, "only to RateLimitError"),
    ],
)
def test_bad_rule_is_a_type_error(
    match: Any, kind: Any, options: dict[str, Any], message: str
) -> None:
    """A rule with a wrong match, kind or retry_after fails at add_rule."""
    with pytest.raises(TypeError, match=message):
        add_rule(match, kind, **options)


@pytest.mark.parametrize("name", ["KeyError", "not a name", "builtins.", "a..b", ""])
def test_bad_name_is_a_value_error(name: str) -> None:
    """A string that is not a dotted class name fails at add_rule."""
    with pytest.raises(ValueError, match="not a dotted class name"):
        add_rule(name, errors.DataError)


# The module and its documentation -----------------------------------------

ISOLATED_IMPORT = """
import sys, types
package = types.ModuleType("prefect_incomplete")
package.__path__ = [{path!r}]
sys.modules["prefect_incomplete"] = package
before = set(sys.modules)
from prefect_incomplete import _classify, errors
_classify.add_rule("smtplib.SMTPException", errors.DataError)
assert _classify.classify(OSError("x")) is None
print(" ".join(sorted(set(sys.modules) - before)))
"""


def test_import_loads_no_library() -> None:
    """Importing and using the module imports no HTTP, database or mail library."""
    package = ROOT / "prefect_incomplete"
    # The package is replaced by an empty one so that only this module's own
    # imports count, whatever prefect_incomplete/__init__.py imports.
    code = ISOLATED_IMPORT.format(path=str(package))

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    loaded = set(result.stdout.split())
    heavy = {"httpx", "requests", "sqlalchemy", "pydantic", "pydantic_core"}
    assert loaded & (heavy | {"prefect", "smtplib", "ftplib"}) == set()


def unquote(markdown: str) -> str:
    return markdown.replace("`", "")


def documented_rows() -> list[tuple[str, str, str]]:
    text = (ROOT / "docs" / "classification.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    cells = [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]
    return [
        (unquote(what), unquote(kind), unquote(note)) for what, kind, note in cells[1:]
    ]


def test_docs_list_every_default_rule() -> None:
    """docs/classification.md has one row per default rule, in order."""

    def kind_name(rule: Rule) -> str:
        return "itself" if rule.kind is errors.StepError else rule.kind.__name__

    expected = [(r.description, kind_name(r), r.note) for r in default_rules()]

    assert documented_rows() == expected
