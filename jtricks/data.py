"""Input scaling: into [0, 1] or [-1, 1], or to zero mean and unit variance.

The lesson's "keep values in a sane range": floating point loses a small addend next
to a large one (``1e-10 + 1e10 == 1e10``) and most activations are non-linear only
around [-1, 1], so inputs should be scaled before training.

A scaler is fitted once on the training data and then applied to every batch (and
inverted to read predictions back in the original units). Scalers are pytrees
(their statistics are leaves), so they can be passed into a jitted step, saved with
the rest of the training state, and used under ``vmap``.

Example:
    >>> scaler = jt.data.fit_standardize(x_train)
    >>> x_train, x_test = scaler.apply(x_train), scaler.apply(x_test)
    >>> y = scaler.invert(scaler.apply(x_test))        # == x_test
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Struct

__all__ = ["MinMaxScaler", "StandardScaler", "fit_minmax", "fit_standardize"]

# A feature whose spread is below this many ulps of its magnitude is constant: its
# values are the same number up to rounding, and dividing by the spread would
# amplify rounding noise into O(1) values.
_CONSTANT_ULPS = 10.0


def _sample_axes(where: str, x: jax.Array, axis: int | Sequence[int] | None) -> tuple[int, ...]:
    """The axes statistics are taken over: ``axis`` names them, and they must be a
    leading prefix of ``x``'s axes so the statistics broadcast over new batches."""
    if x.ndim == 0:
        raise ValueError(f"{where}: x must have a sample axis, got a scalar {x!r}.")
    if axis is None:
        axes = tuple(range(x.ndim))
    else:
        raw = (axis,) if isinstance(axis, int) else tuple(axis)
        try:
            axes = tuple(sorted(int(a) % x.ndim for a in raw if -x.ndim <= int(a) < x.ndim))
        except TypeError:
            raise TypeError(f"{where}: axis must be an int, a tuple of ints or None, "
                            f"got {axis!r}.") from None
        if len(axes) != len(raw) or len(set(axes)) != len(axes):
            raise ValueError(f"{where}: axis {axis!r} is out of range or repeated for x of "
                             f"shape {x.shape}.")
        if axes != tuple(range(len(axes))):
            raise ValueError(
                f"{where}: axis must be the leading (sample) axes, e.g. 0 or (0, 1, 2), "
                f"got {axis!r} for x of shape {x.shape}. Move the sample axes to the front "
                "(jnp.moveaxis) so statistics broadcast over new batches."
            )
    if any(x.shape[a] == 0 for a in axes):
        raise ValueError(
            f"{where}: x has no samples to fit on (shape {x.shape}, reducing over axes "
            f"{axes}). Fit on a non-empty training set."
        )
    return axes


def _float_input(where: str, x: ArrayLike) -> jax.Array:
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        dtype = np.asarray(x).dtype
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
            or dtype == jnp.bool_):
        raise TypeError(f"{where}: x must hold real numbers, got dtype {dtype}.")
    x = jnp.asarray(x)
    # Integers (uint8 pixels) and half floats are scaled in fp32; wider floats stay wide.
    return x.astype(jtree.acc_dtype(x))


def _is_constant(spread: jax.Array, magnitude: jax.Array) -> jax.Array:
    eps = jnp.finfo(spread.dtype).eps
    return spread <= _CONSTANT_ULPS * eps * magnitude


def _check_trailing(where: str, x: jax.Array, stat: jax.Array) -> None:
    shape = tuple(stat.shape)
    if shape and tuple(x.shape[x.ndim - len(shape):]) != shape:
        raise ValueError(
            f"{where}: x of shape {x.shape} does not end with the fitted feature shape "
            f"{shape}. Pass data laid out like the data the scaler was fitted on "
            "(samples first)."
        )


class MinMaxScaler(Struct):
    """``y = (x - data_min) * scale + low``; see :func:`fit_minmax`.

    Fields (leaves): ``data_min``, ``scale`` (per feature) and ``low`` (the target
    range's lower end).
    """

    data_min: Any
    scale: Any
    low: Any

    def apply(self, x: ArrayLike) -> jax.Array:
        """Maps ``x`` into the fitted range (values beyond the fitted data go beyond it)."""
        x = _float_input("MinMaxScaler.apply", x)
        _check_trailing("MinMaxScaler.apply", x, self.scale)
        return ((x - self.data_min) * self.scale + self.low).astype(x.dtype)

    def invert(self, y: ArrayLike) -> jax.Array:
        """The inverse of :meth:`apply`: back to the original units."""
        y = _float_input("MinMaxScaler.invert", y)
        _check_trailing("MinMaxScaler.invert", y, self.scale)
        return ((y - self.low) / self.scale + self.data_min).astype(y.dtype)


