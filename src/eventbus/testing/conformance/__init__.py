"""The transport conformance suite: one set of scenarios every transport must pass.

Subclass ``TransportConformance`` in a test module (the class name must start with
``Test`` for pytest to collect it) and provide a ``transport`` fixture that returns a
fresh, empty transport for each test::

    import pytest
    from eventbus.testing.conformance import TransportConformance

    class TestMyTransport(TransportConformance):
        @pytest.fixture
        def transport(self) -> MyTransport:
            return MyTransport(...)

The scenarios run with the anyio pytest plugin (an ``anyio_backend`` fixture chooses the
event loop). The scenarios of the required contract run for every transport; those of
an optional ability (``BatchPublishing``, ``DeadLetterStore``, ``IdleWaiting``,
``Inspection``, ``GroupListing``, ``Serving``, ``ReferencePublishing``) and of a feature
the transport does not declare in its ``Features`` skip themselves and say why. Override
``bounded_transport`` to return a transport whose queue holds at most
``BOUNDED_CAPACITY`` messages, to run the backpressure scenario. Requires pytest.
"""

from . import _abilities, _core
from ._core import BOUNDED_CAPACITY
from ._helpers import connected, message, receive_and_ack

__all__ = ["BOUNDED_CAPACITY", "TransportConformance", "connected", "message", "receive_and_ack"]


class TransportConformance(_core.CoreScenarios, _abilities.AbilityScenarios):
    """Every scenario: the required contract, then the optional abilities."""
