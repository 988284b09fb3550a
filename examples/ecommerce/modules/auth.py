"""Auth: accounts, sessions, and refusing banned users.

Owns the ``users`` and ``sessions`` tables. Publishes ``UserRegistered``. Blocks a user
on ``UserBanned`` inside ``publish()`` (``mode="immediate"``), in the process that serves
the API: the admin's ban request returns only once the block is written, so the
banned user's very next request is refused with 403.
"""

import hashlib
import hmac
import secrets
import sqlite3
from datetime import UTC, datetime
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from eventbus import Registry, RetryPolicy
from examples.ecommerce.contracts import Account
from examples.ecommerce.events import UserBanned, UserRegistered
from examples.ecommerce.storage import Database
from examples.ecommerce.web import (
    Credentials,
    CurrentUser,
    Principal,
    Publish,
    bearer_token,
    new_id,
)

__all__ = ["SCHEMA", "AuthStore", "PasswordHasher", "current_user", "router", "subscribers"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    user_id       TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    password_hash BLOB NOT NULL,
    salt          BLOB NOT NULL,
    banned_reason TEXT,
    created_at    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (user_id),
    created_at TEXT NOT NULL
);
"""

EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[A-Za-z0-9-]+$"
_NO_SALT = b"\0" * 16  # hashed against for unknown emails, so that they take as long


class AuthStore:
    """The SQL of the auth module."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add_user(self, user_id: str, email: str, name: str, digest: bytes, salt: bytes) -> bool:
        """Insert a user; False when the email is taken."""
        changed = self.db.execute(
            "INSERT OR IGNORE INTO users (user_id, email, name, password_hash, salt, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (user_id, email, name, digest, salt, _now()),
        )
        return changed == 1

    def credentials(self, email: str) -> tuple[Account, bytes, bytes] | None:
        """A user's account, password hash and salt, by email."""
        row = self.db.query_one("SELECT * FROM users WHERE email = ?", (email,))
        if row is None:
            return None
        return _account(row), bytes(row["password_hash"]), bytes(row["salt"])

    def open_session(self, user_id: str) -> str:
        """A new session token for the user (only its hash is stored)."""
        token = secrets.token_urlsafe(32)
        self.db.execute(
            "INSERT INTO sessions (token_hash, user_id, created_at) VALUES (?, ?, ?)",
            (_token_hash(token), user_id, _now()),
        )
        return token

    def session_account(self, token: str) -> Account | None:
        """The account a session token belongs to, or None."""
        row = self.db.query_one(
            "SELECT users.* FROM sessions JOIN users USING (user_id) WHERE token_hash = ?",
            (_token_hash(token),),
        )
        return None if row is None else _account(row)

    def find(self, user_id: str) -> Account | None:
        """The account of a user id, or None."""
        row = self.db.query_one("SELECT * FROM users WHERE user_id = ?", (user_id,))
        return None if row is None else _account(row)

    def ban(self, user_id: str, reason: str) -> None:
        """Mark the user banned; every later request with their sessions gets 403."""
        self.db.execute("UPDATE users SET banned_reason = ? WHERE user_id = ?", (reason, user_id))


class PasswordHasher:
    """scrypt with a random salt, run in a worker thread: it is CPU-heavy by design."""

    def __init__(self, cost: int = 2**14) -> None:
        self.cost = cost

    async def hash(self, password: str, salt: bytes) -> bytes:
        """The scrypt digest of ``password`` with ``salt``."""
        return await anyio.to_thread.run_sync(self._scrypt, password, salt)

    async def verify(self, password: str, salt: bytes, digest: bytes) -> bool:
        """Whether ``password`` matches ``digest``, in constant time."""
        return hmac.compare_digest(await self.hash(password, salt), digest)

    def _scrypt(self, password: str, salt: bytes) -> bytes:
        return hashlib.scrypt(password.encode(), salt=salt, n=self.cost, r=8, p=1)


def subscribers(store: AuthStore) -> Registry:
    """Auth's reaction to events: block banned users before the ban returns."""
    registry = Registry()

    @registry.subscribe(
        group="auth", mode="immediate", retry=RetryPolicy(max_attempts=3, initial_delay=0.01)
    )
    async def block_banned_user(event: UserBanned) -> None:
        """Runs inside the admin's ``publish()``: the next request is refused."""
        store.ban(event.user_id, event.reason)

    return registry


def current_user(store: AuthStore) -> CurrentUser:
    """The dependency other modules use: the request's user; 401 without a valid
    session, 403 when the user is banned."""

    async def authenticate(credentials: Credentials) -> Principal:
        account = store.session_account(bearer_token(credentials))
        if account is None:
            raise HTTPException(401, "unknown session", headers={"WWW-Authenticate": "Bearer"})
        if account.banned:
            raise HTTPException(403, "this account is suspended")
        return Principal(account.user_id, account.email, account.name)

    return authenticate


class Registration(BaseModel):
    """``POST /users``."""

    email: str = Field(pattern=EMAIL_PATTERN, max_length=254)
    name: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=8, max_length=200)


class Login(BaseModel):
    """``POST /sessions``."""

    email: str = Field(max_length=254)
    password: str = Field(max_length=200)


class UserOut(BaseModel):
    """A user, as the API shows it."""

    user_id: str
    email: str
    name: str


class SessionOut(BaseModel):
    """A new session: send ``Authorization: Bearer <token>``."""

    user_id: str
    token: str


def router(
    store: AuthStore, hasher: PasswordHasher, publish: Publish, user: CurrentUser
) -> APIRouter:
    """``POST /users``, ``POST /sessions``, ``GET /users/me``."""
    api = APIRouter(tags=["auth"])

    @api.post("/users", status_code=201)
    async def register(body: Registration) -> UserOut:
        """Create an account; 409 when the email is taken. Publishes UserRegistered."""
        email, user_id, salt = body.email.lower(), new_id("u"), secrets.token_bytes(16)
        digest = await hasher.hash(body.password, salt)
        if not store.add_user(user_id, email, body.name, digest, salt):
            raise HTTPException(409, "this email is already registered")
        await publish(
            UserRegistered(user_id=user_id, email=email, name=body.name), correlation_id=user_id
        )
        return UserOut(user_id=user_id, email=email, name=body.name)

    @api.post("/sessions", status_code=201)
    async def log_in(body: Login) -> SessionOut:
        """Log in; 401 for a wrong email or password, 403 for a banned user."""
        account, digest, salt = store.credentials(body.email.lower()) or (None, b"", _NO_SALT)
        matches = await hasher.verify(body.password, salt, digest)  # also when unknown
        if account is None or not matches:
            raise HTTPException(401, "wrong email or password")
        if account.banned:
            raise HTTPException(403, "this account is suspended")
        return SessionOut(user_id=account.user_id, token=store.open_session(account.user_id))

    @api.get("/users/me")
    async def me(principal: Annotated[Principal, Depends(user)]) -> UserOut:
        """The logged-in user."""
        return UserOut(user_id=principal.user_id, email=principal.email, name=principal.name)

    return api


def _account(row: sqlite3.Row) -> Account:
    return Account(row["user_id"], row["email"], row["name"], row["banned_reason"] is not None)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
