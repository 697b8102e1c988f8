"""reduce_on_plateau: optax parity, mode="max", jit/scan, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax import contrib

import jtricks as jt

PARAMS = {"w": jnp.ones((2, 3)), "b": [jnp.ones(3), jnp.float32(1.0)]}
GRADS = jax.tree.map(lambda p: jnp.full_like(p, 0.5), PARAMS)


def _losses(n=240, seed=0):
    """Positive losses: a fast decrease, then a noisy plateau (reductions happen)."""
    rng = np.random.default_rng(seed)
    head = np.linspace(3.0, 1.0, 40)
    tail = 1.0 + 0.02 * rng.standard_normal(n - 40) + np.linspace(0.0, -0.05, n - 40)
    return jnp.asarray(np.concatenate([head, tail]), jnp.float32)


def _run(tx, values, grads=GRADS, params=PARAMS):
    """Feeds ``values`` one per update under lax.scan; returns the scales and states."""

    def step(state, v):
        updates, state = tx.update(grads, state, params, value=v)
        return state, (updates, state)

    _, (updates, states) = jax.lax.scan(step, tx.init(params), values)
    return updates, states


CONFIGS = [
    dict(),
    dict(factor=0.5, patience=3, cooldown=2, min_scale=0.01),
    dict(factor=0.5, patience=4, accumulation_size=5, rtol=0.0, atol=1e-3),
    dict(factor=0.2, patience=2, rtol=1e-2, atol=1e-3, cooldown=1),
]


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: ",".join(kw) or "defaults")
def test_equals_optax_contrib(kw):
    optax_kw = kw  # same names, same order: a switch changes no number
    values = _losses()
    ours_u, ours = jax.jit(_run, static_argnums=0)(jt.reduce_on_plateau(**kw), values)
    theirs_u, theirs = jax.jit(_run, static_argnums=0)(contrib.reduce_on_plateau(**optax_kw),
                                                       values)
    assert len(np.unique(np.asarray(ours.scale))) > 1  # the run reduced at least once
    # The state is optax's, field for field (count is the position in the window).
    assert ours._fields == theirs._fields
    for field in ours._fields:
        np.testing.assert_array_equal(getattr(ours, field), getattr(theirs, field),
                                      err_msg=field)
    jax.tree.map(np.testing.assert_array_equal, ours_u, theirs_u)


def test_in_a_chain_equals_optax_chain():
    values = _losses(120, seed=1)
    params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)}
    ours = jt.chain(jt.adam(0.05), jt.reduce_on_plateau(factor=0.5, patience=3))
    theirs = optax.chain(optax.adam(0.05), contrib.reduce_on_plateau(factor=0.5, patience=3))

    def train(tx):
        def step(carry, v):
            p, s = carry
            g = jax.tree.map(lambda x: 2 * x, p)
            u, s = tx.update(g, s, p, value=v)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (params, tx.init(params)), values)
        return p

    np.testing.assert_allclose(jax.jit(train, static_argnums=0)(ours)["w"],
                               jax.jit(train, static_argnums=0)(theirs)["w"], rtol=1e-6)


def test_mode_max_mirrors_mode_min():
    values = _losses()
    _, low = _run(jt.reduce_on_plateau(factor=0.5, patience=3), values)
    _, high = _run(jt.reduce_on_plateau(factor=0.5, patience=3, mode="max"), -values)
    np.testing.assert_array_equal(low.scale, high.scale)
    np.testing.assert_array_equal(low.best_value, -high.best_value)
    np.testing.assert_array_equal(low.plateau_count, high.plateau_count)


def test_rising_metric_never_reduces_in_max_mode():
    accuracy = jnp.linspace(0.1, 0.9, 50)
    _, states = _run(jt.reduce_on_plateau(patience=2, mode="max"), accuracy)
    np.testing.assert_array_equal(states.scale, np.ones(50))
    np.testing.assert_allclose(states.best_value[-1], 0.9)


def test_negative_values_need_a_real_improvement():
    # best = -1.0; -0.99995 is worse. optax's (1 - rtol) * best counts it as an
    # improvement; the |best| rule does not, so the plateau grows and the scale drops.
    values = jnp.asarray([-1.0, -0.99995, -0.99995, -0.99995], jnp.float32)
    _, ours = _run(jt.reduce_on_plateau(factor=0.5, patience=3), values)
    np.testing.assert_array_equal(ours.plateau_count, [0, 1, 2, 0])
    np.testing.assert_array_equal(ours.scale, [1.0, 1.0, 1.0, 0.5])
    np.testing.assert_array_equal(ours.best_value, [-1.0] * 4)


def test_hyperparameters_are_data():
    traces = []

    @jax.jit
    def run(tx, values):
        traces.append(1)
        return _run(tx, values)[1].scale

    values = _losses()
    a = run(jt.reduce_on_plateau(factor=0.1, patience=3), values)
    b = run(jt.reduce_on_plateau(factor=0.5, patience=5), values)
    assert len(traces) == 1
    np.testing.assert_array_equal(a, _run(jt.reduce_on_plateau(factor=0.1, patience=3),
                                          values)[1].scale)
    assert not np.array_equal(a, b)


def test_bf16_updates_stay_bf16_state_is_fp32():
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
    tx = jt.reduce_on_plateau()
    state = tx.init(params)
    assert state.scale.dtype == jnp.float32 and state.best_value.dtype == jnp.float32
    updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, value=1.0)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    assert state.count.dtype == jnp.int32


def test_missing_value_is_a_clear_error():
    tx = jt.reduce_on_plateau()
    with pytest.raises(TypeError, match=r"needs the monitored value.*value=loss"):
        tx.update(GRADS, tx.init(PARAMS), PARAMS)


def test_non_scalar_value_is_a_clear_error():
    tx = jt.reduce_on_plateau()
    with pytest.raises(ValueError, match=r"value must be a scalar.*shape \(4,\)"):
        tx.update(GRADS, tx.init(PARAMS), PARAMS, value=jnp.ones(4))


BAD = [
    (dict(factor=1.0), r"factor must be in \(0, 1\), got 1.0"),
    (dict(factor=0.0), r"factor must be in \(0, 1\)"),
    (dict(patience=0), r"patience must be an integer >= 1, got 0"),
    (dict(patience=2.5), r"patience must be an integer >= 1, got 2.5"),
    (dict(mode="mean"), r"mode must be 'min'.*'max'.*got 'mean'"),
    (dict(atol=-1e-3), r"atol must be >= 0"),
    (dict(rtol=2.0), r"rtol must be in \[0, 1\]"),
    (dict(cooldown=-1), r"cooldown must be an integer >= 0"),
    (dict(accumulation_size=0), r"accumulation_size must be an integer >= 1"),
    (dict(min_scale=2.0), r"min_scale must be in \[0, 1\]"),
]


@pytest.mark.parametrize("kw, match", BAD, ids=[",".join(b[0]) for b in BAD])
def test_bad_input_raises_clear_error(kw, match):
    with pytest.raises(ValueError, match=match):
        jt.reduce_on_plateau(**kw)


def test_vmap_over_stacked_factors_equals_separate_runs():
    values = _losses(120)
    factors = (0.1, 0.5)
    stacked = jax.tree.map(lambda *x: jnp.stack([jnp.asarray(v) for v in x]),
                           *[jt.reduce_on_plateau(factor=f, patience=3) for f in factors])
    swept = jax.jit(jax.vmap(lambda tx: _run(tx, values)[1].scale))(stacked)
    for i, f in enumerate(factors):
        np.testing.assert_allclose(
            swept[i], _run(jt.reduce_on_plateau(factor=f, patience=3), values)[1].scale,
            rtol=1e-6)
    assert jax.eval_shape(jt.reduce_on_plateau().init, PARAMS).count.dtype == jnp.int32
