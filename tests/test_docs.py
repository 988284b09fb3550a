"""Every ```python block of README.md and docs/*.md runs as a program.

How documentation code blocks are written:

- A block fenced as ```python is a complete program. It is written to a file (padded
  with blank lines so that a traceback's line number is the line in the Markdown file)
  and run by a fresh interpreter with ``-W error``, from the repository root. It must
  exit with status 0 within ``BLOCK_TIMEOUT`` seconds. Programs wait with
  ``await bus.drain()`` or ``eventbus.testing.drain``, never by sleeping.
- A block fenced as ```python no-run is a fragment that cannot run alone (a pytest
  class that needs a fixture, a web route); it is shown, not run. Use it sparingly.
- Blocks in any other language (``console``, ``text``, ``json``) are not run, and a
  Python block must use one of the two fences above, so that none is skipped by mistake.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK_TIMEOUT = 30.0
RUN, NO_RUN = "python", "python no-run"
_FENCE = re.compile(r"^(`{3,})(.*)$")
_PYTHON_LIKE = re.compile(r"^(py|python\d*|pycon|ipython)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Block:
    """One fenced code block: its file, its index among the file's blocks, and its text."""

    path: Path
    index: int
    line: int
    info: str
    code: str

    @property
    def name(self) -> str:
        """``docs/retries.md#3``: the file and the block's index in it."""
        return f"{self.path.relative_to(ROOT)}#{self.index}"


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, in order."""
    blocks: list[Block] = []
    fence: str | None = None
    info, start = "", 0
    lines: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = _FENCE.match(line)
        if fence is None and match:
            fence, info, start, lines = match[1], match[2].strip(), number + 1, []
        elif fence is not None and line.strip() == fence:
            blocks.append(Block(path, len(blocks), start, info, "\n".join(lines) + "\n"))
            fence = None
        elif fence is not None:
            lines.append(line)
    assert fence is None, f"{path.name}: a code block opened at line {start - 1} is not closed"
    return blocks


ALL_BLOCKS = [block for path in DOCUMENTS for block in fenced_blocks(path)]
PYTHON_BLOCKS = [block for block in ALL_BLOCKS if block.info == RUN]


def test_documents_are_found() -> None:
    """The README and the docs pages exist and hold runnable Python blocks."""
    assert (ROOT / "README.md") in DOCUMENTS
    assert len(DOCUMENTS) > 1
    assert PYTHON_BLOCKS


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[block.name for block in ALL_BLOCKS])
def test_python_blocks_use_a_known_fence(block: Block) -> None:
    """A Python block is fenced as `python` or `python no-run`, never another spelling."""
    if _PYTHON_LIKE.match(block.info):
        assert block.info in (RUN, NO_RUN), (
            f"{block.name} (line {block.line}) is fenced as {block.info!r}; "
            f"use {RUN!r} or {NO_RUN!r}"
        )


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[block.name for block in PYTHON_BLOCKS])
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    """The block runs as a program in a fresh interpreter and exits with status 0."""
    program = tmp_path / f"{block.path.stem}_{block.index}.py"
    program.write_text("\n" * (block.line - 1) + block.code, encoding="utf-8")
    try:
        result = subprocess.run(
            [sys.executable, "-W", "error", str(program)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.name} (line {block.line}) ran longer than {BLOCK_TIMEOUT} s")
    assert result.returncode == 0, (
        f"{block.name} (line {block.line}) exited with {result.returncode}\n"
        f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    )
