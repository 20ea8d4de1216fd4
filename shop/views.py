from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from shop.cart import Cart, cart_total
from shop.forms import AddToCartForm, CartQuantityForm
from shop.models import Product


@require_GET
def product_list(request: HttpRequest) -> HttpResponse:
    return render(request, "shop/product_list.html", {"products": Product.objects.active()})


@require_GET
def product_detail(request: HttpRequest, sku: str) -> HttpResponse:
    product = get_object_or_404(Product.objects.active(), sku=sku)
    return render(request, "shop/product_detail.html", {"product": product, "form": AddToCartForm()})


@require_GET
def cart_detail(request: HttpRequest) -> HttpResponse:
    lines = Cart(request).lines()
    return render(request, "shop/cart.html", {"lines": lines, "total": cart_total(lines)})


@require_POST
def cart_add(request: HttpRequest, sku: str) -> HttpResponse:
    product = get_object_or_404(Product.objects.active(), sku=sku)
    form = AddToCartForm(request.POST)
    if not form.is_valid():
        return render(request, "shop/product_detail.html", {"product": product, "form": form}, status=400)
    Cart(request).add(sku, form.cleaned_data["quantity"])
    messages.success(request, f"Added {product.name} to your cart.")
    return redirect("cart")


@require_POST
def cart_update(request: HttpRequest, sku: str) -> HttpResponse:
    cart = Cart(request)
    form = CartQuantityForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Quantity must be a whole number from 0 to 100.")
    elif sku in cart.items:
        cart.set(sku, form.cleaned_data["quantity"])
    return redirect("cart")


@require_POST
def cart_remove(request: HttpRequest, sku: str) -> HttpResponse:
    Cart(request).remove(sku)
    return redirect("cart")
