"""Factored second moments (Adafactor) and the per-block blocks Adafactor chains.

A matrix's running mean of squared gradients is kept as one row vector and one
column vector (their outer product, normalised, estimates the full matrix), so the
second moment of an ``n x m`` kernel costs ``n + m`` numbers instead of ``n * m``.
Tensors of higher rank factor their two largest axes; vectors, scalars and tensors
whose second-largest axis is short keep a full (unfactored) moment.

The private blocks at the end (block-RMS clipping, scaling by the parameters'
RMS, an EMA of updates) exist so that ``adafactor`` can
be composed exactly as optax composes it; their states are optax's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, static_field

__all__ = ["FactoredState", "ScaleByFactoredRms", "scale_by_factored_rms"]


def _decay_rate_pow(i: Any, exponent: Any = 0.8) -> jax.Array:
    """Adafactor's second-moment decay at 0-based step ``i``: ``1 - (i + 1)**-exponent``."""
    t = jnp.asarray(i + 1, jnp.float32)
    return 1.0 - t ** (-exponent)


def _factored_axes(shape: tuple[int, ...], factored: bool,
                   min_dim_size_to_factor: int) -> tuple[int, int] | None:
    """``(second largest axis, largest axis)`` of ``shape`` when its moment is factored.

    Ties are broken by ``np.argsort`` (as optax does), so both libraries pick the same
    axes; ``None`` when not factoring (rank < 2, or the second largest axis is shorter
    than ``min_dim_size_to_factor``).
    """
    if not factored or len(shape) < 2:
        return None
    ranked = np.argsort(shape)
    second, largest = int(ranked[-2]), int(ranked[-1])
    return (second, largest) if shape[second] >= min_dim_size_to_factor else None


def _without_axis(x: Any, axis: int) -> jax.Array:
    """Zeros shaped like ``x`` reduced over ``axis``, sharded like ``x`` over the
    remaining axes (a parameter sharded on a mesh keeps its statistics there)."""
    sharding = getattr(x, "sharding", None) if not isinstance(x, jax.core.Tracer) else None
    if isinstance(sharding, jax.sharding.NamedSharding):
        spec = list(sharding.spec) + [None] * (jnp.ndim(x) - len(sharding.spec))
        del spec[axis]
        shape = tuple(np.delete(np.shape(x), axis))
        reduced = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))
        return jnp.zeros(shape, jnp.result_type(x), device=reduced)
    return jnp.zeros_like(jax.eval_shape(lambda y: jnp.sum(y, axis=axis), x))


class FactoredState(NamedTuple):
    """optax's ``FactoredState``.

    Attributes:
        count: int32, the number of updates so far.
        v_row: per leaf, the row statistics (the moment averaged over the largest
            axis) of a factored leaf, a ``(1,)`` placeholder otherwise.
        v_col: per leaf, the column statistics (averaged over the second largest
            axis) of a factored leaf, a ``(1,)`` placeholder otherwise.
        v: per leaf, the full moment of an unfactored leaf, a ``(1,)`` placeholder
            for a factored one.
    """

    count: jax.Array
    v_row: Any
    v_col: Any
    v: Any


class ScaleByFactoredRms(Transform):
    """Adafactor's factored RMS scaling; see :func:`scale_by_factored_rms`."""

    decay_rate: Any
    step_offset: Any
    epsilon: Any
    factored: bool = static_field(default=True)
    min_dim_size_to_factor: int = static_field(default=128)
    decay_rate_fn: Callable = static_field(default=_decay_rate_pow)

    def _axes(self, shape):
        return _factored_axes(tuple(shape), self.factored, self.min_dim_size_to_factor)

    def init(self, params):
        hp.check_float_params("scale_by_factored_rms", params)

        def leaf(p):
            dtype = jnp.result_type(p)
            axes = self._axes(jnp.shape(p))
            # The (1,) placeholders live replicated on the params' mesh.
            if axes is None:
                return (jtree.replicated_like(p, jnp.zeros((1,), dtype)),
                        jtree.replicated_like(p, jnp.zeros((1,), dtype)),
                        jnp.zeros_like(p, dtype))
            second, largest = axes
            return (_without_axis(p, largest), _without_axis(p, second),
                    jtree.replicated_like(p, jnp.zeros((1,), dtype)))

        v_row, v_col, v = jtree.unzip3(params, jax.tree.map(leaf, params))
        return FactoredState(count=jtree.scalar(0, jnp.int32, params), v_row=v_row,
                             v_col=v_col, v=v)

    def update(self, updates, state, params=None, **extra):
        # Only the shapes of the parameters matter, and those are the updates': unlike
        # optax, params may be omitted.
        del params, extra
        count = state.count
        eps = hp.value_at(self.epsilon, count)
        offset = hp.value_at(self.step_offset, count)
        rho = self.decay_rate_fn(count - offset, hp.value_at(self.decay_rate, count))

        def leaf(path, g, row, col, full):
            axes = self._axes(g.shape)
            _check_stats(path, g.shape, axes, row, col, full)
            sq = jtree.abs_sq(g.astype(jtree.acc_dtype(g))) + eps
            if axes is None:
                new = rho * full + (1.0 - rho) * sq
                u = g * new ** -0.5
                return (u.astype(g.dtype), jnp.zeros_like(row), jnp.zeros_like(col),
                        new.astype(full.dtype))
            second, largest = axes
            new_row = rho * row + (1.0 - rho) * jnp.mean(sq, axis=largest)
            new_col = rho * col + (1.0 - rho) * jnp.mean(sq, axis=second)
            # The stored statistics keep init's dtype; the factors are computed from
            # the stored (rounded) values, as optax computes them.
            new_row, new_col = new_row.astype(row.dtype), new_col.astype(col.dtype)
            row_axis = second - 1 if second > largest else second
            row_scale = (new_row / jnp.mean(new_row, axis=row_axis, keepdims=True)) ** -0.5
            u = (g * jnp.expand_dims(row_scale, largest)
                 * jnp.expand_dims(new_col ** -0.5, second))
            return u.astype(g.dtype), new_row, new_col, jnp.zeros_like(full)

        out = jtree.map_with_path(leaf, updates, state.v_row, state.v_col, state.v,
                                  names=("updates", "state.v_row", "state.v_col", "state.v"),
                                  where="scale_by_factored_rms.update")
        treedef = jax.tree.structure(updates)
        quads = treedef.flatten_up_to(out)
        u, v_row, v_col, v = (treedef.unflatten([q[i] for q in quads]) for i in range(4))
        return u, FactoredState(count=jtree.increment(count), v_row=v_row, v_col=v_col, v=v)


