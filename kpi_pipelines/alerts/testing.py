"""Local stand-ins for the notification channels, for tests and trials (stdlib only):

- `FakeHTTPServer`: answers like Slack's Web API (`POST /api/chat.postMessage` →
  `{"ok": true, "ts": ...}`) or like any webhook receiver; records every request with its
  parsed JSON or form body; can be told to answer 429 with Retry-After, 500, or be stopped
  (connections refused) and started again on the same port.
- `FakeSMTPServer`: a minimal SMTP responder recording each message; can refuse mail or be
  stopped.

    with FakeHTTPServer() as slack:
        os.environ["KPI_SLACK_BASE_URL"] = slack.base_url   # http://127.0.0.1:PORT/api/
"""

from __future__ import annotations

import email
import email.policy
import json
import socket
import socketserver
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    path: str
    status: int
    headers: dict[str, str]  # names lower-cased
    body: Any  # parsed JSON, or the form fields, or the text
    at: float = field(default_factory=time.monotonic)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _BackgroundServer:
    """A socketserver answering on a daemon thread; `stop()` closes it, so connections are
    refused until `start()` again."""

    _server: socketserver.BaseServer | None = None
    _thread: threading.Thread | None = None

    def start(self) -> "_BackgroundServer":
        raise NotImplementedError

    def _serve(self, server: socketserver.BaseServer) -> None:
        server.daemon_threads = True  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening: connections are refused until `start()`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FakeHTTPServer(_BackgroundServer):
    """A thread running http.server on 127.0.0.1 that answers like Slack's Web API."""

    def __init__(self, port: int | None = None):
        self.port = port or _free_port()
        self.requests: list[Recorded] = []
        self.script: deque[tuple[int, dict[str, str], dict[str, Any]]] = deque()
        self._lock = threading.Lock()
        self._ts = 0

    # -- control --------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def answer(self, status: int, retry_after: int | None = None, times: int = 1, error: str | None = None) -> None:
        """The next `times` requests get `status` (e.g. 429 with Retry-After, or 500)."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        body = {"ok": status == 200, **({"error": error or ("ratelimited" if status == 429 else "internal_error")} if status != 200 else {})}
        for _ in range(times):
            self.script.append((status, headers, body))

    def start(self) -> FakeHTTPServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8", "replace")
                kind = self.headers.get("Content-Type", "")
                if "json" in kind:
                    body: Any = json.loads(raw or "null")
                elif "x-www-form-urlencoded" in kind:
                    body = {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}
                    if isinstance(body.get("blocks"), str):
                        body["blocks"] = json.loads(body["blocks"])
                else:
                    body = raw
                with owner._lock:
                    status, headers, answer = owner.script.popleft() if owner.script else (200, {}, None)
                    if answer is None:
                        owner._ts += 1
                        answer = {"ok": True, "channel": (body or {}).get("channel") if isinstance(body, dict) else None,
                                  "ts": f"1700000000.{owner._ts:06d}"}
                    owner.requests.append(Recorded(self.path, status, {k.lower(): v for k, v in self.headers.items()}, body))
                data = json.dumps(answer).encode()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._serve(ThreadingHTTPServer(("127.0.0.1", self.port), Handler))
        return self

    # -- what was received ----------------------------------------------------------------
    def posts(self, method: str = "chat.postMessage") -> list[Recorded]:
        """Every attempt at `method` (Slack) with its answer's status."""
        return [r for r in self.requests if r.path.endswith(method)]

    @property
    def delivered(self) -> list[Any]:
        """Bodies of the requests that were answered 200 (for Slack: chat.postMessage)."""
        return [r.body for r in self.requests if r.status == 200]


class _ReusableTCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class FakeSMTPServer(_BackgroundServer):
    """A minimal SMTP server on 127.0.0.1 that records each message (`messages`, parsed)."""

    def __init__(self, port: int | None = None):
        self.port = port or _free_port()
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.refuse = 0  # answer 451 to the next N MAIL FROM commands

    def start(self) -> FakeSMTPServer:
        owner = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str) -> None:
                self.wfile.write((line + "\r\n").encode())
                self.wfile.flush()

            def handle(self) -> None:
                self.reply("220 fake-smtp ready")
                sender, recipients = "", []
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    command = line.decode("utf-8", "replace").strip()
                    verb = command[:4].upper()
                    if verb == "EHLO":
                        self.reply("250-fake-smtp")
                        self.reply("250-8BITMIME")
                        self.reply("250 SMTPUTF8")
                    elif verb == "HELO":
                        self.reply("250 fake-smtp")
                    elif verb == "MAIL":
                        if owner.refuse > 0:
                            owner.refuse -= 1
                            self.reply("451 try again later")
                            continue
                        sender, recipients = command.split(":", 1)[1].strip().split()[0].strip("<>"), []
                        self.reply("250 OK")
                    elif verb == "RCPT":
                        recipients.append(command.split(":", 1)[1].strip().strip("<>"))
                        self.reply("250 OK")
                    elif verb == "DATA":
                        self.reply("354 end with <CRLF>.<CRLF>")
                        data = bytearray()
                        while True:
                            chunk = self.rfile.readline()
                            if not chunk or chunk in (b".\r\n", b".\n"):
                                break
                            data += chunk[1:] if chunk.startswith(b"..") else chunk
                        owner.messages.append(email.message_from_bytes(bytes(data), policy=email.policy.default))
                        owner.envelopes.append((sender, recipients))
                        self.reply("250 OK queued")
                    elif verb in ("RSET", "NOOP"):
                        self.reply("250 OK")
                    elif verb == "QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("502 not implemented")

        self._serve(_ReusableTCPServer(("127.0.0.1", self.port), Handler))
        return self
