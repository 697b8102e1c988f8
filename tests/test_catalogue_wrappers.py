"""optax's wrappers and small transforms against optax 0.2.8: signatures, states,
numbers, JAX transforms, and each wrapper's own semantics.

The rows of ``cases_wrappers.ROWS`` (a wrapper around jtricks' sgd/adam against the
same wrapper around optax's) go through the driver of test_catalogue_adam_variants.py:
fp32 parity at every step of 100, optax's state layout at init and after, optax's
state restored into jtricks continuing with optax's numbers, bf16 kept, ``eval_shape``
of ``init``, a donated step, one compilation for two rates and ``vmap`` over rates.
The wrappers that do not fit the table (monitor, lookahead, freezing, the MultiSteps
skip rules, the per-example utilities) are checked against optax below.
"""

from __future__ import annotations

import functools

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from cases_wrappers import ROWS, every_other
from catalogue import (
    check_fp32_parity,
    family_tests,
    paths,
    signature_rows,
    state_layout,
)
from conftest import FAST_COMPILE, grad_fn, make_params, noise_sequence, trajectory

from jtricks.base import apply_updates, chain
from jtricks.optimizers.adaptive import adam
from jtricks.optimizers.sgd import sgd
from jtricks.transforms import conditional, constraints, freezing, lookahead, monitoring, steps
from jtricks.transforms.clipping import clip_by_global_norm

IDS = [name for name, _, _ in ROWS]
SUBSET = {"apply_if_finite_adam", "conditionally_mask_sgd", "zero_nans_adam",
          "apply_every_sgd", "named_chain_adam"}
TOL = dict(rtol=1e-5, atol=1e-6)


MODULES = (monitoring, conditional, constraints, steps, lookahead, freezing)
PAIRS = [(getattr(m, n), getattr(optax, n)) for m in MODULES for n in m.__all__
         if n[0].islower() and hasattr(optax, n)]


def test_every_public_function_has_an_optax_twin():
    names = {f.__name__ for f, _ in PAIRS}
    assert len(names) == 19, sorted(names)


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_signature_is_optax(ours, theirs):
    a, b = signature_rows(ours, theirs)
    assert a == b


# --- the table ----------------------------------------------------------------------


LR_FACTORIES = {
    "apply_if_finite": lambda lr: conditional.apply_if_finite(adam(lr, b1=0.8), 2),
    "conditionally_mask": lambda lr: conditional.conditionally_mask(sgd(lr), every_other),
    "named_chain": lambda lr: freezing.named_chain(("clip", clip_by_global_norm(3.0)),
                                                   ("sgd", sgd(lr, momentum=0.5))),
}

globals().update(family_tests(ROWS, SUBSET, LR_FACTORIES))


# --- wrappers outside the table -----------------------------------------------------

def _norm(u):
    return optax.tree.norm(u)


def _clipped(u):
    return optax.tree.norm(u) > 0.4


def _monitored(lib):
    if lib == "jt":
        return chain(sgd(0.05, momentum=0.8),
                     monitoring.monitor({"norm": _norm,
                                         "clipped": monitoring.measure_with_ema(_clipped, 0.9),
                                         "ema_norm": monitoring.measure_with_ema(
                                             _norm, 0.8, debias=False)}),
                     clip_by_global_norm(4.0))
    return optax.chain(optax.sgd(0.05, momentum=0.8),
                       optax.monitor({"norm": _norm,
                                      "clipped": optax.measure_with_ema(_clipped, 0.9),
                                      "ema_norm": optax.measure_with_ema(
                                          _norm, 0.8, debias=False)}),
                       optax.clip_by_global_norm(4.0))


def _loop(tx, apply, params, state, noise, n):
    step = jax.jit(lambda p, s, e: (lambda u, s: (apply(p, u), s))(
        *tx.update(grad_fn(p, e), s, p)), compiler_options=FAST_COMPILE)
    out = []
    for k in range(n):
        params, state = step(params, state, jax.tree.map(lambda x, k=k: x[k], noise))
        out.append((params, state))
    return out


def test_monitor_scans_matches_optax_and_restores_its_state():
    params = make_params(0)
    noise = noise_sequence(params, 6)
    ours, theirs = _monitored("jt"), _monitored("optax")
    # init already holds every measurement, so the state is a valid scan carry.
    traj, final = jax.jit(lambda p, n: trajectory(ours, apply_updates, p, n),
                          compiler_options=FAST_COMPILE)(params, noise)
    expected = _loop(theirs, optax.apply_updates, params, theirs.init(params), noise, 6)
    assert theirs.init(params)[1].measurements == {}  # optax's: empty until an update
    for path, a, b in zip(*paths((jax.tree.map(lambda x: x[-1], traj), final)),
                          jax.tree.leaves(expected[-1])):
        np.testing.assert_allclose(a, b, **TOL, err_msg=path)
    assert 0.0 < float(final[1].measurements["clipped"]) <= 1.0
    # A checkpoint of optax's state (after its first update) restores and continues.
    p1, s1 = expected[0]
    restored = flax.serialization.from_state_dict(ours.init(params),
                                                  flax.serialization.to_state_dict(s1))
    assert state_layout(restored) == state_layout(s1)
    g = grad_fn(p1, jax.tree.map(lambda x: x[1], noise))
    for a, b in zip(jax.tree.leaves(ours.update(g, restored, p1)),
                    jax.tree.leaves(theirs.update(g, s1, p1))):
        np.testing.assert_allclose(a, b, **TOL)


