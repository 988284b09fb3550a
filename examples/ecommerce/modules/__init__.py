"""The modules of the shop. None imports another: they share ``events.py``, the
storage and the small contracts in ``contracts.py`` and ``web.py``, and the composition
root (``shop.py``, ``app.py``) wires them together.
"""
