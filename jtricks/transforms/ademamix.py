"""AdEMAMix and its simplified form: Adam whose numerator mixes a fast momentum with a
slow one (or with the raw gradient), so gradients from thousands of steps ago still
steer the update. States are optax's, field for field.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, static_field

__all__ = [
    "ScaleByAdemamixState",
    "ScaleByAdemamix",
    "scale_by_ademamix",
    "ScaleBySimplifiedAdEMAMixState",
    "ScaleBySimplifiedAdemamix",
    "scale_by_simplified_ademamix",
]


def _check_alpha(where: str, alpha: Any) -> None:
    """The mixing coefficient weighs a momentum into the numerator: finite and >= 0."""
    hp.check(where, "alpha", alpha, lambda x: np.isfinite(x) & (x >= 0), "a finite number >= 0",
             fix="alpha weighs the slow momentum (or the gradient) in the numerator; the "
             "papers use 0 to 10.")


class ScaleByAdemamixState(NamedTuple):
    """``count`` int32 updates of ``m1`` and ``nu`` so far; ``count_m2`` of ``m2`` (it
    indexes the schedules of ``b3`` and ``alpha``); ``m1`` the fast EMA of the
    gradient, ``m2`` the slow one, ``nu`` the EMA of its square."""

    count: jax.Array
    count_m2: jax.Array
    m1: Any
    m2: Any
    nu: Any


class ScaleByAdemamix(Transform):
    """AdEMAMix's scaling; see :func:`scale_by_ademamix`."""

    b1: Any
    b2: Any
    b3: Any
    alpha: Any
    eps: Any
    eps_root: Any
    mu_dtype: Any = static_field(default=None)

    def init(self, params):
        hp.check_float_params("scale_by_ademamix", params)
        return ScaleByAdemamixState(
            count=jnp.zeros([], jnp.int32), count_m2=jnp.zeros([], jnp.int32),
            m1=jtree.zeros_like(params, self.mu_dtype), m2=jtree.zeros_like(params, self.mu_dtype),
            nu=jtree.zeros_like(params, self.mu_dtype))

    def update(self, updates, state, params=None, **extra):
        del params, extra
        b1, b2, eps, eps_root = (hp.value_at(x, state.count)
                                 for x in (self.b1, self.b2, self.eps, self.eps_root))
        # The slow momentum and its weight run on their own count, as in optax.
        b3, alpha = (hp.value_at(x, state.count_m2) for x in (self.b3, self.alpha))
        count = jtree.increment(state.count)
        c1 = jtree.bias_correction(b1, count)
        c2 = jtree.bias_correction(b2, count)

        def leaf(g, m1_old, m2_old, v_old):
            m1 = (1 - b1) * g + b1 * m1_old
            m2 = (1 - b3) * g + b3 * m2_old
            v = (1 - b2) * jtree.abs_sq(g) + b2 * v_old
            # The slow EMA is not debiased: it is meant to fill up slowly.
            u = (m1 / c1.astype(m1.dtype) + alpha * m2) / (
                jnp.sqrt(v / c2.astype(v.dtype) + eps_root) + eps)
            return (u, m1.astype(m1_old.dtype), m2.astype(m2_old.dtype),
                    v.astype(v_old.dtype))

        out = jtree.map_checked(leaf, updates, state.m1, state.m2, state.nu,
                                names=("updates", "state.m1", "state.m2", "state.nu"),
                                where="scale_by_ademamix.update")
        treedef = jax.tree.structure(updates)
        u, m1, m2, nu = (treedef.unflatten(x) for x in zip(*treedef.flatten_up_to(out)))
        return u, ScaleByAdemamixState(count=count, count_m2=jtree.increment(state.count_m2),
                                       m1=m1, m2=m2, nu=nu)


def scale_by_ademamix(b1: Any = 0.9, b2: Any = 0.999, b3: Any = 0.9999, alpha: Any = 6.0,
                      eps: Any = 1e-8, eps_root: Any = 0.0,
                      mu_dtype: Any = None) -> ScaleByAdemamix:
    """Rescales updates as AdEMAMix does (Pagliardini, Ablin & Grangier, 2024, "The
    AdEMAMix Optimizer: Better, Faster, Older", arXiv:2409.03137): Adam's debiased
    fast momentum plus ``alpha`` times a slow, undebiased one.

    With ``g`` the incoming update and ``t`` the 1-based step::

        m1 <- b1 * m1 + (1 - b1) * g
        m2 <- b3 * m2 + (1 - b3) * g
        nu <- b2 * nu + (1 - b2) * g**2
        u  <- (m1 / (1 - b1**t) + alpha * m2) / (sqrt(nu / (1 - b2**t) + eps_root) + eps)

    The paper warms ``b3`` and ``alpha`` up with schedules; pass them as schedules
    (they are read at ``count_m2``).

    Args:
        b1: decay of the fast momentum, in [0, 1); a float, an array or a schedule.
        b2: decay of the second moment, in [0, 1).
        b3: decay of the slow momentum, in [0, 1); typically 0.999-0.9999.
        alpha: weight of the slow momentum, finite and >= 0 (optax's block default 6;
            :func:`jtricks.ademamix` defaults to 5, as optax's).
        eps: added to the denominator outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        mu_dtype: dtype of ``m1``, ``m2`` and ``nu`` in the state (optax keeps all
            three in it); ``None`` keeps the params'. Static.

    Example:
        >>> tx = jt.chain(jt.scale_by_ademamix(b3=0.999), jt.scale_by_learning_rate(1e-3))
    """
    where = "scale_by_ademamix"
    for name, value in (("b1", b1), ("b2", b2), ("b3", b3)):
        hp.check_decay(where, name, value)
    _check_alpha(where, alpha)
    hp.check_eps(where, "eps", eps)
    hp.check_eps(where, "eps_root", eps_root)
    return ScaleByAdemamix(b1=hp.as_hyper(b1), b2=hp.as_hyper(b2), b3=hp.as_hyper(b3),
                           alpha=hp.as_hyper(alpha), eps=hp.as_hyper(eps),
                           eps_root=hp.as_hyper(eps_root),
                           mu_dtype=None if mu_dtype is None else jnp.dtype(mu_dtype))


