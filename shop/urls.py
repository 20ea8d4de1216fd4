from django.contrib import admin
from django.urls import include, path

from shop import health, views

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("staff/jobs/", include("jobs.urls")),
    path("admin/", admin.site.urls),
    path("", views.product_list, name="product-list"),
    path("products/<str:sku>/", views.product_detail, name="product-detail"),
    path("cart/", views.cart_detail, name="cart"),
    path("cart/add/<str:sku>/", views.cart_add, name="cart-add"),
    path("cart/update/<str:sku>/", views.cart_update, name="cart-update"),
    path("cart/remove/<str:sku>/", views.cart_remove, name="cart-remove"),
    path("", include("orders.urls")),
]

handler400 = "orders.api.bad_request"
handler404 = "orders.api.page_not_found"
handler500 = "orders.api.server_error"
