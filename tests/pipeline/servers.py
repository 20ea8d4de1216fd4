"""Real HTTP servers on 127.0.0.1 (port 0) in a thread of the test process: the warehouse and webhook
receivers the pipeline talks to. Each records what it received and answers from a script."""

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from orders.webhooks import verify_signature

HANG = "hang"  # a scripted answer: hold the request until the server stops (the client times out)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self):
        return json.loads(self.body)


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        server: LocalServer = self.server.owner
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        answer = server.next_answer()
        received = Received(self.path, dict(self.headers.items()), body)
        with server.lock:
            server.received.append(received)
            if answer == HANG:
                server.hung += 1
        if answer == HANG:
            server.stopped.wait(30)
            return
        answer, extra_headers = answer if isinstance(answer, tuple) else (answer, {})
        if server.secret is not None and not verify_signature(
            received.headers.get("X-Shop-Signature", ""), body, server.secret
        ):
            answer = 401
        with server.lock:
            if 200 <= answer < 300:
                server.accepted.append(received)
        payload = json.dumps({"status": answer}).encode()
        self.send_response(answer)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in extra_headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format, *args):  # quiet
        pass


class LocalServer:
    """``script``: the status codes (or HANG, or ``(status, {header: value})``) of the first requests,
    then ``default`` for the rest.
    With ``secret``, a request whose X-Shop-Signature does not verify is answered 401."""

    def __init__(self, script=(), default: int = 200, secret: str | None = None):
        self.script = list(script)
        self.default = default
        self.secret = secret
        self.received: list[Received] = []
        self.accepted: list[Received] = []
        self.hung = 0
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def next_answer(self):
        with self.lock:
            return self.script.pop(0) if self.script else self.default

    def stop(self) -> None:
        self.stopped.set()
        self.httpd.shutdown()
        self.httpd.server_close()
