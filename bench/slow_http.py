"""A local HTTP server that answers every request after a fixed delay, as a webhook receiver does: the
io scenario's far end (bench/io.py). One asyncio process, so that thousands of requests can wait at
once without a thread each; it costs ~100 us of CPU a request, far from bounding 1,280 requests/s.

    python -m bench.slow_http --port 0 --delay 0.05

Prints "listening on <port>" once it accepts connections (port 0: one the system picks); answers every
request
``200 ok`` and closes the connection; counts what it answered and prints the count on SIGTERM.
"""

import argparse
import asyncio
import http.client
import signal
import sys

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


async def serve(port: int, delay: float) -> None:
    answered = 0
    waiting = 0
    most_waiting = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered, waiting, most_waiting
        try:
            await reader.readuntil(b"\r\n\r\n")  # a GET: no body to read
            waiting += 1
            most_waiting = max(most_waiting, waiting)
            await asyncio.sleep(delay)
            waiting -= 1
            writer.write(RESPONSE)
            await writer.drain()
            answered += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await stop.wait()
    print(f"answered {answered}, at most {most_waiting} waiting at once", flush=True)


def get(host: str, port: int, path: str) -> int:
    """One blocking GET to this server on a connection of its own (a webhook's endpoint is rarely the
    previous one's), as the io scenario's jobs do, ours and Celery's: the body's length."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status}")
    return len(body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay", type=float, default=0.05, help="seconds before each answer (default 0.05)")
    args = ap.parse_args()
    if args.delay < 0:
        sys.exit("--delay must be 0 or more")
    asyncio.run(serve(args.port, args.delay))


if __name__ == "__main__":
    main()
