"""``RedisTransport``: events over Redis Streams with consumer groups.

Needs the ``redis`` extra (``pip install "eventbus[redis]"``); importing ``eventbus``
alone never imports redis. Runs on asyncio (redis-py's asyncio client). The modules
beside this one are private.
"""

from ._transport import RedisTransport

__all__ = ["RedisTransport"]
