"""Mechanic: a learned scale for any optimizer's updates (optax.contrib's ``mechanize``).

Mechanic keeps the start ``x0`` and treats the base optimizer's summed updates as a
direction ``Delta``; it plays a coin-betting game (one bettor per decay rate in
``1 - 0.1**i``) for the scale ``s`` of that direction and sets ``x = x0 + sum(s) *
Delta``. The state is optax's ``MechanicState`` around the base optimizer's own.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import LrFactor, Transform, as_transform, static_field
from jtricks.transforms.parameter_free import copy_tree, dot, lowest_dtype, sq_norm, total, unzip

__all__ = ["MechanicState", "Mechanize", "mechanize"]


class MechanicState(NamedTuple):
    """Mechanic's state (optax's ``MechanicState``): the base optimizer's state;
    ``count`` int32; ``r``, ``m``, ``v``, ``s`` one entry per bettor (shape
    ``(num_betas,)``, the params' lowest dtype): reward, largest gain, sum of squared
    gains and scale; ``x0`` the params of the first update."""

    base_optimizer_state: Any
    count: jax.Array
    r: jax.Array
    m: jax.Array
    v: jax.Array
    s: jax.Array
    x0: Any


class Mechanize(Transform):
    """Mechanic around a base optimizer; see :func:`mechanize`."""

    base_optimizer: Transform
    weight_decay: Any
    eps: Any
    s_init: Any
    num_betas: int = static_field(default=6)

    def init(self, params):
        hp.check_float_params("mechanize", params)
        dtype, n = lowest_dtype(params), self.num_betas
        return MechanicState(
            base_optimizer_state=self.base_optimizer.init(params),
            count=jnp.zeros([], jnp.int32), r=jnp.zeros([n], dtype), m=jnp.zeros([n], dtype),
            v=jnp.zeros([n], dtype), s=(jnp.ones([n], dtype) * self.s_init).astype(dtype),
            x0=copy_tree(params))

    def _bet(self, state: MechanicState, h: jax.Array) -> tuple:
        """One round of the bettors on the gain ``h``: the new ``(r, m, v, s)``."""
        n, eps = self.num_betas, self.eps
        dtype = state.s.dtype
        betas = jnp.asarray([1.0 - 0.1 ** i for i in range(1, n + 1)], dtype)
        clipped = jnp.clip(jnp.ones_like(state.m) * h, -state.m, state.m)
        m = jnp.maximum(betas * state.m, jnp.abs(h) + eps)
        v = betas ** 2 * state.v + h ** 2
        r = betas * state.r + clipped * state.s
        wealth = (self.s_init / n) * m + jnp.maximum(0.0, r)
        s = wealth / (jnp.sqrt(v) + eps)
        return tuple(x.astype(dtype) for x in (r, m, v, s))

    def update(self, updates, state, params=None, **extra):
        where = "mechanize.update"
        hp.require_params(where, params, "Mechanic rescales the distance from the start")
        base_u, base_state = self.base_optimizer.update(
            updates, state.base_optimizer_state, params, **extra)
        # The start is the params of the first update, not of init: a run that loads
        # pretrained weights after init must measure its distance from those.
        first = state.count == 0
        s_sum, eps = jnp.sum(state.s), self.eps
        decay = (self.weight_decay * s_sum * jnp.sqrt(sq_norm(updates))
                 / (jnp.sqrt(sq_norm(params)) + eps))

        def direction(g, p, x, b):
            x = jnp.where(first, p, x).astype(x.dtype)
            g = g + decay * p
            delta_prev = (x - p) / (s_sum + eps)
            return x, delta_prev - b, dot(g, delta_prev)

        out = jtree.map_checked(direction, updates, params, state.x0, base_u,
                                names=("updates", "params", "state.x0", "base updates"),
                                where=where)
        x0, delta, gains = unzip(updates, out, 3)
        r, m, v, s = self._bet(state, total(gains))
        scale = jnp.sum(s)

        def step(g, x, d, p):
            return ((x - scale * d) - p).astype(jnp.result_type(g))

        u = jax.tree.map(step, updates, x0, delta, params)
        return u, MechanicState(base_optimizer_state=base_state,
                                count=jtree.increment(state.count), r=r, m=m, v=v, s=s, x0=x0)

    def hyperparams_at(self, state):
        return {"base_optimizer": self.base_optimizer.hyperparams_at(
                    state.base_optimizer_state),
                "weight_decay": self.weight_decay, "eps": self.eps, "s_init": self.s_init}

    def learning_rate_factors(self, params, state, new_state):
        # The base optimizer's rates, times the scale Mechanic learned for them.
        inner = self.base_optimizer.learning_rate_factors(
            params, state.base_optimizer_state, new_state.base_optimizer_state)
        return [*inner, LrFactor("scale", jnp.sum(new_state.s))]


def mechanize(base_optimizer: Any, weight_decay: ArrayLike = 1e-2, eps: ArrayLike = 1e-8,
              s_init: ArrayLike = 1e-6, num_betas: int = 6) -> Mechanize:
    """Mechanic (Cutkosky, Defazio & Mehta, 2023): learns the scale of any optimizer's
    updates.

    With ``x`` the params, ``x0`` their value at the first update, ``g`` the gradient,
    ``u`` the base optimizer's update, ``S = sum(s)`` and ``beta_i = 1 - 0.1**i``
    (``i = 1..num_betas``)::

        g     <- g + weight_decay * S * ||g|| / (||x|| + eps) * x
        Dprev  = (x0 - x) / (S + eps);   Delta = Dprev - u
        h      = <g, Dprev>
        m_i   <- max(beta_i * m_i, |h| + eps)
        v_i   <- beta_i**2 * v_i + h**2
        r_i   <- beta_i * r_i + clip(h, -m_i_old, m_i_old) * s_i
        s_i   <- (s_init / num_betas * m_i + max(r_i, 0)) / (sqrt(v_i) + eps)
        x     <- x0 - sum(s) * Delta         (the update is this minus the old x)

    Keep the base optimizer's learning rate (or schedule peak) at about 1 and let
    Mechanic find the scale. Same numbers as optax.contrib's ``mechanize``.

    Args:
        base_optimizer: the optimizer whose updates are scaled (jtricks or optax).
        weight_decay: Mechanic's own decay of the gain, >= 0 (not the base's decay).
        eps: guards the divisions, >= 0.
        s_init: the starting scale, > 0.
        num_betas: the number of bettors (decay rates ``1 - 0.1**i``), an integer
            >= 1; static (it is the state's shape).

    Example:
        >>> tx = mechanize(jt.adam(1.0))
    """
    where = "mechanize"
    for name, value in (("weight_decay", weight_decay), ("eps", eps), ("s_init", s_init)):
        hp.no_schedule(where, name, value)
    hp.check_nonnegative(where, "weight_decay", weight_decay,
                         fix="It decays the gain towards 0; the default 1e-2 rarely needs tuning.")
    hp.check_eps(where, "eps", eps)
    hp.check_positive(where, "s_init", s_init,
                      fix="It is the starting scale; a zero scale never moves. Use 1e-6.")
    if isinstance(num_betas, bool) or not isinstance(num_betas, int) or num_betas < 1:
        raise ValueError(f"{where}: num_betas must be a Python int >= 1, got {num_betas!r}. "
                         "It is the number of decay rates 1 - 0.1**i tried (the default 6).")
    return Mechanize(base_optimizer=as_transform(base_optimizer, where=where),
                     weight_decay=weight_decay, eps=eps, s_init=s_init,
                     num_betas=num_betas)
