"""Differentially private aggregation of per-example gradients (Abadi et al., 2016):
optax's ``contrib.differentially_private_aggregate``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks.base import Transform
from jtricks.transforms.constraints import per_example_global_norm_clip
from jtricks.transforms.noise import resolve_key

__all__ = ["DifferentiallyPrivateAggregateState", "DifferentiallyPrivateAggregate",
           "differentially_private_aggregate"]


class DifferentiallyPrivateAggregateState(NamedTuple):
    """``rng_key``: the typed key the next update splits (optax's field)."""

    rng_key: jax.Array


def _fresh_key(key: Any) -> jax.Array:
    """A typed key of its own buffer, from a typed key, a raw ``uint32[2]`` key or a
    seed."""
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.clone(key)
    if jnp.ndim(key) == 0:
        return jax.random.key(key)
    return jax.random.wrap_key_data(jnp.array(key, jnp.uint32, copy=True))


def _batch_size(where: str, leaves: list) -> int:
    sizes = {jnp.shape(g)[0] if jnp.ndim(g) else None for g in leaves}
    if not leaves or None in sizes or len(sizes) != 1:
        raise ValueError(
            f"{where}: updates must be per-example gradients, every leaf with the same "
            f"batch size on axis 0; got shapes {[jnp.shape(g) for g in leaves]}. Compute "
            "them with jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, batch).")
    return sizes.pop()


class DifferentiallyPrivateAggregate(Transform):
    """Clips, sums and noises per-example gradients; see
    :func:`differentially_private_aggregate`."""

    l2_norm_clip: Any
    noise_multiplier: Any
    key: Any

    def init(self, params):
        del params
        return DifferentiallyPrivateAggregateState(rng_key=_fresh_key(self.key))

    def update(self, updates, state, params=None, **extra):
        del params, extra
        leaves, treedef = jax.tree.flatten(updates)
        batch = _batch_size("differentially_private_aggregate.update", leaves)
        summed, _ = per_example_global_norm_clip(leaves, self.l2_norm_clip)
        std = self.l2_norm_clip * self.noise_multiplier
        new_key, *keys = jax.random.split(state.rng_key, len(leaves) + 1)

        def leaf(s, g, k):
            # The sum keeps the gradient's dtype so the draw is optax's for the key.
            s = s.astype(g.dtype)
            return (s + std * jax.random.normal(k, s.shape, s.dtype)) / batch

        noised = [leaf(s, g, k) for s, g, k in zip(summed, leaves, keys)]
        return (treedef.unflatten(noised),
                DifferentiallyPrivateAggregateState(rng_key=new_key))

    def hyperparams_at(self, state):
        del state  # the key is randomness, not a hyperparameter
        return {"l2_norm_clip": self.l2_norm_clip, "noise_multiplier": self.noise_multiplier}


def differentially_private_aggregate(l2_norm_clip: ArrayLike, noise_multiplier: ArrayLike,
                                     key: Any = None, *, seed: int | None = None
                                     ) -> DifferentiallyPrivateAggregate:
    """The DP-SGD aggregation: clip each example's gradient, sum, add Gaussian noise,
    average. With ``g_i`` example ``i``'s gradient tree, ``B`` the batch size and
    ``C = l2_norm_clip``::

        u = (sum_i g_i * min(1, C / ||g_i||) + C * noise_multiplier * z) / B

    with one independent draw ``z ~ N(0, 1)`` per coordinate. The updates must carry
    the batch on axis 0 of every leaf (per-example gradients, from ``jax.vmap``), so
    this comes first in a chain. Randomness is explicit: the key is given here and
    lives in the state, split once per update into the next key and one key per
    leaf (the same draws as optax for the same key). Same numbers and state as
    optax's ``contrib.differentially_private_aggregate``.

    Paper: M. Abadi, A. Chu, I. Goodfellow, H. B. McMahan, I. Mironov, K. Talwar,
    L. Zhang, "Deep Learning with Differential Privacy", CCS 2016
    (arXiv:1607.00133).

    Args:
        l2_norm_clip: the largest global L2 norm an example's gradient keeps, > 0
            and finite (a number or an array).
        noise_multiplier: the noise's standard deviation relative to
            ``l2_norm_clip``, >= 0.
        key: a typed key (``jax.random.key(0)``), a raw ``uint32[2]`` key or an
            integer seed. Required: jtricks draws no default key.
        seed: optax's older name for an integer ``key``; give one of the two.

    Example:
        >>> tx = jt.chain(jt.differentially_private_aggregate(1.0, 1.1, jax.random.key(0)),
        ...               jt.sgd(0.1))
        >>> per_example = jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, batch)
    """
    where = "differentially_private_aggregate"
    key = resolve_key(where, key, seed)
    for name, value in (("l2_norm_clip", l2_norm_clip), ("noise_multiplier", noise_multiplier)):
        hp.no_schedule(where, name, value, fix="The state keeps no step count.")
        hp.check_finite(where, name, value)
    hp.check_positive(where, "l2_norm_clip", l2_norm_clip,
                      fix="It is the largest norm an example's gradient keeps, e.g. 1.0.")
    hp.check_nonnegative(where, "noise_multiplier", noise_multiplier,
                         fix="It scales the noise's standard deviation, e.g. 1.1.")
    return DifferentiallyPrivateAggregate(l2_norm_clip=l2_norm_clip,
                                          noise_multiplier=noise_multiplier, key=key)
