"""The events of the shop: what one module tells the others happened.

Events are immutable and, in one process, shared by every subscriber, so nested
collections are tuples of frozen models. Money is ``Decimal`` (JSON carries it as a
string, exactly). ``UserBanned`` and ``PaymentFailed`` are urgent: in every group that
takes them they have consumer loops and handler slots of their own, so they never wait
behind a backlog of other events.
"""

from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from eventbus import Event

__all__ = [
    "Address",
    "LineItem",
    "Money",
    "OrderCreated",
    "OrderPaid",
    "PaymentFailed",
    "ProductReviewed",
    "StockLow",
    "UserBanned",
    "UserRegistered",
]

Money = Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=2)]


class LineItem(BaseModel):
    """One line of an order: a product, how many, and its unit price when ordered."""

    model_config = ConfigDict(frozen=True)

    sku: str
    name: str
    quantity: int = Field(gt=0)
    unit_price: Money

    @property
    def subtotal(self) -> Decimal:
        """``quantity`` times ``unit_price``."""
        return self.unit_price * self.quantity


class Address(BaseModel):
    """Where an order ships to."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1, max_length=100)
    street: str = Field(min_length=1, max_length=200)
    city: str = Field(min_length=1, max_length=100)
    postal_code: str = Field(min_length=1, max_length=20)
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166 alpha-2 code")


class UserRegistered(Event):
    """A visitor created an account (auth). Email welcomes them, analytics counts them."""

    user_id: str
    email: str
    name: str


class OrderCreated(Event):
    """A customer placed an order (orders). Products reserve stock, email confirms it,
    analytics counts it."""

    order_id: str
    user_id: str
    email: str
    items: tuple[LineItem, ...] = Field(min_length=1)
    total: Money
    currency: str = "EUR"
    ship_to: Address


class OrderPaid(Event):
    """The payment of an order went through (orders). Shipping ships it; analytics books
    the revenue."""

    order_id: str
    user_id: str
    amount: Money
    currency: str
    payment_id: str
    items: tuple[LineItem, ...]
    ship_to: Address


class PaymentFailed(Event, urgent=True):
    """The gateway declined a payment (orders). Orders cancels the order at once,
    products release its stock, email tells the customer."""

    order_id: str
    user_id: str
    email: str
    amount: Money
    currency: str
    reason: str
    card_last4: str


class ProductReviewed(Event):
    """A customer reviewed a product (products). Products recompute its rating;
    analytics counts it."""

    review_id: str
    sku: str
    user_id: str
    rating: int = Field(ge=1, le=5)


class StockLow(Event):
    """A product's stock fell below the threshold (products). Admin records an alert."""

    sku: str
    name: str
    stock: int = Field(ge=0)
    threshold: int


class UserBanned(Event, urgent=True):
    """An admin banned a user (admin). Auth blocks them before the ban request returns;
    email tells them why."""

    user_id: str
    email: str
    reason: str
