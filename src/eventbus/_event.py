"""The ``Event`` base class: an immutable pydantic model with a wire name and version."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ._errors import ConfigurationError

__all__ = ["Event"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
MAX_PARTITIONS = 1024
"""The most partitions an event type may have."""


class Event(BaseModel):
    """Something that happened, described by typed fields.

    Subclass it and declare fields as on any pydantic model. Class keywords set how the
    event is known on the wire::

        class UserBanned(Event, name="user.banned", version=2, urgent=True):
            user_id: str

    - ``name``: the wire name (default: the class name). Letters, digits and ``. _ : -``,
      at most 200 characters, so that it is safe in a Redis key.
    - ``version``: a positive integer (default 1). Consumers refuse other versions.
    - ``urgent``: an urgent type never waits for a background one: every event type of
      a group has its own consumer loops, and a subscriber's urgent types get their own
      concurrency slots (default False).
    - ``partitions``: how many streams the events of this type are spread over (default
      1, at most 1,024). Each partition is a topic of its own (``Name#0`` ...), with its
      own hash tag on Redis, so that a cluster spreads them over its masters; every
      group reads all of them, each with its own consumer loops and ``concurrency``.
    - ``partition_key``: the field whose value chooses the partition, so that the events
      of one key (one order) stay in one partition, in order. Without it (and without a
      ``key=`` at publish), the event id chooses. Ignored with one partition.

    Instances are frozen: assigning a field raises. Nested containers should be tuples
    or frozen models too, since subscribers in one process share the same instance.
    """

    model_config = ConfigDict(frozen=True)

    event_name: ClassVar[str] = "Event"
    event_version: ClassVar[int] = 1
    event_urgent: ClassVar[bool] = False
    event_partitions: ClassVar[int] = 1
    event_partition_key: ClassVar[str | None] = None

    def __init_subclass__(
        cls,
        *,
        name: str | None = None,
        version: int = 1,
        urgent: bool = False,
        partitions: int = 1,
        partition_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__name__ if name is None else name
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigurationError(
                f"event name {name!r} of {cls.__qualname__} must be 1-200 characters of "
                "letters, digits and . _ : - starting with a letter or digit"
            )
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ConfigurationError(f"event version of {cls.__qualname__} must be an int >= 1")
        if not isinstance(urgent, bool):
            raise ConfigurationError(f"urgent= of {cls.__qualname__} must be True or False")
        if (
            isinstance(partitions, bool)
            or not isinstance(partitions, int)
            or not 1 <= partitions <= MAX_PARTITIONS
        ):
            raise ConfigurationError(
                f"partitions= of {cls.__qualname__} must be an int from 1 to {MAX_PARTITIONS}"
            )
        if partition_key is not None and not isinstance(partition_key, str):
            raise ConfigurationError(
                f"partition_key= of {cls.__qualname__} must be a field name (a str)"
            )
        cls.event_name = name
        cls.event_version = version
        cls.event_urgent = urgent
        cls.event_partitions = partitions
        cls.event_partition_key = partition_key

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """Check, once the fields are known, that ``partition_key`` names one."""
        super().__pydantic_init_subclass__(**kwargs)
        key = cls.event_partition_key
        if key is not None and key not in cls.model_fields:
            fields = ", ".join(cls.model_fields) or "none"
            raise ConfigurationError(
                f"partition_key={key!r} of {cls.__qualname__} is not one of its fields ({fields})"
            )
