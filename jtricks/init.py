"""Weight initialisers with the ``jax.nn.initializers`` signature.

Every factory here returns an initialiser ``f(key, shape, dtype=jnp.float32)`` that
plugs into flax (``nn.Dense(..., kernel_init=jt.init.he_normal())``,
``nnx.Linear(..., kernel_init=...)``) and into plain JAX code. Where
``jax.nn.initializers`` has a twin, ours draws the very same numbers for the same key.

Kernels are laid out ``(*receptive_field, fan_in_axis, fan_out_axis)``: a dense kernel
is ``(n_in, n_out)`` and a 2-D convolution kernel is ``(kh, kw, c_in, c_out)``, so

    fan_in  = kh * kw * c_in        fan_out = kh * kw * c_out

Why it matters (the lesson's point): a unit summing ``n`` inputs of unit variance
with weights of variance ``v`` has output variance ``n * v``. With N(0, 1) weights
(``v = 1``) the spread grows by ``sqrt(n)`` per layer; with ``v = 1 / n_in`` it stays.

The lesson's names and ours: its "uniform" and its gaussian N(0, 1/n) (std
1/sqrt(n_in)) are ``lecun_uniform()`` / ``lecun_normal()`` (variance 1 / fan_in),
Xavier is ``glorot_normal()`` / ``glorot_uniform()`` (2 / (fan_in + fan_out)), ReLU
networks take ``he_normal()`` / ``he_uniform()`` (2 / fan_in), and the bad N(0, 1)
is ``normal(1.0)``.

``uniform(scale)`` itself is jax's: values in ``[0, scale)``, not centred; the
lesson's centred uniform is ``lecun_uniform`` (or ``variance_scaling`` with the
variance you want).

Example:
    >>> import jax, jtricks as jt
    >>> w = jt.init.glorot_uniform()(jax.random.key(0), (784, 256))
    >>> w.shape
    (784, 256)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jtricks import hyperparams as hp
from jtricks import tree as jtree

__all__ = [
    "Initializer",
    "compute_fans",
    "zeros",
    "ones",
    "constant",
    "uniform",
    "normal",
    "truncated_normal",
    "variance_scaling",
    "lecun_normal",
    "lecun_uniform",
    "glorot_normal",
    "glorot_uniform",
    "xavier_normal",
    "xavier_uniform",
    "he_normal",
    "he_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "orthogonal",
]

# The standard deviation of a standard normal truncated to (-2, 2): dividing by it
# makes a truncated draw have exactly the requested variance.
_TRUNCATED_STD = 0.87962566103423978

_MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")
_DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")

Axes = int | Sequence[int]


# --- checks ----------------------------------------------------------------------------


def _check_call(where: str, key: Any, shape: Any, dtype: Any) -> tuple[tuple[int, ...], Any]:
    """Validates the arguments of an initialiser call; returns (shape, dtype)."""
    if key is None:
        raise TypeError(
            f"{where}: key is None. Pass a PRNG key, e.g. jax.random.key(0) "
            "(initialisers never use a hidden default key)."
        )
    try:
        shape = tuple(int(d) for d in (shape if isinstance(shape, Sequence) else (shape,)))
    except (TypeError, ValueError):
        raise TypeError(
            f"{where}: shape must be a tuple of ints, got {type(shape).__name__}: {shape!r}."
        ) from None
    if any(d < 0 for d in shape):
        raise ValueError(f"{where}: shape {shape} has a negative dimension.")
    if dtype is None:
        dtype = jnp.float32
    try:
        dtype = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"{where}: dtype must be a NumPy/JAX dtype, got {dtype!r}.") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{where}: dtype must be a real floating dtype (float32, bfloat16, ...), got "
            f"{dtype}. Initialise in a float dtype and cast afterwards if needed."
        )
    return shape, dtype


def _axes(shape: tuple[int, ...], axes: Axes, name: str, where: str) -> tuple[int, ...]:
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    out = []
    for a in axes:
        if not -len(shape) <= a < len(shape):
            raise ValueError(
                f"{where}: {name}={a} is out of range for a weight of shape {shape} "
                f"(rank {len(shape)})."
            )
        out.append(a % len(shape))
    return tuple(out)


def compute_fans(shape: Sequence[int], in_axis: Axes = -2, out_axis: Axes = -1,
                 batch_axis: Axes = (), *, where: str = "compute_fans") -> tuple[float, float]:
    """``(fan_in, fan_out)`` of a kernel of ``shape``.

    Axes that are neither ``in_axis``, ``out_axis`` nor ``batch_axis`` form the
    receptive field ``r`` (a convolution's spatial axes); then
    ``fan_in = prod(shape[in_axis]) * r`` and ``fan_out = prod(shape[out_axis]) * r``.

    Raises:
        ValueError: for a shape of rank < 2 with the default axes (a bias or a scalar
            has no fan-in/fan-out: initialise it with ``zeros``/``constant``), or for
            axes out of range.
    """
    shape = tuple(shape)
    if len(shape) < 2 and in_axis == -2:
        raise ValueError(
            f"{where}: a fan-in/fan-out initialiser needs a kernel of rank >= 2 laid out "
            f"(..., fan_in, fan_out), got shape {shape}. For a bias or a scale use "
            "jt.init.zeros / jt.init.ones / jt.init.constant(v), or pass in_axis and "
            "out_axis explicitly."
        )
    ins = _axes(shape, in_axis, "in_axis", where)
    outs = _axes(shape, out_axis, "out_axis", where)
    batch = _axes(shape, batch_axis, "batch_axis", where)
    in_size = math.prod(shape[a] for a in ins)
    out_size = math.prod(shape[a] for a in outs)
    batch_size = math.prod(shape[a] for a in batch)
    receptive = math.prod(shape) / in_size / out_size / batch_size
    return in_size * receptive, out_size * receptive


# --- the initialiser objects -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Initializer:
    """Base of the initialisers: a frozen, hashable callable ``f(key, shape, dtype)``.

    Not a pytree: an initialiser is configuration, so flax keeps it as static module
    metadata and two initialisers built from the same numbers compare equal.
    """

    def __call__(self, key: jax.Array, shape: Sequence[int],
                 dtype: Any = jnp.float32) -> jax.Array:
        shape, dtype = _check_call(type(self).__name__, key, shape, dtype)
        if isinstance(key, jax.core.Tracer) or not _static(self):
            return self._draw(key, shape, dtype)  # traced: inlined in the caller's program
        return _draw_jit(self, shape, dtype, key)  # one program per shape, not per op

    def _draw(self, key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
        raise NotImplementedError


def _static(init: Initializer) -> bool:
    """Whether every field is plain Python (``init`` can be a static ``jit`` argument)."""
    plain = (bool, int, float, str, type(None))
    flat = jax.tree.leaves([getattr(init, f.name) for f in dataclasses.fields(init)])
    return all(isinstance(v, plain) for v in flat)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _draw_jit(init: Initializer, shape: tuple[int, ...], dtype: Any, key: jax.Array):
    return init._draw(key, shape, dtype)


@dataclasses.dataclass(frozen=True)
class Constant(Initializer):
    """Every entry equals ``value``; the key is ignored."""

    value: Any = 0.0

    def _draw(self, key, shape, dtype):
        del key
        return jnp.full(shape, self.value, dtype)


@dataclasses.dataclass(frozen=True)
class Uniform(Initializer):
    """``U[0, scale)``: variance ``scale**2 / 12``."""

    scale: Any = 1e-2

    def _draw(self, key, shape, dtype):
        return jax.random.uniform(key, shape, dtype) * jnp.array(self.scale, dtype)


@dataclasses.dataclass(frozen=True)
class Normal(Initializer):
    """``N(0, stddev**2)``."""

    stddev: Any = 1e-2

    def _draw(self, key, shape, dtype):
        return jax.random.normal(key, shape, dtype) * jnp.array(self.stddev, dtype)


@dataclasses.dataclass(frozen=True)
class TruncatedNormal(Initializer):
    """``stddev * z`` with ``z`` a standard normal truncated to ``(lower, upper)``."""

    stddev: Any = 1e-2
    lower: Any = -2.0
    upper: Any = 2.0

    def _draw(self, key, shape, dtype):
        z = jax.random.truncated_normal(key, self.lower, self.upper, shape, dtype)
        return z * jnp.array(self.stddev, dtype)


@dataclasses.dataclass(frozen=True)
class VarianceScaling(Initializer):
    """Zero-mean draws of variance ``scale / n(mode)``; see :func:`variance_scaling`."""

    scale: Any = 1.0
    mode: str = "fan_in"
    distribution: str = "truncated_normal"
    in_axis: Axes = -2
    out_axis: Axes = -1
    batch_axis: Axes = ()

    def _draw(self, key, shape, dtype):
        where = f"variance_scaling(mode={self.mode!r}, distribution={self.distribution!r})"
        fan_in, fan_out = compute_fans(shape, self.in_axis, self.out_axis, self.batch_axis,
                                       where=where)
        n = {
            "fan_in": fan_in,
            "fan_out": fan_out,
            "fan_avg": (fan_in + fan_out) / 2,
            "fan_geo_avg": (fan_in * fan_out) ** 0.5,
        }[self.mode]
        variance = jnp.array(self.scale / n, dtype)
        if self.distribution == "truncated_normal":
            std = jnp.sqrt(variance) / jnp.array(_TRUNCATED_STD, dtype)
            return jax.random.truncated_normal(key, -2, 2, shape, dtype) * std
        if self.distribution == "normal":
            return jax.random.normal(key, shape, dtype) * jnp.sqrt(variance)
        # U[-a, a] has variance a**2 / 3, so a = sqrt(3 * variance).
        return jax.random.uniform(key, shape, dtype, -1) * jnp.sqrt(3 * variance)


@dataclasses.dataclass(frozen=True)
class Orthogonal(Initializer):
    """A (semi-)orthogonal matrix times ``scale``; see :func:`orthogonal`."""

    scale: Any = 1.0
    column_axis: int = -1

    def _draw(self, key, shape, dtype):
        if len(shape) < 2:
            raise ValueError(
                f"orthogonal: needs a shape of rank >= 2 (rows and columns), got {shape}. "
                "A vector cannot be orthogonal; use jt.init.zeros/ones/normal for it."
            )
        (col,) = _axes(shape, self.column_axis, "column_axis", "orthogonal")
        if 0 in shape:
            return jnp.zeros(shape, dtype)
        n_cols = shape[col]
        n_rows = math.prod(shape) // n_cols
        # QR has no half-precision kernel on every backend: draw in fp32, then cast.
        draw_dtype = jtree.acc_dtype(dtype)
        q = jax.random.orthogonal(key, n_rows, (), draw_dtype, n_cols).astype(dtype)
        q = q.reshape((*(d for i, d in enumerate(shape) if i != col), n_cols))
        return jnp.array(self.scale, dtype) * jnp.moveaxis(q, -1, col)


# --- factories -----------------------------------------------------------------------


def zeros(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """All zeros (the key is ignored). The usual bias initialiser."""
    return Constant(0.0)(key, shape, dtype)


def ones(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """All ones (the key is ignored). The usual normalisation-scale initialiser."""
    return Constant(1.0)(key, shape, dtype)


def constant(value: Any) -> Constant:
    """Every entry equals ``value`` (variance 0; the key is ignored).

    Example:
        >>> b = jt.init.constant(0.1)(jax.random.key(0), (3,))
    """
    hp.check_range("constant", "value", value)
    return Constant(value)


def uniform(scale: float = 1e-2) -> Uniform:
    """``U[0, scale)`` as ``jax.nn.initializers.uniform``: mean ``scale / 2``,
    variance ``scale**2 / 12``. Not centred: for the lesson's centred uniform use
    :func:`lecun_uniform` or :func:`glorot_uniform`.
    """
    hp.check_positive("uniform", "scale", scale)
    return Uniform(scale)


def normal(stddev: float = 1e-2) -> Normal:
    """``N(0, stddev**2)``: variance ``stddev**2`` whatever the shape.

    ``normal(1.0)`` is the lesson's bad N(0, 1): a layer with ``n`` inputs multiplies
    the activations' standard deviation by about ``sqrt(n)``.
    """
    hp.check_positive("normal", "stddev", stddev)
    return Normal(stddev)


def truncated_normal(stddev: float = 1e-2, lower: float = -2.0,
                     upper: float = 2.0) -> TruncatedNormal:
    """``stddev * z``, ``z`` standard normal truncated to ``(lower, upper)``, as
    ``jax.nn.initializers.truncated_normal``. The variance is *below* ``stddev**2``
    (about ``0.774 * stddev**2`` for the default bounds): no correction is applied.
    """
    hp.check_positive("truncated_normal", "stddev", stddev)
    if hp.concrete(lower) is not None and hp.concrete(upper) is not None:
        hp.check("truncated_normal", "lower", lower, lambda lo: lo < np.asarray(upper),
                 f"< upper ({upper})")
    return TruncatedNormal(stddev, lower, upper)


def variance_scaling(scale: float, mode: str, distribution: str, *, in_axis: Axes = -2,
                     out_axis: Axes = -1, batch_axis: Axes = ()) -> VarianceScaling:
    """Zero-mean draws whose variance is exactly ``scale / n``.

    ``n`` depends on ``mode``, with fans from :func:`compute_fans`::

        fan_in       n = fan_in
        fan_out      n = fan_out
        fan_avg      n = (fan_in + fan_out) / 2
        fan_geo_avg  n = sqrt(fan_in * fan_out)

    and ``distribution`` picks the shape of the draw, each with variance ``scale / n``:

    * ``"truncated_normal"``: ``s * z / 0.8796...``, ``z`` standard normal truncated
      to (-2, 2) (so values lie within 2.27 standard deviations), ``s = sqrt(scale/n)``;
    * ``"normal"``: ``N(0, scale / n)``;
    * ``"uniform"``: ``U[-a, a]`` with ``a = sqrt(3 * scale / n)``.

    Same numbers as ``jax.nn.initializers.variance_scaling`` for the same key.

    Args:
        scale: the variance multiplier, > 0 (1 for linear/tanh, 2 for ReLU).
        mode: ``"fan_in"``, ``"fan_out"``, ``"fan_avg"`` or ``"fan_geo_avg"``.
        distribution: ``"truncated_normal"``, ``"normal"`` or ``"uniform"``.
        in_axis: the axis (or axes) of the fan-in; default the second-to-last.
        out_axis: the axis (or axes) of the fan-out; default the last.
        batch_axis: axes that count in neither fan; default none.

    Example:
        >>> init = jt.init.variance_scaling(2.0, "fan_in", "normal")
        >>> w = init(jax.random.key(0), (3, 3, 16, 32))  # var 2 / (3 * 3 * 16)
    """
    hp.check_positive("variance_scaling", "scale", scale)
    if mode not in _MODES:
        raise ValueError(f"variance_scaling: mode must be one of {_MODES}, got {mode!r}.")
    if distribution not in _DISTRIBUTIONS:
        raise ValueError(
            f"variance_scaling: distribution must be one of {_DISTRIBUTIONS}, got "
            f"{distribution!r}."
        )
    return VarianceScaling(scale, mode, distribution, in_axis, out_axis, batch_axis)


def lecun_normal(**axes: Any) -> VarianceScaling:
    """Truncated normal with variance ``1 / fan_in`` (LeCun 1998).

    Keeps a zero-mean, unit-variance input at unit variance through a linear layer:
    the lesson's "gaussian N(0, 1/n)" and "std 1/sqrt(n_in)". Keyword ``axes``
    (``in_axis``, ``out_axis``, ``batch_axis``) go to :func:`variance_scaling`.
    """
    return variance_scaling(1.0, "fan_in", "truncated_normal", **axes)


def lecun_uniform(**axes: Any) -> VarianceScaling:
    """``U[-a, a]``, ``a = sqrt(3 / fan_in)``: variance ``1 / fan_in``."""
    return variance_scaling(1.0, "fan_in", "uniform", **axes)


def glorot_normal(**axes: Any) -> VarianceScaling:
    """Truncated normal with variance ``2 / (fan_in + fan_out)`` (Glorot & Bengio 2010).

    The lesson's Xavier: a compromise that keeps the spread of activations (forward,
    ``fan_in``) and of gradients (backward, ``fan_out``) in range.
    """
    return variance_scaling(1.0, "fan_avg", "truncated_normal", **axes)


def glorot_uniform(**axes: Any) -> VarianceScaling:
    """``U[-a, a]``, ``a = sqrt(6 / (fan_in + fan_out))``: variance
    ``2 / (fan_in + fan_out)``. Flax's default ``Dense`` kernel is ``lecun_normal``."""
    return variance_scaling(1.0, "fan_avg", "uniform", **axes)


