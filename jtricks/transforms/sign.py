"""Sign-based updates: the sign of the gradient (signSGD), of its EMA (Signum), or of
an interpolation of the two (Lion). Every coordinate moves by the same amount."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Stateless, Transform, static_field

__all__ = [
    "ScaleBySign",
    "scale_by_sign",
    "ScaleByLionState",
    "ScaleByLion",
    "scale_by_lion",
]

LION_MODES = ("hard", "smooth", "refined")


class ScaleBySign(Stateless):
    """``u -> sign(u)``; see :func:`scale_by_sign`."""

    def update(self, updates, state, params=None, **extra):
        del params, extra
        return jax.tree.map(jnp.sign, updates), state


def scale_by_sign() -> ScaleBySign:
    """Replaces each coordinate of the update by its sign (Bernstein et al., 2018,
    "signSGD: Compressed Optimisation for Non-Convex Problems").

    ::

        u <- sign(g)            (-1, 0 or +1; g / |g| for complex g)

    Example:
        >>> tx = jt.chain(jt.scale_by_sign(), jt.scale_by_learning_rate(1e-3))
    """
    return ScaleBySign()


class ScaleByLionState(NamedTuple):
    """``count`` int32 updates so far; ``mu`` the momentum (optax's ``ScaleByLionState``)."""

    count: jax.Array
    mu: Any


class ScaleByLion(Transform):
    """Lion's update direction; see :func:`scale_by_lion`."""

    b1: Any
    b2: Any
    smooth_beta: Any
    mu_dtype: Any = static_field(default=None)
    mode: str = static_field(default="hard")

    def init(self, params):
        hp.check_float_params("scale_by_lion", params)
        return ScaleByLionState(count=jtree.scalar(0, jnp.int32, params),
                                mu=jtree.zeros_like(params, self.mu_dtype))

    def update(self, updates, state, params=None, **extra):
        del params, extra
        b1, b2, beta = (hp.value_at(x, state.count)
                        for x in (self.b1, self.b2, self.smooth_beta))
        mode = self.mode

        def direction(x):
            if mode == "smooth":
                return jnp.tanh(beta * x)
            if mode == "refined":  # linear near 0, the sign beyond |x| = 1
                return jnp.where(jnp.abs(x) < 1.0, x, jnp.sign(x))
            return jnp.sign(x)

        def leaf(g, m_old):
            u = direction((1 - b1) * g + b1 * m_old)
            return u, ((1 - b2) * g + b2 * m_old).astype(m_old.dtype)

        out = jtree.map_checked(leaf, updates, state.mu, names=("updates", "state.mu"),
                                where="scale_by_lion.update")
        u, mu = jtree.unzip2(updates, out)
        return u, ScaleByLionState(count=jtree.increment(state.count), mu=mu)


def scale_by_lion(b1: Any = 0.9, b2: Any = 0.99, mu_dtype: Any = None, *,
                  mode: str = "hard", smooth_beta: Any = 1.0) -> ScaleByLion:
    """Lion's direction (Chen et al., 2023, "Symbolic Discovery of Optimization
    Algorithms"): the sign of an interpolation between the momentum and the gradient,
    with the momentum itself decaying more slowly.

    ::

        c <- b1 * m + (1 - b1) * g
        u <- sign(c)                                    (mode="hard")
        u <- tanh(smooth_beta * c)                      (mode="smooth")
        u <- c where |c| < 1, else sign(c)              (mode="refined")
        m <- b2 * m + (1 - b2) * g

    Args:
        b1: weight of the momentum in the direction, in [0, 1); a float, an array or
            a schedule.
        b2: decay of the momentum, in [0, 1).
        mu_dtype: dtype of ``mu`` in the state; ``None`` keeps the params'. Static.
        mode: ``"hard"``, ``"smooth"`` or ``"refined"``, as above. Static.
        smooth_beta: the slope of ``tanh`` in ``"smooth"`` mode, > 0.

    Example:
        >>> tx = jt.chain(jt.scale_by_lion(), jt.scale_by_learning_rate(1e-4))
    """
    hp.check_decay("scale_by_lion", "b1", b1)
    hp.check_decay("scale_by_lion", "b2", b2)
    if mode not in LION_MODES:
        raise ValueError(
            f"scale_by_lion: mode must be one of {LION_MODES}, got "
            f"{mode!r}. 'hard' is the paper's sign; 'smooth' and 'refined' soften it.")
    hp.check_positive("scale_by_lion", "smooth_beta", smooth_beta,
                      fix="smooth_beta is the slope of tanh in mode='smooth'; e.g. 1.0.")
    return ScaleByLion(b1=hp.as_hyper(b1), b2=hp.as_hyper(b2),
                       smooth_beta=hp.as_hyper(smooth_beta),
                       mu_dtype=None if mu_dtype is None else jnp.dtype(mu_dtype),
                       mode=str(mode))
