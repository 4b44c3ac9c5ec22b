"""A partner's webhook endpoint for tests: records every request it receives."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class WebhookReceiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.status = 200
        # Optional: decides the answer (status, headers) per request; runs after recording it.
        self.answer: Callable[[Received], tuple[int, dict[str, str]]] | None = None
        self.delay_s = 0.0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                received = Received(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
                with lock:
                    outer.received.append(received)
                    status, extra = outer.status, {}
                    if outer.answer is not None:
                        status, extra = outer.answer(received)
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                try:
                    self.send_response(status)
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender gave up waiting (timeout tests)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(
        self, predicate: Callable[[Received], bool], count: int = 1, timeout: float = 30
    ) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            matching = [r for r in list(self.received) if predicate(r)]
            if len(matching) >= count:
                return matching
            time.sleep(0.05)
        raise AssertionError(
            f"expected {count} webhook(s) within {timeout}s, got {self.received!r}"
        )
