"""Step sizes set by the problem itself: Polyak's (from the loss) and DoG's (from distance).

Both return the update scaled by a step they compute, with optax's states:
:class:`jtricks.EmptyState` for Polyak and a per-leaf distance and gradient sum for
DoG. Neither negates the update: follow them with a negative scale (as
:func:`~jtricks.polyak_sgd` does) or use ``global_scale=-1``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Stateless, Transform, static_field
from jtricks.transforms.classic import map_with_blocks

__all__ = [
    "ScaleByPolyak",
    "scale_by_polyak",
    "ScaleByDistanceOverGradientsState",
    "ScaleByDistanceOverGradients",
    "scale_by_distance_over_gradients",
]

_TINY = float(np.finfo(np.float64).eps)  # optax's guard against a zero gradient
_VARIANTS = ("sps", "sps+")


def check_variant(where: str, variant: Any) -> None:
    """Polyak's ``variant`` is one of ``"sps"`` and ``"sps+"`` (a static choice)."""
    if variant not in _VARIANTS:
        raise ValueError(f"{where}: variant must be one of {_VARIANTS}, got {variant!r}. "
                         "'sps+' clips a negative loss gap at 0.")


class ScaleByPolyak(Stateless):
    """Polyak's step size; see :func:`scale_by_polyak`. ``update`` takes ``value=``."""

    f_min: Any
    max_learning_rate: Any
    eps: Any
    variant: str = static_field(default="sps")

    def update(self, updates, state, params=None, *, value, **extra):
        del params, extra
        sq_norm = jtree.global_norm(updates) ** 2
        gap = jnp.asarray(value - self.f_min).astype(sq_norm.dtype)
        if self.variant == "sps+":
            gap = jnp.maximum(gap, 0)
        denom = sq_norm + self.eps
        step = jnp.where(denom <= _TINY, 0.0,
                         jnp.minimum(gap / denom, self.max_learning_rate))
        return jax.tree.map(lambda g: g * step.astype(jnp.result_type(g)), updates), state


def scale_by_polyak(f_min: ArrayLike = 0.0, max_learning_rate: ArrayLike = 1.0,
                    eps: ArrayLike = 0.0, variant: str = "sps") -> ScaleByPolyak:
    """Scales the update by Polyak's step size (Loizou et al., 2021, SPS_max).

    With ``f`` the loss at the current params (passed as ``update(..., value=f)``)
    and ``||g||`` the global L2 norm of the update::

        step = min((f - f_min) / (||g||**2 + eps), max_learning_rate)
                                  (0 where ||g||**2 + eps is below float64's eps)
        u    <- step * g

    ``variant="sps+"`` clips ``f - f_min`` at 0 first. Same numbers as optax's
    ``scale_by_polyak``.

    Args:
        f_min: a lower bound of the loss (0 for a non-negative loss).
        max_learning_rate: the largest step, >= 0.
        eps: added to the squared norm, >= 0.
        variant: ``"sps"`` or ``"sps+"`` (static).

    Example:
        >>> tx = jt.chain(jt.scale_by_polyak(), jt.scale(-1.0))
        >>> updates, state = tx.update(grads, state, params, value=loss)
    """
    where = "scale_by_polyak"
    for name, v in (("f_min", f_min), ("max_learning_rate", max_learning_rate),
                    ("eps", eps)):
        hp.no_schedule(where, name, v)
    hp.check_finite(where, "f_min", f_min)
    hp.check_nonnegative(where, "max_learning_rate", max_learning_rate,
                         fix="It caps the step size; the default is 1.")
    hp.check_eps(where, "eps", eps)
    check_variant(where, variant)
    return ScaleByPolyak(f_min=f_min, max_learning_rate=max_learning_rate, eps=eps,
                         variant=variant)


class ScaleByDistanceOverGradientsState(NamedTuple):
    """Per leaf: ``max_dist`` the farthest distance from the start so far (0-d),
    ``grad_sum_of_squares`` the running sum of squared gradients (shape ``(1,)``),
    ``init_params`` the starting params (in ``param_dtype``)."""

    max_dist: Any
    grad_sum_of_squares: Any
    init_params: Any


