"""States shaped like optax's, so checkpoints cross between the libraries.

For every row of the transform table the jtricks state has optax's field names,
nesting, leaf shapes and dtypes (compared through ``flax.serialization``, which is
how linen's TrainState and nnx checkpoints store them), and a state restored from
optax's serialized state continues with optax's numbers.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import CASES, FAST_COMPILE, grad_fn, make_params, noise_sequence
from flax import serialization

import jtricks as jt


def _spec(tree):
    """``{path: (shape, dtype)}`` of a serialized state."""
    flat = jax.tree_util.tree_flatten_with_path(serialization.to_state_dict(tree))[0]
    return {jax.tree_util.keystr(p): (np.shape(x), jnp.result_type(x)) for p, x in flat}


@pytest.fixture(scope="module")
def params():
    return make_params(0)


def test_states_serialize_like_optax(tx_case, params):
    name, jt_factory, optax_factory = tx_case
    ours = jt_factory().init(params)
    theirs = optax_factory().init(params)
    assert _spec(ours) == _spec(theirs), name


@functools.cache
def _resumed():
    """Every row: 5 optax steps, then 5 more by optax and by jtricks restored from
    optax's serialized state, all in one compiled program."""
    params = make_params(0)
    noise = noise_sequence(params, 10)

    def run(tx, apply, p, s, noise):
        def body(carry, n):
            p, s = carry
            u, s = tx.update(grad_fn(p, n), s, p)
            return (apply(p, u), s), None

        return jax.lax.scan(body, (p, s), noise)[0]

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def both(params, noise):
        first, second = jax.tree.map(lambda n: n[:5], noise), jax.tree.map(lambda n: n[5:], noise)
        out = {}
        for name, jt_factory, optax_factory in CASES:
            o_tx, j_tx = optax_factory(), jt_factory()
            p5, s5 = run(o_tx, optax.apply_updates, params, o_tx.init(params), first)
            restored = serialization.from_state_dict(j_tx.init(params),
                                                     serialization.to_state_dict(s5))
            out[name] = (run(o_tx, optax.apply_updates, p5, s5, second)[0],
                         run(j_tx, jt.apply_updates, p5, restored, second)[0], p5)
        return out

    return both(params, noise)


def test_a_state_restored_from_optax_continues_with_optax_numbers(tx_case):
    theirs, ours, before = _resumed()[tx_case[0]]
    moved = any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(theirs),
                                                      jax.tree.leaves(before)))
    assert moved, f"{tx_case[0]}: the last five steps did not move"
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 ours, theirs)


def test_a_jtricks_state_restores_into_optax():
    params = make_params(0)
    grads = grad_fn(params)
    tx, otx = jt.adamw(1e-2, weight_decay=0.1, mask=lambda p: jax.tree.map(
        lambda x: x.ndim > 1, p)), optax.adamw(1e-2, weight_decay=0.1,
                                               mask=lambda p: jax.tree.map(
                                                   lambda x: x.ndim > 1, p))
    _, state = tx.update(grads, tx.init(params), params)
    restored = serialization.from_state_dict(otx.init(params),
                                             serialization.to_state_dict(state))
    ours, _ = tx.update(grads, state, params)
    theirs, _ = otx.update(grads, restored, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, theirs)


def test_jtricks_only_options_add_a_count_and_nothing_else(params):
    sched = jt.schedules.linear(0.9, 0.5, 10)
    state = jt.trace(sched).init(params)
    assert isinstance(state, jt.ScheduleCountState)
    assert _spec(state.state) == _spec(optax.trace(0.9).init(params))
    assert _spec(jt.trace(0.9).init(params)) == _spec(optax.trace(0.9).init(params))
