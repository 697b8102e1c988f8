"""ACProp: AdaBelief's centred second moment, used asynchronously (the step divides
the raw gradient by the moment of the steps *before* it). The state is optax's
(:class:`ScaleByBeliefState`).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform
from jtricks.transforms.adam_variants import ScaleByBeliefState

__all__ = ["ScaleByAcprop", "scale_by_acprop"]


class ScaleByAcprop(Transform):
    """ACProp's scaling; see :func:`scale_by_acprop`."""

    b1: Any
    b2: Any
    eps: Any
    eps_root: Any

    def init(self, params):
        hp.check_float_params("scale_by_acprop", params)
        return ScaleByBeliefState(count=jnp.zeros([], jnp.int32),
                                  mu=jtree.zeros_like(params), nu=jtree.zeros_like(params))

    def update(self, updates, state, params=None, **extra):
        del params, extra
        count = state.count
        b1, b2, eps, eps_root = (hp.value_at(x, count)
                                 for x in (self.b1, self.b2, self.eps, self.eps_root))
        first = count == 0
        # The old s holds `count` steps; at the first step there is none and the
        # denominator is 1 (the debiasing count is then 1, so it divides by no zero).
        c2 = jtree.bias_correction(b2, jnp.where(first, 1, count))

        def leaf(g, m_old, s_old):
            m = (1 - b1) * g + b1 * m_old
            s = (1 - b2) * jtree.abs_sq(g - m_old) + b2 * s_old + eps_root
            s_hat = jnp.where(first, 1, s_old / c2.astype(s_old.dtype))
            u = g / (jnp.sqrt(s_hat) + eps)
            return u, m.astype(m_old.dtype), s.astype(s_old.dtype)

        out = jtree.map_checked(leaf, updates, state.mu, state.nu,
                                names=("updates", "state.mu", "state.nu"),
                                where="scale_by_acprop.update")
        u, mu, nu = jtree.unzip3(updates, out)
        return u, ScaleByBeliefState(count=jtree.increment(count), mu=mu, nu=nu)


def scale_by_acprop(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-16,
                    eps_root: Any = 1e-16) -> ScaleByAcprop:
    """Rescales updates as ACProp does (Zhuang et al., 2021, "Momentum Centering and
    Asynchronous Update for Adaptive Gradient Methods", arXiv:2110.05454): the gradient
    over the root of the centred second moment of the steps before it.

    With ``g`` the incoming update and ``k`` the 0-based step::

        u <- g / (sqrt(s / (1 - b2**k)) + eps)                 (g / (1 + eps) at k = 0)
        s <- b2 * s + (1 - b2) * (g - m)**2 + eps_root          (m before this step)
        m <- b1 * m + (1 - b1) * g

    Args:
        b1: decay of the first moment, in [0, 1); a float, an array or a schedule.
        b2: decay of the centred second moment, in [0, 1).
        eps: added to the denominator outside the square root, >= 0.
        eps_root: added to ``s`` at every step (it is kept in the state), >= 0.

    Example:
        >>> tx = jt.chain(jt.scale_by_acprop(), jt.scale_by_learning_rate(1e-3))
    """
    where = "scale_by_acprop"
    hp.check_decay(where, "b1", b1)
    hp.check_decay(where, "b2", b2)
    hp.check_eps(where, "eps", eps)
    hp.check_eps(where, "eps_root", eps_root)
    return ScaleByAcprop(b1=hp.as_hyper(b1), b2=hp.as_hyper(b2), eps=hp.as_hyper(eps),
                         eps_root=hp.as_hyper(eps_root))
