"""Table rows for the classic optimizers: (name, jtricks factory, optax factory).

Both factories of a row take no argument and set the same explicit, non-default
hyperparameters (plus a row with optax's defaults where 100 steps stay bounded).
Building blocks are followed by a fixed descent step. Two adaptations, applied to
both libraries alike: Polyak's rules are fed the loss at the current params
(``update(..., value=loss(params))``), and SM3, which needs an axis on every
parameter, is partitioned off the 0-d leaf (plain SGD there).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from conftest import loss

from jtricks.base import Transform, chain, identity
from jtricks.optimizers import classic as opt
from jtricks.optimizers.sgd import sgd
from jtricks.transforms import classic as blocks
from jtricks.transforms import gradient_difference as diff_blocks
from jtricks.transforms import noise as noise_blocks
from jtricks.transforms import normalize as norm_blocks
from jtricks.transforms import step_size as step_blocks
from jtricks.transforms.masking import partition
from jtricks.transforms.scaling import scale


def lr_schedule(count):
    """An optax-free schedule: a plain function of the 0-based update count."""
    return 0.02 * 0.98 ** count


def kernels_only(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


def then_step(block, optax_block, step=-0.02):
    return (lambda: chain(block(), scale(step)),
            lambda: optax.chain(optax_block(), optax.scale(step)))


def both(name, module=opt, **kwargs):
    """A row calling ``jtricks.<name>`` and ``optax.<name>`` with the same arguments."""
    ours, theirs = getattr(module, name), getattr(optax, name)
    return lambda: ours(**kwargs), lambda: theirs(**kwargs)


class FeedLoss(Transform):
    """Test-only: calls ``inner.update(..., value=loss(params))`` (Polyak needs it)."""

    inner: Transform

    def init(self, params):
        return self.inner.init(params)

    def update(self, updates, state, params=None, **extra):
        return self.inner.update(updates, state, params, value=loss(params), **extra)


def optax_feed_loss(inner):
    return optax.GradientTransformation(
        inner.init, lambda u, s, p=None: inner.update(u, s, p, value=loss(p)))


def with_loss(ours, theirs):
    return lambda: FeedLoss(inner=ours()), lambda: optax_feed_loss(theirs())


def scalar_label(params):
    return jax.tree.map(lambda p: "sgd" if p.ndim == 0 else "sm3", params)


def off_scalars(ours, theirs):
    """SM3 everywhere but on the 0-d leaf, which gets plain SGD (optax's SM3 fails there)."""
    return (lambda: partition({"sm3": ours(), "sgd": sgd(0.05)}, scalar_label),
            lambda: optax.partition({"sm3": theirs(), "sgd": optax.sgd(0.05)}, scalar_label))


def reshaped_like_params():
    """optax's DoG returns shape (1,) for a 0-d parameter; this puts it back."""
    return optax.GradientTransformation(
        optax.init_empty_state,
        lambda u, s, p=None: (jax.tree.map(lambda x, q: x.reshape(q.shape), u, p), s))


# Below -sum(0.3 * |sin|) over make_params()' 123 entries: a lower bound of `loss`.
F_MIN = -40.0

ROWS = [
    ("novograd_named", *both("novograd", learning_rate=0.01, b1=0.8, b2=0.5, eps=1e-5,
                             eps_root=1e-8, weight_decay=0.01)),
    ("novograd_defaults", *both("novograd", learning_rate=0.01)),
    ("adadelta_named", *both("adadelta", learning_rate=0.5, rho=0.8, eps=1e-4,
                             weight_decay=0.01, weight_decay_mask=kernels_only)),
    ("adadelta_scheduled", *both("adadelta", learning_rate=lr_schedule, eps=1e-3)),
    ("rprop_named", *both("rprop", learning_rate=0.01, eta_minus=0.4, eta_plus=1.1,
                          min_step_size=1e-5, max_step_size=0.5)),
    ("rprop_defaults", *both("rprop", learning_rate=1e-3)),
    ("sm3_named", *off_scalars(lambda: opt.sm3(0.05, momentum=0.8),
                               lambda: optax.sm3(0.05, momentum=0.8))),
    ("polyak_sgd_named", *with_loss(
        lambda: opt.polyak_sgd(0.05, scaling=0.8, f_min=F_MIN, eps=1e-3, variant="sps+"),
        lambda: optax.polyak_sgd(0.05, scaling=0.8, f_min=F_MIN, eps=1e-3,
                                 variant="sps+"))),
    ("polyak_sgd_schedule", *with_loss(
        lambda: opt.polyak_sgd(0.1, scaling=lr_schedule, f_min=F_MIN),
        lambda: optax.polyak_sgd(0.1, scaling=lr_schedule, f_min=F_MIN))),
    ("optimistic_gradient_descent_named",
     *both("optimistic_gradient_descent", learning_rate=0.05, alpha=0.8, beta=0.5)),
    ("optimistic_gradient_descent_defaults",
     *both("optimistic_gradient_descent", learning_rate=0.02)),
    ("optimistic_adam_named", *both("optimistic_adam", learning_rate=0.01, optimism=0.005,
                                    b1=0.8, b2=0.95, eps=1e-6, nesterov=False)),
    ("optimistic_adam_defaults", *both("optimistic_adam", learning_rate=0.01)),
    ("optimistic_adam_v2_named",
     *both("optimistic_adam_v2", learning_rate=lr_schedule, alpha=0.9, beta=0.4, b1=0.8,
           b2=0.95, eps=1e-6, eps_root=1e-8, nesterov=False)),
    ("optimistic_adam_v2_defaults", *both("optimistic_adam_v2", learning_rate=0.01)),
    ("adan_named", *both("adan", learning_rate=0.02, b1=0.9, b2=0.85, b3=0.95, eps=1e-6,
                         eps_root=1e-7, weight_decay=0.02, mask=kernels_only)),
    ("adan_defaults", *both("adan", learning_rate=0.01)),
    ("noisy_sgd_named", *both("noisy_sgd", learning_rate=0.05, eta=0.02, gamma=0.6, key=3)),
    ("noisy_sgd_schedule", *both("noisy_sgd", learning_rate=lr_schedule,
                                 key=jax.random.key(4))),
    ("scale_by_adadelta", *then_step(lambda: blocks.scale_by_adadelta(0.8, 1e-4),
                                     lambda: optax.scale_by_adadelta(0.8, 1e-4), -0.5)),
    ("scale_by_rprop", *then_step(lambda: blocks.scale_by_rprop(0.02, 0.3, 1.3, 1e-4, 1.0),
                                  lambda: optax.scale_by_rprop(0.02, 0.3, 1.3, 1e-4, 1.0),
                                  -1.0)),
    ("scale_by_sm3", *off_scalars(
        lambda: chain(blocks.scale_by_sm3(0.8, 0.9, 1e-6), scale(-0.05)),
        lambda: optax.chain(optax.scale_by_sm3(0.8, 0.9, 1e-6), optax.scale(-0.05)))),
    # (optax's mu_dtype=float32 fails on bf16 params: test_catalogue_classic checks it.)
    ("scale_by_novograd",
     *then_step(lambda: blocks.scale_by_novograd(0.8, 0.5, 1e-5, 1e-8, 0.01),
                lambda: optax.scale_by_novograd(0.8, 0.5, 1e-5, 1e-8, 0.01), -0.01)),
    ("scale_by_adan", *then_step(lambda: diff_blocks.scale_by_adan(0.9, 0.85, 0.95, 1e-6),
                                 lambda: optax.scale_by_adan(0.9, 0.85, 0.95, 1e-6))),
    ("scale_by_optimistic_gradient",
     *then_step(lambda: diff_blocks.scale_by_optimistic_gradient(0.7, 0.4),
                lambda: optax.scale_by_optimistic_gradient(0.7, 0.4))),
    ("scale_by_polyak", *with_loss(
        lambda: chain(step_blocks.scale_by_polyak(F_MIN, 0.05, 1e-3), scale(-1.0)),
        lambda: optax.chain(optax.scale_by_polyak(F_MIN, 0.05, 1e-3), optax.scale(-1.0)))),
    # DoG keeps fp32 sums of squares; bf16 starting params keep optax's bf16 state stable.
    # The identity stands where optax's side puts back the shape of its 0-d update.
    ("scale_by_distance_over_gradients_fp32_sums",
     lambda: chain(step_blocks.scale_by_distance_over_gradients(
         1e-3, 1e-6, jnp.bfloat16, -0.5), identity()),
     lambda: optax.chain(optax.scale_by_distance_over_gradients(
         1e-3, 1e-6, jnp.bfloat16, -0.5), reshaped_like_params())),
    ("normalize_by_update_norm",
     *then_step(lambda: norm_blocks.normalize_by_update_norm(2.0, 1e-4),
                lambda: optax.normalize_by_update_norm(2.0, 1e-4), -0.05)),
    ("centralize", *then_step(norm_blocks.centralize, optax.centralize, -0.05)),
    ("add_noise", *then_step(lambda: noise_blocks.add_noise(0.02, 0.6, 5),
                             lambda: optax.add_noise(0.02, 0.6, 5), -0.05)),
]
