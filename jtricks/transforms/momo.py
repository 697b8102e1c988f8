"""MoMo: momentum with a Polyak-type step from a model of the loss (optax.contrib's
``momo`` and ``momo_adam``).

Both need the current loss: call ``tx.update(grads, state, params, value=loss)``.
States are optax's ``MomoState`` and ``MomoAdamState``; the factories, which
validate their arguments, are in :mod:`jtricks.optimizers.parameter_free`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, static_field
from jtricks.transforms.parameter_free import dot, lowest_dtype, sq_sum, total, unzip

__all__ = ["MomoState", "Momo", "MomoAdamState", "MomoAdam"]

# optax takes no step while the momentum's squared norm is below float64's epsilon.
_TINY = float(np.finfo(np.float64).eps)


def _loss_inputs(where: str, params: Any, value: Any) -> None:
    hp.require_params(where, params, "MoMo's step uses the inner product <momentum, params>")
    if value is None:
        raise ValueError(
            f"{where}: value (the current loss) is None, but MoMo's step is built from "
            "it. Compute it with jax.value_and_grad and call "
            "tx.update(grads, state, params, value=loss).")


def _scalar_states(params: Any, lower_bound: Any) -> dict:
    """``barf``, ``gamma`` (zeros) and ``lb`` (the lower bound), 0-d in the params'
    lowest dtype, as optax's init makes them."""
    dtype = lowest_dtype(params)
    return {"barf": jnp.zeros([], dtype), "gamma": jnp.zeros([], dtype),
            "lb": jnp.array(lower_bound, dtype)}


def _polyak_step(*, alpha, wd, barf, gamma, iprod, norm, lb, lower_bound, adapt, bc1=1.0):
    """MoMo's step ``tau`` and the next lower bound (MoMo-Adam passes its ``bc1``).

    The model of the loss along the momentum is ``barf + <m, x> - gamma``, and the
    step is its Polyak step towards the lower bound, capped at ``alpha / bc1``.
    """
    shrink = 1 + alpha * wd
    if adapt:  # lower the bound when the model says the loss is already below it
        cap = shrink * (barf - gamma) + iprod
        lb = jnp.where(cap < shrink * bc1 * lb,
                       jnp.maximum(cap / (2 * bc1 * shrink), lower_bound), lb)
    t1 = jnp.maximum(shrink * (barf - bc1 * lb - gamma) + iprod, 0.0) / norm
    t1 = jnp.where(norm <= _TINY, 0.0, t1)  # no step along a zero momentum
    tau = jnp.minimum(alpha / bc1, t1)
    return tau, ((barf + iprod - gamma) - (1 / 2) * tau * norm) / bc1


class MomoState(NamedTuple):
    """MoMo's state (optax's ``MomoState``): ``exp_avg`` the momentum; ``barf`` the
    averaged loss, ``gamma`` the averaged ``<g, x>``, ``lb`` the loss's lower bound
    (0-d, the params' lowest dtype); ``count`` int32."""

    exp_avg: Any
    barf: jax.Array
    gamma: jax.Array
    lb: jax.Array
    count: jax.Array


class Momo(Transform):
    """MoMo (SGD with momentum); see :func:`jtricks.momo`."""

    learning_rate: Any
    beta: Any
    lower_bound: Any
    weight_decay: Any
    adapt_lower_bound: bool = static_field(default=False)

    def init(self, params):
        hp.check_float_params("momo", params)
        return MomoState(exp_avg=jtree.zeros_like(params), **_scalar_states(
            params, self.lower_bound), count=jnp.zeros([], jnp.int32))

    def update(self, updates, state, params=None, *, value=None, **extra):
        del extra
        _loss_inputs("momo.update", params, value)
        count = state.count
        bt = jnp.where(count == 0, 0.0, self.beta)  # the first step starts the averages
        barf = bt * state.barf + (1 - bt) * jnp.asarray(value, state.barf.dtype)

        def moments(g, p, m):
            m_new = (bt * m + (1 - bt) * g).astype(m.dtype)
            return m_new, dot(g, p), sq_sum(m_new), dot(m_new, p)

        out = jtree.map_checked(moments, updates, params, state.exp_avg,
                                names=("updates", "params", "state.exp_avg"),
                                where="momo.update")
        mu, gp, sq, mp = unzip(updates, out, 4)
        gamma = bt * state.gamma + (1 - bt) * total(gp)
        alpha, wd = hp.value_at(self.learning_rate, count), self.weight_decay
        tau, lb = _polyak_step(alpha=alpha, wd=wd, barf=barf, gamma=gamma, iprod=total(mp),
                               norm=total(sq), lb=state.lb, lower_bound=self.lower_bound,
                               adapt=self.adapt_lower_bound)

        def step(g, m, p):
            u = -(alpha * wd) / (1 + alpha * wd) * p - tau * m
            return u.astype(jnp.result_type(g))

        u = jax.tree.map(step, updates, mu, params)
        lb = jnp.maximum(lb, self.lower_bound) if self.adapt_lower_bound else state.lb
        dtype = state.barf.dtype
        return u, MomoState(mu, barf.astype(dtype), gamma.astype(state.gamma.dtype),
                            lb.astype(state.lb.dtype), jtree.increment(count))


