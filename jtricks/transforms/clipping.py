"""Clipping and normalisation of updates: element-wise, by global norm, unit-wise.

These transforms are stateless (their state is :class:`jtricks.EmptyState`), so a
hyperparameter here is a number or an array, never a schedule: there is no step
count to evaluate a schedule at.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Stateless, static_field

__all__ = [
    "Clip",
    "clip",
    "ClipByGlobalNorm",
    "clip_by_global_norm",
    "NormalizeByGlobalNorm",
    "normalize_by_global_norm",
    "AdaptiveGradClip",
    "adaptive_grad_clip",
]


class Clip(Stateless):
    """``u -> clip(u, -max_delta, max_delta)``; see :func:`clip`."""

    max_delta: Any

    def update(self, updates, state, params=None, **extra):
        del params, extra
        d = self.max_delta
        return jax.tree.map(lambda g: jnp.clip(g, -d, d).astype(g.dtype), updates), state


def clip(max_delta: ArrayLike) -> Clip:
    """Clips every coordinate of the update into ``[-max_delta, max_delta]``.

    ::

        u <- min(max(g, -max_delta), max_delta)

    Args:
        max_delta: the largest absolute value of a coordinate, > 0; a number or an
            array (not a schedule: this transform is stateless).

    Example:
        >>> tx = jt.chain(jt.clip(1.0), jt.sgd(0.1))
    """
    hp.check_threshold("clip", "max_delta", max_delta)
    return Clip(max_delta=max_delta)


class ClipByGlobalNorm(Stateless):
    """Rescales the whole update tree to global norm ``max_norm`` when it is larger."""

    max_norm: Any

    def update(self, updates, state, params=None, **extra):
        del params, extra
        max_norm = self.max_norm
        norm = jtree.global_norm(updates)  # one reduction over the whole tree
        # One scalar factor (exactly 1 when no clipping is needed) so each leaf is a
        # single multiply that XLA fuses into whatever consumes it; a per-element
        # select between g and a rescaled g materialised a params-sized temporary.
        factor = jnp.where(norm <= max_norm, 1.0, max_norm / norm).astype(jnp.float32)

        def leaf(g):
            return (g * factor).astype(g.dtype)

        return jax.tree.map(leaf, updates), state


def clip_by_global_norm(max_norm: ArrayLike) -> ClipByGlobalNorm:
    """Gradient clipping by global norm (Pascanu et al., 2013).

    With ``||g||`` the L2 norm of all leaves together (accumulated in fp32)::

        u <- g                          if ||g|| <= max_norm
        u <- g / ||g|| * max_norm       otherwise (the result has norm max_norm)

    An update whose norm is at most ``max_norm`` passes through unchanged, bit for
    bit. optax rescales at equality too (``<``); the two agree within rounding.

    Args:
        max_norm: the threshold theta, > 0 (typically 1 to 10); a number or an
            array (not a schedule: this transform is stateless).

    Example:
        >>> tx = jt.chain(jt.clip_by_global_norm(1.0), jt.adam(1e-3))
    """
    hp.check_threshold("clip_by_global_norm", "max_norm", max_norm)
    return ClipByGlobalNorm(max_norm=max_norm)


class NormalizeByGlobalNorm(Stateless):
    """``u -> g / (||g|| + eps)``; see :func:`normalize_by_global_norm`."""

    eps: Any

    def update(self, updates, state, params=None, **extra):
        del params, extra
        denom = jtree.global_norm(updates) + self.eps
        return jax.tree.map(lambda g: g / denom.astype(g.dtype), updates), state


def normalize_by_global_norm(eps: ArrayLike = 1e-6) -> NormalizeByGlobalNorm:
    """Divides the update by its global L2 norm: the direction only (the lesson's
    ``g / ||g||``).

    ``eps`` is added *outside* the norm, as in optax's ``normalize_by_update_norm``
    (with ``scale_factor=1``), whose numbers this matches::

        u <- g / (||g|| + eps)

    so a zero update stays zero (no NaN) as long as ``eps > 0``.

    Args:
        eps: added to the norm, >= 0; a number or an array (not a schedule: this
            transform is stateless). With ``eps=0`` a zero update gives NaN.

    Example:
        >>> tx = jt.chain(jt.normalize_by_global_norm(), jt.scale_by_learning_rate(0.1))
    """
    hp.no_schedule("normalize_by_global_norm", "eps", eps)
    hp.check_range("normalize_by_global_norm", "eps", eps, low=0.0,
                   fix="eps guards the division by the norm; use a small value such as 1e-6.")
    return NormalizeByGlobalNorm(eps=eps)


def _unit_axes(x: jax.Array, axis: Any, where: str) -> tuple[int, ...] | None:
    """The axes reduced for one "unit" of ``x`` (``None``: all of them)."""
    if axis is not None:
        return tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    if sum(d != 1 for d in jnp.shape(x)) <= 1:  # scalars and (squeezed) vectors
        return None
    if x.ndim in (2, 3):  # (in, out) dense kernels, or (in, heads, out)
        return (0,)
    if x.ndim == 4:  # (h, w, in, out) convolution kernels
        return (0, 1, 2)
    if x.ndim == 5:  # (d, h, w, in, out) 3-D convolution kernels
        return (0, 1, 2, 3)
    raise ValueError(
        f"{where}: cannot choose unit-wise norm axes for a parameter of shape "
        f"{jnp.shape(x)} (rank {x.ndim}); pass axis=... to say which axes one unit spans."
    )


class AdaptiveGradClip(Stateless):
    """Unit-wise clipping relative to the parameter's norm; see :func:`adaptive_grad_clip`."""

    clipping: Any
    eps: Any
    axis: Any = static_field(default=None)

    def update(self, updates, state, params=None, **extra):
        del extra
        hp.require_params("adaptive_grad_clip.update", params,
                          "the clipping threshold is relative to the parameters' norms")
        clipping, eps, axis = self.clipping, self.eps, self.axis

        def leaf(g, p):
            where = "adaptive_grad_clip.update"
            g_norm = jtree.unit_norms(g, _unit_axes(g, axis, where))
            max_norm = clipping * jnp.maximum(jtree.unit_norms(p, _unit_axes(p, axis, where)), eps)
            # max(., 1e-6) only guards a 0/0 that the comparison never selects.
            clipped = g * (max_norm / jnp.maximum(g_norm, 1e-6)).astype(g.dtype)
            return jnp.where(g_norm < max_norm, g, clipped)

        return jtree.map_checked(leaf, updates, params, names=("updates", "params"),
                                 where="adaptive_grad_clip.update"), state


