"""The worked example of eventbus: an e-commerce backend whose modules talk through events.

``python -m examples.ecommerce demo`` runs the story in one process; ``serve`` runs the
HTTP API; ``worker --group NAME...`` runs consumer groups in their own process on Redis.
See ``examples/ecommerce/README.md``.
"""
