"""An order's history: every change writes exactly one OrderEvent with its actor (the customer, a staff
user, the system, or the job that did it), in the transaction of the change (a rollback leaves none)."""

import ast
import inspect
import pathlib

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.test import Client
from django.utils import timezone

import orders
from jobs.api import enqueue
from jobs.models import Job
from jobs.testing import run_jobs
from orders import services
from orders.events import Actor
from orders.models import Order, OrderEvent, WebhookDelivery, WebhookEndpoint
from tests.factories import ProductFactory

pytestmark = pytest.mark.django_db

K = OrderEvent.Kind


@pytest.fixture(autouse=True)
def catalog():
    ProductFactory(sku="A", name="Enamel mug", price="10.00", stock=10)
    ProductFactory(sku="B", name="Tea", price="4.50", stock=10)


def kinds(order) -> list[str]:
    return list(OrderEvent.objects.filter(order=order).order_by("id").values_list("kind", flat=True))


def one(order, kind) -> OrderEvent:
    (event,) = OrderEvent.objects.filter(order=order, kind=kind)
    return event


def job_of(order, step: str) -> Job:
    return Job.objects.get(unique_key=f"order:{order.id}:{step}")


@pytest.fixture
def staff():
    return User.objects.create_user("grace", password="pw", is_staff=True, is_superuser=True)


def test_checkout_writes_placed_reserved_and_paid_by_the_customer(place):
    order = place({"A": 2})
    assert kinds(order) == [K.PLACED, K.STOCK_RESERVED, K.PAYMENT_CAPTURED]
    for event in OrderEvent.objects.filter(order=order):
        assert event.actor_kind == "customer" and event.actor == "customer"
    assert one(order, K.STOCK_RESERVED).facts == {"lines": {"A": 2}}
    assert one(order, K.PAYMENT_CAPTURED).facts == {"amount": "20.00", "currency": "EUR"}


def test_an_authorized_payment_is_captured_by_the_fulfilment_job_one_event_each(place, settings):
    settings.PAYMENT_CAPTURE = "on_fulfilment"
    order = place({"A": 2})
    assert kinds(order) == [K.PLACED, K.STOCK_RESERVED, K.PAYMENT_AUTHORIZED]
    assert one(order, K.PAYMENT_AUTHORIZED).actor == "customer"
    run_jobs()
    captured = one(order, K.PAYMENT_CAPTURED)
    assert (captured.job_id, captured.facts) == (
        job_of(order, "fulfilled").id,
        {"amount": "20.00", "currency": "EUR"},
    )
    assert kinds(order)[-2:] == [K.PAYMENT_CAPTURED, K.READY_TO_SHIP]
    enqueue("mark_order_fulfilled", {"order_id": order.id})
    run_jobs()
    assert OrderEvent.objects.filter(order=order, kind=K.PAYMENT_CAPTURED).count() == 1


def test_a_declined_card_writes_failed_and_released_once(place):
    order = place({"A": 2}, token="tok_chargeDeclined")
    assert kinds(order) == [K.PLACED, K.STOCK_RESERVED, K.PAYMENT_FAILED, K.STOCK_RELEASED]
    assert one(order, K.STOCK_RELEASED).public is False  # plumbing: staff only


def test_each_pipeline_step_is_one_event_by_the_job_that_did_it(place):
    order = place({"A": 1})
    run_jobs()
    order.refresh_from_db()
    assert order.status == Order.Status.FULFILLED and order.get_status_display() == "Ready to ship"
    for kind, step in [
        (K.INVOICE_ISSUED, "invoice"),
        (K.INVENTORY_SYNCED, "inventory"),
        (K.READY_TO_SHIP, "fulfilled"),
    ]:
        event = one(order, kind)
        assert (event.actor_kind, event.job_id) == ("job", job_of(order, step).id), kind
    email = one(order, K.EMAIL_SENT)
    assert email.job_id == job_of(order, "confirmation").id and email.facts["email"] == "confirmation"


