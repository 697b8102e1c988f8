"""jt.record_norms: updates unchanged, norms recorded, jittable, one compilation, interop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jtricks as jt


def make_params(seed, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    shapes = {"dense": {"w": (4, 3), "b": (3,)}, "blocks": [(2, 3, 4), (5,)], "scale": ()}
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), dtype), shapes,
                        is_leaf=lambda s: isinstance(s, tuple) and all(
                            isinstance(d, int) for d in s))


def grad_fn(params, step=0):
    """A smooth gradient plus seeded noise that differs per step."""
    rng = np.random.default_rng(100 + step)
    g = jax.grad(lambda p: sum(jnp.sum(x**2 + jnp.sin(3 * x)) for x in jax.tree.leaves(p)))
    return jax.tree.map(lambda d: d + jnp.asarray(rng.normal(size=d.shape), d.dtype),
                        g(params))


def norms(tree):
    return jax.tree.map(lambda x: np.linalg.norm(np.asarray(x, np.float64).ravel()), tree)


@pytest.mark.parametrize("inner", [lambda: jt.adam(0.05), lambda: optax.sgd(0.1, 0.9),
                                   lambda: jt.chain(jt.clip_by_global_norm(1.0), jt.sgd(0.1))],
                         ids=["adam", "optax_sgd", "chain"])
def test_updates_unchanged_and_norms_recorded(inner):
    params = make_params(0)
    tx, ref = jt.record_norms(inner()), inner()
    state, ref_state = tx.init(params), ref.init(params)
    assert float(state.grad_norm) == 0.0
    step = jax.jit(lambda p, s, g: tx.update(g, s, p))
    ref_step = jax.jit(lambda p, s, g: ref.update(g, s, p))
    p = params
    for i in range(3):
        g = grad_fn(p, i)
        u, state = step(p, state, g)
        u_ref, ref_state = ref_step(p, ref_state, g)
        jax.tree.map(np.testing.assert_array_equal, u, u_ref)  # bit for bit
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5),
                     state.grad_norms, norms(g))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5),
                     state.update_norms, norms(u))
        np.testing.assert_allclose(state.grad_norm, optax.tree.norm(g), rtol=1e-5)
        np.testing.assert_allclose(state.update_norm, optax.tree.norm(u), rtol=1e-5)
        assert state.grad_norm.dtype == jnp.float32
        p = jt.apply_updates(p, u)


def test_one_compilation_for_new_hyperparameters_and_bf16_norms():
    params = make_params(1, jnp.bfloat16)
    traces = []

    @jax.jit
    def step(tx, state, g):
        traces.append(1)
        return tx.update(g, state)

    g = jax.tree.map(jnp.ones_like, params)
    for lr in (1e-3, 3e-4):
        tx = jt.record_norms(jt.adam(lr))
        _, state = step(tx, tx.init(params), g)
    assert len(traces) == 1
    assert all(n.dtype == jnp.float32 for n in jax.tree.leaves(state.grad_norms))
    np.testing.assert_allclose(state.grad_norm, np.sqrt(sum(x.size for x in
                                                            jax.tree.leaves(params))))


def test_inside_optax_chain_and_found_by_diagnostics():
    params = make_params(2)
    g = grad_fn(params)
    tx = optax.chain(optax.clip_by_global_norm(1e9), jt.record_norms(jt.sgd(0.1)))
    state = tx.init(params)
    u, state = tx.update(g, state, params)
    found = jt.diagnostics.find_norms(state)
    assert isinstance(found, jt.NormsState)
    np.testing.assert_allclose(found.grad_norm, optax.tree.norm(g), rtol=1e-6)
    rep = jt.diagnostics.report_from_norms(state, params)
    np.testing.assert_allclose(rep.global_grad_norm, float(optax.tree.norm(g)), rtol=1e-6)
    assert set(rep.grad_norms) == set(jt.diagnostics.leaf_norms(params))
    np.testing.assert_allclose(rep.update_ratios["dense/w"],
                               np.linalg.norm(u["dense"]["w"]) /
                               np.linalg.norm(params["dense"]["w"]), rtol=1e-5)


def test_state_can_be_donated():
    # Every field has its own buffer, so a donated state does not alias itself. The
    # step reads the old state (keeping it on a non-finite step, as a skipping wrapper
    # does), so every field is a live, donated input.
    params = make_params(3)
    tx = jt.record_norms(jt.sgd(0.1, momentum=0.9))

    def step(p, s, g):
        u, new = tx.update(g, s, p)
        ok = jnp.isfinite(new.grad_norm)
        s = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, s)
        return jt.apply_updates(p, u), s

    g = grad_fn(params)
    p_ref, s_ref = jax.jit(step)(params, tx.init(params), g)
    donated = jax.jit(step, donate_argnums=(0, 1))
    p, s = donated(jax.tree.map(jnp.copy, params), tx.init(params), g)
    jax.tree.map(np.testing.assert_array_equal, (p, s), (p_ref, s_ref))


def test_bad_state():
    tx = jt.record_norms(jt.sgd(0.1))
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"record_norms.update: state must be the NormsState"):
        tx.update(params, jt.sgd(0.1).init(params), params)
    with pytest.raises(TypeError, match=r"record_norms: expected a gradient transformation"):
        jt.record_norms(0.1)
    with pytest.raises(ValueError, match=r"no NormsState found"):
        jt.diagnostics.report_from_norms(jt.sgd(0.1).init(params))