def test_monitor_init_fills_measurements_with_their_shapes():
    params = make_params(0)
    tx = monitoring.monitor({"norm": _norm, "tree": lambda u: u,
                             "ema": monitoring.measure_with_ema(_norm, 0.9)})
    state = tx.init(params)
    assert state.measurements["norm"] == pytest.approx(float(optax.tree.norm(params)))
    assert float(state.measurements["ema"]) == 0.0
    assert jax.tree.structure(state.measurements["tree"]) == jax.tree.structure(params)
    u, new = tx.update(params, state)
    assert u is params and jax.tree.structure(new) == jax.tree.structure(state)


def test_snapshot_state_is_optax_at_init():
    params = make_params(0)
    ours = monitoring.snapshot("n", _norm).init(params)
    theirs = optax.snapshot("n", _norm).init(params)
    assert type(ours).__name__ == type(theirs).__name__ == "SnapshotState"
    assert state_layout(ours) == state_layout(theirs)


def test_measure_with_ema_of_a_bool_keeps_a_float_average():
    params = make_params(0)
    ours, theirs = (monitoring.measure_with_ema(_clipped, 0.5),
                    optax.measure_with_ema(_clipped, 0.5))
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    assert s_ours[1].ema.dtype == jnp.float32  # optax starts it as a bool
    big = jax.tree.map(lambda p: 10 * p, params)
    for g in (big, params, big):
        a, s_ours = ours.update(g, s_ours)
        b, s_theirs = theirs.update(g, s_theirs)
        np.testing.assert_allclose(a, b, **TOL)
    assert state_layout(s_ours) == state_layout(s_theirs)


def _lookahead_run(tx, apply, params, noise, container=lookahead.LookaheadParams):
    params = container(*params)

    def body(carry, n):
        p, s = carry
        u, s = tx.update(grad_fn(p.fast, n), s, p)
        p = apply(p, u)
        return (p, s), p

    return jax.lax.scan(body, (params, tx.init(params)), noise)


LOOKAHEADS = [
    ("adam_reset", lambda: lookahead.lookahead(adam(0.02, b1=0.8), 4, 0.5, reset_state=True),
     lambda: optax.lookahead(optax.adam(0.02, b1=0.8), 4, 0.5, reset_state=True)),
    ("sgd", lambda: lookahead.lookahead(sgd(0.05, momentum=0.7), 3, 0.3),
     lambda: optax.lookahead(optax.sgd(0.05, momentum=0.7), 3, 0.3)),
]


@functools.cache
def lookahead_results():
    params = lookahead.LookaheadParams.init_synced(make_params(0))
    noise = noise_sequence(params.fast, 100)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run(params, noise):
        return {name: (_lookahead_run(ours(), apply_updates, params, noise),
                       _lookahead_run(theirs(), optax.apply_updates, params, noise,
                                      optax.LookaheadParams))
                for name, ours, theirs in LOOKAHEADS}

    return params, run(params, noise)


@pytest.mark.parametrize("row", LOOKAHEADS, ids=[r[0] for r in LOOKAHEADS])
def test_lookahead_equals_optax(row):
    params, out = lookahead_results()
    ((_, state), traj), ((_, theirs_state), theirs_traj) = out[row[0]]
    assert isinstance(traj, lookahead.LookaheadParams)
    check_fp32_parity(row[0], traj.fast, theirs_traj.fast)
    check_fp32_parity(row[0], traj.slow, theirs_traj.slow)
    assert type(state).__name__ == "LookaheadState"
    assert state_layout(state) == state_layout(theirs_state)
    assert state_layout(row[1]().init(params)) == state_layout(row[2]().init(params))
    restored = flax.serialization.from_state_dict(row[1]().init(params),
                                                  flax.serialization.to_state_dict(theirs_state))
    assert jax.tree.structure(restored) == jax.tree.structure(state)


