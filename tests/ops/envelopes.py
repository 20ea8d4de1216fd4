"""A local HTTP server standing in for Sentry: it receives the SDK's envelopes and keeps their events."""

import gzip
import json
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        elif encoding:
            raise AssertionError(f"unexpected Content-Encoding {encoding}")
        self.server.owner.receive(self.path, body)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format, *args):
        pass


class SentryServer:
    def __init__(self):
        self.raw: list[bytes] = []
        self.events: list[dict] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def dsn(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://public@{host}:{port}/1"

    def receive(self, path: str, body: bytes) -> None:
        """An envelope: a header line, then (item header, payload) line pairs."""
        lines = body.split(b"\n")
        events = []
        for header, payload in zip(lines[1::2], lines[2::2], strict=False):
            if header.strip() and json.loads(header).get("type") == "event":
                events.append(json.loads(payload))
        with self.lock:
            self.raw.append(body)
            self.events.extend(events)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
