"""Events that cannot become bytes fail at publish with ``EncodeError``, never quoted."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from eventbus import (
    EncodeError,
    Event,
    EventBus,
    InMemoryTransport,
    PublishError,
    PublishOutcomeUnknownError,
    PublishRefusedError,
)
from eventbus.testing import drain
from tests.events import OrderCreated

pytestmark = pytest.mark.anyio

SECRET = "jane.doe@example.com"


class Note(Event):
    """An event with a free-form field."""

    text: str
    extra: Any = None


class Opaque:
    """A value pydantic has no JSON form for."""

    def __repr__(self) -> str:
        return f"Opaque({SECRET})"


UNENCODABLE = [
    pytest.param(Note(text=f"{SECRET}\ud800"), "text", "not valid Unicode", id="lone-surrogate"),
    pytest.param(Note(text=SECRET, extra=Opaque()), "extra", "cannot serialize", id="unknown-type"),
]


@pytest.mark.parametrize(("event", "field", "kind"), UNENCODABLE)
async def test_an_unencodable_event_raises_encode_error_on_a_serializing_transport(
    event: Note, field: str, kind: str
) -> None:
    """publish() and publish_many() raise EncodeError naming the type and field, not the value."""
    bus = EventBus(transport=InMemoryTransport(serialize=True))
    handled: list[Note] = []

    @bus.subscribe()
    async def handle(note: Note) -> None:
        handled.append(note)

    async with bus:
        with pytest.raises(EncodeError) as single:
            await bus.publish(event)
        with pytest.raises(EncodeError) as batch:
            await bus.publish_many([Note(text="fine"), event])
        await drain(bus)
    for raised in (single.value, batch.value):
        assert isinstance(raised, PublishError)
        assert (raised.event_name, raised.field) == ("Note", field)
        assert all(part in str(raised) for part in ("Note", repr(field), kind))
        assert SECRET not in str(raised)
        assert raised.__cause__ is None
    assert handled == []  # the batch was checked whole before any event was sent


def test_publish_errors_keep_their_attributes_through_pickling() -> None:
    """EncodeError, PublishOutcomeUnknownError and PublishRefusedError survive pickle."""
    encode = EncodeError("Note cannot be encoded", event_name="Note", field="text")
    unknown = PublishOutcomeUnknownError("the first 4 of 10", stored=4)
    refused = PublishRefusedError("refused 1 of 2", stored_ids=("1-0", None))

    copies = [pickle.loads(pickle.dumps(error)) for error in (encode, unknown, refused)]

    assert (str(copies[0]), copies[0].event_name, copies[0].field) == (str(encode), "Note", "text")
    assert (str(copies[1]), copies[1].stored) == (str(unknown), 4)
    assert (str(copies[2]), copies[2].stored_ids) == (str(refused), ("1-0", None))


@pytest.mark.parametrize("serialize", [False, True], ids=["by-reference", "bytes"])
@pytest.mark.parametrize("field", ["correlation_id", "causation_id"])
async def test_an_id_that_is_not_valid_unicode_is_refused_on_every_transport(
    serialize: bool, field: str
) -> None:
    """A lone surrogate in an id raises EncodeError even where nothing becomes bytes, as
    it does on Redis: what passes in memory passes on the wire."""
    bus = EventBus(transport=InMemoryTransport(serialize=serialize))
    ids: dict[str, str | None] = {"correlation_id": None, "causation_id": None, field: "id-\ud800"}
    async with bus:
        with pytest.raises(EncodeError, match=f"its {field} is not valid Unicode") as info:
            await bus.publish(
                Note(text="hello"),
                correlation_id=ids["correlation_id"],
                causation_id=ids["causation_id"],
            )
    assert (info.value.event_name, info.value.field) == ("Note", field)
    assert "\ud800" not in str(info.value)


async def test_publishing_the_class_instead_of_an_instance_says_so() -> None:
    """publish(OrderCreated) names the class and shows the call to make."""
    async with EventBus() as bus:
        with pytest.raises(
            PublishError, match=r"not the class OrderCreated: publish\(OrderCreated"
        ):
            await bus.publish(OrderCreated)  # type: ignore[arg-type]