def test_lookahead_params_are_a_container_and_sync_moves_slow_weights():
    # As optax's tests: a LookaheadParams round-trips through tree ops and the slow
    # weights change only on a synchronisation step.
    p = lookahead.LookaheadParams.init_synced({"w": jnp.ones(3)})
    assert p.fast is p.slow and jax.tree.structure(p).num_leaves == 2
    tx = lookahead.lookahead(sgd(1.0), sync_period=2, slow_step_size=0.5)
    state = tx.init(p)
    g = {"w": jnp.ones(3)}
    # step 1: fast 1 - 1 = 0, slow 1; step 2 syncs: slow 1 + 0.5 * (-1 - 1) = 0 = fast.
    for fast, slow in [(0.0, 1.0), (0.0, 0.0)]:
        u, state = tx.update(g, state, p)
        p = apply_updates(p, u)
        np.testing.assert_allclose(p.fast["w"], fast, atol=1e-6)
        np.testing.assert_allclose(p.slow["w"], slow, atol=1e-6)
    assert int(state.steps_since_sync) == 0
    # init also accepts the plain params (the fast ones).
    assert state_layout(tx.init({"w": jnp.ones(3)})) == state_layout(tx.init(p))


MASK = {"blocks": [{"kernel": True}, False], "conv": False, "dense": {"b": True, "w": False},
        "row": False, "scale": True}
HELD = [
    ("freeze", lambda: chain(freezing.freeze(MASK), adam(0.02, b1=0.8)),
     lambda: optax.chain(optax.freeze(MASK), optax.adam(0.02, b1=0.8))),
    ("freeze_all", lambda: chain(freezing.freeze(True), sgd(0.05)),
     lambda: optax.chain(optax.freeze(True), optax.sgd(0.05))),
    ("selective_transform", lambda: freezing.selective_transform(adam(0.02), freeze_mask=MASK),
     lambda: optax.selective_transform(optax.adam(0.02), freeze_mask=MASK)),
    ("keep_params_nonnegative",
     lambda: chain(sgd(0.05, momentum=0.8), constraints.keep_params_nonnegative()),
     lambda: optax.chain(optax.sgd(0.05, momentum=0.8), optax.keep_params_nonnegative())),
]


@functools.cache
def held_results():
    params = make_params(0)
    noise = noise_sequence(params, 60)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run(params, noise):
        return {name: (trajectory(ours(), apply_updates, params, noise),
                       trajectory(theirs(), optax.apply_updates, params, noise))
                for name, ours, theirs in HELD}

    return params, run(params, noise)