class StandardScaler(Struct):
    """``y = (x - mean) / std``; see :func:`fit_standardize`."""

    mean: Any
    std: Any

    def apply(self, x: ArrayLike) -> jax.Array:
        """Centres and scales ``x`` with the fitted mean and standard deviation."""
        x = _float_input("StandardScaler.apply", x)
        _check_trailing("StandardScaler.apply", x, self.std)
        return ((x - self.mean) / self.std).astype(x.dtype)

    def invert(self, y: ArrayLike) -> jax.Array:
        """The inverse of :meth:`apply`: ``x = y * std + mean``."""
        y = _float_input("StandardScaler.invert", y)
        _check_trailing("StandardScaler.invert", y, self.std)
        return (y * self.std + self.mean).astype(y.dtype)


def fit_minmax(x: ArrayLike, feature_range: tuple[float, float] = (0.0, 1.0), *,
               axis: int | Sequence[int] | None = 0) -> MinMaxScaler:
    """Fits a scaler that maps each feature's ``[min, max]`` onto ``feature_range``.

    With ``(low, high) = feature_range`` and statistics over the sample ``axis``::

        scale = (high - low) / (max - min)
        y     = (x - min) * scale + low          (apply)
        x     = (y - low) / scale + min          (invert)

    A constant feature (``max - min`` within rounding of zero) gets
    ``scale = high - low``, so it maps to ``low`` instead of dividing by zero, and
    ``invert`` still recovers it. Same numbers as scikit-learn's ``MinMaxScaler``
    on non-constant features.

    Args:
        x: training data, samples on the leading axes; integers (e.g. uint8 pixels)
            are fitted and scaled in fp32.
        feature_range: ``(low, high)`` with ``low < high``: ``(0, 1)`` or ``(-1, 1)``.
        axis: the leading axes to take statistics over (default 0: one min/max per
            feature, as scikit-learn); ``None`` for one global min/max (e.g. images).

    Raises:
        ValueError: empty data, non-finite data, ``low >= high``, non-leading axes.

    Example:
        >>> scaler = jt.data.fit_minmax(x_train, (-1.0, 1.0))
        >>> x = scaler.apply(x_batch)
    """
    where = "fit_minmax"
    try:
        low, high = feature_range
    except (TypeError, ValueError):
        raise TypeError(f"{where}: feature_range must be a pair (low, high), got "
                        f"{feature_range!r}.") from None
    hp.check_range(where, "feature_range[0]", low)
    hp.check_range(where, "feature_range[1]", high)
    if hp.concrete(low) is not None and hp.concrete(high) is not None and not low < high:
        raise ValueError(f"{where}: feature_range must have low < high, got "
                         f"{feature_range!r}. Use (0, 1) or (-1, 1).")
    x = _float_input(where, x)
    axes = _sample_axes(where, x, axis)
    hp.check_finite_data(where, x)
    data_min = jnp.min(x, axis=axes)
    data_max = jnp.max(x, axis=axes)
    spread = data_max - data_min
    constant = _is_constant(spread, jnp.maximum(jnp.abs(data_min), jnp.abs(data_max)))
    span = jnp.asarray(high, x.dtype) - jnp.asarray(low, x.dtype)
    scale = span / jnp.where(constant, 1.0, spread)
    return MinMaxScaler(data_min=data_min, scale=scale, low=jnp.asarray(low, x.dtype))


def fit_standardize(x: ArrayLike, *, axis: int | Sequence[int] | None = 0) -> StandardScaler:
    """Fits a scaler to zero mean and unit (biased) variance per feature.

    With statistics over the sample ``axis``::

        mean = mean(x)          std = sqrt(mean((x - mean)**2))
        y    = (x - mean) / std                  (apply)
        x    = y * std + mean                    (invert)

    A constant feature (``std`` within rounding of zero) gets ``std = 1``, so it maps
    to 0 instead of dividing by zero. Same numbers as scikit-learn's
    ``StandardScaler`` on non-constant features.

    Args:
        x: training data, samples on the leading axes; integers are fitted in fp32.
        axis: the leading axes to take statistics over (default 0, per feature);
            ``None`` for one global mean and standard deviation.

    Raises:
        ValueError: empty data, non-finite data, non-leading axes.

    Example:
        >>> scaler = jt.data.fit_standardize(x_train)
        >>> x = scaler.apply(x_batch)
    """
    where = "fit_standardize"
    x = _float_input(where, x)
    axes = _sample_axes(where, x, axis)
    hp.check_finite_data(where, x)
    mean = jnp.mean(x, axis=axes)
    std = jnp.sqrt(jnp.mean(jnp.square(x - mean), axis=axes))
    constant = _is_constant(std, jnp.abs(mean))
    # For a constant feature centre on its value itself (the min), not on the mean,
    # which can be off by an ulp: the feature then maps to exactly 0.
    mean = jnp.where(constant, jnp.min(x, axis=axes), mean)
    return StandardScaler(mean=mean, std=jnp.where(constant, 1.0, std).astype(x.dtype))
