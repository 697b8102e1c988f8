"""Table rows for the sign-based optimizers: (name, jtricks factory, optax factory).

Both factories of a row take no argument and set the same explicit, non-default
hyperparameters (one row per optimizer keeps optax's defaults). Building blocks are
followed by a fixed descent step.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax
from cases_adam_variants import kernels_only, lr_schedule, then_step

from jtricks.optimizers import sign as opt
from jtricks.transforms import sign as blocks


def both(name, **kwargs):
    """A row calling ``jtricks.<name>`` and ``optax.<name>`` with the same arguments."""
    ours, theirs = getattr(opt, name), getattr(optax, name)
    return lambda: ours(**kwargs), lambda: theirs(**kwargs)


ROWS = [
    ("lion_named", *both("lion", learning_rate=0.005, b1=0.8, b2=0.95, weight_decay=0.1)),
    ("lion_mask_fp32_mu", *both("lion", learning_rate=lr_schedule, mu_dtype=jnp.float32,
                                weight_decay=0.05, mask=kernels_only)),
    ("lion_defaults", *both("lion", learning_rate=0.003)),
    ("sign_sgd_named", *both("sign_sgd", learning_rate=0.01)),
    ("sign_sgd_schedule", *both("sign_sgd", learning_rate=lr_schedule)),
    ("signum_named", *both("signum", learning_rate=0.01, beta=0.8)),
    ("signum_fp32_acc", *both("signum", learning_rate=lr_schedule, beta=0.7,
                              accumulator_dtype=jnp.float32)),
    ("signum_defaults", *both("signum", learning_rate=0.01)),
    ("scale_by_lion", *then_step(lambda: blocks.scale_by_lion(0.8, 0.95),
                                 lambda: optax.scale_by_lion(0.8, 0.95), -0.01)),
    ("scale_by_lion_smooth",
     *then_step(lambda: blocks.scale_by_lion(0.8, 0.95, mode="smooth", smooth_beta=2.0),
                lambda: optax.scale_by_lion(0.8, 0.95, mode="smooth", smooth_beta=2.0),
                -0.01)),
    ("scale_by_lion_refined_fp32_mu",
     *then_step(lambda: blocks.scale_by_lion(0.8, 0.95, jnp.float32, mode="refined"),
                lambda: optax.scale_by_lion(0.8, 0.95, jnp.float32, mode="refined"), -0.01)),
    ("scale_by_sign", *then_step(blocks.scale_by_sign, optax.scale_by_sign, -0.01)),
]
