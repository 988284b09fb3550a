"""Orders: placing and paying orders.

Owns the ``orders`` table. Publishes ``OrderCreated``, ``OrderPaid`` and
``PaymentFailed``. ``POST /orders`` saves the order, publishes ``OrderCreated`` and
answers at once: stock, email and analytics react in the background. On
``PaymentFailed`` the order is cancelled inside ``publish()`` (``mode="immediate"``), so
that the payment's 402 answer and the next ``GET /orders/{id}`` already say so.

Prices and stock come from an ``OfferLookup`` (answered by products) that the
composition root passes in: this module imports no other module.
"""

import json
import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field, field_validator

from eventbus import PublishError, PublishOutcomeUnknownError, Registry, TransportError
from examples.ecommerce.contracts import OfferLookup
from examples.ecommerce.events import (
    Address,
    LineItem,
    OrderCreated,
    OrderPaid,
    PaymentFailed,
)
from examples.ecommerce.payments import PaymentGateway, luhn_valid
from examples.ecommerce.storage import Database
from examples.ecommerce.web import CurrentUser, Principal, Publish, new_id

__all__ = ["SCHEMA", "OrderStore", "router", "subscribers"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id       TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL,
    email          TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('pending', 'paying', 'paid', 'cancelled')),
    items          TEXT NOT NULL,
    total          TEXT NOT NULL,
    currency       TEXT NOT NULL,
    ship_to        TEXT NOT NULL,
    payment_id     TEXT,
    failure_reason TEXT,
    created_at     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_by_user ON orders (user_id);
"""


class OrderStore:
    """The SQL of the orders module."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, order: OrderCreated) -> None:
        """Save a new, pending order."""
        self.db.execute(
            "INSERT INTO orders (order_id, user_id, email, status, items, total, currency,"
            " ship_to, created_at) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
            (
                order.order_id,
                order.user_id,
                order.email,
                json.dumps([item.model_dump(mode="json") for item in order.items]),
                str(order.total),
                order.currency,
                order.ship_to.model_dump_json(),
                datetime.now(UTC).isoformat(),
            ),
        )

    def remove(self, order_id: str) -> None:
        """Delete an order that could not be published."""
        self.db.execute("DELETE FROM orders WHERE order_id = ?", (order_id,))

    def get(self, order_id: str) -> sqlite3.Row | None:
        """One order, or None."""
        return self.db.query_one("SELECT * FROM orders WHERE order_id = ?", (order_id,))

    def set_status(
        self, order_id: str, status: str, *, was: tuple[str, ...], **fields: str
    ) -> bool:
        """Move an order from one of the ``was`` states to ``status``; False if it was not."""
        sets = "".join(f", {name} = ?" for name in fields)  # names from this module only
        marks = ", ".join("?" * len(was))
        changed = self.db.execute(
            f"UPDATE orders SET status = ?{sets} WHERE order_id = ? AND status IN ({marks})",
            (status, *fields.values(), order_id, *was),
        )
        return changed == 1


def subscribers(store: OrderStore) -> Registry:
    """Orders' reaction: cancel an order whose payment failed, before publish returns."""
    registry = Registry()

    @registry.subscribe(group="orders", mode="immediate")
    async def cancel_order(event: PaymentFailed) -> None:
        """Cancel the order; its 402 answer and the next GET already show it."""
        store.set_status(
            event.order_id, "cancelled", was=("pending", "paying"), failure_reason=event.reason
        )

    return registry


class ItemIn(BaseModel):
    """One line of ``POST /orders``."""

    sku: str = Field(min_length=1, max_length=40)
    quantity: int = Field(ge=1, le=100)


class OrderIn(BaseModel):
    """``POST /orders``: what to buy and where to ship it."""

    items: list[ItemIn] = Field(min_length=1, max_length=50)
    ship_to: Address

    @field_validator("items")
    @classmethod
    def one_line_per_sku(cls, items: list[ItemIn]) -> list[ItemIn]:
        """Each product appears once; its quantity says how many."""
        skus = [item.sku for item in items]
        if len(set(skus)) != len(skus):
            raise ValueError("list each product once, with its quantity")
        return items


class PaymentIn(BaseModel):
    """``POST /orders/{id}/pay``."""

    card_number: str = Field(max_length=30)

    @field_validator("card_number")
    @classmethod
    def valid_card(cls, number: str) -> str:
        """Digits (spaces allowed) that pass the Luhn checksum."""
        digits = number.replace(" ", "")
        if not luhn_valid(digits):
            raise ValueError("not a valid card number")
        return digits


class OrderOut(BaseModel):
    """An order, as the API shows it."""

    order_id: str
    status: str
    items: list[LineItem]
    total: Decimal
    currency: str
    ship_to: Address
    payment_id: str | None
    failure_reason: str | None


