"""jt.layers: flax parity (BatchNorm, LayerNorm, WeightNorm, Dropout), statistics,
fp32 statistics for half inputs, cross-device batch statistics, bad input."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtricks as jt

L = jt.layers
KEY = jax.random.key(0, impl="rbg")  # fast to compile; layers are key-agnostic


def batches(shape, n, seed=0):
    """``n`` seeded batches with non-trivial mean and spread per feature."""
    rng = np.random.default_rng(seed)
    c = shape[-1]
    loc, scale = rng.normal(size=c), rng.uniform(0.5, 2.0, size=c)
    return [jnp.asarray(rng.normal(size=shape) * scale + loc, jnp.float32) for _ in range(n)]


@pytest.mark.parametrize("shape", [(32, 5), (4, 6, 6, 3)], ids=["NC", "NHWC"])
def test_batch_norm_matches_flax_over_several_steps(shape):
    xs = batches(shape, 4)
    flax_bn = nn.BatchNorm(momentum=0.9, epsilon=1e-5)
    variables = flax_bn.init(jax.random.key(0), xs[0], use_running_average=False)
    # Use a non-trivial scale and bias in both.
    c = shape[-1]
    scale, bias = jnp.linspace(0.5, 1.5, c), jnp.linspace(-1.0, 1.0, c)
    variables = {"params": {"scale": scale, "bias": bias},
                 "batch_stats": variables["batch_stats"]}
    params, state = L.batch_norm_init(c)
    params = {"scale": scale, "bias": bias}
    for x in xs[:3]:
        y_ref, upd = flax_bn.apply(variables, x, use_running_average=False,
                                   mutable=["batch_stats"])
        variables = {"params": variables["params"], "batch_stats": upd["batch_stats"]}
        y, state = L.batch_norm(params, state, x, training=True, momentum=0.9)
        np.testing.assert_allclose(y, y_ref, atol=1e-6, rtol=1e-6)
        np.testing.assert_allclose(state["mean"], upd["batch_stats"]["mean"], atol=1e-6)
        np.testing.assert_allclose(state["var"], upd["batch_stats"]["var"], atol=1e-6)
    # Inference uses the running statistics and leaves them alone.
    y_ref = flax_bn.apply(variables, xs[3], use_running_average=True)
    y, new_state = L.batch_norm(params, state, xs[3], training=False)
    np.testing.assert_allclose(y, y_ref, atol=1e-6, rtol=1e-6)
    assert new_state is state


def test_batch_norm_training_output_is_standardised():
    (x,) = batches((256, 4, 4, 6), 1, seed=1)
    y, state = L.batch_norm(*L.batch_norm_init(6), x, training=True)
    flat = np.asarray(y).reshape(-1, 6)
    np.testing.assert_allclose(flat.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(flat.std(0), 1.0, atol=1e-3)  # sqrt(var / (var + eps))
    # Running stats moved 1% of the way to the (biased) batch statistics.
    xf = np.asarray(x, np.float64).reshape(-1, 6)
    np.testing.assert_allclose(state["mean"], 0.01 * xf.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state["var"], 0.99 + 0.01 * xf.var(0), rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_batch_norm_half_inputs_use_fp32_statistics(dtype):
    # A large offset: E[x^2] - E[x]^2 in half precision would be garbage.
    (x,) = batches((64, 8), 1, seed=2)
    x = (x + 30.0).astype(dtype)
    params, state = L.batch_norm_init(8)
    y, new = L.batch_norm(params, state, x, training=True)
    y32, new32 = L.batch_norm(params, state, x.astype(jnp.float32), training=True)
    assert y.dtype == dtype and new["mean"].dtype == new["var"].dtype == jnp.float32
    # Identical statistics to fp32 on the same values; y is the fp32 result rounded.
    np.testing.assert_array_equal(new["mean"], new32["mean"])
    np.testing.assert_array_equal(new["var"], new32["var"])
    np.testing.assert_array_equal(np.asarray(y, np.float32),
                                  np.asarray(y32.astype(dtype), np.float32))


def test_batch_norm_axis_name_gives_global_statistics_under_vmap():
    (x,) = batches((4, 8, 3), 1, seed=3)  # 4 "devices" with 8 examples each
    params, state = L.batch_norm_init(3)
    params = {"scale": jnp.array([1.0, 2.0, 0.5]), "bias": jnp.array([0.0, 1.0, -1.0])}

    def shard(x):
        return L.batch_norm(params, state, x, training=True, axis_name="devices")

    y, new = jax.vmap(shard, axis_name="devices")(x)
    y_ref, ref = L.batch_norm(params, state, x.reshape(32, 3), training=True)
    np.testing.assert_allclose(y.reshape(32, 3), y_ref, atol=1e-6)
    for k in ("mean", "var"):  # every shard holds the same, global, running statistics
        np.testing.assert_allclose(new[k], jnp.broadcast_to(ref[k], (4, 3)), atol=1e-7)
    # One example per mapped index (x of shape (C,)) also works with axis_name.
    y1, _ = jax.vmap(shard, axis_name="devices")(x.reshape(32, 3))
    np.testing.assert_allclose(y1, y_ref, atol=1e-6)


def test_batch_norm_jit_grad_and_traced_momentum():
    (x,) = batches((16, 4), 1, seed=4)
    params, state = L.batch_norm_init(4)

    @jax.jit
    def step(params, state, x, momentum):
        def loss(p):
            y, s = L.batch_norm(p, state, x, training=True, momentum=momentum)
            return jnp.sum(y[:, 0] ** 3), s
        return jax.grad(loss, has_aux=True)(params)

    g, s = step(params, state, x, 0.5)
    _, s_ref = L.batch_norm(params, state, x, training=True, momentum=0.5)
    np.testing.assert_allclose(s["mean"], s_ref["mean"], rtol=1e-6)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(g))
    assert float(jnp.abs(g["bias"][0])) > 0 and float(jnp.abs(g["bias"][1])) == 0


@pytest.mark.parametrize("shape", [(6, 10), (2, 3, 16)])
def test_layer_norm_matches_flax(shape):
    (x,) = batches(shape, 1, seed=5)
    c = shape[-1]
    params = {"scale": jnp.linspace(0.5, 2.0, c), "bias": jnp.linspace(-1, 1, c)}
    y_ref = nn.LayerNorm().apply({"params": params}, x)
    np.testing.assert_allclose(L.layer_norm(params, x), y_ref, atol=1e-6, rtol=1e-6)
    y = L.layer_norm(L.layer_norm_init(c), x)  # per example: mean 0, std ~1
    np.testing.assert_allclose(np.asarray(y).mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y).std(-1), 1, atol=1e-4)
    assert L.layer_norm(L.layer_norm_init(c), x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_weight_norm_matches_flax_and_init_reproduces_kernel():
    x = batches((5, 3), 1, seed=6)[0]
    module = nn.WeightNorm(nn.Dense(4))
    variables = module.init(jax.random.key(1), x)["params"]
    g = jnp.array([0.5, 1.0, 2.0, 3.0])
    variables["layer_instance/kernel/scale"] = g
    y_ref = module.apply({"params": variables}, x)
    v, b = variables["layer_instance"]["kernel"], variables["layer_instance"]["bias"]
    np.testing.assert_allclose(x @ L.weight_norm(v, g) + b, y_ref, atol=1e-6, rtol=1e-6)
    # Each output unit's incoming weights have norm g.
    w = L.weight_norm(v, g)
    np.testing.assert_allclose(jnp.linalg.norm(w, axis=0), g, rtol=1e-6)
    # weight_norm_init starts exactly at the given kernel (dense and conv).
    for shape in [(3, 4), (3, 3, 2, 5)]:
        kernel = jt.init.he_normal()(KEY, shape)
        p = L.weight_norm_init(kernel)
        assert p["g"].shape == (shape[-1],)
        np.testing.assert_allclose(L.weight_norm(p["v"], p["g"]), kernel, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rate, broadcast", [(0.3, ()), (0.5, (0,))])
def test_dropout_matches_flax(rate, broadcast):
    x = batches((8, 6), 1, seed=7)[0]
    y_ref = nn.Dropout(rate, broadcast_dims=broadcast).apply({}, x, deterministic=False,
                                                             rng=KEY)
    y = L.dropout(KEY, x, rate, training=True, broadcast_axes=broadcast)
    np.testing.assert_array_equal(y, y_ref)
    # Not training: the identity, and no key needed.
    np.testing.assert_array_equal(L.dropout(None, x, rate, training=False), x)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_keeps_one_minus_rate_and_preserves_the_mean(rate):
    x = jnp.full((1_000_000,), 2.0)
    y = np.asarray(L.dropout(jax.random.key(8, impl="rbg"), x, rate, training=True))
    kept = np.count_nonzero(y) / y.size
    assert abs(kept / (1 - rate) - 1) < 0.01
    assert abs(y.mean() / 2.0 - 1) < 0.01
    np.testing.assert_allclose(y[y != 0], 2.0 / (1 - rate), rtol=1e-6)


def test_dropout_traced_rate_and_dtype():
    x = jnp.ones((4, 4), jnp.bfloat16)
    f = jax.jit(lambda k, x, r: L.dropout(k, x, r, training=True))
    y = f(KEY, x, 0.25)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(y, L.dropout(KEY, x, 0.25, training=True))


BAD = [
    (lambda: L.dropout(KEY, jnp.ones(3), 1.0, training=True), ValueError,
     r"dropout: rate must be in \[0, 1\), got 1.0"),
    (lambda: L.dropout(KEY, jnp.ones(3), -0.1, training=True), ValueError,
     r"rate must be in \[0, 1\), got -0.1"),
    (lambda: L.dropout(None, jnp.ones(3), 0.5, training=True), TypeError,
     r"training=True needs a PRNG key, got None"),
    (lambda: jax.jit(lambda t: L.dropout(KEY, jnp.ones(3), 0.5, training=t))(True),
     TypeError, r"training must be a Python bool.*static_argnames"),
    (lambda: L.batch_norm(*L.batch_norm_init(3), jnp.ones((8, 5)), training=True),
     ValueError, r"feature count mismatch.*expects x with 3 features.*got x of shape \(8, 5\)"),
    (lambda: L.batch_norm(L.batch_norm_init(5)[0], L.batch_norm_init(3)[1], jnp.ones((8, 5)),
                          training=False),
     ValueError, r"state\['mean'\] has shape \(3,\).*expects x with 3 features"),
    (lambda: L.batch_norm(*L.batch_norm_init(3), jnp.ones((3,)), training=True),
     ValueError, r"training needs a batch axis"),
    (lambda: L.batch_norm(*L.batch_norm_init(3), jnp.ones((4, 3)), training=True,
                          momentum=1.5), ValueError, r"momentum must be in \[0, 1\], got 1.5"),
    (lambda: L.batch_norm({"scale": jnp.ones(3)}, L.batch_norm_init(3)[1], jnp.ones((4, 3)),
                          training=True), ValueError, r"params has no 'bias' entry"),
    (lambda: L.batch_norm_init(0), ValueError, r"features must be a positive int .*got 0"),
    (lambda: L.layer_norm(L.layer_norm_init(4), jnp.ones((2, 6))), ValueError,
     r"layer_norm: feature count mismatch.*expects x with 4 features"),
    (lambda: L.layer_norm(L.layer_norm_init(4), jnp.ones((2, 4)), eps=-1.0), ValueError,
     r"eps must be >= 0, got -1.0"),
    (lambda: L.weight_norm(jnp.ones((3, 4)), jnp.ones(3)), ValueError,
     r"expected shape \(4,\) for v of shape \(3, 4\), got \(3,\)"),
    (lambda: L.weight_norm_init(jnp.ones(4)), ValueError, r"rank >= 2.*got shape \(4,\)"),
]


@pytest.mark.parametrize("call, error, match", BAD, ids=range(len(BAD)))
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
