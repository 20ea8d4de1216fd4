"""Pydantic models of the JSON API's request bodies."""

from typing import Annotated

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email
from pydantic import BaseModel, ConfigDict, Field, field_validator

from orders.services import MAX_LINES, MAX_QUANTITY, ShippingAddress

Text = Annotated[str, Field(min_length=1, max_length=200)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, strict=True)


class ShippingAddressIn(_Body):
    line1: Text
    city: Annotated[str, Field(min_length=1, max_length=100)]
    postal_code: Annotated[str, Field(min_length=1, max_length=20)]
    country: Annotated[str, Field(pattern=r"^[A-Za-z]{2}$", description="ISO 3166-1 alpha-2 code")]

    def to_address(self) -> ShippingAddress:
        return ShippingAddress(self.line1, self.city, self.postal_code, self.country.upper())


class OrderLineIn(_Body):
    sku: Annotated[str, Field(min_length=1, max_length=64)]
    quantity: Annotated[int, Field(ge=1, le=MAX_QUANTITY)]


class OrderIn(_Body):
    """Body of ``POST /api/orders``.

    A SKU may appear on one line only: duplicates are rejected (400), not merged, so that the quantity
    the client meant is never guessed.
    """

    email: Annotated[str, Field(max_length=254)]
    name: Text
    shipping_address: ShippingAddressIn
    lines: Annotated[list[OrderLineIn], Field(min_length=1, max_length=MAX_LINES)]
    payment_token: Annotated[str, Field(min_length=1, max_length=100)]

    @field_validator("email")
    @classmethod
    def _valid_email(cls, value: str) -> str:
        try:
            validate_email(value)
        except DjangoValidationError:
            raise ValueError("Enter a valid email address.") from None
        return value

    @field_validator("lines")
    @classmethod
    def _unique_skus(cls, lines: list[OrderLineIn]) -> list[OrderLineIn]:
        seen: set[str] = set()
        for line in lines:
            if line.sku in seen:
                raise ValueError(f"SKU {line.sku} appears on more than one line.")
            seen.add(line.sku)
        return lines

    def items(self) -> dict[str, int]:
        return {line.sku: line.quantity for line in self.lines}
