"""Several hosts on one machine: a private PostgreSQL cluster on a bridge, and "hosts" that are Linux
network namespaces, each with its own address and a veth link to the bridge, running real `runworker`
processes that reach the database over that network. A host is cut off by taking its link down on the
bridge's side: its packets vanish (no reset, no error), as when a switch port or a route is lost.

Needs root, `ip netns` and PostgreSQL's server binaries; the suite runs in the PostgreSQL pass of the
test suite and is skipped with the reason otherwise. Everything is torn down at the end, also after a
failure: processes, namespaces, links, the cluster and its data directory.
"""

import ipaddress
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.utils import BASE_DIR, manage_py

# Short timeouts so that a cut is noticed within seconds and the suite stays short; the defaults
# (README) are the same mechanisms with production's patience.
FAST_NETWORK = {
    "DB_CONNECT_TIMEOUT": "2",
    "DB_TCP_USER_TIMEOUT": "3",
    "DB_KEEPALIVES_IDLE": "2",
    "DB_KEEPALIVES_INTERVAL": "1",
    "DB_KEEPALIVES_COUNT": "2",
    "JOBS_DB_TIMEOUT": "2",
}


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


def _why_not() -> str | None:
    """The reason this machine cannot run the suite, or None."""
    if "postgres" not in os.environ.get("DATABASE_URL", ""):
        return "the hosts suite runs in the PostgreSQL pass (DATABASE_URL=postgres://...)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "needs iproute2 (ip netns)"
    if not (_pg_bin("initdb") and _pg_bin("pg_ctl")):
        return "needs PostgreSQL's server binaries (initdb, pg_ctl)"
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "needs the postgres user to run the private cluster"
    probe = f"shopprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.0.0.0/8 that no interface or route of this machine uses."""
    used = subprocess.run(
        ["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True
    ).stdout
    used += subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    rng = random.Random()
    for _ in range(100):
        net = ipaddress.IPv4Network(f"10.{rng.randint(100, 250)}.{rng.randint(0, 255)}.0/24")
        if f"{net.network_address}"[:-1] not in used:
            return net
    raise RuntimeError("no free 10.x.y.0/24 subnet found")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A private PostgreSQL cluster: its own data directory and port, run as the postgres user,
    listening on loopback (for the test process) and the bridge (for the hosts)."""

    def __init__(self, bridge_ip: str, subnet: str):
        self.dir = Path(tempfile.mkdtemp(prefix="shop-hosts-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = _free_port()
        self.bridge_ip = bridge_ip
        self.log = self.dir / "server.log"
        self.subnet = subnet

    def start(self) -> None:
        self._as_postgres(
            _pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8"
        )
        with open(self.data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {self.subnet} trust\n")
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses='127.0.0.1,{self.bridge_ip}'"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._as_postgres(
            _pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start"
        )

    def _as_postgres(self, *cmd: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True, cwd="/")

    def connect(self, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, autocommit=True
        )

    def url(self, dbname: str, host: str = "127.0.0.1") -> str:
        return f"postgres://postgres@{host}:{self.port}/{dbname}"

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run(
                [
                    "runuser",
                    "-u",
                    "postgres",
                    "--",
                    _pg_bin("pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "immediate",
                    "stop",
                ],
                capture_output=True,
                cwd="/",
            )
        shutil.rmtree(self.dir, ignore_errors=True)


class Host:
    """A network namespace with one link to the bridge."""

    def __init__(self, network: "Network", index: int):
        self.network = network
        self.name = f"shop{network.tag}h{index}"
        self.link = f"v{network.tag}h{index}"  # the bridge's end, in the root namespace
        self.address = str(network.subnet.network_address + 10 + index)
        self.dropping: str | None = None  # "input" or "output" while one way of its link drops packets
        inner = f"e{network.tag}h{index}"
        ip("netns", "add", self.name)
        ip("link", "add", self.link, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", self.name)
        ip("link", "set", self.link, "master", network.bridge)
        ip("link", "set", self.link, "up")
        ip("-n", self.name, "link", "set", "lo", "up")
        ip("-n", self.name, "addr", "add", f"{self.address}/{network.subnet.prefixlen}", "dev", inner)
        ip("-n", self.name, "link", "set", inner, "up")

    def cut(self) -> None:
        """Packets to and from this host vanish; its processes see nothing but silence."""
        ip("link", "set", self.link, "down")

    def deafen(self) -> None:
        """One way: what the database sends to this host vanishes, what the host sends arrives. Its
        statements reach the server and run there (a commit commits) but it never hears that they did."""
        self._drop("input", f"ip saddr {self.network.bridge_ip} tcp sport {self.network.cluster.port}")

    def mute(self) -> None:
        """One way: what this host sends to the database vanishes, what the database sends arrives."""
        self._drop("output", f"ip daddr {self.network.bridge_ip} tcp dport {self.network.cluster.port}")

    def heal(self) -> None:
        """The link up and both ways open again, whatever was done to it."""
        ip("link", "set", self.link, "up")
        if self.dropping:
            subprocess.run(
                ["ip", "netns", "exec", self.name, "nft", "delete", "table", "inet", "oneway"],
                check=True,
                capture_output=True,
            )
            self.dropping = None

    def _drop(self, hook: str, match: str) -> None:
        """An nftables rule in this host's namespace that drops the database's packets at ``hook``."""
        assert self.dropping is None, f"{self.name} already drops its {self.dropping} packets"
        chain = f"type filter hook {hook} priority 0; {match} drop;"
        subprocess.run(
            ["ip", "netns", "exec", self.name, "nft", "-f", "-"],
            input=f"table inet oneway {{\n  chain db {{\n    {chain}\n  }}\n}}\n",
            check=True,
            capture_output=True,
            text=True,
        )
        self.dropping = hook

    def popen(self, cmd: list[str], *, env: dict, log: Path) -> subprocess.Popen:
        out = open(log, "wb")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *cmd], stdout=out, stderr=subprocess.STDOUT, env=env
        )
        proc.log_path = log
        self.network.procs.append(proc)
        return proc


class Network:
    """The bridge, the cluster on it, and the hosts; one database per test (from a migrated template)."""

    def __init__(self, hosts: int, log_dir: Path):
        self.tag = f"{os.getpid() % 100000}"
        self.subnet = _free_subnet()
        self.bridge = f"br{self.tag}"
        self.bridge_ip = str(self.subnet.network_address + 1)
        self.log_dir = log_dir
        self.size = hosts
        self.procs: list[subprocess.Popen] = []
        self.hosts: list[Host] = []
        self.cluster: Cluster | None = None
        self.db = "shop_template"
        self._dbs = 0

    def build(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.bridge_ip}/{self.subnet.prefixlen}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        self.cluster = Cluster(self.bridge_ip, str(self.subnet))
        self.cluster.start()
        for i in range(self.size):
            self.hosts.append(Host(self, i))
        with self.cluster.connect() as conn:
            conn.execute("CREATE DATABASE shop_template")
        self.manage("shop_template", "migrate", "--noinput", "-v", "0")

    def fresh_database(self) -> str:
        self._dbs += 1
        name = f"shop_{self._dbs}"
        with self.cluster.connect() as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE shop_template")
        self.db = name
        return name

    def env(self, dbname: str, host: str, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="tests.settings",
            DATABASE_URL=self.cluster.url(dbname, host),
            PYTHONPATH=os.pathsep.join(filter(None, [str(BASE_DIR), env.get("PYTHONPATH")])),
            PYTHONUNBUFFERED="1",
            **FAST_NETWORK,
        )
        env.pop("NOTIFY_SOCKET", None)
        env.update(extra)
        return env

    def manage(self, dbname: str, *args: str) -> str:
        """`manage.py ...` in the root namespace against ``dbname`` (over loopback); its output."""
        done = subprocess.run(
            [*manage_py(), *args],
            env=self.env(dbname, "127.0.0.1"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def worker(self, host: Host, worker_id: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        """`runworker --worker-id worker_id ...` on ``host``, reaching the database over the bridge."""
        cmd = [*manage_py(), "runworker", "--worker-id", worker_id, "--poll-interval", "0.1", *args]
        return host.popen(
            cmd, env=self.env(self.db, self.bridge_ip, **(env or {})), log=self.log_dir / f"{worker_id}.log"
        )

    def web(self, host: Host, *args: str, port: int = 8000, env: dict | None = None) -> subprocess.Popen:
        """gunicorn serving the shop on ``host`` at ``port`` of all its addresses (its clients reach it
        over its own loopback, or from the root namespace over the bridge), reaching the database over the
        bridge; ``args`` are gunicorn's. Returns once a worker booted."""
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        env = self.env(self.db, self.bridge_ip, ALLOWED_HOSTS=f"127.0.0.1,{host.address}", **(env or {}))
        server = host.popen(
            [gunicorn, "shop.wsgi:application", "-b", f"0.0.0.0:{port}", "--timeout", "60", *args],
            env=env,
            log=self.log_dir / f"gunicorn-{self.db}.log",
        )
        wait_until(lambda: "Booting worker" in output(server), timeout=30, message="gunicorn up")
        return server

    def sql(self, query: str, params=()) -> list[tuple]:
        with self.cluster.connect(self.db) as conn:
            return conn.execute(query, params).fetchall()

    def stop_processes(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(10)
        self.procs.clear()

    def destroy(self) -> None:
        """Undo build(), also a partial one: every name this network may have created is removed."""
        self.stop_processes()
        for i in range(self.size):
            subprocess.run(["ip", "netns", "del", f"shop{self.tag}h{i}"], capture_output=True)
            subprocess.run(["ip", "link", "del", f"v{self.tag}h{i}"], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        if self.cluster is not None:
            self.cluster.stop()


def output(proc: subprocess.Popen) -> str:
    return Path(proc.log_path).read_text(errors="replace")


def exit_code(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after {timeout}s:\n{output(proc)[-5000:]}") from None


@pytest.fixture(scope="session")
def network(tmp_path_factory):
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    net = Network(hosts=3, log_dir=tmp_path_factory.mktemp("hosts"))
    try:
        net.build()
        yield net
    finally:
        net.destroy()


@pytest.fixture
def net(network):
    """The network with a fresh database; every process started in the test is killed after it and
    every link is up again."""
    network.fresh_database()
    yield network
    network.stop_processes()
    for host in network.hosts:
        host.heal()


def wait_until(condition, *, timeout: float, interval: float = 0.1, message: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {message or condition}")
        time.sleep(interval)
