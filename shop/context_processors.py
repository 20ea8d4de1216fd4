from django.conf import settings
from django.http import HttpRequest

from shop.cart import SESSION_KEY


def cart(request: HttpRequest) -> dict:
    """The cart's item count for the header; read from the session only, no query."""
    session = getattr(request, "session", None)
    items = (session.get(SESSION_KEY) if session is not None else None) or {}
    return {"cart_count": sum(items.values()), "shop_name": settings.SHOP_NAME}
