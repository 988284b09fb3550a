"""Products: the catalog, stock and reviews.

Owns the ``products``, ``reviews`` and ``reservations`` tables. Publishes
``ProductReviewed`` and ``StockLow``. In the background it reserves stock on
``OrderCreated`` (raising ``StockLow`` when a product falls below the threshold), puts it
back on ``PaymentFailed``, and recomputes a product's rating on ``ProductReviewed``.

``PaymentFailed`` is urgent, so it may overtake the ``OrderCreated`` of its order: a
release that finds nothing reserved leaves a marker, and the late reservation is
skipped. Every handler is idempotent, since delivery is at least once.
"""

import json
import sqlite3
from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from eventbus import Context, Registry
from examples.ecommerce.contracts import Offer
from examples.ecommerce.events import (
    LineItem,
    OrderCreated,
    PaymentFailed,
    ProductReviewed,
    StockLow,
)
from examples.ecommerce.storage import Database
from examples.ecommerce.web import CurrentUser, Principal, Publish, new_id

__all__ = ["CATALOG", "SCHEMA", "ProductStore", "router", "subscribers"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    sku     TEXT PRIMARY KEY,
    name    TEXT NOT NULL,
    price   TEXT NOT NULL,
    stock   INTEGER NOT NULL CHECK (stock >= 0),
    rating  TEXT,
    reviews INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS reviews (
    review_id  TEXT PRIMARY KEY,
    sku        TEXT NOT NULL REFERENCES products (sku),
    user_id    TEXT NOT NULL,
    rating     INTEGER NOT NULL,
    comment    TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (sku, user_id)
);
CREATE TABLE IF NOT EXISTS reservations (
    order_id TEXT PRIMARY KEY,
    state    TEXT NOT NULL CHECK (state IN ('reserved', 'released')),
    lines    TEXT NOT NULL,
    alerts   TEXT NOT NULL
);
"""

CATALOG = (
    ("MUG-01", "Enamel mug", "12.50", 40),
    ("TEE-01", "Organic T-shirt", "19.90", 25),
    ("CAP-01", "Canvas cap", "15.00", 6),
    ("BAG-01", "Tote bag", "9.50", 30),
)


class ProductStore:
    """The SQL of the products module."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def seed(self) -> None:
        """Add the sample catalog (products already there are left alone)."""
        with self.db.transaction() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO products (sku, name, price, stock) VALUES (?, ?, ?, ?)",
                CATALOG,
            )

    def set_stock(self, sku: str, stock: int) -> None:
        """Set a product's stock (a delivery arrived)."""
        self.db.execute("UPDATE products SET stock = ? WHERE sku = ?", (stock, sku))

    def all(self) -> list[sqlite3.Row]:
        """Every product, by SKU."""
        return self.db.query("SELECT * FROM products ORDER BY sku")

    def get(self, sku: str) -> sqlite3.Row | None:
        """One product, or None."""
        return self.db.query_one("SELECT * FROM products WHERE sku = ?", (sku,))

    def offers(self, skus: Collection[str]) -> dict[str, Offer]:
        """The ``OfferLookup`` orders asks: price, name and stock of these SKUs."""
        marks = ", ".join("?" * len(skus))
        rows = self.db.query(f"SELECT * FROM products WHERE sku IN ({marks})", tuple(skus))
        return {r["sku"]: Offer(r["sku"], r["name"], Decimal(r["price"]), r["stock"]) for r in rows}

    def add_review(self, review_id: str, sku: str, user_id: str, rating: int, text: str) -> bool:
        """Store a review; False when this user already reviewed this product."""
        changed = self.db.execute(
            "INSERT OR IGNORE INTO reviews VALUES (?, ?, ?, ?, ?, ?)",
            (review_id, sku, user_id, rating, text, datetime.now(UTC).isoformat()),
        )
        return changed == 1

    def refresh_rating(self, sku: str) -> None:
        """Recompute a product's average rating from its reviews."""
        row = self.db.query_one(
            "SELECT count(*) AS n, sum(rating) AS total FROM reviews WHERE sku = ?", (sku,)
        )
        if row is None or not row["n"]:
            return
        rating = (Decimal(row["total"]) / row["n"]).quantize(Decimal("0.01"))
        self.db.execute(
            "UPDATE products SET rating = ?, reviews = ? WHERE sku = ?",
            (str(rating), row["n"], sku),
        )

    def reserve(self, order_id: str, items: Iterable[LineItem], threshold: int) -> list[StockLow]:
        """Take an order's items out of stock, once; return the alerts not yet published.

        A product falls "low" when this reservation takes it below ``threshold``.
        Nothing is reserved for an order that was already released (cancelled first).
        """
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT state, alerts FROM reservations WHERE order_id = ?", (order_id,)
            ).fetchone()
            if row is not None:  # a redelivery, or the order was cancelled first
                return [StockLow.model_validate(a) for a in json.loads(row["alerts"])]
            lines, alerts = _take(conn, items, threshold)
            conn.execute(
                "INSERT INTO reservations VALUES (?, 'reserved', ?, ?)",
                (order_id, json.dumps(lines), json.dumps([a.model_dump() for a in alerts])),
            )
        return alerts

    def alerts_published(self, order_id: str) -> None:
        """Forget the alerts of a reservation once they are published."""
        self.db.execute("UPDATE reservations SET alerts = '[]' WHERE order_id = ?", (order_id,))

    def release(self, order_id: str) -> None:
        """Put an order's reserved items back in stock, once.

        When nothing is reserved yet, a 'released' marker makes the late reservation a
        no-op.
        """
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT state, lines FROM reservations WHERE order_id = ?", (order_id,)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO reservations VALUES (?, 'released', '{}', '[]')", (order_id,)
                )
                return
            if row["state"] == "released":
                return
            for sku, quantity in json.loads(row["lines"]).items():
                conn.execute("UPDATE products SET stock = stock + ? WHERE sku = ?", (quantity, sku))
            conn.execute(
                "UPDATE reservations SET state = 'released' WHERE order_id = ?", (order_id,)
            )