def he_normal(**axes: Any) -> VarianceScaling:
    """Truncated normal with variance ``2 / fan_in`` (He et al. 2015), for ReLU layers:
    a ReLU zeroes half its inputs, halving the variance, and the factor 2 restores it."""
    return variance_scaling(2.0, "fan_in", "truncated_normal", **axes)


def he_uniform(**axes: Any) -> VarianceScaling:
    """``U[-a, a]``, ``a = sqrt(6 / fan_in)``: variance ``2 / fan_in``."""
    return variance_scaling(2.0, "fan_in", "uniform", **axes)


xavier_normal = glorot_normal
xavier_uniform = glorot_uniform
kaiming_normal = he_normal
kaiming_uniform = he_uniform


def orthogonal(scale: float = 1.0, column_axis: int = -1) -> Orthogonal:
    """A uniformly random (semi-)orthogonal matrix times ``scale`` (Saxe et al. 2014).

    The kernel is viewed as a matrix with ``shape[column_axis]`` columns and the
    product of the other axes as rows; the smaller side is orthonormal, so every
    singular value equals ``scale`` and a linear stack neither grows nor shrinks the
    signal. Entry variance: ``scale**2 / max(rows, cols)``. Same numbers as
    ``jax.nn.initializers.orthogonal``.

    Raises:
        ValueError: when called with a shape of rank < 2.
    """
    hp.check_range("orthogonal", "scale", scale)
    return Orthogonal(scale, int(column_axis))