def test_running_a_step_again_writes_no_second_event(place):
    order = place({"A": 1})
    run_jobs()
    before = kinds(order)
    for job_type in ("send_order_confirmation", "generate_invoice", "sync_inventory", "mark_order_fulfilled"):
        enqueue(job_type, {"order_id": order.id})
    run_jobs()
    assert kinds(order) == before


def test_a_rolled_back_change_leaves_no_event(place):
    order = place({"A": 1})
    with pytest.raises(RuntimeError), transaction.atomic():
        services.cancel_order(order, actor="staff:grace")
        assert OrderEvent.objects.filter(order=order, kind=K.CANCELLED).exists()
        raise RuntimeError("the commit failed")
    assert not OrderEvent.objects.filter(order=order, kind__in=[K.CANCELLED, K.STOCK_RELEASED]).exists()
    assert not OrderEvent.objects.filter(order=order, kind=K.REFUND_REQUESTED).exists()


def test_staff_cancel_in_admin_is_the_staff_users_and_the_refund_the_jobs(place, staff):
    order = place({"A": 1, "B": 2})
    client = Client()
    client.force_login(staff)
    response = client.post(
        "/admin/orders/order/", {"action": "cancel_orders", "_selected_action": [order.pk]}
    )
    assert response.status_code == 302
    cancelled = one(order, K.CANCELLED)
    assert (cancelled.actor_kind, cancelled.actor_user, cancelled.actor_name) == ("staff", staff, "grace")
    assert one(order, K.REFUND_REQUESTED).actor_user == staff
    assert one(order, K.STOCK_RELEASED).actor_user == staff
    run_jobs()
    refund_job = Job.objects.get(type="process_refund")
    assert one(order, K.REFUND_SUCCEEDED).job_id == refund_job.id
    assert one(order, K.CREDIT_NOTE_ISSUED).job_id == Job.objects.get(type="issue_credit_note").id
    emails = OrderEvent.objects.filter(order=order, kind=K.EMAIL_SENT)
    assert sorted(e.facts["email"] for e in emails) == ["cancellation", "credit_note"]


def test_a_refund_the_gateway_refuses_is_one_failed_event(place, settings):
    order = place({"A": 1})
    refund = services.request_refund(order, actor=Actor.system(), reason="test")
    services.record_refund_result(refund, "failed", reason="card expired", actor=Actor.job(42))
    failed = one(order, K.REFUND_FAILED)
    assert (failed.actor, failed.public, failed.facts["reason"]) == ("job:42", False, "card expired")
    services.record_refund_result(refund, "failed", reason="again", actor=Actor.job(43))
    assert OrderEvent.objects.filter(order=order, kind=K.REFUND_FAILED).count() == 1


def test_webhook_deliveries_and_refusals_are_events_for_staff(place, http_server):
    ok = WebhookEndpoint.objects.create(url=http_server().url, events=["order.paid"])
    refusing = WebhookEndpoint.objects.create(url=http_server(default=410).url, events=["order.paid"])
    order = place({"A": 1})
    run_jobs()
    delivered = one(order, K.WEBHOOK_DELIVERED)
    refused = one(order, K.WEBHOOK_REFUSED)
    assert delivered.facts["endpoint"] == ok.pk and refused.facts["endpoint"] == refusing.pk
    assert not delivered.public and not refused.public
    jobs = {j.payload["endpoint_id"]: j.id for j in Job.objects.filter(type="deliver_webhook")}
    assert delivered.job_id == jobs[ok.pk] and refused.job_id == jobs[refusing.pk]


def test_a_failed_attempt_is_one_event_per_attempt_and_final_when_it_gives_up(place, http_server, settings):
    settings.WAREHOUSE_URL = http_server([500], default=400).url
    order = place({"A": 1})
    run_jobs()
    Job.objects.filter(type="sync_inventory").update(run_at=timezone.now())
    run_jobs()
    failures = OrderEvent.objects.filter(order=order, kind=K.STEP_FAILED).order_by("id")
    assert [(e.facts["step"], e.facts["attempt"], e.facts["final"]) for e in failures] == [
        ("inventory", 1, False),
        ("inventory", 2, True),
    ]
    assert all("400" not in str(e.facts) and "HTTP" not in str(e.facts) for e in failures)