def router(
    store: OrderStore,
    publish: Publish,
    user: CurrentUser,
    offers: OfferLookup,
    gateway: PaymentGateway,
) -> APIRouter:
    """``POST /orders``, ``GET /orders/{id}``, ``POST /orders/{id}/pay``."""
    api = APIRouter(tags=["orders"])

    @api.post("/orders", status_code=201)
    async def create_order(
        body: OrderIn, customer: Annotated[Principal, Depends(user)]
    ) -> OrderOut:
        """Save the order, publish OrderCreated, answer: the rest happens in the background.

        422 for an unknown product, 409 when there is not enough stock left.
        """
        order = _priced(body, customer, offers)
        store.add(order)
        try:
            await publish(order, correlation_id=order.order_id)
        except PublishOutcomeUnknownError:
            raise  # the event may be stored: keep the order; the client gets 503
        except (PublishError, TransportError):
            store.remove(order.order_id)  # nobody will ever hear of it
            raise
        return _pending(order)

    @api.get("/orders/{order_id}")
    async def get_order(order_id: str, customer: Annotated[Principal, Depends(user)]) -> OrderOut:
        """One of the customer's orders; 404 for unknown ids and other people's orders."""
        return _order(_owned(store, order_id, customer))

    @api.post("/orders/{order_id}/pay")
    async def pay_order(
        order_id: str, body: PaymentIn, customer: Annotated[Principal, Depends(user)]
    ) -> OrderOut:
        """Charge the card: publishes OrderPaid, or PaymentFailed and answers 402."""
        row = _owned(store, order_id, customer)
        if not store.set_status(order_id, "paying", was=("pending",)):
            raise HTTPException(409, f"order {order_id} is {row['status']}, not pending")
        amount, currency = Decimal(row["total"]), row["currency"]
        try:
            charge = await gateway.charge(body.card_number, amount, currency)
        except BaseException:
            store.set_status(order_id, "pending", was=("paying",))
            raise
        if charge.approved and charge.payment_id is not None:
            store.set_status(order_id, "paid", was=("paying",), payment_id=charge.payment_id)
            paid = _order(_owned(store, order_id, customer))
            await publish(_paid(paid, customer, charge.payment_id), correlation_id=order_id)
            return paid
        reason = charge.reason or "declined"
        failed = _failed(paid_for=row, customer=customer, card=body.card_number, reason=reason)
        await publish(failed, correlation_id=order_id)  # cancels the order before returning
        status = _owned(store, order_id, customer)["status"]
        raise HTTPException(402, f"payment declined ({reason}); order {order_id} is {status}")

    return api


def _priced(body: OrderIn, customer: Principal, offers: OfferLookup) -> OrderCreated:
    """The order with today's prices; 422 for unknown products, 409 for short stock."""
    found = offers([item.sku for item in body.items])
    items = []
    for wanted in body.items:
        offer = found.get(wanted.sku)
        if offer is None:
            raise HTTPException(422, f"unknown product {wanted.sku}")
        if offer.stock < wanted.quantity:
            raise HTTPException(409, f"only {offer.stock} left of {wanted.sku}")
        items.append(
            LineItem(
                sku=offer.sku, name=offer.name, quantity=wanted.quantity, unit_price=offer.price
            )
        )
    return OrderCreated(
        order_id=new_id("o"),
        user_id=customer.user_id,
        email=customer.email,
        items=tuple(items),
        total=sum((item.subtotal for item in items), Decimal("0.00")),
        ship_to=body.ship_to,
    )


def _pending(order: OrderCreated) -> OrderOut:
    return OrderOut(
        order_id=order.order_id,
        status="pending",
        items=list(order.items),
        total=order.total,
        currency=order.currency,
        ship_to=order.ship_to,
        payment_id=None,
        failure_reason=None,
    )


def _paid(order: OrderOut, customer: Principal, payment_id: str) -> OrderPaid:
    return OrderPaid(
        order_id=order.order_id,
        user_id=customer.user_id,
        amount=order.total,
        currency=order.currency,
        payment_id=payment_id,
        items=tuple(order.items),
        ship_to=order.ship_to,
    )


def _failed(*, paid_for: sqlite3.Row, customer: Principal, card: str, reason: str) -> PaymentFailed:
    return PaymentFailed(
        order_id=paid_for["order_id"],
        user_id=customer.user_id,
        email=customer.email,
        amount=Decimal(paid_for["total"]),
        currency=paid_for["currency"],
        reason=reason,
        card_last4=card[-4:],
    )


def _owned(store: OrderStore, order_id: str, customer: Principal) -> sqlite3.Row:
    row = store.get(order_id)
    if row is None or row["user_id"] != customer.user_id:
        raise HTTPException(404, f"no order {order_id}")
    return row


def _order(row: sqlite3.Row) -> OrderOut:
    return OrderOut(
        order_id=row["order_id"],
        status=row["status"],
        items=[LineItem.model_validate(item) for item in json.loads(row["items"])],
        total=Decimal(row["total"]),
        currency=row["currency"],
        ship_to=Address.model_validate_json(row["ship_to"]),
        payment_id=row["payment_id"],
        failure_reason=row["failure_reason"],
    )
