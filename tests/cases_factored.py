"""Table rows for the factored family (adafactor, scale_by_factored_rms).

``min_dim_size_to_factor`` is lowered so the test tree's matrices and tensors are
factored (the 4-D kernel and the 3-D tensor factor their two largest axes; the
``(1, 6)`` row is not factored because its second largest axis is too short).
"""

from __future__ import annotations

import jax
import optax

import jtricks as jt
from jtricks.optimizers.factored import adafactor
from jtricks.transforms.factored import scale_by_factored_rms


def _kernels(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _lr(count):
    return 0.05 * 0.99 ** count


def _both(**kwargs):
    return lambda: adafactor(**kwargs), lambda: optax.adafactor(**kwargs)


ROWS = [
    ("adafactor", *_both(learning_rate=0.05, min_dim_size_to_factor=2, decay_rate=0.7,
                         eps=1e-20)),
    ("adafactor_defaults", adafactor, optax.adafactor),
    ("adafactor_fp32_momentum_decay",
     *_both(learning_rate=_lr, min_dim_size_to_factor=3, momentum=0.8, weight_decay_rate=0.01,
            weight_decay_mask=_kernels, clipping_threshold=2.0, decay_offset=-3)),
    ("adafactor_unfactored",
     *_both(learning_rate=0.01, multiply_by_parameter_scale=False, factored=False,
            clipping_threshold=None, weight_decay_rate=_lr)),
    ("scale_by_factored_rms",
     lambda: jt.chain(scale_by_factored_rms(True, 0.6, -2, 2, 1e-20), jt.scale(-0.02)),
     lambda: optax.chain(optax.scale_by_factored_rms(True, 0.6, -2, 2, 1e-20),
                         optax.scale(-0.02))),
]