def test_expiry_and_dispute_are_one_event_each(place):
    order = place({"A": 1}, token="tok_threeDSecureRequired")
    assert kinds(order)[-1] == K.PAYMENT_REQUIRES_ACTION
    services.expire_unpaid_order(order, actor=Actor.job(7))
    assert one(order, K.EXPIRED).actor == "job:7"
    assert one(order, K.STOCK_RELEASED).actor == "job:7"
    paid = place({"A": 1})
    assert services.mark_disputed(paid, reason="fraudulent", actor=Actor.job(8)) is True
    assert services.mark_disputed(paid, reason="fraudulent", actor=Actor.job(9)) is False
    assert one(paid, K.DISPUTED).actor == "job:8"


def test_a_staff_note_is_written_from_admin_and_never_shown_to_the_customer(place, staff):
    order = place({"A": 1})
    client = Client()
    client.force_login(staff)
    response = client.post(
        f"/admin/orders/order/{order.pk}/note/", {"text": "Customer called, wants it fast"}
    )
    assert response.status_code == 302
    note = one(order, K.STAFF_NOTE)
    assert note.actor_user == staff and note.public is False
    page = client.get(f"/admin/orders/order/{order.pk}/change/").content.decode()
    assert "Customer called, wants it fast" in page and 'id="order-timeline"' in page
    api = Client().get(f"/api/orders/{order.token}").content.decode()
    customer_page = Client().get(f"/orders/{order.token}/").content.decode()
    for text in (api, customer_page):
        assert "Customer called" not in text and "staff_note" not in text
    assert client.post(f"/admin/orders/order/{order.pk}/note/", {"text": "  "}).status_code == 302
    assert OrderEvent.objects.filter(order=order, kind=K.STAFF_NOTE).count() == 1


def test_admin_timeline_links_each_event_to_the_job_and_dead_letter_behind_it(
    place, staff, http_server, settings
):
    settings.WAREHOUSE_URL = http_server(default=400).url
    order = place({"A": 1})
    run_jobs()
    job = job_of(order, "inventory")
    client = Client()
    client.force_login(staff)
    page = client.get(f"/admin/orders/order/{order.pk}/change/").content.decode()
    assert f'href="/admin/jobs/job/{job.id}/change/"' in page
    assert f'href="/admin/jobs/deadletter/{job.dead_letter.pk}/change/"' in page


def test_admin_timeline_links_a_delivered_webhook_to_its_delivery_and_endpoint(place, staff, http_server):
    endpoint = WebhookEndpoint.objects.create(url=http_server().url, events=["order.paid"])
    order = place({"A": 1})
    run_jobs()
    delivery = WebhookDelivery.objects.get(order=order, endpoint=endpoint)
    assert one(order, K.WEBHOOK_DELIVERED).facts["delivery"] == delivery.pk
    client = Client()
    client.force_login(staff)
    page = client.get(f"/admin/orders/order/{order.pk}/change/").content.decode()
    assert f'href="/admin/orders/webhookdelivery/{delivery.pk}/change/"' in page
    assert f'href="/admin/orders/webhookendpoint/{endpoint.pk}/change/"' in page
    shown = client.get(f"/admin/orders/webhookdelivery/{delivery.pk}/change/")
    assert shown.status_code == 200 and order.number in shown.content.decode()


ORDERS = pathlib.Path(orders.__file__).parent
# Modules whose functions do a change for a caller (and so are told who it is); the callers are the
# admin and the storefront (the request's user or the customer) and the job handlers (their job).
SERVICE_MODULES = [
    "services",
    "notifications",
    "invoices",
    "inventory",
    "webhooks",
    "payment_events",
    "warehouse",
]


