"""jt.regularization: values, masks and predicates, equivalence with weight decay."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtricks as jt

R = jt.regularization


def tree():
    rng = np.random.default_rng(0)
    return {
        "dense": {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
                  "bias": jnp.asarray(rng.normal(size=(3,)), jnp.float32)},
        "norm": {"scale": jnp.asarray(rng.normal(size=(3,)), jnp.float32)},
        "conv": [jnp.asarray(rng.normal(size=(3, 3, 2, 2)), jnp.float32)],
    }


def total(params, f):
    return sum(f(np.asarray(p, np.float64)) for p in jax.tree.leaves(params))


KERNELS = {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False}, "conv": [True]}

# (mask, the leaves it keeps)
MASKS = [
    ("none", None, lambda p: p),
    ("tree", KERNELS, lambda p: {"k": p["dense"]["kernel"], "c": p["conv"]}),
    ("kernels_only", R.kernels_only, lambda p: {"k": p["dense"]["kernel"], "c": p["conv"]}),
    ("by_path", R.by_path(lambda name, p: not name.endswith(("bias", "scale"))),
     lambda p: {"k": p["dense"]["kernel"], "c": p["conv"]}),
    ("by_path_norm", R.by_path(lambda name, p: name.startswith("norm")),
     lambda p: p["norm"]),
]


@pytest.mark.parametrize("name, mask, kept", MASKS, ids=[m[0] for m in MASKS])
def test_values_with_masks(name, mask, kept):
    params = tree()
    squares = total(kept(params), lambda a: (a * a).sum())
    absolutes = total(kept(params), lambda a: np.abs(a).sum())
    np.testing.assert_allclose(R.l2(params, mask), 0.5 * squares, rtol=1e-6)
    np.testing.assert_allclose(R.l1(params, mask), absolutes, rtol=1e-6)


def test_l2_gradient_is_weight_decay():
    params, grads = tree(), jax.tree.map(jnp.ones_like, tree())
    lam, lr = 0.1, 0.5

    def loss(p):
        data = sum(jnp.sum(g * x) for g, x in zip(jax.tree.leaves(grads), jax.tree.leaves(p)))
        return data + lam * R.l2(p, R.kernels_only)

    g = jax.grad(loss)(params)
    # d/dp (lam * l2) = lam * p on kernels, 0 on biases and scales.
    np.testing.assert_allclose(g["dense"]["kernel"], 1 + lam * params["dense"]["kernel"],
                               rtol=1e-6)
    np.testing.assert_allclose(g["dense"]["bias"], 1.0)
    # One SGD step on the penalised loss equals sgd after masked decoupled decay.
    tx = jt.chain(jt.add_decayed_weights(lam, mask=R.kernels_only), jt.sgd(lr))
    u, _ = tx.update(grads, tx.init(params), params)
    ours = jax.tree.map(lambda p, d: p - lr * d, params, g)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                 jt.apply_updates(params, u), ours)


def test_flax_params_jit_and_bf16():
    model = nn.Sequential([nn.Dense(8), nn.LayerNorm(), nn.Dense(2)])
    params = model.init(jax.random.key(0), jnp.ones((1, 4)))["params"]
    kernels = [params["layers_0"]["kernel"], params["layers_2"]["kernel"]]
    expected = 0.5 * sum(float(jnp.sum(k * k)) for k in kernels)
    penalty = jax.jit(lambda p: R.l2(p, R.kernels_only))(params)
    np.testing.assert_allclose(penalty, expected, rtol=1e-6)
    half = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    assert R.l2(half).dtype == jnp.float32 and R.l1(half).dtype == jnp.float32


BAD = [
    (lambda: R.l2(tree(), {"dense": True}), ValueError, r"l2: mask.*does not match"),
    (lambda: R.l1({"w": jnp.ones(3), "step": jnp.array(3)}), TypeError,
     r"l1: every penalised leaf must be floating point, got dtype int32"),
]


@pytest.mark.parametrize("call, error, match", BAD, ids=range(len(BAD)))
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
