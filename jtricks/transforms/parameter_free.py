"""Learning-rate-free Adam and coin betting: Prodigy, D-Adaptation (AdamW) and COCOB.

Each learns its step size from the run itself: Prodigy and D-Adaptation estimate the
distance to the solution ``D`` from the gradients seen so far and scale an AdamW step
by it; COCOB bets on each coordinate with the "wealth" its past gradients earned.
States are optax's, field for field (``optax.contrib``'s ``ProdigyState``,
``DAdaptAdamWState``, ``COCOBState``). The factories of the named optimizers, which
validate their arguments, are in :mod:`jtricks.optimizers.parameter_free`.

The small tree helpers at the top (the lowest dtype of a tree, inner products and
squared norms accumulated in at least fp32) are shared by the DoG, Mechanic and
MoMo modules.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import LrFactor, Transform, static_field

__all__ = [
    "ProdigyState",
    "Prodigy",
    "DAdaptAdamWState",
    "DAdaptAdamW",
    "COCOBState",
    "ScaleByCocob",
    "scale_by_cocob",
]


# --- tree helpers ----------------------------------------------------------------------


def lowest_dtype(params: Any) -> Any:
    """The least precise dtype among the leaves (optax keeps its scalar statistics in
    it, so they never promote a bf16 update); fp32 for an empty tree."""
    dtypes = [jnp.result_type(x) for x in jax.tree.leaves(params)]
    if not dtypes:
        return jnp.dtype(jnp.float32)

    def lower(a, b):
        promoted = jnp.promote_types(a, b)
        if promoted not in (a, b):
            raise TypeError(f"parameters mix dtypes {a} and {b}, neither of which promotes "
                            "to the other; cast them to one floating dtype first.")
        return b if promoted == a else a

    return functools.reduce(lower, dtypes)


def copy_tree(params: Any) -> Any:
    """A copy of every leaf: a state field must never be the params' own buffer (a
    donated step would hand one array to XLA twice)."""
    return jax.tree.map(lambda p: jnp.array(p, copy=True), params)


def dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """The real inner product of two arrays, accumulated in at least fp32 and returned
    in their (promoted) dtype, as optax's ``tree.vdot`` is."""
    dtype = jnp.result_type(a, b)
    acc = jtree.acc_dtype(dtype)
    a = (jnp.conj(a) if jnp.iscomplexobj(a) else a).astype(acc)
    # A contraction, as optax's: an elementwise product then a sum rounds differently,
    # and Mechanic's bets amplify that difference over a run.
    prod = jnp.tensordot(a, b.astype(acc), a.ndim, precision=jax.lax.Precision.HIGHEST)
    return jnp.real(prod).astype(jnp.finfo(dtype).dtype)


def sq_sum(x: jax.Array) -> jax.Array:
    """``sum |x|**2`` of one array, accumulated in at least fp32, in ``x``'s real dtype."""
    acc = jtree.acc_dtype(x)
    return jnp.sum(jtree.abs_sq(x.astype(acc))).astype(jnp.finfo(x.dtype).dtype)


def total(values: Any) -> Any:
    """The sum of per-leaf scalars, leaf after leaf (optax's order of summation)."""
    return sum(jax.tree.leaves(values), 0)


def sq_norm(tree: Any) -> Any:
    """The squared global L2 norm of a tree (optax's ``tree.norm(t, squared=True)``)."""
    return total(jax.tree.map(sq_sum, tree))


def unzip(like: Any, tree: Any, n: int) -> tuple:
    """Splits a tree whose leaves (at ``like``'s leaf positions) are ``n``-tuples."""
    treedef = jax.tree.structure(like)
    tuples = treedef.flatten_up_to(tree)
    return tuple(treedef.unflatten([t[i] for t in tuples]) for i in range(n))


def _adam_correction(b1: Any, b2: Any, count: jax.Array) -> jax.Array:
    """``sqrt(1 - b2**t) / (1 - b1**t)`` for the 1-based step ``t``."""
    return ((1 - b2 ** count) ** 0.5) / (1 - b1 ** count)


