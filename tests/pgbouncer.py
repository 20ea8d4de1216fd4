"""A real PgBouncer (Debian's ``pgbouncer``) in transaction pooling in front of the test database.

Started as an unprivileged user on a free port chosen at start, with a pool smaller than a worker's
threads; its files live in a directory of its own, removed at stop. The settings it runs with are the
ones README.md documents for production (``PgBouncer.CONFIG``).
"""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

POOL_SIZE = 3  # server connections per database and user: fewer than a worker's threads in the tests
# Seconds a client's query may wait for a server connection before PgBouncer fails it: how long a
# lost database goes unnoticed by a worker behind it (PgBouncer's default is 120).
QUERY_WAIT_TIMEOUT = 10

CONFIG = """\
[databases]
* = host={server_host} port={server_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {dir}/userlist.txt
admin_users = {user}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 500
server_reset_query =
ignore_startup_parameters = extra_float_digits
query_wait_timeout = {query_wait_timeout}
server_login_retry = 1
logfile = {dir}/pgbouncer.log
pidfile = {dir}/pgbouncer.pid
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgBouncer:
    def __init__(self, server_host: str, server_port: int, user: str, pool_size: int = POOL_SIZE):
        self.server_host, self.server_port = server_host, server_port
        self.user, self.pool_size = user, pool_size
        self.dir = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> "PgBouncer":
        executable = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        run_as = {}
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            nobody = pwd.getpwnam("nobody")
            os.chown(self.dir, nobody.pw_uid, nobody.pw_gid)
            run_as = dict(user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[])
        (self.dir / "userlist.txt").write_text(f'"{self.user}" ""\n')
        for _ in range(5):  # the port was free a moment ago; another process may take it meanwhile
            self.port = free_port()
            config = self.dir / "pgbouncer.ini"
            config.write_text(
                CONFIG.format(
                    server_host=self.server_host,
                    server_port=self.server_port,
                    port=self.port,
                    dir=self.dir,
                    user=self.user,
                    pool_size=self.pool_size,
                    query_wait_timeout=QUERY_WAIT_TIMEOUT,
                )
            )
            self.proc = subprocess.Popen(
                [executable, "-q", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                **run_as,
            )
            if self._wait_accepting(timeout):
                return self
        raise RuntimeError(f"PgBouncer did not start:\n{self.log()[-3000:]}")

    def _wait_accepting(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with psycopg.connect(**self.conninfo("pgbouncer"), autocommit=True) as admin:
                    admin.execute("SHOW VERSION")
                return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        self.stop()
        return False

    def conninfo(self, dbname: str) -> dict:
        return dict(host="127.0.0.1", port=self.port, user=self.user, dbname=dbname)

    def show(self, what: str) -> list[dict]:
        """A table of PgBouncer's admin console: ``show("POOLS")``, ``show("SERVERS")``."""
        with psycopg.connect(**self.conninfo("pgbouncer"), autocommit=True) as admin:
            cursor = admin.execute(f"SHOW {what}")
            names = [c.name for c in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # immediate shutdown: server connections closed
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir)
