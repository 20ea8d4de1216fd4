from decimal import Decimal
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from jobs.models import DeadLetter
from orders import services
from orders.events import Actor
from orders.models import (
    CreditNote,
    InventorySync,
    Invoice,
    Order,
    OrderEmail,
    OrderEvent,
    OrderLine,
    Payment,
    PaymentEvent,
    Refund,
    SalesReport,
    Shipment,
    WarehouseEvent,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from orders.pipeline import order_tags
from orders.views import invoice_response


class OrderLineInline(admin.TabularInline):
    model = OrderLine
    fields = ["sku", "name", "quantity", "unit_price"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class PaymentInline(admin.TabularInline):
    model = Payment
    fields = [
        "created_at",
        "gateway",
        "gateway_reference",
        "amount",
        "currency",
        "status",
        "decline_reason",
        "decline_code",
    ]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class RefundInline(admin.TabularInline):
    model = Refund
    fields = [
        "created_at",
        "amount",
        "currency",
        "lines",
        "reason",
        "actor",
        "status",
        "failure_reason",
        "note",
    ]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="Credit note")
    def note(self, obj: Refund) -> str:
        note = CreditNote.objects.filter(refund=obj).first()
        if note is None:
            return "-"
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:orders_creditnote_download", args=[note.pk]), note.number
        )


class ShipmentInline(admin.TabularInline):
    model = Shipment
    fields = ["created_at", "status", "items", "carrier", "tracking_number", "shipped_at", "delivered_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="Lines")
    def items(self, obj: Shipment) -> str:
        return ", ".join(f"{item.quantity} x {item.line.sku}" for item in obj.lines.select_related("line"))


class ShipmentForm(forms.Form):
    """Ship some of an order's lines: at most what is left of each (checked again by the service, under
    the order's lock)."""

    carrier = forms.CharField(max_length=100, required=False)
    tracking_number = forms.CharField(max_length=100, required=False)
    tracking_url = forms.URLField(max_length=500, required=False, assume_scheme="https")
    shipped = forms.BooleanField(
        required=False, initial=True, label="Handed to the carrier now (emails the customer)"
    )

    def __init__(self, *args, order: Order, left: dict[str, int], **kwargs):
        super().__init__(*args, **kwargs)
        self.order = order
        for line in order.lines.order_by("sku"):
            rest = left.get(line.sku, 0)
            self.fields[f"line_{line.sku}"] = forms.IntegerField(
                required=False,
                min_value=0,
                max_value=max(rest, 0),
                label=f"{line.sku} ({line.name}; {line.quantity} ordered, {rest} left to ship)",
            )

    def lines(self) -> dict[str, int]:
        return {
            name.removeprefix("line_"): value
            for name, value in self.cleaned_data.items()
            if name.startswith("line_") and value
        }

    def clean(self):
        data = super().clean()
        if not self.errors and not self.lines():
            raise forms.ValidationError("Pick at least one line to ship.")
        return data


class StaffNoteForm(forms.Form):
    text = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=2000, label="Staff note")


