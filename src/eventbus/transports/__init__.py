"""Transports: the contract and the in-memory implementation.

The required contract is ``Transport``, ``Connection`` and ``Subscription``; the optional
abilities a connection may offer are ``BatchPublishing``, ``DeadLetterStore``,
``GroupListing``, ``GroupManagement``, ``IdleWaiting``, ``Inspection``, ``Serving`` and
``ReferencePublishing``, and a subscription ``HandledRecord``. The Redis transport lives
in ``eventbus.transports.redis`` and is imported only when asked for.
"""

from ._contract import (
    BatchPublishing,
    Connection,
    DeadLetterStore,
    Delivery,
    FailureNotes,
    Features,
    GroupListing,
    GroupManagement,
    GroupStats,
    HandledRecord,
    IdleWaiting,
    Inspection,
    Message,
    ReferencePublishing,
    Serving,
    StoredDeadLetter,
    Subscription,
    Transport,
)
from .memory import InMemoryTransport

__all__ = [
    "BatchPublishing",
    "Connection",
    "DeadLetterStore",
    "Delivery",
    "FailureNotes",
    "Features",
    "GroupListing",
    "GroupManagement",
    "GroupStats",
    "HandledRecord",
    "IdleWaiting",
    "InMemoryTransport",
    "Inspection",
    "Message",
    "ReferencePublishing",
    "Serving",
    "StoredDeadLetter",
    "Subscription",
    "Transport",
]
