"""Table rows for Sophia and GaLore: (name, jtricks factory, optax factory).

Both factories of a row take no argument and set the same explicit, non-default
hyperparameters (one row per optimizer keeps optax's defaults). ``scale_by_galore`` is
followed by a fixed descent step; ``scale_by_sophia`` is private in optax 0.2.8, and
every sophia row runs it inside optax's chain. Every row is driven with
``obj_fn=conftest.loss`` in ``update`` (Sophia's Hutchinson estimator differentiates
it; GaLore ignores it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from cases_adam_variants import kernels_only, lr_schedule, then_step
from conftest import make_params

from jtricks.optimizers.galore import galore
from jtricks.optimizers.sophia import sophia
from jtricks.transforms.adaptive import scale_by_adam
from jtricks.transforms.galore import GaLoreDimensionNumbers, scale_by_galore
from jtricks.transforms.sign import scale_by_lion
from jtricks.transforms.sophia import hutchinson_estimator_diag_hessian

OPTAX_DIMS = optax.contrib.GaLoreDimensionNumbers


def dims_by_rank(make):
    """``params -> dimension numbers``: every leaf of rank >= 2 is a matrix (a 3-D
    kernel reads its last two axes as outputs, a 4-D one its first three as inputs)."""
    table = {2: make(0, 1), 3: make(0, (1, 2)), 4: make((0, 1, 2), 3)}
    return lambda params: jax.tree.map(lambda x: table.get(x.ndim), params)


def dims_tree(make):
    """A concrete tree of dimension numbers shaped like make_params(): the dense kernel
    and the conv kernel read from the right axes, the rest skip (None)."""
    tree = jax.tree.map(lambda _: None, make_params(0))
    tree["dense"]["w"] = make(1, 0)
    tree["conv"] = make(3, (0, 1, 2))
    return tree


def galore_both(**kwargs):
    return lambda: galore(**kwargs), lambda: optax.contrib.galore(**kwargs)


def optax_hutchinson(seed):
    return optax.contrib.hutchinson_estimator_diag_hessian(jax.random.PRNGKey(seed))


def sophia_both(seed=None, **kwargs):
    """A sophia row; ``seed`` seeds each library's own Hutchinson estimator."""
    if seed is None:
        return lambda: sophia(**kwargs), lambda: optax.contrib.sophia(**kwargs)
    return (lambda: sophia(**kwargs, hessian_diagonal_fn=hutchinson_estimator_diag_hessian(
                jax.random.PRNGKey(seed))),
            lambda: optax.contrib.sophia(**kwargs, hessian_diagonal_fn=optax_hutchinson(seed)))


# gamma=1 and a larger eps keep many coordinates inside the clip: the rows test the
# curvature scaling, not only the clipped sign.
SOPHIA = {"b1": 0.9, "b2": 0.95, "gamma": 1.0, "eps": 0.3}

ROWS = [
    ("sophia_named", *sophia_both(3, learning_rate=0.01, **SOPHIA, update_interval=3,
                                  weight_decay=0.01)),
    # jtricks' sophia around optax's estimator, against optax's sophia.
    ("sophia_unclipped_fp32_mu_mask",
     lambda: sophia(lr_schedule, **SOPHIA, clip_threshold=None, weight_decay=0.1,
                    weight_decay_mask=kernels_only, update_interval=4, mu_dtype=jnp.float32,
                    hessian_diagonal_fn=optax_hutchinson(5)),
     lambda: optax.contrib.sophia(lr_schedule, **SOPHIA, clip_threshold=None,
                                  weight_decay=0.1, weight_decay_mask=kernels_only,
                                  update_interval=4, mu_dtype=jnp.float32,
                                  hessian_diagonal_fn=optax_hutchinson(5))),
    ("sophia_defaults", *sophia_both(learning_rate=0.01)),
    # jtricks' galore around optax's scale_by_adam, against optax's galore.
    ("galore_named_optax_base",
     lambda: galore(0.02, 2, 10, 0.5, optax.scale_by_adam(0.8, 0.95), weight_decay=0.1),
     lambda: optax.contrib.galore(0.02, 2, 10, 0.5, optax.scale_by_adam(0.8, 0.95),
                                  weight_decay=0.1)),
    ("galore_dims_schedule_mask",
     lambda: galore(lr_schedule, 2, 5, weight_decay=0.05, mask=kernels_only,
                    weight_dimension_numbers=dims_by_rank(GaLoreDimensionNumbers)),
     lambda: optax.contrib.galore(lr_schedule, 2, 5, weight_decay=0.05, mask=kernels_only,
                                  weight_dimension_numbers=dims_by_rank(OPTAX_DIMS))),
    ("galore_tree_dims_lion_fp32_mu",
     lambda: galore(0.005, 1, 7, 0.8, scale_by_lion(0.8, 0.95, jnp.float32),
                    weight_dimension_numbers=dims_tree(GaLoreDimensionNumbers)),
     lambda: optax.contrib.galore(0.005, 1, 7, 0.8,
                                  optax.scale_by_lion(0.8, 0.95, jnp.float32),
                                  weight_dimension_numbers=dims_tree(OPTAX_DIMS))),
    ("galore_defaults", *galore_both(learning_rate=0.01)),
    ("scale_by_galore",
     *then_step(lambda: scale_by_galore(2, 6, 0.25, scale_by_adam(0.8, 0.95, 1e-6)),
                lambda: optax.contrib.scale_by_galore(2, 6, 0.25,
                                                      optax.scale_by_adam(0.8, 0.95, 1e-6)))),
]
