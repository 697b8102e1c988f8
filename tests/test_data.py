"""jt.data: scikit-learn parity, inversion, constant features, pytrees under jit, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.preprocessing import MinMaxScaler, StandardScaler

import jtricks as jt


def data(n=200, f=5, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, f)) * rng.uniform(0.1, 50, size=f)
            + rng.uniform(-100, 100, size=f)).astype(np.float32)


@pytest.mark.parametrize("feature_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_minmax_matches_sklearn_and_inverts(feature_range):
    x, x_new = data(), data(seed=1)
    scaler = jt.data.fit_minmax(x, feature_range)
    ref = MinMaxScaler(feature_range=feature_range).fit(x.astype(np.float64))
    y = scaler.apply(x)
    np.testing.assert_allclose(y, ref.transform(x), atol=1e-6)
    np.testing.assert_allclose(scaler.apply(x_new), ref.transform(x_new), atol=1e-5)
    lo, hi = feature_range
    np.testing.assert_allclose(np.asarray(y).min(0), lo, atol=1e-6)
    np.testing.assert_allclose(np.asarray(y).max(0), hi, atol=1e-6)
    np.testing.assert_allclose(scaler.invert(y), x, rtol=1e-5, atol=1e-4)


def test_standardize_matches_sklearn_and_inverts():
    x = data()
    scaler = jt.data.fit_standardize(x)
    ref = StandardScaler().fit(x.astype(np.float64))
    y = scaler.apply(x)
    np.testing.assert_allclose(y, ref.transform(x), atol=2e-5)
    np.testing.assert_allclose(np.asarray(y).mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y).std(0), 1, atol=1e-5)
    np.testing.assert_allclose(scaler.invert(y), x, rtol=1e-5, atol=1e-4)


def test_constant_feature_maps_to_a_defined_value():
    x = data(f=3)
    x[:, 1] = 0.1  # constant, and not exactly representable: rounding must not matter
    x[:, 2] = 0.0
    for scaler, expected in [(jt.data.fit_minmax(x, (-1.0, 1.0)), -1.0),
                             (jt.data.fit_standardize(x), 0.0)]:
        y = np.asarray(scaler.apply(x))
        assert np.isfinite(y).all()
        np.testing.assert_array_equal(y[:, 1:], expected)
        np.testing.assert_allclose(scaler.invert(y)[:, 1:], x[:, 1:], atol=1e-7)


def test_scalers_are_pytrees_usable_inside_jit():
    x = data()
    scaler = jt.data.fit_standardize(x)
    assert len(jax.tree.leaves(scaler)) == 2
    apply = jax.jit(lambda s, b: s.apply(b))
    np.testing.assert_allclose(apply(scaler, x[:8]), scaler.apply(x[:8]), rtol=1e-6)
    # Fitting inside jit, and a different scaler through the same compiled function.
    fitted = jax.jit(jt.data.fit_minmax)(x)
    np.testing.assert_allclose(fitted.scale, jt.data.fit_minmax(x).scale, rtol=1e-6)
    out = jax.jit(lambda s, b: s.invert(s.apply(b)))(fitted, x[:8])
    np.testing.assert_allclose(out, x[:8], rtol=1e-5, atol=1e-4)
    # vmap over a stack of scalers (one per data set).
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), scaler,
                           jt.data.fit_standardize(data(seed=3)))
    y = jax.vmap(lambda s: s.apply(x[:4]))(stacked)
    np.testing.assert_allclose(y[0], scaler.apply(x[:4]), rtol=1e-6)


def test_uint8_images_global_and_per_channel():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, size=(16, 4, 4, 3), dtype=np.uint8)
    img[0, 0, 0] = [0, 0, 0]
    img[0, 0, 1] = [255, 255, 255]
    glob = jt.data.fit_minmax(img, axis=None)
    y = glob.apply(img)
    assert y.dtype == jnp.float32 and glob.scale.shape == ()
    np.testing.assert_allclose(y, img / 255.0, atol=1e-6)
    per_channel = jt.data.fit_standardize(img, axis=(0, 1, 2))
    assert per_channel.mean.shape == (3,)
    z = np.asarray(per_channel.apply(img)).reshape(-1, 3)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-5)


BAD = [
    (lambda: jt.data.fit_minmax(np.zeros((0, 3))), ValueError,
     r"fit_minmax: x has no samples to fit on \(shape \(0, 3\)"),
    (lambda: jt.data.fit_standardize(np.zeros((0, 3))), ValueError,
     r"fit_standardize: x has no samples"),
    (lambda: jt.data.fit_minmax(data(), (1.0, 0.0)), ValueError,
     r"feature_range must have low < high, got \(1.0, 0.0\)"),
    (lambda: jt.data.fit_standardize(np.array([[1.0, np.nan], [2.0, 3.0]])), ValueError,
     r"1 non-finite value"),
    (lambda: jt.data.fit_minmax(data(), axis=1), ValueError,
     r"axis must be the leading \(sample\) axes"),
    (lambda: jt.data.fit_minmax(np.float32(3.0)), ValueError, r"must have a sample axis"),
    (lambda: jt.data.fit_standardize(data(f=5)).apply(np.ones((4, 3))), ValueError,
     r"x of shape \(4, 3\) does not end with the fitted feature shape \(5,\)"),
    (lambda: jt.data.fit_minmax(np.array(["a", "b"])), TypeError, r"real numbers"),
]


@pytest.mark.parametrize("call, error, match", BAD, ids=range(len(BAD)))
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
