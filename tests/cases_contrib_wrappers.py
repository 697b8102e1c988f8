"""Table rows for optax.contrib's wrappers and their optimizers: (name, jtricks factory,
optax factory).

Both factories of a row take no argument and set the same explicit, non-default
hyperparameters (one row per optimizer keeps optax's defaults where 100 steps stay
bounded). Rows take the shared driver's plain ``update(grads, state, params)``:
schedule-free, SAM in its transparent mode (``normalize`` inside its adversary), and
``split_real_and_imaginary`` on real params (its complex case, SAM's opaque
mode and the per-example DP optimizers have drivers of their own in
test_catalogue_contrib_wrappers.py).
"""

from __future__ import annotations

import jax.numpy as jnp
import optax
from cases_adam_variants import lr_schedule

from jtricks.base import chain
from jtricks.optimizers import schedule_free as opt
from jtricks.optimizers.adaptive import adam
from jtricks.optimizers.sgd import sgd
from jtricks.transforms import complex as cplx
from jtricks.transforms import sam
from jtricks.transforms import schedule_free as sf

contrib = optax.contrib


def both(name, **kwargs):
    """A row calling ``jtricks.<name>`` and ``optax.contrib.<name>`` alike."""
    ours, theirs = getattr(opt, name), getattr(contrib, name)
    return lambda: ours(**kwargs), lambda: theirs(**kwargs)


ROWS = [
    ("schedule_free_adamw_named",
     *both("schedule_free_adamw", learning_rate=0.02, b1=0.8, b2=0.95, eps=1e-6,
           weight_decay=0.01, weight_lr_power=1.5)),
    ("schedule_free_adamw_warmup_fp32_z",
     *both("schedule_free_adamw", learning_rate=0.02, warmup_steps=10,
           state_dtype=jnp.float32)),
    ("schedule_free_adamw_defaults", *both("schedule_free_adamw")),
    ("schedule_free_sgd_named",
     *both("schedule_free_sgd", learning_rate=0.05, warmup_steps=5, b1=0.8,
           weight_decay=0.01, weight_lr_power=1.0)),
    ("schedule_free_adam_schedule",
     lambda: sf.schedule_free(adam(lr_schedule, b1=0.0, b2=0.95), lr_schedule, b1=0.85),
     lambda: contrib.schedule_free(optax.adam(lr_schedule, b1=0.0, b2=0.95), lr_schedule,
                                   b1=0.85)),
    # sam's own defaults; the adversary's momentum shows the reset at each outer step.
    ("sam_sgd_defaults",
     lambda: sam.sam(sgd(0.05), chain(sam.normalize(), sgd(0.02, momentum=0.5))),
     lambda: contrib.sam(optax.sgd(0.05),
                         optax.chain(contrib.normalize(), optax.sgd(0.02, momentum=0.5)))),
    ("sam_adam_period3_kept",
     lambda: sam.sam(adam(0.02, b1=0.8), chain(sam.normalize(), sgd(0.01, momentum=0.5)), 3,
                     reset_state=False),
     lambda: contrib.sam(optax.adam(0.02, b1=0.8),
                         optax.chain(contrib.normalize(), optax.sgd(0.01, momentum=0.5)), 3,
                         reset_state=False)),
    ("split_real_and_imaginary_real_params",
     lambda: cplx.split_real_and_imaginary(adam(0.02, b1=0.8)),
     lambda: contrib.split_real_and_imaginary(optax.adam(0.02, b1=0.8))),
]
