"""Shipping: a shipment for every paid order.

Owns the ``shipments`` table. Reacts to ``OrderPaid`` in the background; a redelivered
event finds the shipment already there (one per order).
"""

import json
import sqlite3
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel

from eventbus import Registry
from examples.ecommerce.events import Address, LineItem, OrderPaid
from examples.ecommerce.storage import Database
from examples.ecommerce.web import CurrentUser, Principal, new_id

__all__ = ["SCHEMA", "ShipmentStore", "router", "subscribers"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS shipments (
    shipment_id TEXT PRIMARY KEY,
    order_id    TEXT NOT NULL UNIQUE,
    user_id     TEXT NOT NULL,
    ship_to     TEXT NOT NULL,
    items       TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
"""


class ShipmentStore:
    """The SQL of the shipping module."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, order: OrderPaid) -> None:
        """A shipment ready to be picked for the order (once per order)."""
        self.db.execute(
            "INSERT OR IGNORE INTO shipments VALUES (?, ?, ?, ?, ?, 'ready to pick', ?)",
            (
                new_id("sh"),
                order.order_id,
                order.user_id,
                order.ship_to.model_dump_json(),
                json.dumps([item.model_dump(mode="json") for item in order.items]),
                datetime.now(UTC).isoformat(),
            ),
        )

    def of_order(self, order_id: str) -> sqlite3.Row | None:
        """The shipment of an order, or None."""
        return self.db.query_one("SELECT * FROM shipments WHERE order_id = ?", (order_id,))


def subscribers(store: ShipmentStore) -> Registry:
    """Shipping's reaction: ship paid orders."""
    registry = Registry()

    @registry.subscribe(group="shipping")
    async def create_shipment(event: OrderPaid) -> None:
        """Create the order's shipment."""
        store.create(event)

    return registry


class ShipmentOut(BaseModel):
    """A shipment, as the API shows it."""

    shipment_id: str
    order_id: str
    status: str
    ship_to: Address
    items: list[LineItem]


def router(store: ShipmentStore, user: CurrentUser) -> APIRouter:
    """``GET /orders/{id}/shipment``."""
    api = APIRouter(tags=["shipping"])

    @api.get("/orders/{order_id}/shipment")
    async def shipment(order_id: str, customer: Annotated[Principal, Depends(user)]) -> ShipmentOut:
        """The shipment of one of the customer's orders; 404 until the order is paid."""
        row = store.of_order(order_id)
        if row is None or row["user_id"] != customer.user_id:
            raise HTTPException(404, f"no shipment for order {order_id}")
        return ShipmentOut(
            shipment_id=row["shipment_id"],
            order_id=row["order_id"],
            status=row["status"],
            ship_to=Address.model_validate_json(row["ship_to"]),
            items=[LineItem.model_validate(item) for item in json.loads(row["items"])],
        )

    return api
