"""Table rows for the moment-based optimizers of optax.contrib (AdEMAMix, Simplified
AdEMAMix, ADOPT, ACProp, MADGRAD): (name, jtricks factory, optax factory).

Both factories of a row take no argument and set the same explicit, non-default
hyperparameters (one row per optimizer keeps optax's defaults). The building blocks
run inside the named optimizers; the two rows of blocks alone are below.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax
from cases_adam_variants import kernels_only, lr_schedule, then_step

from jtricks.optimizers import moments as opt
from jtricks.transforms import ademamix, madgrad


def b3_warmup(count):
    """The slow momentum's decay warmed up from 0.9 to 0.99 over 50 steps."""
    return 0.9 + 0.09 * jnp.minimum(count / 50.0, 1.0)


def alpha_warmup(count):
    """The slow momentum's weight warmed up from 0 to 3 over 50 steps."""
    return 3.0 * jnp.minimum(count / 50.0, 1.0)


def clip_bound(count):
    """A looser clipping bound for ADOPT than optax's default ``count ** 0.25``."""
    return 0.5 + count ** 0.5


def both(name, **kwargs):
    """A row calling ``jtricks.<name>`` and ``optax.contrib.<name>`` alike."""
    ours, theirs = getattr(opt, name), getattr(optax.contrib, name)
    return lambda: ours(**kwargs), lambda: theirs(**kwargs)


ROWS = [
    ("ademamix_named", *both("ademamix", learning_rate=0.01, b1=0.8, b2=0.95, b3=0.99,
                             alpha=2.0, eps=1e-6, eps_root=1e-8, weight_decay=0.1)),
    ("ademamix_schedules_mask_fp32_mu",
     *both("ademamix", learning_rate=lr_schedule, b3=b3_warmup, alpha=alpha_warmup,
           mu_dtype=jnp.float32, weight_decay=0.05, mask=kernels_only)),
    ("simplified_ademamix_named",
     *both("simplified_ademamix", learning_rate=0.002, b1=0.9, b2=0.9, alpha=alpha_warmup,
           eps=1e-6, eps_root=1e-8, weight_decay=0.1, mask=kernels_only)),
    ("simplified_ademamix_defaults", *both("simplified_ademamix", learning_rate=0.0005)),
    ("adopt_named", *both("adopt", learning_rate=0.01, b1=0.8, b2=0.95, eps=1e-5,
                          use_clipping=False)),
    ("adopt_nesterov_fp32_mu",
     *both("adopt", learning_rate=lr_schedule, b2=0.99, mu_dtype=jnp.float32, nesterov=True,
           clip_value_fn=clip_bound)),
    ("adopt_defaults", *both("adopt", learning_rate=0.01)),
    ("acprop_named", *both("acprop", learning_rate=lr_schedule, b1=0.8, b2=0.95, eps=1e-8,
                           eps_root=1e-10, weight_decay=0.1, mask=kernels_only)),
    ("acprop_defaults", *both("acprop", learning_rate=0.01)),
    ("madgrad_named", *both("madgrad", learning_rate=lr_schedule, momentum=0.8,
                            weight_decay=0.1, eps=1e-5)),
    ("madgrad_defaults", *both("madgrad", learning_rate=0.01)),
    # The optimizers hold the other blocks with the same defaults. These two rows: the
    # AdEMAMix block with all its defaults (alpha is 6 there, 5 in ademamix: this row
    # is also ademamix's defaults row) and MADGRAD's block alone (it returns the step
    # itself, so no descent step follows it).
    ("scale_by_ademamix_defaults",
     *then_step(ademamix.scale_by_ademamix, optax.contrib.scale_by_ademamix, -0.002)),
    ("scale_by_madgrad", lambda: madgrad.scale_by_madgrad(0.02, 0.8, 1e-5),
     lambda: optax.contrib.scale_by_madgrad(0.02, 0.8, 1e-5)),
]
