"""Give orders placed before the history existed the events their records prove, so that their page
(which reads events, not job rows) shows what was done. The actor is "system"; the times are the
records' own."""

from django.db import migrations

BATCH = 500


def backfill(apps, schema_editor):
    Order = apps.get_model("orders", "Order")
    OrderEvent = apps.get_model("orders", "OrderEvent")
    OrderEmail = apps.get_model("orders", "OrderEmail")
    Invoice = apps.get_model("orders", "Invoice")
    InventorySync = apps.get_model("orders", "InventorySync")
    labels = {"confirmation": "Order confirmation", "followup": "Follow-up"}
    pending = []

    def add(order_id, kind, at, public=True, **facts):
        pending.append(
            OrderEvent(
                order_id=order_id, kind=kind, actor_kind="system", public=public, facts=facts, created_at=at
            )
        )
        if len(pending) >= BATCH:
            OrderEvent.objects.bulk_create(pending)
            pending.clear()

    have_events = set(OrderEvent.objects.values_list("order_id", flat=True).distinct())
    for order in Order.objects.exclude(pk__in=have_events).order_by("id").iterator():
        add(order.pk, "placed", order.created_at, total=f"{order.total:.2f}", currency=order.currency)
        if order.paid_at:
            add(order.pk, "payment_captured", order.paid_at, total=f"{order.total:.2f}")
        for email in OrderEmail.objects.filter(order_id=order.pk):
            add(order.pk, "email_sent", email.sent_at, email=email.kind, label=labels.get(email.kind, email.kind))
        invoice = Invoice.objects.filter(order_id=order.pk).first()
        if invoice:
            add(order.pk, "invoice_issued", invoice.created_at, invoice=invoice.number)
        sync = InventorySync.objects.filter(order_id=order.pk).first()
        if sync:
            add(order.pk, "inventory_synced", sync.synced_at, response_status=sync.response_status)
        if order.status == "fulfilled":
            add(order.pk, "ready_to_ship", order.updated_at)
        elif order.status in ("cancelled", "expired", "payment_failed"):
            kind = {"cancelled": "cancelled", "expired": "expired", "payment_failed": "payment_failed"}
            add(order.pk, kind[order.status], order.updated_at)
    OrderEvent.objects.bulk_create(pending)


class Migration(migrations.Migration):
    dependencies = [("orders", "0005_events_shipments")]

    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
