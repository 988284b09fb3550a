"""Which groups a bus consumes, which it only declares, and the checks at start."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from ._errors import ConfigurationError
from ._partitions import topics_of
from ._subscriber import Subscriber
from .transports._contract import Connection, GroupManagement, Transport

__all__ = ["Consume", "check_consume", "check_group_names", "check_known", "declare", "split"]

Consume = bool | frozenset[str]
"""True: every group of the bus; False: none; a set: those groups only."""


def check_consume(value: object) -> Consume:
    """``consume=``: a bool or a collection of group names."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) or not isinstance(value, Collection):
        raise ConfigurationError("consume= takes True, False or a collection of group names")
    groups = frozenset(value)
    if not all(isinstance(g, str) for g in groups):
        raise ConfigurationError("consume= takes group names (strings)")
    return groups


def check_known(groups: Iterable[str], subscribers: Sequence[Subscriber]) -> None:
    """Every group named is a group of a background subscriber of the bus."""
    known = {s.group for s in subscribers if s.mode == "background"}
    unknown = sorted(set(groups) - known)
    if unknown:
        raise ConfigurationError(
            f"no background subscriber of this bus is in the group(s) {', '.join(unknown)}; "
            f"its groups are: {', '.join(sorted(known)) or '(none)'}"
        )


def check_group_names(transport: Transport, subscribers: Iterable[Subscriber]) -> None:
    """On a transport that outlives the process, every background subscriber names its
    group: one derived from the code changes when the code moves, and the new group
    would handle the whole history again."""
    if not transport.features.survives_restart:
        return
    for sub in subscribers:
        if sub.mode == "background" and not sub.group_given:
            raise ConfigurationError(
                f"{sub.name} has no group= and {type(transport).__name__} keeps groups "
                f"across restarts: a group named after the code ({sub.group!r}) changes "
                "when the code moves, and the new one handles the whole history again. "
                'Name it: subscribe(group="...")'
            )


def split(
    subscribers: Iterable[Subscriber], consume: Consume
) -> tuple[list[Subscriber], list[Subscriber]]:
    """The background subscribers this bus consumes for, and those it only declares."""
    consumed: list[Subscriber] = []
    declared: list[Subscriber] = []
    for sub in subscribers:
        if sub.mode != "background":
            continue
        mine = consume if isinstance(consume, bool) else sub.group in consume
        (consumed if mine else declared).append(sub)
    return consumed, declared


async def declare(conn: Connection, subscribers: Iterable[Subscriber], *, all_: bool) -> None:
    """Create the groups of ``subscribers`` on the transport (all of them when ``all_``,
    else those that start at ``"latest"``: subscribing creates the others). A transport
    without ``GroupManagement`` cannot start a group at ``"latest"``:
    ``ConfigurationError``; nor declare one: subscribing will create it."""
    for sub in subscribers:
        if not (all_ or sub.start == "latest"):
            continue
        if not isinstance(conn, GroupManagement):
            if sub.start == "latest":
                raise ConfigurationError(
                    f"start='latest' of {sub.name} needs a transport that offers "
                    f"GroupManagement; {type(conn).__name__} does not"
                )
            continue
        for event_type in sub.event_types:
            for topic in topics_of(event_type):
                await conn.declare_group(topic, sub.group, sub.start)
