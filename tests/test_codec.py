"""The codec and the wire format: round trips, headers, decode errors, and fuzzing."""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType
from typing import Annotated, Literal, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field

from eventbus import (
    ConfigurationError,
    DecodeError,
    Envelope,
    Event,
    MalformedMessageError,
    PayloadTooLargeError,
    UnknownEventError,
    VersionMismatchError,
)
from eventbus._codec import Codec
from eventbus.transports import Message
from tests.events import LineItem, OrderCreated

SECRET = "alice.secret@example.com"
NOW = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Address(BaseModel):
    """A nested, frozen model."""

    model_config = ConfigDict(frozen=True)

    street: str
    city: str
    country: str = "FR"


class Card(BaseModel):
    """One arm of a tagged union."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["card"] = "card"
    last4: str


class Iban(BaseModel):
    """The other arm of a tagged union."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["iban"] = "iban"
    iban: str


class CustomerRegistered(Event, name="crm.customer-registered", version=3):
    """An event with personal data, Decimal, datetime, nested models and mappings."""

    customer_id: str
    email: str
    balance: Decimal
    registered_at: datetime
    address: Address
    payment: Annotated[Card | Iban, Field(discriminator="kind")] = Card(last4="4242")
    scores: dict[str, int] = Field(default_factory=dict)
    tags: tuple[str, ...] = ()


class FirstOfName(Event, name="shared.name"):
    """One of two classes that claim the same wire name."""

    a: int


class SecondOfName(Event, name="shared.name"):
    """The other class with that wire name."""

    b: int


class OtherOrderCreated(Event, name="OrderCreated"):
    """Another class of the wire name OrderCreated (another bus of the process has it)."""

    order_id: str
    total: Decimal


def customer(**changes: object) -> CustomerRegistered:
    """A valid CustomerRegistered, with some fields changed."""
    fields: dict[str, object] = {
        "customer_id": "c-1",
        "email": SECRET,
        "balance": Decimal("1234.5600"),
        "registered_at": datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        "address": Address(street="1 rue de l'Église", city="Zürich ✓"),
        "tags": ("vip", "日本語"),
    }
    fields.update(changes)
    return CustomerRegistered.model_validate(fields)


def envelope_for(
    event: Event,
    *,
    causation_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    attempt: int = 1,
) -> Envelope:
    """An envelope for ``event`` as a bus would make it."""
    return Envelope(
        id="0190f4c2-7a1b-7000-8000-0123456789ab",
        name=type(event).event_name,
        version=type(event).event_version,
        occurred_at=NOW,
        correlation_id="corr-1",
        causation_id=causation_id,
        headers=MappingProxyType(dict(headers or {})),
        attempt=attempt,
    )


def make_codec(max_payload_bytes: int = 1024 * 1024) -> Codec:
    """A codec that knows CustomerRegistered and OrderCreated."""
    codec = Codec(max_payload_bytes=max_payload_bytes)
    codec.register([CustomerRegistered, OrderCreated])
    return codec


def wire(event: Event, envelope: Envelope | None = None) -> Message:
    """The plain message a network transport would deliver for ``event``."""
    codec = make_codec()
    envelope = envelope or envelope_for(event)
    return Message(codec.encode_body(event), codec.encode_headers(envelope))


def valid_headers(**changes: str) -> dict[str, str]:
    """Wire headers of a valid OrderCreated message, with some headers changed."""
    headers = {
        "id": "0190f4c2-7a1b-7000-8000-0123456789ab",
        "name": "OrderCreated",
        "version": "1",
        "time": "2024-05-01T12:00:00Z",
        "correlation_id": "corr-1",
    }
    headers.update(changes)
    return headers


VALID_BODY = b'{"order_id":"o-1","total":"9.90"}'


def decode_error(codec: Codec, message: Message) -> DecodeError:
    """The DecodeError that decoding ``message`` raises (fails the test if none)."""
    with pytest.raises(DecodeError) as info:
        codec.decode(message)
    return info.value


# -- round trips ----------------------------------------------------------------------


def test_round_trip_keeps_decimal_datetime_nested_models_and_unicode() -> None:
    """A plain wire message decodes to an event equal to the one encoded."""
    event = customer(payment=Iban(iban="FR76 3000 6000 0112 3456 7890 189"), scores={"q1": 3})
    envelope = envelope_for(event, causation_id="cause-1", headers={"tenant": "t-ü"})

    decoded, decoded_envelope = make_codec().decode(wire(event, envelope))

    assert decoded == event
    assert decoded.balance == Decimal("1234.5600")
    assert decoded.registered_at == event.registered_at
    assert decoded.address.city == "Zürich ✓"
    assert decoded_envelope == envelope


