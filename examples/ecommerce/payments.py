"""A stand-in for a card payment gateway: approves most cards, declines some.

Test card numbers, as real gateways publish them:

| card number | answer |
| --- | --- |
| 4000 0000 0000 0002 | declined: card declined |
| 4000 0000 0000 9995 | declined: insufficient funds |
| 4000 0000 0000 0069 | declined: expired card |
| any other valid number (4242 4242 4242 4242) | approved |
"""

import secrets
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

import anyio

__all__ = ["Charge", "FakePaymentGateway", "PaymentGateway", "luhn_valid"]

DECLINED = {
    "4000000000000002": "card declined",
    "4000000000009995": "insufficient funds",
    "4000000000000069": "expired card",
}


@dataclass(frozen=True)
class Charge:
    """The gateway's answer: a payment id, or the reason of a decline."""

    approved: bool
    payment_id: str | None = None
    reason: str | None = None


class PaymentGateway(Protocol):
    """Charges a card."""

    async def charge(self, card_number: str, amount: Decimal, currency: str) -> Charge: ...


class FakePaymentGateway:
    """Declines the test cards above; takes ``latency`` seconds to answer."""

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency

    async def charge(self, card_number: str, amount: Decimal, currency: str) -> Charge:
        """Charge ``amount`` to the card."""
        if self.latency:
            await anyio.sleep(self.latency)
        reason = DECLINED.get(card_number)
        if reason is not None:
            return Charge(approved=False, reason=reason)
        return Charge(approved=True, payment_id=f"pay_{secrets.token_hex(8)}")


def luhn_valid(number: str) -> bool:
    """Whether a card number (digits only) passes the Luhn checksum."""
    if not number.isdigit() or not 12 <= len(number) <= 19:
        return False
    total = 0
    for index, digit in enumerate(int(d) for d in reversed(number)):
        if index % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0