def _take(
    conn: sqlite3.Connection, items: Iterable[LineItem], threshold: int
) -> tuple[dict[str, int], list[StockLow]]:
    """Decrease stock for each item (never below zero); the quantities taken and alerts."""
    taken: dict[str, int] = {}
    alerts: list[StockLow] = []
    for item in items:
        row = conn.execute("SELECT name, stock FROM products WHERE sku = ?", (item.sku,)).fetchone()
        if row is None:
            continue
        take = min(item.quantity, row["stock"])
        after = row["stock"] - take
        conn.execute("UPDATE products SET stock = ? WHERE sku = ?", (after, item.sku))
        taken[item.sku] = taken.get(item.sku, 0) + take
        if row["stock"] >= threshold > after:
            alerts.append(
                StockLow(sku=item.sku, name=row["name"], stock=after, threshold=threshold)
            )
    return taken, alerts


def subscribers(store: ProductStore, low_stock_threshold: int) -> Registry:
    """Products' reactions: reserve, release, rate."""
    registry = Registry()

    @registry.subscribe(group="products")
    async def reserve_stock(event: OrderCreated, context: Context) -> None:
        """Take the ordered items out of stock; raise StockLow for products running low."""
        alerts = store.reserve(event.order_id, event.items, low_stock_threshold)
        for alert in alerts:  # published again if this attempt fails before the end
            await context.publish(alert, headers={"source": "products"})
        if alerts:
            store.alerts_published(event.order_id)

    @registry.subscribe(group="products")
    async def release_stock(event: PaymentFailed) -> None:
        """Put the items of an order whose payment failed back in stock."""
        store.release(event.order_id)

    @registry.subscribe(group="products")
    async def update_rating(event: ProductReviewed) -> None:
        """Recompute the product's average rating."""
        store.refresh_rating(event.sku)

    return registry


class ProductOut(BaseModel):
    """A product, as the API shows it."""

    sku: str
    name: str
    price: Decimal
    stock: int
    rating: Decimal | None
    reviews: int


class ReviewIn(BaseModel):
    """``POST /products/{sku}/reviews``."""

    rating: int = Field(ge=1, le=5)
    comment: str = Field(default="", max_length=2000)


class ReviewOut(BaseModel):
    """A stored review."""

    review_id: str
    sku: str
    rating: int


def router(store: ProductStore, publish: Publish, user: CurrentUser) -> APIRouter:
    """``GET /products``, ``GET /products/{sku}``, ``POST /products/{sku}/reviews``."""
    api = APIRouter(tags=["products"])

    @api.get("/products")
    async def list_products() -> list[ProductOut]:
        """The catalog with stock and ratings."""
        return [_product(row) for row in store.all()]

    @api.get("/products/{sku}")
    async def get_product(sku: str) -> ProductOut:
        """One product; 404 when unknown."""
        row = store.get(sku)
        if row is None:
            raise HTTPException(404, f"no product {sku}")
        return _product(row)

    @api.post("/products/{sku}/reviews", status_code=201)
    async def review(
        sku: str, body: ReviewIn, principal: Annotated[Principal, Depends(user)]
    ) -> ReviewOut:
        """Review a product once; publishes ProductReviewed (the rating follows)."""
        if store.get(sku) is None:
            raise HTTPException(404, f"no product {sku}")
        review_id = new_id("rv")
        if not store.add_review(review_id, sku, principal.user_id, body.rating, body.comment):
            raise HTTPException(409, f"you already reviewed {sku}")
        event = ProductReviewed(
            review_id=review_id, sku=sku, user_id=principal.user_id, rating=body.rating
        )
        await publish(event, correlation_id=review_id)
        return ReviewOut(review_id=review_id, sku=sku, rating=body.rating)

    return api


def _product(row: sqlite3.Row) -> ProductOut:
    rating = None if row["rating"] is None else Decimal(row["rating"])
    return ProductOut(
        sku=row["sku"],
        name=row["name"],
        price=Decimal(row["price"]),
        stock=row["stock"],
        rating=rating,
        reviews=row["reviews"],
    )