def test_round_trip_of_nested_events_in_tuples() -> None:
    """An OrderCreated with LineItems survives the wire, Decimal prices included."""
    event = OrderCreated(
        order_id="o-ü",
        total=Decimal("19.80"),
        items=(LineItem(sku="s-1", quantity=2, price=Decimal("9.90")),),
    )

    decoded, _ = make_codec().decode(wire(event))

    assert decoded == event


def test_decode_sets_the_attempt_given() -> None:
    """decode(message, attempt) puts that attempt number on the envelope."""
    _, envelope = make_codec().decode(wire(customer()), attempt=3)

    assert envelope.attempt == 3


def test_reference_decoded_by_its_codec_keeps_the_instance() -> None:
    """A Reference of a registered class decodes to its own event, never through bytes."""
    codec = make_codec()
    event = customer()
    reference = (event, envelope_for(event))

    decoded, envelope = codec.decode_reference(reference, attempt=2)

    assert decoded is event
    assert envelope == envelope_for(event, attempt=2)


def test_reference_of_another_class_of_that_name_decodes_through_bytes() -> None:
    """A Reference whose class another codec registered decodes to an equal event of its own."""
    event = OrderCreated(order_id="o-1")
    reference = (event, envelope_for(event))
    codec = Codec()
    codec.register([OtherOrderCreated])

    decoded, envelope = codec.decode_reference(reference)

    assert type(decoded) is OtherOrderCreated
    assert (decoded.order_id, decoded.total) == (event.order_id, event.total)
    assert envelope == envelope_for(event)


def test_reference_of_a_type_the_codec_does_not_know_is_unknown() -> None:
    """A codec without the event's type refuses a Reference with UnknownEventError."""
    event = customer()

    with pytest.raises(UnknownEventError):
        Codec().decode_reference((event, envelope_for(event)))


def test_something_else_than_a_reference_is_malformed() -> None:
    """An object another program passed by reference is refused as malformed."""
    with pytest.raises(MalformedMessageError, match="not an eventbus event"):
        make_codec().decode_reference(("not", "an event"))


@settings(max_examples=100, deadline=None)
@given(
    customer_id=st.text(min_size=1),
    email=st.text(),
    balance=st.decimals(allow_nan=False, allow_infinity=False),
    registered_at=st.datetimes(
        timezones=st.integers(-23 * 60 - 59, 23 * 60 + 59).map(
            lambda minutes: timezone(timedelta(minutes=minutes))
        )
    ),
    street=st.text(),
    tags=st.lists(st.text(), max_size=4).map(tuple),
    scores=st.dictionaries(st.text(), st.integers()),
)
def test_any_valid_event_round_trips(
    customer_id: str,
    email: str,
    balance: Decimal,
    registered_at: datetime,
    street: str,
    tags: tuple[str, ...],
    scores: dict[str, int],
) -> None:
    """Any valid CustomerRegistered decodes from its own encoding to an equal event."""
    event = customer(
        customer_id=customer_id,
        email=email,
        balance=balance,
        registered_at=registered_at,
        address=Address(street=street, city="c"),
        tags=tags,
        scores=scores,
    )

    decoded, _ = make_codec().decode(wire(event))

    assert decoded == event


# -- headers --------------------------------------------------------------------------


def test_headers_carry_the_envelope_with_a_z_time() -> None:
    """The headers are id, name, version, time (UTC, with Z) and correlation_id."""
    event = customer()

    headers = Codec.encode_headers(envelope_for(event))

    assert headers == {
        "id": "0190f4c2-7a1b-7000-8000-0123456789ab",
        "name": "crm.customer-registered",
        "version": "3",
        "time": "2024-05-01T12:00:00.123456Z",
        "correlation_id": "corr-1",
    }


def test_headers_add_causation_and_user_headers_as_json() -> None:
    """causation_id and the user headers (a JSON object of strings) appear when set."""
    envelope = envelope_for(
        customer(), causation_id="cause-1", headers={"tenant": "t-1", "trace": "ü"}
    )

    headers = Codec.encode_headers(envelope)

    assert headers["causation_id"] == "cause-1"
    assert json.loads(headers["headers"]) == {"tenant": "t-1", "trace": "ü"}
    assert all(isinstance(value, str) for value in headers.values())


