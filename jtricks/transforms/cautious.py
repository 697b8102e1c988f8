"""Cautious updates (Liang et al. 2024): keep only the coordinates that descend."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, as_transform, static_field

__all__ = ["Cautious", "cautious"]


class Cautious(Transform):
    """Masks ``inner``'s update where it disagrees with the gradient; see
    :func:`cautious`. Its state is ``inner``'s state, unchanged in type."""

    inner: Transform
    eps: Any
    direction: bool = static_field(default=False)

    def init(self, params):
        return self.inner.init(params)

    def update(self, updates, state, params=None, **extra):
        new, state = self.inner.update(updates, state, params, **extra)
        eps, direction = self.eps, self.direction

        def leaf(u, g):
            # An update to add descends where it has the gradient's opposite sign; a
            # direction (a later step negates it) where it has the same sign.
            agree = (u * g > 0) if direction else (u * g < 0)
            kept = jnp.mean(agree, dtype=jtree.acc_dtype(u))
            scale = agree / jnp.maximum(kept, eps)
            return u * scale.astype(u.dtype)

        out = jtree.map_checked(leaf, new, updates, names=("inner updates", "updates"),
                                where="cautious.update")
        return out, state

    def hyperparams_at(self, state):
        return {"inner": self.inner.hyperparams_at(state), "eps": self.eps}

    def learning_rate_factors(self, params, state, new_state):
        return self.inner.learning_rate_factors(params, state, new_state)


def cautious(tx: Any, eps: ArrayLike = 1e-3, *, direction: bool = False) -> Cautious:
    """Cautious optimizer (Liang et al. 2024, "Cautious Optimizers: Improving Training
    with One Line of Code", arXiv:2411.16085): zeroes each coordinate of ``tx``'s
    update that does not descend, and rescales the rest by the kept fraction.

    With ``g`` the incoming gradient and ``u`` the update of ``tx`` (to be added to
    the params), for each leaf::

        mask = 1 where u * g < 0 (u descends), else 0
        u   <- u * mask / max(mean(mask), eps)

    ``mean`` is over the leaf's elements, so each tensor keeps its update's scale
    (the authors' reference code: ``mask / mask.mean().clamp(min=eps)`` per tensor;
    the paper's one-line listing divides by ``mean(mask) + eps``, which differs by at
    most a factor ``1 + eps / mean``). With ``direction=True`` ``tx`` emits a descent
    *direction* that a later step negates (``scale_by_adam``, ``trace``), and the mask
    keeps ``u * g > 0`` instead. The paper's C-AdamW, which masks the Adam direction
    but not the weight decay, is therefore::

        chain(cautious(scale_by_adam(b1, b2, eps), direction=True),
              add_decayed_weights(wd), scale_by_learning_rate(lr))

    while ``cautious(jt.adamw(lr))`` masks the decayed update as a whole. The state
    is ``tx``'s own, so ``tx``'s checkpoints load unchanged.

    Args:
        tx: the transform to make cautious (jtricks or optax).
        eps: the floor of the kept fraction, > 0 (bounds the rescaling by
            ``1 / eps`` when almost nothing is kept). A number or an array.
        direction: ``tx`` emits a direction to be negated, not an update (static).

    Example:
        >>> tx = jt.cautious(jt.adamw(1e-3, weight_decay=0.1))
    """
    hp.no_schedule("cautious", "eps", eps)
    hp.check_range("cautious", "eps", eps, low=0.0, low_open=True,
                   fix="eps floors the kept fraction of coordinates; use 1e-3.")
    return Cautious(inner=as_transform(tx, where="cautious"), eps=eps,
                    direction=bool(direction))
