"""The README's code runs: every complete ```python block, in order, in one namespace.

Blocks that are sketches (they hold a literal ``...`` line standing for the user's
own code) are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks() -> list[str]:
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    return [b for b in blocks if not re.search(r"^\s*\.\.\.\s*$", b, flags=re.MULTILINE)]


def test_readme_python_blocks_run():
    blocks = _blocks()
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)


def test_quick_start_has_exactly_two_commands_and_ci_runs_the_test_one():
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", quick, flags=re.DOTALL)
    assert len(commands) == 2
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = commands[1].split("&&")[-1].strip()
    assert test_command in ci
