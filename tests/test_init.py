"""jt.init: same draws as jax.nn.initializers, exact variances, flax kernel_init, errors."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jtricks as jt

JI = jax.nn.initializers
# The "rbg" key implementation compiles about 8x faster than threefry on CPU; the
# initialisers are implementation-agnostic (flax's own keys below are threefry).
KEY = jax.random.key(7, impl="rbg")
THREEFRY = jax.random.key(7)

# (name, jtricks initialiser, its jax.nn.initializers twin)
TWINS = [
    ("zeros", jt.init.zeros, JI.zeros),
    ("ones", jt.init.ones, JI.ones),
    ("constant", jt.init.constant(-0.3), JI.constant(-0.3)),
    ("uniform", jt.init.uniform(0.5), JI.uniform(0.5)),
    ("normal", jt.init.normal(0.2), JI.normal(0.2)),
    ("truncated_normal", jt.init.truncated_normal(0.2, -1.5, 2.5),
     JI.truncated_normal(0.2, lower=-1.5, upper=2.5)),
    ("lecun_normal", jt.init.lecun_normal(), JI.lecun_normal()),
    ("lecun_uniform", jt.init.lecun_uniform(), JI.lecun_uniform()),
    ("glorot_normal", jt.init.glorot_normal(), JI.glorot_normal()),
    ("glorot_uniform", jt.init.glorot_uniform(), JI.glorot_uniform()),
    ("xavier_normal", jt.init.xavier_normal(), JI.xavier_normal()),
    ("xavier_uniform", jt.init.xavier_uniform(), JI.xavier_uniform()),
    ("he_normal", jt.init.he_normal(), JI.he_normal()),
    ("he_uniform", jt.init.he_uniform(), JI.he_uniform()),
    ("kaiming_normal", jt.init.kaiming_normal(), JI.kaiming_normal()),
    ("kaiming_uniform", jt.init.kaiming_uniform(), JI.kaiming_uniform()),
    ("vs_fan_out_normal", jt.init.variance_scaling(0.5, "fan_out", "normal"),
     JI.variance_scaling(0.5, "fan_out", "normal")),
    ("vs_geo_uniform", jt.init.variance_scaling(3.0, "fan_geo_avg", "uniform"),
     JI.variance_scaling(3.0, "fan_geo_avg", "uniform")),
    ("vs_axes", jt.init.variance_scaling(1.0, "fan_in", "normal", in_axis=0, out_axis=1,
                                         batch_axis=3),
     JI.variance_scaling(1.0, "fan_in", "normal", in_axis=0, out_axis=1, batch_axis=3)),
    ("orthogonal", jt.init.orthogonal(1.5), JI.orthogonal(1.5)),
    ("orthogonal_axis0", jt.init.orthogonal(column_axis=0), JI.orthogonal(column_axis=0)),
]


@pytest.mark.parametrize("name, ours, theirs", TWINS, ids=[t[0] for t in TWINS])
def test_same_draws_as_jax(name, ours, theirs):
    shape = (3, 3, 4, 6)  # a conv kernel: fans include the receptive field
    # One compiled program per row: eager random ops would compile op by op.
    a, b = jax.jit(lambda k: (ours(k, shape), theirs(k, shape)))(KEY)
    assert a.dtype == b.dtype == jnp.float32 and a.shape == shape
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name, ours, theirs", [TWINS[5], TWINS[7], TWINS[14]],
                         ids=["truncated_normal", "lecun_uniform", "kaiming_normal"])
def test_same_draws_as_jax_bf16_dense(name, ours, theirs):
    a, b = jax.jit(lambda k: (ours(k, (5, 7), jnp.bfloat16),
                              theirs(k, (5, 7), jnp.bfloat16)))(KEY)
    assert a.dtype == b.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_orthogonal_bf16_is_the_fp32_draw_rounded():
    # jax's QR has no bf16 kernel on CPU; ours draws in fp32 and rounds.
    w = jt.init.orthogonal()(KEY, (6, 4), jnp.bfloat16)
    ref = JI.orthogonal()(KEY, (6, 4), jnp.float32).astype(jnp.bfloat16)
    assert w.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(w, np.float32), np.asarray(ref, np.float32))


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (2, 3, 8)])
def test_orthogonal_is_orthonormal(shape):
    w = jt.init.orthogonal(2.0)(KEY, shape)
    m = np.asarray(w).reshape(-1, shape[-1])
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    np.testing.assert_allclose(gram, 4.0 * np.eye(gram.shape[0]), atol=1e-5)


# (initialiser, expected variance for a (1024, 1024) kernel)
N = 1024
VARIANCES = [
    ("lecun_normal", jt.init.lecun_normal(), 1 / N),
    ("lecun_uniform", jt.init.lecun_uniform(), 1 / N),
    ("glorot_normal", jt.init.glorot_normal(), 2 / (N + N)),
    ("glorot_uniform", jt.init.glorot_uniform(), 2 / (N + N)),
    ("he_normal", jt.init.he_normal(), 2 / N),
    ("he_uniform", jt.init.he_uniform(), 2 / N),
    ("normal", jt.init.normal(0.1), 0.01),
    ("uniform", jt.init.uniform(0.5), 0.25 / 12),
]


@pytest.mark.parametrize("name, init, variance", VARIANCES, ids=[v[0] for v in VARIANCES])
def test_variance_on_a_large_draw(name, init, variance):
    key = jax.random.key(1, impl="rbg")
    w = np.asarray(jax.jit(lambda k: init(k, (N, N)))(key), np.float64)
    assert abs(w.var() / variance - 1) < 0.03, (name, w.var(), variance)
    if name != "uniform":
        assert abs(w.mean()) < 3 * np.sqrt(variance / w.size) * 3


def test_glorot_uses_both_fans_and_conv_receptive_field():
    # Rectangular dense kernel: glorot's variance is 2 / (fan_in + fan_out).
    w = jt.init.glorot_normal()(jax.random.key(2, impl="rbg"), (256, 1024))
    w = np.asarray(w, np.float64)
    assert abs(w.var() / (2 / (256 + 1024)) - 1) < 0.03
    # Conv kernel (kh, kw, c_in, c_out): fan_in = kh * kw * c_in.
    assert jt.init.compute_fans((3, 3, 64, 128)) == (3 * 3 * 64, 3 * 3 * 128)
    w = jt.init.he_normal()(jax.random.key(3, impl="rbg"), (3, 3, 64, 128))
    w = np.asarray(w, np.float64)
    assert abs(w.var() / (2 / (3 * 3 * 64)) - 1) < 0.03


def test_truncated_normal_stays_within_two_corrected_stds():
    w = np.asarray(jt.init.lecun_normal()(KEY, (512, 256)))
    bound = 2 * np.sqrt(1 / 512) / 0.87962566103423978
    assert np.abs(w).max() <= bound * (1 + 1e-6)


def test_as_flax_kernel_init_linen_and_nnx():
    x = jnp.ones((2, 5, 5, 3))
    for ours, theirs in [(jt.init.he_normal(), JI.he_normal())]:
        # linen Dense and Conv
        for make in (lambda k: nn.Dense(4, kernel_init=k),
                     lambda k: nn.Conv(4, (3, 3), kernel_init=k)):
            a = make(ours).init(THREEFRY, x)["params"]["kernel"]
            b = make(theirs).init(THREEFRY, x)["params"]["kernel"]
            np.testing.assert_array_equal(a, b)
        # nnx Linear and Conv
        a = nnx.Linear(3, 4, kernel_init=ours, rngs=nnx.Rngs(0)).kernel[...]
        b = nnx.Linear(3, 4, kernel_init=theirs, rngs=nnx.Rngs(0)).kernel[...]
        np.testing.assert_array_equal(a, b)
        a = nnx.Conv(3, 4, (3, 3), kernel_init=ours, rngs=nnx.Rngs(1)).kernel[...]
        b = nnx.Conv(3, 4, (3, 3), kernel_init=theirs, rngs=nnx.Rngs(1)).kernel[...]
        assert a.shape == (3, 3, 3, 4)
        np.testing.assert_array_equal(a, b)
    # bias_init and a bf16 param_dtype
    layer = nnx.Linear(3, 4, bias_init=jt.init.constant(0.5), param_dtype=jnp.bfloat16,
                       rngs=nnx.Rngs(0))
    assert layer.bias[...].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(layer.bias[...], np.float32), 0.5)


def test_jit_and_value_semantics():
    init = jt.init.he_uniform()
    np.testing.assert_array_equal(jax.jit(lambda k: init(k, (8, 4)))(KEY), init(KEY, (8, 4)))
    # Initialisers are configuration: equal when built alike, hashable, readable.
    assert jt.init.he_uniform() == init and hash(jt.init.he_uniform()) == hash(init)
    assert jt.init.he_uniform() != jt.init.he_normal()
    assert "fan_in" in repr(init) and "uniform" in repr(init)


BAD = [
    (lambda: jt.init.orthogonal()(KEY, (5,)), ValueError,
     r"orthogonal: needs .*rank >= 2.*\(5,\)"),
    (lambda: jt.init.lecun_normal()(KEY, (5,)), ValueError, r"rank >= 2.*\(5,\).*zeros"),
    (lambda: jt.init.he_normal()(KEY, ()), ValueError, r"rank >= 2"),
    (lambda: jt.init.lecun_normal()(None, (3, 3)), TypeError, r"key is None"),
    (lambda: jt.init.lecun_normal()(KEY, (3, 3), jnp.int32), TypeError,
     r"real floating dtype.*int32"),
    (lambda: jt.init.lecun_normal()(KEY, (3, -1)), ValueError, r"negative"),
    (lambda: jt.init.variance_scaling(1.0, "fan_max", "normal"), ValueError,
     r"mode must be one of.*'fan_max'"),
    (lambda: jt.init.variance_scaling(1.0, "fan_in", "cauchy"), ValueError,
     r"distribution must be one of.*'cauchy'"),
    (lambda: jt.init.variance_scaling(-1.0, "fan_in", "normal"), ValueError,
     r"scale must be > 0, got -1.0"),
    (lambda: jt.init.normal(0.0), ValueError, r"stddev must be > 0"),
    (lambda: jt.init.truncated_normal(1.0, 2.0, -2.0), ValueError, r"lower must be < upper"),
    (lambda: jt.init.variance_scaling(1.0, "fan_in", "normal", in_axis=5)(KEY, (3, 3)),
     ValueError, r"in_axis=5 is out of range"),
]


@pytest.mark.parametrize("call, error, match", BAD, ids=range(len(BAD)))
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
