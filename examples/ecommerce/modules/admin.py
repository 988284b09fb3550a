"""Admin: banning users, stock alerts, and the dead letters of every group.

Owns the ``stock_alerts`` and ``bans`` tables. Publishes ``UserBanned``; records
``StockLow`` alerts in the background. Its endpoints need the admin token.
"""

import sqlite3
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from eventbus import Context, EventBus, Registry
from examples.ecommerce.contracts import FindAccount
from examples.ecommerce.events import StockLow, UserBanned
from examples.ecommerce.storage import Database
from examples.ecommerce.web import AdminOnly, Publish

__all__ = ["SCHEMA", "AdminStore", "router", "subscribers"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS stock_alerts (
    event_id  TEXT PRIMARY KEY,
    sku       TEXT NOT NULL,
    name      TEXT NOT NULL,
    stock     INTEGER NOT NULL,
    threshold INTEGER NOT NULL,
    raised_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bans (
    user_id   TEXT PRIMARY KEY,
    reason    TEXT NOT NULL,
    banned_at TEXT NOT NULL
);
"""


class AdminStore:
    """The SQL of the admin module."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def record_alert(self, event_id: str, alert: StockLow) -> None:
        """Keep a stock alert (once per event)."""
        self.db.execute(
            "INSERT OR IGNORE INTO stock_alerts VALUES (?, ?, ?, ?, ?, ?)",
            (event_id, alert.sku, alert.name, alert.stock, alert.threshold, _now()),
        )

    def alerts(self) -> list[sqlite3.Row]:
        """Every stock alert, oldest first."""
        return self.db.query("SELECT * FROM stock_alerts ORDER BY raised_at, event_id")

    def record_ban(self, user_id: str, reason: str) -> bool:
        """Log a ban; False when the user was banned already."""
        changed = self.db.execute(
            "INSERT OR IGNORE INTO bans VALUES (?, ?, ?)", (user_id, reason, _now())
        )
        return changed == 1


def subscribers(store: AdminStore) -> Registry:
    """Admin's reaction: keep stock alerts for the team."""
    registry = Registry()

    @registry.subscribe(group="admin")
    async def record_stock_alert(event: StockLow, context: Context) -> None:
        """Record the alert (a real shop would also page someone)."""
        store.record_alert(context.envelope.id, event)

    return registry


class BanIn(BaseModel):
    """``POST /admin/users/{id}/ban``."""

    reason: str = Field(min_length=1, max_length=500)


class BanOut(BaseModel):
    """A ban, in effect when the answer arrives."""

    user_id: str
    banned: bool


class AlertOut(BaseModel):
    """A stock alert."""

    sku: str
    name: str
    stock: int
    threshold: int


class DeadLetterOut(BaseModel):
    """An event a group gave up on."""

    id: str
    group: str
    event: str | None
    correlation_id: str | None
    reason: str
    error_type: str
    error_message: str
    attempts: int


def router(
    store: AdminStore, publish: Publish, admin: AdminOnly, accounts: FindAccount, bus: EventBus
) -> APIRouter:
    """``POST /admin/users/{id}/ban``, ``GET /admin/alerts``, ``GET /admin/dead-letters``,
    ``POST /admin/dead-letters/replay``."""
    api = APIRouter(tags=["admin"], dependencies=[Depends(admin)])

    @api.post("/admin/users/{user_id}/ban")
    async def ban(user_id: str, body: BanIn) -> BanOut:
        """Ban a user; their next request is refused (auth blocks them inside publish)."""
        account = accounts(user_id)
        if account is None:
            raise HTTPException(404, f"no user {user_id}")
        if store.record_ban(user_id, body.reason) or not account.banned:
            event = UserBanned(user_id=user_id, email=account.email, reason=body.reason)
            await publish(event, correlation_id=user_id)
        return BanOut(user_id=user_id, banned=True)

    @api.get("/admin/alerts")
    async def alerts() -> list[AlertOut]:
        """Stock alerts, oldest first."""
        return [
            AlertOut(sku=r["sku"], name=r["name"], stock=r["stock"], threshold=r["threshold"])
            for r in store.alerts()
        ]

    @api.get("/admin/dead-letters")
    async def dead_letters() -> list[DeadLetterOut]:
        """The events every group gave up on, oldest first (no payloads: personal data)."""
        return [
            DeadLetterOut(
                id=letter.id,
                group=letter.group,
                event=letter.envelope.name if letter.envelope else None,
                correlation_id=letter.envelope.correlation_id if letter.envelope else None,
                reason=letter.reason,
                error_type=letter.error_type,
                error_message=letter.error_message,
                attempts=letter.attempts,
            )
            for letter in await bus.dead_letters()
        ]

    @api.post("/admin/dead-letters/replay")
    async def replay() -> dict[str, int]:
        """Deliver every dead letter again to its group, as a first attempt."""
        return {"replayed": await bus.replay_dead_letters()}

    return api


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
