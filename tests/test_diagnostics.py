"""jt.diagnostics: norms and statistics, readable names on flax trees, the report's flags,
and the lesson's claim that N(0, 1) initialisation explodes a deep linear stack."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jtricks as jt

D = jt.diagnostics
WIDTH, DEPTH, BATCH = 256, 10, 256


@jax.jit
def stack_grads(kernels, x):
    """A 10-layer linear stack: activations and the gradient of mean(out**2)."""
    def forward(kernels):
        acts = [x]
        for w in kernels:
            acts.append(acts[-1] @ w)
        return jnp.mean(acts[-1] ** 2), acts

    grads, acts = jax.grad(forward, has_aux=True)(kernels)
    return grads, acts


def stack(init, seed=0):
    keys = jax.random.split(jax.random.key(seed, impl="rbg"), DEPTH + 1)
    draw = jax.jit(lambda k: init(k, (WIDTH, WIDTH)))
    kernels = [draw(k) for k in keys[:DEPTH]]
    x = jax.random.normal(keys[DEPTH], (BATCH, WIDTH))
    return kernels, x


INITS = [
    ("normal_0_1", jt.init.normal(1.0), False),
    ("lecun_normal", jt.init.lecun_normal(), True),
    ("glorot_normal", jt.init.glorot_normal(), True),
    ("glorot_uniform", jt.init.glorot_uniform(), True),
]


@pytest.mark.parametrize("name, init, keeps_range", INITS, ids=[i[0] for i in INITS])
def test_lesson_claim_deep_linear_stack(name, init, keeps_range):
    kernels, x = stack(init)
    grads, acts = stack_grads(kernels, x)
    growth = float(jnp.std(acts[-1]) / jnp.std(acts[0]))
    rep = D.report(grads, params=kernels, activations=acts)
    if keeps_range:
        assert 0.5 <= growth <= 2.0, growth
        assert rep.healthy, str(rep)
    else:
        # N(0, 1): each layer multiplies the spread by about sqrt(256) = 16.
        assert growth > 100, growth
        assert rep.exploding and not rep.nonfinite
        # The activations after the first layers and every kernel's gradient are flagged.
        assert {f"{i}" for i in range(2, DEPTH + 1)} <= set(rep.exploding)
        assert any(f.section == "gradients" and f.kind == "exploding" for f in rep.flags)
        assert "exploding" in str(rep) and "act_explode" in str(rep)


def test_norms_ratios_and_activation_stats_match_numpy():
    rng = np.random.default_rng(0)
    params = {"a": {"w": rng.normal(size=(3, 4)), "b": np.zeros(4)}, "c": [rng.normal(size=5)]}
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
    updates = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), params)
    norms = jax.jit(D.leaf_norms)(params)
    assert list(norms) == ["a/b", "a/w", "c/0"]
    np.testing.assert_allclose(norms["a/w"], np.linalg.norm(params["a"]["w"]), rtol=1e-6)
    layers = D.layer_norms(params)
    np.testing.assert_allclose(layers["a"], np.linalg.norm(params["a"]["w"]), rtol=1e-6)
    ratios = jax.jit(D.update_ratios)(updates, params)
    np.testing.assert_allclose(ratios["c/0"], 0.01 * np.sqrt(5) /
                               np.linalg.norm(params["c"][0]), rtol=1e-6)
    assert np.isnan(ratios["a/b"])  # zero parameter: undefined ratio
    x = jnp.array([[0.0, -1.0], [3.0, 0.0]])
    s = jax.jit(D.activation_stats)({"h": x})["h"]
    expected = {"mean": 0.5, "std": float(np.std(x)), "min": -1.0, "max": 3.0,
                "frac_zero": 0.5, "frac_nonfinite": 0.0}
    for k, v in expected.items():
        np.testing.assert_allclose(s[k], v, rtol=1e-6)


def test_readable_names_on_flax_linen_and_nnx():
    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(nn.relu(nn.Dense(8)(x)))

    x = jnp.ones((4, 3))
    model = MLP()
    params = model.init(jax.random.key(0), x)["params"]
    grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x) ** 2))(params)
    _, inter = model.apply({"params": params}, x, capture_intermediates=True,
                           mutable=["intermediates"])
    rep = D.report(grads, params=params, activations=inter)
    assert set(rep.grad_norms) == {"Dense_0/bias", "Dense_0/kernel", "Dense_1/bias",
                                   "Dense_1/kernel"}
    assert set(rep.activations) == {"intermediates", "intermediates/Dense_0",
                                    "intermediates/Dense_1"}

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.inp = nnx.Linear(3, 8, rngs=rngs)
            self.blocks = nnx.List([nnx.Linear(8, 8, rngs=rngs)])

        def __call__(self, x):
            return self.blocks[0](self.inp(x))

    net = Net(nnx.Rngs(0))
    g = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(net)
    names = set(D.report(g, params=nnx.state(net, nnx.Param)).grad_norms)
    assert names == {"inp/kernel", "inp/bias", "blocks/0/kernel", "blocks/0/bias"}


def test_each_flag_and_thresholds():
    grads = {"tiny": jnp.full((4,), 1e-9), "small": jnp.full((4,), 1e-6),
             "big": jnp.full((4,), 1e4), "ok": jnp.ones(4), "bad": jnp.array([1.0, jnp.nan])}
    params = {"fast": jnp.ones(4), "slow": jnp.ones(4), "zero": jnp.zeros(4)}
    updates = {"fast": jnp.full((4,), 0.5), "slow": jnp.full((4,), 1e-8),
               "zero": jnp.ones(4)}
    acts = [jnp.full((8,), 0.0), jnp.linspace(-1, 1, 8) * 1e3, jnp.linspace(-1, 1, 8) * 1e-6,
            jnp.linspace(-1, 1, 8), jnp.array([1.0, jnp.inf])]
    g = D.report(grads)
    kinds = {(f.name, f.kind) for f in g.flags}
    assert kinds == {("tiny", "vanishing"), ("small", "vanishing"), ("big", "exploding"),
                     ("bad", "nonfinite")}
    reasons = {f.name: f.reason for f in g.flags}
    assert "grad_vanish" in reasons["tiny"] and "grad_relative" in reasons["small"]
    assert g.global_grad_norm is not None and np.isnan(g.global_grad_norm)
    u = D.report(params=params, updates=updates)
    assert {(f.name, f.kind) for f in u.flags} == {("fast", "exploding"), ("slow", "vanishing")}
    a = D.report(activations=acts)
    assert {(f.name, f.kind) for f in a.flags} == {
        ("0", "vanishing"), ("0", "dead"), ("1", "exploding"), ("2", "vanishing"),
        ("4", "nonfinite")}
    # Thresholds are data: loosen one and its flag goes.
    loose = D.report(grads, thresholds=D.Thresholds(grad_explode=1e5))
    assert "big" not in loose.exploding
    # Plain data: JSON-ready, and a table that names everything.
    json.dumps(a.as_dict())
    table = str(g)
    for name in grads:
        assert name in table


def test_bad_input():
    with pytest.raises(ValueError, match=r"report: updates were given without params"):
        D.report({"w": jnp.ones(2)}, updates={"w": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"report: nothing to report"):
        D.report()
    with pytest.raises(ValueError, match=r"update_ratios: updates and params have different"):
        D.update_ratios({"w": jnp.ones(2)}, {"v": jnp.ones(2)})
    with pytest.raises(TypeError, match=r"thresholds must be a jt.diagnostics.Thresholds"):
        D.report({"w": jnp.ones(2)}, thresholds={"grad_explode": 1.0})
