"""Parity with optax: every transform with an optax twin gives optax's numbers.

Each row of the table in conftest.py runs for 100 steps on the shared random tree
(nested dict and list, a scalar, 3-D and 4-D tensors) with a noisy gradient that
depends on the parameters, and the parameters are compared after every step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from conftest import CASES, FAST_COMPILE, make_params, noise_sequence, trajectory

import jtricks as jt

STEPS = 100


@functools.cache
def results(dtype_name: str):
    """Every row of the table, both libraries, in ONE compiled program per dtype
    (many small compilations cost several times more than one larger one)."""
    params = make_params(0, jnp.dtype(dtype_name))
    noise = noise_sequence(params, STEPS)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run_all(params, noise):
        out = {}
        for name, jt_factory, optax_factory in CASES:
            ours, state = trajectory(jt_factory(), jt.apply_updates, params, noise)
            theirs, _ = trajectory(optax_factory(), optax.apply_updates, params, noise)
            out[name] = (ours, theirs, state)
        return out

    return params, run_all(params, noise)


def run_both(tx_case, dtype):
    params, out = results(jnp.dtype(dtype).name)
    return (params, *out[tx_case[0]])


def _paths(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [jax.tree_util.keystr(p) for p, _ in flat], [x for _, x in flat]


def test_fp32_equals_optax_at_every_step(tx_case):
    _, ours, theirs, _ = run_both(tx_case, jnp.float32)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for path, a, b in zip(*_paths(ours), jax.tree.leaves(theirs)):
        assert a.shape[0] == STEPS and a.dtype == jnp.float32
        # The trajectory must move, or the comparison would prove nothing.
        assert not np.allclose(a[-1], a[0]), f"{tx_case[0]}: {path} never moved"
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{tx_case[0]} at {path}")


def test_bf16_params_stay_bf16_and_close_to_optax(tx_case):
    params, ours, theirs, state = run_both(tx_case, jnp.bfloat16)
    for leaf in jax.tree.leaves(ours):
        assert leaf.dtype == jnp.bfloat16
    # State dtypes are deliberate: what init chose (the params' dtype unless an
    # accumulator dtype was asked for), never promoted along the way.
    initial = jax.eval_shape(tx_case[1]().init, params)
    assert jax.tree.map(lambda x: x.dtype, state) == jax.tree.map(lambda x: x.dtype, initial)
    # ... and those are optax's for the same bf16 params, leaf for leaf (bf16 moments
    # unless an accumulator dtype was asked for; fp32 where optax keeps fp32).
    optax_initial = jax.eval_shape(tx_case[2]().init, params)
    assert [x.dtype for x in jax.tree.leaves(state)] == [
        x.dtype for x in jax.tree.leaves(optax_initial)]
    # bf16 keeps 8 bits of mantissa and the two libraries round in different orders
    # (jtricks accumulates norms and scale factors in fp32), and over 100 steps the
    # rounding of bf16 params compounds. So judge both against the fp32 trajectory:
    # jtricks in bf16 must be no further from it than optax in bf16, give or take 2%
    # of the parameters' scale.
    _, exact, _, _ = run_both(tx_case, jnp.float32)
    scale = max(float(jnp.max(jnp.abs(p.astype(jnp.float32)))) for p in jax.tree.leaves(params))
    for path, a, b, r in zip(*_paths(ours), jax.tree.leaves(theirs), jax.tree.leaves(exact)):
        a, b, r = (np.asarray(x, np.float32) for x in (a, b, r))
        assert np.all(np.isfinite(a)), f"{tx_case[0]} at {path}"
        ours_err, optax_err = np.max(np.abs(a - r)), np.max(np.abs(b - r))
        assert ours_err <= optax_err + 0.02 * scale, (
            f"{tx_case[0]} {path}: bf16 error against fp32 {ours_err:.4g}, optax's {optax_err:.4g}")


def test_centered_debiased_rmsprop_equals_optax():
    # Kept out of the table: debiased and centered, the variance starts at exactly 0
    # and stays a small difference of large numbers, so the table's halved-
    # hyperparameter and bf16 runs would compare rounding noise (optax even reaches
    # NaN in bf16, as it does not clamp the variance at 0). A long memory keeps fp32
    # well-conditioned.
    params = make_params(0)
    noise = noise_sequence(params, STEPS)
    kwargs = {"decay": 0.9, "eps": 1e-3, "centered": True, "bias_correction": True}

    @jax.jit
    def both(params, noise):
        ours, _ = trajectory(jt.rmsprop(0.01, **kwargs), jt.apply_updates, params, noise)
        theirs, _ = trajectory(optax.rmsprop(0.01, **kwargs), optax.apply_updates, params,
                               noise)
        return ours, theirs

    ours, theirs = both(params, noise)
    for path, a, b in zip(*_paths(ours), jax.tree.leaves(theirs)):
        assert not np.allclose(a[-1], a[0]), f"{path} never moved"
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=path)
