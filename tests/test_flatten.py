"""jt.flatten: flat per-dtype state, the same numbers as the plain transform and optax.

Each optimizer runs for many steps on a tree that mixes fp32 and bf16 leaves; the
plain path, the flat path and optax run in one compiled program per optimizer so the
test stays fast, and their parameters are compared after every step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import grad_fn, make_params, noise_sequence, trajectory

import jtricks as jt
from jtricks.transforms.flatten import group_by_dtype, ungroup

STEPS = 25
MAX_SIZE = 20


def _schedule_jt():
    return jt.schedules.exponential_decay(0.05, decay_rate=0.9, transition_steps=5)


def _schedule_ox():
    return optax.exponential_decay(0.05, transition_steps=5, decay_rate=0.9)


# name, jtricks factory, optax factory, elementwise (no sum across coordinates)
OPTIMIZERS = [
    ("sgd", lambda: jt.sgd(0.05), lambda: optax.sgd(0.05), True),
    ("nesterov", lambda: jt.sgd(0.05, momentum=0.9, nesterov=True),
     lambda: optax.sgd(0.05, momentum=0.9, nesterov=True), True),
    ("adagrad", lambda: jt.adagrad(0.1), lambda: optax.adagrad(0.1), True),
    ("rmsprop_centered_momentum", lambda: jt.rmsprop(0.01, centered=True, momentum=0.9),
     lambda: optax.rmsprop(0.01, centered=True, momentum=0.9), True),
    ("adam", lambda: jt.adam(0.05), lambda: optax.adam(0.05), True),
    ("adamw", lambda: jt.adamw(0.05, weight_decay=0.1),
     lambda: optax.adamw(0.05, weight_decay=0.1), True),
    ("clip_adam_schedule",
     lambda: jt.chain(jt.clip_by_global_norm(1.0), jt.adam(_schedule_jt())),
     lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(_schedule_ox())), False),
]
IDS = [row[0] for row in OPTIMIZERS]


def mixed_params() -> dict:
    """fp32 and bf16 leaves interleaved in one tree (two dtype groups)."""
    return {"a": make_params(0, jnp.float32), "b": make_params(1, jnp.bfloat16),
            "c": jnp.linspace(-1.0, 1.0, 5, dtype=jnp.float32)}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _three(jt_factory, optax_factory, params, noise):
    """The plain path, the flat path and optax in one program."""
    plain, _ = trajectory(jt_factory(), jt.apply_updates, params, noise)
    # max_size=20 gathers some leaves and leaves the bigger ones as they are.
    flat, flat_state = trajectory(jt.flatten(jt_factory(), max_size=MAX_SIZE), jt.apply_updates,
                             params, noise)
    theirs, _ = trajectory(optax_factory(), optax.apply_updates, params, noise)
    return plain, flat, flat_state, theirs


@pytest.fixture(scope="module", params=OPTIMIZERS, ids=IDS)
def runs(request):
    name, jt_factory, optax_factory, elementwise = request.param
    # optax sums a global norm in each leaf's dtype and jtricks in fp32, so the row
    # with a global norm meets optax on an fp32 tree (test_clip_on_mixed_dtypes).
    mixed = mixed_params() if elementwise else make_params(2, jnp.float32)
    return (name, elementwise, mixed,
            *_three(jt_factory, optax_factory, mixed, noise_sequence(mixed, STEPS)))


def test_flat_equals_plain_at_every_step_on_a_mixed_dtype_tree(runs):
    name, elementwise, mixed, plain, flat, *_ = runs
    assert jax.tree.structure(plain) == jax.tree.structure(flat)
    for a, b, p0 in zip(jax.tree.leaves(plain), jax.tree.leaves(flat), jax.tree.leaves(mixed)):
        assert a.dtype == b.dtype == p0.dtype and a.shape == b.shape == (STEPS, *p0.shape)
        a32, b32 = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert not np.allclose(a32[-1], np.asarray(p0, np.float32)), f"{name}: no movement"
        # The same maths on the same numbers; a long vector may be vectorised
        # differently from a small array (a last-bit difference in a division or a
        # square root), and a global norm is summed in another order.
        if a.dtype == jnp.float32:
            tol = 1e-6 if elementwise else 1e-5
        else:  # one bf16 rounding step
            tol = 8e-3
        np.testing.assert_allclose(a32, b32, rtol=tol, atol=tol, err_msg=name)


def test_flat_equals_optax_at_every_step(runs):
    name, *_, flat, _, theirs = runs
    for a, b in zip(jax.tree.leaves(flat), jax.tree.leaves(theirs)):
        assert a.dtype == b.dtype
        tol = (2e-5, 2e-6) if a.dtype == jnp.float32 else (1.6e-2, 1.6e-2)  # 2 bf16 ulps
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   rtol=tol[0], atol=tol[1], err_msg=name)


def test_state_is_one_flat_vector_per_dtype(runs):
    name, _, mixed, _, _, flat_state, _ = runs
    small = [x for x in jax.tree.leaves(mixed) if x.size <= MAX_SIZE]
    big = [x for x in jax.tree.leaves(mixed) if x.size > MAX_SIZE]
    assert small and big
    sizes = {d: sum(x.size for x in small if x.dtype == d) for d in {x.dtype for x in small}}
    groups = [sub["flat"] for sub in jax.tree.leaves(
        flat_state, is_leaf=lambda x: isinstance(x, dict) and set(x) == {"flat", "leaves"})
        if isinstance(sub, dict)]
    assert groups or name == "sgd", name  # plain sgd keeps only a count
    for g in groups:
        assert {jnp.dtype(k): v.size for k, v in g.items()} == sizes, name
        assert all(v.ndim == 1 for v in g.values())
    for x in jax.tree.leaves(flat_state):
        if jnp.issubdtype(x.dtype, jnp.integer):
            assert x.dtype == jnp.int32 and x.shape == () and int(x) == STEPS


def test_clip_on_mixed_dtypes_equals_the_plain_path():
    params = mixed_params()
    grads = jax.tree.map(lambda g: (8 * g).astype(g.dtype), grad_fn(params))  # clipped

    def make():
        return jt.chain(jt.clip_by_global_norm(1.0), jt.adam(_schedule_jt()))

    plain, flat = make(), jt.flatten(make())
    u_plain, _ = plain.update(grads, plain.init(params), params)
    u_flat, _ = flat.update(grads, flat.init(params), params)
    for a, b in zip(jax.tree.leaves(u_plain), jax.tree.leaves(u_flat)):
        assert a.dtype == b.dtype
        tol = 1e-5 if a.dtype == jnp.float32 else 8e-3
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   rtol=tol, atol=tol * 1e-2)


def test_adam_state_keeps_optax_field_names():
    params = mixed_params()
    state = jt.flatten(jt.adam(1e-3)).init(params)
    mu = optax.tree_utils.tree_get(state, "mu")
    assert sorted(mu["flat"]) == ["bfloat16", "float32"] and mu["leaves"] == []
    assert mu["flat"]["float32"].shape == (sum(x.size for x in jax.tree.leaves(params)
                                               if x.dtype == jnp.float32),)
    assert mu["flat"]["bfloat16"].dtype == jnp.bfloat16


@pytest.mark.parametrize(("n_leaves", "max_size"), [(1, None), (3, 0), (64, None), (64, 4)])
def test_group_then_ungroup_gives_back_the_tree(n_leaves, max_size):
    rng = np.random.default_rng(n_leaves)
    dtypes = [jnp.float32, jnp.bfloat16, jnp.float16]
    tree = {f"x{i}": jnp.asarray(rng.standard_normal((i % 4, 3) if i % 5 else ()),
                                 dtypes[i % 3]) for i in range(n_leaves)}
    tree["none"] = None
    grouped = group_by_dtype(tree, max_size)
    assert all(v.ndim == 1 for v in grouped["flat"].values())
    assert all(x.size > max_size for x in grouped["leaves"]) if max_size is not None else (
        grouped["leaves"] == [])
    back = ungroup(grouped, tree, max_size)
    jitted = jax.jit(lambda g: ungroup(g, tree, max_size))(grouped)
    for out in (back, jitted):
        assert jax.tree.structure(out, is_leaf=lambda x: x is None) == jax.tree.structure(
            tree, is_leaf=lambda x: x is None)
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(tree)):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_wraps_an_optax_transform():
    params = make_params(3)
    grads = grad_fn(params)
    tx = jt.flatten(optax.adam(0.1))
    u, _ = tx.update(grads, tx.init(params), params)
    ref, _ = optax.adam(0.1).update(grads, optax.adam(0.1).init(params), params)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_learning_rate_is_data_so_a_new_value_does_not_recompile():
    params = make_params(4)
    traces = []

    @jax.jit
    def step(tx, p, s):
        traces.append(1)
        u, s = tx.update(grad_fn(p), s, p)
        return jt.apply_updates(p, u), s

    for lr in (1e-3, 3e-4):
        tx = jt.flatten(jt.adam(lr))
        step(tx, params, tx.init(params))
    assert len(traces) == 1


def test_refuses_what_is_not_a_transform():
    with pytest.raises(TypeError, match=r"flatten: expected a gradient transformation"):
        jt.flatten(0.1)


@pytest.mark.parametrize("max_size", [-1, 2.5, True])
def test_refuses_a_bad_max_size(max_size):
    with pytest.raises(ValueError, match=r"flatten: max_size must be a non-negative int"):
        jt.flatten(jt.adam(1e-3), max_size=max_size)
