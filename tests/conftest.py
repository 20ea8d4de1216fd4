import pytest
from django.conf import settings
from django.db import connections

from tests.pipeline.servers import LocalServer
from tests.utils import subprocess_env  # noqa: F401  (re-exported for tests)

# The browser fixtures, registered once for the whole session: a module importing them would get its
# own session-wide Playwright, and a second one cannot start beside the first.
pytest_plugins = ["tests.browser"]


@pytest.fixture(autouse=True)
def _media_root(settings, tmp_path):
    """Each test writes files (invoices, reports) to its own directory."""
    settings.MEDIA_ROOT = str(tmp_path / "media")


@pytest.fixture
def http_server():
    """Start LocalServer(...)s; they are stopped after the test."""
    servers = []

    def start(*args, **kwargs) -> LocalServer:
        server = LocalServer(*args, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def stripe_server(settings):
    """A Stripe-compatible server on 127.0.0.1 (tests/stripe_server.py) with the STRIPE_* settings
    pointing at it; ``stripe_server.environ`` carries them to processes a test starts."""
    from tests.stripe_server import StripeServer

    server = StripeServer()
    for name, value in server.environ.items():
        setattr(settings, name, value)
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def pgbouncer(request):
    """With DATABASE_POOLER=pgbouncer, the whole session reaches the test database through a real
    PgBouncer in transaction pooling (tests/pgbouncer.py): this process and every process it starts.
    The test database itself is created and dropped directly (a pooler keeps server connections open,
    which DROP DATABASE refuses). None otherwise."""
    if settings.DATABASE_POOLER != "pgbouncer":
        yield None
        return
    from tests.pgbouncer import PgBouncer

    request.getfixturevalue("django_db_setup")
    params = connections["default"].settings_dict
    direct = params["HOST"], params["PORT"]
    bouncer = PgBouncer(params["HOST"] or "127.0.0.1", int(params["PORT"] or 5432), params["USER"]).start()
    connections.close_all()
    params["HOST"], params["PORT"] = "127.0.0.1", bouncer.port
    try:
        yield bouncer
    finally:
        connections.close_all()
        params["HOST"], params["PORT"] = direct
        bouncer.remove()


@pytest.fixture
def ship():
    """ship(order, lines=None, **fields): a shipment of ``lines`` (default: everything left), handed
    to the carrier by a staff member; the order must be ready to ship."""
    from orders.services import create_shipment, unshipped

    def _ship(order, lines: dict[str, int] | None = None, **fields):
        fields.setdefault("carrier", "DHL")
        fields.setdefault("tracking_number", "TRACK-1")
        fields.setdefault("tracking_url", "https://track.example/TRACK-1")
        lines = lines or {sku: n for sku, n in unshipped(order).items() if n}
        return create_shipment(order, lines=lines, actor="staff:shipper", shipped=True, **fields)

    return _ship
