"""jt.MultiSteps is optax's MultiSteps (constructor, state, has_updated, skip rules,
a schedule of k) with the inner hyperparameters as data; jt.accumulate is its
integer-only spelling.

Every row runs 40 steps beside optax.MultiSteps around sgd or adam, all in one
compiled program, on gradients with non-finite and huge steps for the skip rules.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import FAST_COMPILE, grad_fn, make_params, noise_sequence
from flax import serialization

import jtricks as jt
from jtricks.transforms import steps
from jtricks.transforms.wrappers import MultiSteps, MultiStepsState, accumulate

STEPS = 40
PARAMS = make_params()
NAN_STEPS, HUGE_STEPS = (5, 6, 23), (11, 12, 31)


def _noise(dirty):
    noise = jax.tree.map(np.array, noise_sequence(PARAMS, STEPS))
    if dirty:  # NaN/inf at some steps, a 100x gradient at others (beyond the threshold)
        leaf = noise["dense"]["w"]
        for i, step in enumerate(NAN_STEPS):
            leaf[step, 0, 0] = np.nan if i % 2 == 0 else np.inf
        noise = jax.tree.map(lambda n: n * np.where(
            np.isin(np.arange(STEPS), HUGE_STEPS), 100.0, 1.0).reshape(-1, *[1] * (n.ndim - 1))
            .astype(np.float32), noise)
    return jax.tree.map(jnp.asarray, noise)


def k_by_step(gradient_step):  # a plain function: 1, 1, then 2 twice, then 3
    return jnp.where(gradient_step < 2, 1, jnp.where(gradient_step < 4, 2, 3))


MAX_SQ = 1e4  # about 30x the squared norm of an ordinary gradient of the test tree
ROWS = [  # (name, jtricks, optax, dirty gradients)
    ("adam_schedule_skip_not_finite",
     MultiSteps(jt.adam(0.05), k_by_step, should_skip_update_fn=steps.skip_not_finite),
     optax.MultiSteps(optax.adam(0.05), k_by_step,
                      should_skip_update_fn=optax.skip_not_finite), True),
    ("sgd_jt_schedule_skip_large",
     MultiSteps(jt.sgd(0.05, momentum=0.9), jt.schedules.piecewise_constant(1, {3: 2, 6: 1.5}),
                should_skip_update_fn=functools.partial(steps.skip_large_updates,
                                                        max_squared_norm=MAX_SQ)),
     optax.MultiSteps(optax.sgd(0.05, momentum=0.9),
                      lambda s: optax.piecewise_constant_schedule(1, {3: 2, 6: 1.5})(s)
                      .astype(jnp.int32),
                      should_skip_update_fn=functools.partial(optax.skip_large_updates,
                                                              max_squared_norm=MAX_SQ)), True),
    ("adam_k2_threshold_as_data",
     MultiSteps(jt.adam(0.05), 2, should_skip_update_fn=jax.tree_util.Partial(
         steps.skip_large_updates, max_squared_norm=MAX_SQ)),
     optax.MultiSteps(optax.adam(0.05), 2, should_skip_update_fn=functools.partial(
         optax.skip_large_updates, max_squared_norm=MAX_SQ)), True),
    ("sgd_sum_k3", MultiSteps(jt.sgd(0.02, momentum=0.5), 3, use_grad_mean=False),
     optax.MultiSteps(optax.sgd(0.02, momentum=0.5), 3, use_grad_mean=False), False),
    ("accumulate_adam", accumulate(jt.adam(0.05), 4), optax.MultiSteps(optax.adam(0.05), 4),
     False),
]


def _run(tx, apply, noise):
    """Params, has_updated after each step, and the final state."""
    def body(carry, n):
        p, s = carry
        u, s = tx.update(grad_fn(p, n), s, p)
        p = apply(p, u)
        return (p, s), (p, tx.has_updated(s))

    (_, state), (traj, updated) = jax.lax.scan(body, (PARAMS, tx.init(PARAMS)), noise)
    return traj, updated, state


@functools.cache
def _results():
    clean, dirty = _noise(False), _noise(True)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run_all(clean, dirty):
        return {name: (_run(mine, jt.apply_updates, dirty if d else clean),
                       _run(twin, optax.apply_updates, dirty if d else clean))
                for name, mine, twin, d in ROWS}

    return jax.device_get(run_all(clean, dirty))


@pytest.mark.parametrize("name", [r[0] for r in ROWS])
def test_equals_optax_multisteps_every_step(name):
    (traj, updated, state), (want, want_updated, want_state) = _results()[name]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 traj, want)
    np.testing.assert_array_equal(updated, want_updated)
    # Not vacuous: the run moved, stayed finite, and updated several times.
    w = traj["dense"]["w"]
    assert np.all(np.isfinite(w)) and not np.allclose(w[-1], PARAMS["dense"]["w"])
    assert 5 <= int(state.gradient_step) == int(want_state.gradient_step) < STEPS
    assert int(state.mini_step) == int(want_state.mini_step)
    ours_dict, theirs_dict = (serialization.to_state_dict(s) for s in (state, want_state))
    assert jax.tree.structure(ours_dict) == jax.tree.structure(theirs_dict)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 ours_dict, theirs_dict)
    dtypes = [jax.tree.map(lambda x: np.asarray(x).dtype, d) for d in (ours_dict, theirs_dict)]
    assert dtypes[0] == dtypes[1]


def test_skip_rules_dropped_the_bad_steps():
    name = "adam_schedule_skip_not_finite"
    state = _results()[name][0][2]
    assert int(state.skip_state["num_not_finite"]) == 0  # the last step was clean
    # Windows of 1, 1, 2, 2, then 3 over 40 - 3 accepted gradients.
    assert int(state.gradient_step) == 4 + (STEPS - len(NAN_STEPS) - 6) // 3
    for name in ("sgd_jt_schedule_skip_large", "adam_k2_threshold_as_data"):
        state = _results()[name][0][2]
        assert float(state.skip_state["norm_squared"]) < MAX_SQ
    k2 = _results()["adam_k2_threshold_as_data"][0][2]
    assert int(k2.gradient_step) == (STEPS - len(NAN_STEPS) - len(HUGE_STEPS)) // 2


def test_constructor_signature_and_api_are_optaxs():
    mine = list(inspect.signature(MultiSteps).parameters.values())
    theirs = list(inspect.signature(optax.MultiSteps).parameters.values())
    assert [(p.name, p.kind, p.default) for p in mine] == [
        (p.name, p.kind, p.default) for p in theirs]
    assert MultiStepsState._fields == optax.MultiStepsState._fields
    tx = MultiSteps(jt.sgd(0.1), 2)
    assert tx.gradient_transformation() is tx and tx.inner_opt is tx.opt
    init, update = tx.gradient_transformation()  # optax.chain unpacks it so
    assert init == tx.init and update == tx.update
    chained = optax.chain(tx.gradient_transformation(), optax.scale(1.0))
    params = {"w": jnp.ones(3)}
    state, update = chained.init(params), jax.jit(chained.update)
    for i in range(4):
        _, state = update(params, state, params)
        assert bool(tx.has_updated(state[0])) == (i % 2 == 1)


def test_hyperparameters_and_k_are_data_one_compile():
    traces = []

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def final(tx, noise):
        traces.append(1)
        return _run(tx, jt.apply_updates, noise)[0]["dense"]["w"][-1]

    noise = jax.tree.map(lambda n: n[:8], _noise(False))
    runs = [final(MultiSteps(jt.adam(lr), k, should_skip_update_fn=jax.tree_util.Partial(
        steps.skip_large_updates, max_squared_norm=t)), noise)
        for lr, k, t in [(0.05, 2, 1e4), (0.01, 3, 1e4), (0.05, 2, 1e-3)]]
    assert len(traces) == 1
    assert not np.allclose(runs[0], runs[1])
    np.testing.assert_array_equal(runs[2], PARAMS["dense"]["w"])  # everything skipped
    swept = jax.jit(jax.vmap(lambda lr, k: final.__wrapped__(
        MultiSteps(jt.adam(lr), k, should_skip_update_fn=jax.tree_util.Partial(
            steps.skip_large_updates, max_squared_norm=1e4)), noise)),
        compiler_options=FAST_COMPILE)(jnp.asarray([0.05, 0.01]), jnp.asarray([2, 3]))
    # (adam divides by sqrt(nu) of small numbers: a vmapped program's rounding shows)
    np.testing.assert_allclose(swept, jnp.stack(runs[:2]), rtol=1e-4, atol=1e-5)
    current = jt.hyperparams.current(MultiSteps(jt.adam(0.05), k_by_step),
                                     MultiSteps(jt.adam(0.05), k_by_step).init(PARAMS))
    assert {"opt/0/b1", "every_k_schedule"} <= set(current)
    assert int(current["every_k_schedule"]) == 1


def test_bf16_and_complex_params():
    tx = MultiSteps(jt.adam(0.1), 2)
    bf16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
    state = jax.eval_shape(tx.init, bf16)
    twin = jax.eval_shape(optax.MultiSteps(optax.adam(0.1), 2).init, bf16)
    assert jax.tree.map(lambda x: x.dtype, serialization.to_state_dict(state)) == \
        jax.tree.map(lambda x: x.dtype, serialization.to_state_dict(twin))
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(state.acc_grads))
    z = {"z": jnp.asarray([0.3 - 0.4j])}
    tx = MultiSteps(jt.sgd(1.0), 2)
    s = tx.init(z)
    assert s.acc_grads["z"].dtype == jnp.complex64  # optax's fp32 would drop the imaginary
    u, s = tx.update(z, s)
    u, s = tx.update(z, s)
    np.testing.assert_allclose(u["z"], -z["z"], rtol=1e-6)


BAD = [
    (lambda: MultiSteps(jt.adam(0.1), 0), ValueError,
     r"MultiSteps: every_k_schedule must be an integer >= 1, got 0"),
    (lambda: MultiSteps(jt.adam(0.1), 2.5), ValueError, r"every_k_schedule must be an integer"),
    (lambda: MultiSteps("adam", 2), TypeError, r"MultiSteps: expected a gradient transformation"),
    (lambda: MultiSteps(jt.adam(0.1), 2, should_skip_update_fn=3), TypeError,
     r"MultiSteps: should_skip_update_fn must be None or a function"),
    (lambda: accumulate(jt.adam(0.1), k_by_step), TypeError,
     r"accumulate: every_k must be an integer >= 1, got the function .*jt.MultiSteps"),
    (lambda: MultiSteps(jt.adam(0.1), 2, should_skip_update_fn=lambda u, s, p: (
        jnp.zeros(2, bool), ())).update(PARAMS, MultiSteps(jt.adam(0.1), 2).init(PARAMS)),
     ValueError, r"should_skip_update_fn must return a boolean scalar"),
]


@pytest.mark.parametrize("make, error, match", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_input_raises_clear_error(make, error, match):
    with pytest.raises(error, match=match):
        make()
