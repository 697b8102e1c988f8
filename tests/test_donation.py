"""Donation: every state that init builds can be donated to a jitted step.

XLA refuses to donate one buffer twice, so a state whose fields share an array (one
zero reused for two counters, a moving average that *is* the params' array) breaks a
donated train step. Each stateful transform and averager is checked for distinct
buffers, and a donated step must give the numbers of an undonated one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import grad_fn, make_params

import jtricks as jt


def _kernels(tree):
    return jax.tree.map(lambda x: jnp.ndim(x) >= 2, tree)


def _labels(tree):
    return jax.tree.map(lambda x: "kernel" if jnp.ndim(x) >= 2 else "other", tree)


TRANSFORMS = {
    "sgd_momentum": lambda: jt.sgd(0.1, momentum=0.9),
    "adagrad": lambda: jt.adagrad(0.1),
    "rmsprop_centered": lambda: jt.rmsprop(0.01, centered=True, momentum=0.5),
    "adamw_schedule": lambda: jt.adamw(jt.schedules.cosine_decay(1e-2, 100), weight_decay=0.1),
    "clip_adam": lambda: jt.chain(jt.clip_by_global_norm(1.0), jt.adam(1e-3)),
    "skip_nonfinite": lambda: jt.skip_nonfinite(jt.adam(1e-3)),
    "accumulate": lambda: jt.accumulate(jt.sgd(0.1, momentum=0.9), 2),
    "masked": lambda: jt.masked(jt.adam(1e-3), _kernels),
    "partition": lambda: jt.partition({"kernel": jt.adam(1e-3), "other": jt.sgd(0.1)},
                                      _labels),
    "plateau": lambda: jt.chain(jt.adam(1e-3), jt.reduce_on_plateau(patience=1)),
    "monitor": lambda: jt.record_norms(jt.adam(1e-3)),
    "flatten": lambda: jt.flatten(jt.adam(1e-3)),
}


def _buffers(tree):
    return [x.unsafe_buffer_pointer() for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)]


def _assert_distinct(*trees):
    pointers = [p for t in trees for p in _buffers(t)]
    assert len(pointers) == len(set(pointers)), "two leaves share one buffer"


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_transform_state_can_be_donated(name):
    tx = TRANSFORMS[name]()
    params = make_params(5)
    _assert_distinct(params, tx.init(params))

    def step(p, s):
        g = grad_fn(p)
        u, s = tx.update(g, s, p, value=jt.tree.global_norm(g))
        return jt.apply_updates(p, u), s

    def twice(fn):
        p, s = jax.tree.map(jnp.copy, params), tx.init(params)
        for _ in range(2):
            p, s = fn(p, s)
        return p, s

    expected = twice(jax.jit(step))
    donated = jax.jit(step, donate_argnums=(0, 1))
    jax.tree.map(np.testing.assert_array_equal, twice(donated), expected)


@pytest.mark.parametrize("averager", [jt.averaging.ema(0.9), jt.averaging.swa(1)],
                         ids=["ema", "swa"])
def test_averages_do_not_alias_params(averager):
    params = make_params(6)
    state = averager.init(params)
    _assert_distinct(params, state)

    @jax.jit
    def step(p, s):
        p = jax.tree.map(lambda x: x * 0.5, p)
        return p, averager.update(p, s)

    donated = jax.jit(step.__wrapped__, donate_argnums=(0, 1))
    expected = step(params, averager.init(params))
    got = donated(jax.tree.map(jnp.copy, params), averager.init(params))
    jax.tree.map(np.testing.assert_array_equal, got, expected)
