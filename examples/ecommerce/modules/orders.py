"""Orders: placing and paying orders.

Owns the ``orders`` table, in a database of its own reached through SQLAlchemy (async),
the database of the bus's outbox. Publishes ``OrderCreated``, ``OrderPaid`` and
``PaymentFailed``. ``POST /orders`` saves the order and publishes ``OrderCreated`` in one
transaction, and answers at once: the event exists if and only if the order does, and
stock, email and analytics react in the background. On
``PaymentFailed`` the order is cancelled inside ``publish()`` (``mode="immediate"``), so
that the payment's 402 answer and the next ``GET /orders/{id}`` already say so.

Prices and stock come from an ``OfferLookup`` (answered by products) that the
composition root passes in: this module imports no other module.
"""

import json
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import (
    CheckConstraint,
    Column,
    MetaData,
    RowMapping,
    String,
    Table,
    Text,
    func,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from eventbus import PublishOutcomeUnknownError, Registry
from examples.ecommerce.contracts import OfferLookup
from examples.ecommerce.events import (
    Address,
    LineItem,
    OrderCreated,
    OrderPaid,
    PaymentFailed,
)
from examples.ecommerce.payments import PaymentGateway, luhn_valid
from examples.ecommerce.web import CurrentUser, Principal, Publish, new_id

__all__ = ["ORDERS", "OrderStore", "router", "subscribers"]

METADATA = MetaData()
ORDERS = Table(
    "orders",
    METADATA,
    Column("order_id", String(40), primary_key=True),
    Column("user_id", String(40), nullable=False, index=True),
    Column("email", String(320), nullable=False),
    Column("status", String(12), nullable=False),
    Column("items", Text, nullable=False),
    Column("total", String(20), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("ship_to", Text, nullable=False),
    Column("payment_id", String(80)),
    Column("failure_reason", Text),
    Column("created_at", String(40), nullable=False),
    CheckConstraint("status IN ('pending', 'paying', 'paid', 'cancelled')", name="order_status"),
)


class OrderStore:
    """The SQL of the orders module, on its own engine (SQLAlchemy Core, async)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self) -> None:
        """Create the ``orders`` table where it is missing."""
        async with self.engine.begin() as conn:
            await conn.run_sync(METADATA.create_all)

    def transaction(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """``async with store.transaction() as conn:`` commits, or rolls back on error."""
        return self.engine.begin()

    async def add(self, conn: AsyncConnection, order: OrderCreated) -> None:
        """Save a new, pending order in the transaction ``conn``."""
        await conn.execute(
            ORDERS.insert().values(
                order_id=order.order_id,
                user_id=order.user_id,
                email=order.email,
                status="pending",
                items=json.dumps([item.model_dump(mode="json") for item in order.items]),
                total=str(order.total),
                currency=order.currency,
                ship_to=order.ship_to.model_dump_json(),
                created_at=datetime.now(UTC).isoformat(),
            )
        )

    async def get(self, order_id: str) -> RowMapping | None:
        """One order, or None."""
        async with self.engine.connect() as conn:
            found = await conn.execute(ORDERS.select().where(ORDERS.c.order_id == order_id))
            return found.mappings().first()

    async def count(self) -> int:
        """How many orders there are."""
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(ORDERS))).scalar_one())

    async def set_status(
        self, order_id: str, status: str, *, was: tuple[str, ...], **fields: str
    ) -> bool:
        """Move an order from one of the ``was`` states to ``status``; False if it was not."""
        change = (
            ORDERS.update()
            .where(ORDERS.c.order_id == order_id, ORDERS.c.status.in_(was))
            .values(status=status, **fields)
        )
        async with self.engine.begin() as conn:
            return (await conn.execute(change)).rowcount == 1


def subscribers(store: OrderStore) -> Registry:
    """Orders' reaction: cancel an order whose payment failed, before publish returns."""
    registry = Registry()

    @registry.subscribe(group="orders", mode="immediate")
    async def cancel_order(event: PaymentFailed) -> None:
        """Cancel the order; its 402 answer and the next GET already show it."""
        await store.set_status(
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
        """Save the order and publish OrderCreated in one transaction, and answer: the rest
        happens in the background.

        422 for an unknown product, 409 when there is not enough stock left. With the
        outbox, the event is written in the order's transaction; without it, a publish
        that fails rolls the order back (503), and one whose outcome is unknown keeps it.
        """
        order = _priced(body, customer, offers)
        unknown: PublishOutcomeUnknownError | None = None
        async with store.transaction() as conn:
            await store.add(conn, order)
            try:
                await publish(order, correlation_id=order.order_id, transaction=conn)
            except PublishOutcomeUnknownError as exc:
                unknown = exc  # the event may be stored: keep the order; the client gets 503
        if unknown is not None:
            raise unknown
        return _pending(order)

    @api.get("/orders/{order_id}")
    async def get_order(order_id: str, customer: Annotated[Principal, Depends(user)]) -> OrderOut:
        """One of the customer's orders; 404 for unknown ids and other people's orders."""
        return _order(await _owned(store, order_id, customer))

    @api.post("/orders/{order_id}/pay")
    async def pay_order(
        order_id: str, body: PaymentIn, customer: Annotated[Principal, Depends(user)]
    ) -> OrderOut:
        """Charge the card: publishes OrderPaid, or PaymentFailed and answers 402."""
        row = await _owned(store, order_id, customer)
        if not await store.set_status(order_id, "paying", was=("pending",)):
            raise HTTPException(409, f"order {order_id} is {row['status']}, not pending")
        amount, currency = Decimal(row["total"]), row["currency"]
        try:
            charge = await gateway.charge(body.card_number, amount, currency)
        except BaseException:
            with anyio.CancelScope(shield=True):  # a cancelled request still releases it
                await store.set_status(order_id, "pending", was=("paying",))
            raise
        if charge.approved and charge.payment_id is not None:
            await store.set_status(order_id, "paid", was=("paying",), payment_id=charge.payment_id)
            paid = _order(await _owned(store, order_id, customer))
            await publish(_paid(paid, customer, charge.payment_id), correlation_id=order_id)
            return paid
        reason = charge.reason or "declined"
        failed = _failed(paid_for=row, customer=customer, card=body.card_number, reason=reason)
        await publish(failed, correlation_id=order_id)  # cancels the order before returning
        status = (await _owned(store, order_id, customer))["status"]
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


def _failed(*, paid_for: RowMapping, customer: Principal, card: str, reason: str) -> PaymentFailed:
    return PaymentFailed(
        order_id=paid_for["order_id"],
        user_id=customer.user_id,
        email=customer.email,
        amount=Decimal(paid_for["total"]),
        currency=paid_for["currency"],
        reason=reason,
        card_last4=card[-4:],
    )


async def _owned(store: OrderStore, order_id: str, customer: Principal) -> RowMapping:
    row = await store.get(order_id)
    if row is None or row["user_id"] != customer.user_id:
        raise HTTPException(404, f"no order {order_id}")
    return row


def _order(row: RowMapping) -> OrderOut:
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
