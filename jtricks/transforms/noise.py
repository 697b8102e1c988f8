"""Annealed Gaussian gradient noise, with its random key kept in the state."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform

__all__ = ["AddNoiseState", "AddNoise", "add_noise"]


class AddNoiseState(NamedTuple):
    """``count``: int32 updates so far (anneals the noise); ``rng_key``: the typed
    key the next draw splits (optax's fields)."""

    count: jax.Array
    rng_key: jax.Array


def _typed_key(key: Any) -> jax.Array:
    """A fresh typed key from a seed, a typed key or a raw ``uint32[2]`` key."""
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.clone(key)
    if jnp.ndim(key) == 0:
        return jax.random.key(key)
    return jax.random.wrap_key_data(jnp.array(key, copy=True))


def resolve_key(where: str, key: Any, seed: Any) -> Any:
    """The key given as ``key`` or (optax's older name) ``seed``; one is required."""
    if seed is not None:
        if key is not None:
            raise ValueError(f"{where}: give key or seed, not both (seed is optax's older "
                             f"name for an integer key); got key={key!r}, seed={seed!r}.")
        key = seed
    if key is None:
        raise ValueError(
            f"{where}: key is required: randomness is explicit, so no default key is "
            "drawn. Pass key=jax.random.key(0) or an integer seed."
        )
    return key


class AddNoise(Transform):
    """Adds annealed Gaussian noise; see :func:`add_noise`."""

    eta: Any
    gamma: Any
    key: Any

    def init(self, params):
        return AddNoiseState(count=jtree.scalar(0, jnp.int32, params),
                             rng_key=jtree.replicated_like(params, _typed_key(self.key)))

    def update(self, updates, state, params=None, **extra):
        del params, extra
        eta, gamma = hp.value_at(self.eta, state.count), hp.value_at(self.gamma, state.count)
        count = jtree.increment(state.count)
        std = jnp.sqrt(eta / count.astype(jnp.float32) ** gamma)
        rng_key, sample_key = jax.random.split(state.rng_key)
        leaves, treedef = jax.tree.flatten(updates)
        keys = jax.random.split(sample_key, len(leaves))
        noisy = [(g + std * jax.random.normal(k, jnp.shape(g), jnp.result_type(g)))
                 .astype(jnp.result_type(g)) for g, k in zip(leaves, keys)]
        return treedef.unflatten(noisy), AddNoiseState(count=count, rng_key=rng_key)


def add_noise(eta: Any, gamma: Any, key: Any = None, *, seed: int | None = None) -> AddNoise:
    """Adds Gaussian noise whose variance decays with the step (Neelakantan et al., 2015).

    With ``t`` the 1-based step and one independent draw ``z`` per coordinate::

        u <- g + sqrt(eta / t**gamma) * z,      z ~ N(0, 1)

    Randomness is explicit: the key is given here and lives in the state, which
    splits it once per update (the same draws as optax's ``add_noise`` for the
    same key).

    Args:
        eta: the noise variance at the first step, >= 0; a float, an array or a
            schedule.
        gamma: the annealing exponent, >= 0 (0.55 in the paper).
        key: a typed key (``jax.random.key(0)``), a raw ``uint32[2]`` key or an
            integer seed. Required: jtricks draws no default key.
        seed: optax's older name for an integer ``key``; give one of the two.

    Example:
        >>> tx = jt.chain(jt.add_noise(0.01, 0.55, jax.random.key(0)), jt.sgd(0.1))
    """
    key = resolve_key("add_noise", key, seed)
    hp.check_nonnegative("add_noise", "eta", eta, fix="eta is the noise variance, e.g. 0.01.")
    hp.check_nonnegative("add_noise", "gamma", gamma,
                         fix="gamma anneals the noise; the paper uses 0.55.")
    return AddNoise(eta=hp.as_hyper(eta), gamma=hp.as_hyper(gamma), key=key)
