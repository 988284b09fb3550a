"""Analytics: counts and sums of what happens in the shop.

Owns the ``analytics_*`` tables. One background subscriber takes six event types (a
union annotation) and updates the figures; it remembers the event ids it counted, so
that a redelivered event is not counted twice.
"""

import sqlite3
from decimal import Decimal

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from eventbus import Context, Registry
from examples.ecommerce.events import (
    OrderCreated,
    OrderPaid,
    PaymentFailed,
    ProductReviewed,
    UserBanned,
    UserRegistered,
)
from examples.ecommerce.storage import Database
from examples.ecommerce.web import AdminOnly

__all__ = ["SCHEMA", "AnalyticsStore", "router", "subscribers"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS analytics_seen (event_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS analytics_counters (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS analytics_products (
    sku           TEXT PRIMARY KEY,
    units_ordered INTEGER NOT NULL DEFAULT 0,
    units_paid    INTEGER NOT NULL DEFAULT 0,
    revenue       TEXT NOT NULL DEFAULT '0.00',
    reviews       INTEGER NOT NULL DEFAULT 0,
    rating_sum    INTEGER NOT NULL DEFAULT 0
);
"""

Tracked = UserRegistered | OrderCreated | OrderPaid | PaymentFailed | ProductReviewed | UserBanned


class AnalyticsStore:
    """The SQL of the analytics module."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, event_id: str, event: Tracked) -> None:
        """Count one event, once per event id."""
        with self.db.transaction() as conn:
            seen = conn.execute("INSERT OR IGNORE INTO analytics_seen VALUES (?)", (event_id,))
            if seen.rowcount == 0:
                return
            _count(conn, event)

    def counters(self) -> dict[str, str]:
        """Every counter by name."""
        return {r["name"]: r["value"] for r in self.db.query("SELECT * FROM analytics_counters")}

    def products(self) -> list[sqlite3.Row]:
        """Figures per product, by SKU."""
        return self.db.query("SELECT * FROM analytics_products ORDER BY sku")


def _count(conn: sqlite3.Connection, event: Tracked) -> None:
    match event:
        case UserRegistered():
            _add(conn, "users")
        case OrderCreated(items=items):
            _add(conn, "orders_created")
            for item in items:
                _product(conn, item.sku, "units_ordered = units_ordered + ?", item.quantity)
        case OrderPaid(amount=amount, items=items):
            _add(conn, "orders_paid")
            _add(conn, "revenue", amount)
            for item in items:
                _product(conn, item.sku, "units_paid = units_paid + ?", item.quantity)
                _revenue(conn, item.sku, item.subtotal)
        case PaymentFailed():
            _add(conn, "payments_failed")
        case ProductReviewed(sku=sku, rating=rating):
            _add(conn, "reviews")
            _product(conn, sku, "reviews = reviews + 1, rating_sum = rating_sum + ?", rating)
        case UserBanned():
            _add(conn, "bans")


def _add(conn: sqlite3.Connection, name: str, amount: Decimal | int = 1) -> None:
    row = conn.execute("SELECT value FROM analytics_counters WHERE name = ?", (name,)).fetchone()
    value = Decimal(row["value"]) + amount if row else Decimal(amount)
    conn.execute("INSERT OR REPLACE INTO analytics_counters VALUES (?, ?)", (name, str(value)))


def _product(conn: sqlite3.Connection, sku: str, assignment: str, value: int) -> None:
    conn.execute("INSERT OR IGNORE INTO analytics_products (sku) VALUES (?)", (sku,))
    conn.execute(f"UPDATE analytics_products SET {assignment} WHERE sku = ?", (value, sku))


def _revenue(conn: sqlite3.Connection, sku: str, amount: Decimal) -> None:
    row = conn.execute("SELECT revenue FROM analytics_products WHERE sku = ?", (sku,)).fetchone()
    total = Decimal(row["revenue"]) + amount
    conn.execute("UPDATE analytics_products SET revenue = ? WHERE sku = ?", (str(total), sku))


def subscribers(store: AnalyticsStore) -> Registry:
    """Analytics' one subscriber, for six event types."""
    registry = Registry()

    @registry.subscribe(group="analytics")
    async def record(event: Tracked, context: Context) -> None:
        """Update the figures this event changes."""
        store.record(context.envelope.id, event)

    return registry


class ProductFigures(BaseModel):
    """Sales and reviews of one product."""

    sku: str
    units_ordered: int
    units_paid: int
    revenue: Decimal
    reviews: int
    average_rating: Decimal | None


class Figures(BaseModel):
    """``GET /analytics``."""

    users: int
    orders_created: int
    orders_paid: int
    payments_failed: int
    revenue: Decimal
    reviews: int
    bans: int
    products: list[ProductFigures]


def router(store: AnalyticsStore, admin: AdminOnly) -> APIRouter:
    """``GET /analytics``."""
    api = APIRouter(tags=["analytics"])

    @api.get("/analytics", dependencies=[Depends(admin)])
    async def figures() -> Figures:
        """The shop's figures, as far as analytics has counted."""
        counts = store.counters()

        def count(name: str) -> int:
            return int(Decimal(counts.get(name, "0")))

        return Figures(
            users=count("users"),
            orders_created=count("orders_created"),
            orders_paid=count("orders_paid"),
            payments_failed=count("payments_failed"),
            revenue=Decimal(counts.get("revenue", "0.00")),
            reviews=count("reviews"),
            bans=count("bans"),
            products=[_figures(row) for row in store.products()],
        )

    return api


def _figures(row: sqlite3.Row) -> ProductFigures:
    reviews = row["reviews"]
    average = (Decimal(row["rating_sum"]) / reviews).quantize(Decimal("0.01")) if reviews else None
    return ProductFigures(
        sku=row["sku"],
        units_ordered=row["units_ordered"],
        units_paid=row["units_paid"],
        revenue=Decimal(row["revenue"]),
        reviews=reviews,
        average_rating=average,
    )
