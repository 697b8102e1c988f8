"""Table rows for optax's wrappers and small transforms: (name, jtricks factory,
optax factory). Each wraps jtricks' sgd/adam on one side and optax's on the other,
with the same explicit hyperparameters, so every row says "this wrapper around
sgd/adam equals optax's around optax's". Wrappers whose params are not a plain
tree (lookahead) or that hold some leaves still (freeze, selective_transform,
keep_params_nonnegative) are tested in test_catalogue_wrappers.py instead.
"""

from __future__ import annotations

import optax
from cases_adam_variants import lr_schedule

from jtricks.base import chain
from jtricks.optimizers.adaptive import adam
from jtricks.optimizers.sgd import sgd
from jtricks.transforms import conditional, constraints, freezing, monitoring, steps
from jtricks.transforms.clipping import clip_by_global_norm
from jtricks.transforms.scaling import scale


def every_other(step):
    return step % 2 == 0


def early(step):
    return step < 60


def update_norm(u):
    return optax.tree.norm(u)


ROWS = [
    ("apply_if_finite_adam",
     lambda: conditional.apply_if_finite(adam(0.02, b1=0.8, b2=0.95), 3),
     lambda: optax.apply_if_finite(optax.adam(0.02, b1=0.8, b2=0.95), 3)),
    ("apply_if_finite_sgd_schedule",
     lambda: conditional.apply_if_finite(sgd(lr_schedule, momentum=0.8), 0),
     lambda: optax.apply_if_finite(optax.sgd(lr_schedule, momentum=0.8), 0)),
    # The untransformed steps pass the raw gradient through; scaled down, so those
    # steps descend (unscaled they ascend and the run explodes to ~1e21, where any
    # rounding difference between two programs is amplified past any tolerance).
    ("conditionally_transform_adam",
     lambda: chain(conditional.conditionally_transform(adam(0.02, b1=0.8), every_other),
                   scale(-0.05)),
     lambda: optax.chain(optax.conditionally_transform(optax.adam(0.02, b1=0.8),
                                                       every_other), optax.scale(-0.05))),
    ("conditionally_mask_sgd",
     lambda: conditional.conditionally_mask(sgd(0.05, momentum=0.7), early),
     lambda: optax.conditionally_mask(optax.sgd(0.05, momentum=0.7), early)),
    ("zero_nans_adam", lambda: chain(constraints.zero_nans(), adam(0.02, b2=0.95)),
     lambda: optax.chain(optax.zero_nans(), optax.adam(0.02, b2=0.95))),
    ("clip_by_block_rms_sgd",
     lambda: chain(constraints.clip_by_block_rms(0.5), sgd(0.05, momentum=0.8)),
     lambda: optax.chain(optax.clip_by_block_rms(0.5), optax.sgd(0.05, momentum=0.8))),
    ("apply_every_sgd", lambda: chain(sgd(0.05, momentum=0.5), steps.apply_every(3)),
     lambda: optax.chain(optax.sgd(0.05, momentum=0.5), optax.apply_every(3))),
    ("apply_every_defaults", lambda: chain(sgd(0.05), steps.apply_every()),
     lambda: optax.chain(optax.sgd(0.05), optax.apply_every())),
    ("named_chain_adam",
     lambda: freezing.named_chain(("clip", clip_by_global_norm(4.0)),
                                  ("adam", adam(0.02, b1=0.8))),
     lambda: optax.named_chain(("clip", optax.clip_by_global_norm(4.0)),
                               ("adam", optax.adam(0.02, b1=0.8)))),
    ("snapshot_sgd",
     lambda: chain(sgd(0.05, momentum=0.8), monitoring.snapshot("norm", update_norm)),
     lambda: optax.chain(optax.sgd(0.05, momentum=0.8), optax.snapshot("norm", update_norm))),
]
