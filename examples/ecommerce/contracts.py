"""The synchronous questions one module answers for another, as plain types.

A module that needs an answer declares a parameter of one of these types; the
composition root (``shop.py``) passes the answering module's function. So orders can ask
for prices without importing products, and admin can look a user up without importing
auth.
"""

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal

__all__ = ["Account", "FindAccount", "Offer", "OfferLookup"]


@dataclass(frozen=True)
class Offer:
    """A product as it can be ordered now: its name, price and stock."""

    sku: str
    name: str
    price: Decimal
    stock: int


@dataclass(frozen=True)
class Account:
    """A user account as other modules may see it."""

    user_id: str
    email: str
    name: str
    banned: bool


OfferLookup = Callable[[Collection[str]], Mapping[str, Offer]]
"""The offers of the given SKUs; unknown SKUs are absent from the result."""

FindAccount = Callable[[str], Account | None]
"""The account of a user id, or None."""
