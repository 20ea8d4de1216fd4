from django.urls import path, re_path

from orders import api, openapi, payment_views, views

urlpatterns = [
    path("checkout/", views.checkout, name="checkout"),
    path("orders/", views.create_order, name="order-create"),
    path("orders/<str:token>/", views.order_detail, name="order-detail"),
    path("orders/<str:token>/cancel", views.order_cancel, name="order-cancel"),
    path("orders/<str:token>/invoice.pdf", views.invoice_download, name="order-invoice"),
    path("orders/<str:token>/payment-return", payment_views.payment_return, name="order-payment-return"),
    path("webhooks/stripe", payment_views.stripe_webhook, name="stripe-webhook"),
    path("webhooks/warehouse", api.warehouse_webhook, name="warehouse-webhook"),
    path(
        "fake-gateway/authenticate/<str:reference>/",
        payment_views.fake_authenticate,
        name="fake-gateway-authenticate",
    ),
    path("api/orders", api.create_order, name="api-order-create"),
    path("api/orders/<str:token>", api.order_detail, name="api-order-detail"),
    path("api/openapi.json", openapi.openapi_json, name="api-openapi"),
    path("api/docs", openapi.openapi_page, name="api-docs"),
    re_path(r"^api/(?P<rest>.*)$", api.not_found),
]
