"""A scripted OpenAI-compatible /chat/completions endpoint on 127.0.0.1 for client tests (never another host).

Each POST is answered by `respond(scenario, body, n)` -> (status, payload, delay_s), where `scenario` is the first
path segment of the URL (so one server can play several servers: /flaky/v1, /down/v1, ...) and `n` counts that
scenario's requests from 1. Every request is recorded. The server answers a bounded number of requests within a
bounded lifetime, then stops by itself; `close()` stops it earlier.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Response = tuple[int, bytes | dict, float]
MAX_REQUESTS = 200
LIFETIME_S = 60.0


def chat_answer(text: str) -> dict:
    return {"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop",
                                                      "message": {"role": "assistant", "content": text}}]}


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, respond: Callable[[str, dict, int], Response]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.respond = respond
        self.timeout = 0.05  # handle_request returns this often to check the stop conditions
        self.requests: dict[str, list[dict]] = defaultdict(list)
        self.stopped = threading.Event()
        self.served = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve_bounded, daemon=True)
        self.thread.start()

    def url(self, scenario: str = "") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}" + (f"/{scenario}" if scenario else "") + "/v1"

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.server_close()

    def _serve_bounded(self) -> None:
        deadline = time.monotonic() + LIFETIME_S
        while not self.stopped.is_set() and self.served < MAX_REQUESTS and time.monotonic() < deadline:
            self.handle_request()


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        parts = self.path.strip("/").split("/")
        scenario = parts[0] if len(parts) == 4 else ""  # /scenario/v1/chat/completions
        with self.server.lock:
            self.server.served += 1
            seen = self.server.requests[scenario]
            seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
            n = len(seen)
        status, payload, delay = self.server.respond(scenario, body, n)
        time.sleep(delay)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (timeout tests)
            pass