def adaptive_grad_clip(clipping: ArrayLike, eps: ArrayLike = 1e-3,
                       axis: int | tuple[int, ...] | None = None) -> AdaptiveGradClip:
    """Adaptive gradient clipping (Brock et al., 2021): clips each unit's update to at
    most ``clipping`` times the norm of the matching unit of the parameter.

    A unit is a slice of a leaf: the whole leaf for scalars and vectors, a column
    (reduce axis 0) for rank-2 and rank-3 kernels, an output channel (reduce all but
    the last axis) for rank-4 and rank-5 convolution kernels, or the slices given by
    ``axis``. Per unit, with norms taken over the unit::

        m <- clipping * max(||p||, eps)
        u <- g                    if ||g|| < m
        u <- g * m / ||g||        otherwise

    Same numbers as optax's ``adaptive_grad_clip``; ``update`` needs ``params``.

    Args:
        clipping: the largest allowed ratio ||g|| / ||p||, > 0; a number or an array
            (not a schedule: this transform is stateless).
        eps: the smallest parameter norm used, >= 0, so zero-initialised parameters
            can still move.
        axis: the axes one unit spans (static); ``None`` picks them by rank as above.

    Example:
        >>> tx = jt.chain(jt.adaptive_grad_clip(0.01), jt.sgd(0.1, momentum=0.9))
    """
    hp.check_threshold("adaptive_grad_clip", "clipping", clipping)
    hp.no_schedule("adaptive_grad_clip", "eps", eps)
    hp.check_range("adaptive_grad_clip", "eps", eps, low=0.0,
                   fix="eps is the smallest parameter norm used; the default is 1e-3.")
    if isinstance(axis, list):
        axis = tuple(axis)
    return AdaptiveGradClip(clipping=clipping, eps=eps, axis=axis)
