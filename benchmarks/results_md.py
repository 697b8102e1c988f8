"""Writes one script's section of benchmarks/RESULTS.md, leaving the rest alone.

Each script owns the text between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``;
hand-written notes outside the markers survive every rerun.
"""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, name: str, block: str, title: str | None = None) -> None:
    """Puts ``block`` between ``name``'s markers in ``path`` (appended, under ``title``
    when given, if the markers are not there yet)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    body = f"{begin}\n{block.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + body + tail
    else:
        heading = f"## {title}\n\n" if title else ""
        text = text.rstrip("\n") + f"\n\n{heading}{body}\n"
    path.write_text(text)


def targets_table(rows: list[str]) -> str:
    """The issue's targets as measured in one run: a markdown table over ``rows``
    (``| target | measured | goal | met |`` lines), or nothing without rows."""
    if not rows:
        return ""
    head = ["", "Targets of the issue, as measured in this run:", "",
            "| target | measured | goal | |", "|---|---|---|---|"]
    return "\n".join(head + rows) + "\n"
