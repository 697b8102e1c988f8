"""Wrappers: parity with optax.masked / partition / apply_if_finite / MultiSteps over
100 steps, skip_nonfinite's guarantees, hyperparameters as data, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization

import jtricks as jt

STEPS = 100


def make_params(seed=0):
    """7 leaves: nested dict and list, a 0-d scalar, a 3-D tensor (NumPy's seeded RNG,
    so no random kernel is compiled per shape)."""
    shapes = {"dense": {"w": (4, 3), "b": (3,)}, "blocks": [(2, 3, 2), ()],
              "head": {"w": (3, 2), "b": (2,)}, "gain": (5,)}
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s), jnp.float32), shapes,
                        is_leaf=lambda s: isinstance(s, tuple))


PARAMS = make_params()


def noise(steps=STEPS, bad=()):
    """Per-step gradient noise with a leading step axis; NaN/inf at the ``bad`` steps."""
    rng = np.random.default_rng(1)
    tree = jax.tree.map(lambda p: rng.standard_normal((steps, *p.shape)).astype(np.float32),
                        PARAMS)
    for i, step in enumerate(bad):  # alternate NaN and inf in the dense kernel
        tree["dense"]["w"][step, 0, 0] = np.nan if i % 2 == 0 else np.inf
    return jax.tree.map(jnp.asarray, tree)


def grad_fn(params, eps):
    return jax.tree.map(lambda p, e: p + 0.3 * jnp.sin(3 * p) + 0.5 * e, params, eps)


def trajectory(tx, eps, apply=jt.apply_updates):
    """Params and state after each step (lax.scan, one compilation)."""

    def step(carry, e):
        params, state = carry
        updates, state = tx.update(grad_fn(params, e), state, params)
        params = apply(params, updates)
        return (params, state), (params, state)

    _, (ps, states) = jax.lax.scan(step, (PARAMS, tx.init(PARAMS)), eps)
    return ps, states


MASK = {"dense": {"w": True, "b": False}, "blocks": [True, False],
        "head": {"w": True, "b": False}, "gain": False}
PREFIX_MASK = {"dense": True, "blocks": False, "head": True, "gain": False}
LABELS = {"dense": {"w": "adam", "b": "sgd"}, "blocks": ["adam", "frozen"],
          "head": "sgd", "gain": "frozen"}


def _kernels(p):
    return jax.tree.map(lambda x: x.ndim > 1, p)


def _labels_by_rank(p):
    return jax.tree.map(lambda x: "matrix" if x.ndim > 1 else "vector", p)


# (id, jtricks transform, optax twin, steps with a non-finite gradient)
PARITY = [
    ("masked_tree", jt.masked(jt.adam(0.05), MASK), optax.masked(optax.adam(0.05), MASK), ()),
    ("masked_callable", jt.masked(jt.adam(0.05), _kernels),
     optax.masked(optax.adam(0.05), _kernels), ()),
    ("masked_prefix", jt.masked(jt.sgd(0.05, momentum=0.9), PREFIX_MASK),
     optax.masked(optax.sgd(0.05, momentum=0.9), PREFIX_MASK), ()),
    ("masked_optax_inner", jt.masked(optax.adam(0.05), MASK),
     optax.masked(optax.adam(0.05), MASK), ()),
    ("partition_tree",
     jt.partition({"adam": jt.adam(0.05), "sgd": jt.sgd(0.05, momentum=0.9),
                   "frozen": optax.set_to_zero()}, LABELS),
     optax.partition({"adam": optax.adam(0.05), "sgd": optax.sgd(0.05, momentum=0.9),
                      "frozen": optax.set_to_zero()}, LABELS), ()),
    ("partition_callable",
     jt.partition({"matrix": jt.adam(0.05), "vector": jt.sgd(0.1)}, _labels_by_rank),
     optax.partition({"matrix": optax.adam(0.05), "vector": optax.sgd(0.1)},
                     _labels_by_rank), ()),
    ("skip_nonfinite", jt.skip_nonfinite(jt.adam(0.05)),
     optax.apply_if_finite(optax.adam(0.05), 10**6), (3, 4, 40, 41, 42, 77)),
    ("skip_nonfinite_max2", jt.skip_nonfinite(jt.sgd(0.05, momentum=0.9), max_consecutive=2),
     optax.apply_if_finite(optax.sgd(0.05, momentum=0.9), 2), (5, 6, 30, 60, 61)),
    ("accumulate", jt.accumulate(jt.adam(0.05), 3), optax.MultiSteps(optax.adam(0.05), 3), ()),
    ("accumulate_momentum", jt.accumulate(jt.sgd(0.1, momentum=0.9), 4),
     optax.MultiSteps(optax.sgd(0.1, momentum=0.9), 4), ()),
]


@pytest.mark.parametrize("name, ours, theirs, bad", PARITY, ids=[p[0] for p in PARITY])
def test_equals_optax_every_step(name, ours, theirs, bad):
    eps = noise(bad=bad)
    ours_p, ours_s = jax.jit(trajectory, static_argnums=0)(ours, eps)
    theirs_p, theirs_s = jax.jit(trajectory, static_argnums=(0, 2))(
        theirs, eps, optax.apply_updates)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 ours_p, theirs_p)
    assert np.all(np.isfinite(jax.tree.leaves(ours_p)[0]))  # the run is not all NaN
    if name.startswith("skip_nonfinite"):
        for field in ("notfinite_count", "last_finite", "total_notfinite"):
            np.testing.assert_array_equal(getattr(ours_s, field), getattr(theirs_s, field))
    if name.startswith("accumulate"):
        np.testing.assert_array_equal(ours_s.mini_step, theirs_s.mini_step)
        np.testing.assert_array_equal(ours_s.gradient_step, theirs_s.gradient_step)
        assert ours_s.mini_step.dtype == ours_s.gradient_step.dtype == jnp.int32


def test_skip_nonfinite_max_consecutive_lets_the_nan_through():
    eps = noise(bad=(10, 11, 12))
    params, state = jax.jit(trajectory, static_argnums=0)(
        jt.skip_nonfinite(jt.sgd(0.05), max_consecutive=2), eps)
    w = params["dense"]["w"]
    assert np.all(np.isfinite(w[11])) and np.isnan(w[12, 0, 0])  # the 3rd bad step
    np.testing.assert_array_equal(state.notfinite_count[9:13], [0, 1, 2, 3])


# One compilation per transform structure, shared by the tests below.
_update = jax.jit(lambda tx, g, s, p: tx.update(g, s, p))
_grad = jax.jit(grad_fn)


@pytest.mark.parametrize("bad_value", [jnp.nan, jnp.inf, -jnp.inf])
def test_skip_nonfinite_leaves_params_and_inner_state_unchanged(bad_value):
    tx = jt.skip_nonfinite(jt.adam(0.05))
    params, state = PARAMS, tx.init(PARAMS)
    eps = noise(5)
    for i in range(2):
        u, state = _update(tx, _grad(params, jax.tree.map(lambda n, i=i: n[i], eps)), state,
                           params)
        params = jt.apply_updates(params, u)
    g_bad = _grad(params, jax.tree.map(lambda n: n[2], eps))
    g_bad["blocks"][1] = jnp.asarray(bad_value)
    u, new_state = _update(tx, g_bad, state, params)
    after = jt.apply_updates(params, u)
    jax.tree.map(np.testing.assert_array_equal, after, params)
    jax.tree.map(np.testing.assert_array_equal, new_state.inner_state, state.inner_state)
    assert jax.tree.structure(new_state.inner_state) == jax.tree.structure(state.inner_state)
    assert int(new_state.notfinite_count) == 1 and int(new_state.total_notfinite) == 1
    assert not bool(new_state.last_finite)
    # A finite gradient afterwards updates exactly as if the bad step never happened.
    g_next = _grad(params, jax.tree.map(lambda n: n[3], eps))
    u_skip, s_skip = _update(tx, g_next, new_state, params)
    u_ref, s_ref = _update(tx, g_next, state, params)
    jax.tree.map(np.testing.assert_array_equal, u_skip, u_ref)
    jax.tree.map(np.testing.assert_array_equal, s_skip.inner_state, s_ref.inner_state)
    assert int(s_skip.notfinite_count) == 0 and int(s_skip.total_notfinite) == 1
    assert bool(s_skip.last_finite)
    assert not np.allclose(u_skip["dense"]["w"], 0.0)


def test_accumulate_emits_zeros_then_the_mean_step():
    k = 3
    inner = jt.sgd(0.1, momentum=0.9)
    tx = jt.accumulate(inner, k)
    state, inner_state = tx.init(PARAMS), inner.init(PARAMS)
    eps = noise(2 * k)
    grads = [jax.tree.map(lambda n, i=i: n[i], eps) for i in range(2 * k)]
    for window in range(2):
        chunk = grads[window * k:(window + 1) * k]
        for i, g in enumerate(chunk):
            u, state = _update(tx, g, state, PARAMS)
            if i < k - 1:
                assert all(not np.any(x) for x in jax.tree.leaves(u))
        mean = jax.tree.map(lambda *g: sum(g) / k, *chunk)
        want, inner_state = _update(inner, mean, inner_state, PARAMS)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                     u, want)
        assert int(state.gradient_step) == window + 1 and int(state.mini_step) == 0


def test_masked_passes_unmasked_updates_through_and_keeps_state_for_masked_only():
    tx = jt.masked(jt.adam(0.05), MASK)
    state = tx.init(PARAMS)
    n_masked = sum(jax.tree.leaves(MASK))
    adam_state = state.inner_state[0]
    assert len(jax.tree.leaves(adam_state.mu)) == n_masked
    grads = _grad(PARAMS, jax.tree.map(lambda n: n[0], noise(1)))
    updates, _ = _update(tx, grads, state, PARAMS)
    np.testing.assert_array_equal(updates["dense"]["b"], grads["dense"]["b"])
    np.testing.assert_array_equal(updates["gain"], grads["gain"])
    assert not np.allclose(updates["dense"]["w"], grads["dense"]["w"])


# Each wrapper built around two inner learning rates: one compilation serves both.
RETARGET = [
    ("masked", lambda lr: jt.masked(jt.adam(lr), MASK)),
    ("partition", lambda lr: jt.partition({"adam": jt.adam(lr), "sgd": jt.sgd(lr),
                                           "frozen": jt.scale(0.0)}, LABELS)),
    ("skip_nonfinite", lambda lr: jt.skip_nonfinite(jt.adam(lr), max_consecutive=3)),
    ("accumulate", lambda lr: jt.accumulate(jt.adam(lr), 2)),
]


@pytest.mark.parametrize("name, make", RETARGET, ids=[r[0] for r in RETARGET])
def test_inner_hyperparameters_are_data(name, make):
    traces = []

    @jax.jit
    def run(tx, eps):
        traces.append(1)
        return trajectory(tx, eps)[0]["dense"]["w"][-1]

    eps = noise(4)
    a, b = run(make(1e-2), eps), run(make(3e-3), eps)
    assert len(traces) == 1
    assert not np.allclose(a, b)
    # A stacked learning rate under vmap equals the separate runs.
    swept = jax.jit(jax.vmap(lambda lr: trajectory(make(lr), eps)[0]["dense"]["w"][-1]))(
        jnp.asarray([1e-2, 3e-3]))
    np.testing.assert_allclose(swept, jnp.stack([a, b]), rtol=1e-5, atol=1e-6)
    # Pytree, hashable, and eval_shape gives the state's structure.
    assert make(1e-2) == make(1e-2) and hash(make(1e-2)) == hash(make(1e-2))
    tx = make(1e-2)
    assert jax.tree.structure(jax.eval_shape(tx.init, PARAMS)) == jax.tree.structure(
        tx.init(PARAMS))


BAD = [
    (lambda: jt.masked(jt.adam(0.1), {"dense": True}).init(PARAMS), ValueError,
     r"masked.init: the mask tree must have the structure of the params tree"),
    (lambda: jt.masked(jt.adam(0.1), jax.tree.map(lambda p: jnp.ones(p.shape, bool), PARAMS)
                       ).init(PARAMS), TypeError, r"mask entry at \['blocks'\]\[0\]"),
    (lambda: jt.partition({"adam": jt.adam(0.1)}, LABELS).init(PARAMS), ValueError,
     r"leaf at \['blocks'\]\[1\] has label 'frozen', which has no transform"),
    (lambda: jt.partition([jt.adam(0.1)], LABELS), TypeError, r"non-empty dict"),
    (lambda: jt.masked("adam", MASK), TypeError, r"masked: expected a gradient transformation"),
    (lambda: jt.accumulate(jt.adam(0.1), 0), ValueError,
     r"every_k must be an integer >= 1, got 0"),
    (lambda: jt.accumulate(jt.adam(0.1), 2.5), ValueError, r"every_k must be an integer"),
    (lambda: jt.accumulate(jt.adam(0.1), lambda step: 2), TypeError,
     r"accumulate: every_k must be an integer >= 1, got the function .*jt.MultiSteps"),
    (lambda: jt.skip_nonfinite(jt.adam(0.1), max_consecutive=-1), ValueError,
     r"max_consecutive must be an integer >= 0 or None, got -1"),
]


@pytest.mark.parametrize("make, error, match", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_input_raises_clear_error(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_accumulate_structure_mismatch_names_the_path():
    tx = jt.accumulate(jt.adam(0.1), 2)  # a MultiSteps: its update reports the error
    state = tx.init(PARAMS)
    grads = {**PARAMS, "extra": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"MultiSteps.update: .*\['extra'\]"):
        tx.update(grads, state, PARAMS)


@pytest.mark.parametrize("name, make", RETARGET, ids=[r[0] for r in RETARGET])
def test_bf16_params_stay_bf16(name, make):
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
    tx = make(1e-2)
    state = tx.init(params)
    grads = jax.tree.map(lambda p: (0.5 * p).astype(jnp.bfloat16), params)
    for _ in range(2):  # two steps: the state's dtypes must survive a round trip
        updates, new_state = _update(tx, grads, state, params)
        assert jax.tree.map(jnp.result_type, new_state) == jax.tree.map(jnp.result_type, state)
        state = new_state
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    new_params = jt.apply_updates(params, updates)
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(new_params))


# optax.tree.map_params finds the params-shaped parts of a state by initialising the
# transform on a placeholder; masked and partition states must map as optax's do.
_AXES = jax.tree.map(lambda p: p.ndim, PARAMS)  # e.g. sharding specs, one per leaf
MAP_PARAMS = [
    ("masked_tree", jt.masked(jt.adam(0.1), MASK), optax.masked(optax.adam(0.1), MASK)),
    ("masked_prefix", jt.masked(jt.sgd(0.1, momentum=0.9), PREFIX_MASK),
     optax.masked(optax.sgd(0.1, momentum=0.9), PREFIX_MASK)),
    ("adamw_masked_decay", jt.adamw(0.1, mask=_kernels), optax.adamw(0.1, mask=_kernels)),
    ("partition_prefix_labels",
     jt.partition({"adam": jt.adam(0.1), "sgd": jt.sgd(0.1, momentum=0.9),
                   "frozen": optax.set_to_zero()}, LABELS),
     optax.partition({"adam": optax.adam(0.1), "sgd": optax.sgd(0.1, momentum=0.9),
                      "frozen": optax.set_to_zero()}, LABELS)),
    ("accumulate_partition",
     jt.accumulate(jt.partition({"matrix": jt.adam(0.1), "vector": jt.sgd(0.1)},
                                _labels_by_rank), 2),
     optax.MultiSteps(optax.partition({"matrix": optax.adam(0.1), "vector": optax.sgd(0.1)},
                                      _labels_by_rank), 2).gradient_transformation()),
]


def _plain(state):
    return jax.tree.map(lambda x: np.asarray(x).tolist(), serialization.to_state_dict(state))


@pytest.mark.parametrize("name, ours, theirs", MAP_PARAMS, ids=[m[0] for m in MAP_PARAMS])
def test_optax_map_params_maps_our_states_as_optaxs(name, ours, theirs):
    ours_state, theirs_state = ours.init(PARAMS), theirs.init(PARAMS)
    assert _plain(ours_state) == _plain(theirs_state)  # one MaskedNode per hidden subtree
    shift = lambda p: p + 1.0  # every params-shaped copy moves, counts do not
    mapped = optax.tree.map_params(ours, shift, ours_state)
    assert _plain(mapped) == _plain(optax.tree.map_params(theirs, shift, theirs_state))
    assert _plain(mapped) != _plain(ours_state)
    # With an extra params-shaped tree, optax asks for is_leaf on its MaskedNode; the
    # same call with jt.MaskedNode gives optax's specs.
    def specs(tx, state, masked_node):
        return optax.tree.map_params(
            tx, lambda p, a: None if isinstance(p, masked_node) else a, state, _AXES,
            is_leaf=lambda v: isinstance(v, masked_node), transform_non_params=lambda v: -1)

    assert _plain(specs(ours, ours_state, jt.MaskedNode)) == _plain(
        specs(theirs, theirs_state, optax.MaskedNode))
