"""POST /api/orders is limited per client, with the counter in the database (shop/throttle.py)."""

import json
import socket
import subprocess
import threading
import urllib.error
import urllib.request

import pytest
from django.db import connection

from shop.models import RateLimitWindow
from shop.throttle import Rate, hit, parse_rate
from tests.utils import manage_py, subprocess_env, wait_for

pytestmark = pytest.mark.django_db


def post(client, remote_addr="203.0.113.7", **headers):
    return client.post(
        "/api/orders", "{}", content_type="application/json", REMOTE_ADDR=remote_addr, headers=headers
    )


@pytest.fixture
def three_per_minute(settings):
    settings.API_RATE_LIMIT = "3/m"


def test_requests_over_the_limit_get_429_with_retry_after_and_a_json_body(client, three_per_minute):
    assert [post(client).status_code for _ in range(3)] == [400, 400, 400]  # counted, then validated
    response = post(client)
    assert response.status_code == 429
    assert response["Content-Type"] == "application/json"
    assert 1 <= int(response["Retry-After"]) <= 60
    assert response.json()["error"] == "rate_limited"
    assert response.json()["retry_after"] == int(response["Retry-After"])
    assert RateLimitWindow.objects.get().count == 3


def test_the_limit_is_per_client_ip(client, three_per_minute):
    for _ in range(3):
        post(client, remote_addr="203.0.113.7")
    assert post(client, remote_addr="203.0.113.7").status_code == 429
    assert post(client, remote_addr="198.51.100.2").status_code == 400


def test_x_forwarded_for_is_ignored_without_a_trusted_proxy(client, three_per_minute, settings):
    settings.TRUSTED_PROXY = False
    for i in range(3):
        post(client, HTTP_X_FORWARDED_FOR=f"10.0.0.{i}")
    assert post(client, HTTP_X_FORWARDED_FOR="10.0.0.99").status_code == 429
    assert set(RateLimitWindow.objects.values_list("client", flat=True)) == {"203.0.113.7"}


def test_behind_a_trusted_proxy_the_first_forwarded_address_is_the_client(client, three_per_minute, settings):
    settings.TRUSTED_PROXY = True
    for _ in range(3):
        post(client, remote_addr="127.0.0.1", **{"X-Forwarded-For": "192.0.2.1, 127.0.0.1"})
    assert post(client, remote_addr="127.0.0.1", **{"X-Forwarded-For": "192.0.2.1"}).status_code == 429
    assert post(client, remote_addr="127.0.0.1", **{"X-Forwarded-For": "192.0.2.2"}).status_code == 400
    assert set(RateLimitWindow.objects.values_list("client", flat=True)) == {"192.0.2.1", "192.0.2.2"}


def test_a_malformed_forwarded_address_falls_back_to_the_peer(client, three_per_minute, settings):
    settings.TRUSTED_PROXY = True
    post(client, remote_addr="127.0.0.1", **{"X-Forwarded-For": "<script>, 1.2.3.4"})
    assert list(RateLimitWindow.objects.values_list("client", flat=True)) == ["127.0.0.1"]


def test_order_reads_are_not_limited(client, three_per_minute):
    for _ in range(5):
        assert client.get("/api/orders/nope").status_code == 404


def test_a_new_window_allows_requests_again():
    rate = Rate(limit=2, period=60)
    start = 1_800_000_000.0  # a multiple of 60
    assert [hit("t", "c", rate, now=start + s).allowed for s in (0, 1, 2)] == [True, True, False]
    assert hit("t", "c", rate, now=start + 2).retry_after == 58
    assert hit("t", "c", rate, now=start + 60).allowed


def test_windows_of_the_past_are_deleted_when_a_new_one_opens():
    rate = Rate(limit=5, period=60)
    start = 1_800_000_000.0
    hit("t", "a", rate, now=start)
    hit("t", "b", rate, now=start + 59)
    hit("other-scope", "a", rate, now=start)
    hit("t", "a", rate, now=start + 61)
    rows = set(RateLimitWindow.objects.values_list("scope", "client", "window"))
    assert rows == {("t", "a", start + 60), ("other-scope", "a", start)}


@pytest.mark.parametrize(
    "text,rate", [("60/m", Rate(60, 60)), ("1000/h", Rate(1000, 3600)), ("5/10s", Rate(5, 10)), ("", None)]
)
def test_rates_are_read_from_settings_text(text, rate):
    assert parse_rate(text) == rate


def test_a_malformed_rate_is_an_error():
    with pytest.raises(ValueError):
        parse_rate("sixty per minute")


@pytest.mark.django_db(transaction=True)
def test_concurrent_first_requests_are_counted_exactly():
    rate = Rate(limit=5, period=3600)
    results: list[bool] = []
    barrier = threading.Barrier(12)

    def request():
        try:
            barrier.wait(10)
            results.append(hit("race", "203.0.113.9", rate).allowed)
        finally:
            connection.close()

    threads = [threading.Thread(target=request) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [False] * 7 + [True] * 5
    assert RateLimitWindow.objects.get(scope="race").count == 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.django_db(transaction=True)
def test_the_limit_holds_across_gunicorn_worker_processes(tmp_path):
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "wb")
    env = subprocess_env(API_RATE_LIMIT="10/h")
    server = subprocess.Popen(
        [manage_py()[0], "-m", "gunicorn", "shop.wsgi", "-w", "3", "-b", f"127.0.0.1:{port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=str(tmp_path),
    )
    try:

        def status() -> int:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/orders",
                data=b"{}",
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status
            except urllib.error.HTTPError as exc:
                assert exc.headers["Content-Type"] == "application/json"
                json.loads(exc.read())
                return exc.code
            except OSError:
                return 0

        wait_for(lambda: status() == 400, timeout=30, message="gunicorn answering")
        statuses = []
        threads = [threading.Thread(target=lambda: statuses.append(status())) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(statuses) == [400] * 9 + [429] * 11
        assert RateLimitWindow.objects.get().count == 10
    finally:
        server.terminate()
        server.wait(20)
