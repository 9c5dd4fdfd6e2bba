"""A real local HTTP server standing in for the bridge: it records each POST and answers
with the next of `answers` (status, JSON value or raw bytes)."""

import json
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class EventStream:
    """An answer of server-sent events: `events` is a list of (name, JSON value)."""

    def __init__(self, events, comments=()):
        lines = [f": {c}\n\n" for c in comments]
        lines += [f"event: {name}\ndata: {json.dumps(value)}\n\n" for name, value in events]
        self.body = "".join(lines).encode()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append((self.path, dict(self.headers), body))
        status, answer = self.server.answers.pop(0)
        kind = "application/json"
        if isinstance(answer, EventStream):
            kind, answer = "text/event-stream", answer.body
        data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class FakeBridgeTest(unittest.TestCase):
    """`self.server` (with `seen` and `answers`) at `self.url`, for each test."""

    def setUp(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.seen = []
        self.server.answers = []
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def tearDown(self):
        self.server.shutdown()
        self.server.server_close()
