"""Reshaping the update without state: normalising by its norm, centralising it.

Both are stateless (:class:`jtricks.EmptyState`, as optax's), so a hyperparameter
here is a number or an array, never a schedule.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Stateless

__all__ = [
    "NormalizeByUpdateNorm",
    "normalize_by_update_norm",
    "Centralize",
    "centralize",
]


class NormalizeByUpdateNorm(Stateless):
    """``u -> scale_factor * u / (||u|| + eps)``; see :func:`normalize_by_update_norm`."""

    scale_factor: Any
    eps: Any

    def update(self, updates, state, params=None, **extra):
        del params, extra
        norm = (jtree.global_norm(updates) + self.eps) / self.scale_factor
        return jax.tree.map(lambda g: (g / norm).astype(jnp.result_type(g)), updates), state


def normalize_by_update_norm(scale_factor: ArrayLike = 1.0,
                             eps: ArrayLike = 1e-6) -> NormalizeByUpdateNorm:
    """Rescales the whole update to length ``scale_factor`` (the lesson's g/||g||).

    With ``||g||`` the global L2 norm over every leaf (accumulated in fp32)::

        u <- scale_factor * g / (||g|| + eps)

    Same numbers as optax's ``normalize_by_update_norm``; ``scale_factor=-1`` gives
    a descent direction of unit length.

    Args:
        scale_factor: the length of the result, finite and non-zero (negative to
            descend).
        eps: added to the norm, >= 0.

    Example:
        >>> tx = jt.chain(jt.normalize_by_update_norm(), jt.scale_by_learning_rate(0.01))
    """
    where = "normalize_by_update_norm"
    hp.no_schedule(where, "scale_factor", scale_factor)
    hp.no_schedule(where, "eps", eps)
    hp.check(where, "scale_factor", scale_factor, lambda x: np.isfinite(x) & (x != 0),
             "finite and non-zero", fix="It is the length of the normalised update, e.g. "
             "1.0 (or -1.0 to descend).")
    hp.check_eps(where, "eps", eps)
    return NormalizeByUpdateNorm(scale_factor=scale_factor, eps=eps)


class Centralize(Stateless):
    """Subtracts each row's mean; see :func:`centralize`."""

    def update(self, updates, state, params=None, **extra):
        del params, extra

        def leaf(g):
            if jnp.ndim(g) < 2:
                return g
            axes = tuple(range(1, jnp.ndim(g)))
            mean = jnp.mean(g.astype(jtree.acc_dtype(g)), axis=axes, keepdims=True)
            return (g - mean).astype(jnp.result_type(g))

        return jax.tree.map(leaf, updates), state


def centralize() -> Centralize:
    """Gradient centralisation (Yong et al., 2020): zero-mean rows for every kernel.

    For a leaf with at least two axes, over every axis but the first::

        u <- g - mean(g, axes=1..r-1)

    Vectors and scalars pass through unchanged. Same numbers as optax's
    ``centralize``.

    Example:
        >>> tx = jt.chain(jt.centralize(), jt.sgd(0.1, momentum=0.9))
    """
    return Centralize()
