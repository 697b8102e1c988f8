"""jt.flat_params: parameters stored as one vector per dtype, read through views.

The model sees its usual tree, the gradient arrives as the same few vectors, and any
optimizer gives the numbers it gives on the tree.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import grad_fn, loss, make_params

import jtricks as jt


def _mixed_params():
    params = make_params(7)
    params["half"] = {"w": jnp.linspace(-1, 1, 6, dtype=jnp.bfloat16).reshape(2, 3)}
    return params


def _assert_same_tree(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


def test_tree_gives_the_params_back_bit_for_bit():
    params = _mixed_params()
    flat = jt.flat_params(params)
    assert {k: v.shape for k, v in flat.vectors.items()} == {
        "bfloat16": (6,),
        "float32": (sum(np.size(x) for x in jax.tree.leaves(make_params(7))),),
    }
    _assert_same_tree(flat.tree(), params)
    _assert_same_tree(jax.jit(lambda f: f.tree())(flat), params)


def test_gradient_arrives_flat_with_the_tree_gradient_values():
    params = make_params(7)
    flat = jt.flat_params(params)
    g_flat = jax.jit(jax.grad(lambda f: loss(f.tree())))(flat)
    assert isinstance(g_flat, jt.FlatParams)
    assert len(jax.tree.leaves(g_flat)) == 1
    # Two programs (the flat and the tree gradient) may fuse differently; under the
    # suite's compile options (tests/conftest.py) they differ by a rounding (~1e-7).
    ours, theirs = g_flat.tree(), grad_fn(params)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_allclose(x, y, rtol=3e-7, atol=1e-6)


def test_training_on_flat_params_equals_training_on_the_tree():
    params = make_params(7)
    for tx, apply in ((jt.adamw(1e-2, weight_decay=1e-2), jt.apply_updates),
                      (optax.adam(1e-2), optax.apply_updates),
                      (jt.chain(jt.clip_by_global_norm(1.0), jt.sgd(0.1, momentum=0.9)),
                       jt.apply_updates)):

        def run(p, tx=tx, apply=apply, read=lambda p: p):
            s = tx.init(p)
            for _ in range(20):
                g = jax.grad(lambda q: loss(read(q)))(p)
                u, s = tx.update(g, s, p)
                p = apply(p, u)
            return p

        on_tree = jax.jit(run)(params)
        on_flat = jax.jit(lambda f: run(f, read=jt.FlatParams.tree))(jt.flat_params(params))
        for a, b in zip(jax.tree.leaves(on_flat.tree()), jax.tree.leaves(on_tree)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_optimizer_state_is_flat_and_the_step_donates():
    flat = jt.flat_params(_mixed_params())
    tx = jt.adam(1e-3)
    state = tx.init(flat)
    assert state[0].mu.vectors.keys() == flat.vectors.keys()

    @jax.jit
    def step(f, s):
        g = jax.grad(lambda f: loss(f.tree()))(f)
        u, s = tx.update(g, s, f)
        return jt.apply_updates(f, u), s

    expected = step(flat, state)
    donated = jax.jit(step.__wrapped__, donate_argnums=(0, 1))
    got = donated(jax.tree.map(jnp.copy, flat), tx.init(flat))
    jax.tree.map(np.testing.assert_array_equal, got, expected)


def test_flat_params_round_trip_through_a_checkpoint(tmp_path):
    flat = jt.flat_params(_mixed_params())
    path = jt.train.save(tmp_path / "flat.npz", flat)
    restored = jt.train.restore(path, like=flat)
    _assert_same_tree(restored.tree(), flat.tree())


def test_make_step_trains_flat_params_like_the_tree():
    params = make_params(7)

    def loss_fn(read):
        def fn(p, model_state, batch, key):
            del key
            return loss(read(p)) * batch, (model_state, {})
        return fn

    def train(p, read):
        step = jt.train.make_step(loss_fn(read), jt.adam(1e-2),
                                  averaging=jt.averaging.ema(0.9))
        state = step.init(p, jax.random.key(0), {})
        for _ in range(5):
            state, metrics = step(state, jnp.float32(1.0))
        return state, metrics

    on_tree, m_tree = train(params, lambda p: p)
    on_flat, m_flat = train(jt.flat_params(params), jt.FlatParams.tree)
    np.testing.assert_allclose(m_flat["grad_norm"], m_tree["grad_norm"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(on_flat.params.tree()), jax.tree.leaves(on_tree.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(jax.tree.leaves(on_flat.averages.mean.tree()),
                    jax.tree.leaves(on_tree.averages.mean)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# --- pad_to: vectors that split evenly over n devices -----------------------------------

def test_pad_to_appends_zeros_that_tree_leaves_out():
    params = _mixed_params()
    plain, padded = jt.flat_params(params), jt.flat_params(params, pad_to=8)
    assert padded.pad_to == 8 and padded.sizes() == plain.sizes()
    for name, v in padded.vectors.items():
        n = plain.vectors[name].shape[0]
        assert v.shape[0] % 8 == 0 and n <= v.shape[0] < n + 8
        np.testing.assert_array_equal(np.asarray(v[:n], np.float32),
                                      np.asarray(plain.vectors[name], np.float32))
        assert not np.any(np.asarray(v[n:], np.float32))
    _assert_same_tree(padded.tree(), params)
    _assert_same_tree(jax.jit(lambda f: f.tree())(padded), params)
    assert jt.flat_params(params, pad_to=1).vectors.keys() == plain.vectors.keys()


def test_padding_gets_zero_gradients_and_stays_zero_under_training():
    params = make_params(7)
    n = jt.flat_params(params).sizes()["float32"]
    padded = jt.flat_params(params, pad_to=8 if n % 8 else 7)
    g = jax.jit(jax.grad(lambda f: loss(f.tree())))(padded)
    assert g.vectors["float32"].shape == padded.vectors["float32"].shape
    assert not np.any(np.asarray(g.vectors["float32"][n:]))
    for tx in (jt.chain(jt.clip_by_global_norm(1.0), jt.adamw(1e-2, weight_decay=1e-1)),
               jt.sgd(0.1, momentum=0.9), optax.adam(1e-2)):

        def run(p, tx=tx):
            def one(_, carry):
                p, s = carry
                u, s = tx.update(jax.grad(lambda q: loss(q.tree()))(p), s, p)
                return jt.apply_updates(p, u), s
            return jax.lax.fori_loop(0, 10, one, (p, tx.init(p)))

        (p_pad, s_pad), (p_plain, _) = jax.jit(run)(padded), jax.jit(run)(jt.flat_params(params))
        for leaf in jax.tree.leaves((p_pad, s_pad)):
            if np.ndim(leaf) == 1 and leaf.shape[0] > n:  # every vector's padding
                assert not np.any(np.asarray(leaf[n:])), tx
        for a, b in zip(jax.tree.leaves(p_pad.tree()), jax.tree.leaves(p_plain.tree())):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_bad_pad_to_is_refused():
    for bad in (0, -8, 2.5, True, "8"):
        with pytest.raises(ValueError, match=rf"pad_to must be an integer >= 1, got "
                                             rf"{re.escape(repr(bad))}"):
            jt.flat_params(make_params(7), pad_to=bad)


def test_checkpoints_re_pad_flat_params(tmp_path):
    params = _mixed_params()
    eight = jt.flat_params(params, pad_to=8)
    saved_flat = jt.train.save(tmp_path / "flat8.npz", eight)
    saved_tree = jt.train.save(tmp_path / "tree.npz", params)
    for path in (saved_flat, saved_tree):
        for pad_to in (1, 3, 8):
            like = jt.flat_params(params, pad_to=pad_to)
            restored = jt.train.restore(path, like=like)
            assert jax.tree.map(np.shape, restored.vectors) == jax.tree.map(
                np.shape, like.vectors) and restored.pad_to == pad_to
            _assert_same_tree(restored.tree(), params)
            for name, n in like.sizes().items():
                assert not np.any(np.asarray(restored.vectors[name][n:], np.float32))
    _assert_same_tree(jt.train.restore(saved_tree, like=params), params)
