"""Hyperparameters are data: changing one never recompiles, stacking them is a sweep.

Every row of the transform table (conftest.py) runs inside ``jax.jit`` (taking the
transform as an argument), ``lax.scan``, ``jax.vmap`` over a stacked transform, and
``jax.eval_shape(tx.init, params)``. The whole table goes through each of these as one
program (a dict of transforms is a pytree too), so each row costs no compilation.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CASES, FAST_COMPILE, grad_fn, make_params, noise_sequence

import jtricks as jt

STEPS = 3


def _scan(tx, params, noise):
    def body(carry, n):
        p, s = carry
        u, s = tx.update(grad_fn(p, n), s, p)
        return (jt.apply_updates(p, u), s), None

    (params, state), _ = jax.lax.scan(body, (params, tx.init(params)), noise)
    return params, state


def make_runner(max_traces=None):
    """A jitted ``run(tx, params, noise)``: STEPS updates in a ``lax.scan`` (for a dict
    of transforms, one scan each, in one program). With ``max_traces``, a trace beyond
    that many raises chex's AssertionError."""

    def run(tx, params, noise):
        if isinstance(tx, dict):
            pairs = {name: _scan(t, params, noise) for name, t in tx.items()}
            return ({n: p for n, (p, _) in pairs.items()}, {n: s for n, (_, s) in pairs.items()})
        return _scan(tx, params, noise)

    if max_traces is not None:
        # chex counts traces per place of definition: start this runner's count at 0.
        chex.clear_trace_counter()
        run = chex.assert_max_traces(run, n=max_traces)
    return jax.jit(run, compiler_options=FAST_COMPILE)


def halved(tx):
    """The same transform with every numeric hyperparameter halved (still valid:
    rates stay in [0, 1), thresholds and eps stay positive)."""
    return jax.tree.map(lambda x: 0.5 * x, tx)


@functools.cache
def table_runs():
    """The whole table at once (one compilation per JAX transformation, not per row):
    the transforms, their halved twins, both run through the same jitted scan, the
    stacked pair run through ``vmap`` of it, and the eval_shape of every init.

    The jitted scan may be traced once: halving every hyperparameter of every
    transform, or mapping over them, must not retrace it. A retrace is returned as
    chex's AssertionError, and every row reports it (without recompiling the table)."""
    params = make_params()
    noise = noise_sequence(params, STEPS)
    txs = {name: factory() for name, factory, _ in CASES}
    others = {name: halved(tx) for name, tx in txs.items()}
    run = make_runner(max_traces=1)
    try:
        a = run(txs, params, noise)
        b = run(others, params, noise)
        stacked = jax.tree.map(lambda x, y: jnp.stack([jnp.asarray(x), jnp.asarray(y)]),
                               txs, others)
        swept = jax.vmap(run, in_axes=(0, None, None))(stacked, params, noise)
    except AssertionError as retraced:
        return retraced
    shapes = {name: jax.eval_shape(tx.init, params) for name, tx in txs.items()}
    return params, txs, a, b, swept, shapes


def test_every_transform_under_jit_scan_vmap_and_eval_shape(tx_case):
    name = tx_case[0]
    runs = table_runs()
    if isinstance(runs, AssertionError):
        pytest.fail(f"the jitted step was traced again: {runs}")
    params, txs, (a, state_a), (b, _), (swept, _), shapes = runs
    tx, a, b, state_a, swept = txs[name], a[name], b[name], state_a[name], swept[name]
    chex.assert_trees_all_equal_dtypes(a, params)
    chex.assert_tree_all_finite(a)

    chex.assert_trees_all_equal_shapes_and_dtypes(shapes[name], state_a)

    if not jax.tree.leaves(tx):
        return  # e.g. a learning rate given as a plain function: nothing to change
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    chex.assert_trees_all_close(jax.tree.map(lambda s: s[0], swept), a, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(jax.tree.map(lambda s: s[1], swept), b, rtol=1e-5, atol=1e-6)


def test_adam_step_compiles_once_for_two_learning_rates(params, grads):
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)  # a second trace (for the second rate) raises
    def step(tx, params, state, grads):
        updates, state = tx.update(grads, state, params)
        return jt.apply_updates(params, updates), state

    slow, fast = jt.adam(3e-4), jt.adam(1e-3)
    p_slow, _ = step(slow, params, slow.init(params), grads)
    p_fast, _ = step(fast, params, fast.init(params), grads)
    # Adam's first step moves every coordinate by about the learning rate.
    np.testing.assert_allclose(params["conv"] - p_slow["conv"],
                               3e-4 * jnp.sign(grads["conv"]), rtol=1e-3)
    np.testing.assert_allclose(params["conv"] - p_fast["conv"],
                               1e-3 * jnp.sign(grads["conv"]), rtol=1e-3)


