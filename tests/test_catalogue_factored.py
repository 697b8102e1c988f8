"""The factored family against optax: signatures, states, numbers, JAX transformations.

adafactor and scale_by_factored_rms are compared with optax 0.2.8 on the shared tree.
The factored moments reduce over axes, but jtricks reduces in the same order and
dtype as optax in fp32, so the trajectories agree to the table's tolerance (rtol 1e-5,
atol 1e-6; in practice bit for bit).
"""

from __future__ import annotations

import functools
import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from cases_factored import ROWS
from conftest import FAST_COMPILE, grad_fn, make_params, noise_sequence, trajectory
from flax import serialization

import jtricks as jt
from jtricks.optimizers.factored import adafactor
from jtricks.transforms.factored import FactoredState, scale_by_factored_rms

STEPS = 60
TWINS = [(adafactor, optax.adafactor), (scale_by_factored_rms, optax.scale_by_factored_rms)]


def _same_default(a, b):
    if callable(a) and callable(b) and not isinstance(a, type):
        return a.__name__ == b.__name__ and float(a(4, 0.8)) == float(b(4, 0.8))
    return a == b


@pytest.mark.parametrize("ours, theirs", TWINS, ids=[t.__name__ for _, t in TWINS])
def test_signature_is_optax(ours, theirs):
    mine = list(inspect.signature(ours).parameters.values())
    ref = list(inspect.signature(theirs).parameters.values())
    assert [p.name for p in mine[:len(ref)]] == [p.name for p in ref]
    for a, b in zip(mine, ref):
        assert a.kind == b.kind, a.name
        assert _same_default(a.default, b.default), a.name
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in mine[len(ref):])


def _layout(state):
    return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)),
                        serialization.to_state_dict(state))


@functools.cache
def _restored():
    """Every row: an optax state three steps in, restored into jtricks through its state
    dict, continued by both libraries (one compiled program for the whole table)."""
    params = make_params()
    noise = noise_sequence(params, 6)
    first = jax.tree.map(lambda n: n[:3], noise)
    rest = jax.tree.map(lambda n: n[3:], noise)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run(params, first, rest):
        out = {}
        for name, ours, theirs in ROWS:
            tx, ref = ours(), theirs()
            (p, s), _ = _scan(ref, optax.apply_updates, params, ref.init(params), first)
            restored = serialization.from_state_dict(tx.init(params),
                                                     serialization.to_state_dict(s))
            (a, _), _ = _scan(tx, jt.apply_updates, p, restored, rest)
            (b, _), _ = _scan(ref, optax.apply_updates, p, s, rest)
            out[name] = a, b
        return out

    return run(params, first, rest)


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_state_is_optax_and_restores(row):
    name, ours, theirs = row
    params = make_params()
    assert _layout(ours().init(params)) == _layout(theirs().init(params))
    a, b = _restored()[name]
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)


def _scan(tx, apply, params, state, noise):
    def body(carry, n):
        p, s = carry
        u, s = tx.update(grad_fn(p, n), s, p)
        return (apply(p, u), s), None
    return jax.lax.scan(body, (params, state), noise)


@functools.cache
def _parity(dtype_name):
    params = make_params(0, jnp.dtype(dtype_name))
    noise = noise_sequence(params, STEPS)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run_all(params, noise):
        return {name: (trajectory(a(), jt.apply_updates, params, noise),
                       trajectory(b(), optax.apply_updates, params, noise)[0])
                for name, a, b in ROWS}

    return run_all(params, noise)


@pytest.mark.parametrize("name", [r[0] for r in ROWS])
def test_fp32_equals_optax_at_every_step(name):
    (ours, _), theirs = _parity("float32")[name]
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        assert np.all(np.isfinite(a)), name
        assert not np.allclose(a[-1], a[0]), f"{name}: a leaf never moved"
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", [r[0] for r in ROWS])
def test_bf16_params_stay_bf16_and_close_to_optax(name):
    (ours, state), theirs = _parity("bfloat16")[name]
    (exact, _), _ = _parity("float32")[name]
    theirs_state = dict((r[0], r) for r in ROWS)[name][2]().init(make_params(0, jnp.bfloat16))
    assert _layout(state) == _layout(theirs_state)
    for a, b, r in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), jax.tree.leaves(exact)):
        assert a.dtype == jnp.bfloat16
        a, b, r = (np.asarray(x, np.float32) for x in (a, b, r))
        assert np.all(np.isfinite(a))
        assert np.max(np.abs(a - r)) <= np.max(np.abs(b - r)) + 0.02 * 2.5


