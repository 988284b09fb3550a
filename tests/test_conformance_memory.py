"""The transport conformance suite, run against the in-memory transport."""

from __future__ import annotations

import pytest

from eventbus import InMemoryTransport
from eventbus.testing.conformance import BOUNDED_CAPACITY, TransportConformance


class TestInMemoryTransport(TransportConformance):
    """InMemoryTransport passes every conformance scenario."""

    @pytest.fixture
    def transport(self) -> InMemoryTransport:
        """A fresh in-memory transport."""
        return InMemoryTransport()

    @pytest.fixture
    def bounded_transport(self) -> InMemoryTransport:
        """An in-memory transport with a tiny queue."""
        return InMemoryTransport(max_queue=BOUNDED_CAPACITY)


class TestSerializingInMemoryTransport(TransportConformance):
    """InMemoryTransport(serialize=True) passes every conformance scenario too."""

    @pytest.fixture
    def transport(self) -> InMemoryTransport:
        """A fresh in-memory transport that copies messages as bytes."""
        return InMemoryTransport(serialize=True)

    @pytest.fixture
    def bounded_transport(self) -> InMemoryTransport:
        """A serializing in-memory transport with a tiny queue."""
        return InMemoryTransport(max_queue=BOUNDED_CAPACITY, serialize=True)
