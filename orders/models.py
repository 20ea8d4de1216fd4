"""Orders, their lines and payments; the fake gateway's ledger; API idempotency keys.

Models hold data and the invariants the database can enforce; workflows live in ``orders.services``.
"""

import secrets

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from shop.models import Product, default_currency


def new_order_token() -> str:
    """256 random bits: the order page and API URL are capabilities, so they must be unguessable."""
    return secrets.token_urlsafe(32)


def new_order_number() -> str:
    """Short enough to read out on the phone; unique by constraint. It is also the gateway's
    idempotency key, so it must never be reused."""
    return f"{timezone.now():%y%m%d}-{secrets.token_hex(5).upper()}"


class OrderStatus(models.TextChoices):
    PENDING_PAYMENT = "pending_payment", "Pending payment"
    PAID = "paid", "Paid"
    PAYMENT_FAILED = "payment_failed", "Payment failed"
    # Stored as "fulfilled" (the API and the order.fulfilled webhook keep the name): invoice and
    # inventory are done and the goods may leave; shipments move the order on from here.
    FULFILLED = "fulfilled", "Ready to ship"
    PARTIALLY_SHIPPED = "partially_shipped", "Partially shipped"
    SHIPPED = "shipped", "Shipped"
    DELIVERED = "delivered", "Delivered"
    CANCELLED = "cancelled", "Cancelled"
    REFUNDED = "refunded", "Refunded"
    EXPIRED = "expired", "Expired (not paid in time)"


class Order(models.Model):
    Status = OrderStatus

    number = models.CharField(max_length=32, unique=True, default=new_order_number, editable=False)
    token = models.CharField(max_length=64, unique=True, default=new_order_token, editable=False)
    email = models.EmailField()
    name = models.CharField(max_length=200)
    shipping_line1 = models.CharField("address", max_length=200)
    shipping_city = models.CharField("city", max_length=100)
    shipping_postal_code = models.CharField("postal code", max_length=20)
    shipping_country = models.CharField("country", max_length=2, help_text="ISO 3166-1 alpha-2 code")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING_PAYMENT)
    currency = models.CharField(max_length=3, default=default_currency)
    total = models.DecimalField(max_digits=12, decimal_places=2)
    # True while the order's lines are subtracted from product stock; flipped in the same transaction
    # that gives the stock back, so stock is released at most once.
    stock_reserved = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    disputed_at = models.DateTimeField(
        null=True, blank=True, help_text="When the customer's bank opened a dispute (chargeback)."
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "created_at"])]
        constraints = [
            models.CheckConstraint(condition=models.Q(total__gte=0), name="order_total_not_negative"),
            models.CheckConstraint(
                condition=models.Q(status__in=OrderStatus.values), name="order_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"Order {self.number}"

    def get_absolute_url(self) -> str:
        return reverse("order-detail", args=[self.token])

    def latest_payment(self) -> "Payment | None":
        """The order's newest payment attempt (a declined one is followed by the next), or None."""
        return self.payments.order_by("-created_at", "-id").first()

    @property
    def shipping_address(self) -> dict[str, str]:
        return {
            "line1": self.shipping_line1,
            "city": self.shipping_city,
            "postal_code": self.shipping_postal_code,
            "country": self.shipping_country,
        }


class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="order_lines")
    sku = models.CharField("SKU", max_length=64)
    name = models.CharField(max_length=200)
    quantity = models.PositiveIntegerField()
    unit_price = models.DecimalField(max_digits=10, decimal_places=2)

    class Meta:
        ordering = ["sku"]
        constraints = [
            models.UniqueConstraint(fields=["order", "product"], name="orderline_one_per_product"),
            models.CheckConstraint(condition=models.Q(quantity__gte=1), name="orderline_quantity_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.sku}"

    @property
    def line_total(self):
        return self.unit_price * self.quantity


class Payment(models.Model):
    """One attempt to take the order's money at the gateway. Refunds are rows of their own (``Refund``);
    ``status`` follows their sum (partially_refunded, refunded), it is never overwritten by a refund."""

    class Status(models.TextChoices):
        REQUIRES_ACTION = "requires_action", "Requires action (3-D Secure)"
        PROCESSING = "processing", "Processing"
        AUTHORIZED = "authorized", "Authorized (to be captured)"
        SUCCEEDED = "succeeded", "Succeeded"
        PARTIALLY_REFUNDED = "partially_refunded", "Partially refunded"
        REFUNDED = "refunded", "Refunded"
        DECLINED = "declined", "Declined"
        FAILED = "failed", "Failed"
        CANCELED = "canceled", "Canceled"

    CAPTURED = (Status.SUCCEEDED, Status.PARTIALLY_REFUNDED, Status.REFUNDED)
    WAITING = (Status.REQUIRES_ACTION, Status.PROCESSING)

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="payments")
    gateway = models.CharField(max_length=100)
    gateway_reference = models.CharField(max_length=100, blank=True)
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=20, choices=Status.choices)
    decline_reason = models.CharField(max_length=255, blank=True)
    decline_code = models.CharField(max_length=100, blank=True)
    action_url = models.URLField(
        max_length=2000, blank=True, help_text="Where 3-D Secure sends the customer."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.get_status_display()} {self.amount} {self.currency} ({self.gateway})"


class FakeGatewayCharge(models.Model):
    """The fake gateway's own ledger. It lives in the database so that the web process and workers see
    the same charges, and a repeated idempotency key finds the first result."""

    idempotency_key = models.CharField(max_length=255, unique=True)
    reference = models.CharField(max_length=64, unique=True)
    token = models.CharField(max_length=100)
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3)
    succeeded = models.BooleanField()
    status = models.CharField(max_length=20, default="succeeded")
    decline_reason = models.CharField(max_length=255, blank=True)
    return_url = models.CharField(max_length=2000, blank=True)
    refunded_amount = models.DecimalField(max_digits=12, decimal_places=2, default=0)
    refunded_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.reference