class ScaleBySimplifiedAdEMAMixState(NamedTuple):
    """``t`` int32 updates so far; ``m`` the undamped momentum ``sum b1**k g``; ``n``
    the EMA of the squared gradient (optax's names)."""

    t: jax.Array
    m: Any
    n: Any


class ScaleBySimplifiedAdemamix(Transform):
    """Simplified AdEMAMix's scaling; see :func:`scale_by_simplified_ademamix`."""

    b1: Any
    b2: Any
    alpha: Any
    eps: Any
    eps_root: Any

    def init(self, params):
        hp.check_float_params("scale_by_simplified_ademamix", params)
        return ScaleBySimplifiedAdEMAMixState(t=jnp.zeros([], jnp.int32),
                                              m=jtree.zeros_like(params),
                                              n=jtree.zeros_like(params))

    def update(self, updates, state, params=None, **extra):
        del params, extra
        b1, b2, alpha, eps, eps_root = (
            hp.value_at(x, state.t)
            for x in (self.b1, self.b2, self.alpha, self.eps, self.eps_root))
        t = jtree.increment(state.t)
        c2 = jtree.bias_correction(b2, t)

        def leaf(g, m_old, n_old):
            m = g + b1 * m_old
            g2 = jtree.abs_sq(g)
            # n moves from g**2 towards the old n by b2 (optax's lerp, same rounding).
            n = g2 + b2 * (n_old - g2)
            u = (m + alpha * g) / (jnp.sqrt(n / c2.astype(n.dtype) + eps_root) + eps)
            return u, m.astype(m_old.dtype), n.astype(n_old.dtype)

        out = jtree.map_checked(leaf, updates, state.m, state.n,
                                names=("updates", "state.m", "state.n"),
                                where="scale_by_simplified_ademamix.update")
        u, m, n = jtree.unzip3(updates, out)
        return u, ScaleBySimplifiedAdEMAMixState(t=t, m=m, n=n)

    def hyperparams_at(self, state):
        # The step count is called ``t`` here, not ``count``.
        return {name: hp.value_at(getattr(self, name), state.t) for name in self._data_fields}


def scale_by_simplified_ademamix(b1: Any = 0.99, b2: Any = 0.95, alpha: Any = 0.0,
                                 eps: Any = 1e-8,
                                 eps_root: Any = 0.0) -> ScaleBySimplifiedAdemamix:
    """Rescales updates as Simplified AdEMAMix does (Morwani et al., 2025,
    "Connections between Schedule-Free Optimizers, AdEMAMix, and Accelerated SGD
    Variants", arXiv:2502.02431): one undamped momentum, plus ``alpha`` times the
    gradient, over Adam's denominator.

    With ``g`` the incoming update and ``t`` the 1-based step::

        m <- b1 * m + g                       (no (1 - b1) factor)
        n <- b2 * n + (1 - b2) * g**2
        u <- (m + alpha * g) / (sqrt(n / (1 - b2**t) + eps_root) + eps)

    Args:
        b1: decay of the momentum, in [0, 1) (``m`` grows to ``g / (1 - b1)``); a
            float, an array or a schedule.
        b2: decay of the second moment, in [0, 1).
        alpha: weight of the current gradient, finite and >= 0 (0 is Adam with a
            rescaled learning rate).
        eps: added to the denominator outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.

    Example:
        >>> tx = jt.chain(jt.scale_by_simplified_ademamix(alpha=1.0),
        ...               jt.scale_by_learning_rate(1e-4))
    """
    where = "scale_by_simplified_ademamix"
    hp.check_decay(where, "b1", b1)
    hp.check_decay(where, "b2", b2)
    _check_alpha(where, alpha)
    hp.check_eps(where, "eps", eps)
    hp.check_eps(where, "eps_root", eps_root)
    return ScaleBySimplifiedAdemamix(b1=hp.as_hyper(b1), b2=hp.as_hyper(b2),
                                     alpha=hp.as_hyper(alpha), eps=hp.as_hyper(eps),
                                     eps_root=hp.as_hyper(eps_root))
