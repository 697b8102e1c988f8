"""The API reference builds with ``mkdocs build --strict`` and renders the API.

Strict mode turns every warning into an error: a docstring section naming a
parameter the signature lacks, a broken cross-reference, a page missing from the
navigation. The build needs the ``docs`` extra (part of ``dev``) and no network
(MathJax is loaded by the reader's browser); it takes a few seconds.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Page -> names its rendered HTML must contain (headings of documented objects and
# the update-rule sections written above them).
EXPECTED = {
    "index.html": ["jtricks", "optimizers/", "schedules/"],
    "protocol/index.html": ["jtricks.base.Transform", "jtricks.base.chain",
                            "jtricks.base.apply_updates", "jtricks.struct.Struct",
                            "jtricks.tree.global_norm", "jtricks.hyperparams.current"],
    "optimizers/index.html": ["jtricks.optimizers.sgd.sgd",
                              "jtricks.optimizers.adaptive.adam",
                              "jtricks.optimizers.adaptive.adamw",
                              "jtricks.optimizers.adaptive.rmsprop",
                              "scale_by_adam", "Update rules"],
    "transforms/adaptive/index.html": ["jtricks.transforms.adaptive.scale_by_adam",
                                       "jtricks.transforms.adaptive.scale_by_rms",
                                       "jtricks.transforms.adaptive.ScaleByAdamState"],
    "transforms/clipping/index.html": ["jtricks.transforms.clipping.clip_by_global_norm",
                                       "jtricks.transforms.clipping.adaptive_grad_clip"],
    "transforms/plateau/index.html": ["jtricks.transforms.plateau.reduce_on_plateau"],
    "schedules/index.html": ["jtricks.schedules.cosine_decay",
                             "jtricks.schedules.warmup_cosine_decay",
                             "jtricks.schedules.exponential_decay"],
    "layers/index.html": ["jtricks.layers.batch_norm", "jtricks.layers.dropout"],
    "averaging/index.html": ["jtricks.averaging.ema", "jtricks.averaging.swa"],
    "train/index.html": ["jtricks.train.step.make_step", "jtricks.train.loop.fit",
                         "jtricks.train.early_stopping.EarlyStopping",
                         "jtricks.train.convs.canonical_convs"],
    "catalogue/second_order/index.html": ["jtricks.optimizers.lbfgs.lbfgs",
                                          "jtricks.transforms.sophia.scale_by_sophia"],
    "catalogue/parameter_free/index.html": ["jtricks.optimizers.parameter_free.prodigy"],
    "catalogue/wrappers/index.html": ["jtricks.transforms.schedule_free.schedule_free",
                                      "jtricks.transforms.sam.sam"],
    "flax/index.html": ["jtricks.flax.Optimizer", "jtricks.flax.TrainState"],
    "diagnostics/index.html": ["jtricks.diagnostics.report.report",
                               "jtricks.diagnostics.stats.leaf_norms"],
}


_BUILT: dict[str, Path | str] = {}


def _build(tmp_path_factory: pytest.TempPathFactory) -> Path | str:
    """The built site's folder, or why it could not be built (one build per run)."""
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec(
            "mkdocstrings_handlers.python") is None:
        return ("mkdocs or mkdocstrings[python] is not installed in this interpreter "
                f"({sys.executable}), so the API reference cannot be built. Install the "
                "docs tools: pip install -e '.[docs]' (also part of '.[dev]').")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's banner
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
         str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        log = (proc.stdout + proc.stderr).splitlines()
        problems = [line for line in log if "WARNING" in line or "ERROR" in line]
        return (f"mkdocs build --strict failed (exit {proc.returncode}):\n"
                + "\n".join(problems or log[-40:]))
    return out


def _site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built site; fails the calling test (never skips it) when there is none."""
    if "site" not in _BUILT:
        _BUILT["site"] = _build(tmp_path_factory)
    built = _BUILT["site"]
    if isinstance(built, str):
        pytest.fail(built, pytrace=False)  # a failure, never a skip: CI has the extra
    return built


def test_strict_build_renders_every_page(tmp_path_factory: pytest.TempPathFactory) -> None:
    site = _site(tmp_path_factory)
    missing = {}
    for page, names in EXPECTED.items():
        path = site / page
        if not path.is_file():
            missing[page] = "page not built"
            continue
        html = path.read_text(encoding="utf-8")
        if lacking := [name for name in names if name not in html]:
            missing[page] = lacking
    assert not missing, f"pages lacking their API: {missing}"


def test_update_rules_are_maths_and_examples_are_code(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    site = _site(tmp_path_factory)
    html = (site / "transforms" / "adaptive" / "index.html").read_text(encoding="utf-8")
    # pymdownx.arithmatex (generic) wraps LaTeX for MathJax; MathJax is configured
    # and loaded on every page.
    assert 'class="arithmatex"' in html
    assert r"\beta_1" in html
    assert "javascripts/mathjax.js" in html
    # `Example:` sections render as doctest code, not as nested block quotes.
    assert '<span class="gp">&gt;&gt;&gt; </span>' in html
    assert "<blockquote>\n<blockquote>" not in html
    # Sphinx roles such as :func:`scale_by_adam` become links, not literal text.
    optimizers = (site / "optimizers" / "index.html").read_text(encoding="utf-8")
    assert ":func:" not in optimizers
    assert 'href="../transforms/adaptive/#jtricks.transforms.adaptive.scale_by_adam"' \
        in optimizers
