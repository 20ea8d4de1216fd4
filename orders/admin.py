from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from orders import services
from orders.models import (
    InventorySync,
    Invoice,
    Order,
    OrderEmail,
    OrderLine,
    Payment,
    SalesReport,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
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
    fields = ["created_at", "gateway", "gateway_reference", "amount", "currency", "status", "decline_reason"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    """Money and status change only through the services (the actions below), never by editing."""

    list_display = ["number", "created_at", "name", "email", "status", "total", "currency"]
    list_filter = ["status", "created_at"]
    search_fields = ["number", "email", "name"]
    date_hierarchy = "created_at"
    inlines = [OrderLineInline, PaymentInline]
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
    ]
    actions = ["refund_orders", "cancel_orders", "settle_pending_payments"]

    @admin.display(description="Invoice")
    def invoice_link(self, obj: Order) -> str:
        invoice = Invoice.objects.filter(order=obj).first()
        if invoice is None:
            return "-"
        url = reverse("admin:orders_invoice_download", args=[invoice.pk])
        return format_html('<a href="{}">{} (PDF)</a>', url, invoice.number)

    def has_add_permission(self, request) -> bool:
        return False

    def _apply(self, request, queryset, service, verb: str) -> None:
        done = 0
        for order in queryset:
            try:
                service(order)
                done += 1
            except services.OrderError as exc:
                self.message_user(request, f"{order.number}: {exc}", messages.WARNING)
        self.message_user(request, f"{verb} {done} order(s).", messages.SUCCESS)

    @admin.action(description="Refund selected orders", permissions=["change"])
    def refund_orders(self, request, queryset) -> None:
        self._apply(request, queryset, services.refund, "Refunded")

    @admin.action(description="Cancel selected paid orders (refund, restock)", permissions=["change"])
    def cancel_orders(self, request, queryset) -> None:
        self._apply(request, queryset, services.cancel_order, "Cancelled")

    @admin.action(description="Settle pending payments with the gateway", permissions=["change"])
    def settle_pending_payments(self, request, queryset) -> None:
        self._apply(request, queryset, services.settle_pending_payment, "Checked")


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
