"""Table rows for L-BFGS and the line searches: (name, jtricks factory, optax factory).

Both factories of a row take no argument and set the same explicit hyperparameters
(``lbfgs_defaults`` keeps optax's). These transforms need the objective: the rows are
driven by tests/test_catalogue_lbfgs.py with ``value``, ``grad`` and ``value_fn``
(the shared table of conftest, which passes none of them, cannot run them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jtricks.base import chain
from jtricks.optimizers.lbfgs import lbfgs
from jtricks.optimizers.sgd import sgd
from jtricks.transforms.linesearch_backtracking import scale_by_backtracking_linesearch
from jtricks.transforms.linesearch_zoom import scale_by_zoom_linesearch


def objective(params, coupling):
    """A smooth, non-convex objective of all entries at once: a Rosenbrock chain
    through the concatenated entries, a weak quadratic whose curvature differs from
    entry to entry, and a ripple; 40 L-BFGS steps still move. One expression over the
    concatenated entries, so each of its copies (one per line-search branch) compiles
    fast. ``coupling`` arrives through the update's extra keyword arguments."""
    x = jnp.concatenate([jnp.ravel(p).astype(jnp.float32) for p in jax.tree.leaves(params)])
    curvature = 1.0 + jnp.arange(x.size) % 7
    return (coupling * jnp.sum((x[1:] - x[:-1] ** 2) ** 2) + jnp.sum((1.0 - x[:-1]) ** 2)
            + jnp.sum(0.05 * curvature * x**2 + 0.3 * jnp.sin(3 * x)))


def lr_schedule(count):
    return 0.05 * 0.97 ** count


ZOOM = dict(max_linesearch_steps=15, max_learning_rate=2.0, tol=1e-7, increase_factor=3.0,
            slope_rtol=1e-3, curv_rtol=0.7, approx_dec_rtol=None, stepsize_precision=1e-6,
            initial_guess_strategy="keep")
BACKTRACK = dict(max_backtracking_steps=20, slope_rtol=1e-3, decrease_factor=0.5,
                 increase_factor=2.0, max_learning_rate=1.0, store_grad=True)
SGD_BACKTRACK = dict(max_backtracking_steps=15, decrease_factor=0.7, increase_factor=1.2,
                     max_learning_rate=2.0, atol=1e-6, rtol=1e-6)

ROWS = [
    ("lbfgs_defaults", lbfgs, optax.lbfgs),
    ("lbfgs_options",
     lambda: lbfgs(0.8, memory_size=4, scale_init_precond=False,
                   linesearch=scale_by_zoom_linesearch(**ZOOM)),
     lambda: optax.lbfgs(0.8, memory_size=4, scale_init_precond=False,
                         linesearch=optax.scale_by_zoom_linesearch(**ZOOM))),
    ("lbfgs_backtracking",
     lambda: lbfgs(memory_size=5, linesearch=scale_by_backtracking_linesearch(**BACKTRACK)),
     lambda: optax.lbfgs(memory_size=5,
                         linesearch=optax.scale_by_backtracking_linesearch(**BACKTRACK))),
    ("lbfgs_schedule_no_linesearch",
     lambda: lbfgs(lr_schedule, memory_size=3, linesearch=None),
     lambda: optax.lbfgs(lr_schedule, memory_size=3, linesearch=None)),
    ("sgd_backtracking_fresh_grad",
     lambda: chain(sgd(1.0), scale_by_backtracking_linesearch(**SGD_BACKTRACK)),
     lambda: optax.chain(optax.sgd(1.0),
                         optax.scale_by_backtracking_linesearch(**SGD_BACKTRACK))),
]

# Rows whose state stores no gradient: their driver computes value and grad afresh.
FRESH_GRAD = {"lbfgs_schedule_no_linesearch", "sgd_backtracking_fresh_grad"}
