"""Rules that use the change of the gradient between steps: Adan and optimistic descent.

Both keep the previous incoming update in their state (optax's field names) and add
a multiple of ``g_t - g_{t-1}``: an extrapolation that anticipates the next gradient.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform

__all__ = [
    "ScaleByAdanState",
    "ScaleByAdan",
    "scale_by_adan",
    "ScaleByOptimisticGradientState",
    "ScaleByOptimisticGradient",
    "scale_by_optimistic_gradient",
]


class ScaleByAdanState(NamedTuple):
    """``m``, ``v``, ``n``: Adan's three moments; ``g``: the previous update in;
    ``t``: int32 updates so far (optax's names)."""

    m: Any
    v: Any
    n: Any
    g: Any
    t: jax.Array


class ScaleByAdan(Transform):
    """Adan's Nesterov-style moments; see :func:`scale_by_adan`."""

    b1: Any
    b2: Any
    b3: Any
    eps: Any
    eps_root: Any

    def init(self, params):
        hp.check_float_params("scale_by_adan", params)
        return ScaleByAdanState(m=jtree.zeros_like(params), v=jtree.zeros_like(params),
                                n=jtree.zeros_like(params), g=jtree.zeros_like(params),
                                t=jtree.scalar(0, jnp.int32, params))

    def update(self, updates, state, params=None, **extra):
        del params, extra
        b1, b2, b3, eps, eps_root = (hp.value_at(x, state.t) for x in (
            self.b1, self.b2, self.b3, self.eps, self.eps_root))
        started = state.t > 0  # no previous gradient before the first step
        t = jtree.increment(state.t)
        c1, c2, c3 = (jtree.bias_correction(b, t) for b in (b1, b2, b3))

        def leaf(g, m, v, n, g_prev):
            diff = jnp.where(started, g - g_prev, 0)
            new_m = (1 - b1) * g + b1 * m
            new_v = (1 - b2) * diff + b2 * v
            new_n = (1 - b3) * jtree.abs_sq(g + (1 - b2) * diff) + b3 * n
            direction = new_m / c1.astype(m.dtype) + (1 - b2) * (new_v / c2.astype(v.dtype))
            u = direction / (jnp.sqrt(new_n / c3.astype(n.dtype) + eps_root) + eps)
            return (u.astype(jnp.result_type(g)), new_m.astype(m.dtype),
                    new_v.astype(v.dtype), new_n.astype(n.dtype), g.astype(g_prev.dtype))

        out = jtree.map_checked(leaf, updates, state.m, state.v, state.n, state.g,
                                names=("updates", "state.m", "state.v", "state.n",
                                       "state.g"), where="scale_by_adan.update")
        treedef = jax.tree.structure(updates)
        u, m, v, n, g = (treedef.unflatten(x) for x in zip(*treedef.flatten_up_to(out)))
        return u, ScaleByAdanState(m=m, v=v, n=n, g=g, t=t)


def scale_by_adan(b1: Any = 0.98, b2: Any = 0.92, b3: Any = 0.99, eps: Any = 1e-8,
                  eps_root: Any = 0.0) -> ScaleByAdan:
    """Rescales updates by Adan's moments (Xie et al., 2022, Algorithm 1).

    With ``g`` the incoming update, ``d = g - g_prev`` (0 at the first step) and
    ``t`` the 1-based step::

        m <- b1 * m + (1 - b1) * g
        v <- b2 * v + (1 - b2) * d
        n <- b3 * n + (1 - b3) * (g + (1 - b2) * d)**2
        u <- (m / (1 - b1**t) + (1 - b2) * v / (1 - b2**t))
             / (sqrt(n / (1 - b3**t) + eps_root) + eps)

    Same numbers as optax's ``scale_by_adan``.

    Args:
        b1: decay of the gradient average, in [0, 1).
        b2: decay of the gradient-difference average, in [0, 1).
        b3: decay of the squared term, in [0, 1).
        eps: added to the denominator outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.

    Example:
        >>> tx = jt.chain(jt.scale_by_adan(), jt.scale_by_learning_rate(1e-3))
    """
    for name, value in (("b1", b1), ("b2", b2), ("b3", b3)):
        hp.check_decay("scale_by_adan", name, value)
    hp.check_eps("scale_by_adan", "eps", eps)
    hp.check_eps("scale_by_adan", "eps_root", eps_root)
    return ScaleByAdan(b1=hp.as_hyper(b1), b2=hp.as_hyper(b2), b3=hp.as_hyper(b3),
                       eps=hp.as_hyper(eps), eps_root=hp.as_hyper(eps_root))


class ScaleByOptimisticGradientState(NamedTuple):
    """``is_initial_step``: a bool, True before the first update;
    ``previous_gradient``: the last update in, shaped like params."""

    is_initial_step: jax.Array
    previous_gradient: Any


class ScaleByOptimisticGradient(Transform):
    """Optimistic extrapolation; see :func:`scale_by_optimistic_gradient`."""

    alpha: Any
    beta: Any

    def init(self, params):
        hp.check_float_params("scale_by_optimistic_gradient", params)
        state = ScaleByOptimisticGradientState(
            is_initial_step=jtree.scalar(True, jnp.bool_, params),
            previous_gradient=jtree.zeros_like(params))
        return hp.with_count(self, state)  # a count only for a scheduled alpha or beta

    def update(self, updates, state, params=None, **extra):
        del params, extra
        count, inner = hp.split_count(state)
        alpha, beta = hp.value_at(self.alpha, count), hp.value_at(self.beta, count)
        initial = inner.is_initial_step

        def leaf(g, prev):
            # Before the first step there is no previous gradient: use g itself.
            prev_g = jnp.where(initial, g, prev)
            u = (alpha + beta) * g - beta * prev_g
            return u.astype(jnp.result_type(g)), g.astype(prev.dtype)

        out = jtree.map_checked(leaf, updates, inner.previous_gradient,
                                names=("updates", "state.previous_gradient"),
                                where="scale_by_optimistic_gradient.update")
        u, prev = jtree.unzip2(updates, out)
        new = ScaleByOptimisticGradientState(is_initial_step=jnp.zeros_like(initial),
                                             previous_gradient=prev)
        return u, hp.next_count(state, new)


def scale_by_optimistic_gradient(alpha: Any = 1.0, beta: Any = 1.0
                                 ) -> ScaleByOptimisticGradient:
    """Generalised optimistic gradient (Mokhtari et al., 2019; Daskalakis et al., 2018).

    With ``g`` the incoming update and ``g_prev`` the previous one (``g`` itself at
    the first step)::

        u <- (alpha + beta) * g - beta * g_prev  =  alpha * g + beta * (g - g_prev)

    ``alpha = beta = 1`` is optimistic gradient descent, ``2 g_t - g_{t-1}``: it
    converges on bilinear min-max games where gradient descent cycles. Same numbers
    as optax's ``scale_by_optimistic_gradient``.

    Args:
        alpha: coefficient of the current update; a float, an array or a schedule
            (a schedule adds a count to the state).
        beta: coefficient of the change since the last update (negative momentum).

    Example:
        >>> tx = jt.chain(jt.scale_by_optimistic_gradient(), jt.scale_by_learning_rate(0.1))
    """
    hp.check_finite("scale_by_optimistic_gradient", "alpha", alpha)
    hp.check_finite("scale_by_optimistic_gradient", "beta", beta)
    return ScaleByOptimisticGradient(alpha=hp.as_hyper(alpha), beta=hp.as_hyper(beta))
