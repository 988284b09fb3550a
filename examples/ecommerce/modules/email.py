"""Email: welcome, order confirmation, payment and suspension notices.

Owns the ``outbox`` table: one row per message, queued, then sent. Reacts in the
background to ``UserRegistered``, ``OrderCreated``, ``PaymentFailed`` and
``UserBanned``. The mail server fails now and then: a failed send raises, and the bus
retries it with backoff; a message that never gets through ends in the dead letters
(and stays ``queued`` in the outbox, with its last error).
"""

import json
import sqlite3
from collections import deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Protocol

import anyio
from fastapi import APIRouter, Depends
from pydantic import BaseModel

from eventbus import Context, Registry, RetryPolicy
from examples.ecommerce.events import OrderCreated, PaymentFailed, UserBanned, UserRegistered
from examples.ecommerce.storage import Database
from examples.ecommerce.web import AdminOnly

__all__ = [
    "SCHEMA",
    "FakeMailServer",
    "Mail",
    "MailSender",
    "MailServerError",
    "OutboxStore",
    "router",
    "subscribers",
]

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    mail_key   TEXT PRIMARY KEY,
    to_address TEXT NOT NULL,
    subject    TEXT NOT NULL,
    body       TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('queued', 'sent')),
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    queued_at  TEXT NOT NULL,
    sent_at    TEXT
);
"""


@dataclass(frozen=True)
class Mail:
    """One message; ``key`` names it, so that a redelivered event sends it once."""

    key: str
    to: str
    subject: str
    body: str


class MailSender(Protocol):
    """Hands a message to a mail server; raises when the server does not take it."""

    async def send(self, mail: Mail) -> None: ...


class MailServerError(ConnectionError):
    """The mail server did not take the message (worth retrying)."""


class FakeMailServer:
    """Stands in for an SMTP relay that fails now and then.

    Every ``fail_every``-th send times out (None: never), and addresses at ``.invalid``
    domains (reserved, never resolvable) never get through. ``delivered`` keeps the
    last 1,000 messages taken; ``log``, a file path, gets every one as a JSON line (what
    a test counts across worker processes).
    """

    def __init__(
        self, fail_every: int | None = None, latency: float = 0.0, log: str | None = None
    ) -> None:
        self.fail_every = fail_every
        self.latency = latency
        self.log = log
        self.delivered: deque[Mail] = deque(maxlen=1000)
        self._sends = 0

    async def send(self, mail: Mail) -> None:
        """Take the message, or raise ``MailServerError``."""
        if self.latency:
            await anyio.sleep(self.latency)
        domain = mail.to.rpartition("@")[2]
        if domain.endswith(".invalid"):
            raise MailServerError(f"cannot resolve the mail host {domain}")
        self._sends += 1
        if self.fail_every and self._sends % self.fail_every == 0:
            raise MailServerError("the mail server timed out")
        self.delivered.append(mail)
        if self.log is not None:
            with open(self.log, "a", encoding="utf-8") as log:  # noqa: ASYNC230 - one short line
                log.write(json.dumps(asdict(mail)) + "\n")


class OutboxStore:
    """The SQL of the email module."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def queue(self, mail: Mail) -> bool:
        """Queue a message (once); False when it was sent already."""
        self.db.execute(
            "INSERT OR IGNORE INTO outbox (mail_key, to_address, subject, body, status,"
            " queued_at) VALUES (?, ?, ?, ?, 'queued', ?)",
            (mail.key, mail.to, mail.subject, mail.body, _now()),
        )
        row = self.db.query_one("SELECT status FROM outbox WHERE mail_key = ?", (mail.key,))
        return row is not None and row["status"] == "queued"

    def attempted(self, key: str, attempt: int, error: str | None) -> None:
        """Record an attempt: sent when ``error`` is None."""
        if error is None:
            self.db.execute(
                "UPDATE outbox SET status = 'sent', attempts = ?, last_error = NULL, sent_at = ?"
                " WHERE mail_key = ?",
                (attempt, _now(), key),
            )
        else:
            self.db.execute(
                "UPDATE outbox SET attempts = ?, last_error = ? WHERE mail_key = ?",
                (attempt, error, key),
            )

    def all(self) -> list[sqlite3.Row]:
        """Every message, oldest first."""
        return self.db.query("SELECT * FROM outbox ORDER BY queued_at, mail_key")


def subscribers(store: OutboxStore, sender: MailSender, retry_delay: float) -> Registry:
    """Email's reactions; failed sends retry 3 times with backoff, then dead-letter.

    ``idempotent=True``: a redelivered event (a worker died after sending) is acked
    without a second send. The outbox table below also refuses a second send of one mail,
    for the window idempotency leaves (a worker dying between the send and the ack).
    """
    registry = Registry()
    policy = RetryPolicy(max_attempts=4, initial_delay=retry_delay, max_delay=60.0)
    subscribe = registry.subscribe(group="email", retry=policy, concurrency=8, idempotent=True)

    async def deliver(mail: Mail, context: Context) -> None:
        if not store.queue(mail):
            return  # sent already: this is a redelivery
        try:
            await sender.send(mail)
        except Exception as exc:
            store.attempted(mail.key, context.attempt, f"{type(exc).__name__}: {exc}")
            raise
        store.attempted(mail.key, context.attempt, None)

    @subscribe
    async def welcome(event: UserRegistered, context: Context) -> None:
        """Welcome a new customer."""
        body = f"Hello {event.name}, your account is ready."
        await deliver(Mail(f"welcome:{event.user_id}", event.email, "Welcome!", body), context)

    @subscribe
    async def confirm_order(event: OrderCreated, context: Context) -> None:
        """Confirm an order, line by line."""
        lines = "\n".join(f"{i.quantity} x {i.name}: {i.subtotal}" for i in event.items)
        body = f"{lines}\nTotal: {event.total} {event.currency}"
        subject = f"Order {event.order_id} received"
        await deliver(Mail(f"order:{event.order_id}", event.email, subject, body), context)

    @subscribe
    async def payment_failed(event: PaymentFailed, context: Context) -> None:
        """Tell the customer their payment was declined."""
        body = f"Your card ending {event.card_last4} was declined: {event.reason}."
        subject = f"Payment for order {event.order_id} declined"
        await deliver(Mail(f"declined:{event.order_id}", event.email, subject, body), context)

    @subscribe
    async def account_suspended(event: UserBanned, context: Context) -> None:
        """Tell a banned user why."""
        body = f"Your account is suspended: {event.reason}."
        mail = Mail(f"banned:{event.user_id}", event.email, "Account suspended", body)
        await deliver(mail, context)

    return registry


class MailOut(BaseModel):
    """A message of the outbox, as the API shows it."""

    to: str
    subject: str
    status: str
    attempts: int
    last_error: str | None


def router(store: OutboxStore, admin: AdminOnly) -> APIRouter:
    """``GET /admin/outbox``."""
    api = APIRouter(tags=["email"])

    @api.get("/admin/outbox", dependencies=[Depends(admin)])
    async def outbox() -> list[MailOut]:
        """Every message: queued or sent, with attempts and the last error."""
        return [
            MailOut(
                to=row["to_address"],
                subject=row["subject"],
                status=row["status"],
                attempts=row["attempts"],
                last_error=row["last_error"],
            )
            for row in store.all()
        ]

    return api


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
