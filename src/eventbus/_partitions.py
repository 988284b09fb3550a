"""Partitioned event types: the topic an event goes to, and the topics a group reads.

An event type with ``partitions=N`` (N > 1) is published to ``Name#0`` ... ``Name#N-1``:
the partition of an event is the CRC-32 of its key modulo N, so that every process
puts one key in the same partition. The key is, in this order: the ``key=`` given to
``publish()`` (carried in the ``partition-key`` header), the value of the type's
``partition_key`` field, or the event id.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping

from ._envelope import Envelope
from ._errors import PublishError
from ._event import Event
from .transports._contract import GroupStats

__all__ = [
    "KEY_HEADER",
    "SEPARATOR",
    "earlier_topic",
    "keyed_headers",
    "leftovers",
    "topic_of",
    "topics_of",
]

SEPARATOR = "#"
"""Between an event name and its partition number; never part of an event name."""

KEY_HEADER = "partition-key"
"""The header that carries the ``key=`` of ``publish()``."""


def topics_of(event_type: type[Event]) -> tuple[str, ...]:
    """Every topic of ``event_type``: its name, or one per partition."""
    count = event_type.event_partitions
    name = event_type.event_name
    return (name,) if count == 1 else tuple(f"{name}{SEPARATOR}{n}" for n in range(count))


def topic_of(event: Event, envelope: Envelope) -> str:
    """The topic ``event`` is published to."""
    event_type = type(event)
    count = event_type.event_partitions
    if count == 1:
        return envelope.name
    key = envelope.headers.get(KEY_HEADER)
    if key is None:
        field = event_type.event_partition_key
        key = envelope.id if field is None else str(getattr(event, field))
    number = zlib.crc32(key.encode("utf-8", "surrogatepass")) % count
    return f"{envelope.name}{SEPARATOR}{number}"


def keyed_headers(
    event_type: type[Event], headers: Mapping[str, str] | None, key: str | None
) -> Mapping[str, str] | None:
    """``headers`` with the ``key=`` of a publish added; ``PublishError`` when the type
    has no partitions or the key is not a non-empty str."""
    if key is None:
        return headers
    if not isinstance(key, str) or not key:
        raise PublishError(f"key= must be a non-empty str, not {key!r}")
    if not (isinstance(event_type, type) and issubclass(event_type, Event)):
        return headers  # the envelope refuses what is not an event
    if event_type.event_partitions == 1:
        raise PublishError(
            f"key= given for {event_type.event_name}, which has one partition: "
            f"declare it with partitions=N to spread its events by key"
        )
    return {**(headers or {}), KEY_HEADER: key}


def leftovers(event_type: type[Event], group: str, stats: Iterable[GroupStats]) -> list[str]:
    """The topics of ``event_type`` in an earlier layout (another number of partitions)
    where ``group`` still has work: messages waiting, in flight or scheduled."""
    found = [
        stat.topic
        for stat in stats
        if stat.group == group
        and earlier_topic(event_type, stat.topic)
        and stat.waiting + stat.in_flight + stat.scheduled > 0
    ]
    return sorted(found)


def earlier_topic(event_type: type[Event], topic: str) -> bool:
    """Whether ``topic`` is one of ``event_type`` in another number of partitions."""
    name = event_type.event_name
    base, _, number = topic.partition(SEPARATOR)
    return (
        base == name and (number.isdigit() or topic == name) and topic not in topics_of(event_type)
    )
