"""Distance over gradients, global form: DoG and DoWG (optax.contrib's ``dog``, ``dowg``).

The step size is the farthest distance the params have travelled from their start
over (a weighted) root sum of squared gradient norms, over the whole tree at once.
(:func:`jtricks.scale_by_distance_over_gradients` is optax core's layer-wise DoG:
one step size per parameter array.) States are optax's ``DoGState`` and
``DoWGState``; neither block negates its update, the named optimizers in
:mod:`jtricks.optimizers.parameter_free` follow them with a learning rate.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import LrFactor, Transform, static_field
from jtricks.transforms.parameter_free import copy_tree, lowest_dtype, sq_norm

__all__ = [
    "DoGState",
    "ScaleByDoG",
    "scale_by_dog",
    "DoWGState",
    "ScaleByDoWG",
    "scale_by_dowg",
    "INIT_STEP_KINDS",
]

INIT_STEP_KINDS = ("distance", "learning_rate", "heuristic")


def _distance_sq(params: Any, start: Any, where: str) -> jax.Array:
    """``||start - params||**2`` over the whole tree."""
    diff = jtree.map_checked(lambda p0, p: p0 - p, start, params,
                             names=("state.init_params", "params"), where=where)
    return sq_norm(diff)


def _scaled(updates: Any, step: jax.Array) -> Any:
    return jax.tree.map(lambda g: (step * g).astype(jnp.result_type(g)), updates)


class DoGState(NamedTuple):
    """DoG's state (optax's ``DoGState``): ``is_init_step`` (bool, true before the
    first update), ``init_params`` the starting params, ``max_dist`` the farthest
    distance from them so far and ``sum_sq_norm_grads`` the sum of squared gradient
    norms (both 0-d, the params' lowest dtype)."""

    is_init_step: jax.Array
    init_params: Any
    max_dist: jax.Array
    sum_sq_norm_grads: jax.Array


class ScaleByDoG(Transform):
    """Global DoG; see :func:`scale_by_dog`."""

    init_step_value: Any
    eps: Any
    init_step_kind: str = static_field(default="heuristic")

    def init(self, params):
        hp.check_float_params("scale_by_dog", params)
        dtype = lowest_dtype(params)
        if self.init_step_kind == "distance":
            r_eps = self.init_step_value
        elif self.init_step_kind == "heuristic":
            r_eps = self.init_step_value * (1 + jnp.sqrt(sq_norm(params)))
        else:  # "learning_rate": the first step is given, the distance starts at 0
            r_eps = 0.0
        return DoGState(is_init_step=jnp.asarray(True), init_params=copy_tree(params),
                        max_dist=jnp.array(r_eps, dtype),
                        sum_sq_norm_grads=jnp.zeros([], dtype))

    def _step(self, state: DoGState, new: DoGState) -> jax.Array:
        step = new.max_dist / jnp.sqrt(new.sum_sq_norm_grads + self.eps)
        if self.init_step_kind == "learning_rate":
            step = jnp.where(state.is_init_step, self.init_step_value, step)
        return step

    def update(self, updates, state, params=None, **extra):
        del extra
        where = "scale_by_dog.update"
        hp.require_params(where, params, "DoG's step is the distance from the start")
        dist = jnp.sqrt(_distance_sq(params, state.init_params, where))
        new = DoGState(
            is_init_step=jnp.asarray(False), init_params=state.init_params,
            max_dist=jnp.maximum(state.max_dist, dist).astype(state.max_dist.dtype),
            sum_sq_norm_grads=(state.sum_sq_norm_grads + sq_norm(updates)).astype(
                state.sum_sq_norm_grads.dtype))
        return _scaled(updates, self._step(state, new)), new

    def learning_rate_factors(self, params, state, new_state):
        del params
        return [LrFactor("rate", self._step(state, new_state))]


def scale_by_dog(init_step: tuple[str, ArrayLike], eps: ArrayLike = 1e-8) -> ScaleByDoG:
    """DoG (Ivgi, Hinder & Carmon, 2023): a step from distance over gradients.

    With ``x`` all the params, ``x0`` their start and ``g`` the update, over the whole
    tree::

        r    <- max(r, ||x - x0||)
        G    <- G + ||g||**2
        u    <- r / sqrt(G + eps) * g

    ``init_step = (kind, value)`` sets the first step: ``("distance", r0)`` starts
    ``r`` at ``r0``; ``("heuristic", a)`` at ``a * (1 + ||x0||)`` (pass the real
    params to ``init``); ``("learning_rate", lr0)`` makes the first step ``lr0 * g``
    (``r`` starts at 0). Same numbers as optax.contrib's ``scale_by_dog``.

    Args:
        init_step: ``(kind, value)``, ``kind`` one of ``"distance"``,
            ``"learning_rate"``, ``"heuristic"`` (static), ``value`` > 0.
        eps: added to the sum of squared norms, >= 0.

    Example:
        >>> tx = jt.chain(scale_by_dog(("heuristic", 1e-6)), jt.scale(-1.0))
    """
    where = "scale_by_dog"
    kind, value = check_init_step(where, init_step)
    hp.no_schedule(where, "eps", eps)
    hp.check_eps(where, "eps", eps)
    return ScaleByDoG(init_step_value=value, eps=eps, init_step_kind=kind)


def check_init_step(where: str, init_step: Any) -> tuple[str, Any]:
    """``init_step`` is a pair ``(kind, value)``: a known kind and a value > 0."""
    if not (isinstance(init_step, (tuple, list)) and len(init_step) == 2):
        raise TypeError(
            f"{hp.reporter(where)}: init_step must be a pair (kind, value), got "
            f"{init_step!r}. Use e.g. init_step=('heuristic', 1e-6).")
    kind, value = init_step
    if kind not in INIT_STEP_KINDS:
        raise ValueError(
            f"{hp.reporter(where)}: init_step's kind must be one of {INIT_STEP_KINDS}, "
            f"got {kind!r}. 'heuristic' (value 1e-6, 1e-4 with batch norm) needs no "
            "knowledge of the problem.")
    hp.no_schedule(where, "init_step", value)
    hp.check_positive(where, "init_step", value,
                      fix="Its value sets the first step; a zero first step never moves.")
    return kind, value


class DoWGState(NamedTuple):
    """DoWG's state (optax's ``DoWGState``): ``init_params`` the starting params,
    ``weighted_sq_norm_grads`` the distance-weighted sum of squared gradient norms and
    ``estim_sq_dist`` the largest squared distance from the start so far (both 0-d,
    the params' lowest dtype)."""

    init_params: Any
    weighted_sq_norm_grads: jax.Array
    estim_sq_dist: jax.Array


class ScaleByDoWG(Transform):
    """DoWG; see :func:`scale_by_dowg`."""

    init_estim_sq_dist: Any
    eps: Any

    def init(self, params):
        hp.check_float_params("scale_by_dowg", params)
        dtype = lowest_dtype(params)
        first = self.eps if self.init_estim_sq_dist is None else self.init_estim_sq_dist
        return DoWGState(init_params=copy_tree(params),
                         weighted_sq_norm_grads=jnp.zeros([], dtype),
                         estim_sq_dist=jnp.array(first, dtype))

    def update(self, updates, state, params=None, **extra):
        del extra
        where = "scale_by_dowg.update"
        hp.require_params(where, params, "DoWG's step is the distance from the start")
        old = state.estim_sq_dist
        dist = jnp.maximum(old, _distance_sq(params, state.init_params, where))
        weighted = dist * sq_norm(updates) + state.weighted_sq_norm_grads
        step = dist / (jnp.sqrt(weighted) + self.eps)
        return _scaled(updates, step), DoWGState(
            state.init_params,
            weighted.astype(state.weighted_sq_norm_grads.dtype), dist.astype(old.dtype))

    def learning_rate_factors(self, params, state, new_state):
        del params, state
        return [LrFactor("rate", new_state.estim_sq_dist
                         / (jnp.sqrt(new_state.weighted_sq_norm_grads) + self.eps))]


def scale_by_dowg(init_estim_sq_dist: ArrayLike | None = None,
                  eps: ArrayLike = 1e-4) -> ScaleByDoWG:
    """DoWG (Khaled, Mishchenko & Jin, 2023): distance over weighted gradients.

    With ``x`` all the params, ``x0`` their start and ``g`` the update, over the whole
    tree::

        r2   <- max(r2, ||x - x0||**2)      (r2 starts at init_estim_sq_dist, or eps)
        v    <- v + r2 * ||g||**2
        u    <- r2 / (sqrt(v) + eps) * g

    Same numbers as optax.contrib's ``scale_by_dowg``.

    Args:
        init_estim_sq_dist: a first guess of the squared distance to the solution,
            > 0; ``None`` uses ``eps``.
        eps: guards the division (and is the first guess by default), > 0 (>= 0
            when ``init_estim_sq_dist`` is given).

    Example:
        >>> tx = jt.chain(scale_by_dowg(), jt.scale(-1.0))
    """
    where = "scale_by_dowg"
    hp.no_schedule(where, "init_estim_sq_dist", init_estim_sq_dist)
    hp.no_schedule(where, "eps", eps)
    if init_estim_sq_dist is None:
        hp.check_positive(where, "eps", eps,
                          fix="Without init_estim_sq_dist, eps is the first squared "
                          "distance; a zero one never moves. Use e.g. 1e-4.")
    else:
        hp.check_positive(where, "init_estim_sq_dist", init_estim_sq_dist,
                          fix="It is the first squared distance; a zero one never moves.")
        hp.check_eps(where, "eps", eps)
    return ScaleByDoWG(init_estim_sq_dist=init_estim_sq_dist, eps=eps)
