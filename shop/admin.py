from django.contrib import admin

from shop.models import Product


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["sku", "name", "price", "currency", "stock", "active"]
    list_filter = ["active"]
    search_fields = ["sku", "name"]
    ordering = ["sku"]
