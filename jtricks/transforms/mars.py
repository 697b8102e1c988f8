"""MARS (Yuan et al. 2024): Adam's moments of a variance-reduced, clipped gradient.

MARS ("Make vAriance Reduction Shine", arXiv:2411.10438) corrects each stochastic
gradient with a scaled difference of consecutive gradients (a STORM-style recursive
momentum), clips the corrected gradient to norm 1 and feeds it to Adam's moment
estimates. This module is the MARS-AdamW instance in its approximate form (MARS-approx,
the one the paper trains with: the previous step's gradient stands in for a second
gradient evaluation at the previous point).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, static_field

__all__ = ["ScaleByMarsState", "ScaleByMars", "scale_by_mars"]


class ScaleByMarsState(NamedTuple):
    """``count`` int32 updates so far; ``mu``, ``nu`` Adam's moments of the clipped
    corrected gradient; ``prev_grad`` the incoming update of the previous step."""

    count: jax.Array
    mu: Any
    nu: Any
    prev_grad: Any


class ScaleByMars(Transform):
    """MARS-AdamW's direction; see :func:`scale_by_mars`."""

    b1: Any
    b2: Any
    eps: Any
    gamma: Any
    per_leaf_clip: bool = static_field(default=False)

    def init(self, params):
        hp.check_float_params("scale_by_mars", params)
        # A fresh buffer per field: a donated state must never hold one array twice.
        return ScaleByMarsState(count=jtree.scalar(0, jnp.int32, params),
                                mu=jtree.zeros_like(params), nu=jtree.zeros_like(params),
                                prev_grad=jtree.zeros_like(params))

    def _corrected(self, updates, state, b1):
        gamma = hp.value_at(self.gamma, state.count)
        weight = gamma * b1 / (1 - b1)
        # The paper starts from x_1 = x_0, so the first correction is zero.
        first = state.count == 0

        def correct(g, prev):
            prev = jnp.where(first, g, prev.astype(g.dtype))
            return g + weight * (g - prev)

        return jtree.map_checked(correct, updates, state.prev_grad,
                                 names=("updates", "state.prev_grad"),
                                 where="scale_by_mars.update")

    def update(self, updates, state, params=None, **extra):
        del params, extra
        b1 = hp.value_at(self.b1, state.count)
        b2 = hp.value_at(self.b2, state.count)
        eps = hp.value_at(self.eps, state.count)
        c = self._corrected(updates, state, b1)
        # Clip(c, 1) = c / max(||c||, 1): the same as dividing by ||c|| only above 1.
        if self.per_leaf_clip:
            c = jax.tree.map(lambda x: x / jnp.maximum(jtree.norm(x), 1).astype(x.dtype), c)
        else:
            shrink = 1 / jnp.maximum(jtree.global_norm(c), 1)
            c = jax.tree.map(lambda x: x * shrink.astype(x.dtype), c)
        count = jtree.increment(state.count)
        c1 = jtree.bias_correction(b1, count)
        c2 = jtree.bias_correction(b2, count)

        def leaf(g, ct, m_old, v_old, prev):
            # One fused pass per leaf; the state keeps the dtypes init gave it.
            m = (1 - b1) * ct + b1 * m_old
            v = (1 - b2) * jtree.abs_sq(ct) + b2 * v_old
            u = (m / c1.astype(m.dtype)) / (jnp.sqrt(v / c2.astype(v.dtype)) + eps)
            return u, m.astype(m_old.dtype), v.astype(v_old.dtype), g.astype(prev.dtype)

        out = jtree.map_checked(leaf, updates, c, state.mu, state.nu, state.prev_grad,
                                names=("updates", "corrected", "state.mu", "state.nu",
                                       "state.prev_grad"),
                                where="scale_by_mars.update")
        treedef = jax.tree.structure(updates)
        parts = treedef.flatten_up_to(out)
        u, mu, nu, prev = (treedef.unflatten([p[i] for p in parts]) for i in range(4))
        return u, ScaleByMarsState(count=count, mu=mu, nu=nu, prev_grad=prev)


def scale_by_mars(b1: Any = 0.95, b2: Any = 0.99, eps: Any = 1e-8, gamma: Any = 0.025, *,
                  per_leaf_clip: bool = False) -> ScaleByMars:
    """Rescales updates as MARS-AdamW does (Yuan et al. 2024, arXiv:2411.10438).

    With ``g_t`` the incoming update at the 1-based step ``t`` (and ``g_0 = g_1``: the
    paper's ``x_1 = x_0``, so the first step has no correction)::

        c_t = g_t + gamma * b1 / (1 - b1) * (g_t - g_{t-1})
        c~_t = c_t / ||c_t||_2   if ||c_t||_2 > 1,   else c_t
        m <- b1 * m + (1 - b1) * c~_t
        v <- b2 * v + (1 - b2) * c~_t**2
        u <- (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)

    ``||c_t||_2`` is the norm of the whole update tree, as in the paper's algorithm
    (the parameters are one vector there); ``per_leaf_clip=True`` clips each leaf by
    its own norm instead, as the authors' PyTorch code does per tensor. This is
    MARS-approx (the previous step's gradient stands in for a second evaluation).
    Follow it with weight decay and a learning rate, as :func:`jtricks.mars` does.

    Args:
        b1: decay of the first moment, in [0, 1); also scales the correction. A
            float, an array or a schedule.
        b2: decay of the second moment, in [0, 1).
        eps: added to the denominator outside the square root, >= 0.
        gamma: strength of the gradient correction, >= 0 (0 gives Adam of the
            clipped gradient).
        per_leaf_clip: clip each leaf's corrected gradient separately (static).

    Example:
        >>> tx = jt.chain(jt.scale_by_mars(gamma=0.025), jt.scale_by_learning_rate(3e-3))
    """
    where = "scale_by_mars"
    hp.check_decay(where, "b1", b1)
    hp.check_decay(where, "b2", b2)
    hp.check_eps(where, "eps", eps)
    hp.check_nonnegative(where, "gamma", gamma,
                         fix="gamma scales the gradient correction; the paper uses 0.025.")
    return ScaleByMars(b1=hp.as_hyper(b1), b2=hp.as_hyper(b2), eps=hp.as_hyper(eps),
                       gamma=hp.as_hyper(gamma), per_leaf_clip=bool(per_leaf_clip))
