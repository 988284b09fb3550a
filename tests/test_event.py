"""Event classes (wire name, version, urgency, immutability), envelopes and event ids."""

from __future__ import annotations

import itertools
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pydantic
import pytest

from eventbus import Envelope, Event
from eventbus._envelope import EventIdGenerator
from tests.events import LineItem, OrderCreated, UserBanned


def _define_event(**keywords: object) -> type[Event]:
    """Create an Event subclass with these class keywords, as a class statement would."""

    class Defined(Event, **keywords):
        value: int = 0

    return Defined


def _envelope(**fields: object) -> Envelope:
    """An envelope with plausible values, overridden by ``fields``."""
    values: dict[str, object] = {
        "id": EventIdGenerator()(),
        "name": "OrderCreated",
        "version": 1,
        "occurred_at": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        "correlation_id": "corr-1",
    }
    values.update(fields)
    return Envelope(**values)  # type: ignore[arg-type]


# -- Event class keywords -------------------------------------------------------------


def test_defaults_are_class_name_version_one_not_urgent() -> None:
    """An event without class keywords is named after its class, version 1, not urgent."""
    assert OrderCreated.event_name == "OrderCreated"
    assert OrderCreated.event_version == 1
    assert OrderCreated.event_urgent is False


def test_class_keywords_set_name_version_and_urgency() -> None:
    """name=, version= and urgent= on the class statement set the wire identity."""
    assert UserBanned.event_name == "user.banned"
    assert UserBanned.event_version == 2
    assert UserBanned.event_urgent is True


def test_wire_identity_is_readable_from_instances() -> None:
    """An instance reports the wire identity of its class."""
    event = UserBanned(user_id="u-1")

    assert (event.event_name, event.event_version, event.event_urgent) == ("user.banned", 2, True)


@pytest.mark.parametrize(
    "name",
    ["a", "A1", "order.created", "orders:created-v2", "snake_case", "9lives", "x" * 200],
)
def test_valid_names_are_accepted(name: str) -> None:
    """Names of letters, digits and . _ : - (1-200 chars, alphanumeric first) are accepted."""
    defined = _define_event(name=name)

    assert defined.event_name == name


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("order created", id="space"),
        pytest.param(" order", id="leading-space"),
        pytest.param("order\n", id="trailing-newline"),
        pytest.param("order{1}", id="braces"),
        pytest.param("orders/created", id="slash"),
        pytest.param(".hidden", id="leading-dot"),
        pytest.param("x" * 201, id="too-long"),
        pytest.param(5, id="int"),
        pytest.param(b"order", id="bytes"),
    ],
)
def test_invalid_name_raises_type_error_at_class_creation(name: object) -> None:
    """A bad name= fails the class statement with a TypeError naming the class."""
    with pytest.raises(TypeError, match=r"event name .* of .*Defined must be 1-200 characters"):
        _define_event(name=name)


@pytest.mark.parametrize("version", [1, 2, 10**6])
def test_valid_versions_are_accepted(version: int) -> None:
    """Any int >= 1 is a valid version."""
    defined = _define_event(version=version)

    assert defined.event_version == version


@pytest.mark.parametrize(
    "version",
    [
        pytest.param(0, id="zero"),
        pytest.param(-1, id="negative"),
        pytest.param(True, id="bool"),
        pytest.param("2", id="str"),
        pytest.param(2.0, id="float"),
        pytest.param(None, id="none"),
    ],
)
def test_invalid_version_raises_type_error_at_class_creation(version: object) -> None:
    """A version= that is not an int >= 1 fails the class statement with a TypeError."""
    with pytest.raises(TypeError, match=r"event version of .*Defined must be an int >= 1"):
        _define_event(version=version)


@pytest.mark.parametrize("urgent", [1, 0, "yes", None])
def test_non_bool_urgent_raises_type_error_at_class_creation(urgent: object) -> None:
    """urgent= must be True or False; anything else fails the class statement."""
    with pytest.raises(TypeError, match=r"urgent= of .*Defined must be True or False"):
        _define_event(urgent=urgent)


def test_subclass_of_an_event_gets_its_own_name() -> None:
    """Subclassing an event names the subclass after itself, not after its parent."""

    class PriorityOrderCreated(OrderCreated):
        priority: int = 1

    assert PriorityOrderCreated.event_name == "PriorityOrderCreated"
    assert OrderCreated.event_name == "OrderCreated"


def test_subclass_keywords_do_not_change_the_parent() -> None:
    """Class keywords on a subclass leave the parent's wire identity alone."""

    class BannedForever(UserBanned, name="user.banned-forever", version=3):
        pass

    assert (BannedForever.event_name, BannedForever.event_version) == ("user.banned-forever", 3)
    assert (UserBanned.event_name, UserBanned.event_version) == ("user.banned", 2)


# -- Event instances ------------------------------------------------------------------


def test_instances_are_frozen() -> None:
    """Assigning a field of an event raises pydantic's ValidationError."""
    event = OrderCreated(order_id="o-1")

    with pytest.raises(pydantic.ValidationError):
        event.order_id = "o-2"  # type: ignore[misc]
    assert event.order_id == "o-1"


