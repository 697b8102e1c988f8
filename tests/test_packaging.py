"""The ``test`` extra is exactly what the tests need: what they import, and the tools
and optional dependencies they run (a fresh ``pip install -e ".[test]"`` passes)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Import name -> distribution name, where they differ.
DISTRIBUTION = {"sklearn": "scikit-learn", "orbax": "orbax-checkpoint"}
# Run rather than imported: fit(progress=True) imports tqdm; test_docs runs mkdocs;
# the README's test command runs pytest with xdist.
RUN_BY_TESTS = {"tqdm", "mkdocs", "mkdocs-material", "mkdocstrings", "pymdown-extensions",
                "pytest-xdist"}
RUNTIME = {"jax", "jaxlib", "numpy", "jtricks"}  # the package itself and its dependency


def _imported() -> set[str]:
    # The tests import their own helpers and the benchmark and example scripts.
    local = {p.stem for d in ("tests", "benchmarks", "examples") for p in (ROOT / d).glob("*.py")}
    names = set()
    for path in (ROOT / "tests").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return {DISTRIBUTION.get(n, n) for n in names
            if n not in local and n not in sys.stdlib_module_names and n not in RUNTIME}


def _extra(name: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {re.split(r"[\[<>=!~ ]", req, maxsplit=1)[0].lower()
            for req in project["optional-dependencies"][name]}


def test_the_test_extra_is_what_the_tests_use():
    assert _extra("test") == _imported() | RUN_BY_TESTS


def test_dev_installs_tests_examples_and_docs():
    assert _extra("dev") == {"jtricks", "ruff"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "jtricks[test,examples,docs]" in project["optional-dependencies"]["dev"]
