"""The protocol: chain, identity, apply_updates, and Transform as a hashable pytree."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jtricks as jt


def test_chain_applies_in_order_and_keeps_one_state_per_transform(params, grads):
    tx = jt.chain(jt.clip(0.5), jt.scale(3.0))
    state = tx.init(params)
    assert isinstance(state, tuple) and len(state) == 2
    updates, new_state = tx.update(grads, state, params)
    expected = jax.tree.map(lambda g: 3.0 * jnp.clip(g, -0.5, 0.5), grads)
    jax.tree.map(np.testing.assert_array_equal, updates, expected)
    # Reversed order clips after scaling: different numbers, same structure.
    reversed_updates, _ = jt.chain(jt.scale(3.0), jt.clip(0.5)).update(grads, state, params)
    assert float(jnp.max(jnp.abs(reversed_updates["conv"]))) <= 0.5
    assert float(jnp.max(jnp.abs(updates["conv"]))) > 0.5
    assert jax.tree.structure(new_state) == jax.tree.structure(state)


def test_chain_of_one_list_and_nested_chains(params, grads):
    flat = jt.chain(jt.trace(0.9), jt.scale(-0.1))
    from_list = jt.chain([jt.trace(0.9), jt.scale(-0.1)])
    nested = jt.chain(jt.chain(jt.trace(0.9)), jt.scale(-0.1))
    expected, _ = flat.update(grads, flat.init(params), params)
    for tx in (from_list, nested):
        got, _ = tx.update(grads, tx.init(params), params)
        jax.tree.map(np.testing.assert_array_equal, got, expected)


def test_chain_refuses_a_state_of_the_wrong_length(params, grads):
    tx = jt.chain(jt.trace(0.9), jt.scale(-0.1))
    with pytest.raises(ValueError, match=r"chain.update: state must be a tuple of 2"):
        tx.update(grads, (tx.init(params)[0],), params)


def test_chain_refuses_something_that_is_not_a_transform():
    with pytest.raises(TypeError, match=r"chain: expected a gradient transformation.*float"):
        jt.chain(jt.scale(1.0), 0.1)


def test_chain_accepts_an_optax_transform(params, grads):
    ours = jt.chain(optax.trace(0.9), jt.scale(-0.1))
    theirs = optax.chain(optax.trace(0.9), optax.scale(-0.1))
    a, _ = ours.update(grads, ours.init(params), params)
    b, _ = theirs.update(grads, theirs.init(params), params)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_identity_passes_updates_through(params, grads):
    tx = jt.identity()
    state = tx.init(params)
    assert state == jt.EmptyState()
    updates, new_state = tx.update(grads, state, params)
    assert updates is grads and new_state == state


def test_apply_updates_adds_in_the_promoted_dtype_and_keeps_the_param_dtype():
    p = jnp.asarray([1.0, 2.0, 3.0], jnp.bfloat16)
    u = jnp.asarray([1e-3, -2e-3, 0.5], jnp.float32)
    out = jt.apply_updates({"w": p}, {"w": u})["w"]
    assert out.dtype == jnp.bfloat16
    # The sum is taken in fp32 and rounded once, not rounded twice through bf16.
    np.testing.assert_array_equal(out, (p.astype(jnp.float32) + u).astype(jnp.bfloat16))
    np.testing.assert_array_equal(out, optax.apply_updates({"w": p}, {"w": u})["w"])


def test_apply_updates_keeps_every_dtype_of_a_mixed_tree(params_bf16, params):
    mixed = {"half": params_bf16["dense"], "full": params["dense"]}
    updates = jax.tree.map(lambda p: jnp.ones(p.shape, jnp.float32), mixed)
    out = jt.apply_updates(mixed, updates)
    assert jax.tree.map(lambda x: x.dtype, out) == jax.tree.map(lambda x: x.dtype, mixed)


def test_apply_updates_passes_none_through():
    params = {"frozen": None, "w": jnp.ones(3)}
    out = jt.apply_updates(params, {"frozen": None, "w": jnp.full(3, 0.5)})
    assert out["frozen"] is None
    np.testing.assert_array_equal(out["w"], jnp.full(3, 1.5))


def test_apply_updates_refuses_broadcastable_shapes_naming_the_path():
    params = {"layer": {"b": jnp.zeros(3)}}
    with pytest.raises(ValueError, match=r"shape mismatch at \['layer'\]\['b'\].*\(3,\).*\(3, 1\)"):
        jt.apply_updates(params, {"layer": {"b": jnp.zeros((3, 1))}})


def test_apply_updates_names_the_first_differing_path():
    with pytest.raises(ValueError, match=r"apply_updates.*\['b'\]"):
        jt.apply_updates({"a": jnp.zeros(2), "b": jnp.zeros(2)},
                         {"a": jnp.zeros(2), "c": jnp.zeros(2)})


def test_transforms_from_python_numbers_are_equal_and_hash_alike():
    assert jt.adam(1e-3) == jt.adam(1e-3)
    assert hash(jt.adam(1e-3)) == hash(jt.adam(1e-3))
    assert jt.adam(1e-3) != jt.adam(3e-4)
    assert jt.sgd(0.1, momentum=0.9) != jt.sgd(0.1, momentum=0.9, nesterov=True)
    assert jt.rmsprop(0.1) != jt.rmsprop(0.1, centered=True)
    assert len({jt.adam(1e-3), jt.adam(1e-3), jt.sgd(0.1)}) == 2
    # Static options such as a mask tree hash by value too (flax keeps `tx` static).
    mask = {"w": True, "b": [False, True]}
    assert hash(jt.adamw(1e-3, mask=mask)) == hash(jt.adamw(1e-3, mask=dict(mask)))
    assert jt.adamw(1e-3, mask=mask) != jt.adamw(1e-3, mask={"w": True, "b": [True, True]})
    agc = jt.adaptive_grad_clip
    assert hash(agc(0.1, axis=[0, 1])) == hash(agc(0.1, axis=(0, 1)))
    # Arrays compare by identity, never by (ambiguous) value.
    lr = jnp.asarray(0.1)
    assert jt.sgd(lr) == jt.sgd(lr)
    assert jt.sgd(lr) != jt.sgd(jnp.asarray(0.1))


def test_a_transform_is_a_pytree_of_its_numbers_only():
    tx = jt.sgd(0.1, momentum=0.9, nesterov=True)
    assert jax.tree.leaves(tx) == [0.9, 0.1]
    doubled = jax.tree.map(lambda x: 2 * x, tx)
    assert isinstance(doubled, type(tx))
    assert doubled.transforms[0].nesterov is True
    assert jax.tree.leaves(doubled) == [1.8, 0.2]
    masked = jt.adamw(1e-3, mask={"w": True, "b": False})
    assert sorted(jax.tree.leaves(masked)) == sorted([0.9, 0.999, 1e-8, 0.0, 1e-4, 1e-3])


def test_init_update_unpacking(params, grads):
    tx = jt.sgd(0.1, momentum=0.9)
    init, update = tx
    state = init(params)
    a, _ = update(grads, state, params)
    b, _ = tx.update(grads, tx.init(params), params)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    # optax.chain unpacks transforms exactly this way.
    c, _ = optax.chain(tx).update(grads, optax.chain(tx).init(params), params)
    jax.tree.map(np.testing.assert_array_equal, c, b)


def test_states_use_optaxs_field_names(params):
    # Field for field optax's states (tests/test_state_compat.py compares them all).
    assert jt.trace(0.9).init(params)._fields == ("trace",)
    assert jt.scale_by_adagrad().init(params)._fields == ("sum_of_squares",)
    assert jt.scale_by_rms().init(params)._fields == ("nu",)
    assert jt.scale_by_rms(bias_correction=True).init(params)._fields == ("count", "nu")
    assert jt.scale_by_stddev().init(params)._fields == ("mu", "nu")
    assert jt.scale_by_stddev(bias_correction=True).init(params)._fields == (
        "count", "mu", "nu")
    centered = jt.scale_by_rms(centered=True).init(params)
    assert type(centered) is jt.ScaleByRStdDevState
    assert jax.tree.structure(centered.mu) == jax.tree.structure(params)
    assert jt.scale_by_learning_rate(0.1).init(params) == jt.EmptyState()
    assert jt.scale_by_learning_rate(lambda k: 0.1).init(params)._fields == ("count",)
    for state in (jt.scale_by_rms(bias_correction=True).init(params),
                  jt.adam(1e-3).init(params)[0], jt.trace(lambda k: 0.9).init(params)):
        assert state.count.dtype == jnp.int32 and state.count.shape == ()
    for tx in (jt.clip(1.0), jt.clip_by_global_norm(1.0), jt.normalize_by_global_norm(),
               jt.adaptive_grad_clip(0.1), jt.add_decayed_weights(1e-4)):
        assert tx.init(params) == jt.EmptyState()


def test_accumulator_dtype_sets_the_trace_dtype_only(params_bf16):
    tx = jt.sgd(0.1, momentum=0.9, accumulator_dtype=jnp.float32)
    state = tx.init(params_bf16)
    assert {x.dtype for x in jax.tree.leaves(state[0].trace)} == {jnp.dtype(jnp.float32)}
    grads = jax.tree.map(jnp.ones_like, params_bf16)
    _, state = tx.update(grads, state, params_bf16)
    assert {x.dtype for x in jax.tree.leaves(state[0].trace)} == {jnp.dtype(jnp.float32)}
    plain = jt.sgd(0.1, momentum=0.9).init(params_bf16)[0].trace
    assert {x.dtype for x in jax.tree.leaves(plain)} == {jnp.dtype(jnp.bfloat16)}


def test_count_equals_the_number_of_updates(params, grads):
    # Each kind of count: a debiased rms, a scheduled rate, a scheduled momentum.
    tx = jt.rmsprop(lambda k: 0.01, bias_correction=True,
                    momentum=jt.schedules.constant(0.9))
    state = tx.init(params)
    for _ in range(3):
        _, state = tx.update(grads, state, params)
    assert int(state[0].count) == 3 and int(state[1].count) == 3 and int(state[2].count) == 3


def test_transforms_index_like_optaxs_namedtuple(params, grads):
    tx = jt.adam(1e-3)
    init, update = tx[0], tx[1]
    assert len(tx) == 2
    a, _ = update(grads, init(params), params)
    b, _ = tx.update(grads, tx.init(params), params)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_apply_updates_leaves_non_array_leaves_with_none_updates_alone():
    # An equinox model carries functions and Python constants among its leaves.
    params = {"w": jnp.ones(2), "act": jax.nn.relu, "scale": 3.0}
    out = jt.apply_updates(params, {"w": jnp.ones(2), "act": None, "scale": None})
    assert out["act"] is jax.nn.relu and out["scale"] == 3.0
    np.testing.assert_array_equal(out["w"], 2.0)
    with pytest.raises(ValueError, match=r"update at \['w'\] is None"):
        jt.apply_updates(params, {"w": None, "act": None, "scale": None})