class MomoAdamState(NamedTuple):
    """MoMo-Adam's state (optax's ``MomoAdamState``): ``exp_avg`` and
    ``exp_avg_sq`` Adam's moments; ``barf``, ``gamma``, ``lb`` as in
    :class:`MomoState`; ``count`` int32."""

    exp_avg: Any
    exp_avg_sq: Any
    barf: jax.Array
    gamma: jax.Array
    lb: jax.Array
    count: jax.Array


class MomoAdam(Transform):
    """MoMo-Adam; see :func:`jtricks.momo_adam`."""

    learning_rate: Any
    b1: Any
    b2: Any
    eps: Any
    lower_bound: Any
    weight_decay: Any
    adapt_lower_bound: bool = static_field(default=False)

    def init(self, params):
        hp.check_float_params("momo_adam", params)
        return MomoAdamState(exp_avg=jtree.zeros_like(params),
                             exp_avg_sq=jtree.zeros_like(params),
                             **_scalar_states(params, self.lower_bound),
                             count=jnp.zeros([], jnp.int32))

    def update(self, updates, state, params=None, *, value=None, **extra):
        del extra
        _loss_inputs("momo_adam.update", params, value)
        b1, b2, eps = self.b1, self.b2, self.eps
        count = jtree.increment(state.count)
        dtype = state.barf.dtype
        barf = b1 * state.barf + (1 - b1) * jnp.asarray(value, dtype)
        bc1 = jnp.asarray(1 - b1 ** count, dtype)
        bc2 = jnp.asarray(1 - b2 ** count, dtype)

        def moments(g, p, m, v):
            m_new = (b1 * m + (1 - b1) * g).astype(m.dtype)
            v_new = (b2 * v + (1 - b2) * jtree.abs_sq(g)).astype(v.dtype)
            precond = eps + jnp.sqrt(v_new / bc2)
            return m_new, v_new, dot(m_new, m_new / precond), dot(g, p), dot(m_new, p)

        out = jtree.map_checked(moments, updates, params, state.exp_avg, state.exp_avg_sq,
                                names=("updates", "params", "state.exp_avg",
                                       "state.exp_avg_sq"), where="momo_adam.update")
        mu, nu, sq, gp, mp = unzip(updates, out, 5)
        gamma = b1 * state.gamma + (1 - b1) * total(gp)
        alpha, wd = hp.value_at(self.learning_rate, state.count), self.weight_decay
        tau, lb = _polyak_step(alpha=alpha, wd=wd, barf=barf, gamma=gamma, iprod=total(mp),
                               norm=total(sq), lb=state.lb, lower_bound=self.lower_bound,
                               adapt=self.adapt_lower_bound, bc1=bc1)

        def step(g, m, v, p):
            u = -(alpha * wd) / (1 + alpha * wd) * p - tau * m / (eps + jnp.sqrt(v / bc2))
            return u.astype(jnp.result_type(g))

        u = jax.tree.map(step, updates, mu, nu, params)
        lb = jnp.maximum(lb, self.lower_bound) if self.adapt_lower_bound else state.lb
        return u, MomoAdamState(mu, nu, barf.astype(dtype), gamma.astype(state.gamma.dtype),
                                lb.astype(state.lb.dtype), count)