class FakeGatewayRefund(models.Model):
    """A refund in the fake gateway's ledger, once per idempotency key."""

    idempotency_key = models.CharField(max_length=255, unique=True)
    reference = models.CharField(max_length=64, unique=True)
    charge = models.ForeignKey(FakeGatewayCharge, on_delete=models.CASCADE, related_name="refunds")
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    status = models.CharField(max_length=10)
    failure_reason = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.reference


class PaymentEvent(models.Model):
    """A payment provider's webhook event, stored once (by its id) as it arrived, raw, and applied by a
    job (``apply_payment_event``). Staff see the raw event here when its job failed."""

    class Outcome(models.TextChoices):
        PENDING = "pending", "Waiting to be applied"
        APPLIED = "applied", "Applied"
        IGNORED = "ignored", "Ignored (nothing to do)"

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    payload = models.JSONField()
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.PENDING)
    note = models.CharField(max_length=255, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    applied_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class Refund(models.Model):
    """Money given back for an order: the whole order, some lines, or an amount. The gateway call runs
    as a job (its idempotency key is this row), so a timeout or a crash never refunds twice. The sum of
    a payment's refunds never exceeds what was captured (checked under the order's row lock)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="refunds")
    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="refunds")
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3)
    lines = models.JSONField(default=dict, blank=True, help_text="SKU to quantity refunded, if by line.")
    reason = models.CharField(max_length=255)
    actor = models.CharField(max_length=200, help_text="Who asked for it: a staff user, the customer, a job.")
    restock = models.BooleanField(default=False, help_text="Give the lines' stock back when it succeeds.")
    gateway_reference = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    failure_reason = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(amount__gt=0), name="refund_amount_positive")
        ]

    def __str__(self) -> str:
        return f"Refund {self.amount} {self.currency} of {self.order} ({self.status})"


class DocumentSequence(models.Model):
    """The last number given to a kind of document in a year. Its row is locked by the transaction that
    issues the next number, so numbers are sequential and gap-free (a rollback gives the number back)."""

    kind = models.CharField(max_length=20)
    year = models.PositiveIntegerField()
    last = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["kind", "year"], name="documentsequence_one_per_year")]

    def __str__(self) -> str:
        return f"{self.kind} {self.year}: {self.last}"


class CreditNote(models.Model):
    """The document of a succeeded refund (PDF), numbered ``CN-<year>-<n>`` without gaps."""

    refund = models.OneToOneField(Refund, on_delete=models.PROTECT, related_name="credit_note")
    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="credit_notes")
    number = models.CharField(max_length=40, unique=True)
    file = models.FileField(upload_to="credit_notes/")
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3)
    created_at = models.DateTimeField(default=timezone.now)
    emailed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.number


class RecoveryPoint(models.TextChoices):
    """How far the request behind an idempotency key got; each is committed with the work it records."""

    STARTED = "started", "Started"
    RESERVED = "reserved", "Order reserved"
    CHARGE_ATTEMPTED = "charge_attempted", "Charge attempted"
    FINISHED = "finished", "Finished"


class IdempotencyKey(models.Model):
    """One row per idempotency key: an ``Idempotency-Key`` of the JSON API (scope "api") or the one-time
    token of a checkout form (scope "checkout"). Never deleted while a retry may come (see
    ``orders.idempotency``): it records how far its request got and the order it made, so that a retry
    resumes instead of starting over. ``lease`` and ``locked_at`` say which request works on it now; a
    lease older than ``settings.IDEMPOTENCY_LEASE`` seconds belongs to a request that died."""

    class Scope(models.TextChoices):
        API = "api", "API"
        CHECKOUT = "checkout", "Checkout form"

    RecoveryPoint = RecoveryPoint

    scope = models.CharField(max_length=10, choices=Scope.choices, default=Scope.API)
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)
    recovery_point = models.CharField(
        max_length=20, choices=RecoveryPoint.choices, default=RecoveryPoint.STARTED
    )
    order = models.ForeignKey(
        Order, null=True, blank=True, on_delete=models.PROTECT, related_name="idempotency_keys"
    )
    lease = models.CharField(max_length=32, blank=True)
    locked_at = models.DateTimeField(null=True, blank=True)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["scope", "key"], name="idempotencykey_unique_per_scope")
        ]

    def __str__(self) -> str:
        return self.key


# -- the order pipeline's records ----------------------------------------------------------------------
# Each is the proof that one step of the pipeline happened, and the marker that makes its job idempotent:
# a handler that finds its row does nothing.


class OrderEmail(models.Model):
    """An email sent about an order (one of each kind per order). Written right after the send."""

    class Kind(models.TextChoices):
        CONFIRMATION = "confirmation", "Order confirmation"
        FOLLOWUP = "followup", "Follow-up"
        CANCELLATION = "cancellation", "Cancellation"

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="emails")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    recipient = models.EmailField()
    sent_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["sent_at", "id"]
        constraints = [models.UniqueConstraint(fields=["order", "kind"], name="orderemail_one_per_kind")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} for {self.order}"


class Invoice(models.Model):
    """The PDF invoice of a paid order: one per order, stored through Django's storage API (kept out of
    MEDIA_URL; served by the order page's token and by admin)."""

    order = models.OneToOneField(Order, on_delete=models.PROTECT, related_name="invoice")
    number = models.CharField(max_length=40, unique=True)
    file = models.FileField(upload_to="invoices/")
    net = models.DecimalField(max_digits=12, decimal_places=2)
    vat = models.DecimalField("VAT", max_digits=12, decimal_places=2)
    vat_rate = models.DecimalField("VAT rate", max_digits=5, decimal_places=4)
    total = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.number

    def get_absolute_url(self) -> str:
        return reverse("order-invoice", args=[self.order.token])


class InventorySync(models.Model):
    """The push of an order's new stock levels to the warehouse (or, with no WAREHOUSE_URL, the local
    record that there was nothing to push to). One per order."""

    order = models.OneToOneField(Order, on_delete=models.CASCADE, related_name="inventory_sync")
    target = models.CharField(max_length=500, help_text="The warehouse URL, or 'local'.")
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    stock_levels = models.JSONField(default=dict, help_text="SKU to stock level, as sent.")
    synced_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-synced_at", "-id"]
        verbose_name = "inventory sync"

    def __str__(self) -> str:
        return f"Inventory sync of {self.order}"


class WebhookEvent(models.TextChoices):
    ORDER_PAID = "order.paid", "order.paid"
    ORDER_FULFILLED = "order.fulfilled", "order.fulfilled"
    ORDER_REFUNDED = "order.refunded", "order.refunded"
    ORDER_CANCELLED = "order.cancelled", "order.cancelled"
    ORDER_EXPIRED = "order.expired", "order.expired"
    ORDER_DISPUTED = "order.disputed", "order.disputed"
    ORDER_SHIPPED = "order.shipped", "order.shipped"
    ORDER_DELIVERED = "order.delivered", "order.delivered"


class OrderMessage(models.Model):
    """An outgoing webhook event as it happened: its body is recorded in the transaction that makes the
    change, and every delivery attempt sends this body (``created`` is the event's time), never a
    re-read of the order."""

    order = models.ForeignKey("Order", on_delete=models.CASCADE, related_name="messages")
    event = models.CharField(max_length=40, choices=WebhookEvent.choices)
    body = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.event} of {self.order}"