def _tree(module: str) -> ast.Module:
    return ast.parse((ORDERS / f"{module}.py").read_text())


@pytest.mark.django_db(False)
def test_no_module_but_the_services_writes_an_event():
    """``orders.events.record`` is called from orders/services.py only, and OrderEvent rows are created
    by ``record`` only. (Migration 0006's backfill of old orders is history, not a change.)"""
    writers = set()
    for path in ORDERS.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "orders.events":
                if any(alias.name in ("record", "*") for alias in node.names):
                    writers.add(path.name)
            elif (
                isinstance(node, ast.Attribute)
                and node.attr == "record"
                and ast.unparse(node.value) == "events"
            ):
                writers.add(path.name)
            elif isinstance(node, ast.Call) and "OrderEvent" in ast.unparse(node.func):
                if ast.unparse(node.func).split(".")[-1] in (
                    "OrderEvent",
                    "create",
                    "bulk_create",
                    "get_or_create",
                ):
                    writers.add(path.name)
    assert writers == {"services.py", "events.py"}


def _names(node: ast.AST) -> set[str]:
    """The names a function (or a module-level table) refers to, leaving out its own parameters and
    variables: "record", "services.mark_paid", "_ship", "HANDLERS" ..."""
    own = {a.arg for a in ast.walk(node) if isinstance(a, ast.arg)}
    own |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    names = {ast.unparse(n) for n in ast.walk(node) if isinstance(n, ast.Name | ast.Attribute)}
    return {name for name in names if name.split(".")[0] not in own}


def _reaching(module: str, writers: set[str]) -> set[str]:
    """The module's functions that reach one of ``writers``, directly or through each other."""
    refs: dict[str, set[str]] = {}
    for node in _tree(module).body:
        if isinstance(node, ast.FunctionDef):
            refs[node.name] = _names(node)
        elif isinstance(node, ast.Assign):  # a dispatch table of handlers
            for target in node.targets:
                if isinstance(target, ast.Name):
                    refs[target.id] = _names(node)
    found: set[str] = set()
    while more := {name for name, named in refs.items() if named & (writers | found)} - found:
        found |= more
    return {name for name in found if callable(getattr(getattr(orders, module), name))}


@pytest.mark.django_db(False)
def test_every_operation_that_writes_an_event_requires_its_actor():
    """A function that reaches ``record`` (in services, or through a service from the modules the jobs
    call) takes ``actor`` as a required keyword: a caller cannot forget it and be recorded as the
    system. The job handlers pass their job."""
    in_services = _reaching("services", {"record"})
    assert {"place_order", "cancel_order", "create_shipment", "add_staff_note", "refund"} <= in_services
    via = {f"services.{name}" for name in in_services}
    for module in SERVICE_MODULES:
        public = sorted(n for n in _reaching(module, {"record"} | via) if not n.startswith("_"))
        assert public, module
        for name in public:
            actor = inspect.signature(getattr(getattr(orders, module), name)).parameters.get("actor")
            assert actor is not None, f"{module}.{name} takes no actor"
            assert actor.kind is actor.KEYWORD_ONLY and actor.default is actor.empty, f"{module}.{name}"
    actors = [
        ast.unparse(k.value)
        for c in ast.walk(_tree("jobs"))
        if isinstance(c, ast.Call)
        for k in c.keywords
        if k.arg == "actor"
    ]
    assert len(actors) > 10 and set(actors) == {"Actor.job(ctx)"}


def test_events_are_append_only(place):
    order = place({"A": 1})
    event = OrderEvent.objects.filter(order=order).first()
    with pytest.raises(ValueError):
        event.save()


