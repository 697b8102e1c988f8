"""Gradient health: per-layer norms, update-to-parameter ratios, activation statistics
and a report that flags vanishing and exploding layers.

The lesson's first trouble: in a deep network gradients can shrink (vanish) or grow
(explode) geometrically with depth, and so can activations when the initialisation
is off. The functions here measure that on any pytree (plain JAX dicts, flax linen
``params``, flax nnx ``State``), keyed by readable paths such as ``Dense_0/kernel``.

* :func:`leaf_norms`, :func:`layer_norms`, :func:`update_ratios`,
  :func:`activation_stats` are jittable and return dicts of arrays.
* :func:`report` (and :func:`report_from_norms`, fed by ``jt.record_norms``) gathers
  them on the host into a :class:`Report`: plain dicts of floats, a tuple of
  :class:`Flag` s and a readable table (``print(report)``).

Flags and their default thresholds (see :class:`Thresholds`):

==============  ===========  ==========================================================
section          flag         rule (per leaf / per activation)
==============  ===========  ==========================================================
gradients        nonfinite    the gradient has a NaN or inf
gradients        exploding    ``||g|| > grad_explode`` (1e3)
gradients        vanishing    ``||g|| < grad_vanish`` (1e-7) or
                              ``||g|| < grad_relative * max_leaf ||g||`` (1e-5)
updates          exploding    ``||u|| / ||p|| > ratio_high`` (0.1: 10% per step)
updates          vanishing    ``||u|| / ||p|| < ratio_low`` (1e-6); skipped if ``p = 0``
activations      nonfinite    any NaN or inf
activations      exploding    ``std > act_explode`` (100: far outside [-1, 1])
activations      vanishing    ``std < act_vanish`` (1e-4)
activations      dead         a fraction ``>= dead`` (0.95) of the entries is exactly 0
==============  ===========  ==========================================================

Example:
    >>> grads = jax.grad(loss_fn)(params, batch)
    >>> rep = jt.diagnostics.report(grads, params=params, activations=acts)
    >>> print(rep)                  # a table
    >>> rep.exploding               # ['Dense_0/kernel', ...]
"""

from jtricks.diagnostics.report import (
    Flag,
    Report,
    Thresholds,
    find_norms,
    report,
    report_from_norms,
)
from jtricks.diagnostics.stats import activation_stats, layer_norms, leaf_norms, update_ratios
from jtricks.tree import path_name

__all__ = [
    "path_name",
    "leaf_norms",
    "layer_norms",
    "update_ratios",
    "activation_stats",
    "Thresholds",
    "Flag",
    "Report",
    "report",
    "report_from_norms",
    "find_norms",
]
