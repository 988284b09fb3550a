"""The demo's closing summary: the final state of every module, read through the API."""

from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TextIO

__all__ = ["Get", "print_summary"]

Get = Callable[[str, str], Awaitable[Any]]
"""``get(path, who)``: the JSON of a GET made as a customer or as ``"admin"``."""


async def print_summary(
    get: Get, orders: Mapping[str, str], banned: str, counts: Counter[str], out: TextIO
) -> None:
    """Print orders, stock, ratings, alerts, outbox, analytics, dead letters and counts."""
    lines = ["", "Final state"]
    lines += await _orders(get, orders, banned)
    products = await get("/products", "admin")
    lines.append(_row("stock", "   ".join(f"{p['sku']} {p['stock']}" for p in products)))
    rated = [p for p in products if p["reviews"]]
    lines.append(_row("ratings", ", ".join(_rating(p) for p in rated) or "none"))
    alerts = await get("/admin/alerts", "admin")
    lines.append(_row("alerts", ", ".join(_alert(a) for a in alerts) or "none"))
    lines += _outbox(await get("/admin/outbox", "admin"))
    lines.append(_row("analytics", _figures(await get("/analytics", "admin"))))
    lines += _dead_letters(await get("/admin/dead-letters", "admin"))
    seen = ", ".join(f"{counts[k]} {k}" for k in ("published", "handled", "retried"))
    lines.append(_row("events", f"{seen}, {counts['dead letters']} dead letter(s)"))
    print("\n".join(lines), file=out, flush=True)


async def _orders(get: Get, orders: Mapping[str, str], banned: str) -> list[str]:
    lines: list[str] = []
    for name, order_id in orders.items():
        detail = (
            await _order(get, name, order_id) if name != banned else f"refused: {name} is banned"
        )
        lines.append(_row("" if lines else "orders", f"{name:<8} {order_id}  {detail}"))
    return lines


async def _order(get: Get, name: str, order_id: str) -> str:
    order = await get(f"/orders/{order_id}", name)
    detail = f"{order['total']:>6} {order['currency']}  {order['status']:<9}"
    if order["status"] == "paid":
        shipment = await get(f"/orders/{order_id}/shipment", name)
        return f"{detail}  shipment {shipment['shipment_id']} {shipment['status']}"
    return f"{detail}  {order['failure_reason'] or ''}"


def _rating(product: Mapping[str, Any]) -> str:
    return f"{product['sku']} {product['rating']} from {product['reviews']} review(s)"


def _alert(alert: Mapping[str, Any]) -> str:
    return f"{alert['sku']} ({alert['name']}) fell to {alert['stock']}, below {alert['threshold']}"


def _outbox(mails: list[Mapping[str, Any]]) -> list[str]:
    sent = sum(1 for m in mails if m["status"] == "sent")
    retried = sum(1 for m in mails if m["status"] == "sent" and m["attempts"] > 1)
    lines = [_row("outbox", f"{sent} sent ({retried} after a retry)")]
    for mail in mails:
        if mail["status"] != "sent":
            text = f"queued: {mail['to']}, {mail['attempts']} attempts ({mail['last_error']})"
            lines.append(_row("", text))
    return lines


def _figures(figures: Mapping[str, Any]) -> str:
    return (
        f"{figures['users']} users, {figures['orders_created']} orders, "
        f"{figures['orders_paid']} paid ({figures['revenue']}), "
        f"{figures['payments_failed']} payment failed, {figures['reviews']} reviews, "
        f"{figures['bans']} ban"
    )


def _dead_letters(letters: list[Mapping[str, Any]]) -> list[str]:
    if not letters:
        return [_row("dead", "none")]
    return [
        _row(
            "dead" if i == 0 else "",
            f"{d['group']} gave up on {d['event']} {d['correlation_id']} after "
            f"{d['attempts']} attempts ({d['reason']}, {d['error_type'].rpartition('.')[2]})",
        )
        for i, d in enumerate(letters)
    ]


def _row(label: str, text: str) -> str:
    return f"  {label:<10} {text}".rstrip()
