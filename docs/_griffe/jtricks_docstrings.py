"""A griffe extension that adapts jtricks' reST habits to the Markdown reference.

The docstrings are Google style, written to read well in a terminal and with Sphinx
conventions; mkdocstrings renders them as Markdown. This extension rewrites three
habits at load time (it never touches the source files):

* ``Example:`` becomes ``Examples:`` so griffe parses the ``>>>`` lines as a doctest
  code block (griffe's Google parser only knows the plural; the singular renders as
  an admonition whose ``>>>`` lines Markdown turns into nested block quotes);
* a Sphinx role such as :func:`jtricks.tree.norms`, :class:`~jtricks.Transform` or a
  relative :func:`scale_by_adam` becomes an *optional* cross-reference: a link where
  the target is rendered somewhere in the site, plain code text where it is not, and
  never a warning (the strict build stays strict about everything else);
* a reST literal-block marker (a paragraph ending in ``::`` before an indented
  block) loses one colon, as Sphinx renders it; a ``::`` alone on its line goes;
* a reST simple table (rows framed by ``=====  ====`` borders) becomes a Markdown
  table (a row whose first cell is empty continues the row above, as in reST).

Loaded by mkdocstrings through ``mkdocs.yml`` (``extensions:``); the path is
relative to that file.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(
    r":(?:py:)?(?P<role>func|class|mod|meth|attr|data|obj|exc|const)"
    r":`(?P<tilde>~?)(?P<target>[A-Za-z_][\w.]*)(?:\(\))?`"
)
_EXAMPLE = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", flags=re.MULTILINE)
_BORDER = re.compile(r"^(?P<indent>[ \t]*)=+(?: +=+)+[ \t]*$")


class JtricksDocstrings(griffe.Extension):
    """Rewrites ``Example:``, Sphinx roles and ``::`` markers in every docstring."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader,
                   **kwargs: Any) -> None:
        del kwargs
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = _rewrite(obj, obj.docstring.value, loader)

    on_package_loaded = on_package  # the same hook under griffe 1's name


def _walk(obj: griffe.Object):
    """Every object defined in the package (aliases are visited at their target)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


def _rewrite(obj: griffe.Object, text: str, loader: griffe.GriffeLoader) -> str:
    text = _EXAMPLE.sub(r"\g<indent>Examples:", text)
    text = _ROLE.sub(lambda m: _crossref(obj, m, loader), text)
    return _tables(_literal_markers(text))


def _crossref(obj: griffe.Object, match: re.Match, loader: griffe.GriffeLoader) -> str:
    target = match["target"]
    shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
    if match["role"] in ("func", "meth"):
        shown += "()" if match.group(0).endswith("()`") else ""
    path = _resolve(obj, target, loader)
    code = f"<code>{html.escape(shown)}</code>"
    if path is None:
        return code
    return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'


def _resolve(obj: griffe.Object, target: str, loader: griffe.GriffeLoader) -> str | None:
    """The canonical path ``target`` names from ``obj``'s scope, or ``None``."""
    head, _, rest = target.partition(".")
    candidates = []
    try:
        base = obj.resolve(head)
        candidates.append(f"{base}.{rest}" if rest else base)
    except (griffe.NameResolutionError, AttributeError, KeyError):
        pass
    candidates.append(target)
    for path in candidates:
        try:
            found = loader.modules_collection[path]
        except (KeyError, ValueError, griffe.AliasResolutionError,
                griffe.CyclicAliasError):
            continue
        try:
            return found.final_target.path if found.is_alias else found.path
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return path
    return None


def _literal_markers(text: str) -> str:
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        stripped = line.rstrip()
        if stripped.endswith("::") and not nxt.strip():
            if stripped.strip() == "::":
                continue
            # "text::" reads "text:"; "text ::" reads "text" (reST's rules).
            line = stripped[:-3] if stripped.endswith(" ::") else stripped[:-1]
        out.append(line)
    return "\n".join(out)


def _tables(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        table = _simple_table(lines, i)
        if table is None:
            out.append(lines[i])
            i += 1
            continue
        end, rendered = table
        out.extend(["", *rendered, ""])
        i = end
    return "\n".join(out)


def _simple_table(lines: list[str], start: int) -> tuple[int, list[str]] | None:
    """``(index after the table, Markdown lines)`` for a reST simple table at
    ``lines[start]`` (top border, header, border, rows, bottom border), else None."""
    top = _BORDER.match(lines[start])
    if top is None:
        return None
    border = lines[start]
    borders = [j for j in range(start + 1, len(lines)) if lines[j] == border]
    if len(borders) < 2 or borders[0] != start + 2:
        return None
    spans = [(m.start(), m.end()) for m in re.finditer(r"=+", border)]

    def cells(line: str) -> list[str]:
        bounds = [s for s, _ in spans[1:]] + [None]
        return [line[s:e].strip() for (s, _), e in zip(spans, bounds)]

    header = cells(lines[start + 1])
    rows: list[list[str]] = []
    for line in lines[start + 3:borders[1]]:
        if not line.strip():
            continue
        row = cells(line)
        if rows and not row[0]:
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], row)]
        else:
            rows.append(row)
    indent = top["indent"]

    def md(row: list[str]) -> str:  # Markdown keeps pipes inside code spans
        return indent + "| " + " | ".join(row) + " |"

    rendered = [md(header), indent + "|" + "---|" * len(header), *map(md, rows)]
    return borders[1] + 1, rendered
