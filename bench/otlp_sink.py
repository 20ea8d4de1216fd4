"""A local OTLP/HTTP trace collector for the observability scenario, in a process of its own (a real
collector runs elsewhere: its work must not share the interpreter of the benchmark's clients). It
answers every export 200 at once and keeps the bodies; ``GET /spans`` decodes what it kept and answers
the number of spans received so far. It prints its port on its first line."""

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    bodies: list[bytes] = []
    counted = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                bodies.append(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

            with lock:
                pending = bodies[:]
                bodies.clear()
            for body in pending:
                request = ExportTraceServiceRequest.FromString(body)
                counted[0] += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
            answer = str(counted[0]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