@pytest.mark.parametrize("optimizer", [jt.sgd, jt.adam, jt.rmsprop, jt.adagrad])
def test_vmap_over_a_stacked_learning_rate_equals_separate_runs(optimizer, params):
    rates = [0.3, 0.1, 0.01]
    noise = noise_sequence(params, STEPS)
    run = make_runner()
    sweep = optimizer(jnp.asarray(rates))
    # Map over the stacked leaf only; the other hyperparameters are shared scalars.
    axes = jax.tree.map(lambda x: 0 if jnp.ndim(x) else None, sweep)
    swept, _ = jax.vmap(run, in_axes=(axes, None, None))(sweep, params, noise)
    for i, lr in enumerate(rates):
        alone, _ = run(optimizer(lr), params, noise)
        chex.assert_trees_all_close(jax.tree.map(lambda s, i=i: s[i], swept), alone,
                                    rtol=1e-5, atol=1e-6)


def test_python_float_hyperparameters_keep_bf16_through_jit(params_bf16):
    # Python floats become weakly typed tracers: bf16 updates and state stay bf16.
    run = make_runner()
    noise = noise_sequence(params_bf16, STEPS)
    txs = {"sgd": jt.sgd(0.1, momentum=0.9), "rmsprop": jt.rmsprop(0.01, centered=True),
           "adagrad": jt.adagrad(0.1), "adamw": jt.adamw(1e-3)}
    out, state = run(txs, params_bf16, noise)
    for name in txs:
        assert {x.dtype for x in jax.tree.leaves(out[name])} == {jnp.dtype(jnp.bfloat16)}
        # bf16 moments, and int32 counts only where optax's state has one.
        dtypes = {x.dtype for x in jax.tree.leaves(state[name])}
        assert jnp.dtype(jnp.bfloat16) in dtypes
        assert dtypes <= {jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.int32)}


def test_fp32_array_hyperparameters_keep_bf16_state_through_scan(params_bf16):
    # An fp32 array hyperparameter (a sweep value, a traced argument) promotes the
    # arithmetic to fp32, but the state must stay in the dtype init chose, or a scan
    # carry would change type between steps.
    run = make_runner()
    noise = noise_sequence(params_bf16, STEPS)
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    txs = {"sgd": jt.sgd(f32(0.1), momentum=f32(0.9)),
           "rmsprop": jt.rmsprop(f32(0.01), decay=f32(0.9), centered=True),
           "adagrad": jt.adagrad(f32(0.1), eps=f32(1e-7)),
           "adam": jt.adam(f32(1e-3), b1=f32(0.9), b2=f32(0.999), eps=f32(1e-8))}
    out, state = run(txs, params_bf16, noise)
    for name in txs:
        assert {x.dtype for x in jax.tree.leaves(out[name])} == {jnp.dtype(jnp.bfloat16)}
        # bf16 moments, and int32 counts only where optax's state has one.
        dtypes = {x.dtype for x in jax.tree.leaves(state[name])}
        assert jnp.dtype(jnp.bfloat16) in dtypes
        assert dtypes <= {jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.int32)}


# Each scheduled hyperparameter: update k must use its value at k (0-based), i.e. equal
# the same transform built with that constant, applied to the same state.
SCHEDULED = [
    ("trace.decay", lambda h: jt.trace(h, nesterov=True)),
    ("scale_by_rms.decay", lambda h: jt.scale_by_rms(h)),
    ("scale_by_rms.eps", lambda h: jt.scale_by_rms(0.9, eps=h)),
    ("scale_by_adagrad.eps", lambda h: jt.scale_by_adagrad(eps=h)),
    ("scale_by_adam.b1", lambda h: jt.scale_by_adam(b1=h)),
    ("sgd.momentum", lambda h: jt.sgd(0.1, momentum=h)),
    ("sgd.learning_rate", lambda h: jt.sgd(h, momentum=0.9)),
]


@pytest.mark.parametrize("build", [b for _, b in SCHEDULED], ids=[n for n, _ in SCHEDULED])
def test_update_k_uses_the_schedule_value_at_k(build, params):
    schedule = jt.schedules.linear(0.8, 0.2, 3)  # 0.8, 0.6, 0.4, 0.2, 0.2
    scheduled = build(schedule)
    noise = noise_sequence(params, 5)

    @jax.jit
    def both(scheduled, constant, state, n):
        g = grad_fn(params, n)
        return scheduled.update(g, state, params), constant.update(g, state, params)[0]

    state = scheduled.init(params)
    for k in range(5):
        constant = build(float(schedule(k)))
        (u, new_state), expected = both(scheduled, constant,
                                        state, jax.tree.map(lambda x, k=k: x[k], noise))
        chex.assert_trees_all_close(u, expected, rtol=1e-5, atol=1e-7)
        state = new_state
    has_count = lambda s: "count" in getattr(s, "_fields", ())  # a NamedTuple state
    counts = [s.count for s in jax.tree.leaves(state, is_leaf=has_count) if has_count(s)]
    assert counts and all(int(c) == 5 for c in counts)
