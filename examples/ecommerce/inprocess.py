"""``in_process(app)``: an httpx client that calls the app in this process, no socket.

The app's lifespan runs around it (httpx's ASGI transport does not run it), so the
shop's database and bus are open while the client is. The demo, the tests and the
benchmark use it.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

__all__ = ["in_process"]


@asynccontextmanager
async def in_process(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """``async with in_process(app) as http: await http.get("/products")``."""
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://shop") as http,
    ):
        yield http