def _l2(x: Any, y: Any = 0.0) -> jax.Array:
    """``||x - y||`` over the whole array, in at least fp32."""
    d = jnp.asarray(x - y)
    return jnp.sqrt(jnp.sum(jtree.abs_sq(d.astype(jtree.acc_dtype(d)))))


class ScaleByDistanceOverGradients(Transform):
    """Layer-wise DoG; see :func:`scale_by_distance_over_gradients`."""

    reps_rel: Any
    eps: Any
    global_scale: Any
    param_dtype: Any = static_field(default=jnp.float32)

    def init(self, params):
        hp.check_float_params("scale_by_distance_over_gradients", params)
        rel = self.reps_rel
        return ScaleByDistanceOverGradientsState(
            max_dist=jax.tree.map(
                lambda p: (rel * (1 + _l2(p))).astype(jnp.result_type(p)), params),
            grad_sum_of_squares=jtree.replicated_like(
                params, jax.tree.map(lambda p: jnp.zeros(1), params)),
            init_params=jax.tree.map(  # a copy: never the params' own buffer
                lambda p: jnp.array(p, dtype=self.param_dtype, copy=True), params),
        )

    def update(self, updates, state, params=None, **extra):
        del extra
        hp.require_params("scale_by_distance_over_gradients.update", params,
                          "DoG's step is the distance the params moved from the start")
        eps, scale = self.eps, self.global_scale

        def leaf(g, p, d, sos, p0):
            d = jnp.maximum(d, _l2(p, p0)).astype(d.dtype)
            sos = (sos + jnp.sum(jtree.abs_sq(g))).astype(sos.dtype)
            eta = scale * (d / jnp.sqrt(sos + eps))
            return (jnp.reshape(eta, ()) * g).astype(jnp.result_type(g)), d, sos

        def shaped_first(g, p, p0, d, sos):
            return leaf(g, p, d, sos, p0)

        out = map_with_blocks(shaped_first, updates, (params, state.init_params),
                              (state.max_dist, state.grad_sum_of_squares),
                              names=("updates", "params", "state.init_params",
                                     "state.max_dist", "state.grad_sum_of_squares"),
                              where="scale_by_distance_over_gradients.update")
        u, max_dist, sos = jtree.unzip3(updates, out)
        return u, ScaleByDistanceOverGradientsState(max_dist, sos, state.init_params)


def scale_by_distance_over_gradients(reps_rel: Any = 1e-6, eps: Any = 1e-8,
                                     param_dtype: Any = jnp.float32,
                                     global_scale: Any = 1.0
                                     ) -> ScaleByDistanceOverGradients:
    """Layer-wise DoG (Ivgi et al., 2023): a step size from distance over gradients.

    Per parameter array ``p`` (``p0`` its starting value) with update ``g``::

        d <- max(d, ||p - p0||)              (d starts at reps_rel * (1 + ||p0||))
        s <- s + sum(g**2)
        u <- global_scale * d / sqrt(s + eps) * g

    No learning rate to tune; the authors recommend averaging the iterates. Same
    numbers as optax's ``scale_by_distance_over_gradients``, except that a 0-d
    parameter's update keeps shape ``()`` (optax's has shape ``(1,)``).

    Args:
        reps_rel: sets the first step, > 0 (1e-4 with batch norm, else 1e-6).
        eps: added to the sum of squares, >= 0.
        param_dtype: dtype of the stored starting params (static).
        global_scale: multiplies every step (-1 to descend without a later scale).

    Example:
        >>> tx = jt.scale_by_distance_over_gradients(global_scale=-1.0)
    """
    where = "scale_by_distance_over_gradients"
    for name, v in (("reps_rel", reps_rel), ("eps", eps), ("global_scale", global_scale)):
        hp.no_schedule(where, name, v)
    hp.check_positive(where, "reps_rel", reps_rel,
                      fix="reps_rel sets the first step; use 1e-6 (1e-4 with batch norm).")
    hp.check_eps(where, "eps", eps)
    hp.check_finite(where, "global_scale", global_scale)
    return ScaleByDistanceOverGradients(reps_rel=reps_rel, eps=eps, global_scale=global_scale,
                                        param_dtype=jnp.dtype(param_dtype))