def _check_stats(path: Any, shape: tuple[int, ...], axes: tuple[int, int] | None,
                 row: Any, col: Any, full: Any) -> None:
    """Refuses statistics whose shapes do not belong to an update of ``shape``.

    The three statistics of a leaf differ in shape from it by design (rows, columns,
    ``(1,)`` placeholders), so :func:`jtricks.tree.map_checked` cannot compare them;
    this states the shapes each must have instead.
    """
    if axes is None:
        want = ((1,), (1,), shape)
    else:
        second, largest = axes
        want = (tuple(np.delete(shape, largest)), tuple(np.delete(shape, second)), (1,))
    got = (jnp.shape(row), jnp.shape(col), jnp.shape(full))
    if got != want:
        raise ValueError(
            f"scale_by_factored_rms.update: the statistics at {jtree.keystr(path)} have "
            f"shapes (v_row, v_col, v) = {got}, but an update of shape {shape} needs "
            f"{want}. Pass the state that init(params) built for params of these shapes."
        )


def scale_by_factored_rms(factored: bool = True, decay_rate: Any = 0.8, step_offset: Any = 0,
                          min_dim_size_to_factor: int = 128, epsilon: Any = 1e-30,
                          decay_rate_fn: Callable[[Any, Any], Any] = _decay_rate_pow
                          ) -> ScaleByFactoredRms:
    """Divides updates by a factored estimate of their root mean square (Adafactor).

    Same numbers and state as optax's ``scale_by_factored_rms`` (Shazeer & Stern,
    2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost"). With
    ``g`` the incoming update, ``k`` the 0-based step and
    ``rho = decay_rate_fn(k - step_offset, decay_rate)`` (by default
    ``1 - (k - step_offset + 1) ** -decay_rate``)::

        s      <- g**2 + epsilon
        factored leaf (axes r = second largest, c = largest):
          v_row <- rho * v_row + (1 - rho) * mean_c(s)
          v_col <- rho * v_col + (1 - rho) * mean_r(s)
          u     <- g * (v_row / mean_r(v_row))**-0.5 * v_col**-0.5   (broadcast back)
        other leaves:
          v     <- rho * v + (1 - rho) * s
          u     <- g * v**-0.5

    A leaf is factored when ``factored`` is true, it has rank >= 2 and its second
    largest axis has at least ``min_dim_size_to_factor`` entries.

    Args:
        factored: factor the moments of matrices and tensors (static).
        decay_rate: the exponent (or, for a custom ``decay_rate_fn``, its second
            argument), >= 0; a float, an array or a schedule.
        step_offset: subtracted from the step count (to restart the decay schedule
            when fine-tuning); a whole number.
        min_dim_size_to_factor: factor only when the second largest axis is at least
            this long; a non-negative int (static).
        epsilon: added to every squared gradient, >= 0.
        decay_rate_fn: ``(step, decay_rate) -> rho``, e.g. a capped schedule as in
            Zhai et al. (2021); static.

    Example:
        >>> tx = jt.chain(jt.scale_by_factored_rms(), jt.scale_by_learning_rate(1e-2))
    """
    where = "scale_by_factored_rms"
    hp.check_nonnegative(where, "decay_rate", decay_rate,
                         fix="decay_rate is the exponent of the decay 1 - t**-decay_rate; "
                         "Adafactor uses 0.8.")
    hp.check(where, "step_offset", step_offset, lambda x: x == np.floor(x),
             "a whole number", "step_offset counts steps, e.g. the first step of fine-tuning.")
    hp.check_eps(where, "epsilon", epsilon)
    _check_static_int(where, "min_dim_size_to_factor", min_dim_size_to_factor)
    if not callable(decay_rate_fn):
        raise TypeError(f"{hp.reporter(where)}: decay_rate_fn must be a function "
                        f"(step, decay_rate) -> rate, got {decay_rate_fn!r}.")
    return ScaleByFactoredRms(decay_rate=hp.as_hyper(decay_rate),
                              step_offset=hp.as_hyper(step_offset),
                              epsilon=hp.as_hyper(epsilon), factored=bool(factored),
                              min_dim_size_to_factor=int(min_dim_size_to_factor),
                              decay_rate_fn=decay_rate_fn)


def _check_static_int(where: str, name: str, value: Any) -> None:
    """A structural whole number >= 0: known before tracing (it decides shapes)."""
    if hp.concrete(value) is None or np.ndim(value) != 0:
        raise TypeError(
            f"{hp.reporter(where)}: {name} decides the state's shapes, so it must be a "
            f"Python int, got {type(value).__name__}: {value!r}."
        )
    hp.check_integer(where, name, value)


# --- the other blocks of adafactor's chain (private: optax's numbers and states) ------