def test_encoded_message_holds_the_codecs_body_and_headers() -> None:
    """encode() gives a Message of the event's JSON body and the envelope's headers."""
    codec = make_codec()
    event = customer()
    envelope = envelope_for(event, causation_id="cause-1")

    message = codec.encode(event, envelope)

    assert type(message) is Message
    assert message.body == codec.encode_body(event)
    assert dict(message.headers) == codec.encode_headers(envelope)


def test_a_hand_written_message_decodes() -> None:
    """A message written by another producer (redis-cli) decodes; correlation defaults to id."""
    headers = valid_headers(time="2024-05-01T14:00:00+02:00")
    del headers["correlation_id"]

    event, envelope = make_codec().decode(Message(VALID_BODY, headers))

    assert event == OrderCreated(order_id="o-1", total=Decimal("9.90"))
    assert envelope.occurred_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert envelope.occurred_at.tzinfo is UTC
    assert envelope.correlation_id == envelope.id
    assert (envelope.causation_id, dict(envelope.headers), envelope.attempt) == (None, {}, 1)


# -- errors ---------------------------------------------------------------------------


def test_unknown_name_is_an_unknown_event_error() -> None:
    """A name that no registered class has raises UnknownEventError (unknown-event)."""
    error = decode_error(make_codec(), Message(VALID_BODY, valid_headers(name="OrderShipped")))

    assert isinstance(error, UnknownEventError)
    assert error.reason == "unknown-event"


def test_other_version_is_a_version_mismatch_error() -> None:
    """A version other than the registered one raises VersionMismatchError (wrong-version)."""
    error = decode_error(make_codec(), Message(VALID_BODY, valid_headers(version="2")))

    assert isinstance(error, VersionMismatchError)
    assert error.reason == "wrong-version"


MALFORMED_HEADERS: dict[str, dict[str, object]] = {
    "missing id": {"id": None},
    "empty id": {"id": ""},
    "long id": {"id": "i" * 201},
    "id not a str": {"id": 7},
    "missing name": {"name": None},
    "name not a str": {"name": b"OrderCreated"},
    "missing version": {"version": None},
    "version zero": {"version": "0"},
    "version negative": {"version": "-1"},
    "version decimal": {"version": "1.0"},
    "version word": {"version": "one"},
    "version non-ascii digit": {"version": "\u0661"},
    "version too long": {"version": "1234567890"},
    "missing time": {"time": None},
    "time not ISO": {"time": "yesterday"},
    "naive time": {"time": "2024-05-01T12:00:00"},
    "date only": {"time": "2024-05-01"},
    "time out of range in UTC": {"time": "0001-01-01T00:30:00+01:00"},
    "correlation_id empty": {"correlation_id": ""},
    "correlation_id too long": {"correlation_id": "c" * 201},
    "causation_id not a str": {"causation_id": 3},
    "headers not JSON": {"headers": "tenant=t-1"},
    "headers a list": {"headers": '["t-1"]'},
    "headers a string": {"headers": '"t-1"'},
    "headers with a number": {"headers": '{"tenant": 1}'},
    "headers not a str": {"headers": {"tenant": "t-1"}},
}


def changed_message(changes: Mapping[str, object]) -> Message:
    """A valid message with some headers replaced (or removed, where None)."""
    headers: dict[str, object] = dict(valid_headers())
    for key, value in changes.items():
        if value is None:
            headers.pop(key, None)
        else:
            headers[key] = value
    return Message(VALID_BODY, cast(Mapping[str, str], headers))


@pytest.mark.parametrize("changes", MALFORMED_HEADERS.values(), ids=MALFORMED_HEADERS.keys())
def test_bad_envelope_headers_are_malformed(changes: dict[str, object]) -> None:
    """A missing or invalid envelope header raises MalformedMessageError (malformed)."""
    error = decode_error(make_codec(), changed_message(changes))

    assert isinstance(error, MalformedMessageError)
    assert error.reason == "malformed"


FIRST_WRONG_HEADER: dict[str, tuple[dict[str, object], str]] = {
    "id only": ({"id": None}, "'id'"),
    "correlation before name": ({"correlation_id": "", "name": None}, "correlation_id"),
    "causation before version": ({"causation_id": 3, "version": None}, "causation_id"),
    "name before version": ({"name": "", "version": "x"}, "'name'"),
    "version before time": ({"version": "one", "time": None}, "version"),
    "time before headers": ({"time": "yesterday", "headers": "x"}, "time"),
    "headers last": ({"headers": "[]"}, "headers"),
    "a str subclass is fine": ({"name": type("Name", (str,), {})("OrderCreated")}, ""),
}


