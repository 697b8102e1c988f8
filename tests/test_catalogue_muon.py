"""The Newton-Schulz family against optax: signatures, states, numbers, transformations.

muon and scale_by_muon are compared with optax 0.2.8 (``optax.contrib``) on the
shared tree. Each step runs five matrix iterations whose products XLA may associate
differently in the two programs (optax scans a multi-row coefficient schedule, jtricks
unrolls it), so fp32 trajectories agree to rounding: the rows of ``ROWS`` meet the
table's rtol 1e-5 / atol 1e-6; ``EXTRA_ROWS``'s AOL row (AOL rescaling with the five-row Dion
schedule, where the reassociation grows to ~3e-6 over 60 steps) are held to
rtol 1e-4 / atol 2e-5. Both tolerances still catch a wrong coefficient: a 0.1% change
of one Newton-Schulz coefficient fails them (checked below).
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
from cases_muon import EXTRA_ROWS, JT_SPECS, ROWS
from conftest import FAST_COMPILE, grad_fn, make_params, noise_sequence, trajectory
from flax import serialization

import jtricks as jt
from jtricks.optimizers.muon import muon
from jtricks.transforms.muon import MuonDimensionNumbers, MuonState, scale_by_muon

STEPS = 60
TIGHT = {"rtol": 1e-5, "atol": 1e-6}
# AOL's extra normalisation amplifies rounding through the Newton-Schulz steps: with the
# suite's compile options (tests/conftest.py) a few of 720 entries differ by ~3e-5.
LOOSE = {"rtol": 1e-4, "atol": 5e-5}
TWINS = [(muon, optax.contrib.muon), (scale_by_muon, optax.contrib.scale_by_muon)]
# Compile time is the budget here (every row unrolls its iterations for every leaf):
# the restore and bf16 checks run on the rows that differ structurally; the table in
# test_parity_optax.py runs bf16 on every row of ROWS.
RESTORED = {"muon_plain_decay", "muon_tensors_schedule", "scale_by_muon"}
BF16 = [r for r in ROWS if r[0] in {"muon", "muon_schatten_rms_mask", "muon_tensors_schedule"}]
PERTURBED = (3.4445 * 1.001, -4.7750, 2.0315)


@pytest.mark.parametrize("ours, theirs", TWINS, ids=[t.__name__ for _, t in TWINS])
def test_signature_is_optax(ours, theirs):
    mine = list(inspect.signature(ours).parameters.values())
    ref = list(inspect.signature(theirs).parameters.values())
    assert [p.name for p in mine[:len(ref)]] == [p.name for p in ref]
    for a, b in zip(mine, ref):
        assert (a.kind, a.default) == (b.kind, b.default), a.name
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in mine[len(ref):])


def test_dimension_numbers_are_optax():
    assert MuonDimensionNumbers._fields == optax.contrib.MuonDimensionNumbers._fields
    assert MuonDimensionNumbers() == tuple(optax.contrib.MuonDimensionNumbers())


def _layout(state):
    return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)),
                        serialization.to_state_dict(state))


def _scan(tx, apply, params, state, noise):
    def body(carry, n):
        p, s = carry
        u, s = tx.update(grad_fn(p, n), s, p)
        return (apply(p, u), s), None
    return jax.lax.scan(body, (params, state), noise)


@functools.cache
def _restored():
    """Each row: an optax state three steps in, restored into jtricks through its state
    dict, continued by both libraries (one program for every row)."""
    params = make_params()
    noise = noise_sequence(params, 6)
    first = jax.tree.map(lambda n: n[:3], noise)
    rest = jax.tree.map(lambda n: n[3:], noise)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run(params, first, rest):
        out = {}
        for name, ours, theirs in ROWS:
            if name not in RESTORED:
                continue
            tx, ref = ours(), theirs()
            (p, s), _ = _scan(ref, optax.apply_updates, params, ref.init(params), first)
            restored = serialization.from_state_dict(tx.init(params),
                                                     serialization.to_state_dict(s))
            (a, _), _ = _scan(tx, jt.apply_updates, p, restored, rest)
            (b, _), _ = _scan(ref, optax.apply_updates, p, s, rest)
            out[name] = a, b
        return out

    return run(params, first, rest)


@pytest.mark.parametrize("row", ROWS + EXTRA_ROWS, ids=[r[0] for r in ROWS + EXTRA_ROWS])
def test_state_is_optax(row):
    name, ours, theirs = row
    params = make_params()
    assert _layout(ours().init(params)) == _layout(theirs().init(params))
    if name in _restored():
        a, b = _restored()[name]
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **TIGHT), a, b)


@functools.cache
def _parity(dtype_name):
    params = make_params(0, jnp.dtype(dtype_name))
    noise = noise_sequence(params, STEPS)
    rows = ROWS + EXTRA_ROWS if dtype_name == "float32" else BF16
    perturbed = [("perturbed", lambda: muon(0.02, PERTURBED),
                  lambda: optax.contrib.muon(0.02))] if dtype_name == "float32" else []

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run_all(params, noise):
        return {name: (trajectory(a(), jt.apply_updates, params, noise),
                       trajectory(b(), optax.apply_updates, params, noise)[0])
                for name, a, b in rows + perturbed}

    return run_all(params, noise)


def _close(ours, theirs, tol):
    return all(np.allclose(a, b, **tol) for a, b in
               zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)))


@pytest.mark.parametrize("name", [r[0] for r in ROWS + EXTRA_ROWS])
def test_fp32_equals_optax_at_every_step(name):
    (ours, _), theirs = _parity("float32")[name]
    tol = LOOSE if "aol" in name else TIGHT
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        assert np.all(np.isfinite(a)), name
        assert not np.allclose(a[-1], a[0]), f"{name}: a leaf never moved"
        np.testing.assert_allclose(a, b, **tol, err_msg=name)


def test_tolerances_catch_a_wrong_coefficient():
    (ours, _), theirs = _parity("float32")["perturbed"]
    assert not _close(ours, theirs, TIGHT)
    assert not _close(ours, theirs, LOOSE)


@pytest.mark.parametrize("name", [r[0] for r in BF16])
def test_bf16_params_stay_bf16_and_close_to_optax(name):
    (ours, state), theirs = _parity("bfloat16")[name]
    (exact, _), _ = _parity("float32")[name]
    ref = dict((r[0], r) for r in ROWS)[name][2]
    assert _layout(state) == _layout(ref().init(make_params(0, jnp.bfloat16)))
    for a, b, r in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), jax.tree.leaves(exact)):
        assert a.dtype == jnp.bfloat16
        a, b, r = (np.asarray(x, np.float32) for x in (a, b, r))
        assert np.all(np.isfinite(a))
        assert np.max(np.abs(a - r)) <= np.max(np.abs(b - r)) + 0.02 * 2.5


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
    for lr in (0.02, 0.01):
        tx = muon(lr, muon_weight_dimension_numbers=JT_SPECS)
        p, s = jax.tree.map(jnp.copy, params), tx.init(params)
        p, s = step(p, s, tx)
        p, s = step(p, s, tx)  # donated buffers: the second call gets the new ones
        outs.append(p)
    lrs = jnp.array([0.02, 0.01])
    stacked = jax.vmap(lambda lr: _two_steps(muon(lr, muon_weight_dimension_numbers=JT_SPECS),
                                             params, grads))(lrs)
    for i in range(2):
        jax.tree.map(lambda x, y, i=i: np.testing.assert_allclose(x[i], y, rtol=1e-5, atol=1e-6),
                     stacked, outs[i])
    shapes = jax.eval_shape(muon(0.02).init, params)
    assert isinstance(shapes.inner_states["muon"].inner_state[0], MuonState)
    assert _layout(shapes) == _layout(optax.contrib.muon(0.02).init(params))


def _two_steps(tx, params, grads):
    s = tx.init(params)
    for _ in range(2):
        u, s = tx.update(grads, s, params)
        params = jt.apply_updates(params, u)
    return params


@pytest.mark.parametrize("kwargs, match", [
    ({"learning_rate": -0.1}, "learning_rate"),
    ({"beta": 1.0}, "beta"),
    ({"eps": -1e-8}, "eps"),
    ({"ns_steps": -1}, "ns_steps"),
    ({"ns_steps": 2.5}, "ns_steps"),
    ({"ns_coeffs": (1.0, 2.0)}, "ns_coeffs"),
    ({"ns_coeffs": "nope"}, "ns_coeffs"),
    ({"ns_coeffs": "dion", "ns_steps": 3}, "ns_coeffs"),
    ({"ns_coeffs": (1.0, float("nan"), 2.0)}, "ns_coeffs"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"preconditioning": "svd"}, "preconditioning"),
    ({"adam_b1": 1.5}, "adam_b1"),
    ({"adam_b2": -0.1}, "adam_b2"),
    ({"adam_eps_root": -1.0}, "adam_eps_root"),
    ({"adam_weight_decay": -1.0}, "adam_weight_decay"),
    ({"adam_learning_rate": -1.0}, "adam_learning_rate"),
    ({"consistent_rms": 0.0}, "consistent_rms"),
])
def test_bad_input_is_refused(kwargs, match):
    kwargs = {"learning_rate": 0.02, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        muon(**kwargs)


def test_bad_dimension_numbers_are_refused():
    tx = scale_by_muon()
    vec = {"b": jnp.zeros((3,))}
    with pytest.raises(ValueError, match="matrices"):
        tx.update(vec, tx.init(vec))
    tx = scale_by_muon(weight_dimension_numbers=MuonDimensionNumbers(0, -2))
    mat = {"w": jnp.zeros((3, 4))}
    with pytest.raises(ValueError, match="overlap"):
        tx.update(mat, tx.init(mat))
