"""The sweep benchmark's core on a tiny model: the vmapped sweep is the separate runs.

``benchmarks/sweep.py`` times a vmapped jtricks learning-rate sweep against optax; its
numbers mean something only if the one program trains each rate exactly as a training
of that rate alone would. Two rates, a 64-16-10 MLP, four steps.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import sweep


def tiny_task() -> sweep.Task:
    (x, y), (xt, yt) = sweep.load_digits()
    module = sweep.MLP((16, 10))
    params = module.init(jax.random.key(0), x[:1])["params"]
    return sweep.Task("tiny", module, params, (x[:128], y[:128]), (xt[:64], yt[:64]),
                      sweep.batch_order(128, 32, 1))


def test_vmapped_sweep_equals_separate_runs():
    task, lrs = tiny_task(), np.array([1e-3, 3e-2])
    swept = sweep.sweep_jt_vmap(task, lrs)  # (rate, [accuracy, loss])
    alone = sweep.sweep_jt_separate(task, lrs)
    np.testing.assert_allclose(swept, alone, rtol=1e-5)
    np.testing.assert_allclose(sweep.sweep_jt_map(task, lrs), alone, rtol=1e-5)
    assert swept[0, 1] != swept[1, 1]  # the two rates trained differently
