"""Table rows for the Adam variants: (name, jtricks factory, optax factory).

Both factories of a row take no argument and set the same explicit, non-default
hyperparameters (one row per optimizer keeps optax's defaults where 100 steps stay
bounded). Building blocks are followed by a fixed descent step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jtricks.base import chain
from jtricks.optimizers import adam_variants as opt
from jtricks.transforms import adam_variants as blocks
from jtricks.transforms.scaling import scale


def lr_schedule(count):
    """An optax-free schedule: a plain function of the 0-based update count."""
    return 0.02 * 0.98 ** count


def kernels_only(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


def then_step(block, optax_block, step=-0.02):
    return (lambda: chain(block(), scale(step)),
            lambda: optax.chain(optax_block(), optax.scale(step)))


def both(name, **kwargs):
    """A row calling ``jtricks.<name>`` and ``optax.<name>`` with the same arguments."""
    ours, theirs = getattr(opt, name), getattr(optax, name)
    return lambda: ours(**kwargs), lambda: theirs(**kwargs)


ADAM = {"b1": 0.8, "b2": 0.95, "eps": 1e-6}

ROWS = [
    ("amsgrad_named", *both("amsgrad", learning_rate=0.02, **ADAM, eps_root=1e-8)),
    ("amsgrad_paper_fp32_mu",
     *both("amsgrad", learning_rate=lr_schedule, **ADAM, mu_dtype=jnp.float32,
           bias_correction_mu=False, bias_correction_nu=False)),
    ("adamax_named", *both("adamax", learning_rate=0.02, **ADAM)),
    ("adamaxw_named", *both("adamaxw", learning_rate=0.02, **ADAM, weight_decay=0.1)),
    ("adamaxw_mask", *both("adamaxw", learning_rate=lr_schedule, weight_decay=0.1,
                           mask=kernels_only)),
    ("adabelief_named", *both("adabelief", learning_rate=0.02, b1=0.8, b2=0.95, eps=1e-8,
                              eps_root=1e-10)),
    ("adabelief_nesterov", *both("adabelief", learning_rate=lr_schedule, b1=0.8, b2=0.95,
                                 nesterov=True)),
    ("adabelief_defaults", *both("adabelief", learning_rate=0.01)),
    ("yogi_named", *both("yogi", learning_rate=0.02, b1=0.8, b2=0.95, eps=1e-2)),
    ("yogi_defaults", *both("yogi", learning_rate=0.01)),
    ("radam_named", *both("radam", learning_rate=0.02, **ADAM, eps_root=1e-8,
                          threshold=6.0)),
    ("radam_nesterov", *both("radam", learning_rate=lr_schedule, b2=0.95, nesterov=True)),
    ("radam_defaults", *both("radam", learning_rate=0.01)),
    ("nadam_named", *both("nadam", learning_rate=0.02, **ADAM, eps_root=1e-8)),
    ("nadamw_named", *both("nadamw", learning_rate=0.02, **ADAM, weight_decay=0.1)),
    ("nadamw_mask_fp32_mu", *both("nadamw", learning_rate=lr_schedule, mu_dtype=jnp.float32,
                                  weight_decay=0.1, mask=kernels_only)),
    ("scale_by_amsgrad",
     *then_step(lambda: blocks.scale_by_amsgrad(0.8, 0.95, eps=1e-6, eps_root=1e-8),
                lambda: optax.scale_by_amsgrad(0.8, 0.95, eps=1e-6, eps_root=1e-8))),
    ("scale_by_adamax", *then_step(lambda: blocks.scale_by_adamax(0.8, 0.95, 1e-6),
                                   lambda: optax.scale_by_adamax(0.8, 0.95, 1e-6))),
    ("scale_by_belief", *then_step(lambda: blocks.scale_by_belief(0.8, 0.95, 1e-8, 1e-10),
                                   lambda: optax.scale_by_belief(0.8, 0.95, 1e-8, 1e-10))),
    ("scale_by_yogi",
     *then_step(lambda: blocks.scale_by_yogi(0.8, 0.95, 1e-2, 1e-8, 1e-3),
                lambda: optax.scale_by_yogi(0.8, 0.95, 1e-2, 1e-8, 1e-3))),
    ("scale_by_radam",
     *then_step(lambda: blocks.scale_by_radam(0.8, 0.95, 1e-6, 1e-8, 6.0, nesterov=True),
                lambda: optax.scale_by_radam(0.8, 0.95, 1e-6, 1e-8, 6.0, nesterov=True))),
]
