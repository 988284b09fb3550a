"""Helpers for testing code that publishes and handles events.

- ``capture(bus)``: record the events published through a bus inside a ``with`` block.
- ``drain(bus)``: wait until all published work is done, and re-raise the first error
  that sent an event to the dead letters (``reraise=False`` to opt out).
- ``VirtualClock``: run retry delays without waiting for real time.
- ``eventbus.testing.conformance``: the transport conformance suite (needs pytest).
"""

from ._capture import Captured, capture
from ._clock import VirtualClock
from ._drain import drain

__all__ = ["Captured", "VirtualClock", "capture", "drain"]
