"""What the modules share on the HTTP side, so that none needs another's code.

- ``Principal``: the logged-in user, as auth's dependency gives it to other modules.
- ``CurrentUser`` / ``AdminOnly``: FastAPI dependencies the composition root hands to
  each module's router (auth provides the first; ``admin_guard`` builds the second).
- ``Publish``: how a module publishes (the composition root binds the bus and the
  module's name as the ``source`` header), in the module's transaction when it has one.
- ``new_id``: short random ids such as ``o-3f9a1c2e5b``.
"""

import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from eventbus import Event

__all__ = [
    "AdminOnly",
    "Credentials",
    "CurrentUser",
    "Principal",
    "Publish",
    "admin_guard",
    "bearer_token",
    "new_id",
]


@dataclass(frozen=True)
class Principal:
    """The user a request is made by."""

    user_id: str
    email: str
    name: str


CurrentUser = Callable[..., Awaitable[Principal]]
AdminOnly = Callable[..., Awaitable[None]]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


class Publish(Protocol):
    """Publish one event of a module's flow; ``correlation_id`` names the flow.

    ``transaction``: the module's open database transaction (a SQLAlchemy
    ``AsyncConnection``); with the outbox, the event is written in it.
    """

    async def __call__(
        self, event: Event, *, correlation_id: str, transaction: object | None = None
    ) -> None: ...


def bearer_token(credentials: HTTPAuthorizationCredentials | None) -> str:
    """The token of an ``Authorization: Bearer`` header; 401 when there is none."""
    if credentials is None or not credentials.credentials:
        raise HTTPException(
            401, "send Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"}
        )
    return credentials.credentials


def admin_guard(admin_token: str) -> AdminOnly:
    """A dependency that lets through requests bearing the admin token only."""

    async def require_admin(credentials: Credentials) -> None:
        if not hmac.compare_digest(bearer_token(credentials).encode(), admin_token.encode()):
            raise HTTPException(403, "admin token required")

    return require_admin


def new_id(prefix: str) -> str:
    """A random id with a readable prefix: ``new_id("o")`` -> ``"o-3f9a1c2e5b"``."""
    return f"{prefix}-{secrets.token_hex(5)}"
