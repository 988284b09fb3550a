"""``python -m eventbus worker package.module:bus``."""

from ._cli import main

main()
