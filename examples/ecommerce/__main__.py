"""``python -m examples.ecommerce demo|serve|worker``."""

from examples.ecommerce.cli import main

main()