def test_state_bytes_no_larger_than_optax():
    # Adafactor's point is memory: a factored 2-D and 4-D leaf keep rows and columns.
    params = {"w": jnp.zeros((256, 384)), "conv": jnp.zeros((3, 3, 128, 256))}
    nbytes = lambda s: sum(x.nbytes for x in jax.tree.leaves(s))
    ours = nbytes(adafactor(1e-2).init(params))
    theirs = nbytes(optax.adafactor(1e-2).init(params))
    assert ours <= theirs
    assert ours < sum(x.nbytes for x in jax.tree.leaves(params)) / 50


def test_jit_as_argument_vmap_eval_shape_donation():
    chex.clear_trace_counter()  # chex counts traces by function name, across files
    params = make_params()
    grads = grad_fn(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1), compiler_options=FAST_COMPILE)
    @chex.assert_max_traces(n=1)
    def step(params, state, tx):
        u, state = tx.update(grads, state, params)
        return jt.apply_updates(params, u), state

    outs = []
    for lr in (0.05, 0.02):
        tx = adafactor(lr, min_dim_size_to_factor=2)
        p, s = jax.tree.map(jnp.copy, params), tx.init(params)
        p, s = step(p, s, tx)
        p, s = step(p, s, tx)  # donated buffers: the second call gets the new ones
        outs.append(p)
    # vmap over a stacked learning rate equals the separate runs.
    lrs = jnp.array([0.05, 0.02])
    stacked = jax.vmap(lambda lr: _two_steps(adafactor(lr, min_dim_size_to_factor=2),
                                             params, grads))(lrs)
    for i in range(2):
        jax.tree.map(lambda x, y, i=i: np.testing.assert_allclose(x[i], y, rtol=1e-6, atol=1e-7),
                     stacked, outs[i])
    shapes = jax.eval_shape(adafactor(0.1, momentum=0.9).init, params)
    assert isinstance(shapes[0], FactoredState)
    assert _layout(shapes) == _layout(optax.adafactor(0.1, momentum=0.9).init(params))


def _two_steps(tx, params, grads):
    s = tx.init(params)
    for _ in range(2):
        u, s = tx.update(grads, s, params)
        params = jt.apply_updates(params, u)
    return params


@pytest.mark.parametrize("kwargs, match", [
    ({"learning_rate": -0.1}, "learning_rate"),
    ({"decay_rate": -0.5}, "decay_rate"),
    ({"decay_offset": 1.5}, "step_offset"),
    ({"eps": -1.0}, "epsilon"),
    ({"min_dim_size_to_factor": -1}, "min_dim_size_to_factor"),
    ({"min_dim_size_to_factor": 2.5}, "min_dim_size_to_factor"),
    ({"clipping_threshold": 0.0}, "clipping_threshold"),
    ({"momentum": 1.0}, "momentum"),
    ({"weight_decay_rate": -1e-3}, "weight_decay_rate"),
])
def test_bad_input_is_refused(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        adafactor(**kwargs)


def test_bad_block_input_is_refused():
    with pytest.raises(ValueError, match="scale_by_factored_rms: epsilon"):
        scale_by_factored_rms(epsilon=-1.0)
    with pytest.raises(TypeError, match="decay_rate_fn"):
        scale_by_factored_rms(decay_rate_fn=0.8)
    with pytest.raises(TypeError, match="floating-point"):
        adafactor(1e-2).init({"w": jnp.zeros((2, 2), jnp.int32)})
    tx = scale_by_factored_rms(min_dim_size_to_factor=2)
    state = tx.init({"w": jnp.zeros((4, 3))})
    with pytest.raises(ValueError, match="v_row"):
        tx.update({"w": jnp.zeros((5, 3))}, state)
