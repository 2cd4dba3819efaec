"""A real HTTP server standing in for a Slack incoming webhook.

Alert delivery is tested over real sockets, not by mocking ``slack_sdk``: the retry handlers,
timeouts and status handling only prove themselves against a server that answers 500, 429 with
``Retry-After`` or not at all. The server records every POSTed JSON body and answers each request
with the next scripted behaviour, then ``ok`` once the script runs out.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

OK = "ok"
SERVER_ERROR = "500"
RATE_LIMITED = "429"
INVALID_BLOCKS = "400"
HANG = "hang"
SLOW = "slow"  # answers ok after SLOW_SECONDS: a window for two senders to overlap
BEHAVIOURS = (OK, SERVER_ERROR, RATE_LIMITED, INVALID_BLOCKS, HANG, SLOW)
SLOW_SECONDS = 1.0

# Long enough to outlast any client timeout used in the tests; teardown releases hung
# handlers early so the fixture never waits this long.
HANG_SECONDS = 30.0


@dataclass
class SlackReceiver:
    """Handle yielded by the ``slack_receiver`` fixture."""

    url: str
    requests: list[Any] = field(default_factory=list)
    request_times: list[float] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    _script: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _release: threading.Event = field(default_factory=threading.Event)

    def respond_with(self, behaviours: Iterable[str]) -> None:
        """Answer the next requests with ``behaviours`` in order; later requests get ``ok``."""
        script = list(behaviours)
        unknown = [b for b in script if b not in BEHAVIOURS]
        if unknown:
            raise ValueError(f"unknown behaviours {unknown}; use one of {BEHAVIOURS}")
        with self._lock:
            self._script = script

    def _record(self, body: Any, headers: dict[str, str]) -> str:
        with self._lock:
            self.requests.append(body)
            self.request_times.append(time.monotonic())
            self.headers.append(headers)
            return self._script.pop(0) if self._script else OK


def _handler_for(receiver: SlackReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = {"unparsed": raw.decode("utf-8", "replace")}
            behaviour = receiver._record(body, dict(self.headers.items()))
            if behaviour == HANG:
                receiver._release.wait(HANG_SECONDS)
                return  # close without answering, like a load balancer that gave up
            if behaviour == SLOW:
                time.sleep(SLOW_SECONDS)
                behaviour = OK
            status, text, extra = {
                OK: (200, "ok", {}),
                SERVER_ERROR: (500, "internal_error", {}),
                RATE_LIMITED: (429, "rate_limited", {"Retry-After": "1"}),
                INVALID_BLOCKS: (400, "invalid_blocks", {}),
            }[behaviour]
            payload = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output to what the tests print

    return Handler


@contextlib.contextmanager
def running_slack_receiver() -> Iterator[SlackReceiver]:
    """A webhook receiver on 127.0.0.1 (free port) for as long as the block runs."""
    receiver = SlackReceiver(url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(receiver))
    server.daemon_threads = True
    host, port = server.server_address[:2]
    receiver.url = f"http://{host}:{port}/services/T000/B000/XXXX"
    thread = threading.Thread(target=server.serve_forever, name="slack-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver._release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def slack_receiver() -> Iterator[SlackReceiver]:
    """A fresh webhook receiver for one test."""
    with running_slack_receiver() as receiver:
        yield receiver
