"""Transports: the contract (``Transport``, ``Connection``, ``Subscription``) and the
in-memory implementation. The Redis transport lives in ``eventbus.transports.redis`` and
is imported only when asked for.
"""

from ._protocol import (
    Connection,
    Delivery,
    Features,
    Message,
    StoredDeadLetter,
    Subscription,
    Transport,
)
from .memory import InMemoryTransport

__all__ = [
    "Connection",
    "Delivery",
    "Features",
    "InMemoryTransport",
    "Message",
    "StoredDeadLetter",
    "Subscription",
    "Transport",
]
