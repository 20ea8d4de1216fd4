"""The web host loses the database: an order request answers 503 within seconds and leaves nothing
half-made; the client's retry with the same Idempotency-Key, once the link is back, completes it: one
order, one charge, stock taken once."""

import json
import subprocess
import sys
import time

from tests.hosts.conftest import wait_until

ORDER = {
    "email": "ada@example.com",
    "name": "Ada Lovelace",
    "shipping_address": {
        "line1": "1 Analytical Street",
        "city": "Berlin",
        "postal_code": "10115",
        "country": "DE",
    },
    "lines": [{"sku": "A", "quantity": 2}],
    "payment_token": "tok_visa",
}


CLIENT = """
import json, sys, urllib.error, urllib.request
url, key, body = sys.argv[1:4]
request = urllib.request.Request(url + "/api/orders", data=body.encode(), method="POST",
    headers={"Content-Type": "application/json", "Idempotency-Key": key})
try:
    with urllib.request.urlopen(request, timeout=60) as response:
        print(json.dumps([response.status, json.loads(response.read())]))
except urllib.error.HTTPError as error:
    print(json.dumps([error.code, json.loads(error.read() or b"{}")]))
"""

STATUS_OF = """
import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=60).status, end="")
except urllib.error.HTTPError as error:
    print(error.code, end="")
"""


def post_order(host, url: str, key: str) -> tuple[int, dict]:
    """POST an order from inside ``host`` (over its loopback: a cut link does not hide it from its
    own clients, only from the database)."""
    done = subprocess.run(
        ["ip", "netns", "exec", host.name, sys.executable, "-c", CLIENT, url, key, json.dumps(ORDER)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    status, answer = json.loads(done.stdout)
    return status, answer


def test_orders_answer_503_quickly_while_the_web_host_is_cut_off_and_the_retry_completes(net):
    web = net.hosts[2]
    net.manage(
        net.db, "shell", "-c", "from tests.factories import ProductFactory; ProductFactory(sku='A', stock=10)"
    )
    port = 8000
    net.web(web, "-w", "2", port=port)
    url = f"http://127.0.0.1:{port}"  # inside the web host's own namespace
    assert post_order(web, url, "warm-up")[0] == 201  # a worker's first request pays its imports
    assert post_order(web, url, "warm-up-2")[0] == 201

    web.cut()
    started = time.monotonic()
    status, answer = post_order(web, url, "key-1")
    took = time.monotonic() - started
    page = subprocess.run(
        ["ip", "netns", "exec", web.name, sys.executable, "-c", STATUS_OF, f"{url}/"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    web.heal()
    assert page == "503", page  # the storefront's pages say "retry shortly", not a 500 page
    assert status == 503, (status, answer)  # an answer to retry, within seconds, not a hung request
    assert took < 15, took

    orders = "SELECT count(*) FROM orders_order WHERE email = 'ada@example.com'"
    assert net.sql(orders)[0][0] == 2  # the warm-up orders only: nothing half-made
    # The client retries with the same key, as after any 5xx, until it gets an answer of substance (the
    # first connects after the link is back may still fail).
    status, answer = wait_until(
        lambda: (result := post_order(web, url, "key-1"))[0] < 500 and result, timeout=30, interval=1.0
    )
    assert status == 201, answer
    assert net.sql(orders)[0][0] == 3
    assert net.sql("SELECT stock FROM shop_product WHERE sku = 'A'")[0][0] == 10 - 3 * 2
    assert net.sql("SELECT count(*) FROM orders_fakegatewaycharge")[0][0] == 3  # one charge per order
    assert post_order(web, url, "key-1") == (status, answer)  # replayed, not made again
