"""ADOPT: Adam with the gradient normalised by the *previous* second moment before it
enters the momentum, which makes it converge for any ``b2``. The state is optax's
(:class:`ScaleByAdamState`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, static_field
from jtricks.transforms.adaptive import ScaleByAdamState

__all__ = ["ScaleByAdopt", "scale_by_adopt"]


def _fourth_root(count: jax.Array) -> jax.Array:
    """``count ** 0.25``: ADOPT's default clipping bound at the 0-based step ``count``
    (one module-level function, so every default transform hashes alike)."""
    return count ** 0.25


class ScaleByAdopt(Transform):
    """ADOPT's scaling; see :func:`scale_by_adopt`."""

    b1: Any
    b2: Any
    eps: Any
    clip_value_fn: Any
    mu_dtype: Any = static_field(default=None)
    nesterov: bool = static_field(default=False)
    use_clipping: bool = static_field(default=True)

    def init(self, params):
        hp.check_float_params("scale_by_adopt", params)
        return ScaleByAdamState(count=jnp.zeros([], jnp.int32),
                                mu=jtree.zeros_like(params, self.mu_dtype),
                                nu=jtree.zeros_like(params))

    def update(self, updates, state, params=None, **extra):
        del params, extra
        count = state.count
        b1, b2, eps = (hp.value_at(x, count) for x in (self.b1, self.b2, self.eps))
        # The first step only records g**2 (nu starts at it) and leaves mu at 0.
        first = count == 0
        b1 = jnp.where(first, 1, b1)
        b2 = jnp.where(first, 0, b2)
        bound = self.clip_value_fn(count) if self.use_clipping else None
        nesterov = self.nesterov

        def leaf(g, m_old, v_old):
            # The gradient is normalised by the second moment *before* this step's g.
            x = g / jnp.maximum(jnp.sqrt(v_old), eps)
            if bound is not None:
                x = jnp.clip(x, -bound, bound)
            m = (1 - b1) * x + b1 * m_old
            u = (1 - b1) * x + b1 * m if nesterov else m
            v = (1 - b2) * jtree.abs_sq(g) + b2 * v_old
            return u, m.astype(m_old.dtype), v.astype(v_old.dtype)

        out = jtree.map_checked(leaf, updates, state.mu, state.nu,
                                names=("updates", "state.mu", "state.nu"),
                                where="scale_by_adopt.update")
        u, mu, nu = jtree.unzip3(updates, out)
        return u, ScaleByAdamState(count=jtree.increment(count), mu=mu, nu=nu)


def scale_by_adopt(b1: Any = 0.9, b2: Any = 0.9999, eps: Any = 1e-6, mu_dtype: Any = None,
                   *, nesterov: bool = False, use_clipping: bool = True,
                   clip_value_fn: Any = _fourth_root) -> ScaleByAdopt:
    """Rescales updates as ADOPT does (Taniguchi et al., 2024, "ADOPT: Modified Adam Can
    Converge with Any beta_2 with the Optimal Rate", arXiv:2411.02853): the gradient is
    divided by the root of the second moment of the steps *before* it, clipped, and
    only then averaged into the momentum.

    With ``g`` the incoming update and ``k`` the 0-based step (at ``k = 0`` the update
    is 0 and ``nu`` becomes ``g**2``)::

        x  <- clip(g / max(sqrt(nu), eps), -c(k), c(k))      c = clip_value_fn
        m  <- b1 * m + (1 - b1) * x
        u  <- m                                  (b1 * m + (1 - b1) * x with nesterov)
        nu <- b2 * nu + (1 - b2) * g**2

    Args:
        b1: decay of the momentum, in [0, 1); a float, an array or a schedule.
        b2: decay of the second moment, in [0, 1).
        eps: the smallest root of the second moment divided by, > 0 (at 0 a
            coordinate whose gradient has been 0 gives 0 / 0).
        mu_dtype: dtype of ``mu`` in the state; ``None`` keeps the params'. Static.
        nesterov: Nesterov momentum. Static.
        use_clipping: clip the normalised gradient to ``[-c(k), c(k)]``. Static.
        clip_value_fn: the bound ``c`` as a function of the 0-based step (a schedule);
            ``k ** 0.25`` (optax's default) by default.

    Example:
        >>> tx = jt.chain(jt.scale_by_adopt(), jt.scale_by_learning_rate(1e-3))
    """
    where = "scale_by_adopt"
    hp.check_decay(where, "b1", b1)
    hp.check_decay(where, "b2", b2)
    hp.check_positive(where, "eps", eps,
                      fix="eps bounds the divisor max(sqrt(nu), eps); use e.g. 1e-6.")
    if not callable(clip_value_fn):
        raise TypeError(
            f"{hp.reporter(where)}: clip_value_fn must be a function of the step count "
            f"(a schedule), got {type(clip_value_fn).__name__}: {clip_value_fn!r}. Pass "
            "e.g. lambda k: k ** 0.25, or use_clipping=False to clip nothing.")
    return ScaleByAdopt(b1=hp.as_hyper(b1), b2=hp.as_hyper(b2), eps=hp.as_hyper(eps),
                        clip_value_fn=hp.as_hyper(clip_value_fn),
                        mu_dtype=None if mu_dtype is None else jnp.dtype(mu_dtype),
                        nesterov=bool(nesterov), use_clipping=bool(use_clipping))