@pytest.mark.parametrize(
    ("changes", "named"), FIRST_WRONG_HEADER.values(), ids=FIRST_WRONG_HEADER.keys()
)
def test_the_error_names_the_first_wrong_header(changes: dict[str, object], named: str) -> None:
    """Headers are checked in a fixed order (id, correlation_id, causation_id, name,
    version, time, headers) and the error names the first wrong one."""
    message = changed_message(changes)

    if not named:
        event, _ = make_codec().decode(message)
        assert isinstance(event, OrderCreated)
        return
    error = decode_error(make_codec(), message)
    assert isinstance(error, MalformedMessageError)
    assert named in str(error)


MALFORMED_BODIES: dict[str, object] = {
    "invalid JSON": b'{"order_id": ',
    "invalid UTF-8": b'{"order_id": "\xff\xfe"}',
    "not an object": b'["o-1"]',
    "missing field": b'{"total": "9.90"}',
    "wrong type": b'{"order_id": ["o-1"]}',
    "deeply nested": b'{"order_id": "o", "items": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "not bytes": '{"order_id": "o-1"}',
    "empty": b"",
}


@pytest.mark.parametrize("body", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_bad_bodies_are_malformed(body: object) -> None:
    """Invalid JSON, a schema violation or a non-bytes body raises MalformedMessageError."""
    error = decode_error(make_codec(), Message(cast(bytes, body), valid_headers()))

    assert isinstance(error, MalformedMessageError)
    assert error.reason == "malformed"


def test_headers_that_are_not_a_mapping_are_malformed() -> None:
    """Headers that are not a mapping raise MalformedMessageError."""
    message = Message(VALID_BODY, cast(Mapping[str, str], [("id", "x")]))

    error = decode_error(make_codec(), message)

    assert isinstance(error, MalformedMessageError)


def test_body_over_the_limit_is_malformed_before_parsing() -> None:
    """A body larger than max_payload_bytes raises MalformedMessageError at decode."""
    codec = make_codec(max_payload_bytes=len(VALID_BODY) - 1)

    error = decode_error(codec, Message(VALID_BODY, valid_headers()))

    assert isinstance(error, MalformedMessageError)
    assert str(len(VALID_BODY)) in str(error)


def test_body_at_the_limit_decodes() -> None:
    """A body of exactly max_payload_bytes is accepted."""
    codec = make_codec(max_payload_bytes=len(VALID_BODY))

    event, _ = codec.decode(Message(VALID_BODY, valid_headers()))

    assert event == OrderCreated(order_id="o-1", total=Decimal("9.90"))


def test_encode_over_the_limit_raises_payload_too_large() -> None:
    """Encoding an event past max_payload_bytes raises PayloadTooLargeError."""
    codec = make_codec(max_payload_bytes=64)
    event = customer(tags=("x" * 100,))

    with pytest.raises(PayloadTooLargeError) as info:
        codec.encode_body(event)

    assert "crm.customer-registered" in str(info.value)
    assert SECRET not in str(info.value)


def test_encoding_an_over_large_event_raises_and_names_the_exception() -> None:
    """encode() refuses an event past the limit; the error says where the limit holds."""
    codec = make_codec(max_payload_bytes=64)
    event = customer(tags=("x" * 100,))

    with pytest.raises(PayloadTooLargeError, match=r"limit of 64 .*passed by reference"):
        codec.encode(event, envelope_for(event))


def test_two_classes_with_one_name_cannot_be_registered() -> None:
    """Registering two classes with the same wire name raises ConfigurationError."""
    codec = Codec()
    codec.register([FirstOfName])

    with pytest.raises(ConfigurationError, match=r"shared\.name"):
        codec.register([SecondOfName])

    assert codec.event_type("shared.name") is FirstOfName


def test_registering_a_class_twice_is_harmless() -> None:
    """The same class registered twice stays registered, without error."""
    codec = Codec()

    codec.register([FirstOfName, FirstOfName])
    codec.register([FirstOfName])

    assert codec.event_type("shared.name") is FirstOfName


@pytest.mark.parametrize("limit", [0, -1, True, 1.5])
def test_a_bad_payload_limit_is_a_configuration_error(limit: object) -> None:
    """max_payload_bytes must be an int >= 1."""
    with pytest.raises(ConfigurationError):
        Codec(max_payload_bytes=cast(int, limit))


# -- no personal data in errors -------------------------------------------------------


def assert_no_secret(error: BaseException) -> None:
    """Neither the message nor the formatted traceback of ``error`` shows SECRET."""
    assert SECRET not in str(error)
    assert SECRET not in repr(error)
    assert SECRET not in "".join(traceback.format_exception(error))


def customer_body(**changes: object) -> bytes:
    """The JSON of a valid CustomerRegistered, with some top-level values replaced."""
    payload = json.loads(customer().model_dump_json())
    payload.update(changes)
    return json.dumps(payload).encode()


def customer_headers() -> dict[str, str]:
    """Valid headers for a CustomerRegistered body."""
    return Codec.encode_headers(envelope_for(customer()))


LEAKY_BODIES: dict[str, bytes] = {
    "wrong type": customer_body(customer_id=[SECRET]),
    "bad decimal": customer_body(balance=SECRET),
    "bad datetime": customer_body(registered_at=SECRET),
    "nested wrong type": customer_body(address={"street": SECRET}),
    "invalid JSON": customer_body()[:-1] + SECRET.encode(),
    "dict key": customer_body(scores={SECRET: "many"}),
    "union tag": customer_body(payment={"kind": SECRET}),
}


@pytest.mark.parametrize("body", LEAKY_BODIES.values(), ids=LEAKY_BODIES.keys())
def test_schema_errors_do_not_show_payload_values(body: bytes) -> None:
    """A malformed payload's error names the problem, never a value of the payload."""
    assert SECRET.encode() in body

    error = decode_error(make_codec(), Message(body, customer_headers()))

    assert isinstance(error, MalformedMessageError)
    assert_no_secret(error)


def test_too_large_body_error_does_not_show_the_payload() -> None:
    """The size error at decode gives sizes, not the payload."""
    body = customer_body()

    error = decode_error(make_codec(max_payload_bytes=16), Message(body, customer_headers()))

    assert_no_secret(error)


# -- fuzzing --------------------------------------------------------------------------

HEADER_KEYS = ("id", "name", "version", "time", "correlation_id", "causation_id", "headers")
ANY_HEADER_VALUE = st.one_of(
    st.text(max_size=30), st.binary(max_size=10), st.integers(), st.none(), st.booleans()
)


def decode_outcome(codec: Codec, message: Message) -> tuple[Event, Envelope] | DecodeError:
    """decode()'s result or its DecodeError; any other exception escapes."""
    try:
        return codec.decode(message)
    except DecodeError as exc:
        return exc


def check_outcome(outcome: tuple[Event, Envelope] | DecodeError) -> None:
    """A decode outcome is a known DecodeError or a consistent (event, envelope)."""
    if isinstance(outcome, DecodeError):
        assert outcome.reason in ("unknown-event", "wrong-version", "malformed")
        assert str(outcome)
        return
    event, envelope = outcome
    assert isinstance(event, CustomerRegistered | OrderCreated)
    assert (envelope.name, envelope.version) == (event.event_name, event.event_version)
    assert envelope.occurred_at.utcoffset() == timedelta(0)
    assert all(isinstance(v, str) for v in envelope.headers.values())


@FUZZ
@given(
    body=st.binary(max_size=200),
    headers=st.dictionaries(st.sampled_from(HEADER_KEYS) | st.text(max_size=10), ANY_HEADER_VALUE),
)
def test_arbitrary_bytes_and_headers_decode_or_raise_a_decode_error(
    body: bytes, headers: dict[str, object]
) -> None:
    """Any bytes with any headers give a DecodeError or a valid event, nothing else."""
    message = Message(body, cast(Mapping[str, str], headers))

    outcome = decode_outcome(make_codec(), message)

    check_outcome(outcome)


def json_values(max_leaves: int = 10) -> st.SearchStrategy[object]:
    """Arbitrary JSON values."""
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=max_leaves,
    )


