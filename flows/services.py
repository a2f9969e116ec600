"""Loopback stand-ins for the services the example flow talks to.

`OrdersAPI` is a small HTTP orders API on 127.0.0.1 that misbehaves the way
real ones do, on purpose and on a script:

- the first `rate_limited` requests get ``429 Too Many Requests`` with
  ``Retry-After: 1``;
- once `outage_after` orders were accepted, it is down (``503``) for
  `outage_seconds` seconds, or for `outage_requests` requests, or until
  `end_outage()` is called;
- an order id it accepted before gets ``409 Conflict``: a duplicate post
  never goes unnoticed.

It keeps two logs: every request with the status it got (`requests`), and
every accepted order (`accepted`), so a demo or a test can show that each
order was posted exactly once.

`MailServer` is an SMTP server (aiosmtpd) whose port is chosen when it is
made but opened only by `start()`: until then a client gets "connection
refused".
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

__all__ = ["MailServer", "OrdersAPI", "Request", "free_port"]

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class Request:
    """One request the orders API answered."""

    at: float
    """Seconds since the API started."""

    order_id: str
    status: int


class OrdersAPI:
    """The orders API: ``POST /orders`` takes an order, ``GET /orders`` lists them."""

    def __init__(
        self,
        *,
        port: int = 0,
        rate_limited: int = 1,
        outage_after: int | None = None,
        outage_seconds: float | None = None,
        outage_requests: int | None = None,
    ) -> None:
        self.rate_limited = rate_limited
        self.outage_after = outage_after
        self.outage_seconds = outage_seconds
        self.outage_requests = outage_requests
        self.requests: list[Request] = []
        self.accepted: list[dict[str, Any]] = []
        self.outage_started: float | None = None
        self._outage_over = False
        self._outage_answers = 0
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._server = ThreadingHTTPServer((HOST, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:8123``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        """Serve in a background thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="orders-api", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def end_outage(self) -> None:
        """End the outage now (or prevent it, if it has not started)."""
        with self._lock:
            self._outage_over = True

    @property
    def outage_over(self) -> bool:
        """Whether the outage happened and ended."""
        with self._lock:
            return self._outage_over and self.outage_started is not None

    def orders(self) -> list[dict[str, Any]]:
        """The accepted orders, in the order they came."""
        with self._lock:
            return list(self.accepted)

    def posts(self) -> Counter[str]:
        """How many times each order id was accepted."""
        with self._lock:
            return Counter(order["order_id"] for order in self.accepted)

    def answers(self, order_id: str) -> list[int]:
        """The statuses the API answered for one order id, in order."""
        with self._lock:
            return [r.status for r in self.requests if r.order_id == order_id]

    def answer(self, order: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
        """Status, JSON body and Retry-After (0: none) for a posted order."""
        order_id = str(order.get("order_id", ""))
        with self._lock:
            status, body, retry_after = self._decide(order)
            self.requests.append(
                Request(time.monotonic() - self._started, order_id, status)
            )
        return status, body, retry_after

    def _decide(self, order: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
        order_id = order.get("order_id")
        if len(self.requests) < self.rate_limited:
            return 429, {"error": "too many requests, slow down"}, 1.0
        if self._in_outage():
            return 503, {"error": "service unavailable, back soon"}, 0.0
        if not isinstance(order_id, str) or not order_id:
            return 422, {"error": "an order needs an order_id"}, 0.0
        if any(known["order_id"] == order_id for known in self.accepted):
            return 409, {"error": f"order {order_id} was already accepted"}, 0.0

        self.accepted.append(order)
        confirmation = f"C-{len(self.accepted):04d}"
        return 201, {"order_id": order_id, "confirmation": confirmation}, 0.0

    def _in_outage(self) -> bool:
        if self._outage_over or self.outage_after is None:
            return False
        if len(self.accepted) < self.outage_after:
            return False

        now = time.monotonic()
        if self.outage_started is None:
            self.outage_started = now
        seconds_up = (
            self.outage_seconds is not None
            and now - self.outage_started >= self.outage_seconds
        )
        requests_up = (
            self.outage_requests is not None
            and self._outage_answers >= self.outage_requests
        )
        if seconds_up or requests_up:
            self._outage_over = True
            return False

        self._outage_answers += 1
        return True


def _handler_for(api: OrdersAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/orders":
                self._reply(404, {"error": f"no such resource {self.path}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                order = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._reply(400, {"error": "the body is not JSON"})
                return
            if not isinstance(order, dict):
                self._reply(400, {"error": "an order is a JSON object"})
                return

            status, body, retry_after = api.answer(order)
            self._reply(status, body, retry_after)

        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/orders":
                self._reply(404, {"error": f"no such resource {self.path}"})
                return
            self._reply(200, {"orders": api.orders()})

        def _reply(
            self, status: int, body: dict[str, Any], retry_after: float = 0.0
        ) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if retry_after:
                self.send_header("Retry-After", f"{retry_after:g}")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the API keeps its own log in `OrdersAPI.requests`."""

    return Handler


class _Inbox:
    """The aiosmtpd handler: keep every message that arrives."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.original_content))
        return "250 Message accepted for delivery"


class MailServer:
    """An SMTP server on 127.0.0.1 that listens only once started.

    As a context manager it is not started on entry (the port stays closed
    until `start()`) and is stopped on exit.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._inbox = _Inbox()
        self._controller: Any = None

    @property
    def messages(self) -> list[Message]:
        """Every message received so far."""
        return list(self._inbox.messages)

    @property
    def running(self) -> bool:
        """Whether the port is open."""
        return self._controller is not None

    def start(self) -> Self:
        """Open the port and accept mail."""
        from aiosmtpd.controller import Controller

        controller = Controller(self._inbox, hostname=HOST, port=self.port)
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        """Close the port again; a client gets "connection refused"."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
