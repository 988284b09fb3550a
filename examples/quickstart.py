"""A small order flow in one process: pub/sub, a flaky consumer, retries, a dead letter.

Run it with ``make demo`` or ``python -m examples.quickstart``.
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal

import anyio

from eventbus import Context, Event, EventBus, InMemoryTransport, Registry, RetryPolicy
from eventbus.testing import VirtualClock


class OrderCreated(Event):
    """A customer placed an order."""

    order_id: str
    email: str
    total: Decimal


class UserBanned(Event, urgent=True):
    """An admin banned a user; the auth module must react at once."""

    user_id: str


stock = Registry()
emails = Registry()
auth = Registry()
START = time.perf_counter()
_mail_failures = {"o-2": 2, "o-3": 99}  # o-2 recovers on attempt 3; o-3 never does


def say(what: str) -> None:
    """Print one line of the timeline."""
    print(f"{(time.perf_counter() - START) * 1000:8.2f} ms  {what}")


@stock.subscribe(group="stock")
async def reserve_stock(event: OrderCreated) -> None:
    """Reserve the items of a new order."""
    say(f"stock     reserved items of {event.order_id}")


@emails.subscribe(group="email", retry=RetryPolicy(max_attempts=4, initial_delay=0.5))
async def send_confirmation(event: OrderCreated, context: Context) -> None:
    """Email the customer; the mail server fails now and then."""
    if _mail_failures.get(event.order_id, 0) >= context.attempt:
        say(f"email     attempt {context.attempt} for {event.order_id} failed")
        raise ConnectionError("mail server unavailable")
    say(f"email     confirmed {event.order_id} (attempt {context.attempt})")


@auth.subscribe(group="auth", mode="immediate")
async def block_user(event: UserBanned) -> None:
    """Block the user before publish() returns."""
    say(f"auth      blocked {event.user_id} inside publish()")


async def main() -> None:
    """Publish three orders and a ban, wait for the work, show the dead letters."""
    bus = EventBus(transport=InMemoryTransport(clock=VirtualClock()))
    for registry in (stock, emails, auth):
        bus.include(registry)
    async with bus:
        for n in (1, 2, 3):
            order = OrderCreated(order_id=f"o-{n}", email=f"c{n}@example.com", total=Decimal(9))
            envelope = await bus.publish(order)
            say(f"publish   {order.order_id} returned (event {envelope.id})")
        await bus.publish(UserBanned(user_id="u-7"))
        await bus.drain()
        say("drained   every event is handled or dead-lettered")
        for letter in await bus.dead_letters():
            say(
                f"dead      {letter.group}: {letter.envelope and letter.envelope.name} "
                f"after {letter.attempts} attempts, {letter.reason} ({letter.error_type})"
            )


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)-7s %(message)s")
    anyio.run(main)
