"""MADGRAD: momentumized, adaptive dual averaging. The update is the step to the new
parameters (the learning rate is inside the block, as in optax), so it needs the
params. The state is optax's :class:`MadgradState`, field for field.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import LrFactor, Transform

__all__ = ["MadgradState", "ScaleByMadgrad", "scale_by_madgrad"]


class MadgradState(NamedTuple):
    """``count`` int32 updates so far; ``grad_sum_sq`` the weighted sum of squared
    gradients; ``s`` the weighted sum of gradients; ``x0`` the initial parameters."""

    count: jax.Array
    grad_sum_sq: Any
    s: Any
    x0: Any


class ScaleByMadgrad(Transform):
    """MADGRAD's step; see :func:`scale_by_madgrad`."""

    learning_rate: Any
    momentum: Any
    eps: Any

    def init(self, params):
        hp.check_float_params("scale_by_madgrad", params)
        # x0 is a copy: a state donated with the params must not hold their buffers.
        return MadgradState(count=jnp.zeros([], jnp.int32),
                            grad_sum_sq=jtree.zeros_like(params), s=jtree.zeros_like(params),
                            x0=jax.tree.map(jnp.copy, params))

    def update(self, updates, state, params=None, **extra):
        del extra
        hp.require_params("scale_by_madgrad.update", params,
                          "MADGRAD steps from the current parameters")
        count = state.count
        lr, momentum, eps = (hp.value_at(x, count)
                             for x in (self.learning_rate, self.momentum, self.eps))
        # eps is added to the rate too (as in the reference PyTorch code), so a zero
        # rate still gives a finite dual average.
        lamb = (lr + eps) * jnp.sqrt(count.astype(jnp.float32) + 1)

        def leaf(g, sum_sq_old, s_old, x0, p):
            sum_sq = sum_sq_old + (lamb * jtree.abs_sq(g)).astype(g.dtype)
            s = s_old + (lamb * g).astype(g.dtype)
            z = x0 - s / (jnp.cbrt(sum_sq) + eps)
            u = (1 - momentum) * z + momentum * p - p
            return u, sum_sq.astype(sum_sq_old.dtype), s.astype(s_old.dtype)

        out = jtree.map_checked(leaf, updates, state.grad_sum_sq, state.s, state.x0, params,
                                names=("updates", "state.grad_sum_sq", "state.s", "state.x0",
                                       "params"),
                                where="scale_by_madgrad.update")
        u, grad_sum_sq, s = jtree.unzip3(updates, out)
        return u, MadgradState(count=jtree.increment(count), grad_sum_sq=grad_sum_sq, s=s,
                               x0=state.x0)

    def learning_rate_factors(self, params, state, new_state):
        del params, new_state
        return [LrFactor("rate", hp.value_at(self.learning_rate, state.count))]


def scale_by_madgrad(learning_rate: Any, momentum: Any = 0.9,
                     eps: Any = 1e-6) -> ScaleByMadgrad:
    """The MADGRAD step (Defazio & Jelassi, 2021, "Adaptivity without Compromise: A
    Momentumized, Adaptive, Dual Averaged Gradient Method for Stochastic
    Optimization", arXiv:2101.11075): a dual average of the gradients from the
    initial point ``x0``, scaled by a cube root, averaged into the iterate.

    With ``g`` the incoming update, ``p`` the params and ``k`` the 0-based step::

        lamb <- (lr(k) + eps) * sqrt(k + 1)
        G    <- G + lamb * g**2
        s    <- s + lamb * g
        z    =  x0 - s / (cbrt(G) + eps)
        u    <- (1 - momentum) * z + momentum * p - p        (so p + u is the new p)

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        momentum: weight of the current iterate in the average, in [0, 1).
        eps: added to the rate and to the denominator, >= 0.

    Example:
        >>> tx = jt.scale_by_madgrad(1e-2)
    """
    where = "scale_by_madgrad"
    hp.check_learning_rate(where, learning_rate)
    hp.check_decay(where, "momentum", momentum)
    hp.check_eps(where, "eps", eps)
    return ScaleByMadgrad(learning_rate=hp.as_hyper(learning_rate),
                          momentum=hp.as_hyper(momentum), eps=hp.as_hyper(eps))