class WebhookEndpoint(models.Model):
    """A receiver of order events, managed by staff. Each delivery is a job (retried with backoff) and
    is signed with the endpoint's secret (see ``orders.webhooks``)."""

    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=200, default=new_order_token, help_text="Shared HMAC secret.")
    events = models.JSONField(default=list, blank=True, help_text=f"Any of {', '.join(WebhookEvent.values)}.")
    active = models.BooleanField(default=True)
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.url

    def wants(self, event: str) -> bool:
        return self.active and event in self.events


class WebhookDelivery(models.Model):
    """A webhook event the endpoint accepted (2xx). The sent-marker of the delivery job."""

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=40, choices=WebhookEvent.choices)
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="webhook_deliveries")
    message = models.ForeignKey(
        OrderMessage, null=True, blank=True, on_delete=models.CASCADE, related_name="deliveries"
    )
    response_status = models.PositiveSmallIntegerField()
    delivered_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-delivered_at", "-id"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["endpoint", "event", "order"],
                name="webhookdelivery_once_per_event",
                condition=models.Q(message__isnull=True),
            ),
            models.UniqueConstraint(fields=["endpoint", "message"], name="webhookdelivery_once_per_message"),
        ]

    def __str__(self) -> str:
        return f"{self.event} of {self.order} to {self.endpoint}"


