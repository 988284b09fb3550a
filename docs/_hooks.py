"""MkDocs hooks: render the docs' Python blocks marked ``python no-run`` (shown, not run
by tests/test_docs.py) as plain Python blocks."""

from __future__ import annotations

from typing import Any


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Turn the ``python no-run`` fences into ``python`` fences."""
    return markdown.replace("```python no-run\n", "```python\n")
