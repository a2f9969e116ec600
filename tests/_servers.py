"""Loopback servers for tests, each on 127.0.0.1, port 0, in a daemon thread.

- `HTTPServer`: answers each path with the reply set for it (status, headers,
  body, a delay before answering, or a body cut short).
- `LineServer`: a line protocol server (FTP or SMTP shaped) that sends a
  greeting, then one scripted reply per command verb.
- `smtp_server`: a real aiosmtpd server with a handler of the test's choice.
- `closed_port` and `unaccepting_port`: ports that refuse, or never accept.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Reply:
    """What `HTTPServer` answers on one path."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0
    """Seconds to wait before answering (ended early when the server stops)."""
    truncate: bool = False
    """Announce a longer body than is sent, then close the connection."""


class HTTPServer:
    """A threaded loopback HTTP server whose reply per path can be set."""

    def __init__(self) -> None:
        self.replies: dict[str, Reply] = {}
        self.stopping = threading.Event()
        self._server = http.server.ThreadingHTTPServer((HOST, 0), _Handler)
        self._server.daemon_threads = True
        self._server.owner = self  # type: ignore[attr-defined]  # read by _Handler
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def reply(self, path: str, status: int = 200, **options: Any) -> str:
        """Answer `path` with `status` (and `Reply` options); returns its URL."""
        self.replies[path] = Reply(status, **options)
        return self.url(path)

    def __enter__(self) -> HTTPServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the tests read exceptions, not access logs."""

    def _answer(self) -> None:
        owner: HTTPServer = self.server.owner  # type: ignore[attr-defined]
        self._read_body()
        reply = owner.replies.get(self.path, Reply(404))
        if reply.delay and owner.stopping.wait(reply.delay):
            return

        try:
            self._send(reply)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _read_body(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)

        announced = len(reply.body) + (100 if reply.truncate else 0)
        self.send_header("Content-Length", str(announced))
        self.end_headers()
        self.wfile.write(reply.body)
        self.wfile.flush()
        if reply.truncate:
            self.close_connection = True


class LineServer:
    """A loopback server for line protocols such as FTP and SMTP.

    On each connection it sends `greeting` (or, when it is None, closes at
    once), then answers each line with the reply set for its first word, or
    `default` for other commands.
    """

    def __init__(
        self,
        greeting: str | None,
        replies: Mapping[str, str] | None = None,
        default: str = "500 Unknown command.",
    ) -> None:
        self.greeting = greeting
        self.replies = {verb.upper(): reply for verb, reply in (replies or {}).items()}
        self.default = default
        self._listener = socket.create_server((HOST, 0))
        self._listener.settimeout(0.1)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def __enter__(self) -> LineServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._talk, args=(connection,), daemon=True).start()

    def _talk(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            if self.greeting is None:
                return
            connection.sendall(f"{self.greeting}\r\n".encode())
            for line in connection.makefile("rb"):
                verb = line.decode(errors="replace").split(" ", 1)[0].strip().upper()
                reply = self.replies.get(verb, self.default)
                connection.sendall(f"{reply}\r\n".encode())


def closed_port() -> int:
    """A loopback port that was just bound and closed: connecting is refused."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def unaccepting_port() -> Iterator[int]:
    """A loopback port whose accept queue is full, so connecting times out."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    waiting: list[socket.socket] = []
    try:
        while True:
            client = socket.socket()
            client.settimeout(0.2)
            try:
                client.connect((HOST, port))
            except TimeoutError:
                client.close()
                break
            waiting.append(client)
        yield port
    finally:
        for client in waiting:
            client.close()
        listener.close()


@contextlib.contextmanager
def smtp_server(handler: object, **smtp_options: Any) -> Iterator[int]:
    """A real aiosmtpd server on loopback with `handler`; yields its port."""
    from aiosmtpd.controller import Controller

    controller = Controller(handler, hostname=HOST, port=_free_port(), **smtp_options)
    controller.start()
    try:
        yield int(controller.port)
    finally:
        controller.stop()


def _free_port() -> int:
    # aiosmtpd's Controller checks readiness by connecting to its port, so it
    # cannot take port 0: take a port the system just handed out instead.
    return closed_port()
