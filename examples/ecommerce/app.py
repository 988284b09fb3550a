"""``create_app(settings)``: the HTTP API of the shop (FastAPI), the composition root of
the HTTP side.

The app's lifespan opens the shop (database and bus) and closes it: leaving lets the
handlers in flight finish, within the shutdown grace.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from eventbus import ImmediateHandlerError, PublishError, TransportError
from examples.ecommerce.modules import admin, analytics, auth, email, orders, products, shipping
from examples.ecommerce.settings import Settings
from examples.ecommerce.shop import Shop
from examples.ecommerce.web import admin_guard

__all__ = ["create_app"]


def create_app(settings: Settings | None = None, *, shop: Shop | None = None) -> FastAPI:
    """The API over ``shop`` (default: a ``Shop`` built from ``settings``).

    On the in-memory transport the default shop runs every group in this process; on
    Redis it runs only the immediate subscribers, and workers run the background groups.
    """
    settings = shop.settings if shop is not None else settings or Settings.from_env()
    if shop is None:
        shop = Shop(settings, groups=None if settings.redis_url is None else ())
    running = shop

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running:
            yield

    app = FastAPI(title="eventbus e-commerce example", lifespan=lifespan)
    _include_routers(app, shop)
    app.add_exception_handler(ImmediateHandlerError, _immediate_failed)
    app.add_exception_handler(PublishError, _not_published)
    app.add_exception_handler(TransportError, _not_published)
    return app


def _include_routers(app: FastAPI, shop: Shop) -> None:
    user = auth.current_user(shop.users)
    admin_only = admin_guard(shop.settings.admin_token)
    publisher = shop.publisher
    app.include_router(auth.router(shop.users, shop.hasher, publisher("auth"), user))
    app.include_router(products.router(shop.products, publisher("products"), user))
    app.include_router(
        orders.router(shop.orders, publisher("orders"), user, shop.products.offers, shop.gateway)
    )
    app.include_router(shipping.router(shop.shipments, user))
    app.include_router(email.router(shop.outbox, admin_only))
    app.include_router(analytics.router(shop.analytics, admin_only))
    app.include_router(
        admin.router(shop.admin, publisher("admin"), admin_only, shop.users.find, shop.bus)
    )


async def _immediate_failed(request: Request, exc: Exception) -> JSONResponse:
    """An immediate subscriber failed: the event is published, its effect is not done."""
    handler = exc.handler if isinstance(exc, ImmediateHandlerError) else "?"
    return JSONResponse({"detail": f"the request's event was published, but {handler} failed"}, 500)


async def _not_published(request: Request, exc: Exception) -> JSONResponse:
    """The bus could not publish (Redis unreachable, for instance)."""
    return JSONResponse({"detail": f"events cannot be published now ({type(exc).__name__})"}, 503)