OFFSETS = st.integers(-24 * 60 + 1, 24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
CALENDAR_ENDS = st.datetimes(max_value=datetime(1, 1, 2)) | st.datetimes(
    min_value=datetime(9999, 12, 30)
)
TIMES = st.one_of(
    st.text(max_size=40),
    st.datetimes().map(datetime.isoformat),
    st.datetimes(timezones=OFFSETS).map(datetime.isoformat),
    CALENDAR_ENDS.flatmap(lambda day: OFFSETS.map(lambda tz: day.replace(tzinfo=tz).isoformat())),
    st.sampled_from(["2024-05-01T12:00:00Z", "2024-05-01T12:00:00+25:00", "2024-13-01T00:00Z"]),
)

FUZZ_LIMIT = 64 * 1024
DEEP = st.integers(1, 20_000).map(lambda n: b"[" * n + b"]" * n)
HUGE_NUMBER = st.sampled_from([b"1" * 5000, b"1e99999", b"-1e-99999", b"9" * 400 + b".5"])


@st.composite
def garbled_bodies(draw: st.DrawFn, body: bytes) -> bytes:
    """A valid JSON object ``body`` replaced, truncated, inflated or corrupted."""
    kinds = ["random", "json", "deep", "huge", "utf8", "cut", "bloat", "field"]
    kind = draw(st.sampled_from(kinds))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return json.dumps(draw(json_values())).encode()
    if kind == "deep":
        return draw(DEEP)
    if kind == "huge":
        return draw(HUGE_NUMBER)
    if kind == "utf8":
        at = draw(st.integers(0, len(body)))
        return body[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + body[at:]
    if kind == "cut":
        return body[: draw(st.integers(0, len(body)))]
    if kind == "bloat":
        return body[:-1] + b" " * draw(st.integers(FUZZ_LIMIT - len(body), 2 * FUZZ_LIMIT)) + b"}"
    payload = json.loads(body)
    payload[draw(st.sampled_from(sorted(payload)))] = "@@"
    raw = draw(json_values().map(lambda value: json.dumps(value).encode()) | DEEP | HUGE_NUMBER)
    return json.dumps(payload).encode().replace(b'"@@"', raw)


@st.composite
def mutated_messages(draw: st.DrawFn) -> Message:
    """A valid message with one to three of its parts dropped, changed or garbled."""
    event = draw(st.sampled_from([customer(), OrderCreated(order_id="o-1")]))
    codec = make_codec()
    envelope = envelope_for(event, causation_id="cause-1", headers={"tenant": "t"})
    headers: dict[str, object] = dict(codec.encode_headers(envelope))
    body = valid = codec.encode_body(event)
    for _ in range(draw(st.integers(1, 3))):
        part = draw(st.sampled_from([*HEADER_KEYS, "drop", "body", "body", "body"]))
        if part == "drop":
            headers.pop(draw(st.sampled_from(HEADER_KEYS)), None)
        elif part == "body":
            body = draw(garbled_bodies(valid))
        elif part == "version":
            headers[part] = draw(st.integers(-2, 10**12).map(str) | ANY_HEADER_VALUE)
        elif part == "time":
            headers[part] = draw(TIMES | ANY_HEADER_VALUE)
        elif part == "name":
            headers[part] = draw(
                st.sampled_from(["OrderCreated", "Nope", "crm.customer-registered"])
            )
        elif part == "headers":
            headers[part] = draw(json_values().map(json.dumps) | ANY_HEADER_VALUE)
        else:
            headers[part] = draw(ANY_HEADER_VALUE | st.text(min_size=199, max_size=202))
    return Message(body, cast(Mapping[str, str], headers))


@FUZZ
@given(time=TIMES)
def test_any_time_header_decodes_or_raises_a_decode_error(time: str) -> None:
    """Any time header, ISO or not, with any offset, gives a DecodeError or a UTC time."""
    message = Message(VALID_BODY, valid_headers(time=time))

    outcome = decode_outcome(make_codec(), message)

    check_outcome(outcome)


@FUZZ
@given(message=mutated_messages())
def test_mutated_valid_messages_decode_or_raise_a_decode_error(message: Message) -> None:
    """A valid message with parts dropped or garbled gives a DecodeError or a valid event."""
    outcome = decode_outcome(make_codec(max_payload_bytes=FUZZ_LIMIT), message)

    check_outcome(outcome)


@settings(max_examples=100, deadline=None)
@given(message=mutated_messages())
def test_decode_errors_never_show_the_payload(message: Message) -> None:
    """Whatever is wrong with a message, its DecodeError does not quote the payload."""
    outcome = decode_outcome(make_codec(max_payload_bytes=FUZZ_LIMIT), message)

    if isinstance(outcome, DecodeError):
        assert_no_secret(outcome)
