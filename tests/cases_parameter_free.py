"""Table rows for the learning-rate-free and loss-aware optimizers: (name, jtricks
factory, optax factory).

Both factories of a row take no argument and set the same explicit, non-default
hyperparameters (see ROWS for how optax's defaults are covered). MoMo's rows are fed
the loss at the current params (``update(..., value=loss(params))``) by a test-only
wrapper, in both libraries alike, so the shared driver runs them with the others.
"""

from __future__ import annotations

import jax
import optax
import optax.contrib as contrib
from conftest import loss

from jtricks.base import Transform
from jtricks.optimizers import parameter_free as opt
from jtricks.optimizers.adaptive import adam
from jtricks.optimizers.sgd import sgd
from jtricks.transforms import dog as dog_blocks
from jtricks.transforms import parameter_free as blocks
from jtricks.transforms.mechanic import mechanize


def lr_schedule(count):
    """An optax-free schedule: a plain function of the 0-based update count."""
    return 0.9 ** (count / 10.0)


def fast_decay(count):
    """A schedule for DoWG, whose growing steps make a slowly decaying rate a
    chaotic run (100 steps would amplify rounding past the parity tolerance)."""
    return 0.5 * 0.97 ** count


def kernels_only(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


def both(name, module=opt, **kwargs):
    """A row calling ``jtricks.<name>`` and ``optax.contrib.<name>`` alike."""
    ours, theirs = getattr(module, name), getattr(contrib, name)
    return lambda: ours(**kwargs), lambda: theirs(**kwargs)


class FeedLoss(Transform):
    """Test-only: calls ``inner.update(..., value=loss(params))`` (MoMo needs it)."""

    inner: Transform

    def init(self, params):
        return self.inner.init(params)

    def update(self, updates, state, params=None, **extra):
        return self.inner.update(updates, state, params, value=loss(params), **extra)


def optax_feed_loss(inner):
    return optax.GradientTransformation(
        inner.init, lambda u, s, p=None: inner.update(u, s, p, value=loss(p)))


def with_loss(name, **kwargs):
    ours, theirs = both(name, **kwargs)
    return lambda: FeedLoss(inner=ours()), lambda: optax_feed_loss(theirs())


# The loss of conftest's tree sits near -5 at its minimum (0.3 sin(3p) dips below 0).
LB = -6.0

# One compiled program runs every row, so the rows are few: each sets every
# non-default option of its optimizer at once (flags and a schedule included), and
# optax's defaults are covered by LAYOUTS (states at init) and by the rows that
# change only the learning rate.
ROWS = [
    ("prodigy", *both("prodigy", learning_rate=0.5, betas=(0.8, 0.95), beta3=0.9, eps=1e-6,
                      estim_lr0=1e-4, estim_lr_coef=0.8, weight_decay=0.05,
                      safeguard_warmup=True)),
    ("prodigy_schedule", *both("prodigy", learning_rate=lr_schedule)),
    ("dadapt_adamw", *both("dadapt_adamw", learning_rate=lr_schedule, betas=(0.8, 0.95),
                           eps=1e-6, estim_lr0=1e-3, weight_decay=0.05)),
    ("cocob", *both("cocob", learning_rate=lr_schedule, alpha=50.0, eps=1e-6,
                    weight_decay=0.05, mask=kernels_only)),
    ("dog", *both("dog", learning_rate=lr_schedule, init_step=("heuristic", 1e-3), eps=1e-6,
                  weight_decay=0.05, mask=kernels_only)),
    ("dog_learning_rate", *both("dog", init_step=("learning_rate", 0.01), weight_decay=0.0)),
    ("dowg", *both("dowg", learning_rate=fast_decay, init_estim_sq_dist=0.01, eps=1e-5,
                   weight_decay=0.05, mask=kernels_only)),
    ("mechanize_adam",
     lambda: mechanize(adam(0.01, b1=0.8), weight_decay=0.05, eps=1e-6, s_init=0.1,
                       num_betas=4),
     lambda: contrib.mechanize(optax.adam(0.01, b1=0.8), weight_decay=0.05, eps=1e-6,
                               s_init=0.1, num_betas=4)),
    ("momo", *with_loss("momo", learning_rate=0.3, beta=0.8, lower_bound=LB,
                        weight_decay=0.05)),
    ("momo_adam_adapt", *with_loss("momo_adam", learning_rate=lr_schedule, b1=0.8, b2=0.95,
                                   eps=1e-6, lower_bound=LB, weight_decay=0.05,
                                   adapt_lower_bound=True)),
]

# More configurations whose states at init must be optax's (traced, never compiled).
LAYOUTS = [*ROWS,
    ("prodigy_defaults", *both("prodigy")),
    ("dadapt_adamw_defaults", *both("dadapt_adamw")),
    ("cocob_defaults", *both("cocob")),
    ("scale_by_cocob", blocks.scale_by_cocob, contrib.scale_by_cocob),
    ("dog_defaults", *both("dog")),
    ("dog_distance", *both("dog", init_step=("distance", 0.1))),
    ("dowg_defaults", *both("dowg")),
    ("scale_by_dog", lambda: dog_blocks.scale_by_dog(("distance", 0.05)),
     lambda: contrib._dog.scale_by_dog(("distance", 0.05))),
    ("scale_by_dowg", dog_blocks.scale_by_dowg, contrib._dog.scale_by_dowg),
    ("mechanize_sgd_defaults", lambda: mechanize(sgd(lr_schedule, momentum=0.8)),
     lambda: contrib.mechanize(optax.sgd(lr_schedule, momentum=0.8))),
    ("mechanize_optax_base", lambda: mechanize(optax.adam(0.1), num_betas=3),
     lambda: contrib.mechanize(optax.adam(0.1), num_betas=3)),
    ("momo_defaults", *with_loss("momo")),
    ("momo_adapt_schedule", *with_loss("momo", learning_rate=lr_schedule,
                                       adapt_lower_bound=True)),
    ("momo_adam_defaults", *with_loss("momo_adam")),
]
