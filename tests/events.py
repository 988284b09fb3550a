"""Event types shared by the tests."""

from __future__ import annotations

from decimal import Decimal

from eventbus import Event


class LineItem(Event):
    """A line of an order (an Event only to be a frozen model)."""

    sku: str
    quantity: int
    price: Decimal


class OrderCreated(Event):
    """A background event."""

    order_id: str
    total: Decimal = Decimal("9.90")
    items: tuple[LineItem, ...] = ()


class OrderPaid(Event):
    """Another background event."""

    order_id: str


class UserBanned(Event, name="user.banned", version=2, urgent=True):
    """An urgent event with its own wire name and version."""

    user_id: str
