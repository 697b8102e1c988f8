"""Table rows for the layer-wise optimizers: (name, jtricks factory, optax factory).

Both factories of a row take no argument and set the same explicit, non-default
hyperparameters (plus a row with optax's defaults where 100 steps stay bounded).
Building blocks are followed by a fixed descent step.
"""

from __future__ import annotations

import jax
import optax

from jtricks.base import chain
from jtricks.optimizers import trust_ratio as opt
from jtricks.transforms import trust_ratio as blocks
from jtricks.transforms.scaling import scale


def lr_schedule(count):
    """An optax-free schedule: a plain function of the 0-based update count."""
    return 0.02 * 0.98 ** count


def decay_schedule(count):
    return 0.05 * 0.99 ** count


def kernels_only(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


# Weight decay on some leaves only: a prefix tree of Python bools over make_params().
SOME_LEAVES = {"blocks": [{"kernel": True}, False], "conv": True,
               "dense": {"b": False, "w": True}, "row": False, "scale": False}


def then_step(block, optax_block, step=-0.02):
    return (lambda: chain(block(), scale(step)),
            lambda: optax.chain(optax_block(), optax.scale(step)))


def both(name, module=opt, **kwargs):
    """A row calling ``jtricks.<name>`` and ``optax.<name>`` with the same arguments."""
    ours, theirs = getattr(module, name), getattr(optax, name)
    return lambda: ours(**kwargs), lambda: theirs(**kwargs)


ROWS = [
    ("lamb_named", *both("lamb", learning_rate=0.02, b1=0.8, b2=0.95, eps=1e-5,
                         eps_root=1e-8, weight_decay=0.05, mask=kernels_only)),
    ("lamb_scheduled_decay", *both("lamb", learning_rate=lr_schedule,
                                   weight_decay=decay_schedule, mask=SOME_LEAVES)),
    ("lamb_defaults", *both("lamb", learning_rate=0.01)),
    ("lars_named", *both("lars", learning_rate=0.05, weight_decay=0.01,
                         trust_coefficient=0.02, eps=1e-6, momentum=0.8)),
    ("lars_nesterov_masked", *both("lars", learning_rate=lr_schedule, weight_decay=0.01,
                                   weight_decay_mask=SOME_LEAVES,
                                   trust_coefficient=0.05, trust_ratio_mask=kernels_only,
                                   momentum=0.7, nesterov=True)),
    ("lars_defaults", *both("lars", learning_rate=0.5)),
    ("fromage_named", *both("fromage", learning_rate=0.02, min_norm=1e-4)),
    ("fromage_schedule", *both("fromage", learning_rate=lr_schedule)),
    ("scale_by_trust_ratio",
     *then_step(lambda: blocks.scale_by_trust_ratio(1e-3, 0.5, 1e-6),
                lambda: optax.scale_by_trust_ratio(1e-3, 0.5, 1e-6))),
    ("scale_by_param_block_norm",
     *then_step(lambda: blocks.scale_by_param_block_norm(1e-2),
                lambda: optax.scale_by_param_block_norm(1e-2), -0.002)),
    ("scale_by_param_block_rms",
     *then_step(lambda: blocks.scale_by_param_block_rms(1e-2),
                lambda: optax.scale_by_param_block_rms(1e-2))),
]