def _safe_ratio(num: jax.Array, den: jax.Array, fallback: jax.Array) -> jax.Array:
    """``num / den``, or ``fallback`` where ``den`` is 0 (every gradient so far was 0):
    optax would store 0/0 = NaN as the distance estimate and never recover."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), fallback)


# --- Prodigy -------------------------------------------------------------------------


class ProdigyState(NamedTuple):
    """Prodigy's state (optax's ``ProdigyState``): ``exp_avg`` and ``exp_avg_sq`` the
    Adam moments of ``D * g``; ``grad_sum`` the weighted sum of those gradients;
    ``params0`` the starting params; ``estim_lr`` the distance estimate ``D`` and
    ``numerator_weighted`` its numerator (0-d, the params' lowest dtype); ``count``."""

    exp_avg: Any
    exp_avg_sq: Any
    grad_sum: Any
    params0: Any
    estim_lr: jax.Array
    numerator_weighted: jax.Array
    count: jax.Array


class Prodigy(Transform):
    """Prodigy (learning-rate-free AdamW); see :func:`jtricks.prodigy`."""

    learning_rate: Any
    betas: Any
    beta3: Any
    eps: Any
    estim_lr0: Any
    estim_lr_coef: Any
    weight_decay: Any
    safeguard_warmup: bool = static_field(default=False)

    def init(self, params):
        hp.check_float_params("prodigy", params)
        dtype = lowest_dtype(params)
        return ProdigyState(
            exp_avg=jtree.zeros_like(params), exp_avg_sq=jtree.zeros_like(params),
            grad_sum=jtree.zeros_like(params), params0=copy_tree(params),
            estim_lr=jnp.array(self.estim_lr0, dtype),
            numerator_weighted=jnp.zeros([], dtype), count=jnp.zeros([], jnp.int32))

    def _dlr(self, state: ProdigyState) -> jax.Array:
        """The step this update takes: ``D * lr(k) * sqrt(1 - b2**t) / (1 - b1**t)``."""
        b1, b2 = self.betas
        sched = hp.value_at(self.learning_rate, state.count)
        bc = _adam_correction(b1, b2, jtree.increment(state.count))
        return jnp.asarray(state.estim_lr * sched * bc, state.estim_lr.dtype)

    def update(self, updates, state, params=None, **extra):
        del extra
        hp.require_params("prodigy.update", params,
                          "Prodigy estimates its step from the distance to the start")
        b1, b2 = self.betas
        b3 = b2 ** 0.5 if self.beta3 is None else self.beta3
        d, d0 = state.estim_lr, self.estim_lr0
        dlr = self._dlr(state)
        weight = d if self.safeguard_warmup else dlr

        def moments(g, p, p0, m, v, s):
            dg = d * g
            m_new = (b1 * m + (1 - b1) * dg).astype(m.dtype)
            v_new = (b2 * v + (1 - b2) * jtree.abs_sq(dg)).astype(v.dtype)
            s_new = (b3 * s + weight * dg / d0).astype(s.dtype)
            return m_new, v_new, s_new, dot(g, p0 - p), jnp.sum(jnp.abs(s_new))

        out = jtree.map_checked(
            moments, updates, params, state.params0, state.exp_avg, state.exp_avg_sq,
            state.grad_sum, names=("updates", "params", "state.params0", "state.exp_avg",
                                   "state.exp_avg_sq", "state.grad_sum"),
            where="prodigy.update")
        mu, nu, grad_sum, dots, l1 = unzip(updates, out, 5)
        num = b3 * state.numerator_weighted + (d / d0) * dlr * total(dots)
        estimate = _safe_ratio(self.estim_lr_coef * num, total(l1), d)
        new_d = jnp.maximum(d, estimate).astype(d.dtype)
        eps, wd = self.eps, self.weight_decay

        def step(g, m, v, p):
            u = -wd * dlr * p - dlr * m / (jnp.sqrt(v) + new_d * eps)
            return u.astype(jnp.result_type(g))

        u = jax.tree.map(step, updates, mu, nu, params)
        return u, ProdigyState(mu, nu, grad_sum, state.params0, new_d,
                               num.astype(state.numerator_weighted.dtype),
                               jtree.increment(state.count))

    def learning_rate_factors(self, params, state, new_state):
        del params, new_state
        return [LrFactor("rate", self._dlr(state))]


# --- D-Adaptation (AdamW) ------------------------------------------------------------


class DAdaptAdamWState(NamedTuple):
    """D-Adapt AdamW's state (optax's ``DAdaptAdamWState``): ``exp_avg`` (of
    ``D * g``) and ``exp_avg_sq`` (of ``g``); ``grad_sum`` the running sum of
    ``D * g``; ``estim_lr`` the distance estimate ``D`` and ``numerator_weighted`` its
    numerator (0-d, the params' lowest dtype); ``count``."""

    exp_avg: Any
    exp_avg_sq: Any
    grad_sum: Any
    estim_lr: jax.Array
    numerator_weighted: jax.Array
    count: jax.Array


class DAdaptAdamW(Transform):
    """D-Adaptation for AdamW; see :func:`jtricks.dadapt_adamw`."""

    learning_rate: Any
    betas: Any
    eps: Any
    estim_lr0: Any
    weight_decay: Any

    def init(self, params):
        hp.check_float_params("dadapt_adamw", params)
        dtype = lowest_dtype(params)
        return DAdaptAdamWState(
            exp_avg=jtree.zeros_like(params), exp_avg_sq=jtree.zeros_like(params),
            grad_sum=jtree.zeros_like(params), estim_lr=jnp.array(self.estim_lr0, dtype),
            numerator_weighted=jnp.zeros([], dtype), count=jnp.zeros([], jnp.int32))

    def _dlr(self, state: DAdaptAdamWState) -> jax.Array:
        b1, b2 = self.betas
        sched = hp.value_at(self.learning_rate, state.count)
        bc = _adam_correction(b1, b2, jtree.increment(state.count))
        return (state.estim_lr * sched * bc).astype(state.numerator_weighted.dtype)

    def update(self, updates, state, params=None, **extra):
        del extra
        hp.require_params("dadapt_adamw.update", params,
                          "its weight decay scales the params")
        b1, b2 = self.betas
        sb2 = b2 ** 0.5
        eps, dlr = self.eps, self._dlr(state)

        def moments(g, m, v, s):
            weighted = dot(g, s / (jnp.sqrt(v) + eps))  # with the previous moments
            m_new = (b1 * m + (1 - b1) * dlr * g).astype(m.dtype)
            v_new = (b2 * v + (1 - b2) * jtree.abs_sq(g)).astype(v.dtype)
            s_new = (sb2 * s + (1 - sb2) * dlr * g).astype(s.dtype)
            return m_new, v_new, s_new, weighted, jnp.sum(jnp.abs(s_new))

        out = jtree.map_checked(
            moments, updates, state.exp_avg, state.exp_avg_sq, state.grad_sum,
            names=("updates", "state.exp_avg", "state.exp_avg_sq", "state.grad_sum"),
            where="dadapt_adamw.update")
        mu, nu, grad_sum, dots, l1 = unzip(updates, out, 5)
        num = sb2 * state.numerator_weighted + (1 - sb2) * dlr * total(dots)
        d = state.estim_lr
        new_d = jnp.maximum(d, _safe_ratio(num, (1 - sb2) * total(l1), d)).astype(d.dtype)
        wd = self.weight_decay

        def step(g, m, v, p):
            return (-wd * dlr * p - m / (jnp.sqrt(v) + eps)).astype(jnp.result_type(g))

        mapped = jtree.map_checked(step, updates, mu, nu, params,
                                   names=("updates", "state.exp_avg", "state.exp_avg_sq",
                                          "params"), where="dadapt_adamw.update")
        return mapped, DAdaptAdamWState(mu, nu, grad_sum, new_d,
                                        num.astype(state.numerator_weighted.dtype),
                                        jtree.increment(state.count))

    def learning_rate_factors(self, params, state, new_state):
        del params, new_state
        return [LrFactor("rate", self._dlr(state))]


# --- COCOB ---------------------------------------------------------------------------


class COCOBState(NamedTuple):
    """COCOB's state (optax's ``COCOBState``), every field shaped like the params:
    ``init_particles`` the starting params; ``cumulative_gradients`` minus the sum of
    gradients; ``scale`` the largest ``|g|`` so far (starts at ``eps``);
    ``subgradients`` the sum of ``|g|``; ``reward`` the wealth won so far."""

    init_particles: Any
    cumulative_gradients: Any
    scale: Any
    subgradients: Any
    reward: Any


class ScaleByCocob(Transform):
    """COCOB-Backprop's coin betting; see :func:`scale_by_cocob`."""

    alpha: Any
    eps: Any

    def init(self, params):
        hp.check_float_params("scale_by_cocob", params)
        return COCOBState(
            init_particles=copy_tree(params),
            cumulative_gradients=jtree.zeros_like(params),
            scale=jtree.full_like(params, self.eps),
            subgradients=jtree.zeros_like(params), reward=jtree.zeros_like(params))

    def update(self, updates, state, params=None, **extra):
        del extra
        hp.require_params("scale_by_cocob.update", params,
                          "COCOB bets from the starting params")
        alpha = self.alpha

        def leaf(c, p, p0, cum, scale, sub, reward):
            big = jnp.maximum(scale, jnp.abs(c))
            sub_new = sub + jnp.abs(c)
            reward_new = jnp.maximum(reward - c * (p - p0), 0)
            cum_new = cum - c
            bet = cum_new / (big * jnp.maximum(sub_new + big, alpha * big)) * (big + reward_new)
            u = -p + (p0 + bet)
            return (u.astype(jnp.result_type(c)), cum_new.astype(cum.dtype),
                    big.astype(scale.dtype), sub_new.astype(sub.dtype),
                    reward_new.astype(reward.dtype))

        out = jtree.map_checked(
            leaf, updates, params, *state,
            names=("updates", "params", *(f"state.{f}" for f in COCOBState._fields)),
            where="scale_by_cocob.update")
        u, cum, scale, sub, reward = unzip(updates, out, 5)
        return u, COCOBState(state.init_particles, cum, scale, sub, reward)


def scale_by_cocob(alpha: ArrayLike = 100.0, eps: ArrayLike = 1e-8) -> ScaleByCocob:
    """COCOB-Backprop (Orabona & Tommasi, 2017): each coordinate bets on its gradients.

    Per coordinate, with ``c`` the incoming update, ``p`` the params and ``p0`` their
    starting value::

        L <- max(L, |c|)                 (L starts at eps)
        G <- G + |c|
        R <- max(R - c * (p - p0), 0)
        C <- C - c
        u <- p0 + C / (L * max(G + L, alpha * L)) * (L + R) - p

    The update moves the params to the bet, so no step size follows it (optax's
    ``cocob`` puts ``learning_rate`` before it). Same numbers as
    ``optax.contrib.scale_by_cocob``.

    Args:
        alpha: caps the fraction of the wealth bet early on, > 0.
        eps: the initial scale ``L``, > 0 (it guards the first division).

    Example:
        >>> tx = scale_by_cocob(alpha=100.0)
    """
    where = "scale_by_cocob"
    hp.no_schedule(where, "alpha", alpha)
    hp.no_schedule(where, "eps", eps)
    hp.check_positive(where, "alpha", alpha,
                      fix="alpha bounds the early bets; the paper uses 100.")
    hp.check_positive(where, "eps", eps,
                      fix="eps is the initial gradient scale and a divisor; use e.g. 1e-8.")
    return ScaleByCocob(alpha=alpha, eps=eps)
