"""The bake-off's core on a tiny configuration: its numbers mean something only if the
one vmapped program trains each rate exactly as a training of that rate alone would.

Two rates, a one-layer transformer of width 16, eight steps: the whole task for AdamW and
Lion (cheap to compile), and the sweep's equality with single runs for AdamW with its
rates vmapped and with them ``lax.map``ped inside the one program (the path SOAP and
Shampoo take; AdamW on it checks the mapping at a fraction of Shampoo's compile time).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bakeoff

TINY = bakeoff.Config(steps=8, eval_every=4, batch=4, timed_steps=2,
                      model={"d": 16, "layers": 1, "heads": 2, "ctx": 8, "eval_batch": 4})
NAMES = ["adamw", "lion"]
SWEPT = ["adamw", "adamw_mapped"]


@pytest.fixture(scope="module")
def task():
    return bakeoff.transformer_task(TINY)


@pytest.fixture(scope="module")
def result(task):
    return bakeoff.run_task(task, NAMES, 2, repeats=1, log=lambda s: None)


def test_result_structure_and_finite_losses(task, result):
    assert result["config"]["steps"] == 8 and result["params"] > 0
    assert set(result["optimizers"]) == set(NAMES)
    evals = TINY.steps // TINY.eval_every + 1  # plus the evaluation before step 0
    for name, e in result["optimizers"].items():
        assert len(e["lrs"]) == 2 and e["best_lr"] in e["lrs"]
        assert e["best_val_loss"] == min(e["final"]["val_loss"])
        assert e["curve"]["step"] == [0, 4, 8]
        for metric in ("train_loss", "val_loss", "batch_loss"):
            curve = np.asarray(e["curve"][metric])
            assert curve.shape == (evals,) and np.isfinite(curve).all(), (name, metric)
        # Training moved the loss away from where it started (log(128) for a random
        # model is about 4.85).
        assert e["curve"]["val_loss"][-1] != e["curve"]["val_loss"][0]
        assert e["step_ms"] > 0 and e["state_bytes"] > 0
        assert e["steps_to_adamw"] is None or e["steps_to_adamw"] in e["curve"]["step"]
    # AdamW is its own reference: it reaches its final loss by its last evaluation.
    adamw = result["optimizers"]["adamw"]
    assert adamw["steps_to_adamw"] is not None and adamw["vs_adamw"] == 0.0
    # Lion keeps one moment, AdamW two: about half the state (plus step counters).
    assert abs(2 * result["optimizers"]["lion"]["state_bytes"] - adamw["state_bytes"]) <= 64


@pytest.mark.parametrize("name", SWEPT)
def test_vmapped_sweep_equals_each_rate_alone(task, name, monkeypatch):
    assert bakeoff.OPTIMIZERS["shampoo"].sequential_rates  # the path adamw_mapped checks
    monkeypatch.setitem(bakeoff.OPTIMIZERS, "adamw_mapped", dataclasses.replace(
        bakeoff.OPTIMIZERS["adamw"], sequential_rates=True))
    lrs = bakeoff.rate_grid(bakeoff.OPTIMIZERS[name].low, 2)
    swept = bakeoff.sweep(task, name, lrs)["history"]
    for i, (lr, alone) in enumerate(zip(lrs, bakeoff.single(task, name, lrs))):
        for metric, values in alone.items():
            np.testing.assert_allclose(swept[metric][i], values, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} lr={lr} {metric}")
    assert not np.allclose(swept["val_loss"][0], swept["val_loss"][1])  # rates differ


def test_markdown_table(result):
    report = {"command": "python benchmarks/bakeoff.py --quick", "machine": bakeoff.machine(),
              "rates": 2, "repeats": 1, "load_before": "0 0 0", "load_after": "0 0 0",
              "wall_s": 1.0, "tasks": {"char transformer": result}, "plot": "bakeoff.png"}
    text = bakeoff.markdown(report)
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| optimizer | best lr |")
    assert len(rows) == 1 + len(NAMES)  # the header and one row per optimizer
    assert all(row.count("|") == rows[0].count("|") for row in rows)
    assert "`python benchmarks/bakeoff.py --quick`" in text
    assert "beat AdamW's final validation loss" in text


def test_rate_grid_has_the_same_width_for_every_optimizer():
    spans = {n: bakeoff.rate_grid(o.low, 6) for n, o in bakeoff.OPTIMIZERS.items()}
    for grid in spans.values():
        np.testing.assert_allclose(grid[-1] / grid[0], 10 ** 2.5, rtol=1e-9)
        np.testing.assert_allclose(np.diff(np.log10(grid)), 0.5, rtol=1e-9)
    three = bakeoff.rate_grid(1e-4, 3)
    np.testing.assert_allclose(three, 1e-4 * 10 ** np.array([0.0, 1.25, 2.5]), rtol=1e-9)