def test_api_lists_the_customer_safe_events(place, client):
    order = place({"A": 1})
    run_jobs()
    events = client.get(f"/api/orders/{order.token}").json()["events"]
    got = [e["kind"] for e in events]
    assert got[:3] == ["placed", "payment_captured", "email_sent"] and got[-1] == "ready_to_ship"
    assert sorted(got[3:5]) == ["inventory_synced", "invoice_issued"] and len(got) == 6
    assert events[0]["by"] == "you" and events[-1]["by"] == "shop"
    for event in events:
        assert set(event) == {"kind", "label", "at", "by", "facts"}
        assert "job" not in str(event["facts"]) and "stock" not in event["kind"]


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_handler_leaves_no_duplicate_and_no_missing_event(
    place, http_server, tmp_path, settings
):
    """A real runworker is SIGKILLed while its inventory sync waits on the warehouse; the rescued job
    (another runworker) finishes the pipeline, and every step is in the history exactly once, by the
    job that did it."""
    from tests.jobs.conftest import WorkerProcesses
    from tests.pipeline.servers import HANG
    from tests.utils import wait_for

    warehouse = http_server([HANG], default=200)
    hooks = http_server(default=200)
    WebhookEndpoint.objects.create(url=hooks.url, events=["order.paid", "order.fulfilled"])
    order = place({"A": 1, "B": 1})
    mail_dir = tmp_path / "mail"
    mail_dir.mkdir()
    env = {
        "WAREHOUSE_URL": warehouse.url,
        "HTTP_TIMEOUT": "60",
        "EMAIL_URL": f"filemail://{mail_dir}",
        "MEDIA_ROOT": settings.MEDIA_ROOT,
    }
    procs = WorkerProcesses(tmp_path)
    try:
        worker = procs.start("--stale-after", "1", env=env)
        wait_for(lambda: warehouse.hung == 1, timeout=60, message="the inventory sync waits on the warehouse")
        worker.kill()
        worker.wait(10)
        assert not OrderEvent.objects.filter(order=order, kind=K.INVENTORY_SYNCED).exists()
        procs.start("--stale-after", "1", env=env)
        wait_for(
            lambda: (
                Order.objects.get(pk=order.pk).status == Order.Status.FULFILLED
                and Job.objects.filter(type="deliver_webhook", status="succeeded").count() == 2
            ),
            timeout=90,
            message="the rescued pipeline reaches ready to ship and its webhooks are delivered",
        )
    finally:
        procs.stop_all()
    counts = {}
    for kind in OrderEvent.objects.filter(order=order).values_list("kind", flat=True):
        counts[kind] = counts.get(kind, 0) + 1
    assert counts == {
        K.PLACED: 1,
        K.STOCK_RESERVED: 1,
        K.PAYMENT_CAPTURED: 1,
        K.EMAIL_SENT: 1,
        K.INVOICE_ISSUED: 1,
        K.INVENTORY_SYNCED: 1,
        K.READY_TO_SHIP: 1,
        K.WEBHOOK_DELIVERED: 2,
    }
    sync_job = job_of(order, "inventory")
    assert any(e["exception"].endswith("WorkerLost") for e in sync_job.errors)
    assert one(order, K.INVENTORY_SYNCED).job_id == sync_job.id
    assert len(warehouse.accepted) == 1


def test_orders_from_before_the_history_get_the_events_their_records_prove(place, client):
    """Migration 0006: an order placed and fulfilled before events existed shows its steps done."""
    import importlib

    from django.apps import apps

    backfill = importlib.import_module("orders.migrations.0006_backfill_order_events").backfill
    order = place({"A": 1})
    run_jobs()
    OrderEvent.objects.filter(order=order).delete()  # as it was before the history
    backfill(apps, None)
    assert kinds(order) == [
        K.PLACED,
        K.PAYMENT_CAPTURED,
        K.EMAIL_SENT,
        K.INVOICE_ISSUED,
        K.INVENTORY_SYNCED,
        K.READY_TO_SHIP,
    ]
    assert {e.actor_kind for e in OrderEvent.objects.filter(order=order)} == {"system"}
    steps = client.get(f"/api/orders/{order.token}").json()["pipeline"]
    assert {s["state"] for s in steps} == {"done"}
    backfill(apps, None)  # an order with events is left alone
    assert len(kinds(order)) == 6