class RefundForm(forms.Form):
    """Refund the whole rest, some lines, or an amount, with a reason (required)."""

    reason = forms.CharField(max_length=255)
    amount = forms.DecimalField(
        required=False,
        min_value=Decimal("0.01"),
        decimal_places=2,
        help_text="Leave empty to refund by line or all.",
    )

    def __init__(self, *args, order: Order, left: dict[str, int], **kwargs):
        super().__init__(*args, **kwargs)
        self.order = order
        for line in order.lines.order_by("sku"):
            self.fields[f"line_{line.sku}"] = forms.IntegerField(
                required=False,
                min_value=0,
                max_value=max(left.get(line.sku, 0), 0),
                label=f"{line.sku} ({line.name}, {line.unit_price} each; {left.get(line.sku, 0)} left)",
            )

    def lines(self) -> dict[str, int]:
        return {
            name.removeprefix("line_"): value
            for name, value in self.cleaned_data.items()
            if name.startswith("line_") and value
        }

    def clean(self):
        data = super().clean()
        if data.get("amount") and self.lines():
            raise forms.ValidationError("Refund either an amount or lines, not both.")
        return data


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    """Money and status change only through the services (the actions below), never by editing."""

    list_display = ["number", "created_at", "name", "email", "status", "total", "currency"]
    list_filter = ["status", "created_at"]
    search_fields = ["number", "email", "name"]
    date_hierarchy = "created_at"
    inlines = [OrderLineInline, PaymentInline, RefundInline, ShipmentInline]
    change_form_template = "admin/orders/order/change_form.html"
    readonly_fields = [
        "number",
        "token",
        "status",
        "currency",
        "total",
        "stock_reserved",
        "created_at",
        "updated_at",
        "paid_at",
        "invoice_link",
        "jobs_link",
    ]
    fields = [
        "number",
        "status",
        "total",
        "currency",
        "email",
        "name",
        "shipping_line1",
        "shipping_city",
        "shipping_postal_code",
        "shipping_country",
        "stock_reserved",
        "created_at",
        "paid_at",
        "updated_at",
        "token",
        "invoice_link",
        "jobs_link",
    ]
    actions = ["refund_orders", "cancel_orders", "settle_pending_payments"]

    @admin.display(description="Jobs")
    def jobs_link(self, obj: Order) -> str:
        """Every job of the order, by the tag the pipeline gives them."""
        (tag,) = order_tags(obj)
        url = f"{reverse('admin:jobs_job_changelist')}?{urlencode({'tag': tag})}"
        return format_html('<a href="{}">Jobs tagged {}</a>', url, tag)

    @admin.display(description="Invoice")
    def invoice_link(self, obj: Order) -> str:
        invoice = Invoice.objects.filter(order=obj).first()
        if invoice is None:
            return "-"
        url = reverse("admin:orders_invoice_download", args=[invoice.pk])
        return format_html('<a href="{}">{} (PDF)</a>', url, invoice.number)

    def has_add_permission(self, request) -> bool:
        return False

    def get_urls(self):
        return [
            path(
                "<int:pk>/refund/",
                self.admin_site.admin_view(self.refund_view),
                name="orders_order_refund",
            ),
            path("<int:pk>/ship/", self.admin_site.admin_view(self.ship_view), name="orders_order_ship"),
            path("<int:pk>/note/", self.admin_site.admin_view(self.note_view), name="orders_order_note"),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        order = self.get_object(request, object_id)
        extra = {**(extra_context or {})}
        if order is not None:
            extra["timeline"] = timeline(order)
            extra["note_form"] = StaffNoteForm()
            extra["can_ship"] = order.status in services.SHIPPABLE
        return super().change_view(request, object_id, form_url, extra_context=extra)

    def ship_view(self, request, pk: int):
        """Create a shipment: lines and quantities, carrier, tracking; never more than is left to ship."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        order = get_object_or_404(Order, pk=pk)
        form = ShipmentForm(request.POST or None, order=order, left=services.unshipped(order))
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                shipment = services.create_shipment(
                    order,
                    lines=form.lines(),
                    actor=Actor.staff(request.user),
                    carrier=data["carrier"],
                    tracking_number=data["tracking_number"],
                    tracking_url=data["tracking_url"],
                    shipped=data["shipped"],
                )
            except services.OrderError as exc:
                form.add_error(None, str(exc))
            else:
                self.message_user(
                    request,
                    f"Shipment {shipment.pk} created ({shipment.get_status_display()}).",
                    messages.SUCCESS,
                )
                return redirect(reverse("admin:orders_order_change", args=[order.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Ship order {order.number}",
            "order": order,
            "form": form,
            "opts": self.model._meta,
        }
        return TemplateResponse(
            request, "admin/orders/order/ship.html", context, status=400 if form.errors else 200
        )

    def note_view(self, request, pk: int):
        """Add a staff note to the order's history (POST only; never shown to the customer)."""
        if not self.has_change_permission(request) or request.method != "POST":
            raise PermissionDenied
        order = get_object_or_404(Order, pk=pk)
        form = StaffNoteForm(request.POST)
        if form.is_valid():
            try:
                services.add_staff_note(
                    order, actor=Actor.staff(request.user), text=form.cleaned_data["text"]
                )
            except services.OrderError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                self.message_user(request, "Note added.", messages.SUCCESS)
        else:
            self.message_user(request, "The note is empty or too long.", messages.ERROR)
        return redirect(reverse("admin:orders_order_change", args=[order.pk]))

    def refund_view(self, request, pk: int):
        """Refund the whole order, some lines, or an amount, with a reason; the gateway call is a job."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        order = get_object_or_404(Order, pk=pk)
        payment, left_amount, left_lines = services.refundable(order)
        form = RefundForm(request.POST or None, order=order, left=left_lines)
        if request.method == "POST" and form.is_valid():
            try:
                refund = services.request_refund(
                    order,
                    actor=Actor.staff(request.user),
                    reason=form.cleaned_data["reason"],
                    amount=form.cleaned_data.get("amount"),
                    lines=form.lines() or None,
                    restock=False,
                )
            except services.OrderError as exc:
                form.add_error(None, str(exc))
            else:
                self.message_user(
                    request,
                    f"Refund of {refund.amount} {refund.currency} requested; it runs as a job.",
                    messages.SUCCESS,
                )
                return redirect(reverse("admin:orders_order_change", args=[order.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Refund order {order.number}",
            "order": order,
            "form": form,
            "payment": payment,
            "left_amount": left_amount,
            "opts": self.model._meta,
        }
        return TemplateResponse(
            request, "admin/orders/order/refund.html", context, status=400 if form.errors else 200
        )

    def _apply(self, request, queryset, service, verb: str) -> None:
        done = 0
        actor = Actor.staff(request.user)
        for order in queryset:
            try:
                service(order, actor)
                done += 1
            except services.OrderError as exc:
                self.message_user(request, f"{order.number}: {exc}", messages.WARNING)
        self.message_user(request, f"{verb} {done} order(s).", messages.SUCCESS)

    @admin.action(description="Refund selected orders in full", permissions=["change"])
    def refund_orders(self, request, queryset) -> None:
        self._apply(
            request,
            queryset,
            lambda order, actor: services.refund(order, actor=actor),
            "Refund requested for",
        )

    @admin.action(description="Cancel selected paid orders (refund, restock)", permissions=["change"])
    def cancel_orders(self, request, queryset) -> None:
        self._apply(
            request, queryset, lambda order, actor: services.cancel_order(order, actor=actor), "Cancelled"
        )

    @admin.action(description="Settle pending payments with the gateway", permissions=["change"])
    def settle_pending_payments(self, request, queryset) -> None:
        self._apply(
            request,
            queryset,
            lambda order, actor: services.settle_pending_payment(order, actor=actor),
            "Checked",
        )


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records the pipeline writes; staff look, they do not edit."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = ["number", "order", "created_at", "total", "currency", "download_link"]
    search_fields = ["number", "order__number", "order__email"]
    date_hierarchy = "created_at"
    list_select_related = ["order"]

    def get_urls(self):
        urls = [
            path(
                "<int:pk>/download/",
                self.admin_site.admin_view(self.download_view),
                name="orders_invoice_download",
            )
        ]
        return urls + super().get_urls()

    def download_view(self, request, pk: int):
        if not self.has_view_permission(request):
            raise PermissionDenied
        return invoice_response(get_object_or_404(Invoice, pk=pk))

    @admin.display(description="PDF")
    def download_link(self, obj: Invoice) -> str:
        return format_html(
            '<a href="{}">Download</a>', reverse("admin:orders_invoice_download", args=[obj.pk])
        )


@admin.register(InventorySync)
class InventorySyncAdmin(ReadOnlyAdmin):
    list_display = ["order", "synced_at", "target", "response_status"]
    search_fields = ["order__number"]
    list_select_related = ["order"]


@admin.register(OrderEmail)
class OrderEmailAdmin(ReadOnlyAdmin):
    list_display = ["order", "kind", "recipient", "sent_at"]
    list_filter = ["kind"]
    search_fields = ["order__number", "recipient"]
    list_select_related = ["order"]


@admin.register(SalesReport)
class SalesReportAdmin(ReadOnlyAdmin):
    list_display = ["date", "orders", "units", "revenue", "currency", "emailed_at", "csv_link"]
    date_hierarchy = "date"
    fields = [
        "date",
        "orders",
        "units",
        "revenue",
        "currency",
        "top_products_table",
        "csv_link",
        "created_at",
        "emailed_at",
    ]
    readonly_fields = fields

    def get_urls(self):
        urls = [
            path("<int:pk>/csv/", self.admin_site.admin_view(self.csv_view), name="orders_salesreport_csv")
        ]
        return urls + super().get_urls()

    def csv_view(self, request, pk: int):
        if not self.has_view_permission(request):
            raise PermissionDenied
        report = get_object_or_404(SalesReport, pk=pk)
        if not report.csv_file:
            raise Http404
        return FileResponse(
            report.csv_file.open("rb"), as_attachment=True, filename=f"sales-{report.date}.csv"
        )

    @admin.display(description="CSV")
    def csv_link(self, obj: SalesReport) -> str:
        if not obj.csv_file:
            return "-"
        return format_html(
            '<a href="{}">Download</a>', reverse("admin:orders_salesreport_csv", args=[obj.pk])
        )

    @admin.display(description="Top products")
    def top_products_table(self, obj: SalesReport) -> str:
        if not obj.top_products:
            return "No sales."
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} {}</td></tr>",
            ((p["sku"], p["name"], p["units"], p["revenue"], obj.currency) for p in obj.top_products),
        )
        return format_html(
            "<table><tr><th>SKU</th><th>Name</th><th>Units</th><th>Revenue</th></tr>{}</table>", rows
        )


class WebhookEndpointForm(forms.ModelForm):
    url = forms.URLField(max_length=500, assume_scheme="https")
    events = forms.MultipleChoiceField(choices=WebhookEvent.choices, widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = WebhookEndpoint
        fields = ["url", "description", "events", "active", "secret"]


class WebhookDeliveryInline(admin.TabularInline):
    model = WebhookDelivery
    fields = ["delivered_at", "event", "order", "response_status"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0
    ordering = ["-delivered_at"]


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = WebhookEndpointForm
    list_display = ["url", "description", "events", "active", "created_at"]
    list_filter = ["active"]
    inlines = [WebhookDeliveryInline]


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    """What each endpoint accepted; the order's history links each delivered event here."""

    list_display = ["delivered_at", "event", "order", "endpoint", "response_status"]
    list_filter = ["event"]
    search_fields = ["order__number", "endpoint__url"]
    list_select_related = ["order", "endpoint"]
    fields = ["event", "order", "endpoint", "message", "response_status", "delivered_at"]
    readonly_fields = fields


@admin.register(Refund)
class RefundAdmin(ReadOnlyAdmin):
    """Refunds are rows; a failed one can be tried again (a new row and job, same order and amount)."""

    list_display = ["id", "order", "amount", "currency", "status", "reason", "actor", "created_at"]
    list_filter = ["status", "created_at"]
    search_fields = ["order__number", "gateway_reference"]
    actions = ["retry_failed"]

    @admin.action(description="Retry selected failed refunds", permissions=["retry"])
    def retry_failed(self, request, queryset) -> None:
        done = 0
        for refund in queryset:
            try:
                services.retry_refund(refund, actor=Actor.staff(request.user))
                done += 1
            except services.OrderError as exc:
                self.message_user(request, f"Refund {refund.pk}: {exc}", messages.WARNING)
        self.message_user(request, f"Retrying {done} refund(s).", messages.SUCCESS)

    def has_retry_permission(self, request) -> bool:
        return request.user.has_perm("orders.change_order")


@admin.register(CreditNote)
class CreditNoteAdmin(ReadOnlyAdmin):
    list_display = ["number", "order", "amount", "currency", "created_at", "emailed_at", "download_link"]
    search_fields = ["number", "order__number"]

    def get_urls(self):
        return [
            path(
                "<int:pk>/download/",
                self.admin_site.admin_view(self.download_view),
                name="orders_creditnote_download",
            ),
            *super().get_urls(),
        ]

    def download_view(self, request, pk: int):
        if not self.has_view_permission(request):
            raise PermissionDenied
        note = get_object_or_404(CreditNote, pk=pk)
        try:
            handle = note.file.open("rb")
        except FileNotFoundError:
            raise Http404("The credit note file is missing.") from None
        return FileResponse(
            handle, as_attachment=True, filename=f"{note.number}.pdf", content_type="application/pdf"
        )

    @admin.display(description="PDF")
    def download_link(self, obj: CreditNote) -> str:
        return format_html(
            '<a href="{}">Download</a>', reverse("admin:orders_creditnote_download", args=[obj.pk])
        )


@admin.register(PaymentEvent)
class PaymentEventAdmin(ReadOnlyAdmin):
    """The payment provider's events as they arrived (raw), and what became of each."""

    list_display = ["event_id", "type", "outcome", "note", "received_at", "applied_at"]
    list_filter = ["type", "outcome"]
    search_fields = ["event_id"]


def timeline(order: Order) -> list[dict]:
    """The order's whole history for staff, each event with links to what is behind it: the job that
    made it (and its dead letter, if it gave up), the webhook delivery and its endpoint, the refund, the
    shipment."""
    events = list(
        OrderEvent.objects.filter(order=order).select_related("actor_user").order_by("created_at", "id")
    )
    job_ids = {e.job_id for e in events if e.job_id}
    dead = dict(DeadLetter.objects.filter(job_id__in=job_ids).values_list("job_id", "pk")) if job_ids else {}
    rows = []
    for event in events:
        links = []
        if event.job_id:
            links.append((f"job {event.job_id}", reverse("admin:jobs_job_change", args=[event.job_id])))
            if event.job_id in dead:
                links.append(
                    ("dead letter", reverse("admin:jobs_deadletter_change", args=[dead[event.job_id]]))
                )
        facts = event.facts or {}
        if facts.get("delivery"):
            links.append(
                ("delivery", reverse("admin:orders_webhookdelivery_change", args=[facts["delivery"]]))
            )
        if facts.get("endpoint"):
            links.append(
                ("endpoint", reverse("admin:orders_webhookendpoint_change", args=[facts["endpoint"]]))
            )
        if facts.get("refund"):
            links.append(
                (f"refund {facts['refund']}", reverse("admin:orders_refund_change", args=[facts["refund"]]))
            )
        if facts.get("shipment"):
            links.append(
                (
                    f"shipment {facts['shipment']}",
                    reverse("admin:orders_shipment_change", args=[facts["shipment"]]),
                )
            )
        rows.append({"event": event, "links": links, "facts": facts})
    return rows


@admin.register(Shipment)
class ShipmentAdmin(admin.ModelAdmin):
    """Shipments are made from the order page ("Ship…") or by the warehouse; here staff move them on."""

    list_display = ["id", "order", "status", "carrier", "tracking_number", "shipped_at", "delivered_at"]
    list_filter = ["status", "carrier"]
    search_fields = ["order__number", "tracking_number", "warehouse_id"]
    list_select_related = ["order"]
    fields = [
        "order",
        "status",
        "warehouse_id",
        "carrier",
        "tracking_number",
        "tracking_url",
        "created_at",
        "shipped_at",
        "delivered_at",
        "emailed_at",
    ]
    readonly_fields = fields
    actions = ["mark_shipped", "mark_delivered"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def _apply(self, request, queryset, service, verb: str) -> None:
        done = 0
        for shipment in queryset:
            try:
                done += bool(service(shipment, actor=Actor.staff(request.user)))
            except services.OrderError as exc:
                self.message_user(request, f"Shipment {shipment.pk}: {exc}", messages.WARNING)
        self.message_user(request, f"{verb} {done} shipment(s).", messages.SUCCESS)

    @admin.action(description="Mark selected shipments shipped", permissions=["change"])
    def mark_shipped(self, request, queryset) -> None:
        self._apply(request, queryset, services.mark_shipment_shipped, "Shipped")

    @admin.action(description="Mark selected shipments delivered", permissions=["change"])
    def mark_delivered(self, request, queryset) -> None:
        self._apply(request, queryset, services.mark_shipment_delivered, "Delivered")


@admin.register(WarehouseEvent)
class WarehouseEventAdmin(ReadOnlyAdmin):
    """The warehouse's callbacks as they arrived (raw), and what became of each."""

    list_display = ["event_id", "type", "outcome", "note", "received_at", "applied_at"]
    list_filter = ["type", "outcome"]
    search_fields = ["event_id"]
