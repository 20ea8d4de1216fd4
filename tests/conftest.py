import pytest

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