def test_instances_are_hashable_and_compare_by_value() -> None:
    """Frozen events with equal fields are equal and hash alike."""
    first = OrderCreated(order_id="o-1", total=Decimal("1.00"))
    second = OrderCreated(order_id="o-1", total=Decimal("1.00"))

    assert first == second
    assert hash(first) == hash(second)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({}, id="missing-field"),
        pytest.param({"order_id": 123}, id="int-for-str"),
        pytest.param({"order_id": "o-1", "total": "a lot"}, id="bad-decimal"),
        pytest.param(
            {"order_id": "o-1", "items": [{"sku": "s", "quantity": "three", "price": "1"}]},
            id="bad-nested-field",
        ),
    ],
)
def test_invalid_field_values_raise_validation_error(data: dict[str, object]) -> None:
    """Constructing an event with invalid fields raises pydantic's ValidationError."""
    with pytest.raises(pydantic.ValidationError):
        OrderCreated.model_validate(data)


def test_invalid_keyword_argument_raises_validation_error() -> None:
    """The constructor validates keyword arguments like model_validate does."""
    with pytest.raises(pydantic.ValidationError):
        LineItem(sku="s", quantity="three", price=Decimal("1"))


# -- Envelope -------------------------------------------------------------------------


def test_envelope_defaults() -> None:
    """A new envelope has no causation id, no headers and is attempt 1."""
    envelope = _envelope()

    assert envelope.causation_id is None
    assert dict(envelope.headers) == {}
    assert envelope.attempt == 1


def test_with_attempt_returns_a_copy_with_the_new_attempt() -> None:
    """with_attempt(n) changes only the attempt and leaves the original unchanged."""
    envelope = _envelope(headers={"tenant": "t-1"}, causation_id="cause-1")

    retried = envelope.with_attempt(3)

    assert retried.attempt == 3
    assert envelope.attempt == 1
    assert retried._replace(attempt=1) == envelope


def test_with_attempt_of_the_same_attempt_returns_an_equal_envelope() -> None:
    """with_attempt with the current attempt gives back an equal envelope."""
    envelope = _envelope(attempt=2)

    assert envelope.with_attempt(2) == envelope


def test_envelope_is_immutable() -> None:
    """Envelope fields cannot be assigned."""
    envelope = _envelope()

    with pytest.raises(AttributeError):
        envelope.attempt = 2  # type: ignore[misc]


# -- EventIdGenerator -----------------------------------------------------------------


def _is_uuid7(value: str) -> bool:
    """Whether ``value`` is a canonical RFC 9562 UUIDv7 string."""
    parsed = uuid.UUID(value)
    return parsed.version == 7 and parsed.variant == uuid.RFC_4122 and str(parsed) == value.lower()


def _timestamp_ms(value: str) -> int:
    """The Unix milliseconds stored in the first 48 bits of a UUIDv7."""
    return uuid.UUID(value).int >> 80


def test_ids_are_uuid7_strings() -> None:
    """Every id is a canonical UUIDv7 string with the RFC variant bits."""
    new_id = EventIdGenerator()

    ids = [new_id() for _ in range(1_000)]

    assert all(_is_uuid7(i) for i in ids)


def test_id_carries_the_current_unix_milliseconds() -> None:
    """The first id of a generator holds the wall-clock time it was made at."""
    new_id = EventIdGenerator()
    before = time.time_ns() // 1_000_000

    made = new_id()

    after = time.time_ns() // 1_000_000
    assert before <= _timestamp_ms(made) <= after


def test_ids_strictly_increase_as_strings() -> None:
    """10,000 ids of one generator, many per millisecond, sort as strings in call order."""
    new_id = EventIdGenerator()

    ids = [new_id() for _ in range(10_000)]

    assert len({_timestamp_ms(i) for i in ids}) < len(ids)  # several share a millisecond
    assert all(a < b for a, b in itertools.pairwise(ids))


def test_ids_strictly_increase_within_one_frozen_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More than 4,096 ids in one millisecond still strictly increase and stay UUIDv7."""
    frozen_ns = 1_700_000_000_123 * 1_000_000
    monkeypatch.setattr(time, "time_ns", lambda: frozen_ns)
    new_id = EventIdGenerator()

    ids = [new_id() for _ in range(10_000)]

    assert all(a < b for a, b in itertools.pairwise(ids))
    assert all(_is_uuid7(i) for i in ids)
    assert _timestamp_ms(ids[0]) == 1_700_000_000_123


def test_ids_strictly_increase_when_the_clock_goes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wall clock stepping backwards does not make a later id sort before an earlier one."""
    readings = iter([5_000, 5_000, 4_000, 3_000, 5_000, 5_001, 4_999])
    monkeypatch.setattr(time, "time_ns", lambda: next(readings) * 1_000_000)
    new_id = EventIdGenerator()

    ids = [new_id() for _ in range(7)]

    assert all(a < b for a, b in itertools.pairwise(ids))


def test_ids_of_two_generators_are_unique() -> None:
    """Two generators never make the same id, even when called in the same millisecond."""
    first, second = EventIdGenerator(), EventIdGenerator()

    ids = [gen() for _ in range(5_000) for gen in (first, second)]

    assert len(set(ids)) == len(ids)