class SalesReport(models.Model):
    """The sales of one day in the shop's time zone (orders paid that day and not since cancelled or
    refunded). One per day: running the report again replaces it."""

    date = models.DateField(unique=True)
    orders = models.PositiveIntegerField()
    revenue = models.DecimalField(max_digits=14, decimal_places=2)
    currency = models.CharField(max_length=3)
    units = models.PositiveIntegerField()
    top_products = models.JSONField(default=list, blank=True)
    csv_file = models.FileField("CSV", upload_to="reports/", blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    emailed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-date"]

    def __str__(self) -> str:
        return f"Sales of {self.date}"


class OrderEventKind(models.TextChoices):
    PLACED = "placed", "Order placed"
    STOCK_RESERVED = "stock_reserved", "Stock reserved"
    STOCK_RELEASED = "stock_released", "Stock released"
    PAYMENT_REQUIRES_ACTION = "payment_requires_action", "Payment waits for confirmation"
    PAYMENT_PROCESSING = "payment_processing", "Payment processing"
    PAYMENT_AUTHORIZED = "payment_authorized", "Payment authorized"
    PAYMENT_CAPTURED = "payment_captured", "Payment received"
    PAYMENT_FAILED = "payment_failed", "Payment failed"
    EXPIRED = "expired", "Expired (not paid in time)"
    EMAIL_SENT = "email_sent", "Email sent"
    INVOICE_ISSUED = "invoice_issued", "Invoice issued"
    INVENTORY_SYNCED = "inventory_synced", "Inventory synced with the warehouse"
    STEP_FAILED = "step_failed", "A step failed"
    READY_TO_SHIP = "ready_to_ship", "Ready to ship"
    SHIPMENT_CREATED = "shipment_created", "Shipment prepared"
    SHIPMENT_SHIPPED = "shipment_shipped", "Shipped"
    SHIPMENT_DELIVERED = "shipment_delivered", "Delivered"
    REFUND_REQUESTED = "refund_requested", "Refund requested"
    REFUND_SUCCEEDED = "refund_succeeded", "Refunded"
    REFUND_FAILED = "refund_failed", "Refund failed"
    CREDIT_NOTE_ISSUED = "credit_note_issued", "Credit note issued"
    CANCELLED = "cancelled", "Cancelled"
    DISPUTED = "disputed", "Payment disputed"
    WEBHOOK_DELIVERED = "webhook_delivered", "Webhook delivered"
    WEBHOOK_REFUSED = "webhook_refused", "Webhook refused"
    STAFF_NOTE = "staff_note", "Staff note"


class ActorKind(models.TextChoices):
    STAFF = "staff", "Staff"
    CUSTOMER = "customer", "Customer"
    SYSTEM = "system", "System"
    JOB = "job", "Job"


class OrderEvent(models.Model):
    """One change to an order, written by ``orders.services`` in the transaction that makes the change
    (a rollback leaves none). Append-only: never updated or deleted. ``public`` events (and only the
    customer-safe part of them) are shown to the customer; the rest are for staff."""

    Kind = OrderEventKind
    ActorKind = ActorKind

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=40, choices=OrderEventKind.choices)
    actor_kind = models.CharField(max_length=10, choices=ActorKind.choices)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=150, blank=True, help_text="The staff user's name then.")
    job_id = models.BigIntegerField(null=True, blank=True, help_text="The job that made the change.")
    public = models.BooleanField(default=True, help_text="Shown to the customer.")
    facts = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        # The customer page's one query: an order's public events in order.
        indexes = [models.Index(fields=["order", "public", "created_at", "id"], name="orderevent_timeline")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(kind__in=OrderEventKind.values), name="orderevent_kind_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} of order {self.order_id} by {self.actor}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise ValueError("Order events are append-only.")
        super().save(*args, **kwargs)

    @property
    def actor(self) -> str:
        if self.actor_kind == ActorKind.STAFF:
            return f"staff:{self.actor_name}"
        if self.actor_kind == ActorKind.JOB:
            return f"job:{self.job_id}"
        return self.actor_kind


class ShipmentStatus(models.TextChoices):
    CREATED = "created", "Created"
    SHIPPED = "shipped", "Shipped"
    DELIVERED = "delivered", "Delivered"


class Shipment(models.Model):
    """A parcel of some of an order's lines. Staff make it in admin or the warehouse reports it
    (``warehouse_id`` is then the warehouse's own id: its callback is applied once)."""

    Status = ShipmentStatus

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="shipments")
    warehouse_id = models.CharField(max_length=100, null=True, blank=True, unique=True)
    carrier = models.CharField(max_length=100, blank=True)
    tracking_number = models.CharField(max_length=100, blank=True)
    tracking_url = models.URLField(max_length=500, blank=True)
    status = models.CharField(max_length=10, choices=ShipmentStatus.choices, default=ShipmentStatus.CREATED)
    created_at = models.DateTimeField(default=timezone.now)
    shipped_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    emailed_at = models.DateTimeField(null=True, blank=True, help_text="When the shipping email went out.")

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"Shipment {self.pk} of {self.order}"


class ShipmentLine(models.Model):
    shipment = models.ForeignKey(Shipment, on_delete=models.CASCADE, related_name="lines")
    line = models.ForeignKey(OrderLine, on_delete=models.PROTECT, related_name="shipment_lines")
    quantity = models.PositiveIntegerField()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["shipment", "line"], name="shipmentline_one_per_line"),
            models.CheckConstraint(
                condition=models.Q(quantity__gte=1), name="shipmentline_quantity_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.line.sku}"


class WarehouseEvent(models.Model):
    """A warehouse callback as it arrived (raw), stored once by its id and applied by a job
    (``apply_warehouse_event``), like ``PaymentEvent``."""

    class Outcome(models.TextChoices):
        PENDING = "pending", "Waiting to be applied"
        APPLIED = "applied", "Applied"
        REFUSED = "refused", "Refused"

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    payload = models.JSONField()
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.PENDING)
    note = models.CharField(max_length=255, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    applied_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"
