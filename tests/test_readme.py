"""Every ```python block of README.md runs, alone, in a fresh interpreter: the examples cannot rot.

Each block is a complete program: it is written to a file and run with this
interpreter in a temporary directory (so files it writes go there), with the
repository first on ``PYTHONPATH`` (so this checkout of ``trioflow`` and
``adapters`` is imported).  A block fails the test when it exits non-zero (an
``assert`` in it failed, say).  A ```mermaid block must appear verbatim in the
output of the ```python block just before it (the chart it says it prints).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.MULTILINE)


class Block(NamedTuple):
    line: int
    heading: str
    code: str
    shows: str | None  # the ```mermaid block that follows, if any


def readme_blocks(text: str) -> list[Block]:
    """The ```python blocks of ``text``, each with its line, its section, and a following ```mermaid block."""
    fences = list(_FENCE.finditer(text))
    blocks: list[Block] = []
    for i, fence in enumerate(fences):
        info = fence.group(1).split()
        if not info or info[0] not in ("python", "py"):
            continue
        headings = _HEADING.findall(text, 0, fence.start())
        after = fences[i + 1] if i + 1 < len(fences) else None
        shows = after.group(2) if after is not None and after.group(1).strip() == "mermaid" else None
        blocks.append(
            Block(text.count("\n", 0, fence.start()) + 1, headings[-1] if headings else "", fence.group(2), shows)
        )
    return blocks


def _params() -> list[object]:
    params: list[object] = []
    for block in readme_blocks(README.read_text(encoding="utf-8")):
        slug = re.sub(r"[^a-z0-9]+", "-", block.heading.lower()).strip("-") or "top"
        params.append(pytest.param(block, id=f"L{block.line}-{slug}"))
    return params


def test_readme_blocks_are_found() -> None:
    """The collector finds the python blocks, their sections, and skips other languages."""
    text = "# A\n```python\nx = 1\n```\n## B\n```console\n$ ls\n```\n```py\ny = 2\n```\n```mermaid\nflowchart TD\n```\n"
    assert readme_blocks(text) == [
        Block(2, "A", "x = 1\n", None),
        Block(9, "B", "y = 2\n", "flowchart TD\n"),
    ]
    assert len(_params()) >= 10  # the guide alone has ten examples


@pytest.mark.parametrize("block", _params())
def test_readme_python_block_runs(block: Block, tmp_path: Path) -> None:
    """The block runs to completion on its own, in a fresh interpreter."""
    script = tmp_path / f"readme_line_{block.line}.py"
    script.write_text(block.code, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("COLUMNS", None)
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (
        f"README.md line {block.line} ({block.heading}) exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    )
    if block.shows is not None:
        assert block.shows.strip() in done.stdout, "the mermaid block after it is not what it prints"