@pytest.mark.parametrize("row", HELD, ids=[r[0] for r in HELD])
def test_frozen_and_constrained_equal_optax(row):
    params, out = held_results()
    (traj, state), (theirs, theirs_state) = out[row[0]]
    for path, a, b in zip(*paths(traj), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(a, b, **TOL, err_msg=f"{row[0]} at {path}")
    assert state_layout(state) == state_layout(theirs_state)
    frozen = {"freeze": MASK, "freeze_all": jax.tree.map(lambda _: True, params),
              "selective_transform": MASK}.get(row[0])
    if frozen is None:  # keep_params_nonnegative: nothing below zero, something moved
        assert all(bool(jnp.all(x[1:] >= 0)) for x in jax.tree.leaves(traj))
        assert any(not np.allclose(x[-1], x[0]) for x in jax.tree.leaves(traj))
        return
    for m, p, x in zip(jax.tree.leaves(jtree_full(frozen, params)), jax.tree.leaves(params),
                       jax.tree.leaves(traj)):
        assert np.array_equal(x[-1], p) == m


def jtree_full(mask, params):
    from jtricks import tree as jtree

    return jtree.resolve_mask(mask, params)


def test_keep_params_nonnegative_needs_params():
    tx = constraints.keep_params_nonnegative()
    with pytest.raises(ValueError, match=r"keep_params_nonnegative\.update: params is None"):
        tx.update({"w": jnp.ones(2)}, tx.init(None))


def test_apply_if_finite_skips_then_gives_up_as_optax():
    params = {"w": jnp.ones(3)}
    ours = conditional.apply_if_finite(sgd(0.1, momentum=0.9), 2)
    theirs = optax.apply_if_finite(optax.sgd(0.1, momentum=0.9), 2)
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    assert type(s_ours).__name__ == "ApplyIfFiniteState"
    assert s_ours._fields == s_theirs._fields
    nan = {"w": jnp.asarray([1.0, jnp.nan, 1.0])}
    for g in [params, nan, nan, nan, params, nan]:
        a, s_ours = ours.update(g, s_ours, params)
        b, s_theirs = theirs.update(g, s_theirs, params)
        np.testing.assert_array_equal(a["w"], b["w"])
        for x, y in zip(jax.tree.leaves(s_ours), jax.tree.leaves(s_theirs)):
            np.testing.assert_array_equal(x, y)
    assert int(s_ours.total_notfinite) == 4


def test_zero_nans_reports_where():
    tx = constraints.zero_nans()
    g = {"a": jnp.asarray([1.0, jnp.nan]), "b": jnp.ones(2)}
    u, s = tx.update(g, tx.init(g))
    np.testing.assert_array_equal(u["a"], [1.0, 0.0])
    assert bool(s.found_nan["a"]) and not bool(s.found_nan["b"])


def test_skip_rules_equal_optax_and_drive_multisteps():
    g = {"a": jnp.asarray([3.0, jnp.inf]), "b": jnp.ones(2)}
    ok = {"a": jnp.asarray([3.0, 0.0]), "b": jnp.ones(2)}
    for u in (g, ok):
        for ours, theirs in [(steps.skip_not_finite, optax.skip_not_finite),
                             (functools.partial(steps.skip_large_updates, max_squared_norm=5.0),
                              functools.partial(optax.skip_large_updates,
                                                max_squared_norm=5.0))]:
            a, b = ours(u, 0, None), theirs(u, 0, None)
            assert jax.tree.map(np.asarray, a[1]).keys() == b[1].keys()
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
                np.testing.assert_array_equal(x, y)
    tx = optax.MultiSteps(adam(0.1), 2, should_skip_update_fn=steps.skip_not_finite)
    state = tx.init(ok)
    _, state = tx.update(g, state, ok)
    assert int(state.mini_step) == 0  # the non-finite gradient was dropped


def test_per_example_clipping_equals_optax():
    rng = np.random.default_rng(0)
    grads = {"w": jnp.asarray(rng.standard_normal((5, 3, 2)), jnp.float32),
             "b": jnp.asarray(rng.standard_normal((5, 4)), jnp.float32)}
    grads["b"] = grads["b"].at[0].set(0.0)
    for a, b in [(constraints.per_example_global_norm_clip(grads, 1.5),
                  optax.per_example_global_norm_clip(grads, 1.5))] + [
            (constraints.per_example_layer_norm_clip(grads, 2.0, uniform),
             optax.per_example_layer_norm_clip(grads, 2.0, uniform)) for uniform in (True, False)]:
        assert jax.tree.structure(a) == jax.tree.structure(b)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(x, y, rtol=1e-6)
    with pytest.raises(ValueError, match="per_example_global_norm_clip: grads"):
        constraints.per_example_global_norm_clip({"w": jnp.ones(3), "s": jnp.ones(())}, 1.0)


def test_named_chain_state_is_keyed_by_name():
    tx = freezing.named_chain(("clip", clip_by_global_norm(1.0)), ("opt", sgd(0.1)))
    assert list(tx.init({"w": jnp.ones(2)})) == ["clip", "opt"]
    with pytest.raises(ValueError, match="named_chain: names must be unique"):
        freezing.named_chain(("a", sgd(0.1)), ("a", sgd(0.1)))


BAD = [
    (lambda: conditional.apply_if_finite(sgd(0.1), -1), "apply_if_finite: max_consecutive_errors"),
    (lambda: conditional.apply_if_finite(sgd(0.1), 1.5), "apply_if_finite: max_consecutive_errors"),
    (lambda: steps.apply_every(0), "apply_every: k"),
    (lambda: steps.apply_every(2.5), "apply_every: k"),
    (lambda: lookahead.lookahead(sgd(0.1), 0, 0.5), "lookahead: sync_period"),
    (lambda: lookahead.lookahead(sgd(0.1), 2, 1.5), "lookahead: slow_step_size"),
    (lambda: lookahead.lookahead(sgd(0.1), 2, -0.1), "lookahead: slow_step_size"),
    (lambda: constraints.clip_by_block_rms(0.0), "clip_by_block_rms: threshold"),
    (lambda: constraints.clip_by_block_rms(-1.0), "clip_by_block_rms: threshold"),
    (lambda: monitoring.measure_with_ema(_norm, 1.0), "measure_with_ema: decay"),
    (lambda: monitoring.measure_with_ema(_norm, -0.5), "measure_with_ema: decay"),
    (lambda: conditional.apply_if_finite(sgd(-0.1), 2), "sgd: learning_rate"),
    (lambda: lookahead.lookahead(adam(-1e-3), 2, 0.5), "adam: learning_rate"),
]


@pytest.mark.parametrize("make,match", BAD, ids=[m for _, m in BAD])
def test_bad_hyperparameters_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_types_are_refused():
    with pytest.raises(TypeError, match="monitor: measure 'x'"):
        monitoring.monitor({"x": 3})
    with pytest.raises(TypeError, match="snapshot: measure"):
        monitoring.snapshot("x", 3)
    with pytest.raises(TypeError, match="conditionally_mask: should_transform_fn"):
        conditional.conditionally_mask(sgd(0.1), 3)
    with pytest.raises(TypeError, match="apply_every: k"):
        steps.apply_every(lambda c: 2)
